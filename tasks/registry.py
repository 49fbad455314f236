"""Everything that speaks to MLflow: tracking runs, logged models and the registry's aliases.

Stages are not used; a model version's role is its alias: `champion` serves users,
`challenger` is the newest candidate. The first version ever registered is both. Calls that
can fail for transient reasons (a busy database, a server restarting) are retried with
exponential backoff when run as Prefect tasks; errors in our own input are not retried.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.mlflow_environment import WORKERS_VARIABLE, environment_kept, tracking_at

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
ROLLED_BACK = "rolled-back"
MODEL_ARTIFACT = "model"
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]
"""Types our own pipeline stores that skops does not trust by default; we built the model."""
_PERMANENT_ERROR_CODES = {
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
}


@dataclass(frozen=True)
class LoggedRun:
    """A finished training run and the model it logged."""

    run_id: str
    model_uri: str
    experiment_id: str
    dataset_digest: str


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and the aliases it holds."""

    name: str
    version: int
    run_id: str
    aliases: tuple[str, ...]


def is_transient(error: BaseException) -> bool:
    """Whether an MLflow failure is worth retrying: not our input, not a missing resource."""
    if isinstance(error, MlflowException):
        return error.error_code not in _PERMANENT_ERROR_CODES
    if isinstance(error, DataError | ValueError | TypeError | KeyError):
        return False
    return isinstance(
        error, OSError | TimeoutError | sqlite3.OperationalError | sqlalchemy.exc.OperationalError
    )


def _retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as error:  # the state holds the task's exception
        return is_transient(error)
    return False


def _mlflow_task(**options: Any):
    settings = load_settings()
    return task(
        retries=settings.mlflow.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.mlflow.retry_delay_seconds),
        retry_condition_fn=_retry_transient,
        **options,
    )


