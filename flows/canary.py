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

import time
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Completed, Crashed, Failed, State
from prefect.transactions import transaction
from pydantic import BaseModel, Field

from agentic_mlops.agents.canary_promotion import PromotionOutcome, advise
from agentic_mlops.decisions import CanaryEvidence, JudgeEvidence
from agentic_mlops.flows.form import Empty
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import approval, ledger, registry, reports, rollout
from agentic_mlops.tasks.canary_judge import JudgeResult, judge, sequential_judge
from agentic_mlops.tasks.metrics import (
    MetricsError,
    PrometheusMetrics,
    RouterMetrics,
    judged_metrics,
    metrics_source,
    with_derived_metrics,
)
from agentic_mlops.tasks.reports import artifact_key

MAX_EXTRA_HOLDS = 2
"""Holds a person or an LLM may add beyond the policy's own limit before the flow rolls back."""
LOCK_LEASE_SECONDS = 60
"""Lease of the promotion lock, renewed while the run lives (Prefect's shortest): a run that is
killed frees the lock once its lease expires, and the Prefect server's repossessor sees it."""


class CanaryStep(BaseModel):
    """What happened at one traffic step."""

    weight: float
    verdict: str
    score: float
    sequential: str
    action: str
    decided_by: str
    ledger_id: str


class CanaryResult(BaseModel):
    """The end of a rollout."""

    model_name: str
    version: int
    outcome: Literal["promoted", "rolled_back"]
    champion: int | None
    steps: list[CanaryStep]
    repaired: str | None = None
    reason: str


class StepAnalysis(BaseModel):
    """The metrics, sequential test and judge of one step."""

    judge: JudgeResult
    sequential_outcome: Literal["continue", "promote", "rollback"]
    sequential_reason: str
    samples: dict[str, int]
    metric_errors: int


def _resolve(value, default):
    return default if value is None else value


@task(name="analyse-step", cache_policy=NO_CACHE)
def analyse_step(
    metrics: RouterMetrics | PrometheusMetrics,
    seconds: float,
    min_samples: int,
    settings: Settings,
) -> StepAnalysis:
    """Collect until the sequential test decides or time is up, then judge the window.

    The sequential test watches the critical metrics only: they alone may end a step early.

    Reading the metrics fails closed: a failed read counts as no data, and three failures in a
    row end the step with whatever was collected (which the judge then calls `nodata`).
    """
    specs = judged_metrics(metrics, min_samples, seconds)
    gates = [spec for spec in specs if spec.critical]
    deadline = time.monotonic() + seconds
    values = {"baseline": {}, "canary": {}}
    errors_in_a_row, errors = 0, 0
    sequential = None
    while True:
        try:
            values = with_derived_metrics(metrics.collect())
            errors_in_a_row = 0
        except MetricsError:
            errors_in_a_row += 1
            errors += 1
            if errors_in_a_row >= 3:
                break
        sequential = sequential_judge(values["canary"], values["baseline"], gates)
        if sequential.outcome != "continue" or time.monotonic() >= deadline:
            break
        time.sleep(min(settings.canary_poll_seconds, max(deadline - time.monotonic(), 0.05)))
    return StepAnalysis(
        judge=judge(values["canary"], values["baseline"], specs),
        sequential_outcome=sequential.outcome if sequential else "continue",
        sequential_reason=sequential.reason if sequential else "no data",
        samples={v: len(values[v].get("error", [])) for v in ("baseline", "canary")},
        metric_errors=errors,
    )


