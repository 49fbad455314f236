"""Several models guarded in one home: our churn model beside a team's breast-cancer model.

Each keeps its own reference, ledger entries, aliases and serving processes (a router and
model servers per model, on their own ports), and one flow or command serves either through
`model_name` / `--model`. Also the Python API a team calls from its own flows, and the team's
own training deployment run for a `retrain` decision.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

import agentic_mlops
from agentic_mlops.flows.lifecycle import lifecycle
from agentic_mlops.flows.train import train
from agentic_mlops.tasks import drift_actions, ledger, registry
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout
from tests.test_own_models import (
    cli,
    cli_json,
    drift,
    register,
    team,  # noqa: F401
    team_mlflow,
)

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def predict(url: str, rows: pd.DataFrame) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"instances": rows.to_dict("records")}, timeout=30)


@pytest.mark.slow
def test_two_models_in_one_home_are_served_checked_and_listed_apart(team):  # noqa: F811
    train(generate_rows=1_500, seed=3)
    register(team, "tumour")
    cli_json("adopt", "--model", "tumour", "--data", str(team.home / "data" / "tumour-adopt.csv"),
             "--target", "malignant")  # fmt: skip

    churn_rows = generate_churn(30, seed=11).drop(columns=["churn"])
    tumour_rows = pd.read_csv(team.home / "data" / "tumour-clean.csv").drop(columns=["malignant"])
    backends = {name: LocalRollout(team.for_model(name)) for name in ("churn", "tumour")}
    try:
        urls = {}
        for name, backend in backends.items():
            urls[name] = backend.start_router()
            backend.set_baseline(1)
        assert urls["churn"] != urls["tumour"]
        churn = predict(urls["churn"], churn_rows)
        tumour = predict(urls["tumour"], tumour_rows.head(20))
        assert churn.status_code == 200 and tumour.status_code == 200, (churn.text, tumour.text)
        np.testing.assert_allclose(
            tumour.json()["predictions"],
            mlflow.sklearn.load_model("models:/tumour/1").predict_proba(tumour_rows.head(20))[:, 1],
            rtol=1e-9,
        )
        assert len(churn.json()["predictions"]) == 30
        assert predict(urls["churn"], tumour_rows.head(2)).status_code == 422  # not its columns

        status = cli("serving", "status", "--json")
        listed = {(p["model_name"], p["role"], p["version"]) for p in json.loads(status.stdout)}
        assert listed == {
            (name, role, version)
            for name in ("churn", "tumour")
            for role, version in (("router", None), ("model server", 1))
        }
        only = json.loads(cli("serving", "status", "--json", "--model", "tumour").stdout)
        assert {p["model_name"] for p in only} == {"tumour"} and len(only) == 2

        # each model's ledger and drift history; the router logs go to each model's folder
        checked = drift(team, "tumour", "tumour-clean.csv", "malignant")
        assert checked["decision"]["action"] in ("none", "monitor")
        assert (team.for_model("churn").serving_dir / "log").is_dir()
        assert not list((team.for_model("tumour").serving_dir / "log").glob("requests-*"))[:0]
        assert [e.model_name for e in ledger.list_decisions(settings=team)] == ["tumour"]
        assert ledger.list_decisions("churn", settings=team) == []

        guarded = {m["name"]: m for m in json.loads(cli("models", "--json").stdout)}
        assert set(guarded) == {"churn", "tumour"}
        assert guarded["tumour"]["champion"] == 1 and guarded["tumour"]["last_check"]
        assert guarded["tumour"]["last_decision"].startswith("drift_triage: ")
        assert guarded["churn"]["last_check"] is None and guarded["churn"]["challenger"] == 1
        assert guarded["churn"]["router_url"] == urls["churn"]
        table = cli("models")
        assert table.exit_code == 0 and "tumour" in table.stdout and "never" in table.stdout

        stopped = cli("serving", "stop", "--model", "tumour")
        assert stopped.exit_code == 0 and "tumour router" in stopped.stdout
        assert "churn" not in stopped.stdout
        assert predict(urls["churn"], churn_rows.head(3)).status_code == 200
        with pytest.raises(httpx.HTTPError):
            predict(urls["tumour"], tumour_rows.head(1))
    finally:
        for backend in backends.values():
            backend.shutdown()


def test_commands_on_an_unknown_model_fail_in_one_line_and_nothing_is_listed(home):
    assert cli("models").stdout.startswith("no guarded model")
    assert json.loads(cli("models", "--json").stdout) == []
    canary = cli("canary", "--model", "nobody")
    assert canary.exit_code == 2 and "no challenger of 'nobody'" in canary.output
    stopped = cli("serving", "stop", "--model", "nobody")
    assert stopped.exit_code == 0 and "nothing was serving" in stopped.output
    assert not (home.home / "serving" / "nobody").exists()


def test_the_python_api_is_lazy_and_the_teams_flow_calls_the_phases_as_subflows(team):  # noqa: F811
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, agentic_mlops; print('prefect' in sys.modules)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_API_URL": ""},
    )
    assert probe.stdout.strip() == "False", probe.stderr
    with pytest.raises(AttributeError, match="no attribute 'adopted'"):
        agentic_mlops.adopted  # noqa: B018
    assert agentic_mlops.adopt.name == "adopt" and "lifecycle" in dir(agentic_mlops)

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from team_flows import guard_tumour
    finally:
        sys.path.remove(str(ROOT / "examples"))
    data = team.home / "data"
    split = pd.read_csv(data / "tumour-adopt.csv")
    split.to_csv(data / "tumour-train.csv", index=False)
    with team_mlflow(team.home):
        report = guard_tumour(
            str(data / "tumour-train.csv"),
            str(data / "tumour-adopt.csv"),
            str(data / "tumour-shifted.csv"),
        )
    assert isinstance(report.adoption, agentic_mlops.AdoptionResult)
    assert isinstance(report.check, agentic_mlops.DriftCheckResult)
    assert report.version == 1 and report.adoption.became_champion
    assert report.adoption.task == "binary" and report.check.model_name == "tumour"
    assert report.check.decision.action == "retrain" and report.check.adopted
    assert registry.model_aliases("tumour", team) == {"challenger": 1, "champion": 1}


@pytest.mark.slow
def test_a_team_deployment_configured_but_not_registered_moves_nothing(team):  # noqa: F811
    """Without a team deployment our recipe retrains an adopted model
    (tests/test_recipe_on_own_models.py); with one configured that Prefect does not know, the
    decision's outcome says so and nothing moves."""
    register(team, "tumour")
    cli_json("adopt", "--model", "tumour", "--data", str(team.home / "data" / "tumour-adopt.csv"),
             "--target", "malignant")  # fmt: skip
    drift(team, "tumour", "tumour-shifted.csv", "malignant")
    settings = team.model_copy(
        update={"retrain_deployments": {"tumour": "train-tumour/absent"}}
    ).for_model("tumour")
    assert drift_actions.retraining_route(settings) == "team"
    assert drift_actions.retraining_route(team.for_model("tumour")) == "recipe"
    entry = ledger.list_decisions("tumour", settings=team)[0]
    trained = drift_actions.run_team_training({"data_path": "x.csv"}, entry.id, settings)
    assert trained.state == "NotFound" and trained.challenger is None
    assert "not registered" in ledger.get_decision(entry.id, team).outcome["retrain_failed"]
    assert registry.model_aliases("tumour", team) == {"champion": 1}


