"""Drift check: quality -> drift -> triage -> act, for one new batch of production data.

Runbook:
1. Load the batch; an unusable file ends the run in `Failed` named `InvalidData`.
2. Get the reference: the champion's stored profile, expectation suite and model card, or,
   with `reference_path`, ones built from that file (and kept for the next check).
3. Validate the batch against the suite. A failing batch is moved to quarantine with its
   validation result; failing rows alone are quarantined and the clean rows go on.
4. Score the batch with the champion (and the previous champion), for prediction drift and,
   where the batch has labels, performance.
5. Check drift against the reference profile (no re-read of the reference), save Evidently's
   HTML report of the columns it could test (a report that fails is logged, not fatal), and
   add the batch to the sequential (CUSUM) detector and the drift history. A quarantined
   batch with no testable column still goes on to the triage, which escalates it.
6. Ask the drift-triage agent for a decision; the guardrails bound it; record it in the ledger.
7. Act: `retrain` runs the retrain flow (advisor, search, canary hand-over) on the clean
   rows; `rollback` moves `champion` back to the previous champion; `escalate` emits
   `agentic-mlops.drift.escalated`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from agentic_mlops.agents.drift_triage import ServingEvidence, triage
from agentic_mlops.flows.data_quality import check_quality
from agentic_mlops.flows.train import artifact_key
from agentic_mlops.flows.tune import RetrainParameters, retrain
from agentic_mlops.schemas import DecisionSummary, DriftCheckResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import drift_actions as actions
from agentic_mlops.tasks import ledger, reference
from agentic_mlops.tasks.batches import load_batch
from agentic_mlops.tasks.drift import DriftResult, detect_drift, drift_report, update_sequential


class DriftCheckParameters(BaseModel):
    """Parameters of a drift check; the Prefect UI shows them as a form."""

    current_path: str = Field(description="The new batch: a CSV or Parquet file.")
    reference_path: str | None = Field(
        default=None,
        description="Reference data file. Empty: the champion's stored reference profile.",
    )
    target: str | None = Field(
        default="churn", description="Label column, used when the batch has labels."
    )
    batch_id: str | None = Field(default=None, description="Name of the batch; its file name.")
    act: bool = Field(default=True, description="Carry out the decision (retrain, rollback...).")
    serving: ServingEvidence | None = Field(
        default=None,
        description="What the monitor saw in serving before sending this batch; set by the "
        "monitor flow, empty otherwise.",
    )


@flow(name="drift-check", log_prints=True)
def drift_check(params: DriftCheckParameters) -> DriftCheckResult | State:
    """Check one batch for quality problems and drift, decide what to do, and do it."""
    settings = load_settings()
    settings.ensure_dirs()
    logger = get_run_logger()
    batch_id = params.batch_id or Path(params.current_path).name
    model_name = settings.model_name

    loaded = load_batch(params.current_path, return_state=True)
    if loaded.is_failed():
        logger.error("batch rejected: %s", loaded.message)
        return Failed(name="InvalidData", message=loaded.message)
    current = loaded.result()

    resolved = reference.resolve_reference(
        params.reference_path, params.target, settings, return_state=True
    )
    if resolved.is_failed():
        logger.error("no reference: %s", resolved.message)
        return Failed(name=resolved.name, message=resolved.message)
    ref = resolved.result()
    if not set(ref.profile.columns) & set(current.columns):
        message = f"{params.current_path}: no columns shared with the reference"
        logger.error(message)
        return Failed(name="InvalidData", message=message)

    quality = check_quality(params.current_path, current, ref.suite, settings)
    broken = quality.result.batch_failed
    rows = current if broken else quality.clean_rows
    scores = reference.score_batch(rows, ref, settings)
    checked = detect_drift(ref.profile, rows, scores.champion, settings, return_state=True)
    if checked.is_failed():
        error = checked.result(raise_on_failure=False)
        if not broken:
            return Failed(name="InvalidData", message=f"{params.current_path}: {error}")
        drift = DriftResult.untested(ref.profile.columns, str(error), len(rows))
    else:
        drift = checked.result()
    report = drift_report(
        ref.profile,
        ref.sample,
        rows[list(drift.columns)],
        settings.reports_dir / model_name / f"{Path(batch_id).stem}-drift.html",
        settings.drift_report_rows,
        settings.seed,
        return_state=True,
    )
    report_path = report.result() if report.is_completed() else None
    if report_path is None and report.is_failed():
        logger.warning("Evidently report not written: %s", report.message)
    history = [o.drift_score for o in ledger.drift_history(model_name, 20, settings)]
    observation = None
    if not broken:
        observation = update_sequential(model_name, batch_id, drift, ref.key, settings)
        history.append(observation.drift_score)
    performance = reference.labelled_performance(rows, params.target, ref, scores)

    evidence = reference.triage_evidence(
        ref,
        quality.result,
        drift,
        observation,
        history,
        performance,
        rows,
        params.target,
        params.serving,
    )
    outcome = triage(evidence, settings)
    decision = outcome.decision
    logger.info(
        "triage: %s (%s, %.2f) %s",
        decision.action,
        decision.severity,
        decision.confidence,
        decision.rationale,
    )
    entry = actions.record_triage(outcome, evidence, ref.version, flow_run.get_id(), settings)

    taken: list[str] = []
    retrained_version = None
    if params.act and decision.action == "retrain":
        retrain_path = quality.clean_path or params.current_path
        trained = actions.start_retraining(
            retrain,
            RetrainParameters(
                data_path=retrain_path,
                recent_path=params.current_path,
                triage_ledger_id=entry.id,
                target=params.target or "churn",
            ),
            entry.id,
            settings,
        )
        retrained_version = trained.get("version")
        taken.append(f"retrain: {trained['how']} -> {trained.get('summary', '')}".strip())
    elif params.act and decision.action == "rollback":
        taken.append(actions.roll_back(model_name, entry.id, settings))
    elif params.act and decision.action == "escalate":
        taken.append(actions.escalate(model_name, batch_id, outcome, entry.id))

    result = DriftCheckResult(
        model_name=model_name,
        batch_id=batch_id,
        quality=quality.summary,
        dataset_drift=drift.dataset_drift,
        drift_share=drift.drift_share,
        columns=reference.column_summaries(drift),
        skipped_columns=drift.skipped,
        prediction_drift=drift.prediction.drifted if drift.prediction else None,
        sequential_alarm=bool(observation and observation.sequential_alarm),
        decision=DecisionSummary(
            **decision.model_dump(exclude={"evidence_used"}),
            agent_model=outcome.agent_model,
            overridden_by=outcome.overridden_by,
            decided_by=outcome.attribution.decided_by,
            model_action=outcome.attribution.model_action,
            policy_action=outcome.attribution.policy_action,
        ),
        actions_taken=taken,
        ledger_id=entry.id,
        quarantined=quality.quarantined,
        report_path=str(report_path) if report_path else None,
        retrained_version=retrained_version,
    )
    actions.publish_drift_artifacts(result, artifact_key(model_name), settings)
    if broken:
        return Completed(
            name="Quarantined",
            data=result,
            message=f"batch failed quality checks and was moved to {quality.quarantined}",
        )
    return result