def evidence_markdown(evidence: CanaryEvidence, outcome: PromotionOutcome) -> str:
    rows = "\n".join(
        f"| {m.name} | {'yes' if m.critical else ''} | {m.classification} | "
        f"{'' if m.effect is None else f'{m.effect:+.4g}'} | "
        f"{'' if m.ci_low is None else f'[{m.ci_low:+.4g}, {m.ci_high:+.4g}]'} | "
        f"{m.canary_n} / {m.baseline_n} |"
        for m in evidence.judge.metrics
    )
    decision = outcome.decision
    return (
        f"## Canary v{evidence.challenger_version} vs champion v{evidence.champion_version} "
        f"at {evidence.weight:.0%}\n\n"
        f"**Judge: {evidence.judge.verdict}** (score {evidence.judge.score:.0f}); "
        f"sequential test: {evidence.sequential_outcome}.\n\n"
        "| metric | critical | class | canary - baseline | interval | n canary / baseline |\n"
        f"|---|---|---|---|---|---|\n{rows}\n\n"
        f"Agent ({outcome.agent_model}): **{decision.action}**, confidence "
        f"{decision.confidence:.2f}. {decision.rationale}\n\n"
        f"Guardrail: {outcome.overridden_by or 'none'}\n\n"
        + (outcome.attribution.markdown() if outcome.attribution else "")
    )


def record_decision(
    evidence: CanaryEvidence, outcome: PromotionOutcome, settings: Settings
) -> ledger.LedgerEntry:
    payload = evidence.model_dump(mode="json")
    decision = outcome.decision
    return ledger.record_agent_decision(
        "canary_promotion",
        payload,
        flow_run.get_id(),
        settings,
        model_name=evidence.model_name,
        model_version=evidence.challenger_version,
        action=decision.action,
        confidence=decision.confidence,
        rationale=decision.rationale,
        evidence={"used": list(decision.evidence_used), **payload},
        agent_model=outcome.agent_model,
        overridden_by=outcome.overridden_by,
        attribution=outcome.attribution.model_dump(mode="json") if outcome.attribution else None,
    )


def ask_person(
    evidence: CanaryEvidence,
    outcome: PromotionOutcome,
    entry: ledger.LedgerEntry,
    timeout: int,
    settings: Settings,
) -> approval.CanaryApproval:
    """Pause for a person's answer, recorded as their own decision; no answer in time is a
    rollback."""
    key = artifact_key(evidence.model_name, "canary")
    description = (
        evidence_markdown(evidence, outcome)
        + "\nEvidence: "
        + reports.artifact_link(f"{key}-judge", "judge table")
        + " · "
        + reports.mlflow_version_link(evidence.model_name, evidence.challenger_version, settings)
        + f"  \nLedger entry: `{entry.id}`\n\n"
        "**approve** to go on, **reject** to roll back, **extend** to keep analysing.\n\n"
        + approval.deadline_line(timeout, "the canary rolls back")
    )
    answer = approval.wait_for_person(
        approval.CanaryApproval,
        description,
        timeout,
        f"approval-{round(evidence.weight * 100)}-{evidence.holds}",
        max(1, int(settings.canary_poll_seconds)),
    )
    if answer is None:
        approval.record_answer(entry, "no answer", f"no answer within {timeout} s", settings)
        return approval.CanaryApproval(decision="reject", comment=f"no answer within {timeout} s")
    approval.record_answer(entry, answer.decision, answer.comment, settings)
    return answer


def approval_gate(action: str, evidence: CanaryEvidence, settings: Settings) -> str:
    """The humans-first mode over the agent's action.

    `all`: a promotion, or the last increase (to 100%), waits for a person. `none`: nobody is
    asked, so an unclear step rolls back. `risky` (default): the agent's guardrails already
    send a promotion or rollback below the confidence threshold to a person.
    """
    to_full = action == "promote" or (action == "increase_traffic" and evidence.next_weight is None)
    if settings.approval_mode == "all" and to_full:
        return "ask_human"
    if settings.approval_mode == "none" and action == "ask_human":
        return "rollback"
    return action


def ensure_promotion_lock(name: str) -> str:
    """The name of the model's global concurrency limit of 1, created on first use."""
    limit = f"agentic-mlops-promote-{name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=limit, limit=1)
                )
            except Exception:  # created meanwhile by another run
                client.read_global_concurrency_limit_by_name(limit)
    return limit


