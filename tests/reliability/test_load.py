"""Load: three drift checks and a canary rollout at once, each its own process, on a Prefect
server and an MLflow both backed by PostgreSQL, while customers call the router.

Nobody answers approval forms here, so the approval mode is `none`: under load the canary may
not show non-inferiority within its steps, and in the default mode it then waited for a person
for an hour (the run this test once failed in: it timed out)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg2
import pytest
from mlflow import MlflowClient

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout
from tests.conftest import running_prefect_server, subprocess_environment
from tests.flows.test_canary_flow import customer_traffic
from tests.test_postgres import SERVER, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
CLI = str(Path(sys.executable).parent / "agentic-mlops")


@pytest.fixture
def databases():
    """Two fresh PostgreSQL databases, for Prefect and for MLflow, dropped afterwards."""
    admin = psycopg2.connect(f"{SERVER}/postgres")
    admin.autocommit = True
    names = fresh_database(admin), fresh_database(admin)
    yield names
    for name in names:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def start(*arguments: str, environment: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, *arguments, "--json"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(run: subprocess.Popen, timeout: float = 300) -> dict:
    """The JSON a command printed, once it exited with 0."""
    out, err = run.communicate(timeout=timeout)
    assert run.returncode == 0, err[-3000:]
    return json.loads(out[out.index("{") :])


def test_three_drift_checks_and_a_canary_at_once_on_postgres(databases, tmp_path):
    prefect_db, mlflow_db = databases
    tracking = f"{SERVER}/{mlflow_db}"
    MlflowClient(tracking).search_experiments()  # the schema is made once, as in production
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=tracking)
    settings.ensure_dirs()
    database = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}"
    backend = LocalRollout(settings)
    try:
        with running_prefect_server(tmp_path / "prefect", database) as api:
            environment = subprocess_environment(
                PREFECT_API_URL=api,
                MLFLOW_TRACKING_URI=tracking,
                AGENTIC_MLOPS_HOME=str(settings.home),
                AGENTIC_MLOPS_AGENT_TRACING="false",
                AGENTIC_MLOPS_CANARY_POLL_SECONDS="0.5",
                AGENTIC_MLOPS_CANARY_MIN_SAMPLES="150",
                AGENTIC_MLOPS_APPROVAL_MODE="none",
            )
            for _ in range(2):  # champion v1 and challenger v2: one recipe on the same rows
                finished(start("train", "--rows", "3000", "--seed", "1", environment=environment))
            batches = []
            for seed in (11, 12, 13):
                batches.append(settings.home / "incoming" / f"batch-{seed}.parquet")
                batches[-1].parent.mkdir(parents=True, exist_ok=True)
                generate_churn(2_000, seed).to_parquet(batches[-1])
            url = backend.start_router()
            backend.set_baseline(1)
            with customer_traffic(url, seconds=240, limit=100_000) as traffic:
                canary = start(
                    "canary", "--version", "2", "--steps", "50,100", "--step-seconds", "40",
                    environment=environment,
                )  # fmt: skip
                checks = [
                    start("drift-check", "--current", str(batch), environment=environment)
                    for batch in batches
                ]
                decisions = [finished(check) for check in checks]
                result = finished(canary)
            flow_runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=30)
        server_log = (tmp_path / "prefect" / "server.log").read_text(errors="replace")

        states = {(r["flow_id"], r["id"]): r["state_type"] for r in flow_runs.json()}
        assert len(states) == 6 and set(states.values()) == {"COMPLETED"}, states
        triage = ledger.list_decisions("churn", decision_point="drift_triage", settings=settings)
        assert len(triage) == 3
        assert {t.flow_run_id for t in triage} <= {run_id for _, run_id in states}
        assert sorted(t.action for t in triage) == sorted(
            d["decision"]["action"] for d in decisions
        )
        assert len(ledger.drift_history("churn", settings=settings)) == 3
        champion = registry.alias_version("churn", registry.CHAMPION, settings)
        assert result["outcome"] in ("promoted", "rolled_back")
        assert champion == result["champion"] == (2 if result["outcome"] == "promoted" else 1)
        router = backend.router_state()
        assert router.baseline.version == champion and router.canary is None
        assert traffic.counts.failed == 0 and traffic.counts.variants.get("canary", 0) > 0
        for trouble in ("database is locked", "deadlock detected", "Traceback"):
            assert trouble not in server_log
    finally:
        backend.shutdown()
