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
   hand-over) on the clean rows, which cannot retrain an adopted model (escalated instead);
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
from agentic_mlops.flows.data_quality import check_quality
from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import DecisionSummary, DriftCheckResult, PerformanceSummary
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import approval, ledger, reference, reports
from agentic_mlops.tasks import drift_actions as actions
from agentic_mlops.tasks.batches import load_batch
from agentic_mlops.tasks.drift import DriftResult, detect_drift, plan_report, update_sequential


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
    settings = load_settings()
    settings.ensure_dirs()
    logger = get_run_logger()
    batch_id = batch_id or Path(current_path).name
    settings = settings.for_model(model_name)
    model_name = settings.model_name

    loaded = load_batch(current_path, return_state=True)
    if loaded.is_failed():
        logger.error("batch rejected: %s", loaded.message)
        return Failed(name="InvalidData", message=loaded.message)
    current = loaded.result()

    resolved = reference.resolve_reference(
        reference_path, target, settings, model_name, return_state=True
    )
    if resolved.is_failed():
        logger.error("no reference: %s", resolved.message)
        return Failed(name=resolved.name, message=resolved.message)
    ref = resolved.result()
    if not set(ref.profile.columns) & set(current.columns):
        message = f"{current_path}: no columns shared with the reference"
        logger.error(message)
        return Failed(name="InvalidData", message=message)

    quality = check_quality(current_path, current, ref.suite, settings)
    broken = quality.result.batch_failed
    rows = current if broken else quality.clean_rows
    scores = reference.score_batch(rows, ref, settings)
    checked = detect_drift(ref.profile, rows, scores.champion, settings, return_state=True)
    if checked.is_failed():
        error = checked.result(raise_on_failure=False)
        if not broken:
            return Failed(name="InvalidData", message=f"{current_path}: {error}")
        drift = DriftResult.untested(ref.profile.columns, str(error), len(rows))
    else:
        drift = checked.result()
    planned = None
    if settings.drift_report_mode != "off":
        planning = plan_report(
            ref.folder / reference.PROFILE_FILE,
            ref.folder / reference.SAMPLE_FILE,
            rows[list(drift.columns)],
            settings.reports_dir / model_name / f"{Path(batch_id).stem}-drift.html",
            model_name,
            ref.version,
            settings.drift_report_rows,
            settings.seed,
            return_state=True,
        )
        planned = planning.result() if planning.is_completed() else None
        if planning.is_failed():
            logger.warning("Evidently report not planned: %s", planning.message)
    history = [o.drift_score for o in ledger.drift_history(model_name, 20, settings)]
    observation = None
    if not broken:
        observation = update_sequential(model_name, batch_id, drift, ref.key, settings)
        history.append(observation.drift_score)
    performance = reference.labelled_performance(rows, target, ref, scores)

    evidence = reference.triage_evidence(
        ref,
        quality.result,
        drift,
        observation,
        history,
        performance,
        rows,
        target,
        serving,
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

    performance_summary = (
        PerformanceSummary(
            metric=performance.metric,
            reference=performance.reference,
            current=performance.current,
            rows=performance.rows,
        )
        if performance
        else None
    )
    result = DriftCheckResult(
        model_name=model_name,
        model_version=ref.version,
        adopted=ref.card.adopted,
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
        ledger_id=entry.id,
        quarantined=quality.quarantined,
        report_path=planned.html if planned else None,
        report_link=reports.planned_file_link(
            model_name,
            ref.version,
            planned.html,
            reports.DRIFT_REPORTS,
            "Evidently report",
            settings,
        )
        if planned
        else None,
        performance=performance_summary,
    )
    if planned:
        reports.render_drift_report(planned.path, settings)

    action = decision.action if act else "none"
    if action in ("retrain", "rollback"):
        go, why = approval.ask_before_acting(
            entry,
            actions.triage_markdown(result, settings),
            settings.canary_approval_timeout_seconds,
            settings,
        )
        if not go:
            result.actions_taken.append(f"{action} not approved ({why})")
            action = "escalate"
    route = actions.retraining_route(ref.card.adopted, settings)
    if action == "retrain" and route == "none":
        result.actions_taken.append(
            f"retrain not started: no retraining recipe for the adopted {model_name!r} and no "
            "training deployment of the team's (retrain_deployment); escalated to a person"
        )
        action = "escalate"
    parameters = {
        "data_path": quality.clean_path or current_path,
        "recent_path": current_path,
        "triage_ledger_id": entry.id,
        "target": target or ref.card.target,
        "model_name": model_name,
    }
    if action == "retrain" and route == "team":
        from agentic_mlops.tasks.retraining import hand_over_to_canary

        team = actions.run_team_training(parameters, entry.id, settings)
        result.retrained_version = team.challenger
        result.actions_taken.append(f"retrain: {team.summary}")
        if team.challenger is not None:
            handed, _ = hand_over_to_canary("auto", team.challenger, settings, entry.id)
            ledger.record_outcome(entry.id, {"hand_over": handed}, settings)
            result.actions_taken.append(f"canary: {handed}")
    elif action == "retrain":
        from agentic_mlops.flows.retrain import retrain

        trained = actions.start_retraining(retrain, parameters, entry.id, settings)
        result.retrained_version = trained.get("version")
        result.actions_taken.append(
            f"retrain: {trained['how']} -> {trained.get('summary', '')}".strip()
        )
    elif action == "rollback":
        result.actions_taken.append(actions.roll_back(model_name, entry.id, settings))
    elif action == "escalate":
        result.actions_taken.append(
            actions.escalate(model_name, batch_id, result.decision, entry.id)
        )

    actions.publish_drift_artifacts(result, settings)
    if broken:
        return Completed(
            name="Quarantined",
            data=result,
            message=f"batch failed quality checks and was moved to {quality.quarantined}",
        )
    return result