def promote(name: str, version: int, champion: int | None, settings: Settings) -> None:
    """Move the alias and the traffic together, or neither."""
    backend = rollout.rollout_backend(settings)
    rollout.write_journal(
        rollout.PromotionJournal(
            model_name=name,
            version=version,
            previous_champion=champion,
            router_before=backend.router_state(),
            flow_run_id=flow_run.get_id(),
        ),
        settings,
    )
    try:
        with transaction(key=f"promote-{name}-v{version}-{flow_run.get_id()}"):
            registry.move_champion_alias(name, version, settings)
            rollout.switch_traffic(settings)
    finally:
        rollout.clear_journal(settings)  # committed, or undone by the transaction's hooks


def mark_interrupted(journal: rollout.PromotionJournal | None, repaired: str | None) -> None:
    """Mark the run that left a promotion journal `Crashed`, saying what was repaired.

    Called with the promotion lock held, so that run no longer holds it: it was killed, yet
    Prefect still shows it running, as nothing reports the death of a process.
    """
    if journal is None or journal.flow_run_id in (None, flow_run.get_id()):
        return
    with get_client(sync_client=True) as client:
        try:
            earlier = client.read_flow_run(journal.flow_run_id)
        except ObjectNotFound:  # recorded by another Prefect server
            return
        if earlier.state is None or not earlier.state.is_final():
            client.set_flow_run_state(
                earlier.id,
                Crashed(message=f"killed while promoting v{journal.version}; {repaired}"),
                force=True,
            )


def failed_rollout(
    name: str, message: str, backend: rollout.RolloutBackend, champion: int | None
) -> State:
    """End a rollout that could not finish: the canary loses its traffic if the router still
    answers, the champion is unchanged, and the state says so on one line."""
    try:
        backend.rollback()
    except rollout.ServingError as error:
        message += f"; the canary could not be removed ({error})"
    message = f"{message}; champion v{champion} unchanged"
    get_run_logger().error(message)
    return Failed(name=name, message=" ".join(message.split()))


