"""A team's own Prefect flows, with agentic-mlops guarding the model they register.

`train_tumour` is the team's training: a scikit-learn classifier of breast tumours, logged and
registered with plain MLflow calls, its new version marked `challenger`. Deployed, it is also
what a `retrain` decision runs instead of the agentic-mlops recipe (set
`AGENTIC_MLOPS_RETRAIN_DEPLOYMENTS='{"tumour": "train-tumour/team"}'`): it takes the recent
data window as `data_path` and the decision's ledger id as `triage_ledger_id`.

`guard_tumour` is the team's pipeline: train, then call the agentic-mlops phases as subflows,
`adopt` (store the reference, crown the first champion) and `drift_check` on a new batch, and
read their typed results.

    python examples/team_flows.py train.csv holdout.csv batch.csv
"""

from __future__ import annotations

import sys

import mlflow
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from prefect import flow
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agentic_mlops import (
    AdoptionResult,
    DriftCheckResult,
    adopt,
    announce_challenger,
    drift_check,
)

MODEL = "tumour"
TARGET = "malignant"


@flow(name="train-tumour")
def train_tumour(
    data_path: str,
    triage_ledger_id: str | None = None,
    model_name: str = MODEL,
    experiment: str = "team-experiments",
) -> int:
    """Train on a labelled table, register the model, mark the new version `challenger`,
    and announce it: on the event, the `canary` deployment rolls it out.

    Args:
        data_path: Labelled CSV table (the recent window, when a retrain decision runs it).
        triage_ledger_id: The agentic-mlops decision that asked for this run, kept as a tag.
        model_name: Registered model name.
        experiment: MLflow experiment of the team's runs.
    """
    frame = pd.read_csv(data_path)
    x, y = frame.drop(columns=[TARGET]), frame[TARGET]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(tags={"triage_ledger_id": triage_ledger_id or ""}):
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict_proba(x)),
            registered_model_name=model_name,
        )
    version = int(logged.registered_model_version)
    MlflowClient().set_registered_model_alias(model_name, "challenger", str(version))
    announce_challenger(model_name, version, triage_ledger_id)
    return version


class GuardReport(BaseModel):
    """What the team's pipeline got back from agentic-mlops."""

    version: int
    adoption: AdoptionResult
    check: DriftCheckResult


@flow(name="guard-tumour")
def guard_tumour(train_path: str, holdout_path: str, batch_path: str) -> GuardReport:
    """Train and register the team's model, adopt it, and drift-check a new batch."""
    version = train_tumour(train_path)
    adoption = adopt(model_name=MODEL, data_path=holdout_path, target=TARGET, version=version)
    check = drift_check(current_path=batch_path, target=TARGET, model_name=MODEL, act=False)
    return GuardReport(version=version, adoption=adoption, check=check)


if __name__ == "__main__":
    report = guard_tumour(*sys.argv[1:4])
    print(report.check.decision.action, report.check.decision.rationale)
