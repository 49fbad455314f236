"""Publishing a fitted model: its MLflow run, its registered version, its stored reference.

Every model this project trains (the `train` flow's, a retraining's refit) leaves the same
things behind: one MLflow run with its parameters, metrics, dataset and model; a version
registered as `challenger` (and `champion` when it is the first); and the reference later drift
checks read (drift profile with its scores, expectation suite, model card, report sample).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact
from sklearn.pipeline import Pipeline

from agentic_mlops.decisions import Task
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.models import pipeline_scores
from agentic_mlops.tasks.reference import ModelCard, store_reference
from agentic_mlops.tasks.registry import LoggedRun, log_training_run, register_version
from agentic_mlops.tasks.reports import artifact_key, mlflow_run_link
from agentic_mlops.tasks.scoring import score_kind
from agentic_mlops.tasks.training import Evaluation, Split


def publish_model(
    model: Pipeline,
    frame: pd.DataFrame,
    split: Split,
    target: str,
    params: dict[str, Any],
    evaluation: Evaluation,
    source: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    extra_datasets: list[tuple[str, pd.DataFrame, dict[str, str]]] | None = None,
    training_rows: pd.DataFrame | None = None,
    *,
    settings: Settings,
    task: Task = "binary",
) -> tuple[TrainingResult, LoggedRun]:
    """Log a fitted model to MLflow, register it as `challenger`, and store its reference
    (its card names the model's task and what its score is).

    `training_rows` are the rows the model was fitted on when they are not the split's own
    (synthetic rows added); the reference is always built from the real `frame`.
    """
    fitted_on = (
        training_rows
        if training_rows is not None
        else split.x_train.assign(**{target: split.y_train})
    )
    logged = log_training_run(
        model,
        fitted_on,
        target,
        params,
        evaluation.metrics,
        {
            "calibration": evaluation.calibration,
            "feature_importance": evaluation.feature_importance,
        },
        source,
        run_name,
        settings=settings,
        parent_run_id=parent_run_id,
        extra_datasets=extra_datasets,
    )
    registered = register_version(logged, settings)
    store_reference(
        frame,
        ModelCard(
            model_name=registered.name,
            version=registered.version,
            target=target,
            metrics=evaluation.metrics,
            feature_importance=evaluation.feature_importance,
            features=list(split.x_train.columns),
            data_source=source,
            task=task,
            score=score_kind(task, None),
        ),
        pipeline_scores(model, frame.drop(columns=[target]), task),
        settings,
    )
    result = TrainingResult(
        model_name=registered.name,
        version=registered.version,
        aliases=list(registered.aliases),
        run_id=logged.run_id,
        experiment_id=logged.experiment_id,
        metrics=evaluation.metrics,
        data_source=source,
        dataset_digest=logged.dataset_digest,
        rows=len(frame),
    )
    return result, logged


def training_summary(result: TrainingResult, link: str) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.metrics.items())
    return (
        f"# Training run: {result.model_name} v{result.version}\n\n"
        f"Aliases: {', '.join(result.aliases) or 'none'}  \n"
        f"Data: `{result.data_source}` ({result.rows} rows, digest `{result.dataset_digest}`)  \n"
        f"MLflow run: `{result.run_id}`, {link}\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n"
    )


def publish_training_summary(result: TrainingResult, logged: LoggedRun, settings: Settings) -> None:
    """The training run's markdown summary (metrics, data, a link to its MLflow run) as a
    keyed Prefect artifact."""
    create_markdown_artifact(
        key=artifact_key(settings.model_name, "training-summary"),
        markdown=training_summary(
            result, mlflow_run_link(logged.run_id, logged.experiment_id, settings)
        ),
        description=f"{result.model_name} v{result.version} training summary",
    )
