"""What a lifecycle turn does with the triage's decision (`flows/lifecycle.py`).

It first follows up earlier promotions (did they hold?), then clears the action: with
approval mode `all` a person approves a retrain or rollback, and a retrain needs a route (the
team's own training deployment, or our recipe). A retrain then produces a challenger and
canaries it; a rollback moves `champion` back and the router's baseline with it. Every step's
result goes to the outcome of the triage decision that started it, so the ledger links
decision -> retraining -> canary -> promotion.

The retrain and canary flows are handed in by the flow that runs them as subflows (flows sit
above tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.states import State

from agentic_mlops.schemas import DriftCheckResult, LifecycleResult
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import approval, ledger, registry, rollout
from agentic_mlops.tasks import drift_actions as actions

Flow = Callable[..., State]


@dataclass(frozen=True)
class TurnLimits:
    """The turn's own caps on the retraining and the canary it starts; None: the settings'
    (or the advisor's) own."""

    max_trials: int | None = None
    time_budget_seconds: float | None = None
    require_improvement: bool = True
    canary_steps: list[int] | None = None
    canary_step_seconds: float | None = None
    canary_min_samples: int | None = None
    approval_timeout_seconds: int | None = None


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


def triaged(check: DriftCheckResult, batch: str, settings: Settings) -> LifecycleResult:
    """The turn so far: the triage's decision on the batch, and the follow-up of earlier
    promotions it implies."""
    decision = check.decision
    get_run_logger().info("triage decided %s: %s", decision.action, decision.rationale)
    return LifecycleResult(
        model_name=settings.model_name,
        batch=batch,
        decision=decision.action,
        ledger_id=check.ledger_id,
        followed_up=follow_up_promotions(decision.action, settings),
        steps=[f"triage: {decision.action} ({decision.rationale})"],
    )


def cleared_action(
    check: DriftCheckResult, limits: TurnLimits, settings: Settings
) -> tuple[str, str, list[str]]:
    """The action to carry out, the retraining route, and why the action changed if it did:
    a retrain or rollback a person did not approve escalates."""
    action, notes = check.decision.action, []
    if action in ("retrain", "rollback"):
        ok, why = approval.ask_before_acting(
            ledger.get_decision(check.ledger_id, settings),
            actions.triage_markdown(check, settings),
            limits.approval_timeout_seconds or settings.canary.approval_timeout_seconds,
            settings,
        )
        if not ok:
            notes.append(f"not approved: {why}")
            action = "escalate"
    return action, actions.retraining_route(settings), notes


def roll_back(check: DriftCheckResult, settings: Settings) -> str:
    """Move `champion` back; the router's baseline then serves it again (when it runs)."""
    done = actions.roll_back(settings.model_name, check.ledger_id, settings)
    backend = rollout.rollout_backend(settings)
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    if champion is not None and backend.is_serving():
        backend.set_baseline(champion)
    return done


@dataclass(frozen=True)
class Retrained:
    """A retraining's challenger (None: nothing to canary), the ledger entries to tell about
    its canary, the result fields it sets, and what happened."""

    version: int | None
    told: list[str]
    update: dict[str, Any]
    steps: list[str]


def retrain_by_team(batch: str, entry_id: str, target: str, settings: Settings) -> Retrained:
    """Run the team's own training deployment; its new `challenger` is the one to canary."""
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
        return Retrained(None, [], {}, steps)
    return Retrained(
        trained.challenger, [entry_id], {"retrained_version": trained.challenger}, steps
    )


def retrain_by_recipe(
    retrain_flow: Flow,
    batch: str,
    entry_id: str,
    target: str,
    limits: TurnLimits,
    settings: Settings,
) -> Retrained:
    """Run our retrain flow (advisor, synthesis, search, holdout comparison) as a subflow; its
    challenger is the one to canary when it beat the champion or did not have to."""
    state = retrain_flow(
        data_path=batch,
        recent_path=batch,
        triage_ledger_id=entry_id,
        target=target,
        max_trials=limits.max_trials,
        time_budget_seconds=limits.time_budget_seconds,
        require_improvement=limits.require_improvement,
        hand_over="none",
        model_name=settings.model_name,
        return_state=True,
    )
    if state.is_failed():
        ledger.record_outcome(entry_id, {"retrain_failed": state.message}, settings)
        return Retrained(None, [], {}, [f"retrain failed: {state.message}"])
    retrained = state.result()
    version, comparison = retrained.training.version, retrained.comparison
    steps = [
        f"retrain: v{version} ({retrained.best_family}, {retrained.trials} trials), "
        f"{comparison.summary()}"
    ]
    update = {"retrained_version": version, "beat_champion": comparison.beats_champion}
    if limits.require_improvement and not comparison.beats_champion:
        steps.append("no canary: the challenger did not beat the champion on the holdout")
        return Retrained(None, [], update, steps)
    return Retrained(version, [entry_id, retrained.ledger_id], update, steps)


def canary_challenger(
    canary_flow: Flow, retrained: Retrained, entry_id: str, limits: TurnLimits, settings: Settings
) -> dict[str, Any]:
    """Canary the retrained challenger when a model serves, and tell the ledger entries how it
    ended; the result fields it sets, with the steps so far."""
    version, steps = retrained.version, list(retrained.steps)
    nothing_serves = rollout.why_no_canary(settings)
    if nothing_serves:
        steps.append(f"no canary: {nothing_serves}; v{version} stays the challenger")
        ledger.record_outcome(entry_id, {"canary": "not started", "why": nothing_serves}, settings)
        return {**retrained.update, "steps": steps}
    canary_state = canary_flow(
        version=version,
        steps=limits.canary_steps,
        step_seconds=limits.canary_step_seconds,
        min_samples=limits.canary_min_samples,
        approval_timeout_seconds=limits.approval_timeout_seconds,
        model_name=settings.model_name,
        return_state=True,
    )
    if canary_state.is_failed():
        steps.append(f"canary failed: {canary_state.message}")
        ledger.record_outcome(entry_id, {"canary": "failed"}, settings)
        return {**retrained.update, "canary": "failed", "steps": steps}
    canary = canary_state.result()
    outcome = getattr(canary, "outcome", canary_state.name)
    steps.append(f"canary v{version}: {outcome} ({getattr(canary, 'reason', '')})")
    get_run_logger().info("canary of v%d: %s", version, outcome)
    for entry in retrained.told:
        ledger.record_outcome(entry, {"canary": outcome, "canaried_version": version}, settings)
    if getattr(canary, "steps", None):
        ledger.record_outcome(canary.steps[-1].ledger_id, {"carried_out": outcome}, settings)
    return {**retrained.update, "canary": outcome, "steps": steps}


def retrain_and_canary(
    retrain_flow: Flow,
    canary_flow: Flow,
    result: LifecycleResult,
    route: str,
    target: str,
    limits: TurnLimits,
    settings: Settings,
) -> LifecycleResult:
    """Retrain (the team's own deployment, or our recipe) and canary the new challenger."""
    entry_id = result.ledger_id
    if route == "team":
        retrained = retrain_by_team(result.batch, entry_id, target, settings)
    else:
        retrained = retrain_by_recipe(
            retrain_flow, result.batch, entry_id, target, limits, settings
        )
    update = {**retrained.update, "steps": retrained.steps}
    if retrained.version is not None:
        update = canary_challenger(canary_flow, retrained, entry_id, limits, settings)
    return result.model_copy(update={**update, "steps": result.steps + update["steps"]})