@flow(
    name="canary-rollout",
    log_prints=True,
    on_cancellation=[rollout.roll_back_interrupted_run],
    on_crashed=[rollout.roll_back_interrupted_run],
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
    logger = get_run_logger()
    name = settings.model_name
    version = version or registry.alias_version(name, registry.CHALLENGER, settings)
    if version is None:
        return Failed(name="NoChallenger", message=f"no challenger of {name!r} to roll out")
    steps = _resolve(steps, settings.canary_steps)
    if not steps or steps[-1] != 100 or sorted(steps) != steps or steps[0] <= 0:
        return Failed(
            name="InvalidParameters", message=f"steps must rise and end at 100, got {steps}"
        )
    seconds = _resolve(step_seconds, settings.canary_step_seconds)
    min_samples = _resolve(min_samples, settings.canary_min_samples)
    timeout = _resolve(approval_timeout_seconds, settings.canary_approval_timeout_seconds)

    lock = ensure_promotion_lock(name)
    with concurrency(
        lock, occupy=1, timeout_seconds=3600, lease_duration=LOCK_LEASE_SECONDS, strict=True
    ):
        interrupted = rollout.read_journal(settings)
        repaired = rollout.reconcile(name, settings)
        if repaired:
            logger.warning("repaired: %s", repaired)
            mark_interrupted(interrupted, repaired)
        champion = registry.alias_version(name, registry.CHAMPION, settings)
        if champion is None or champion == version:
            return Completed(name="NothingToDo", message=f"v{version} is already the champion")
        backend = rollout.rollout_backend(settings)
        try:
            metrics = metrics_source(settings, backend.start_router())
            backend.set_baseline(champion)
            backend.deploy(version)
            history: list[CanaryStep] = []

            def finish(outcome: str, reason: str) -> CanaryResult:
                if outcome == "rolled_back":
                    backend.rollback()
                else:
                    promote(name, version, champion, settings)
                registry.tag_canary_outcome(name, version, outcome, reason, settings)
                result = CanaryResult(
                    model_name=name,
                    version=version,
                    outcome=outcome,
                    steps=history,
                    champion=registry.alias_version(name, registry.CHAMPION, settings),
                    repaired=repaired,
                    reason=reason,
                )
                logger.info("canary v%d %s: %s", version, outcome, reason)
                return result

            index, holds, marked = 0, 0, None
            while index < len(steps) - 1:
                weight = steps[index] / 100
                if marked != index:  # a held step keeps its window and analyses it for longer
                    backend.set_weight(weight)
                    try:
                        metrics.mark()
                    except MetricsError as error:  # nothing to judge by: fail closed
                        return finish("rolled_back", f"no metrics to judge the canary: {error}")
                    marked = index
                analysis = analyse_step(metrics, seconds, min_samples, settings)
                evidence = CanaryEvidence(
                    model_name=name,
                    champion_version=champion,
                    challenger_version=version,
                    weight=weight,
                    next_weight=steps[index + 1] / 100 if steps[index + 1] < 100 else None,
                    judge=JudgeEvidence.model_validate(analysis.judge.model_dump()),
                    sequential_outcome=analysis.sequential_outcome,
                    sequential_reason=analysis.sequential_reason,
                    holds=holds,
                )
                outcome = advise(evidence, settings)
                entry = record_decision(evidence, outcome, settings)
                action = approval_gate(outcome.decision.action, evidence, settings)
                if action != outcome.decision.action:
                    logger.info(
                        "approval mode %s: %s becomes %s",
                        settings.approval_mode,
                        outcome.decision.action,
                        action,
                    )
                    ledger.record_outcome(
                        entry.id,
                        {"approval_mode": settings.approval_mode, "action": action},
                        settings,
                    )
                key = artifact_key(name, "canary")
                create_table_artifact(
                    key=f"{key}-judge",
                    table=[
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in m}
                        for m in evidence.judge.metrics
                    ],
                    description=f"Judge of v{version} at {weight:.0%}: {evidence.judge.verdict}",
                )
                create_markdown_artifact(
                    key=f"{key}-step",
                    markdown=evidence_markdown(evidence, outcome)
                    + f"\nLedger entry: `{entry.id}`\n",
                    description=f"Canary v{version} at {weight:.0%}",
                )
                if action == "ask_human":
                    answer = ask_person(evidence, outcome, entry, timeout, settings)
                    action = {
                        "approve": "increase_traffic",
                        "reject": "rollback",
                        "extend": "hold",
                    }[answer.decision]
                    if action == "increase_traffic" and evidence.next_weight is None:
                        action = "promote"
                elif action == "increase_traffic" and evidence.next_weight is None:
                    action = "hold"  # only a guarded `promote` or a person ends in promotion
                history.append(
                    CanaryStep(
                        weight=weight,
                        verdict=evidence.judge.verdict,
                        score=evidence.judge.score,
                        sequential=analysis.sequential_outcome,
                        action=action,
                        decided_by=outcome.attribution.decided_by
                        if outcome.attribution
                        else outcome.agent_model,
                        ledger_id=entry.id,
                    )
                )
                if action == "rollback":
                    return finish("rolled_back", outcome.decision.rationale)
                if action == "promote":
                    break
                if action == "hold":
                    holds += 1
                    if holds > evidence.max_holds + MAX_EXTRA_HOLDS:
                        return finish("rolled_back", f"held {holds} times without a verdict")
                    continue
                index, holds = index + 1, 0
            try:
                return finish("promoted", "every step passed its analysis")
            except Exception as error:  # the transaction undid the alias move and the switch
                return failed_rollout(
                    "PromotionFailed",
                    f"promotion of v{version} failed and was undone: {error}",
                    backend,
                    champion,
                )
        except MetricsError as error:
            return failed_rollout("NoMetrics", str(error), backend, champion)
        except rollout.ServingError as error:
            return failed_rollout(
                "ServingUnavailable",
                f"serving failed during the rollout: {error}",
                backend,
                champion,
            )
