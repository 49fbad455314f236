import pandas as pd
import pytest

from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import (
    Hyperparameters,
    evaluate_model,
    expected_calibration_error,
    fit_model,
    split_data,
    validate_training_table,
)

FAST = Hyperparameters(max_iter=60)


@pytest.fixture(scope="module")
def fitted():
    frame = generate_churn(3_000, seed=11)
    split = split_data.fn(frame, "churn", 0.25, 11)
    model = fit_model.fn(split, FAST, 11)
    return split, model


def test_split_is_stratified(fitted):
    split, _ = fitted
    assert len(split.x_test) == 750
    assert split.y_train.mean() == pytest.approx(split.y_test.mean(), abs=0.01)
    assert "churn" not in split.x_train.columns


def test_model_learns_the_ground_truth(fitted):
    split, model = fitted
    evaluation = evaluate_model.fn(model, split.x_test, split.y_test, 11)
    assert evaluation.metrics["roc_auc"] > 0.72
    assert 0 < evaluation.metrics["log_loss"] < 0.69
    assert evaluation.metrics["expected_calibration_error"] < 0.1
    assert len(evaluation.calibration["predicted"]) == len(evaluation.calibration["observed"])
    top_two = list(evaluation.feature_importance)[:2]
    assert set(top_two) & {"tenure_months", "contract"}


def test_model_scores_rows_with_nulls_and_unseen_categories(fitted):
    _, model = fitted
    rows = generate_churn(50, seed=2).drop(columns=["churn"])
    rows.loc[:10, "monthly_charges"] = None
    rows.loc[:10, "contract"] = "never_seen"
    scores = model.predict_proba(rows)[:, 1]
    assert ((scores > 0) & (scores < 1)).all()


def test_calibration_error_of_perfect_and_terrible_scores():
    labels = pd.Series([0, 1] * 500).to_numpy()
    assert expected_calibration_error(labels, labels * 0.999 + 0.0005) < 0.01
    assert expected_calibration_error(labels, 1 - labels * 0.999 - 0.0005) > 0.9


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["churn"]), "missing columns: churn"),
        (lambda f: f.assign(churn=1), "single class"),
        (lambda f: f.assign(churn=f["churn"].astype(float).where(f.index > 5)), "null"),
        (lambda f: f.assign(churn="yes"), "0/1"),
        (lambda f: f.head(10), "need 40"),
        (lambda f: f[["churn"]], "no feature columns"),
    ],
)
def test_untrainable_tables_are_rejected(mutate, message):
    with pytest.raises(DataError, match=message):
        validate_training_table(mutate(generate_churn(200, seed=1)), "churn")
