"""The model families a search can choose from, their parameter bounds, and one tuning trial.

Each family is one scikit-learn `Pipeline` (imputation, one-hot encoding, scaling where the
family needs it, then the classifier). A trial grows its family's budget parameter (boosting
rounds, trees, solver iterations) over `STEPS` equal steps with warm starts and reports the
validation ROC AUC after each, so an early-stopping scheduler can end a poor trial after its
first steps. This module imports no Prefect or MLflow: Ray workers load it for every trial.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ModelFamily = Literal["gradient_boosting", "logistic_regression", "random_forest"]
FAMILIES: tuple[str, ...] = get_args(ModelFamily)
STEPS = 8
"""Steps of a trial: its budget parameter grows by an eighth at each."""


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


def family_pipeline(
    family: str,
    params: dict[str, Any],
    numeric: list[str],
    categorical: list[str],
    seed: int = 42,
    n_jobs: int = 1,
) -> Pipeline:
    """The unfitted pipeline of one family with the given hyperparameters.

    Raises:
        ValueError: an unknown family or a parameter the family does not have.
    """
    if family not in PARAMETER_BOUNDS:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    unknown = set(params) - set(PARAMETER_BOUNDS[family])
    if unknown:
        raise ValueError(f"{family} has no parameter(s) {', '.join(sorted(unknown))}")
    values = _integers(family, params)
    if family == "gradient_boosting":
        classifier: Any = HistGradientBoostingClassifier(
            random_state=seed, early_stopping=False, **values
        )
    elif family == "random_forest":
        classifier = RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **values)
    else:
        classifier = LogisticRegression(random_state=seed, **values)
    return Pipeline(
        [
            ("preprocess", preprocessor(numeric, categorical, family == "logistic_regression")),
            ("classifier", classifier),
        ]
    )


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


def family_params(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The family and its own parameters out of a flat search config (`family.param` keys)."""
    family = config["family"]
    prefix = f"{family}."
    return family, {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def step_budget(total: int, step: int) -> int:
    """The budget parameter's value at a step (1..STEPS): an equal share more at each."""
    return max(1, math.ceil(total * step / STEPS))


def run_trial(config: dict[str, Any], data: TuningData, report: Any) -> None:
    """Fit one configuration step by step, calling `report(metrics)` after each step.

    The budget parameter grows to its configured value over `STEPS` warm-started fits; for
    the tree families the last fit equals one with the full budget at once (scikit-learn's warm
    start keeps the random streams), for logistic regression it is the same optimum.
    """
    family, params = family_params(config)
    budget = BUDGET_PARAMETER[family]
    total = int(round(params[budget]))
    model = family_pipeline(
        family, {**params, budget: step_budget(total, 1)}, data.numeric, data.categorical, data.seed
    )
    model.set_params(classifier__warm_start=True)
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        model.set_params(**{f"classifier__{budget}": step_budget(total, step)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(data.x_fit, data.y_fit)
        scores = model.predict_proba(data.x_val)[:, 1]
        report(
            {
                "roc_auc": float(roc_auc_score(data.y_val, scores)),
                "step": step,
                "elapsed_seconds": time.perf_counter() - started,
            }
        )


def ray_trial(config: dict[str, Any], data: TuningData) -> None:
    """`run_trial` reporting to Ray Tune (the trainable handed to `tune.with_parameters`)."""
    from ray import tune

    run_trial(config, data, tune.report)
