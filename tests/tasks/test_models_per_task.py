"""Our recipe's families, trials and checks for every task, on scikit-learn's bundled tables
(diabetes: regression; wine: three cultivars; breast cancer: binary), not our churn data."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split

from agentic_mlops.agents.tuning_policy import enforce_guardrails, policy_proposal
from agentic_mlops.decisions import AdvisorEvidence, PastRun
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.models import (
    STEPS,
    TuningData,
    family_pipeline,
    pipeline_scores,
    run_trial,
)
from agentic_mlops.tasks.training import (
    evaluate_model,
    label_task,
    split_data,
    validate_training_table,
)
from agentic_mlops.tasks.tuning import DEFAULT_RANGES, SearchSpace, fitting_space


def diabetes() -> pd.DataFrame:
    data = load_diabetes(as_frame=True, scaled=False)
    return data.data.assign(progression=data.target)


def wine() -> pd.DataFrame:
    data = load_wine(as_frame=True)
    return data.data.assign(cultivar=data.target)


def tuning_data(frame: pd.DataFrame, target: str, task: str) -> TuningData:
    x, y = frame.drop(columns=[target]), frame[target]
    stratify = None if task == "regression" else y
    x_fit, x_val, y_fit, y_val = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=stratify
    )
    return TuningData(x_fit, y_fit, x_val, y_val, list(x.columns), [], seed=0, task=task)


def middle(family: str) -> dict[str, float]:
    return {name: (span.low + span.high) / 2 for name, span in DEFAULT_RANGES[family].items()}


def trial(config: dict, data: TuningData) -> list[dict]:
    reports: list[dict] = []
    run_trial(config, data, reports.append)
    return reports


def fitted(family: str, split, task: str):
    """A family's pipeline in the middle of its ranges, fitted on a split's training rows
    (every column numeric)."""
    columns = list(split.x_train.columns)
    pipeline = family_pipeline(family, middle(family), columns, [], task=task)
    return pipeline.fit(split.x_train, split.y_train)


def flat(family: str) -> dict:
    return {"family": family, **{f"{family}.{k}": v for k, v in middle(family).items()}}


def test_the_task_of_a_table_is_read_from_its_target():
    assert label_task(load_breast_cancer(as_frame=True).target) == "binary"
    assert label_task(diabetes()["progression"]) == "regression"
    assert label_task(wine()["cultivar"]) == "multiclass"
    assert label_task(pd.Series(["a", "b", "c", "a"])) == "multiclass"
    assert label_task(pd.Series([0.5, 1.0, 2.0])) == "regression"


@pytest.mark.parametrize("family", ["gradient_boosting", "random_forest"])
def test_a_regression_trial_reports_r2_at_every_step(family):
    reports = trial(flat(family), tuning_data(diabetes(), "progression", "regression"))
    assert [r["step"] for r in reports] == list(range(1, STEPS + 1))
    assert all(r["score"] == r["r2"] and "roc_auc" not in r for r in reports)
    # the fitted model's one-row scoring time, once, after the last step
    assert [r for r in reports if "latency_ms" in r] == reports[-1:]
    assert 0 < reports[-1]["latency_ms"] < 1_000
    # diabetes progression is hard: R² near 0.4 is what these families reach on it
    assert 0.25 < reports[-1]["r2"] < 0.7


@pytest.mark.parametrize("family", ["gradient_boosting", "logistic_regression", "random_forest"])
def test_a_multiclass_trial_reports_accuracy_of_three_cultivars(family):
    reports = trial(flat(family), tuning_data(wine(), "cultivar", "multiclass"))
    assert len(reports) == STEPS
    assert all(r["score"] == r["accuracy"] for r in reports)
    assert reports[-1]["accuracy"] > 0.85  # a third would be guessing


def test_a_fitted_pipeline_scores_as_any_mlflow_model_of_its_task():
    data = tuning_data(wine(), "cultivar", "multiclass")
    model = family_pipeline(
        "random_forest", middle("random_forest"), data.numeric, [], task=data.task
    )
    labels = pipeline_scores(model.fit(data.x_fit, data.y_fit), data.x_val, "multiclass")
    assert set(labels) <= {0, 1, 2} and labels.ndim == 1

    data = tuning_data(diabetes(), "progression", "regression")
    model = family_pipeline(
        "gradient_boosting", middle("gradient_boosting"), data.numeric, [], task="regression"
    )
    predictions = pipeline_scores(model.fit(data.x_fit, data.y_fit), data.x_val, "regression")
    assert predictions.max() > 1.5  # predictions on the target's scale, not probabilities


def test_logistic_regression_cannot_fit_a_regression_and_a_search_leaves_it_out():
    with pytest.raises(ValueError, match="logistic_regression cannot fit a regression model"):
        family_pipeline(
            "logistic_regression", middle("logistic_regression"), ["a"], [], task="regression"
        )
    space = SearchSpace(
        families={"logistic_regression": {}, "random_forest": {}},
        max_trials=4,
        time_budget_seconds=60,
    )
    assert set(fitting_space(space, "regression").families) == {"random_forest"}
    assert fitting_space(space, "multiclass") == space
    only_linear = space.model_copy(update={"families": {"logistic_regression": {}}})
    with pytest.raises(ValueError, match="no family of the search"):
        fitting_space(only_linear, "regression")


def test_the_advisor_policy_and_guardrails_keep_to_the_families_of_the_task(home: Settings):
    runs = [
        PastRun(
            family="random_forest",
            params=middle("random_forest"),
            score=0.4 - i / 100,
            kind="tuning-trial",
        )
        for i in range(8)
    ]
    evidence = AdvisorEvidence(
        model_name="diabetes", task="regression", metric="r2", past_runs=runs
    )
    proposal = policy_proposal(evidence.model_copy(update={"past_runs": []}), home.tune)
    assert set(proposal.space.families) == {"gradient_boosting", "random_forest"}
    narrowed = policy_proposal(evidence, home.tune)
    assert set(narrowed.space.families) == {"random_forest"}
    assert "best R² 0.400" in narrowed.rationale

    reckless = proposal.model_copy(
        update={
            "space": proposal.space.model_copy(update={"families": {"logistic_regression": {}}})
        }
    )
    standing, why = enforce_guardrails(reckless, evidence, home.tune)
    assert "logistic_regression cannot fit a regression model" in why
    assert "logistic_regression" not in standing.space.families


def test_a_table_that_does_not_suit_the_task_is_refused_in_one_line():
    frame = wine().assign(cultivar=lambda f: f["cultivar"].map({0: "a", 1: "b", 2: "c"}))
    with pytest.raises(DataError, match="must hold numbers to regress on"):
        validate_training_table(frame, "cultivar", task="regression")
    with pytest.raises(DataError, match="must hold only 0/1 labels"):
        validate_training_table(wine(), "cultivar", task="binary")
    validate_training_table(wine(), "cultivar", task="multiclass")


def test_classes_named_by_text_are_trained_on_and_scored_as_their_position():
    """Our recipe fits classes named by text as they are; its scores and the labels they are
    judged against are both coded by the pipeline's sorted class list."""
    names = {0: "barolo", 1: "grignolino", 2: "barbera"}
    frame = wine().assign(cultivar=lambda f: f["cultivar"].map(names))
    validate_training_table(frame, "cultivar", task="multiclass")
    split = split_data.fn(frame, "cultivar", 0.3, 0, "multiclass")
    model = fitted("random_forest", split, "multiclass")
    assert list(model.classes_) == ["barbera", "barolo", "grignolino"]
    scores = pipeline_scores(model, split.x_test, "multiclass")
    predicted = model.predict(split.x_test)
    assert scores.tolist() == [["barbera", "barolo", "grignolino"].index(p) for p in predicted]
    evaluation = evaluate_model.fn(model, split.x_test, split.y_test, 0, "multiclass")
    assert evaluation.metrics["accuracy"] == pytest.approx(
        float((predicted == split.y_test.to_numpy()).mean())
    )
    assert evaluation.metrics["accuracy"] > 0.8


def test_a_regression_split_and_evaluation_name_r2_and_its_errors():
    frame = diabetes()
    split = split_data.fn(frame, "progression", 0.25, 0, "regression")
    assert split.y_train.dtype == float and len(split.x_test) == 111
    model = fitted("gradient_boosting", split, "regression")
    evaluation = evaluate_model.fn(model, split.x_test, split.y_test, 0, "regression")
    assert {"r2", "rmse", "mae", "r2_standard_error"} <= set(evaluation.metrics)
    assert "roc_auc" not in evaluation.metrics and evaluation.calibration == {}
    # the progression is driven by bmi and s5 far more than by sex
    ranked = list(evaluation.feature_importance)
    assert ranked.index("bmi") < ranked.index("sex") and ranked.index("s5") < ranked.index("sex")
