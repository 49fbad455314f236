"""Canary rollout: deploy the challenger beside the champion, step its traffic, judge, act.

Runbook:
1. Take the model's promotion lock (a Prefect global concurrency limit of 1, leased for a
   minute and renewed while the run lives): promotions of one model never overlap, and a
   killed run's lock is freed when its lease runs out. Repair any disagreement between the
   champion alias and the router left by an interrupted run, and mark that run `Crashed`.
2. Serve the champion as baseline and the challenger as canary at 0%, on the backend that
   `serving_backend` names (local processes, or Deployments on Kubernetes).
3. For each step (5%, 25%, 50% by default): set the canary's weight, collect per-request
   metrics from the router until the sequential test decides or the step's time is up, run
   the fixed-horizon judge, and ask the promotion agent. Its decision, bounded by guardrails,
   is recorded in the ledger with the judge's table as an artifact.
4. `ask_human` pauses the run with an approval form (approve / reject / extend, a comment)
   showing the evidence; no answer before the timeout means rollback.
5. Promote in one Prefect transaction: the `champion` alias moves and the router switches to
   the canary at 100%; if either fails, both are undone. A journal file marks the promotion
   until it commits, so a process killed in between is repaired by the next run.
6. Roll back: all traffic to the champion, the canary's server stops; aliases unchanged.
   Metrics that cannot be read are no data (fail closed); a router or model server that fails
   ends the run `Failed`, named `ServingUnavailable` (or `PromotionFailed`), the canary
   removed if the router still answers.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.states import Completed, Failed, State
from pydantic import Field

from agentic_mlops.agents.canary_promotion import advise
from agentic_mlops.flows.form import Empty
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import (
    approval,
    canary_steps,
    promotion,
    registry,
    rollout,
    rollout_protocol,
)
from agentic_mlops.tasks.canary_steps import CanaryResult, CanaryState, StepDecision, next_step
from agentic_mlops.tasks.metrics import MetricsError, metrics_source


@flow(
    name="canary-rollout",
    log_prints=True,
    on_cancellation=[promotion.roll_back_interrupted_run],
    on_crashed=[promotion.roll_back_interrupted_run],
)
def canary_rollout(
    version: Annotated[int, Field(ge=1)] | Empty = None,
    steps: list[int] | Empty = None,
    step_seconds: Annotated[float, Field(gt=0)] | Empty = None,
    min_samples: Annotated[int, Field(ge=10)] | Empty = None,
    approval_timeout_seconds: Annotated[int, Field(ge=1)] | Empty = None,
    model_name: str | Empty = None,
) -> CanaryResult | State:
    """Roll a challenger out step by step; promote it or roll it back.

    Args:
        version: Model version to roll out. Empty: the version with the `challenger` alias.
        steps: The canary's share of traffic at each step, in percent, rising and ending at
            100 (for example 5, 25, 50, 100). Empty: the `canary_steps` setting.
        step_seconds: Longest analysis of one step, in seconds. Empty: the setting.
        min_samples: Requests each variant needs before a step is judged. Empty: the setting.
        approval_timeout_seconds: How long a person has to answer an approval form before
            the canary rolls back. Empty: the setting.
        model_name: The registered model whose challenger rolls out (its own router and
            servers). Empty: the settings' model name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    name = settings.model_name
    version = version or registry.alias_version(name, registry.CHALLENGER, settings)
    if version is None:
        return Failed(name="NoChallenger", message=f"no challenger of {name!r} to roll out")
    steps = settings.canary.steps if steps is None else steps
    if not canary_steps.valid_steps(steps):
        return Failed(
            name="InvalidParameters", message=f"steps must rise and end at 100, got {steps}"
        )
    seconds = step_seconds or settings.canary.step_seconds
    min_samples = min_samples or settings.canary.min_samples
    timeout = approval_timeout_seconds or settings.canary.approval_timeout_seconds

    with promotion.promotion_lock(name):
        repaired = promotion.repair_interrupted(name, settings)
        champion = registry.alias_version(name, registry.CHAMPION, settings)
        if champion is None or champion == version:
            return Completed(name="NothingToDo", message=f"v{version} is already the champion")
        backend = rollout.rollout_backend(settings)
        try:
            metrics = metrics_source(settings, backend.start_router())
            backend.set_baseline(champion)
            backend.deploy(version)
            state, history = CanaryState.start(steps), []
            while not state.finished:
                if state.new_step:
                    backend.set_weight(state.weight)
                    try:
                        metrics.mark()
                    except MetricsError as error:  # nothing to judge by: fail closed
                        why = f"no metrics to judge the canary: {error}"
                        state = next_step(state, StepDecision(action="rollback", rationale=why))
                        break
                analysis = canary_steps.analyse_step(metrics, seconds, min_samples, settings)
                evidence = canary_steps.step_evidence(state, name, champion, version, analysis)
                outcome = advise(evidence, settings)
                entry = canary_steps.record_decision(evidence, outcome, settings)
                action = approval.canary_gate(outcome.decision.action, evidence, entry, settings)
                canary_steps.publish_step(evidence, outcome, entry)
                answer = None
                if action == "ask_human":
                    answer = canary_steps.ask_person(evidence, outcome, entry, timeout, settings)
                why = outcome.decision.rationale
                state = next_step(state, StepDecision(action=action, answer=answer, rationale=why))
                history.append(canary_steps.CanaryStep.recorded(entry.id, settings))
            return promotion.finish_rollout(
                state, name, version, champion, history, repaired, backend, settings
            )
        except MetricsError as error:
            return promotion.failed_rollout("NoMetrics", str(error), backend, champion)
        except rollout_protocol.ServingError as error:
            why = f"serving failed during the rollout: {error}"
            return promotion.failed_rollout("ServingUnavailable", why, backend, champion)
