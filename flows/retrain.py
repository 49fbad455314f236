"""Retraining with a search: advisor -> (synthesis) -> tuning -> evaluate -> register -> canary.

Runbook:
1. Load the training window (a file, a folder of batches, or generated churn data) and split
   off the holdout, stratified by the label; the rest is split again into fit and
   validation rows for the search. Holdout and validation rows are always real.
2. Read the triage decision that asked for this (`triage_ledger_id`) and, with a recent
   production batch (`recent_path`), find the drifted features' segments the training
   window barely covers.
3. Ask the tuning advisor for the search (families, ranges, budget, synthesis); guardrails
   bound it; record it in the ledger.
4. If asked for, add SMOTE-NC rows for those segments to the fit rows only.
5. Run the Ray Tune search (ASHA, random or Optuna TPE), each trial an MLflow child run of
   one parent run.
6. Refit the best configuration on all non-holdout rows; evaluate it and the current
   champion on the same holdout.
7. Log and register the refit as `challenger` (a child of the search run, with the
   synthetic rows as a separate dataset), store its reference, record the outcome.
8. Hand the challenger to the canary rollout, only when a model serves (else say why no
   canary ran): the `canary-rollout/canary` deployment, an
   `agentic-mlops.canary.requested` event, or an in-process subflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import BaseModel, Field
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from agentic_mlops.agents.tuning_advisor import AdvisorOutcome, advise
from agentic_mlops.decisions import AdvisorEvidence, PastRun, SegmentCoverage, TriageContext
from agentic_mlops.flows.form import Empty
from agentic_mlops.flows.train import publish_model, training_table
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import ledger, registry, reports, rollout
from agentic_mlops.tasks.batches import DataError, read_data, write_table
from agentic_mlops.tasks.churn import Scenario
from agentic_mlops.tasks.drift_actions import deployment_exists
from agentic_mlops.tasks.models import TuningData, family_pipeline
from agentic_mlops.tasks.reference import score_with
from agentic_mlops.tasks.reports import artifact_key
from agentic_mlops.tasks.synthesis import Segment, Synthesis, find_segments
from agentic_mlops.tasks.synthesis import synthesize as synthesize_rows
from agentic_mlops.tasks.training import (
    evaluate_model,
    feature_columns,
    split_data,
)
from agentic_mlops.tasks.tuning import (
    SearchResult,
    finish_search_run,
    past_runs,
    search,
    start_search_run,
)

CANARY_DEPLOYMENT = "canary-rollout/canary"
CANARY_REQUESTED_EVENT = "agentic-mlops.canary.requested"
HandOver = Literal["auto", "deployment", "event", "subflow", "none"]


class HoldoutComparison(BaseModel):
    """Challenger and champion on the same holdout rows."""

    rows: int
    challenger_roc_auc: float
    champion_version: int | None
    champion_roc_auc: float | None = None
    challenger_brier: float
    champion_brier: float | None = None

    @property
    def beats_champion(self) -> bool:
        return self.champion_roc_auc is None or self.challenger_roc_auc >= self.champion_roc_auc


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


def _triage_context(ledger_id: str | None, settings: Settings) -> TriageContext | None:
    if not ledger_id:
        return None
    entry = ledger.get_decision(ledger_id, settings)
    if entry is None:
        raise DataError(f"no decision {ledger_id!r} in the ledger")
    used = entry.evidence.get("used", [])
    return TriageContext(
        action=entry.action,
        severity=entry.severity,
        drifted_features=list(entry.evidence.get("drifted_features", [])),
        performance_dropped="performance" in used and entry.action == "retrain",
        rationale=entry.rationale,
    )


@task(name="advise-search", cache_policy=NO_CACHE)
def advise_search(
    evidence: AdvisorEvidence,
    settings: Settings,
    max_trials: int | None,
    time_budget_seconds: float | None,
    synthesize: bool | None,
) -> AdvisorOutcome:
    """The advisor's guarded proposal, with the run's own caps and synthesis switch applied."""
    outcome = advise(evidence, settings)
    proposal = outcome.decision
    space = proposal.space.model_copy(
        update={
            "max_trials": min(proposal.space.max_trials, max_trials or 10**9),
            "time_budget_seconds": min(
                proposal.space.time_budget_seconds, time_budget_seconds or float("inf")
            ),
        }
    )
    update: dict[str, Any] = {"space": space}
    if synthesize is False:
        update |= {"synthesize": False, "segments": []}
    elif synthesize and evidence.segments:
        update |= {"synthesize": True, "segments": [s.name for s in evidence.segments]}
    return outcome.model_copy(update={"decision": proposal.model_copy(update=update)})


def record_advice(
    outcome: AdvisorOutcome, evidence: AdvisorEvidence, settings: Settings
) -> ledger.LedgerEntry:
    evidence_json = evidence.model_dump(mode="json")
    proposal = outcome.decision
    return ledger.record_agent_decision(
        "tuning_advisor",
        evidence_json,
        flow_run.get_id(),
        settings,
        model_name=settings.model_name,
        action="search+synthesize" if proposal.synthesize else "search",
        rationale=proposal.rationale,
        evidence={
            "proposal": proposal.model_dump(mode="json"),
            "past_runs": len(evidence.past_runs),
            "triage": evidence_json["triage"],
            "segments": evidence_json["segments"],
        },
        agent_model=outcome.agent_model,
        overridden_by=outcome.overridden_by,
        attribution=outcome.attribution.model_dump(mode="json") if outcome.attribution else None,
    )


@task(name="compare-on-holdout", cache_policy=NO_CACHE)
def compare_on_holdout(
    challenger_scores: np.ndarray, x_test: pd.DataFrame, y_test: pd.Series, settings: Settings
) -> HoldoutComparison:
    """The challenger's and the current champion's ROC AUC and Brier score on one holdout."""
    y = y_test.to_numpy()
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    champion_scores = (
        score_with(settings.model_name, champion, x_test, settings) if champion else None
    )
    return HoldoutComparison(
        rows=len(y),
        challenger_roc_auc=float(roc_auc_score(y, challenger_scores)),
        challenger_brier=float(brier_score_loss(y, challenger_scores)),
        champion_version=champion,
        champion_roc_auc=(
            float(roc_auc_score(y, champion_scores)) if champion_scores is not None else None
        ),
        champion_brier=(
            float(brier_score_loss(y, champion_scores)) if champion_scores is not None else None
        ),
    )


def hand_over_to_canary(
    how: HandOver, version: int, settings: Settings, ledger_id: str
) -> tuple[str, str | None]:
    """Start the canary rollout of the challenger; say how, and the flow run if one started."""
    if how == "none":
        return "none: not handed over", None
    nothing_serves = rollout.why_no_canary(settings)
    if nothing_serves:  # a canary would judge no traffic, then leave its processes running
        return f"none: no canary ran, {nothing_serves}; v{version} is the challenger", None
    deployed = deployment_exists(CANARY_DEPLOYMENT)
    if how == "deployment" or (how == "auto" and deployed):
        if not deployed:
            raise DataError(f"no {CANARY_DEPLOYMENT} deployment is registered")
        run = run_deployment(
            CANARY_DEPLOYMENT,
            parameters={"version": version, "model_name": settings.model_name},
            idempotency_key=f"canary-{settings.model_name}-v{version}-{ledger_id}",
            timeout=0,
        )
        link = reports.prefect_link("flow-run", run.id, f"flow run {run.name}")
        return f"deployment {CANARY_DEPLOYMENT}: {link}", str(run.id)
    if how == "subflow":
        from agentic_mlops.flows.canary import canary_rollout

        state = canary_rollout(version=version, model_name=settings.model_name, return_state=True)
        outcome = state.result(raise_on_failure=False)
        return f"subflow: {getattr(outcome, 'outcome', state.name)}", None
    emit_event(
        event=CANARY_REQUESTED_EVENT,
        resource={"prefect.resource.id": f"agentic-mlops.model.{settings.model_name}"},
        payload={"version": version, "ledger_id": ledger_id, "model_name": settings.model_name},
    )
    return f"event: emitted {CANARY_REQUESTED_EVENT}", None


def search_markdown(result: SearchResult, comparison: HoldoutComparison, synth: int) -> str:
    rows = "\n".join(
        f"| {t.family} | {t.roc_auc:.4f} | {t.steps} | {'yes' if t.stopped_early else ''} |"
        for t in sorted(result.trials, key=lambda t: -(t.roc_auc or 0))
        if t.roc_auc is not None
    )
    champion = (
        f"champion v{comparison.champion_version}: {comparison.champion_roc_auc:.4f}"
        if comparison.champion_roc_auc is not None
        else "no champion to compare with"
    )
    return (
        f"# Retraining search ({result.algorithm}, "
        f"{'ASHA' if result.early_stopping else 'no early stopping'}, on {result.cluster})\n\n"
        f"{len(result.trials)} trials, {result.stopped_early} stopped early, "
        f"{result.seconds:.0f} s; synthetic rows: {synth}\n\n"
        f"Best: **{result.best_family}** {result.best_params}\n\n"
        f"Holdout ROC AUC ({comparison.rows} rows): challenger "
        f"{comparison.challenger_roc_auc:.4f}, {champion}\n\n"
        f"| family | validation ROC AUC | steps | stopped early |\n|---|---|---|---|\n{rows}\n"
    )


@contextmanager
def closed_on_failure(search_run_id: str, settings: Settings) -> Iterator[None]:
    """Mark the search's MLflow run FAILED when anything from the search to the registration
    fails, so no run is left RUNNING; when MLflow itself is what failed, say the run stays
    open and raise the original error."""
    try:
        yield
    except Exception:
        try:
            finish_search_run(search_run_id, {}, settings, failed=True)
        except Exception as error:
            get_run_logger().warning("search run %s left open: %s", search_run_id, error)
        raise


@flow(name="retrain", log_prints=True)
def retrain(
    data_path: str | Empty = None,
    generate_rows: Annotated[int, Field(ge=100, le=10_000_000)] | Empty = None,
    recent_path: str | Empty = None,
    triage_ledger_id: str | Empty = None,
    target: str = "churn",
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
        target: Label column.
        scenario: Drift scenario of generated data.
        seed: Seed of generated data, of the splits, of the search and of the models.
        test_size: Share of rows kept as holdout, to compare with the champion.
        validation_size: Share of the other rows the search scores its trials on.
        max_trials: Cap on the advisor's trial count. Empty: the advisor's own.
        time_budget_seconds: Cap on the search's seconds. Empty: the advisor's own.
        synthesize: Force synthetic rows for drifted segments on or off. Empty: the advisor
            decides.
        require_improvement: Hand over to the canary only if the challenger's holdout ROC AUC
            is at least the champion's.
        hand_over: How the canary starts: auto (the canary deployment when registered, else
            an event), deployment, event, subflow (in this run), or none.
        run_name: Name of the MLflow search run. Empty: "retrain <model> after <ledger id>".
        model_name: The registered model the challenger joins. Empty: the settings' model
            name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    logger = get_run_logger()
    loaded = training_table(data_path, generate_rows, target, scenario, seed, settings)
    if isinstance(loaded, State):
        return loaded
    frame, source = loaded
    try:
        triage = _triage_context(triage_ledger_id, settings)
        recent = read_data(recent_path) if recent_path else None
    except (DataError, OSError) as error:
        logger.error("retraining input rejected: %s", error)
        return Failed(name="InvalidData", message=str(error))

    split = split_data(frame, target, test_size, seed)
    x_fit, x_val, y_fit, y_val = train_test_split(
        split.x_train,
        split.y_train,
        test_size=validation_size,
        random_state=seed,
        stratify=split.y_train,
    )
    numeric, categorical = feature_columns(frame, target)
    fit_rows = x_fit.assign(**{target: y_fit})
    segments: list[Segment] = []
    if recent is not None and triage and triage.drifted_features:
        segments = find_segments(fit_rows, recent, triage.drifted_features)
    evidence = AdvisorEvidence(
        model_name=settings.model_name,
        past_runs=[PastRun(**run) for run in past_runs(settings)],
        triage=triage,
        segments=[
            SegmentCoverage(
                name=s.name, training_share=s.training_share, recent_share=s.recent_share
            )
            for s in segments
        ],
    )
    advice = advise_search(evidence, settings, max_trials, time_budget_seconds, synthesize)
    proposal = advice.decision
    logger.info("advisor (%s): %s", advice.agent_model, proposal.rationale)
    advice_entry = record_advice(advice, evidence, settings)

    synthesis: Synthesis | None = None
    if proposal.synthesize:
        chosen = [s for s in segments if s.name in proposal.segments]
        synthesis = synthesize_rows(
            fit_rows,
            target,
            chosen,
            max_rows=int(settings.synthesis_max_share * len(fit_rows)),
            seed=seed,
        )
        logger.info("synthesised %s (skipped: %s)", synthesis.per_segment, synthesis.skipped)
    synthetic = synthesis.rows if synthesis is not None else fit_rows.iloc[:0]

    data = TuningData(
        x_fit=pd.concat([x_fit, synthetic.drop(columns=[target])], ignore_index=True),
        y_fit=pd.concat([y_fit, synthetic[target]], ignore_index=True).astype(int),
        x_val=x_val,
        y_val=y_val,
        numeric=numeric,
        categorical=categorical,
        seed=seed,
    )
    parent_run_id, experiment_id = start_search_run(
        proposal.space,
        settings,
        run_name
        or f"retrain {settings.model_name}"
        + (f" after {triage_ledger_id}" if triage_ledger_id else ""),
    )
    with closed_on_failure(parent_run_id, settings):
        found = search(data, proposal.space, parent_run_id, experiment_id, settings)

        train_rows = pd.concat(
            [split.x_train.assign(**{target: split.y_train}), synthetic], ignore_index=True
        )
        model = family_pipeline(
            found.best_family, found.best_params, numeric, categorical, seed
        ).fit(train_rows.drop(columns=[target]), train_rows[target].astype(int))
        evaluation = evaluate_model(model, split.x_test, split.y_test, seed)
        comparison = compare_on_holdout(
            model.predict_proba(split.x_test)[:, 1], split.x_test, split.y_test, settings
        )
        logger.info(
            "holdout ROC AUC: challenger %.4f, champion %s",
            comparison.challenger_roc_auc,
            f"v{comparison.champion_version} {comparison.champion_roc_auc:.4f}"
            if comparison.champion_roc_auc is not None
            else "none",
        )
        extra = None
        if synthesis is not None and len(synthesis.rows):
            kept = write_table(
                synthesis.rows,
                settings.data_dir
                / "synthetic"
                / f"{settings.model_name}-{synthesis.digest()}.parquet",
            )
            extra = [("synthetic", synthesis.rows, {**synthesis.lineage(), "source": str(kept)})]
        trained, _ = publish_model(
            model,
            frame,
            split,
            target,
            {
                "family": found.best_family,
                **found.best_params,
                "seed": seed,
                "test_size": test_size,
                "rows": len(frame),
                "synthetic_rows": len(synthetic),
            },
            evaluation,
            source,
            f"retrain-best-{found.best_family}",
            parent_run_id=parent_run_id,
            extra_datasets=extra,
            training_rows=train_rows,
            settings=settings,
        )
    finish_search_run(
        parent_run_id,
        {
            "best_validation_roc_auc": found.best_roc_auc,
            "holdout_roc_auc": comparison.challenger_roc_auc,
            **(
                {"champion_holdout_roc_auc": comparison.champion_roc_auc}
                if comparison.champion_roc_auc is not None
                else {}
            ),
            "trials": len(found.trials),
            "stopped_early": found.stopped_early,
            "search_seconds": found.seconds,
            "synthetic_rows": len(synthetic),
            "challenger_version": trained.version,
        },
        settings,
    )
    outcome = {
        "challenger_version": trained.version,
        "challenger_holdout_roc_auc": comparison.challenger_roc_auc,
        "champion_version": comparison.champion_version,
        "champion_holdout_roc_auc": comparison.champion_roc_auc,
        "beat_champion": comparison.beats_champion,
        "search_run_id": parent_run_id,
    }
    ledger.record_outcome(advice_entry.id, outcome, settings)
    if triage_ledger_id:
        ledger.record_outcome(triage_ledger_id, outcome, settings)

    if require_improvement and not comparison.beats_champion:
        handed = "none: the challenger did not beat the champion on the holdout"
    else:
        handed, _ = hand_over_to_canary(hand_over, trained.version, settings, advice_entry.id)
    logger.info("hand-over: %s", handed)
    for entry_id in filter(None, (advice_entry.id, triage_ledger_id)):
        ledger.record_outcome(entry_id, {"hand_over": handed}, settings)

    key = artifact_key(settings.model_name)
    create_markdown_artifact(
        key=f"{key}-retrain-search",
        markdown=search_markdown(found, comparison, len(synthetic))
        + f"\nHand-over: {handed}\n"
        + (f"\n## Advisor\n\n{advice.attribution.markdown()}" if advice.attribution else ""),
        description=f"Search behind {trained.model_name} v{trained.version}",
    )
    create_table_artifact(
        key=f"{key}-retrain-trials",
        table=[
            {
                "family": t.family,
                "validation ROC AUC": None if t.roc_auc is None else round(t.roc_auc, 4),
                "steps": t.steps,
                "stopped early": t.stopped_early,
                "parameters": ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in t.params.items()
                    if k != "family"
                ),
            }
            for t in sorted(found.trials, key=lambda t: -(t.roc_auc or 0))
        ],
        description="Every trial of the latest retraining search",
    )
    return RetrainResult(
        training=trained,
        search_run_id=parent_run_id,
        best_family=found.best_family,
        best_params=found.best_params,
        trials=len(found.trials),
        stopped_early=found.stopped_early,
        search_seconds=found.seconds,
        cluster=found.cluster,
        comparison=comparison,
        synthetic_rows=len(synthetic),
        advisor=advice,
        ledger_id=advice_entry.id,
        hand_over=handed,
    )
