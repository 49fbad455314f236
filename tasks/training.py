"""Fitting and evaluating models with scikit-learn: the churn classifier, and the checks and
holdout figures of any task.

The churn model is one `Pipeline`: imputation and one-hot encoding in a `ColumnTransformer`,
then a histogram gradient-boosting classifier. A binary classifier's evaluation reports
discrimination (ROC AUC), accuracy, log loss and calibration (Brier score, expected
calibration error and the reliability curve); a multiclass one's accuracy, a regressor's R²
and its errors (`holdout_metrics`). Both come with permutation feature importance, which the
drift-triage agent later weighs drift by.
"""

from __future__ import annotations

from collections.abc import Callable
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
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from agentic_mlops.decisions import Task, task_metric
from agentic_mlops.tasks.batches import DataError, read_data, require_columns, write_table
from agentic_mlops.tasks.churn import Scenario, generate_churn
from agentic_mlops.tasks.models import pipeline_labels, pipeline_scores, preprocessor, task_labels
from agentic_mlops.tasks.reference import r2_standard_error

MIN_TRAINING_ROWS = 40
IMPORTANCE_REPEATS = 3
MULTICLASS_LABELS = 20
"""Most distinct labels a table's target may hold and be read as classes, not numbers."""


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


def label_task(labels: pd.Series) -> Task:
    """The task a target column asks for, from its values alone: 0/1 labels are binary;
    numbers with a fraction or more than `MULTICLASS_LABELS` distinct values are a
    regression; anything else (a few integers, text) is multiclass."""
    values = labels.dropna()
    if values.isin([0, 1, True, False]).all():
        return "binary"
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        fractional = bool((values.astype(float) % 1 != 0).any())
        if fractional or values.nunique() > MULTICLASS_LABELS:
            return "regression"
    return "multiclass"


def validate_training_table(
    frame: pd.DataFrame, target: str, source: str = "training data", task: Task = "binary"
) -> None:
    """Raise `DataError` unless the table can be trained on for the task: a clean target
    (0/1 for binary, two classes or more for multiclass, numbers for regression), enough rows.

    Raises:
        DataError: the target is missing or null, does not suit the task, or holds a single
            value; too few rows; no feature columns.
    """
    require_columns(frame, [target], source=source)
    labels = frame[target]
    if labels.isna().any():
        raise DataError(f"{source}: target column {target!r} has null values")
    if task == "binary" and not labels.isin([0, 1, True, False]).all():
        raise DataError(f"{source}: target column {target!r} must hold only 0/1 labels")
    if task == "regression" and (
        not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels)
    ):
        raise DataError(f"{source}: target column {target!r} must hold numbers to regress on")
    if labels.nunique() < 2:
        single = "value" if task == "regression" else "class"
        raise DataError(f"{source}: target column {target!r} has a single {single}")
    if len(frame) < MIN_TRAINING_ROWS:
        raise DataError(
            f"{source}: {len(frame)} rows is too few to train (need {MIN_TRAINING_ROWS})"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides {target!r}")


@task(name="split-data", cache_policy=NO_CACHE)
def split_data(
    frame: pd.DataFrame,
    target: str,
    test_size: float = 0.25,
    seed: int = 42,
    task: Task = "binary",
) -> Split:
    """Train/holdout split, stratified by the label for a classifier.

    Raises:
        DataError: the target column is missing or null, or does not suit the task.
    """
    validate_training_table(frame, target, task=task)
    x = frame.drop(columns=[target])
    y = task_labels(frame[target], task)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=None if task == "regression" else y
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
    model: Pipeline, x_test: pd.DataFrame, y_test: pd.Series, seed: int = 42, task: Task = "binary"
) -> Evaluation:
    """Holdout metrics and permutation feature importance (the drop of the task's metric),
    with the reliability curve for a binary classifier."""
    if task != "binary":
        scores = pipeline_scores(model, x_test, task)
        y_test = pipeline_labels(model, y_test, task)
        importance = scored_importance(
            lambda rows: pipeline_scores(model, rows, task),
            x_test,
            y_test,
            lambda y, s: task_metric(task, y, s),
            seed,
        )
        return Evaluation(holdout_metrics(task, y_test, scores), {}, importance)
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


def holdout_metrics(task: Task, labels: pd.Series, scores: np.ndarray) -> dict[str, float]:
    """The metrics a card holds for a task, computed from the model's scores on labelled rows.

    A binary classifier's include the figures the drift check's calibration evidence needs
    (`positive_rate`, `mean_prediction`, `prediction_variance_sum`, `holdout_rows`).
    """
    y = labels.to_numpy()
    rows = {"holdout_rows": float(len(y))}
    if task == "regression":
        errors = scores - y.astype(float)
        return {
            "r2": float(r2_score(y, scores)),
            "r2_standard_error": r2_standard_error(y.astype(float), scores),
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "mae": float(mean_absolute_error(y, scores)),
            "mean_target": float(np.mean(y)),
            "mean_prediction": float(np.mean(scores)),
            **rows,
        }
    if task == "multiclass":
        return {"accuracy": float(accuracy_score(y, scores)), **rows}
    return binary_metrics(y, scores)


def scored_importance(
    score: Callable[[pd.DataFrame], np.ndarray],
    features: pd.DataFrame,
    labels: pd.Series,
    metric: Callable[[pd.Series, np.ndarray], float],
    seed: int = 42,
    repeats: int = IMPORTANCE_REPEATS,
) -> dict[str, float]:
    """How much the metric drops when each column is shuffled, averaged over repeats, most
    important first: computed by scoring the model, so it works for any flavour."""
    generator = np.random.default_rng(seed)
    baseline = metric(labels, score(features))
    drops = {}
    for column in features.columns:
        total = 0.0
        for _ in range(repeats):
            shuffled = features.copy()
            shuffled[column] = generator.permutation(shuffled[column].to_numpy())
            total += baseline - metric(labels, score(shuffled))
        drops[str(column)] = total / repeats
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


@task(name="load-training-data", cache_policy=NO_CACHE)
def load_training_data(
    data_path: str | None,
    target: str,
    data_dir: Path,
    rows: int = 5_000,
    scenario: Scenario = "none",
    seed: int = 42,
    task: Task | None = "binary",
) -> tuple[pd.DataFrame, str] | State:
    """The training table and where it came from, checked for the task.

    Args:
        data_path: A CSV or Parquet file, or a folder of batches. When None, a churn table is
            generated and saved under `data_dir`, so the run's dataset has a real source.
        target: Label column the table must have.
        data_dir: Folder for generated tables.
        rows: Rows to generate.
        scenario: Drift scenario of generated data.
        seed: Seed of generated data.
        task: The task the table must suit; None: the one its target's values say.

    Returns:
        The table and its source path, or a `Failed` state named `InvalidData` whose message
        says what is wrong (missing, unreadable, empty, no usable target), so the run ends in
        a named state instead of a traceback.
    """
    if data_path:
        try:
            frame = read_data(data_path)
            if task is None and target in frame:
                task = label_task(frame[target])
            validate_training_table(frame, target, source=str(data_path), task=task or "binary")
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
    task: Task | None = "binary",
) -> tuple[pd.DataFrame, str] | State:
    """The table a run names (`data_path`, or `generate_rows` of generated churn data) and its
    source, checked for the task (None: the one its target says), or the `Failed` state
    named `InvalidData` the run ends with.

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
        task,
        return_state=True,
    )
    if loaded.is_failed():
        get_run_logger().error("training data rejected: %s", loaded.message)
        return Failed(name="InvalidData", message=loaded.message)
    return loaded.result()
