"""Training and registry phase: load data, fit, evaluate, log to MLflow, register a challenger.

Runbook:
1. Load the training table (a file, a folder of batches, or freshly generated churn data).
2. Split it into training and holdout rows, stratified by the label.
3. Fit the preprocessing + gradient-boosting pipeline.
4. Evaluate on the holdout: ROC AUC, accuracy, log loss, calibration, feature importance.
5. Log params, metrics, the dataset and the model to MLflow in one run.
6. Register the model as a new version with alias `challenger` (and `champion` if first).
7. Store the version's reference (drift profile with its scores, expectation suite, model
   card, report sample) under home and in the MLflow run, for later drift checks.
8. Publish a markdown summary as a keyed Prefect artifact.

Bad data ends the run in a `Failed` state named `InvalidData` with a one-line message.
"""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State
from pydantic import Field
from sklearn.pipeline import Pipeline

from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks.churn import Scenario
from agentic_mlops.tasks.reference import ModelCard, store_reference
from agentic_mlops.tasks.registry import LoggedRun, log_training_run, register_version
from agentic_mlops.tasks.reports import artifact_key, mlflow_run_link
from agentic_mlops.tasks.training import (
    Evaluation,
    Hyperparameters,
    Split,
    evaluate_model,
    fit_model,
    load_training_data,
    split_data,
)


def training_summary(result: TrainingResult, link: str) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.metrics.items())
    return (
        f"# Training run: {result.model_name} v{result.version}\n\n"
        f"Aliases: {', '.join(result.aliases) or 'none'}  \n"
        f"Data: `{result.data_source}` ({result.rows} rows, digest `{result.dataset_digest}`)  \n"
        f"MLflow run: `{result.run_id}`, {link}\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n"
    )


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
    settings: Settings | None = None,
) -> tuple[TrainingResult, LoggedRun]:
    """Log a fitted model to MLflow, register it as `challenger`, and store its reference.

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
        ),
        model.predict_proba(frame.drop(columns=[target]))[:, 1],
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


def training_table(
    data_path: str | None,
    generate_rows: int | None,
    target: str,
    scenario: Scenario,
    seed: int,
    settings: Settings,
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
        settings.data_dir,
        generate_rows or 0,
        scenario,
        seed,
        return_state=True,
    )
    if loaded.is_failed():
        get_run_logger().error("training data rejected: %s", loaded.message)
        return Failed(name="InvalidData", message=loaded.message)
    return loaded.result()


@flow(name="train", log_prints=True)
def train(
    data_path: str | Empty = None,
    generate_rows: Annotated[int, Field(ge=100, le=10_000_000)] | Empty = None,
    target: str = "churn",
    scenario: Scenario = "none",
    seed: int = 42,
    test_size: Annotated[float, Field(gt=0.05, lt=0.9)] = 0.25,
    hyperparameters: Hyperparameters | Empty = None,
    run_name: str | Empty = None,
    model_name: str | Empty = None,
) -> TrainingResult | State:
    """Train the churn model and register it as the new challenger.

    Args:
        data_path: Training table: a CSV or Parquet file, or a folder of batches, on the
            worker's disk (a relative path resolves against the deployment's working
            directory). Either this or `generate_rows`.
        generate_rows: Train on this many rows of generated churn data instead (demos and
            trials); `scenario` shapes them.
        target: Label column.
        scenario: Drift scenario of generated data (none, covariate, concept, quality,
            gradual).
        seed: Seed of generated data, of the holdout split and of the model.
        test_size: Share of rows kept as holdout.
        hyperparameters: Gradient-boosting hyperparameters. Empty: the defaults.
        run_name: Name of the MLflow run. Empty: "train <model name>".
        model_name: The registered model the version joins. Empty: the settings' model name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    logger = get_run_logger()
    loaded = training_table(data_path, generate_rows, target, scenario, seed, settings)
    if isinstance(loaded, State):
        return loaded
    frame, source = loaded
    logger.info("training on %d rows from %s", len(frame), source)

    hyperparameters = hyperparameters or Hyperparameters()
    split = split_data(frame, target, test_size, seed)
    model = fit_model(split, hyperparameters, seed)
    evaluation = evaluate_model(model, split.x_test, split.y_test, seed)
    logger.info("holdout ROC AUC %.4f", evaluation.metrics["roc_auc"])

    result, logged = publish_model(
        model,
        frame,
        split,
        target,
        {
            **hyperparameters.model_dump(),
            "family": "gradient_boosting",
            "seed": seed,
            "test_size": test_size,
            "rows": len(frame),
        },
        evaluation,
        source,
        run_name or f"train {settings.model_name}",
        settings=settings,
    )
    create_markdown_artifact(
        key=artifact_key(settings.model_name, "training-summary"),
        markdown=training_summary(
            result, mlflow_run_link(logged.run_id, logged.experiment_id, settings)
        ),
        description=f"{result.model_name} v{result.version} training summary",
    )
    logger.info("registered %s v%d as %s", result.model_name, result.version, result.aliases)
    return result
