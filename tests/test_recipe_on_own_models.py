"""Our retraining recipe (advisor, Ray Tune search, holdout comparison, registry) on models and
tables we did not make: a team's diabetes regressor and breast-cancer classifier, registered by
plain MLflow calls and adopted, and a wine-cultivar classifier trained from scratch (its
classes named by text).

Each retraining fits the model's own task (the champion's card says which, else the target's
values), ranks its trials and judges the challenger against the champion by that task's metric
(R², accuracy, ROC AUC), and leaves a model that scores like any MLflow model of its task.
"""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_wine

from agentic_mlops.flows.lifecycle import lifecycle
from agentic_mlops.flows.retrain import retrain
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.reference import stored_card
from agentic_mlops.tasks.scoring import load_scoring_model, model_task
from tests.test_own_models import adopt, register, team  # noqa: F401

QUICK = {"max_trials": 3, "time_budget_seconds": 90, "hand_over": "none"}


def scored(settings: Settings, name: str, version: int, rows: pd.DataFrame, task: str):
    model = load_scoring_model(f"models:/{name}/{version}", settings.tracking_uri())
    return model_task(model), model.score(rows, task)


def test_an_adopted_regressor_is_retrained_by_our_recipe_and_judged_by_r2(team):  # noqa: F811
    register(team, "diabetes")
    adopt(team, "diabetes", "diabetes-adopt.csv", "progression")
    data = team.home / "data"
    window = pd.concat([pd.read_csv(data / f"diabetes-{p}.csv") for p in ("adopt", "clean")])
    window.to_csv(data / "diabetes-window.csv", index=False)

    result = retrain(
        data_path=str(data / "diabetes-window.csv"),
        target="progression",
        model_name="diabetes",
        require_improvement=False,
        **QUICK,
    )

    # the task came from the adopted champion's card: no classifier was tried
    assert result.best_family in ("gradient_boosting", "random_forest")
    assert "logistic_regression" not in result.advisor.decision.space.families
    comparison = result.comparison
    assert (comparison.metric, comparison.loss_metric) == ("r2", "mae")
    assert comparison.champion_version == 1 and comparison.rows == 56
    assert -1 < comparison.champion_score < 1 and comparison.champion_loss > 10
    assert 0 < comparison.challenger_score < 1
    assert "holdout R²" in comparison.summary()

    version = result.training.version
    assert version == 2 and registry.model_aliases("diabetes", team)["challenger"] == 2
    card = stored_card("diabetes", version, team)
    assert (card.task, card.score, card.adopted) == ("regression", "prediction", False)
    assert {"r2", "mae", "rmse"} <= set(card.metrics) and "roc_auc" not in card.metrics
    task, predictions = scored(
        team, "diabetes", version, window.drop(columns=["progression"]), "regression"
    )
    assert task == "regression" and predictions.min() > 20  # progression's scale, not 0..1

    client = MlflowClient(team.tracking_uri())
    trial_runs = client.search_runs(
        [result.training.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.search_run_id}' "
        "and tags.`agentic_mlops.kind` = 'tuning-trial'",
    )
    assert trial_runs and all(
        "r2" in r.data.metrics and "roc_auc" not in r.data.metrics for r in trial_runs
    )
    entry = ledger.get_decision(result.ledger_id, team)
    assert entry.evidence["proposal"]["space"]["families"].keys() <= {
        "gradient_boosting",
        "random_forest",
    }
    assert entry.outcome["holdout_metric"] == "r2"
    assert entry.outcome["champion_holdout_r2"] == comparison.champion_score


@pytest.mark.slow
def test_a_three_class_model_is_trained_then_retrained_by_accuracy(team):  # noqa: F811
    # the classes named by text: the recipe fits the names, its scores code them
    data = load_wine(as_frame=True)
    table = data.data.assign(cultivar=data.target.map({0: "barolo", 1: "grignolino", 2: "barbera"}))
    path = team.home / "data" / "wine.csv"
    table.to_csv(path, index=False)

    first = retrain(data_path=str(path), target="cultivar", model_name="wine", **QUICK)
    assert first.training.version == 1 and first.comparison.champion_version is None
    assert first.comparison.metric == "accuracy" and first.comparison.loss_metric is None
    assert registry.model_aliases("wine", team) == {"champion": 1, "challenger": 1}

    second = retrain(
        data_path=str(path),
        target="cultivar",
        model_name="wine",
        seed=5,
        require_improvement=False,
        **QUICK,
    )
    assert second.comparison.champion_version == 1
    assert (
        0.8 < second.comparison.champion_score <= 1
        and 0.8 < second.comparison.challenger_score <= 1
    )
    card = stored_card("wine", 2, team)
    assert (card.task, card.score) == ("multiclass", "predicted label")
    task, labels = scored(team, "wine", 2, table.drop(columns=["cultivar"]), "multiclass")
    assert task == "multiclass" and set(labels) <= {0.0, 1.0, 2.0} and len(set(labels)) == 3
    names = load_scoring_model("models:/wine/2", team.tracking_uri()).classes
    assert names == ["barbera", "barolo", "grignolino"]
    right = [names[int(code)] for code in labels] == table["cultivar"]
    assert right.mean() == pytest.approx(card.metrics["accuracy"], abs=0.1)


@pytest.mark.slow
def test_a_lifecycle_turn_retrains_an_adopted_classifier_with_our_recipe(team):  # noqa: F811
    register(team, "tumour")
    adopt(team, "tumour", "tumour-adopt.csv", "malignant")
    turn = lifecycle(
        batch_path=str(team.home / "data" / "tumour-shifted.csv"),
        model_name="tumour",
        retrain_max_trials=2,
        retrain_time_budget_seconds=60,
        require_improvement=False,
    )
    assert turn.model_name == "tumour" and turn.decision == "retrain"
    retrained = next(s for s in turn.steps if s.startswith("retrain: v2"))
    assert "holdout ROC AUC" in retrained and "vs champion v1" in retrained
    assert any("no canary" in s and "v2 stays the challenger" in s for s in turn.steps), turn.steps
    assert registry.model_aliases("tumour", team) == {"champion": 1, "challenger": 2}
    triage = ledger.get_decision(turn.ledger_id, team)
    assert (
        triage.outcome["challenger_version"] == 2 and triage.outcome["holdout_metric"] == "roc_auc"
    )
    assert triage.outcome["canary"] == "not started"