SQLITE_EVAL_WORKERS = 4


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the tracking URI in force, also made the fluent API's default."""
    uri = settings.tracking_uri()
    if settings.uses_embedded_mlflow():
        settings.ensure_dirs()
    with tracking_at(uri):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: Settings) -> str:
    """The id of our experiment, created on first use with its artifacts under home."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if not settings.tracking_uri().startswith(("http://", "https://", "databricks")):
        # a database-backed store without a tracking server keeps artifacts under home
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        artifact_location = settings.artifacts_dir.as_uri()
    try:
        return mlflow_client.create_experiment(
            settings.experiment_name, artifact_location=artifact_location
        )
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


@cache
def _autolog_agents(tracking_uri: str, experiment_name: str) -> None:
    import mlflow.pydantic_ai

    with environment_kept():
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment_name)
        mlflow.pydantic_ai.autolog(silent=True)


@contextmanager
def decision_trace(decision_point: str, tags: dict[str, str]) -> Iterator[dict[str, str]]:
    """One MLflow trace per agent decision, named for its decision point (the agent run's own
    spans inside it) and tagged with `tags` (flow run, model, version, mode). Yields a dict
    that holds `trace_id` once the trace exists. MLflow's spans do not raise on a tracking
    problem, and the tags are best effort: tracing never changes a decision."""
    import mlflow

    found: dict[str, str] = {}
    with mlflow.start_span(name=decision_point) as span:
        with suppress(Exception):
            mlflow.update_current_trace(tags=tags)
            found["trace_id"] = span.trace_id
        yield found


def tag_trace(trace_id: str | None, tags: dict[str, str], settings: Settings) -> None:
    """Add tags known after a decision (its ledger id) to its trace; best effort."""
    if not trace_id:
        return
    with suppress(Exception):
        mlflow_client = client(settings)
        for key, value in tags.items():
            mlflow_client.set_trace_tag(trace_id, key, value)


def trace_agent_runs(settings: Settings) -> bool:
    """Trace pydantic-ai agent runs (model calls, tool calls) to MLflow, once per process.

    Best effort: tracing never blocks a decision, so a failure to set it up returns False.
    """
    try:
        ensure_experiment(settings)
        _autolog_agents(settings.tracking_uri(), settings.experiment_name)
    except Exception:  # any tracking backend problem; the decision goes on untraced
        return False
    return True


def log_genai_evaluation(
    rows: list[dict[str, Any]],
    scorers: list[Any],
    run_name: str,
    params: dict[str, str],
    metrics: dict[str, float],
    settings: Settings,
) -> tuple[str, dict[str, float]]:
    """Score `rows` (each `inputs`, `outputs`, `expectations`) with MLflow's GenAI evaluation
    (`mlflow.genai.evaluate` and its `@scorer` functions) in a new run of our experiment, with
    `params` and `metrics` logged beside the scorers' own aggregates.

    Every row becomes a trace with one assessment per scorer, readable in the run's Traces tab.
    On a SQLite store the evaluation runs on `SQLITE_EVAL_WORKERS` threads unless
    `MLFLOW_GENAI_EVAL_MAX_WORKERS` says otherwise: MLflow's default of 10 threads exhausts the
    store's connection pool, and traces are then lost after a 30 s wait.
    What MLflow prints meanwhile goes to stderr: stdout stays the caller's (JSON reports).

    Returns:
        The run id and the scorers' aggregates (e.g. `acceptable/mean`).
    """
    import mlflow.genai

    experiment_id = ensure_experiment(settings)
    with environment_kept():
        if settings.tracking_uri().startswith("sqlite") and WORKERS_VARIABLE not in os.environ:
            os.environ[WORKERS_VARIABLE] = str(SQLITE_EVAL_WORKERS)
        mlflow.set_tracking_uri(settings.tracking_uri())
        mlflow.set_experiment(experiment_id=experiment_id)
        with mlflow.start_run(run_name=run_name, tags={"agentic-mlops.kind": "agents-eval"}) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            with redirect_stdout(sys.stderr):
                result = mlflow.genai.evaluate(data=rows, scorers=scorers)
    return run.info.run_id, {name: float(value) for name, value in result.metrics.items()}


def as_model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows shaped for a registered model: integer columns as floats.

    The logged signature declares integer features as doubles, because a served row with a
    missing value arrives as a float and MLflow refuses to turn floats into integers. MLflow
    also refuses the int64 -> double cast, so every caller that scores goes through here.
    """
    integers = frame.select_dtypes("integer").columns
    return frame.astype({column: "float64" for column in integers})


def _pip_requirements() -> list[str]:
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"]


def _training_datasets(
    train_frame: pd.DataFrame,
    target: str,
    data_source: str,
    extra_datasets: list[tuple[str, pd.DataFrame, dict[str, str]]] | None,
    model_name: str,
) -> tuple[Any, list[tuple[str, Any, dict[str, str]]]]:
    """The training rows and any extra inputs as `mlflow.data` datasets, their schemas
    computed here, where MLflow's warning about integer columns is silenced: the model's
    signature declares them as doubles (see `as_model_input`), the dataset's is a record."""
    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            train_frame, source=data_source, targets=target, name=f"{model_name}-training"
        )
        dataset.schema  # noqa: B018 - computed here, inside the filter, then cached
        extras = [
            (
                context,
                mlflow.data.from_pandas(
                    rows,
                    source=tags.get("source", data_source),
                    targets=target,
                    name=f"{model_name}-{context}",
                ),
                tags,
            )
            for context, rows, tags in extra_datasets or []
        ]
        for _, extra, _ in extras:
            extra.schema  # noqa: B018 - computed inside the filter, as above
    return dataset, extras


def _log_json_files(mlflow_client: MlflowClient, run_id: str, files: dict[str, Any]) -> None:
    """Log each value as `<key>.json` in the run's artifacts."""
    with tempfile.TemporaryDirectory() as folder:
        for key, value in files.items():
            path = Path(folder) / f"{key}.json"
            path.write_text(json.dumps(value, indent=2))
            mlflow_client.log_artifact(run_id, str(path))