@pytest.mark.slow
def test_a_retrain_decision_runs_the_teams_deployment_on_a_process_worker(
    team,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """The team's `train-tumour` flow (examples/team_flows.py), deployed and run by a real
    process worker: a lifecycle turn's `retrain` starts it with the window and the ledger id,
    waits for it, canaries the version it registered as challenger, and the ledger entry of
    the decision gets the run, its state and the canary's outcome."""
    from prefect import Flow
    from prefect.client.schemas.actions import WorkPoolCreate

    register(team, "tumour")
    cli_json("adopt", "--model", "tumour", "--data", str(team.home / "data" / "tumour-adopt.csv"),
             "--target", "malignant")  # fmt: skip
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="team-pool", type="process"), overwrite=True)
    source = Flow.from_source(str(ROOT / "examples"), "team_flows.py:train_tumour")
    source.deploy(name="team", work_pool_name="team-pool", print_next_steps=False)
    monkeypatch.setenv("AGENTIC_MLOPS_RETRAIN_DEPLOYMENTS", '{"tumour": "train-tumour/team"}')
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "AGENTIC_MLOPS_HOME": str(team.home),
        "MLFLOW_TRACKING_URI": team.tracking_uri(),
    }
    env.pop("PREFECT_HOME", None)
    backend = LocalRollout(team.for_model("tumour"))
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "team-pool", "--limit", "1"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        backend.start_router()
        backend.set_baseline(1)
        batch = str(team.home / "data" / "tumour-shifted.csv")
        turn = lifecycle(
            batch_path=batch,
            model_name="tumour",
            canary_steps=[50, 100],
            canary_step_seconds=1,
            canary_min_samples=10,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        backend.shutdown()
    assert turn.decision == "retrain", worker_log.read_text(errors="replace")[-2000:]
    assert turn.retrained_version == 2, (turn.steps, worker_log.read_text(errors="replace")[-3000:])
    assert "registered tumour v2 as challenger" in turn.steps[1]
    # no traffic reached the router: the canary judges no data and rolls back (fail closed)
    assert turn.canary == "rolled_back" and turn.champion == 1
    outcome = ledger.get_decision(turn.ledger_id, team).outcome
    assert outcome["retrain_state"] == "Completed" and outcome["challenger_version"] == 2
    assert outcome["canary"] == "rolled_back" and outcome["canaried_version"] == 2
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(outcome["retrain_flow_run"])
    assert run.parameters == {
        "data_path": batch,
        "triage_ledger_id": turn.ledger_id,
        "model_name": "tumour",
    }
    run_id = registry.client(team).get_model_version("tumour", "2").run_id
    assert registry.client(team).get_run(run_id).data.tags["triage_ledger_id"] == turn.ledger_id


def test_the_teams_deployment_gets_only_the_parameters_its_flow_declares(home):
    """No worker picks the run up: the decision records the run and that it was not waited
    for past the timeout; the run holds the window and ledger id, not what its flow lacks."""
    from prefect import Flow
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="idle-pool", type="process"), overwrite=True)
    source = Flow.from_source(str(ROOT / "examples"), "team_flows.py:train_tumour")
    source.deploy(name="idle", work_pool_name="idle-pool", print_next_steps=False)
    settings = home.model_copy(
        update={"retrain_deployment": "train-tumour/idle", "retrain_deployment_timeout_seconds": 1}
    ).for_model("tumour")
    entry = ledger.record_agent_decision(
        "drift_triage", {"batch": "b"}, None, settings, model_name="tumour", action="retrain",
        agent_model="policy",
    )  # fmt: skip
    offered = {"data_path": "/w.csv", "recent_path": "/r.csv", "triage_ledger_id": entry.id,
               "model_name": "tumour", "target": "malignant"}  # fmt: skip
    trained = drift_actions.run_team_training(offered, entry.id, settings)
    assert trained.challenger is None and trained.state == "Scheduled"
    assert "not waited for" in trained.summary
    outcome = ledger.get_decision(entry.id, home).outcome
    assert outcome["retrain_flow_run"] == trained.flow_run_id
    assert outcome["retrain_state"] == "Scheduled" and outcome["challenger_version"] is None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(trained.flow_run_id)
        assert run.parameters == {"data_path": "/w.csv", "triage_ledger_id": entry.id,
                                  "model_name": "tumour"}  # fmt: skip
        client.delete_flow_run(run.id)


