"""One canary step and the rollout's way through its steps.

A step sets the canary's weight, collects the router's per-request metrics until the sequential
test decides or the step's time is up, and judges the window (`analyse_step`). The promotion
agent decides on that evidence; the decision is recorded in the ledger, published as artifacts
and, when it asks for one, put to a person (`ask_person`). `next_step` is the rollout as a
state machine: a pure function from where the rollout stands and the step's decision to where
it goes next, so the order of weights, holds and endings is tested without any server.

`CanaryStep` is a step as the ledger records it: the canary flow returns its steps in this
shape and the MCP `canary_status` tool reads them back in the same shape.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from agentic_mlops.decisions import (
    CanaryEvidence,
    Outcome,
    PromotionAction,
    PromotionRecord,
)
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import approval, ledger, reports
from agentic_mlops.tasks.canary_judge import JudgeResult, judge, sequential_judge
from agentic_mlops.tasks.metrics import (
    MetricsError,
    PrometheusMetrics,
    RouterMetrics,
    judged_metrics,
    with_derived_metrics,
)

MAX_EXTRA_HOLDS = 2
"""Holds a person or an LLM may add beyond the policy's own limit before the flow rolls back."""
PASSED = "every step passed its analysis"
ANSWER_ACTION: dict[str, PromotionAction] = {
    "approve": "increase_traffic",
    "reject": "rollback",
    "extend": "hold",
}
"""What a person's answer on the canary's approval form does; no answer in time rolls back."""


class StepAnalysis(BaseModel):
    """The metrics, sequential test and judge of one step."""

    judge: JudgeResult
    sequential_outcome: Literal["continue", "promote", "rollback"]
    sequential_reason: str
    samples: dict[str, int]
    metric_errors: int


class CanaryStep(BaseModel):
    """One analysed step of a canary rollout: the judge, the sequential test, the promotion
    agent's decision, any person's answer, and what the rollout did."""

    ledger_id: str
    decided_at: str
    weight: float
    champion_version: int | None
    challenger_version: int
    judge_verdict: str = Field(description="pass, marginal or fail (fixed-horizon analysis).")
    judge_score: float = Field(description="0-100; share of metrics that passed, weighted.")
    critical_failures: list[str]
    metrics: list[dict[str, Any]] = Field(
        description="Per metric: classification (pass/high/low/nodata), critical, effect "
        "(canary minus baseline) with its interval, and sample sizes."
    )
    sequential_outcome: str = Field(description="continue, promote or rollback.")
    sequential_reason: str
    action: str = Field(
        description="What the rollout did at this step: promote, increase_traffic, hold or "
        "rollback (ask_human while a person has not answered)."
    )
    agent_action: str = Field(description="The promotion agent's action, after its guardrails.")
    confidence: float | None
    rationale: str | None
    decided_by: str = Field(description="`policy`, `guardrail` or the LLM that answered.")
    guardrail: str | None = None
    human_answer: str | None = Field(
        default=None, description="A person's answer on the approval form: approve/reject/extend."
    )

    @classmethod
    def recorded(cls, ledger_id: str, settings: Settings) -> CanaryStep:
        """The step as the ledger holds it now."""
        return cls.from_entry(ledger.get_decision(ledger_id, settings))

    @classmethod
    def from_entry(cls, entry: ledger.LedgerEntry) -> CanaryStep:
        """The step a `canary_promotion` ledger entry records, with the approval mode's and
        any person's answer to it."""
        evidence = PromotionRecord.model_validate(entry.evidence)
        judge_ = evidence.judge
        outcome = entry.outcome or {}
        return cls(
            ledger_id=entry.id,
            decided_at=entry.created_at,
            weight=evidence.weight,
            champion_version=evidence.champion_version,
            challenger_version=evidence.challenger_version,
            judge_verdict=judge_.verdict,
            judge_score=judge_.score,
            critical_failures=judge_.critical_failures,
            metrics=[metric.model_dump() for metric in judge_.metrics],
            sequential_outcome=evidence.sequential_outcome,
            sequential_reason=evidence.sequential_reason,
            action=action_taken(
                outcome.get("action", entry.action),
                outcome.get("human"),
                at_last_step=evidence.next_weight is None,
            ),
            agent_action=entry.action,
            confidence=entry.confidence,
            rationale=entry.rationale,
            decided_by=(entry.attribution or {}).get("decided_by", entry.agent_model),
            guardrail=entry.overridden_by,
            human_answer=outcome.get("human"),
        )


class CanaryResult(BaseModel):
    """The end of a rollout."""

    model_name: str
    version: int
    outcome: Literal["promoted", "rolled_back"]
    champion: int | None
    steps: list[CanaryStep]
    repaired: str | None = None
    reason: str


class CanaryState(BaseModel):
    """Where a rollout stands between two decisions."""

    model_config = ConfigDict(frozen=True)

    weights: tuple[float, ...] = Field(description="The canary's share at each step, up to 1.")
    index: int = Field(default=0, description="The step under analysis.")
    holds: int = Field(default=0, description="How often this step was held already.")
    max_holds: int = Field(
        default=CanaryEvidence.model_fields["max_holds"].default,
        description="The policy's own limit of holds at one step.",
    )
    new_step: bool = Field(
        default=True,
        description="This step's weight is still to be set and its metrics window opened; a "
        "held step keeps both and analyses its window for longer.",
    )
    taken: PromotionAction | None = Field(
        default=None, description="What the rollout did at the step decided last."
    )
    outcome: Literal["promoted", "rolled_back"] | None = None
    reason: str = ""

    @classmethod
    def start(cls, percents: list[int]) -> CanaryState:
        """The state before the first step; a rollout straight to 100% has nothing to analyse."""
        weights = tuple(percent / 100 for percent in percents)
        if len(weights) == 1:
            return cls(weights=weights, outcome="promoted", reason=PASSED)
        return cls(weights=weights)

    @property
    def weight(self) -> float:
        return self.weights[self.index]

    @property
    def next_weight(self) -> float | None:
        """The next step's share; None when the next step is full traffic."""
        following = self.weights[self.index + 1]
        return following if following < 1 else None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def hold_limit(self) -> int:
        return self.max_holds + MAX_EXTRA_HOLDS


