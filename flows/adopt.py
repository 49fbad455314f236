"""Adopt a model the project did not train: evaluate it by scoring, store its reference.

Runbook:
1. Check the candidate, writing nothing: the registered model and version exist and load,
   the table has the target and the model's input columns, the task (given, or inferred
   from the model and its outputs) matches the model. Any problem ends the run in `Failed`
   named `InvalidData` with a one-line message.
2. Evaluate it on the table's labels by scoring the model: holdout metrics for its task,
   and permutation feature importance (the drop of the task's primary metric).
3. Store the version's reference (drift profile with the model's own scores, expectation
   suite, model card, report sample) under home and in the version's MLflow run.
4. Make the version `champion` if the model has no champion yet.
5. Publish a markdown summary as a keyed Prefect artifact.

Afterwards the drift check (`model_name`) checks batches against this reference.
"""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State
from pydantic import Field

from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import AdoptionResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks.adoption import (
    check_adoption,
    crown_if_unguarded,
    evaluate_candidate,
    store_adopted_reference,
)
from agentic_mlops.tasks.reports import artifact_key

TaskChoice = Literal["auto", "binary", "multiclass", "regression"]


def adoption_summary(result: AdoptionResult) -> str:
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.metrics.items())
    top = list(result.feature_importance.items())[:10]
    importance = "\n".join(f"| {name} | {value:.4f} |" for name, value in top)
    crowned = "now the champion" if result.became_champion else f"champion v{result.champion}"
    return (
        f"# Adopted: {result.model_name} v{result.version} ({result.task}), {crowned}\n\n"
        f"Score: {result.score}; {result.rows} labelled rows; "
        f"reference `{result.reference_dir}`\n\n"
        f"| metric | value |\n| --- | --- |\n{metrics}\n\n"
        f"| feature | permutation importance |\n| --- | --- |\n{importance}\n"
    )


@flow(name="adopt", log_prints=True)
def adopt(
    model_name: str,
    data_path: str,
    target: str,
    version: Annotated[int, Field(ge=1)] | Empty = None,
    task: TaskChoice = "auto",
) -> AdoptionResult | State:
    """Adopt a registered MLflow model: store its reference so every phase can guard it.

    Args:
        model_name: The registered model's name in MLflow.
        data_path: A labelled CSV or Parquet table on the worker's disk, ideally rows the
            model was not trained on; it becomes the reference and the holdout.
        target: Label column of the table.
        version: The version to adopt. Empty: the champion, else the newest version.
        task: binary, multiclass or regression; auto: what the model and its outputs show.
    """
    settings = load_settings()
    settings.ensure_dirs()
    logger = get_run_logger()
    checked = check_adoption(
        model_name, version, data_path, target, task, settings, return_state=True
    )
    if checked.is_failed():
        message = str(checked.result(raise_on_failure=False))
        logger.error("adoption refused: %s", message)
        return Failed(name="InvalidData", message=message)
    candidate = checked.result()
    logger.info("adopting %s v%d as a %s model", model_name, candidate.version, candidate.task)

    card = evaluate_candidate(candidate, settings.seed)
    folder = store_adopted_reference(candidate, card, settings)
    champion, crowned = crown_if_unguarded(model_name, candidate.version, settings)

    result = AdoptionResult(
        model_name=model_name,
        version=candidate.version,
        task=candidate.task,
        score=card.score,
        metrics=card.metrics,
        feature_importance=card.feature_importance,
        rows=len(candidate.frame),
        reference_dir=str(folder),
        champion=champion,
        became_champion=crowned,
    )
    create_markdown_artifact(
        key=artifact_key(model_name, "adoption"),
        markdown=adoption_summary(result),
        description=f"{model_name} v{candidate.version} adopted",
    )
    return result
