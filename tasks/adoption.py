"""Adopting a model the project did not train: evaluate it by scoring it, and build its reference.

A team's model, registered in MLflow by its own code, is scored on a labelled table the team
gives (ideally rows the model was not trained on). Its holdout metrics and permutation feature
importance are computed by scoring the model itself (`tasks/scoring.py`), whatever its
flavour; the reference (drift profile with the model's scores, expectation suite, model card,
report sample) is then stored like a version we trained. Every check (the model, the version,
the columns, the task) runs before anything is written, so a refused adoption changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from agentic_mlops.decisions import Task, task_metric
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import registry
from agentic_mlops.tasks.batches import DataError, read_table, require_columns
from agentic_mlops.tasks.reference import (
    ModelCard,
    scoring_model,
    store_reference,
)
from agentic_mlops.tasks.scoring import (
    ScoringModel,
    check_task,
    infer_task,
    requirement_mismatches,
    score_kind,
)
from agentic_mlops.tasks.training import holdout_metrics, scored_importance

MIN_ADOPTION_ROWS = 20


@dataclass
class Candidate:
    """A registered version about to be adopted, with the table it is judged on."""

    name: str
    version: int
    model: ScoringModel
    frame: pd.DataFrame
    target: str
    task: Task
    source: str


def resolve_version(name: str, version: int | None, settings: Settings) -> int:
    """The version to adopt: the one given, else the champion, else the newest.

    Raises:
        DataError: the model is not registered, the version does not exist, or it has no
            MLflow run to log its reference to.
    """
    mlflow_client = registry.client(settings)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as error:
        raise DataError(f"no registered model named {name!r} in {settings.tracking_uri()}") from (
            error
        )
    if version is None:
        version = registry.alias_version(name, registry.CHAMPION, settings)
    if version is None:
        versions = mlflow_client.search_model_versions(f"name='{name}'")
        if not versions:
            raise DataError(f"{name!r} has no versions")
        version = max(int(v.version) for v in versions)
    try:
        found = mlflow_client.get_model_version(name, str(version))
    except MlflowException as error:
        raise DataError(f"{name!r} has no version {version}") from error
    if not found.run_id:
        raise DataError(f"{name} v{version} has no MLflow run to log its reference to")
    return int(version)


def prepare(
    name: str,
    version: int | None,
    data_path: str,
    target: str,
    task_name: str,
    settings: Settings,
) -> Candidate:
    """Check everything an adoption needs, writing nothing.

    Raises:
        DataError: an unknown model or version, an artifact that cannot be loaded, a table
            without the target or the model's input columns, too few labelled rows, or a
            task that does not match the model's outputs.
    """
    frame = read_table(data_path)
    require_columns(frame, [target], source=str(data_path))
    labels = frame[target]
    if labels.isna().any():
        raise DataError(f"{data_path}: target column {target!r} has null values")
    if len(frame) < MIN_ADOPTION_ROWS:
        raise DataError(f"{data_path}: {len(frame)} rows is too few (need {MIN_ADOPTION_ROWS})")
    version = resolve_version(name, version, settings)
    model = scoring_model(name, version, settings)
    features = frame.drop(columns=[target])
    model.conform(features)
    chosen: Task = infer_task(model, features, labels) if task_name == "auto" else task_name
    check_task(model, chosen, features, labels)
    return Candidate(name, version, model, frame, target, chosen, str(Path(data_path).resolve()))


@task(name="check-adoption", cache_policy=NO_CACHE)
def check_adoption(
    name: str,
    version: int | None,
    data_path: str,
    target: str,
    task_name: str,
    settings: Settings,
) -> Candidate:
    """The checked candidate (see `prepare`); a `DataError` fails the task with its message.
    Packages installed here that differ from those the model was logged with are warned of:
    the model may score differently than where it was trained."""
    candidate = prepare(name, version, data_path, target, task_name, settings)
    for mismatch in requirement_mismatches(candidate.model.uri, settings.tracking_uri()):
        get_run_logger().warning("%s v%s: %s", candidate.name, candidate.version, mismatch)
    return candidate


@task(name="evaluate-adopted-model", cache_policy=NO_CACHE)
def evaluate_candidate(candidate: Candidate, seed: int = 42) -> ModelCard:
    """The model card: holdout metrics and permutation importance from the model's scores."""
    features = candidate.frame.drop(columns=[candidate.target])
    labels = candidate.model.coded(candidate.frame[candidate.target], candidate.task)
    scores = candidate.model.score(features, candidate.task)
    importance = scored_importance(
        lambda rows: candidate.model.score(rows, candidate.task),
        features,
        labels,
        lambda y, s: task_metric(candidate.task, y, s),
        seed,
    )
    return ModelCard(
        model_name=candidate.name,
        version=candidate.version,
        target=candidate.target,
        metrics=holdout_metrics(candidate.task, labels, scores),
        feature_importance=importance,
        features=list(features.columns),
        data_source=candidate.source,
        task=candidate.task,
        score=score_kind(candidate.task, candidate.model),
        adopted=True,
    )


def store_adopted_reference(candidate: Candidate, card: ModelCard, settings: Settings) -> Path:
    """Store the version's reference (under home and in its MLflow run)."""
    features = candidate.frame.drop(columns=[candidate.target])
    scores = candidate.model.score(features, candidate.task)
    return store_reference(candidate.frame, card, scores, settings)


@task(name="crown-if-unguarded", cache_policy=NO_CACHE)
def crown_if_unguarded(name: str, version: int, settings: Settings) -> tuple[int, bool]:
    """Make `version` the champion when the model has none yet (running it twice is
    harmless); return the champion and whether this call made it."""
    champion = registry.alias_version(name, registry.CHAMPION, settings)
    if champion is None:
        registry.set_alias(name, registry.CHAMPION, version, settings)
        return version, True
    return champion, False
