"""prefect.yaml as a Prefect user meets it: a real `prefect server start` with its scheduler and
triggers, `prefect deploy --all`, a process worker, and `prefect deployment run` from the CLI."""

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.client.schemas.sorting import DeploymentSort, FlowRunSort
from prefect.events import Event
from prefect.settings import PREFECT_API_URL, temporary_settings

from agentic_mlops.flows.train import train
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import running_prefect_server, subprocess_environment

BY_NAME = DeploymentSort.NAME_ASC  # prefect 3.8.8's client sends a null sort otherwise (422)
ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = {
    "train/train",
    "retrain/retrain",
    "drift-check/drift-check",
    "data-quality/data-quality",
    "canary-rollout/canary",
    "monitor/monitor",
    "lifecycle/lifecycle",
    "adopt/adopt",
}


def prefect_cli(*args: str, env: dict) -> str:
    done = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def runs_of(client, deployment_id, *states: StateType) -> list:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
        )
        if states
        else None,
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=50,
    )


def wait_for(check, seconds: float, what: str, log: Path | None = None):
    """`check()` once it is true; a failure shows the end of `log`, where given."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} within {seconds:.0f} s\n{tail}".rstrip())


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.slow, pytest.mark.postgres])]
)
def prefect_database(request) -> Iterator[str | None]:
    """The Prefect server's database: its own SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    import uuid

    import psycopg2

    name = f"agentic_mlops_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_schedules_the_cli_and_events_start_runs_that_a_worker_completes(
    home, tmp_path, prefect_database
):
    train(generate_rows=1_500, hyperparameters=Hyperparameters(max_iter=20))
    batch = write_table(generate_churn(1_000, 5), home.home / "incoming" / "latest.parquet")
    server_folder = tmp_path / "prefect-server"
    with running_prefect_server(
        server_folder, prefect_database, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1"
    ) as api:
        env = subprocess_environment(
            PREFECT_API_URL=api,
            AGENTIC_MLOPS_HOME=str(home.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        prefect_cli(
            "work-pool", "create", "local-process", "--type", "process", "--overwrite", env=env
        )
        prefect_cli("--no-prompt", "deploy", "--all", env=env)
        worker = None
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            try:
                found = {
                    f"{client.read_flow(d.flow_id).name}/{d.name}": d
                    for d in client.read_deployments(sort=BY_NAME, limit=200)
                }
                assert set(found) == DEPLOYMENTS
                drift, monitor = found["drift-check/drift-check"], found["monitor/monitor"]
                form = drift.parameter_openapi_schema["properties"]
                assert form["current_path"]["type"] == "string"
                assert "worker" in form["current_path"]["description"]
                assert all("anyOf" not in field for field in form.values())

                # the schedules prefect.yaml switches on produce runs (SQLAlchemy 2.1 broke this)
                for deployment in (drift, monitor):
                    wait_for(
                        lambda d=deployment: runs_of(client, d.id, StateType.SCHEDULED),
                        60,
                        f"no scheduled run of {deployment.name}",
                    )
                    for schedule in deployment.schedules:
                        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
                    for run in runs_of(client, deployment.id, StateType.SCHEDULED):
                        client.delete_flow_run(run.id)

                # a retraining asked for by an event starts a run with the event's parameters
                retrain_id = found["retrain/retrain"].id
                for started, data in (("yes", "taken.parquet"), ("no", str(batch))):
                    event = Event(
                        event="agentic-mlops.retrain.requested",
                        resource={
                            "prefect.resource.id": "agentic-mlops.model.churn",
                            "agentic-mlops.retrain.started": started,
                        },
                        payload={"parameters": {"data_path": data, "target": "churn"}},
                    )
                    client.request("POST", "/events", json=[event.model_dump(mode="json")])
                requested = wait_for(
                    lambda: runs_of(client, retrain_id), 60, "no retrain run from the event"
                )
                time.sleep(2)  # the event that should start nothing has had time to
                requested = runs_of(client, retrain_id)
                assert [r.parameters["data_path"] for r in requested] == [str(batch)]
                assert requested[0].parameters["triage_ledger_id"] == ""
                for run in requested:
                    client.delete_flow_run(run.id)

                # a team's challenger announced by its training flow starts a canary run of it,
                # unless a retrain decision of ours started that training (it canaries itself)
                canary_id = found["canary-rollout/canary"].id
                for handled, version in (("yes", 3), ("no", 2)):
                    event = Event(
                        event="agentic-mlops.challenger.registered",
                        resource={
                            "prefect.resource.id": "agentic-mlops.model.tumour",
                            "agentic-mlops.canary.handled": handled,
                        },
                        payload={"model_name": "tumour", "version": version},
                    )
                    client.request("POST", "/events", json=[event.model_dump(mode="json")])
                wait_for(lambda: runs_of(client, canary_id), 60, "no canary run from the event")
                time.sleep(2)  # the event that should start nothing has had time to
                announced = runs_of(client, canary_id)
                assert [
                    (r.parameters["model_name"], int(r.parameters["version"])) for r in announced
                ] == [("tumour", 2)]
                for run in announced:
                    client.delete_flow_run(run.id)

                # a short schedule of our own, with its parameters, and the obvious CLI trigger;
                # its first run is due a margin ahead, as a scheduler that first looks after the
                # anchor has passed schedules the next interval's run (an hour on, once in CI)
                anchor = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
                client.create_deployment_schedules(
                    drift.id,
                    [
                        DeploymentScheduleCreate(
                            schedule=IntervalSchedule(
                                interval=dt.timedelta(seconds=3600),
                                anchor_date=anchor,
                            ),
                            active=True,
                            parameters={"current_path": str(batch), "act": False},
                        )
                    ],
                )
                scheduled = wait_for(
                    lambda: runs_of(client, drift.id, StateType.SCHEDULED),
                    60,
                    "the scheduler created no run",
                )[0]
                due = (scheduled.expected_start_time - anchor).total_seconds()
                assert abs(due) < 1, f"the schedule's first run is due {due:.0f} s after its anchor"
                typed = prefect_cli(
                    "deployment",
                    "run",
                    "drift-check/drift-check",
                    "--param",
                    f"current_path={batch}",
                    "--param",
                    "act=false",
                    env=env,
                )
                cli_run = re.search(r"UUID: ([0-9a-f-]{36})", typed).group(1)

                # polling every second (Prefect's default: 10 s)
                worker = subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", "local-process", "--limit", "1"],
                    cwd=ROOT,
                    env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
                    stdout=(server_folder / "worker.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

                def finished():
                    states = [client.read_flow_run(i).state for i in (scheduled.id, cli_run)]
                    return all(s is not None and s.is_final() for s in states) and states

                for state in wait_for(
                    finished,
                    300,
                    "the worker did not finish both runs",
                    log=server_folder / "worker.log",
                ):
                    assert state.is_completed(), state
                decisions = ledger.list_decisions("churn", settings=home)
                assert {d.flow_run_id for d in decisions} == {str(scheduled.id), cli_run}
                assert {d.action for d in decisions} == {"none"}
            finally:
                if worker is not None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)
    log = (server_folder / "server.log").read_text(errors="replace")
    assert not server_errors(log), log[-3000:]


def server_errors(log: str) -> list[str]:
    """The exceptions of the tracebacks in a Prefect server's log, but for Prefect's own SQLite
    contention: on a loaded two-core machine its server's SQLite store refuses a write now and
    then ("database is locked", seen on a worker's heartbeat, which the worker sends again), an
    error of Prefect's store and not of our flows. On PostgreSQL every traceback counts."""
    errors = []
    for part in log.split("Traceback (most recent call last):")[1:]:
        raised = next((line for line in part.splitlines()[1:] if line[:1] not in " \t"), "")
        if not raised.endswith("database is locked"):
            errors.append(raised)
    return errors
