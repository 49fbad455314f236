"""Fitting and evaluating the churn classifier with scikit-learn.

The model is one `Pipeline`: imputation and one-hot encoding in a `ColumnTransformer`, then a
histogram gradient-boosting classifier. Evaluation reports discrimination (ROC AUC), accuracy,
log loss and calibration (Brier score, expected calibration error and the reliability curve),
and permutation feature importance, which the drift-triage agent later weighs drift by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from pydantic import BaseModel, Field
from sklearn.calibration import calibration_curve
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from agentic_mlops.tasks.batches import DataError, read_data, require_columns, write_table
from agentic_mlops.tasks.churn import Scenario, generate_churn
from agentic_mlops.tasks.models import preprocessor

MIN_TRAINING_ROWS = 40


class Hyperparameters(BaseModel):
    """Hyperparameters of the gradient-boosting classifier."""

    learning_rate: float = Field(default=0.1, gt=0, le=1, description="Shrinkage per tree.")
    max_iter: int = Field(default=200, ge=1, le=5_000, description="Number of boosting rounds.")
    max_depth: int | None = Field(default=None, ge=1, le=64, description="Depth limit per tree.")
    max_leaf_nodes: int = Field(default=31, ge=2, le=1_024, description="Leaves per tree.")
    min_samples_leaf: int = Field(default=20, ge=1, description="Smallest leaf.")
    l2_regularization: float = Field(default=0.0, ge=0, description="L2 penalty on leaf values.")


@dataclass
class Split:
    """Training and holdout features and labels."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass
class Evaluation:
    """How well a fitted model does on the holdout."""

    metrics: dict[str, float]
    calibration: dict[str, list[float]] = field(default_factory=dict)
    feature_importance: dict[str, float] = field(default_factory=dict)


def feature_columns(frame: pd.DataFrame, target: str) -> tuple[list[str], list[str]]:
    """Split the non-target columns into numeric and categorical ones."""
    features = frame.drop(columns=[target])
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    return numeric, categorical


def validate_training_table(
    frame: pd.DataFrame, target: str, source: str = "training data"
) -> None:
    """Raise `DataError` unless the table can be trained on: a clean binary target, enough rows.

    Raises:
        DataError: the target is missing, null, not 0/1, or a single class; too few rows.
    """
    require_columns(frame, [target], source=source)
    labels = frame[target]
    if labels.isna().any():
        raise DataError(f"{source}: target column {target!r} has null values")
    if not labels.isin([0, 1, True, False]).all():
        raise DataError(f"{source}: target column {target!r} must hold only 0/1 labels")
    if labels.nunique() < 2:
        raise DataError(f"{source}: target column {target!r} has a single class")
    if len(frame) < MIN_TRAINING_ROWS:
        raise DataError(
            f"{source}: {len(frame)} rows is too few to train (need {MIN_TRAINING_ROWS})"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides {target!r}")


@task(name="split-data", cache_policy=NO_CACHE)
def split_data(frame: pd.DataFrame, target: str, test_size: float = 0.25, seed: int = 42) -> Split:
    """Stratified train/holdout split.

    Raises:
        DataError: the target column is missing or null, or holds fewer than two classes.
    """
    validate_training_table(frame, target)
    x = frame.drop(columns=[target])
    y = frame[target].astype(int)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test)


def build_pipeline(
    numeric: list[str], categorical: list[str], params: Hyperparameters, seed: int = 42
) -> Pipeline:
    """The unfitted preprocessing + gradient-boosting pipeline."""
    preprocess = preprocessor(numeric, categorical, scale=False)
    classifier = HistGradientBoostingClassifier(random_state=seed, **params.model_dump())
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


@task(name="fit-model", cache_policy=NO_CACHE)
def fit_model(split: Split, params: Hyperparameters, seed: int = 42) -> Pipeline:
    """Fit the pipeline on the training part of a split."""
    frame = split.x_train.assign(_target=split.y_train)
    numeric, categorical = feature_columns(frame, "_target")
    model = build_pipeline(numeric, categorical, params, seed)
    return model.fit(split.x_train, split.y_train)


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Share-weighted mean gap between predicted and observed churn rate over score bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            gap += in_bin.mean() * abs(scores[in_bin].mean() - y_true[in_bin].mean())
    return float(gap)


