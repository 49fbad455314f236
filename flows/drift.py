"""Drift check: quality -> drift -> triage -> act, for one new batch of production data.

Runbook:
1. Load the batch; an unusable file ends the run in `Failed` named `InvalidData`.
2. Get the reference: the champion's stored profile, expectation suite and model card, or,
   with `reference_path`, ones built from that file (and kept for the next check).
3. Validate the batch against the suite. A failing batch is moved to quarantine with its
   validation result; failing rows alone are quarantined and the clean rows go on.
4. Score the batch with the champion (and the previous champion), for prediction drift and,
   where the batch has labels, performance.
5. Check drift against the reference profile (no re-read of the reference), keep a bounded
   sample of the tested columns for Evidently's HTML report, and add the batch to the
   sequential (CUSUM) detector and the drift history. A quarantined batch with no testable
   column still goes on to the triage, which escalates it.
6. Ask the drift-triage agent for a decision; the guardrails bound it; record it in the ledger.
   Then the Evidently report is rendered from the sample, by default in a process of its own
   that nothing waits for (`drift_report_mode`); it is logged to the champion's MLflow run,
   and the result and the artifact say where it will appear.
7. With approval mode `all`, a retrain or rollback waits for a person's answer on a form that
   shows the decision, its evidence and the deadline; no approval means escalate.
8. Act: `retrain` runs the team's own training deployment when one is configured (its new
   `challenger` then goes to the canary), else our retrain flow (advisor, search, canary
   hand-over) on the clean rows, for the model's task, whether we trained it or adopted it;
   `rollback` moves `champion` back to the previous champion; `escalate` emits
   `agentic-mlops.drift.escalated`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from agentic_mlops.agents.drift_triage import triage
from agentic_mlops.decisions import ServingEvidence
from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import DriftCheckResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import drift_actions as actions
from agentic_mlops.tasks import reports
from agentic_mlops.tasks.batch_assessment import (
    BatchRejected,
    assess_batch,
    batch_and_reference,
)
from agentic_mlops.tasks.quality import check_quality


@flow(name="drift-check", log_prints=True)
def drift_check(
    current_path: str,
    reference_path: str | Empty = None,
    target: str | Empty = "churn",
    batch_id: str | Empty = None,
    act: bool = True,
    serving: ServingEvidence | Empty = None,
    model_name: str | Empty = None,
) -> DriftCheckResult | State:
    """Check one batch for quality problems and drift, decide what to do, and do it.

    Args:
        current_path: The new batch: a CSV or Parquet file on the worker's disk (a relative
            path resolves against the deployment's working directory).
        reference_path: Reference data file to compare with. Empty: the champion's stored
            reference profile.
        target: Label column, used for performance when the batch has labels.
        batch_id: Name of the batch in the ledger and the drift history. Empty: its file name.
        act: Carry out the decision (retrain, rollback, escalate); off, only decide.
        serving: What the monitor saw in serving before sending this batch. Set by the
            monitor flow; leave empty.
        model_name: The registered model to check for (its champion's reference and
            scores). Empty: the settings' model name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    logger = get_run_logger()
    batch_id = batch_id or Path(current_path).name

    try:
        current, ref = batch_and_reference(current_path, reference_path, target, settings)
        quality = check_quality(current_path, current, ref.suite, settings)
        assessed = assess_batch(
            current_path, current, ref, quality, batch_id, target, serving, settings
        )
    except BatchRejected as rejected:
        return Failed(name=rejected.state_name, message=rejected.message)

    outcome = triage(assessed.evidence, settings)
    decision = outcome.decision
    logger.info(
        "triage: %s (%s, %.2f) %s",
        *(decision.action, decision.severity, decision.confidence, decision.rationale),
    )
    entry = actions.record_triage(
        outcome, assessed.evidence, ref.version, flow_run.get_id(), settings
    )
    result = actions.drift_check_result(
        batch_id, ref, quality, assessed, outcome, entry.id, settings
    )
    if assessed.report:
        reports.render_drift_report(assessed.report.path, settings)

    action = actions.action_to_take(decision.action if act else "none", result, entry, settings)
    if action == "retrain":
        from agentic_mlops.flows.retrain import retrain
        from agentic_mlops.tasks.retraining import hand_over_to_canary

        parameters = {
            "data_path": quality.clean_path or current_path,
            "recent_path": current_path,
            "triage_ledger_id": entry.id,
            "target": target or ref.card.target,
            "model_name": settings.model_name,
        }
        actions.retrain_for(result, parameters, entry.id, retrain, hand_over_to_canary, settings)
    elif action == "rollback":
        result.actions_taken.append(actions.roll_back(result.model_name, entry.id, settings))
    elif action == "escalate":
        result.actions_taken.append(
            actions.escalate(result.model_name, batch_id, result.decision, entry.id)
        )

    actions.publish_drift_artifacts(result, settings)
    if quality.result.batch_failed:
        return Completed(
            name="Quarantined",
            data=result,
            message=f"batch failed quality checks and was moved to {quality.quarantined}",
        )
    return result
