"""The closed loop: monitor -> triage -> retrain (search) -> canary -> promote or roll back.

Runbook:
1. Get the recent production rows with their delayed labels: a given batch, or the monitor's
   window from the router's input log.
2. Drift check with the triage agent, without acting: the decision and its ledger entry.
3. Follow up earlier decisions: a promotion whose model the triage now wants rolled back did
   not hold; otherwise it held. Recorded on the promotion's ledger entry.
4. Humans-first: with `approval_mode=all`, a retrain or rollback waits for a person's answer
   in the Prefect UI (no answer: nothing is done and the decision is escalated).
5. Act:
   - `retrain` runs the team's own training deployment when one is configured and canaries
     the version it registered as `challenger`; else the retrain subflow (advisor,
     synthesis, Ray Tune, holdout comparison) and, when the challenger beats the champion,
     the canary subflow (an adopted model without a team deployment is escalated);
   - `rollback` moves `champion` back and the router's traffic with it;
   - `escalate` emits the escalation event.
   Every step's result goes to the outcome of the triage decision that started it, so the
   ledger links decision -> retraining -> canary -> promotion.
6. Report: the decisions and their outcomes over time as a table artifact and a PNG plot.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from agentic_mlops.flows.canary import canary_rollout
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.flows.form import Empty
from agentic_mlops.flows.tune import retrain
from agentic_mlops.schemas import DriftCheckResult
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import approval, ledger, reference, registry, reports, rollout
from agentic_mlops.tasks import drift_actions as actions
from agentic_mlops.tasks.lifecycle_report import decision_rows, plot_decisions
from agentic_mlops.tasks.reports import artifact_key


class LifecycleResult(BaseModel):
    """What one turn of the loop saw, decided and did."""

    model_name: str
    batch: str
    decision: str
    ledger_id: str | None
    retrained_version: int | None = None
    beat_champion: bool | None = None
    canary: str | None = None
    champion: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    followed_up: dict[str, bool] = Field(default_factory=dict)
    steps: list[str] = Field(default_factory=list)
    plot_path: str | None = None


def follow_up_promotions(decision: str, settings: Settings) -> dict[str, bool]:
    """Whether earlier promotions held: a promoted champion the triage now wants rolled back
    did not; one that still serves without a rollback call did. Recorded once per promotion."""
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    judged = {}
    for entry in ledger.list_decisions(
        settings.model_name, action="promote", decision_point="canary_promotion", settings=settings
    ):
        outcome = entry.outcome or {}
        if "held" in outcome or entry.model_version is None:
            continue
        if entry.model_version != champion:
            held, note = False, f"no longer champion (v{champion} is)"
        elif decision == "rollback":
            held, note = False, "the next triage asked to roll it back"
        else:
            held, note = True, f"still champion; the next triage decided {decision}"
        ledger.record_outcome(entry.id, {"held": held, "note": note}, settings)
        judged[entry.id] = held
    return judged


def _router_follows_champion(settings: Settings) -> None:
    """After a rollback, the router's baseline serves the champion again (when it runs)."""
    backend = rollout.rollout_backend(settings)
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    if champion is not None and backend.is_serving():
        backend.set_baseline(champion)