def binary_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """A binary classifier's holdout figures from its positive-class scores: ranking, accuracy,
    log loss (scores clipped to [1e-6, 1 - 1e-6], so a 0/1 score is not infinite), calibration,
    and what the drift check's calibration evidence needs (`positive_rate`, `mean_prediction`,
    `prediction_variance_sum`, `holdout_rows`)."""
    y_true = np.asarray(y_true).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "accuracy": float(accuracy_score(y_true, scores >= 0.5)),
        "log_loss": float(log_loss(y_true, np.clip(scores, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "brier_score": float(brier_score_loss(y_true, scores)),
        "expected_calibration_error": expected_calibration_error(y_true, scores),
        "positive_rate": float(y_true.mean()),
        "mean_prediction": float(np.mean(scores)),
        "prediction_variance_sum": float(np.sum(scores * (1 - scores))),
        "holdout_rows": float(len(y_true)),
    }


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model(
    model: Pipeline, x_test: pd.DataFrame, y_test: pd.Series, seed: int = 42
) -> Evaluation:
    """Holdout metrics, reliability curve and permutation feature importance (ROC AUC drop)."""
    y_true = y_test.to_numpy()
    scores = model.predict_proba(x_test)[:, 1]
    metrics = binary_metrics(y_true, scores)
    observed, predicted = calibration_curve(y_true, scores, n_bins=10, strategy="quantile")
    importance = permutation_importance(
        model, x_test, y_true, scoring="roc_auc", n_repeats=3, random_state=seed, n_jobs=1
    )
    ranked = sorted(
        zip(x_test.columns, importance.importances_mean, strict=True), key=lambda kv: -kv[1]
    )
    return Evaluation(
        metrics=metrics,
        calibration={"predicted": predicted.tolist(), "observed": observed.tolist()},
        feature_importance={str(name): float(value) for name, value in ranked},
    )


@task(name="load-training-data", cache_policy=NO_CACHE)
def load_training_data(
    data_path: str | None,
    target: str,
    data_dir: Path,
    rows: int = 5_000,
    scenario: Scenario = "none",
    seed: int = 42,
) -> tuple[pd.DataFrame, str] | State:
    """The training table and where it came from.

    Args:
        data_path: A CSV or Parquet file, or a folder of batches. When None, a churn table is
            generated and saved under `data_dir`, so the run's dataset has a real source.
        target: Label column the table must have.
        data_dir: Folder for generated tables.
        rows: Rows to generate.
        scenario: Drift scenario of generated data.
        seed: Seed of generated data.

    Returns:
        The table and its source path, or a `Failed` state named `InvalidData` whose message
        says what is wrong (missing, unreadable, empty, no usable target), so the run ends in
        a named state instead of a traceback.
    """
    if data_path:
        try:
            frame = read_data(data_path)
            validate_training_table(frame, target, source=str(data_path))
        except DataError as error:
            return Failed(name="InvalidData", message=str(error))
        return frame, str(Path(data_path).resolve())
    frame = generate_churn(rows, seed, scenario)
    path = write_table(frame, Path(data_dir) / f"train-{scenario}-seed{seed}-{rows}.parquet")
    return frame, str(path)


def training_table(
    data_path: str | None,
    generate_rows: int | None,
    target: str,
    scenario: Scenario,
    seed: int,
    data_dir: Path,
) -> tuple[pd.DataFrame, str] | State:
    """The table a run names (`data_path`, or `generate_rows` of generated churn data) and its
    source, or the `Failed` state named `InvalidData` the run ends with.

    A run that names neither fails: a deployed run whose data path was left empty must not
    train on generated data without anyone asking for it.
    """
    if not data_path and not generate_rows:
        message = "no training data: set data_path (or generate_rows for generated churn data)"
        get_run_logger().error(message)
        return Failed(name="InvalidData", message=message)
    loaded = load_training_data(
        data_path or None,
        target,
        data_dir,
        generate_rows or 0,
        scenario,
        seed,
        return_state=True,
    )
    if loaded.is_failed():
        get_run_logger().error("training data rejected: %s", loaded.message)
        return Failed(name="InvalidData", message=loaded.message)
    return loaded.result()
