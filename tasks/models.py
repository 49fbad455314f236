"""The model families a search can choose from, their parameter bounds, and one tuning trial.

Each family is one scikit-learn `Pipeline` (imputation, one-hot encoding, scaling where the
family needs it, then the estimator for the task: a classifier for a binary or multiclass
label, a regressor for a numeric one). A trial grows its family's budget parameter (boosting
rounds, trees, solver iterations) over `STEPS` equal steps with warm starts and reports the
task's validation metric after each (`TASK_METRIC`: ROC AUC, accuracy or R², higher is better
for each), so an early-stopping scheduler can end a poor trial after its first steps. This
module imports no Prefect or MLflow: Ray workers load it for every trial.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from agentic_mlops.decisions import TASK_METRIC, Task, task_metric
from agentic_mlops.tasks.classes import class_positions, coded_series

ModelFamily = Literal["gradient_boosting", "logistic_regression", "random_forest"]
FAMILIES: tuple[str, ...] = get_args(ModelFamily)
TASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "binary": FAMILIES,
    "multiclass": FAMILIES,
    "regression": ("gradient_boosting", "random_forest"),
}
"""The families that can fit each task: logistic regression is a classifier only."""
STEPS = 8
"""Steps of a trial: its budget parameter grows by an eighth at each."""
LATENCY_CALLS = 21
"""One-row scorings timed after a trial's last step; the fastest is its `latency_ms`."""


@dataclass(frozen=True)
class Bound:
    """The values a hyperparameter may take at all."""

    low: float
    high: float
    integer: bool = False
    log: bool = False


PARAMETER_BOUNDS: dict[str, dict[str, Bound]] = {
    "gradient_boosting": {
        "learning_rate": Bound(0.005, 1.0, log=True),
        "max_iter": Bound(16, 1_000, integer=True),
        "max_leaf_nodes": Bound(4, 256, integer=True, log=True),
        "min_samples_leaf": Bound(2, 500, integer=True, log=True),
        "l2_regularization": Bound(0.0, 10.0),
    },
    "random_forest": {
        "n_estimators": Bound(16, 800, integer=True),
        "max_depth": Bound(2, 40, integer=True),
        "min_samples_leaf": Bound(1, 200, integer=True, log=True),
        "max_features": Bound(0.05, 1.0),
    },
    "logistic_regression": {
        "C": Bound(1e-4, 1e3, log=True),
        "max_iter": Bound(16, 2_000, integer=True),
    },
}
BUDGET_PARAMETER = {
    "gradient_boosting": "max_iter",
    "random_forest": "n_estimators",
    "logistic_regression": "max_iter",
}
"""The parameter each family's trial grows step by step."""


def preprocessor(numeric: list[str], categorical: list[str], scale: bool) -> ColumnTransformer:
    """Median-impute (and optionally standardise) numbers; mode-impute and one-hot categories."""
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scale:
        numeric_steps.append(("scale", StandardScaler()))
    return ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ]
    )


def _integers(family: str, params: dict[str, Any]) -> dict[str, Any]:
    bounds = PARAMETER_BOUNDS[family]
    return {
        name: int(round(value)) if bounds[name].integer else float(value)
        for name, value in params.items()
    }


def _estimator(family: str, task: str, values: dict[str, Any], seed: int, n_jobs: int) -> Any:
    regression = task == "regression"
    if family == "gradient_boosting":
        boosting = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        return boosting(random_state=seed, early_stopping=False, **values)
    if family == "random_forest":
        forest = RandomForestRegressor if regression else RandomForestClassifier
        return forest(random_state=seed, n_jobs=n_jobs, **values)
    return LogisticRegression(random_state=seed, **values)


def family_pipeline(
    family: str,
    params: dict[str, Any],
    numeric: list[str],
    categorical: list[str],
    seed: int = 42,
    n_jobs: int = 1,
    task: Task = "binary",
) -> Pipeline:
    """The unfitted pipeline of one family with the given hyperparameters, for a task.

    The estimator's step is named `classifier` for every task, so a pipeline's parameters
    are addressed the same way whatever it predicts.

    Raises:
        ValueError: an unknown family, a family that cannot fit the task, or a parameter the
            family does not have.
    """
    if family not in PARAMETER_BOUNDS:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family not in TASK_FAMILIES[task]:
        raise ValueError(
            f"{family} cannot fit a {task} model; choose one of {', '.join(TASK_FAMILIES[task])}"
        )
    unknown = set(params) - set(PARAMETER_BOUNDS[family])
    if unknown:
        raise ValueError(f"{family} has no parameter(s) {', '.join(sorted(unknown))}")
    estimator = _estimator(family, task, _integers(family, params), seed, n_jobs)
    return Pipeline(
        [
            ("preprocess", preprocessor(numeric, categorical, family == "logistic_regression")),
            ("classifier", estimator),
        ]
    )