def challenger_events(model_name: str, since: dt.datetime) -> list[dict]:
    body = {
        "filter": {
            "event": {"name": [drift_actions.CHALLENGER_REGISTERED_EVENT]},
            "occurred": {
                "since": since.isoformat(),
                "until": (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).isoformat(),
            },
        },
        "limit": 50,
    }
    with get_client(sync_client=True) as client:
        events = client.request("POST", "/events/filter", json=body).json()["events"]
    return [e["payload"] for e in events if e["payload"]["model_name"] == model_name]


@pytest.mark.slow
def test_a_challenger_moved_by_plain_mlflow_calls_is_announced_by_the_monitor_once(team):  # noqa: F811
    """MLflow's registry emits no event: the monitor sees a `challenger` alias that code moved
    without `announce_challenger`, announces it for the canary trigger, and only once."""
    from agentic_mlops.flows.monitor import monitor

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    register(team, "tumour")
    cli_json("adopt", "--model", "tumour", "--data", str(team.home / "data" / "tumour-adopt.csv"),
             "--target", "malignant")  # fmt: skip
    register(team, "tumour")  # v2, by the team's own code, which then moves the alias by hand
    with team_mlflow(team.home):
        mlflow.MlflowClient().set_registered_model_alias("tumour", "challenger", "2")

    first = monitor(check_drift=False, model_name="tumour")
    assert first.announced_challenger == 2 and first.champion_version == 1
    assert registry.announced("tumour", 2, team) == "seen by the monitor"
    deadline = time.monotonic() + 30
    while not (payloads := challenger_events("tumour", since)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert payloads == [{"model_name": "tumour", "version": 2, "triage_ledger_id": ""}]
    assert monitor(check_drift=False, model_name="tumour").announced_challenger is None

    # a version our own flows registered is handed over by them, and never announced here
    train(generate_rows=400, seed=3)
    train(generate_rows=400, seed=4)
    assert registry.model_aliases("churn", team) == {"champion": 1, "challenger": 2}
    assert registry.announced("churn", 2, team) == "registered by agentic-mlops"
    assert drift_actions.announce_unseen_challenger(team.for_model("churn")) is None
