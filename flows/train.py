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

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import Field

from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks.churn import Scenario
from agentic_mlops.tasks.publishing import publish_model, publish_training_summary
from agentic_mlops.tasks.training import (
    Hyperparameters,
    evaluate_model,
    fit_model,
    split_data,
    training_table,
)


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
    loaded = training_table(data_path, generate_rows, target, scenario, seed, settings.data_dir)
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
    publish_training_summary(result, logged, settings)
    logger.info("registered %s v%d as %s", result.model_name, result.version, result.aliases)
    return result
