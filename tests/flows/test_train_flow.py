import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from agentic_mlops.flows.train import train
from agentic_mlops.tasks import registry
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import artifacts_by_key

FAST = Hyperparameters(max_iter=30)


def test_training_flow_registers_champion_then_challenger_with_a_versioned_summary(home):
    earlier = len(artifacts_by_key("churn-training-summary"))
    first = train(generate_rows=800, seed=1, hyperparameters=FAST)
    assert first.version == 1 and set(first.aliases) == {"champion", "challenger"}
    assert first.metrics["roc_auc"] > 0.65
    second = train(generate_rows=800, seed=2, scenario="covariate", hyperparameters=FAST)
    assert second.version == 2 and second.aliases == ["challenger"]
    assert registry.model_aliases("churn", home) == {"challenger": 2, "champion": 1}

    run = MlflowClient(home.tracking_uri()).get_run(second.run_id)
    assert run.data.params["rows"] == "800"
    assert run.data.metrics["roc_auc"] == pytest.approx(second.metrics["roc_auc"])
    assert second.data_source.startswith(str(home.data_dir))

    versions = artifacts_by_key("churn-training-summary")
    assert len(versions) == earlier + 2
    assert "churn v2" in versions[0]["data"] and second.run_id in versions[0]["data"]
    assert "churn v1" in versions[1]["data"]


def test_training_from_a_folder_of_batches(home, tmp_path):
    for index in range(3):
        write_table(generate_churn(300, seed=index), tmp_path / f"batch-{index}.csv")
    result = train(data_path=str(tmp_path), hyperparameters=FAST)
    assert result.rows == 900 and result.data_source == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda d: d / "absent.csv", "no such file"),
        (lambda d: _write(d / "empty.csv", b""), "empty"),
        (lambda d: _write(d / "broken.parquet", b"PAR1 not really"), "unreadable parquet"),
        (
            lambda d: write_table(generate_churn(100).drop(columns="churn"), d / "x.csv"),
            "missing columns: churn",
        ),
    ],
)
def test_bad_data_ends_in_a_named_failed_state_and_registers_nothing(
    home, tmp_path, make_file, message
):
    state = train(data_path=str(make_file(tmp_path)), return_state=True)
    assert state.is_failed() and state.name == "InvalidData"
    assert message in state.message
    assert registry.model_aliases("churn", home) == {}


def test_transient_mlflow_failure_is_retried(home, monkeypatch):
    calls = {"n": 0}
    real = MlflowClient.create_model_version

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MlflowException("database is busy", error_code=TEMPORARILY_UNAVAILABLE)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", flaky)
    monkeypatch.setattr(
        "agentic_mlops.tasks.publishing.register_version",
        registry.register_version.with_options(retry_delay_seconds=0),
    )
    result = train(generate_rows=300, hyperparameters=FAST)
    assert calls["n"] == 2 and result.version == 1


def _write(path, content: bytes):
    path.write_bytes(content)
    return path
