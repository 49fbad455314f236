import mlflow
import pytest
from mlflow import MlflowClient

from agentic_mlops.tasks import registry
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import Hyperparameters, fit_model, split_data


@pytest.fixture(scope="module")
def trained():
    frame = generate_churn(800, seed=4)
    split = split_data.fn(frame, "churn", 0.25, 4)
    return frame, split, fit_model.fn(split, Hyperparameters(max_iter=20), 4)


def log(home, trained):
    frame, split, model = trained
    source = write_table(frame, home.data_dir / "train.parquet")
    return registry.log_training_run.fn(
        model,
        split.x_train.assign(churn=split.y_train),
        "churn",
        {"max_iter": 20},
        {"roc_auc": 0.75, "accuracy": 0.7},
        {"feature_importance": {"tenure_months": 0.1}},
        str(source),
        "test-run",
        settings=home,
    )


def test_run_holds_params_metrics_dataset_and_model(home, trained):
    logged = log(home, trained)
    client = MlflowClient(home.tracking_uri())
    run = client.get_run(logged.run_id)
    assert run.data.params["max_iter"] == "20"
    assert run.data.metrics["roc_auc"] == 0.75
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [logged.dataset_digest]
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert "feature_importance.json" in artifacts
    model_info = mlflow.models.get_model_info(logged.model_uri)
    assert model_info.signature is not None and model_info.saved_input_example_info is not None
    assert str(home.artifacts_dir) in client.get_experiment(logged.experiment_id).artifact_location


def test_first_version_is_champion_and_later_ones_only_challenger(home, trained):
    first = registry.register_version.fn(log(home, trained), home)
    assert first.version == 1 and first.aliases == ("challenger", "champion")
    second = registry.register_version.fn(log(home, trained), home)
    assert second.version == 2 and second.aliases == ("challenger",)
    assert registry.model_aliases(home.model_name, home) == {"challenger": 2, "champion": 1}


def test_registering_the_same_run_twice_is_harmless(home, trained):
    logged = log(home, trained)
    assert registry.register_version.fn(logged, home).version == 1
    assert registry.register_version.fn(logged, home).version == 1
    assert len(MlflowClient(home.tracking_uri()).search_model_versions("name='churn'")) == 1


def test_champion_loads_and_scores(home, trained):
    _, split, _ = trained
    registry.register_version.fn(log(home, trained), home)
    model = mlflow.pyfunc.load_model(f"models:/{home.model_name}@champion")
    rows = split.x_test.head(5).copy()
    rows.loc[rows.index[0], "tenure_months"] = None
    scores = model.predict(registry.as_model_input(rows))
    assert scores.shape == (5, 2)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_missing_alias_is_none_and_missing_model_has_no_aliases(home):
    assert registry.alias_version("nobody", "champion", home) is None
    assert registry.model_aliases("nobody", home) == {}


def test_transient_errors_are_retried_and_input_errors_are_not():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    assert registry.is_transient(ConnectionError("reset"))
    assert registry.is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not registry.is_transient(MlflowException("no", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not registry.is_transient(ValueError("bad input"))


def test_promotion_rollback_and_undo_keep_exactly_one_champion(home, trained):
    for _ in range(3):
        registry.register_version.fn(log(home, trained), home)
    move = registry.promote_champion("churn", 3, home)
    assert registry.model_aliases("churn", home) == {
        "challenger": 3,
        "champion": 3,
        "previous-champion": 1,
    }
    assert registry.promote_champion("churn", 3, home).changed is False

    back = registry.rollback_champion("churn", home)
    assert registry.model_aliases("churn", home) == {
        "challenger": 3,
        "champion": 1,
        "rolled-back": 3,
    }
    again = registry.rollback_champion("churn", home)
    assert again.changed is False and registry.alias_version("churn", "champion", home) == 1

    registry.undo_alias_move(back, home)
    registry.undo_alias_move(move, home)
    assert registry.model_aliases("churn", home) == {"challenger": 3, "champion": 1}


def test_rollback_without_a_previous_champion_changes_nothing(home, trained):
    registry.register_version.fn(log(home, trained), home)
    assert registry.rollback_champion("churn", home).changed is False
    assert registry.alias_version("churn", "champion", home) == 1


def test_mlflow_setters_leave_the_environment_as_the_user_set_it(home, tmp_path, monkeypatch):
    import os

    registry.client(home)
    registry.trace_agent_runs(home)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    other = tmp_path / "other"
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(other))
    from agentic_mlops.settings import Settings

    assert Settings().tracking_uri() == f"sqlite:///{other.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/chosen.db")
    registry.client(home)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/chosen.db"
