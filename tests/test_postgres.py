"""MLflow backed by the PostgreSQL server on 127.0.0.1:5432, in a database made for the test."""

import uuid

import psycopg2
import pytest
from mlflow import MlflowClient

from agentic_mlops.flows.train import train
from agentic_mlops.tasks import registry
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import running_prefect_server, subprocess_environment

pytestmark = pytest.mark.postgres
SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_tracking_uri(monkeypatch, home):
    name = f"agentic_mlops_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(f"{SERVER}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    uri = f"{SERVER}/{name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_training_flow_on_postgres_backed_mlflow(postgres_tracking_uri, home):
    result = train(generate_rows=500, hyperparameters=Hyperparameters(max_iter=20))
    assert result.version == 1
    client = MlflowClient(postgres_tracking_uri)
    assert client.get_run(result.run_id).data.metrics["roc_auc"] > 0.5
    assert registry.model_aliases("churn", home) == {"challenger": 1, "champion": 1}
    assert any(home.artifacts_dir.iterdir()), "artifacts belong under home, not ./mlruns"
    second = train(generate_rows=500, seed=3, hyperparameters=Hyperparameters(max_iter=20))
    assert registry.model_aliases("churn", home) == {"challenger": second.version, "champion": 1}


def fresh_database(admin) -> str:
    name = f"agentic_mlops_test_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.mark.slow
def test_concurrent_runs_on_a_prefect_server_and_mlflow_backed_by_postgres(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    admin = psycopg2.connect(f"{SERVER}/postgres")
    admin.autocommit = True
    prefect_db, mlflow_db = fresh_database(admin), fresh_database(admin)
    MlflowClient(f"{SERVER}/{mlflow_db}").search_experiments()  # schema made once, as in prod
    bin_dir = Path(sys.executable).parent
    runs = []
    try:
        with running_prefect_server(
            tmp_path / "prefect", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}"
        ) as api:
            client_env = subprocess_environment(
                PREFECT_API_URL=api,
                MLFLOW_TRACKING_URI=f"{SERVER}/{mlflow_db}",
                AGENTIC_MLOPS_HOME=str(tmp_path / "home"),
                AGENTIC_MLOPS_AGENT_TRACING="false",
            )
            runs = [
                subprocess.Popen(
                    [
                        str(bin_dir / "agentic-mlops"),
                        "train",
                        "--rows",
                        "600",
                        "--seed",
                        str(seed),
                        "--json",
                    ],
                    env=client_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for seed in range(4)
            ]
            outputs = [run.communicate(timeout=300) for run in runs]
            with httpx.Client(base_url=api) as client:
                flow_runs = client.post("/flow_runs/filter", json={"limit": 50}).json()
        for run, (_out, err) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, err[-2000:]
        versions = sorted(json.loads(out[out.index("{") :])["version"] for out, _ in outputs)
        assert versions == [1, 2, 3, 4]
        aliases = registry.model_aliases(
            "churn",
            registry.Settings(mlflow_tracking_uri=f"{SERVER}/{mlflow_db}", home=tmp_path / "home"),
        )
        assert aliases["champion"] in versions
        assert [r["state_type"] for r in flow_runs].count("COMPLETED") == 4
        server_log = (tmp_path / "prefect" / "server.log").read_text(errors="replace")
        assert "database is locked" not in server_log
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        for name in (prefect_db, mlflow_db):
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