def pipeline_scores(model: Pipeline, rows: pd.DataFrame, task: str) -> np.ndarray:
    """A fitted pipeline's score per row, as `tasks/scoring.py` scores any model: the
    positive-class probability (binary), the predicted label (multiclass: a number, a class
    named by text coded by the pipeline's classes), the prediction (regression)."""
    if task == "binary":
        return model.predict_proba(rows)[:, 1]
    if task == "multiclass":
        return class_positions(model.predict(rows), list(model.classes_))
    return np.asarray(model.predict(rows))


def pipeline_labels(model: Pipeline, labels: pd.Series, task: str) -> pd.Series:
    """Labels as they meet a fitted pipeline's scores: multiclass ones coded by its classes."""
    return coded_series(labels, list(model.classes_)) if task == "multiclass" else labels


def task_labels(labels: pd.Series, task: str) -> pd.Series:
    """Labels as the task's estimators fit them: 0/1 integers, classes as they are, floats."""
    if task == "binary":
        return labels.astype(int)
    return labels.astype(float) if task == "regression" else labels


@dataclass
class TuningData:
    """The rows a search fits and validates on; never the holdout a challenger is judged on."""

    x_fit: pd.DataFrame
    y_fit: pd.Series
    x_val: pd.DataFrame
    y_val: pd.Series
    numeric: list[str]
    categorical: list[str]
    seed: int = 42
    task: Task = "binary"
    latency_limit_ms: float | None = None
    """One-row scoring time a challenger should stay within (the champion's plus
    `retraining.LATENCY_MARGIN_MS`); None: no champion to compare with."""

    @property
    def metric(self) -> str:
        """The validation metric the search maximises for this data's task."""
        return TASK_METRIC[self.task]


def family_params(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The family and its own parameters out of a flat search config (`family.param` keys)."""
    family = config["family"]
    prefix = f"{family}."
    return family, {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def step_budget(total: int, step: int) -> int:
    """The budget parameter's value at a step (1..STEPS): an equal share more at each."""
    return max(1, math.ceil(total * step / STEPS))


def row_latency_ms(score: Any, rows: pd.DataFrame, calls: int = LATENCY_CALLS) -> float:
    """CPU milliseconds `score` takes on one row in this thread, as a model server scores a
    request (rows taken in turn from `rows`): the fastest of `calls`, the model's own cost.

    Wall time misleads here: the champion is timed in the flow's process, beside the demo's
    customer threads, and each time a model gives up the GIL it waits up to Python's 5 ms
    switch interval to get it back. A boosting model that scores a row in 3.9 ms took 23.7 ms
    (fastest of 21) beside two busy threads, 5.3 ms of its thread's CPU; timed by wall, a
    champion at 18 ms let a 22 ms forest through, which the canary then held on latency.
    """
    times = []
    for index in range(calls):
        row = rows.iloc[[index % len(rows)]]
        started = time.thread_time()
        score(row)
        times.append((time.thread_time() - started) * 1000)
    return float(np.min(times))


def run_trial(config: dict[str, Any], data: TuningData, report: Any) -> None:
    """Fit one configuration step by step, calling `report(metrics)` after each step: the
    task's validation metric as `score` and under its own name, the step and the seconds;
    after the last step also `latency_ms`, the fitted model's one-row scoring time.

    The budget parameter grows to its configured value over `STEPS` warm-started fits; for
    the tree families the last fit equals one with the full budget at once (scikit-learn's warm
    start keeps the random streams), for logistic regression it is the same optimum.
    """
    family, params = family_params(config)
    budget = BUDGET_PARAMETER[family]
    total = int(round(params[budget]))
    model = family_pipeline(
        family,
        {**params, budget: step_budget(total, 1)},
        data.numeric,
        data.categorical,
        data.seed,
        task=data.task,
    )
    model.set_params(classifier__warm_start=True)
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        model.set_params(**{f"classifier__{budget}": step_budget(total, step)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(data.x_fit, data.y_fit)
        score = task_metric(
            data.task,
            pipeline_labels(model, data.y_val, data.task),
            pipeline_scores(model, data.x_val, data.task),
        )
        metrics = {
            "score": score,
            data.metric: score,
            "step": step,
            "elapsed_seconds": time.perf_counter() - started,
        }
        if step == STEPS:
            metrics["latency_ms"] = row_latency_ms(
                lambda row: pipeline_scores(model, row, data.task), data.x_val
            )
        report(metrics)


def ray_trial(config: dict[str, Any], data: TuningData) -> None:
    """`run_trial` reporting to Ray Tune (the trainable handed to `tune.with_parameters`)."""
    from ray import tune

    run_trial(config, data, tune.report)
