"""What code enforces at a canary step: the promotion limits, the closed decision, the policy
and the guardrails, as pure functions of the evidence.

`policy_decision` is the deterministic promotion rule (the default model and every fallback);
`enforce_guardrails` keeps any decision within the judge's verdict: nothing gets full traffic
(`promote`, or `increase_traffic` at the last step) without a passing analysis, every critical
metric passing and the sequential test's non-inferiority; a marginal or inconclusive analysis
and a low-confidence decision go to a person.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field

from agentic_mlops.decisions import CanaryEvidence, PromotionAction, advances_to_full
from agentic_mlops.settings import PromotionLimits

Action = PromotionAction
ACTIONS: tuple[str, ...] = get_args(Action)
EvidenceRef = Literal["judge", "sequential", "traffic"]


class PromotionDecision(BaseModel):
    """What happens to the canary next."""

    action: Action = Field(
        description="promote: the canary becomes champion at full traffic; increase_traffic: "
        "go to the next step's weight; hold: stay at this weight and analyse again; rollback: "
        "all traffic back to the champion; ask_human: a person decides."
    )
    confidence: float = Field(ge=0, le=1, description="Confidence in the action, 0 to 1.")
    rationale: str = Field(max_length=1_000, description="Two or three sentences of why.")
    evidence_used: list[EvidenceRef] = Field(
        default_factory=list, description="Which tools' results the decision rests on."
    )


def policy_decision(evidence: CanaryEvidence, limits: PromotionLimits) -> PromotionDecision:
    """The deterministic promotion rule, used as the default model and as every fallback.

    In order: harm shown (judge fail on real data, or the sequential test) rolls back; a
    step without enough data holds, then rolls back after `max_holds`; a marginal analysis asks
    a person; a pass promotes once the sequential test shows non-inferiority (its false
    promotion rate is bounded, the fixed judge's is not), holds at the last step while it has
    not, then asks a person, and otherwise increases traffic.
    """
    judge = evidence.judge

    def decision(action, confidence, rationale, used):
        return PromotionDecision(
            action=action, confidence=confidence, rationale=rationale, evidence_used=used
        )

    if evidence.sequential_outcome == "rollback":
        return decision(
            "rollback",
            0.95,
            f"The sequential test shows the canary is worse: {evidence.sequential_reason}",
            ["sequential", "judge"],
        )
    if judge.verdict == "fail" and judge.only_missing_data():
        if evidence.holds < evidence.max_holds:
            return decision(
                "hold",
                0.8,
                "Too few observations to judge the canary yet; "
                "staying at this weight to collect more.",
                ["judge", "traffic"],
            )
        return decision(
            "rollback",
            0.8,
            f"Still too few observations after {evidence.holds} holds; failing closed.",
            ["judge", "traffic"],
        )
    if judge.verdict == "fail":
        failed = ", ".join(judge.critical_failures) or "the overall score"
        return decision(
            "rollback",
            0.9,
            f"The analysis failed ({failed}; score {judge.score:.0f}): {judge.reason}",
            ["judge"],
        )
    if judge.verdict == "marginal":
        return decision(
            "ask_human",
            0.5,
            f"The analysis is marginal (score {judge.score:.0f}): {judge.reason}",
            ["judge"],
        )
    if evidence.sequential_outcome == "promote":
        return decision(
            "promote",
            0.9,
            f"The analysis passed (score {judge.score:.0f}) and the "
            "sequential test shows non-inferiority on every critical metric.",
            ["judge", "sequential", "traffic"],
        )
    if evidence.next_weight is None:
        if evidence.holds < evidence.max_holds:
            return decision(
                "hold",
                0.8,
                "The last step passed the analysis, but "
                "non-inferiority is not shown yet; collecting more before 100%.",
                ["judge", "sequential", "traffic"],
            )
        return decision(
            "ask_human",
            0.6,
            "The analysis passed, but the sequential test has not "
            f"shown non-inferiority after {evidence.holds} holds: a person decides "
            "whether to promote.",
            ["judge", "sequential", "traffic"],
        )
    return decision(
        "increase_traffic",
        0.85,
        f"The analysis passed (score {judge.score:.0f}) "
        f"at {evidence.weight:.0%}; moving to {evidence.next_weight:.0%}.",
        ["judge", "traffic"],
    )


def enforce_guardrails(
    decision: PromotionDecision, evidence: CanaryEvidence, limits: PromotionLimits
) -> tuple[PromotionDecision, str | None]:
    """Keep any decision within the judge's verdict; return what stands and why it changed.

    Every advance to full traffic (`promote`, or `increase_traffic` at the last step) is judged
    as a promotion and, when it passes, stands as `promote`:
    - promote or increase_traffic without a passing analysis (every critical metric passing,
      no harm shown by the sequential test) becomes rollback when the analysis failed on real
      data or harm was shown, and ask_human otherwise;
    - a promotion after a passing analysis but without the sequential test's non-inferiority
      becomes hold (then ask_human): only the sequential test bounds false promotions;
    - an action outside the allowed set is replaced by the policy's decision;
    - a promotion or rollback below the minimum confidence goes to a person.
    """
    judge = evidence.judge
    to_full = advances_to_full(decision.action, evidence)
    named = decision.action if decision.action == "promote" else "increase_traffic to 100%"
    if (
        to_full
        and evidence.sequential_outcome == "continue"
        and (judge.verdict == "pass" and not judge.critical_failures)
    ):
        action = "hold" if evidence.holds < evidence.max_holds else "ask_human"
        return decision.model_copy(update={"action": action}), (
            f"{named} needs the sequential test's non-inferiority (or a person): {action}"
        )
    advancing = decision.action in ("promote", "increase_traffic")
    if advancing and (
        judge.verdict != "pass"
        or judge.critical_failures
        or evidence.sequential_outcome == "rollback"
    ):
        harmful = evidence.sequential_outcome == "rollback" or (
            judge.verdict == "fail" and not judge.only_missing_data()
        )
        action = "rollback" if harmful else "ask_human"
        return decision.model_copy(update={"action": action}), (
            f"{decision.action} is not allowed when the analysis is {judge.verdict}: {action}"
        )
    if to_full:
        decision = decision.model_copy(update={"action": "promote"})
    if decision.action not in limits.allowed_actions:
        policy = policy_decision(evidence, limits)
        if policy.action not in limits.allowed_actions:
            policy = policy.model_copy(update={"action": "ask_human"})
        return policy, f"action {decision.action!r} is not allowed: replaced by the policy's"
    if decision.action in ("promote", "rollback") and decision.confidence < limits.min_confidence:
        return decision.model_copy(update={"action": "ask_human"}), (
            f"{named if to_full else decision.action} at confidence {decision.confidence:.2f} "
            f"is below {limits.min_confidence:.2f}: a person decides"
        )
    return decision, None
