"""Retraining with a search: advisor -> (synthesis) -> tuning -> evaluate -> register -> canary.

Runbook:
1. Load the training window (a file, a folder of batches, or generated churn data) for the
   model's task (binary, multiclass or regression: asked for, else the champion's, else what
   the target says) and split off the holdout, stratified by the label for a classifier; the
   rest is split again into fit and validation rows for the search. Holdout and validation
   rows are always real.
2. Read the triage decision that asked for this (`triage_ledger_id`) and, with a recent
   production batch (`recent_path`), find the drifted features' segments the training
   window barely covers.
3. Ask the tuning advisor for the search (families, ranges, budget, synthesis); guardrails
   bound it; record it in the ledger.
4. If asked for, add SMOTE-NC rows for those segments to the fit rows only.
5. Run the Ray Tune search (ASHA, random or Optuna TPE), each trial an MLflow child run of
   one parent run.
6. Refit the best configuration on all non-holdout rows; evaluate it and the current
   champion (ours or adopted) on the same holdout by the task's metric.
7. Log and register the refit as `challenger` (a child of the search run, with the
   synthetic rows as a separate dataset), store its reference, record the outcome.
8. Hand the challenger to the canary rollout, only when a model serves (else say why no
   canary ran): the `canary-rollout/canary` deployment, an
   `agentic-mlops.canary.requested` event, or an in-process subflow.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from agentic_mlops.agents.tuning_advisor import AdvisorOutcome, advise
from agentic_mlops.flows.canary import canary_rollout
from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import retraining
from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.churn import Scenario
from agentic_mlops.tasks.retraining import HandOver, HoldoutComparison
from agentic_mlops.tasks.search_runs import start_search_run
from agentic_mlops.tasks.training import label_task, training_table
from agentic_mlops.tasks.tuning import SearchResult, search


class RetrainResult(BaseModel):
    """What a retraining found, registered and handed over."""

    training: TrainingResult
    search_run_id: str
    best_family: str
    best_params: dict[str, Any]
    trials: int
    stopped_early: int
    search_seconds: float
    cluster: str
    comparison: HoldoutComparison
    synthetic_rows: int
    advisor: AdvisorOutcome
    ledger_id: str
    hand_over: str

    @classmethod
    def of(
        cls,
        found: SearchResult,
        challenger: retraining.Challenger,
        search_run_id: str,
        advice: AdvisorOutcome,
        ledger_id: str,
        handed: str,
    ) -> RetrainResult:
        return cls(
            training=challenger.training,
            search_run_id=search_run_id,
            best_family=found.best_family,
            best_params=found.best_params,
            trials=len(found.trials),
            stopped_early=found.stopped_early,
            search_seconds=found.seconds,
            cluster=found.cluster,
            comparison=challenger.comparison,
            synthetic_rows=challenger.synthetic_rows,
            advisor=advice,
            ledger_id=ledger_id,
            hand_over=handed,
        )


@flow(name="retrain", log_prints=True)
def retrain(
    data_path: str | Empty = None,
    generate_rows: Annotated[int, Field(ge=100, le=10_000_000)] | Empty = None,
    recent_path: str | Empty = None,
    triage_ledger_id: str | Empty = None,
    target: str | Empty = None,
    scenario: Scenario = "none",
    seed: int = 42,
    test_size: Annotated[float, Field(gt=0.05, lt=0.9)] = 0.25,
    validation_size: Annotated[float, Field(gt=0.05, lt=0.9)] = 0.25,
    max_trials: Annotated[int, Field(ge=1)] | Empty = None,
    time_budget_seconds: Annotated[float, Field(gt=0)] | Empty = None,
    synthesize: bool | Empty = None,
    require_improvement: bool = True,
    hand_over: HandOver = "auto",
    run_name: str | Empty = None,
    model_name: str | Empty = None,
    task: Literal["auto", "binary", "multiclass", "regression"] = "auto",
) -> RetrainResult | State:
    """Search for a better model on recent data, register it, and hand it to the canary.

    Args:
        data_path: Training window: a CSV or Parquet file, or a folder of batches, on the
            worker's disk (a relative path resolves against the deployment's working
            directory). Either this or `generate_rows`.
        generate_rows: Train on this many rows of generated churn data instead (demos and
            trials); `scenario` shapes them.
        recent_path: Recent production batch, to find drifted segments the window lacks.
        triage_ledger_id: Ledger id of the triage decision that asked for this retraining;
            its outcome is recorded there.
        target: Label column. Empty: the champion's (its model card's), else the settings'
            `target`.
        scenario: Drift scenario of generated data.
        seed: Seed of generated data, of the splits, of the search and of the models.
        test_size: Share of rows kept as holdout, to compare with the champion.
        validation_size: Share of the other rows the search scores its trials on.
        max_trials: Cap on the advisor's trial count. Empty: the advisor's own.
        time_budget_seconds: Cap on the search's seconds. Empty: the advisor's own.
        synthesize: Force synthetic rows for drifted segments on or off. Empty: the advisor
            decides.
        require_improvement: Hand over to the canary only if the challenger's holdout metric
            (ROC AUC, accuracy or R², by task) is at least the champion's.
        hand_over: How the canary starts: auto (the canary deployment when registered, else
            an event), deployment, event, subflow (in this run), or none.
        run_name: Name of the MLflow search run. Empty: "retrain <model> after <ledger id>".
        model_name: The registered model the challenger joins. Empty: the settings' model
            name.
        task: What the challenger predicts: binary, multiclass or regression. auto: the
            champion's task (its model card), else what the target's values say.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    card = retraining.champion_card(settings)  # the champion's target and task, read once
    target = target or (card.target if card else settings.target)
    known = (None if task == "auto" else task) or (card.task if card else None)
    loaded = training_table(
        data_path, generate_rows, target, scenario, seed, settings.data_dir, known
    )
    if isinstance(loaded, State):
        return loaded
    chosen = known or label_task(loaded[0][target])
    try:
        triage, recent = retraining.read_request(triage_ledger_id, recent_path, settings)
    except (DataError, OSError) as error:
        get_run_logger().error("retraining input rejected: %s", error)
        return Failed(name="InvalidData", message=str(error))

    rows = retraining.split_window(
        loaded, target, test_size, validation_size, seed, triage, recent, chosen
    )
    evidence = retraining.advisor_evidence(rows, triage, settings)
    advice = retraining.advise_search(
        advise, evidence, settings, max_trials, time_budget_seconds, synthesize
    )
    ledger_ids = [retraining.record_advice(advice, evidence, settings).id]
    ledger_ids += [triage_ledger_id] if triage_ledger_id else []
    rows = retraining.add_synthetic_rows(rows, advice.decision, settings)

    space = advice.decision.space
    name = run_name or retraining.search_run_name(settings, triage_ledger_id)
    run_id, experiment_id = start_search_run(space, settings, name)
    with retraining.closed_on_failure(run_id, settings):
        limit = retraining.champion_latency_limit(rows, settings)
        found = search(rows.tuning_data(limit), space, run_id, experiment_id, settings)
        challenger = retraining.publish_challenger(found, rows, run_id, settings)
    retraining.close_search(found, challenger, run_id, ledger_ids, settings)

    handed = retraining.hand_over(
        hand_over, challenger, require_improvement, ledger_ids, settings, canary_rollout
    )
    retraining.publish_search_report(found, challenger, handed, advice, settings)
    return RetrainResult.of(found, challenger, run_id, advice, ledger_ids[0], handed)
