"""prefect.yaml against a real Prefect server: deploy every flow, run one through a worker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import DeploymentSort
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

from agentic_mlops.flows.train import TrainParameters, train
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import Hyperparameters

BY_NAME = DeploymentSort.NAME_ASC  # prefect 3.8.8's client sends a null sort otherwise (422)
ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = {
    "train/train",
    "retrain/retrain",
    "drift-check/drift-check",
    "data-quality/data-quality",
    "canary-rollout/canary",
}


def prefect_cli(*args: str, env: dict) -> str:
    done = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_deploy_all_then_a_worker_runs_the_drift_check(home):
    train(TrainParameters(rows=1_500, hyperparameters=Hyperparameters(max_iter=20)))
    batch = write_table(generate_churn(1_000, 5), home.home / "incoming" / "latest.parquet")
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "AGENTIC_MLOPS_HOME": str(home.home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_HOME", None)
    worker = None
    try:
        prefect_cli(
            "work-pool", "create", "local-process", "--type", "process", "--overwrite", env=env
        )
        prefect_cli("--no-prompt", "deploy", "--all", env=env)
        with get_client(sync_client=True) as client:
            found = {
                f"{client.read_flow(d.flow_id).name}/{d.name}": d
                for d in client.read_deployments(sort=BY_NAME, limit=200)
            }
        assert set(found) >= DEPLOYMENTS
        drift = found["drift-check/drift-check"]
        assert drift.schedules and drift.schedules[0].schedule.cron == "0 * * * *"
        canary = found["canary-rollout/canary"]
        assert canary.global_concurrency_limit.limit == 1
        assert canary.concurrency_options.collision_strategy == "CANCEL_NEW"
        with get_client(sync_client=True) as client:
            automations = client.request("POST", "/automations/filter", json={}).json()
        retrain = [
            a
            for a in automations
            if "agentic-mlops.retrain.requested" in a["trigger"].get("expect", [])
        ]
        assert retrain and retrain[0]["trigger"]["match"]["agentic-mlops.retrain.started"] == "no"

        train_id = found["retrain/retrain"].id
        for started, rows in (("yes", 777), ("no", 888)):
            emit_event(
                event="agentic-mlops.retrain.requested",
                resource={
                    "prefect.resource.id": "agentic-mlops.model.churn",
                    "agentic-mlops.retrain.started": started,
                },
                payload={"parameters": {"rows": rows, "scenario": "none"}},
            )

        def train_runs() -> list[dict]:
            with get_client(sync_client=True) as client:
                return client.request(
                    "POST",
                    "/flow_runs/filter",
                    json={
                        "deployments": {"id": {"any_": [str(train_id)]}},
                        "limit": 10,
                    },
                ).json()

        deadline = time.monotonic() + 60
        while not train_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # an event that should start nothing has had time to
        requested = train_runs()
        assert [r["parameters"]["params"]["rows"] for r in requested] == [888]

        run = run_deployment(
            "drift-check/drift-check",
            parameters={"params": {"current_path": str(batch), "act": False}},
            timeout=0,
        )
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "local-process", "--limit", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    break
                time.sleep(1)
        assert state.is_completed(), state
        decisions = ledger.list_decisions("churn", settings=home)
        assert decisions and decisions[0].flow_run_id == str(run.id)
        assert decisions[0].action == "none"
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments(sort=BY_NAME, limit=200):
                client.delete_deployment(deployment.id)
