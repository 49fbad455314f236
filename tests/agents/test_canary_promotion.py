"""The canary-promotion agent: policy, guardrails within the judge's verdict, hostile models."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_ai import models
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from agentic_mlops.agents.canary_promotion import (
    ACTIONS,
    EVIDENCE_TOOLS,
    PromotionDecision,
    PromotionLimits,
    advise,
    enforce_guardrails,
    policy_decision,
)
from agentic_mlops.decisions import CanaryEvidence, JudgeResult, MetricVerdict
from agentic_mlops.settings import Settings

models.ALLOW_MODEL_REQUESTS = False
LIMITS = PromotionLimits()
SETTINGS = Settings(agent_tracing=False)


def metric(name, classification="pass", critical=False):
    return MetricVerdict(
        name=name, classification=classification, critical=critical, canary_n=300, baseline_n=300
    )


def evidence(
    verdict="pass", failing=(), nodata=(), next_weight=0.5, sequential="continue", holds=0
):
    metrics = [
        metric(
            name,
            "nodata" if name in nodata else "high" if name in failing else "pass",
            critical=name != "latency_ms",
        )
        for name in ("error", "latency_ms", "brier")
    ]
    critical = [m.name for m in metrics if m.critical and m.classification != "pass"]
    return CanaryEvidence(
        model_name="churn",
        champion_version=1,
        challenger_version=2,
        weight=0.25,
        next_weight=next_weight,
        sequential_outcome=sequential,
        holds=holds,
        judge=JudgeResult(
            verdict=verdict,
            score=100.0 if verdict == "pass" else 60.0,
            critical_failures=critical,
            metrics=metrics,
        ),
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (evidence(), "increase_traffic"),
        (evidence(next_weight=None), "hold"),
        (evidence(next_weight=None, holds=2), "ask_human"),
        (evidence(next_weight=None, sequential="promote"), "promote"),
        (evidence(sequential="promote"), "promote"),
        (evidence("fail", failing=["error"]), "rollback"),
        (evidence(sequential="rollback"), "rollback"),
        (evidence("marginal", failing=["latency_ms"]), "ask_human"),
        (evidence("fail", nodata=["brier"]), "hold"),
        (evidence("fail", nodata=["brier"], holds=2), "rollback"),
    ],
    ids=[
        "pass",
        "last-step-unproven",
        "last-step-held",
        "last-step-proven",
        "sequential-pass",
        "critical-fail",
        "sequential-harm",
        "marginal",
        "no-data",
        "no-data-after-holds",
    ],
)
def test_policy_decisions(case, expected):
    assert policy_decision(case, LIMITS).action == expected


def test_the_agent_path_equals_the_policy():
    case = evidence()
    outcome = advise(case, SETTINGS)
    assert outcome.decision == policy_decision(case, LIMITS) and outcome.overridden_by is None


def test_test_model_wiring_yields_a_guarded_decision():
    outcome = advise(evidence("fail", failing=["error"]), SETTINGS, model=TestModel())
    assert outcome.decision.action in ACTIONS
    assert outcome.decision.action not in ("promote", "increase_traffic")


def scripted(output):
    """A fake LLM: calls every tool, then answers `output`, citing every tool unless it says."""
    output = {"evidence_used": ["judge", "sequential", "traffic"], **output}

    def respond(messages, info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart(name, {}) for name in EVIDENCE_TOOLS])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, output)])

    return FunctionModel(respond, model_name="scripted-llm")


PROMOTE = {"action": "promote", "confidence": 0.99, "rationale": "ship it"}


def test_an_llm_can_never_promote_a_canary_that_failed_a_critical_metric():
    outcome = advise(evidence("fail", failing=["error"]), SETTINGS, model=scripted(PROMOTE))
    assert outcome.decision.action == "rollback" and "not allowed" in outcome.overridden_by


def test_a_marginal_analysis_goes_to_a_person_whatever_the_llm_says():
    outcome = advise(
        evidence("marginal", failing=["latency_ms"]), SETTINGS, model=scripted(PROMOTE)
    )
    assert outcome.decision.action == "ask_human"


def test_missing_data_is_never_promoted():
    outcome = advise(evidence("fail", nodata=["brier"]), SETTINGS, model=scripted(PROMOTE))
    assert outcome.decision.action == "ask_human"


def test_low_confidence_and_forbidden_actions():
    shy = scripted({"action": "rollback", "confidence": 0.3, "rationale": "hmm"})
    assert advise(evidence(), SETTINGS, model=shy).decision.action == "ask_human"
    limited = Settings(
        agent_tracing=False, canary_allowed_actions=["hold", "rollback", "ask_human"]
    )
    outcome = advise(evidence(next_weight=None), limited, model=scripted(PROMOTE))
    assert outcome.decision.action in limited.canary.allowed_actions


def test_a_broken_model_falls_back_to_the_policy():
    def broken(messages, info):
        raise RuntimeError("provider down")

    case = evidence("fail", failing=["error"])
    outcome = advise(case, SETTINGS, model=FunctionModel(broken, model_name="llm"))
    assert outcome.decision.action == "rollback"


verdicts = st.sampled_from(["pass", "marginal", "fail"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    verdict=verdicts,
    failing=st.lists(st.sampled_from(["error", "latency_ms", "brier"]), unique=True),
    nodata=st.lists(st.sampled_from(["error", "latency_ms", "brier"]), unique=True),
    sequential=st.sampled_from(["continue", "promote", "rollback"]),
    action=st.sampled_from(ACTIONS),
    confidence=st.floats(0, 1),
)
def test_no_decision_advances_a_canary_past_a_judge_that_did_not_pass(
    verdict, failing, nodata, sequential, action, confidence
):
    case = evidence(
        verdict,
        failing=[f for f in failing if f not in nodata],
        nodata=nodata,
        sequential=sequential,
    )
    decision = PromotionDecision(action=action, confidence=confidence, rationale="fuzz")
    guarded, _ = enforce_guardrails(decision, case, LIMITS)
    assert guarded.action in ACTIONS
    if verdict != "pass" or case.judge.critical_failures or sequential == "rollback":
        assert guarded.action not in ("promote", "increase_traffic")
    if sequential != "promote":
        assert guarded.action != "promote"


def test_an_llm_cannot_promote_on_the_fixed_judge_alone():
    outcome = advise(evidence(next_weight=None), SETTINGS, model=scripted(PROMOTE))
    assert outcome.decision.action == "hold" and "non-inferiority" in outcome.overridden_by


INCREASE = {"action": "increase_traffic", "confidence": 0.99, "rationale": "looks fine"}


def test_increase_traffic_at_the_last_step_needs_the_sequential_tests_non_inferiority():
    outcome = advise(evidence(next_weight=None), SETTINGS, model=scripted(INCREASE))
    assert outcome.decision.action == "hold"
    assert "non-inferiority" in outcome.overridden_by


def test_increase_traffic_at_the_last_step_needs_the_promotion_confidence():
    shy = scripted({**INCREASE, "confidence": 0.3})
    proven = evidence(next_weight=None, sequential="promote")
    outcome = advise(proven, SETTINGS, model=shy)
    assert outcome.decision.action == "ask_human" and "below" in outcome.overridden_by


def test_increase_traffic_at_the_last_step_that_passes_the_rules_stands_as_a_promotion():
    proven = evidence(next_weight=None, sequential="promote")
    outcome = advise(proven, SETTINGS, model=scripted(INCREASE))
    assert outcome.decision.action == "promote"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    last=st.booleans(),
    sequential=st.sampled_from(["continue", "promote", "rollback"]),
    holds=st.integers(0, 3),
    action=st.sampled_from(["promote", "increase_traffic"]),
    confidence=st.floats(0, 1),
)
def test_every_advance_to_full_traffic_meets_the_promotion_rules(
    last, sequential, holds, action, confidence
):
    case = evidence(next_weight=None if last else 0.5, sequential=sequential, holds=holds)
    decision = PromotionDecision(action=action, confidence=confidence, rationale="fuzz")
    guarded, _ = enforce_guardrails(decision, case, LIMITS)
    to_full = guarded.action == "promote" or (guarded.action == "increase_traffic" and last)
    if to_full:
        assert sequential == "promote" and confidence >= LIMITS.min_confidence


@pytest.mark.parametrize("action", ["promote", "increase_traffic"])
def test_an_advance_against_shown_harm_rolls_back_rather_than_holds(action):
    harmed = evidence(next_weight=None, sequential="rollback")
    outcome = advise(harmed, SETTINGS, model=scripted({**PROMOTE, "action": action}))
    assert outcome.decision.action == "rollback"
