"""XGBoost and LightGBM models of a team's own, through their MLflow flavours.

Each is trained on the breast-cancer table and registered by plain calls
(`mlflow.xgboost.log_model`, `mlflow.lightgbm.log_model`), then adopted, drift-checked on a
clean and a shifted batch, and served behind the router: its score is the positive-class
probability of the flavour's native model (`predict_proba[:, 1]`). Each takes over two
minutes on two shared cores: they are in the slow suite; `tests/tasks/test_scoring.py` scores
both flavours in `make test`.
"""

from __future__ import annotations

import importlib

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from tests.test_own_models import (
    adopt,
    drift,
    serve_and_score,
    split_three,
    team,  # noqa: F401
    team_mlflow,
    tumour_table,
)


def fitted_booster(flavour: str):
    """A gradient-boosted classifier of the flavour's library, fitted on the training rows."""
    train = split_three(tumour_table())[0]
    x, y = train.drop(columns=["malignant"]), train["malignant"]
    if flavour == "xgboost":
        from xgboost import XGBClassifier

        model = XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.2, n_jobs=1)
    else:
        from lightgbm import LGBMClassifier

        model = LGBMClassifier(n_estimators=60, num_leaves=8, n_jobs=1, verbose=-1)
    return model.fit(x, y), x


def register_booster(settings, name: str, flavour: str) -> int:
    """Log and register the model with its own MLflow flavour, as the team's code would."""
    model, x = fitted_booster(flavour)
    log_model = importlib.import_module(f"mlflow.{flavour}").log_model
    with team_mlflow(settings.home) as experiment_id, mlflow.start_run(experiment_id=experiment_id):
        info = log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict_proba(x)),
            registered_model_name=name,
        )
    return int(info.registered_model_version)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["lightgbm", "xgboost"])
def test_a_boosted_classifier_is_adopted_checked_and_served_through_its_flavour(
    team,  # noqa: F811
    flavour,
):
    name = f"tumour-{flavour}"
    assert register_booster(team, name, flavour) == 1
    adopted = adopt(team, name, "tumour-adopt.csv", "malignant")
    assert adopted["task"] == "binary" and adopted["score"] == "positive-class probability"
    assert adopted["became_champion"] and adopted["metrics"]["roc_auc"] > 0.95

    clean = drift(team, name, "tumour-clean.csv", "malignant")
    assert clean["decision"]["action"] in ("none", "monitor"), clean["decision"]
    moved = drift(team, name, "tumour-shifted.csv", "malignant")
    assert moved["decision"]["action"] == "retrain", moved["decision"]

    rows = pd.read_csv(team.home / "data" / "tumour-clean.csv").drop(columns=["malignant"])
    native = importlib.import_module(f"mlflow.{flavour}").load_model(f"models:/{name}/1")
    expected = native.predict_proba(rows)[:, 1]
    served = serve_and_score(team, name, rows.head(20))
    np.testing.assert_allclose(served, expected[:20], rtol=1e-6)
    assert len(set(np.round(served, 6))) > 2  # probabilities, not labels