class StepDecision(BaseModel):
    """What was decided at a step: the action after guardrails and approval mode, a person's
    answer when it was `ask_human`, and the rationale a rollback gives as its reason."""

    model_config = ConfigDict(frozen=True)

    action: PromotionAction
    answer: approval.CanaryAnswer | None = None
    rationale: str = ""


def valid_steps(percents: list[int]) -> bool:
    """Whether the canary's shares rise and end at full traffic."""
    return (
        bool(percents) and percents[0] > 0 and percents[-1] == 100 and sorted(percents) == percents
    )


def action_taken(action: str, answer: str | None, at_last_step: bool) -> str:
    """What a step's decision does to the rollout.

    A person's answer replaces `ask_human` (no answer in time rolls back); at the last step an
    increase is full traffic, so a person's approval promotes while anyone else's increase holds:
    only a guarded `promote` or a person ends in promotion.
    """
    if action == "ask_human" and answer is not None:
        action = ANSWER_ACTION.get(answer, "rollback")
        return "promote" if action == "increase_traffic" and at_last_step else action
    return "hold" if action == "increase_traffic" and at_last_step else action


def next_step(state: CanaryState, decision: StepDecision) -> CanaryState:
    """Where the rollout goes after a step's decision.

    `rollback` ends it rolled back with the decision's rationale; `promote` ends it promoted;
    `hold` stays at this weight and keeps analysing, and rolls back once held more than
    `hold_limit` times; `increase_traffic` goes to the next weight.

    Raises:
        ValueError: the rollout has ended, or `ask_human` comes without a person's answer.
    """
    if state.finished:
        raise ValueError(f"the rollout has ended: {state.outcome}")
    if decision.action == "ask_human" and decision.answer is None:
        raise ValueError("ask_human needs a person's answer (or its absence, as reject)")
    taken = action_taken(decision.action, decision.answer, state.next_weight is None)
    moved: dict[str, Any] = {"taken": taken}
    if taken == "rollback":
        moved.update(outcome="rolled_back", reason=decision.rationale)
    elif taken == "promote":
        moved.update(outcome="promoted", reason=PASSED)
    elif taken == "hold":
        holds = state.holds + 1
        moved.update(holds=holds, new_step=False)
        if holds > state.hold_limit:
            moved.update(outcome="rolled_back", reason=f"held {holds} times without a verdict")
    else:
        index = state.index + 1
        moved.update(index=index, holds=0, new_step=True)
        if index >= len(state.weights) - 1:
            moved.update(outcome="promoted", reason=PASSED)
    return state.model_copy(update=moved)


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
        time.sleep(min(settings.canary.poll_seconds, max(deadline - time.monotonic(), 0.05)))
    return StepAnalysis(
        judge=judge(values["canary"], values["baseline"], specs),
        sequential_outcome=sequential.outcome if sequential else "continue",
        sequential_reason=sequential.reason if sequential else "no data",
        samples={v: len(values[v].get("error", [])) for v in ("baseline", "canary")},
        metric_errors=errors,
    )


def step_evidence(
    state: CanaryState,
    model_name: str,
    champion: int | None,
    version: int,
    analysis: StepAnalysis,
) -> CanaryEvidence:
    """What the promotion agent reads about the step the rollout stands at."""
    return CanaryEvidence(
        model_name=model_name,
        champion_version=champion,
        challenger_version=version,
        weight=state.weight,
        next_weight=state.next_weight,
        judge=analysis.judge,
        sequential_outcome=analysis.sequential_outcome,
        sequential_reason=analysis.sequential_reason,
        holds=state.holds,
        max_holds=state.max_holds,
    )


def evidence_markdown(evidence: CanaryEvidence, outcome: Outcome) -> str:
    """The step's judge table, sequential test, decision and guardrail, for people."""
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
    evidence: CanaryEvidence, outcome: Outcome, settings: Settings
) -> ledger.LedgerEntry:
    """Append the promotion agent's decision, with the step's evidence, to the ledger."""
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


def publish_step(evidence: CanaryEvidence, outcome: Outcome, entry: ledger.LedgerEntry) -> None:
    """The judge's table and the step's summary as the model's latest canary artifacts."""
    key = reports.artifact_key(evidence.model_name, "canary")
    version, weight = evidence.challenger_version, evidence.weight
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
        markdown=evidence_markdown(evidence, outcome) + f"\nLedger entry: `{entry.id}`\n",
        description=f"Canary v{version} at {weight:.0%}",
    )


def ask_person(
    evidence: CanaryEvidence,
    outcome: Outcome,
    entry: ledger.LedgerEntry,
    timeout: int,
    settings: Settings,
) -> approval.CanaryAnswer:
    """Pause for a person's answer, recorded as their own decision; no answer in time is a
    rejection."""
    key = reports.artifact_key(evidence.model_name, "canary")
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
        max(1, int(settings.canary.poll_seconds)),
    )
    if answer is None:
        approval.record_answer(entry, "no answer", f"no answer within {timeout} s", settings)
        return "reject"
    approval.record_answer(entry, answer.decision, answer.comment, settings)
    return answer.decision