@flow(
    name="lifecycle",
    log_prints=True,
    on_cancellation=[rollout.roll_back_interrupted_run],
    on_crashed=[rollout.roll_back_interrupted_run],
)
def lifecycle(
    batch_path: str | Empty = None,
    window_since: float | Empty = None,
    window_rows: Annotated[int, Field(ge=1)] | Empty = None,
    target: str | Empty = None,
    retrain_max_trials: Annotated[int, Field(ge=1)] | Empty = None,
    retrain_time_budget_seconds: Annotated[float, Field(gt=0)] | Empty = None,
    require_improvement: bool = True,
    canary_steps: list[int] | Empty = None,
    canary_step_seconds: Annotated[float, Field(gt=0)] | Empty = None,
    canary_min_samples: Annotated[int, Field(ge=10)] | Empty = None,
    approval_timeout_seconds: Annotated[int, Field(ge=1)] | Empty = None,
    model_name: str | Empty = None,
) -> LifecycleResult | State:
    """One turn of the loop: check recent production data, decide, and carry it through.

    Args:
        batch_path: Recent production rows with their delayed labels: a CSV or Parquet file
            on the worker's disk. Empty: the monitor's window from the router's input log.
        window_since: Without a batch: only rows whose labels arrived after this time
            (seconds since the epoch). Empty: the latest window.
        window_rows: Without a batch: at most this many newest rows.
        target: Label column. Empty: the champion's (its model card's target).
        retrain_max_trials: Cap on a retraining's trials. Empty: the advisor's own.
        retrain_time_budget_seconds: Cap on a retraining's search seconds. Empty: the
            advisor's own.
        require_improvement: Canary a challenger only if it beats the champion on the
            holdout.
        canary_steps: The canary's share of traffic at each step, in percent, ending at 100.
            Empty: the `canary_steps` setting.
        canary_step_seconds: Longest analysis of one canary step. Empty: the setting.
        canary_min_samples: Requests each variant needs before a step is judged. Empty: the
            setting.
        approval_timeout_seconds: How long a person has to answer an approval form. Empty:
            the setting.
        model_name: The registered model this turn guards (its reference, router log,
            ledger and aliases). Empty: the settings' model name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    logger = get_run_logger()
    name = settings.model_name
    target = target or reference.champion_target(settings)
    steps: list[str] = []

    batch = batch_path
    if batch is None:
        from agentic_mlops.tasks.serving_log import (
            collect_window,
            flush_router_log,
            local_router_url,
        )

        flush_router_log(local_router_url(settings))
        batch = collect_window(settings, window_since, window_rows)
        if batch is None:
            return Failed(name="NoTraffic", message="the router has logged no labelled rows yet")
    checked = drift_check(
        current_path=batch, target=target, act=False, model_name=name, return_state=True
    )
    if checked.is_failed():
        return Failed(name=checked.name, message=f"drift check failed: {checked.message}")
    check: DriftCheckResult = checked.result()
    decision, entry_id = check.decision.action, check.ledger_id
    steps.append(f"triage: {decision} ({check.decision.rationale})")
    logger.info("triage decided %s: %s", decision, check.decision.rationale)
    followed = follow_up_promotions(decision, settings)

    result = LifecycleResult(
        model_name=name, batch=batch, decision=decision, ledger_id=entry_id, followed_up=followed
    )
    if decision in ("retrain", "rollback"):
        ok, why = approval.ask_before_acting(
            ledger.get_decision(entry_id, settings),
            actions.triage_markdown(check, settings),
            approval_timeout_seconds or settings.canary_approval_timeout_seconds,
            settings,
        )
        if not ok:
            steps.append(f"not approved: {why}")
            decision = "escalate"
    route = actions.retraining_route(check.adopted, settings)
    if decision == "retrain" and route == "none":
        steps.append(
            f"retrain not started: no retraining recipe for the adopted {name!r} and no "
            "training deployment of the team's (retrain_deployment)"
        )
        decision = "escalate"
    if decision == "retrain":
        result = result.model_copy(
            update=_retrain_and_canary(
                batch,
                entry_id,
                settings,
                team=route == "team",
                target=target,
                max_trials=retrain_max_trials,
                time_budget_seconds=retrain_time_budget_seconds,
                require_improvement=require_improvement,
                canary_steps=canary_steps,
                canary_step_seconds=canary_step_seconds,
                canary_min_samples=canary_min_samples,
                approval_timeout_seconds=approval_timeout_seconds,
            )
        )
        steps.extend(result.steps)
    elif decision == "rollback":
        steps.append(actions.roll_back(name, entry_id, settings))
        _router_follows_champion(settings)
    elif decision == "escalate":
        steps.append(actions.escalate(name, check.batch_id, check.decision, entry_id))

    result.steps = steps
    result.aliases = registry.model_aliases(name, settings)
    result.champion = result.aliases.get(registry.CHAMPION)
    result.plot_path = str(_report(settings))
    plot = reports.logged_file_link(
        name, result.champion, result.plot_path, "lifecycle", "decisions plot", settings
    )
    create_markdown_artifact(
        key=artifact_key(name, "lifecycle"),
        markdown=f"# Lifecycle turn on `{batch}`\n\n"
        + "\n".join(f"1. {step}" for step in steps)
        + f"\n\nAliases: {result.aliases}  \nDecisions and outcomes: {plot} · "
        + reports.artifact_link(artifact_key(name, "decisions-and-outcomes"), "ledger table")
        + f"  \nDrift check: {reports.artifact_link(artifact_key(name, 'drift-triage'))}\n",
        description=f"{name}: {decision}",
    )
    logger.info("lifecycle: %s; aliases %s", decision, result.aliases)
    return result


def _retrain_and_canary(
    batch: str,
    entry_id: str,
    settings: Settings,
    *,
    team: bool,
    target: str,
    max_trials: int | None,
    time_budget_seconds: float | None,
    require_improvement: bool,
    canary_steps: list[int] | None,
    canary_step_seconds: float | None,
    canary_min_samples: int | None,
    approval_timeout_seconds: int | None,
) -> dict[str, Any]:
    """Retrain (the team's own deployment, or our recipe) and canary the new challenger."""
    logger = get_run_logger()
    if team:
        trained = actions.run_team_training(
            {
                "data_path": batch,
                "recent_path": batch,
                "triage_ledger_id": entry_id,
                "model_name": settings.model_name,
                "target": target,
            },
            entry_id,
            settings,
        )
        steps = [f"retrain: {trained.summary}"]
        if trained.challenger is None:
            return {"steps": steps}
        version, told = trained.challenger, [entry_id]
        update: dict[str, Any] = {"retrained_version": version}
    else:
        state = retrain(
            data_path=batch,
            recent_path=batch,
            triage_ledger_id=entry_id,
            target=target,
            max_trials=max_trials,
            time_budget_seconds=time_budget_seconds,
            require_improvement=require_improvement,
            hand_over="none",
            model_name=settings.model_name,
            return_state=True,
        )
        if state.is_failed():
            ledger.record_outcome(entry_id, {"retrain_failed": state.message}, settings)
            return {"steps": [f"retrain failed: {state.message}"]}
        retrained = state.result()
        version, comparison = retrained.training.version, retrained.comparison
        told = [entry_id, retrained.ledger_id]
        champion_auc = (
            "none" if comparison.champion_roc_auc is None else f"{comparison.champion_roc_auc:.3f}"
        )
        steps = [
            f"retrain: v{version} ({retrained.best_family}, {retrained.trials} trials), holdout "
            f"ROC AUC {comparison.challenger_roc_auc:.3f} vs champion {champion_auc}"
        ]
        update = {"retrained_version": version, "beat_champion": comparison.beats_champion}
        if require_improvement and not comparison.beats_champion:
            steps.append("no canary: the challenger did not beat the champion on the holdout")
            return {**update, "steps": steps}
    nothing_serves = rollout.why_no_canary(settings)
    if nothing_serves:
        steps.append(f"no canary: {nothing_serves}; v{version} stays the challenger")
        ledger.record_outcome(entry_id, {"canary": "not started", "why": nothing_serves}, settings)
        return {**update, "steps": steps}
    canary_state = canary_rollout(
        version=version,
        steps=canary_steps,
        step_seconds=canary_step_seconds,
        min_samples=canary_min_samples,
        approval_timeout_seconds=approval_timeout_seconds,
        model_name=settings.model_name,
        return_state=True,
    )
    if canary_state.is_failed():
        steps.append(f"canary failed: {canary_state.message}")
        ledger.record_outcome(entry_id, {"canary": "failed"}, settings)
        return {**update, "canary": "failed", "steps": steps}
    canary = canary_state.result()
    outcome = getattr(canary, "outcome", canary_state.name)
    steps.append(f"canary v{version}: {outcome} ({getattr(canary, 'reason', '')})")
    logger.info("canary of v%d: %s", version, outcome)
    for entry in told:
        ledger.record_outcome(entry, {"canary": outcome, "canaried_version": version}, settings)
    if getattr(canary, "steps", None):
        ledger.record_outcome(canary.steps[-1].ledger_id, {"carried_out": outcome}, settings)
    return {**update, "canary": outcome, "steps": steps}


def _report(settings: Settings):
    rows = decision_rows(settings)
    create_table_artifact(
        key=artifact_key(settings.model_name, "decisions-and-outcomes"),
        table=rows,
        description="Every decision, who made it, and what happened after",
    )
    return plot_decisions(settings.reports_dir / settings.model_name / "lifecycle.png", settings)