def _log_model(model: Any, features: pd.DataFrame) -> Any:
    """Log the fitted pipeline to the active run with its signature and an input example;
    a binary classifier's pyfunc answers with `predict_proba` (its probability pair), any
    other model's with `predict` (a label or a prediction)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = as_model_input(features.head(5))
    predict = "predict_proba" if len(getattr(model, "classes_", ())) == 2 else "predict"
    return mlflow.sklearn.log_model(
        model,
        name=MODEL_ARTIFACT,
        signature=infer_signature(example, getattr(model, predict)(example)),
        input_example=example,
        pip_requirements=_pip_requirements(),
        pyfunc_predict_fn=predict,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )


@_mlflow_task(name="log-training-run", cache_policy=NO_CACHE)
def log_training_run(
    model: Any,
    train_frame: pd.DataFrame,
    target: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    extras: dict[str, Any],
    data_source: str,
    run_name: str | None = None,
    *,
    settings: Settings,
    parent_run_id: str | None = None,
    extra_datasets: list[tuple[str, pd.DataFrame, dict[str, str]]] | None = None,
) -> LoggedRun:
    """Log one training run: params and metrics in one batch, the dataset, the model.

    Args:
        model: The fitted pipeline.
        train_frame: The training rows with their target, logged as an `mlflow.data` dataset.
        target: Label column.
        params: Hyperparameters and data settings.
        metrics: Holdout metrics.
        extras: JSON-serialisable evaluation details (calibration curve, feature importance),
            each logged as `<key>.json`.
        data_source: Where the data came from (a path, or `generated:...`).
        run_name: Name of the run in MLflow.
        settings: Settings in force.
        parent_run_id: Make the run a child of this one (a tuning search's parent run).
        extra_datasets: More inputs as (context, rows, tags), e.g. synthetic training rows
            with their lineage; logged under the name `<model>-<context>`.

    Returns:
        The run id, the model URI and the dataset digest.
    """
    experiment_id = ensure_experiment(settings)
    mlflow_client = client(settings)
    dataset, extras_in = _training_datasets(
        train_frame, target, data_source, extra_datasets, settings.model_name
    )
    run_tags = prefect_run_tags() | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow_client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        mlflow.log_input(dataset, context="training")
        for context, extra, tags in extras_in:
            mlflow.log_input(extra, context=context, tags=tags)
        mlflow.set_tags({"agentic_mlops.model_name": settings.model_name, "target": target})
        _log_json_files(mlflow_client, run_id, extras)
        logged = _log_model(model, train_frame.drop(columns=[target]))
    return LoggedRun(run_id, logged.model_uri, experiment_id, dataset.digest)


def alias_version(name: str, alias: str, settings: Settings) -> int | None:
    """The version that holds an alias, or None when no version does."""
    try:
        return int(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        message = str(error).lower()
        unreachable = "api request" in message or "connection" in message
        if not unreachable and (
            error.error_code == "RESOURCE_DOES_NOT_EXIST"
            or re.search(r"alias .*not found", message)
        ):
            return None
        raise


def set_alias(name: str, alias: str, version: int, settings: Settings) -> None:
    """Point an alias at a version; setting it where it already points is harmless."""
    client(settings).set_registered_model_alias(name, alias, str(version))


@_mlflow_task(name="register-version", cache_policy=NO_CACHE)
def register_version(
    logged: LoggedRun, settings: Settings, description: str | None = None
) -> RegisteredVersion:
    """Register a logged model as a new version, mark it `challenger`, and `champion` if first.

    Registering the same run twice returns its existing version instead of a duplicate, so a
    retried flow does not pile up versions.
    """
    mlflow_client = client(settings)
    name = settings.model_name
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(
                name, description=f"{name}, trained and guarded by agentic-mlops."
            )
        except MlflowException:
            mlflow_client.get_registered_model(name)
    existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{logged.run_id}'")
    if existing:
        version = max(int(v.version) for v in existing)
    else:
        created = mlflow_client.create_model_version(
            name, logged.model_uri, run_id=logged.run_id, description=description
        )
        version = int(created.version)
    set_alias(name, CHALLENGER, version, settings)
    mark_announced(name, version, "registered by agentic-mlops", settings)  # its flow hands over
    if alias_version(name, CHAMPION, settings) is None:
        set_alias(name, CHAMPION, version, settings)
    current = mlflow_client.get_model_version(name, str(version))
    return RegisteredVersion(name, version, logged.run_id, tuple(sorted(current.aliases)))


ANNOUNCED_TAG = "agentic_mlops.challenger_announced"
"""A version tag saying how its turn as `challenger` became known (registered by our flows,
announced by a team's flow, seen by the monitor), so that it is canaried once."""


def mark_announced(name: str, version: int, how: str, settings: Settings) -> None:
    """Tag a version as a known challenger (`ANNOUNCED_TAG`)."""
    client(settings).set_model_version_tag(name, str(version), ANNOUNCED_TAG, how)


def announced(name: str, version: int, settings: Settings) -> str | None:
    """How a version became a known challenger; None when nobody said so."""
    return client(settings).get_model_version(name, str(version)).tags.get(ANNOUNCED_TAG)


def model_aliases(name: str, settings: Settings) -> dict[str, int]:
    """Every alias of a registered model and the version it points at."""
    try:
        model = client(settings).get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in sorted(model.aliases.items())}


@dataclass(frozen=True)
class AliasMove:
    """What an alias move did, so it can be undone: every alias touched and where it was."""

    name: str
    before: dict[str, int | None]
    after: dict[str, int | None]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _apply_aliases(name: str, aliases: dict[str, int | None], settings: Settings) -> None:
    mlflow_client = client(settings)
    for alias, version in aliases.items():
        if version is None:
            if alias_version(name, alias, settings) is not None:
                mlflow_client.delete_registered_model_alias(name, alias)
        else:
            set_alias(name, alias, version, settings)


def promote_champion(name: str, version: int, settings: Settings) -> AliasMove:
    """Make `version` the champion and remember the one it replaces as `previous-champion`.

    Promoting the version that is already champion changes nothing.
    """
    champion = alias_version(name, CHAMPION, settings)
    before = {
        CHAMPION: champion,
        PREVIOUS_CHAMPION: alias_version(name, PREVIOUS_CHAMPION, settings),
    }
    if champion == version:
        return AliasMove(name, before, before)
    after = {CHAMPION: version, PREVIOUS_CHAMPION: champion}
    _apply_aliases(name, {PREVIOUS_CHAMPION: champion, CHAMPION: version}, settings)
    return AliasMove(name, before, after)


def rollback_champion(name: str, settings: Settings) -> AliasMove:
    """Move `champion` back to `previous-champion`; with no previous champion, change nothing.

    The rolled-back version keeps the alias `rolled-back`, and `previous-champion` is cleared,
    so running the rollback twice does not bounce between versions.
    """
    champion = alias_version(name, CHAMPION, settings)
    previous = alias_version(name, PREVIOUS_CHAMPION, settings)
    before = {
        CHAMPION: champion,
        PREVIOUS_CHAMPION: previous,
        ROLLED_BACK: alias_version(name, ROLLED_BACK, settings),
    }
    if previous is None or previous == champion:
        return AliasMove(name, before, before)
    after = {CHAMPION: previous, PREVIOUS_CHAMPION: None, ROLLED_BACK: champion}
    _apply_aliases(
        name, {ROLLED_BACK: champion, CHAMPION: previous, PREVIOUS_CHAMPION: None}, settings
    )
    return AliasMove(name, before, after)


def undo_alias_move(move: AliasMove, settings: Settings) -> None:
    """Put every alias a move touched back where it was (the registered undo of a move)."""
    if move.changed:
        _apply_aliases(move.name, move.before, settings)


REFERENCE_ARTIFACT_PATH = "reference"


def reference_dir(name: str, version: int, settings: Settings) -> Path:
    """Where a model version's reference artifacts (profile, expectation suite, model card)
    live under home."""
    return settings.home / "models" / name / f"v{version}"


def version_run_id(name: str, version: int, settings: Settings) -> str:
    return client(settings).get_model_version(name, str(version)).run_id


def prefect_run_tags() -> dict[str, str]:
    """Tags that lead from an MLflow run back to the Prefect flow run that made it."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return (
        {"prefect.flow_run_id": str(run_id), "prefect.flow_name": flow_run.flow_name}
        if run_id
        else {}
    )


@dataclass(frozen=True)
class LoggedFile:
    """A file logged to a model version's MLflow run."""

    run_id: str
    experiment_id: str
    path: str


def version_file_location(
    name: str, version: int, file: Path, folder: str, settings: Settings
) -> LoggedFile:
    """Where a file about a version lands in its MLflow run once logged (`log_version_file`),
    so a link can be given before the file exists."""
    mlflow_client = client(settings)
    run_id = version_run_id(name, version, settings)
    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    return LoggedFile(run_id, experiment_id, f"{folder}/{Path(file).name}")


def log_version_file(
    name: str, version: int, file: Path, folder: str, settings: Settings
) -> LoggedFile:
    """Log a file about a version (a drift report, the decisions plot) to its MLflow run."""
    location = version_file_location(name, version, file, folder, settings)
    client(settings).log_artifact(location.run_id, str(file), folder)
    return location


def tag_canary_outcome(
    name: str, version: int, outcome: str, reason: str, settings: Settings
) -> bool:
    """Mark a version with how its canary ended (`promoted`, `rolled_back`), in its tags and
    its description, so the registry itself says why a version is or is not serving.

    Best effort: the rollout's result stands when MLflow cannot take the tag (False).
    """
    reason = reason[:500]
    try:
        mlflow_client = client(settings)
        mlflow_client.set_model_version_tag(name, str(version), "agentic_mlops.canary", outcome)
        mlflow_client.set_model_version_tag(
            name, str(version), "agentic_mlops.canary_reason", reason
        )
        mlflow_client.update_model_version(
            name, str(version), description=f"canary {outcome}: {reason}"
        )
    except Exception:  # an unreachable tracking server: the outcome is in the ledger anyway
        return False
    return True


def log_reference(name: str, version: int, settings: Settings) -> None:
    """Log a version's reference folder to its MLflow run, beside the model."""
    folder = reference_dir(name, version, settings)
    client(settings).log_artifacts(
        version_run_id(name, version, settings), str(folder), REFERENCE_ARTIFACT_PATH
    )


def fetch_reference(name: str, version: int, settings: Settings) -> Path:
    """A version's reference folder: the local copy, or downloaded from its MLflow run.

    Raises:
        DataError: the version has no reference artifacts (trained before they existed).
    """
    folder = reference_dir(name, version, settings)
    if (folder / "model_card.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mlflow.artifacts.download_artifacts(
            run_id=version_run_id(name, version, settings),
            artifact_path=REFERENCE_ARTIFACT_PATH,
            dst_path=str(folder.parent / f".download-v{version}"),
            tracking_uri=settings.tracking_uri(),
        )
    except (MlflowException, OSError) as error:
        raise DataError(f"{name} v{version}: no reference artifacts ({error})") from error
    downloaded = folder.parent / f".download-v{version}" / REFERENCE_ARTIFACT_PATH
    for item in downloaded.iterdir():
        item.replace(folder / item.name)
    return folder


@task(name="move-champion-alias", cache_policy=NO_CACHE)
def move_champion_alias(name: str, version: int, settings: Settings) -> AliasMove:
    """Make `version` the champion inside a promotion transaction; undone on rollback."""
    from prefect.transactions import get_transaction

    move = promote_champion(name, version, settings)
    transaction = get_transaction()
    if transaction is not None:
        transaction.set("alias_move", move)
        transaction.set("settings", settings)
    return move


@move_champion_alias.on_rollback
def _undo_champion_alias(transaction) -> None:
    undo_alias_move(transaction.get("alias_move"), transaction.get("settings"))
