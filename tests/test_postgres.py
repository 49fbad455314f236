"""MLflow backed by the PostgreSQL server on 127.0.0.1:5432, in a database made for the test."""

import uuid

import psycopg2
import pytest
from mlflow import MlflowClient

from agentic_mlops.flows.train import TrainParameters, train
from agentic_mlops.tasks import registry
from agentic_mlops.tasks.training import Hyperparameters

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
    result = train(TrainParameters(rows=500, hyperparameters=Hyperparameters(max_iter=20)))
    assert result.version == 1
    client = MlflowClient(postgres_tracking_uri)
    assert client.get_run(result.run_id).data.metrics["roc_auc"] > 0.5
    assert registry.model_aliases("churn") == {"challenger": 1, "champion": 1}
    assert any(home.artifacts_dir.iterdir()), "artifacts belong under home, not ./mlruns"
    second = train(TrainParameters(rows=500, seed=3, hyperparameters=Hyperparameters(max_iter=20)))
    assert registry.model_aliases("churn") == {"challenger": second.version, "champion": 1}
