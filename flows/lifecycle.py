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
     the canary subflow (our recipe retrains adopted models too, for their task);
   - `rollback` moves `champion` back and the router's traffic with it;
   - `escalate` emits the escalation event.
   Every step's result goes to the outcome of the triage decision that started it, so the
   ledger links decision -> retraining -> canary -> promotion.
6. Report: the decisions and their outcomes over time as a table artifact and a PNG plot.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import Field

from agentic_mlops.flows.canary import canary_rollout
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.flows.form import Empty
from agentic_mlops.flows.retrain import retrain
from agentic_mlops.schemas import DriftCheckResult, LifecycleResult
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import drift_actions as actions
from agentic_mlops.tasks import lifecycle_actions, lifecycle_report, promotion, reference
from agentic_mlops.tasks.lifecycle_actions import TurnLimits
from agentic_mlops.tasks.serving_log import collect_window, flush_router_log, local_router_url


@flow(
    name="lifecycle",
    log_prints=True,
    on_cancellation=[promotion.roll_back_interrupted_run],
    on_crashed=[promotion.roll_back_interrupted_run],
)
def lifecycle(
    batch_path: str | Empty = None,
    window_since: float | Empty = None,
    window_rows: Annotated[int, Field(ge=1)] | Empty = None,
    window_until: float | Empty = None,
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
        window_until: Without a batch: only rows whose labels arrived by this time (a window
            that has passed; later traffic goes on). Empty: up to now.
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
    name = settings.model_name
    target = target or reference.champion_target(settings)
    batch = batch_path
    if batch is None:
        flush_router_log(local_router_url(settings))
        batch = collect_window(settings, window_since, window_rows, window_until)
        if batch is None:
            return Failed(name="NoTraffic", message="the router has logged no labelled rows yet")
    checked = drift_check(
        current_path=batch, target=target, act=False, model_name=name, return_state=True
    )
    if checked.is_failed():
        return Failed(name=checked.name, message=f"drift check failed: {checked.message}")
    check: DriftCheckResult = checked.result()
    result = lifecycle_actions.triaged(check, batch, settings)

    limits = TurnLimits(
        max_trials=retrain_max_trials,
        time_budget_seconds=retrain_time_budget_seconds,
        require_improvement=require_improvement,
        canary_steps=canary_steps,
        canary_step_seconds=canary_step_seconds,
        canary_min_samples=canary_min_samples,
        approval_timeout_seconds=approval_timeout_seconds,
    )
    action, route, notes = lifecycle_actions.cleared_action(check, limits, settings)
    result.steps.extend(notes)
    if action == "retrain":
        result = lifecycle_actions.retrain_and_canary(
            retrain, canary_rollout, result, route, target, limits, settings
        )
    elif action == "rollback":
        result.steps.append(lifecycle_actions.roll_back(check, settings))
    elif action == "escalate":
        result.steps.append(actions.escalate(name, check.batch_id, check.decision, check.ledger_id))

    result = lifecycle_report.publish_turn(result, action, settings)
    get_run_logger().info("lifecycle: %s; aliases %s", action, result.aliases)
    return result
