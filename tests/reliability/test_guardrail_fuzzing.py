"""Guardrail fuzzing: arbitrary and adversarial model outputs through each whole agent.

tests/agents/ checks the guardrail functions with chosen and generated decisions. Here
hypothesis writes the model itself: a `FunctionModel` plays back a generated script of
responses (free text, calls to real, unknown and forbidden tools with arbitrary arguments,
well-formed, malformed and out-of-range decisions, several at once, never stopping), on
generated evidence under generated limits, through `triage` and `advise` end to end. Whatever
the model does, the decision that stands is within the allowed set and within the evidence,
both ways: no retrain without labels or on a broken batch, no rollback unless the previous
champion scores at least as well on the labelled rows, no `none` or `monitor` where the
evidence demands action; no canary promoted or given traffic past a judge that did not pass,
and no advance to full traffic (`promote`, or `increase_traffic` at the last step) without
the promotion rules, at any step.

Half the generated models read the evidence and answer with a well-formed decision, so the
guardrails judge a model's own decision and not only the policy's fallback. The guardrail
functions themselves are fuzzed apart, with many more decisions than whole runs could afford.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_ai import models

from agentic_mlops.agents import canary_promotion as canary
from agentic_mlops.agents import drift_triage as drift
from agentic_mlops.agents import triage_policy
from agentic_mlops.decisions import (
    ColumnEvidence,
    JudgeResult,
    MetricVerdict,
    PerformanceEvidence,
    QualityEvidence,
)
from agentic_mlops.settings import Settings
from tests.reliability.fuzzed_models import (
    exhaustive,
    grounded_scripts,
    json_values,
    played_back,
    quick,
    scripts,
    thorough,
)

models.ALLOW_MODEL_REQUESTS = False
COLUMNS = ("tenure_months", "contract", "monthly_charges", "total_charges", "num_products")
METRICS = ("error", "latency_ms", "brier")
confidences = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 0.5, 0.69, 0.7, 0.99, 1, 1.01, -0.01])
    | st.text(max_size=4)
)


def decisions(actions: tuple[str, ...], refs: tuple[str, ...], extra: dict) -> st.SearchStrategy:
    """What a model may put into the output tool: decisions well-formed or not, and junk."""
    shaped = st.fixed_dictionaries(
        {"action": st.sampled_from(actions) | st.text(max_size=12), "confidence": confidences},
        optional={
            "rationale": st.text(max_size=1_200) | json_values,
            "evidence_used": st.lists(st.sampled_from(refs) | st.text(max_size=8), max_size=4),
            **extra,
        },
    )
    return shaped | st.dictionaries(st.text(max_size=10), json_values, max_size=5)


column_evidence = st.builds(
    ColumnEvidence,
    drifted=st.booleans(),
    test=st.sampled_from(["wasserstein", "jensenshannon", "ks", "chisquare"]),
    score=st.floats(0, 5),
    threshold=st.floats(0.01, 1),
)
calibration = st.sampled_from([{}]) | st.fixed_dictionaries(
    {
        "observed_rate": st.floats(0, 1),
        "predicted_rate": st.floats(0, 1),
        "calibration_z": st.floats(-10, 10),
    }
)
"""Calibration figures come together (the drift check computes them together) or not at all."""
triage_evidence = st.builds(
    drift.TriageEvidence,
    model_name=st.just("churn"),
    champion_version=st.none() | st.integers(1, 5),
    previous_champion_version=st.none() | st.integers(1, 5),
    quality=st.builds(
        QualityEvidence,
        passed=st.booleans(),
        batch_failed=st.booleans(),
        failures=st.lists(st.text(max_size=30), max_size=3),
        failing_row_share=st.floats(0, 1),
    ),
    dataset_drift=st.booleans(),
    drift_share=st.floats(0, 1),
    columns=st.dictionaries(
        st.sampled_from(COLUMNS) | st.text(min_size=1, max_size=12), column_evidence, max_size=6
    ),
    prediction_drifted=st.none() | st.booleans(),
    skipped_columns=st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=2),
    history_scores=st.lists(st.floats(0, 5), max_size=5),
    sequential_alarm=st.booleans(),
    sequential_alarm_columns=st.lists(st.sampled_from(COLUMNS), unique=True, max_size=3),
    feature_importance=st.dictionaries(st.sampled_from(COLUMNS), st.floats(-0.1, 0.5)),
    labels_available=st.booleans(),
    performance=st.none()
    | st.builds(
        lambda calibration, **fields: PerformanceEvidence(**fields, **calibration),
        calibration=calibration,
        reference=st.floats(0.4, 1),
        current=st.floats(0.4, 1),
        rows=st.integers(40, 10_000),
        previous_champion_current=st.none() | st.floats(0.4, 1),
    ),
).map(lambda e: e.model_copy(update={"labels_available": True}) if e.performance else e)
"""Performance figures exist only for labelled batches (see the known gap below for one
labelled batch too small to train on)."""
SEVERITIES = triage_policy.Severity.__args__
drifted_features = st.lists(st.sampled_from(COLUMNS) | st.text(max_size=12), max_size=5)


def triage_decisions(actions: st.SearchStrategy) -> st.SearchStrategy:
    """Decisions that get past the output's schema, their action drawn from `actions`."""
    return st.builds(
        drift.TriageDecision,
        action=actions,
        severity=st.sampled_from(SEVERITIES),
        confidence=st.floats(0, 1),
        drifted_features=drifted_features,
        rationale=st.text(max_size=200),
        evidence_used=st.lists(
            st.sampled_from(drift.EvidenceRef.__args__), min_size=1, unique=True
        ),
    )


junk_triage_scripts = scripts(
    drift.EVIDENCE_TOOLS,
    decisions(
        drift.ACTIONS,
        tuple(drift.EvidenceRef.__args__),
        {
            "severity": st.sampled_from([*SEVERITIES, "critical"]),
            "drifted_features": drifted_features,
        },
    ),
)
triage_limits = st.fixed_dictionaries(
    {
        "triage_allowed_actions": st.lists(st.sampled_from(drift.ACTIONS), unique=True).map(
            lambda chosen: sorted({*chosen, "escalate"})
        ),
        "triage_min_confidence": st.floats(0, 1),
    }
)
triage_cases = triage_limits.flatmap(
    lambda limits: st.tuples(
        grounded_scripts(
            drift.EVIDENCE_TOOLS,
            triage_decisions(
                st.sampled_from(limits["triage_allowed_actions"]) | st.sampled_from(drift.ACTIONS)
            ).map(lambda d: d.model_dump()),
        )
        | junk_triage_scripts,
        st.just(limits),
    )
)
"""A script and the limits it runs under: half the scripts are any model output, half a model
that reads evidence and decides, mostly within the allowed actions (an action outside them is
sent back to the model, and a model that insists is replaced by the policy)."""


def assert_triage_bounded(
    decision: drift.TriageDecision, evidence: drift.TriageEvidence, limits: drift.TriageLimits
) -> None:
    assert decision.action in limits.allowed_actions
    assert set(decision.drifted_features) <= set(evidence.drifted())
    if decision.action == "retrain":
        assert evidence.labels_available and not evidence.quality.batch_failed
    if decision.action == "rollback":
        assert triage_policy.previous_champion_proven(evidence)
    if decision.action in ("retrain", "rollback"):
        assert decision.confidence >= limits.min_confidence
    if triage_policy.demands_action(evidence, limits):
        assert decision.action not in ("none", "monitor")


def check_triage(evidence: drift.TriageEvidence, script, limits: dict) -> None:
    chosen = Settings(agent_tracing=False, **limits)
    outcome = drift.triage(evidence, chosen, model=played_back(script))
    assert_triage_bounded(outcome.decision, evidence, chosen.triage)
    attribution = outcome.attribution
    assert attribution.policy_action in drift.ACTIONS
    assert (attribution.decided_by == "fuzzed-llm") == (
        attribution.answered_by == "fuzzed-llm" and not attribution.overridden_by
    )


@quick
@given(evidence=triage_evidence, case=triage_cases)
def test_no_model_output_takes_the_triage_outside_its_guardrails(evidence, case):
    check_triage(evidence, *case)


@pytest.mark.slow
@thorough
@given(evidence=triage_evidence, case=triage_cases)
def test_no_model_output_takes_the_triage_outside_its_guardrails_thoroughly(evidence, case):
    check_triage(evidence, *case)


def triage_limits_of(limits: dict) -> drift.TriageLimits:
    return Settings(agent_tracing=False, **limits).triage


@quick
@given(
    evidence=triage_evidence,
    decision=triage_decisions(st.sampled_from(drift.ACTIONS)),
    limits=triage_limits,
)
def test_no_decision_stands_outside_the_triage_guardrails(evidence, decision, limits):
    chosen = triage_limits_of(limits)
    guarded, _ = drift.enforce_guardrails(decision, evidence, chosen)
    assert_triage_bounded(guarded, evidence, chosen)


@pytest.mark.slow
@exhaustive
@given(
    evidence=triage_evidence,
    decision=triage_decisions(st.sampled_from(drift.ACTIONS)),
    limits=triage_limits,
)
def test_no_decision_stands_outside_the_triage_guardrails_exhaustively(evidence, decision, limits):
    chosen = triage_limits_of(limits)
    guarded, _ = drift.enforce_guardrails(decision, evidence, chosen)
    assert_triage_bounded(guarded, evidence, chosen)


metric_evidence = st.builds(
    MetricVerdict,
    name=st.sampled_from(METRICS) | st.text(max_size=10),
    classification=st.sampled_from(["pass", "high", "low", "nodata"]),
    critical=st.booleans(),
    effect=st.none() | st.floats(-1, 1),
    canary_n=st.integers(0, 5_000),
    baseline_n=st.integers(0, 5_000),
    reason=st.text(max_size=30),
)
canary_evidence = st.builds(
    canary.CanaryEvidence,
    model_name=st.just("churn"),
    champion_version=st.none() | st.integers(1, 5),
    challenger_version=st.integers(1, 9),
    weight=st.floats(0, 1),
    next_weight=st.sampled_from([None, None, 0.05, 0.25, 0.5]) | st.floats(0, 1),
    judge=st.builds(
        JudgeResult,
        verdict=st.sampled_from(["pass", "marginal", "fail"]),
        score=st.floats(0, 100),
        critical_failures=st.lists(st.sampled_from(METRICS), unique=True, max_size=2),
        metrics=st.lists(metric_evidence, max_size=4),
        reason=st.text(max_size=40),
    ),
    sequential_outcome=st.sampled_from(["continue", "promote", "rollback"]),
    sequential_reason=st.text(max_size=30),
    holds=st.integers(0, 4),
    max_holds=st.integers(0, 3),
)


def canary_decisions(actions: st.SearchStrategy) -> st.SearchStrategy:
    """Decisions that get past the output's schema, their action drawn from `actions`."""
    return st.builds(
        canary.PromotionDecision,
        action=actions,
        confidence=st.floats(0, 1),
        rationale=st.text(max_size=200),
        evidence_used=st.lists(
            st.sampled_from(canary.EvidenceRef.__args__), min_size=1, unique=True
        ),
    )


junk_canary_scripts = scripts(
    canary.EVIDENCE_TOOLS,
    decisions(canary.ACTIONS, tuple(canary.EvidenceRef.__args__), {}),
)
SAFE = ("hold", "rollback", "ask_human")
"""The actions the canary guardrails fall back to; the fuzzed allowed sets keep them."""
canary_limits = st.fixed_dictionaries(
    {
        "canary_allowed_actions": st.lists(
            st.sampled_from(["promote", "increase_traffic"]), unique=True
        ).map(lambda chosen: [*chosen, *SAFE]),
        "canary_min_confidence": st.floats(0, 1),
    }
)

canary_cases = canary_limits.flatmap(
    lambda limits: st.tuples(
        grounded_scripts(
            canary.EVIDENCE_TOOLS,
            canary_decisions(
                st.sampled_from(limits["canary_allowed_actions"]) | st.sampled_from(canary.ACTIONS)
            ).map(lambda d: d.model_dump()),
        )
        | junk_canary_scripts,
        st.just(limits),
    )
)
"""A script and the limits it runs under, as `triage_cases`."""


def assert_canary_bounded(
    decision: canary.PromotionDecision,
    evidence: canary.CanaryEvidence,
    limits: canary.PromotionLimits,
) -> None:
    action, judge = decision.action, evidence.judge
    assert action in limits.allowed_actions
    if judge.verdict != "pass" or judge.critical_failures:
        assert action not in ("promote", "increase_traffic")
    if evidence.sequential_outcome == "rollback":
        assert action not in ("promote", "increase_traffic")
    if canary.advances_to_full(action, evidence):
        assert action == "promote" and evidence.sequential_outcome == "promote"
        assert judge.verdict == "pass" and not judge.critical_failures
        assert decision.confidence >= limits.min_confidence


def check_canary(evidence: canary.CanaryEvidence, script, limits: dict) -> None:
    chosen = Settings(agent_tracing=False, **limits)
    outcome = canary.advise(evidence, chosen, model=played_back(script))
    assert_canary_bounded(outcome.decision, evidence, chosen.canary)


@quick
@given(evidence=canary_evidence, case=canary_cases)
def test_no_model_output_promotes_a_canary_past_its_judge(evidence, case):
    check_canary(evidence, *case)


@pytest.mark.slow
@thorough
@given(evidence=canary_evidence, case=canary_cases)
def test_no_model_output_promotes_a_canary_past_its_judge_thoroughly(evidence, case):
    check_canary(evidence, *case)


def canary_limits_of(limits: dict) -> canary.PromotionLimits:
    return Settings(agent_tracing=False, **limits).canary


@quick
@given(
    evidence=canary_evidence,
    decision=canary_decisions(st.sampled_from(canary.ACTIONS)),
    limits=canary_limits,
)
def test_no_decision_gets_a_canary_past_its_guardrails(evidence, decision, limits):
    chosen = canary_limits_of(limits)
    guarded, _ = canary.enforce_guardrails(decision, evidence, chosen)
    assert_canary_bounded(guarded, evidence, chosen)


@pytest.mark.slow
@exhaustive
@given(
    evidence=canary_evidence,
    decision=canary_decisions(st.sampled_from(canary.ACTIONS)),
    limits=canary_limits,
)
def test_no_decision_gets_a_canary_past_its_guardrails_exhaustively(evidence, decision, limits):
    chosen = canary_limits_of(limits)
    guarded, _ = canary.enforce_guardrails(decision, evidence, chosen)
    assert_canary_bounded(guarded, evidence, chosen)


def test_a_decision_raised_by_the_floors_still_needs_the_confidence_to_act():
    """Found by the guardrail fuzzing: `none` on a miscalibrated labelled batch was raised to
    the policy's `retrain` at 0.75 and stood, though acting needed confidence 1.0."""
    evidence = drift.TriageEvidence(
        model_name="churn",
        champion_version=1,
        quality=QualityEvidence(passed=True, batch_failed=False),
        dataset_drift=False,
        drift_share=0.0,
        columns={},
        labels_available=True,
        performance=PerformanceEvidence(
            reference=0.9,
            current=0.9,
            rows=400,
            observed_rate=0.0,
            predicted_rate=1.0,
            calibration_z=4.0,
        ),
    )
    decision = drift.TriageDecision(
        action="none", severity="none", confidence=0.9, rationale="fine", evidence_used=["quality"]
    )
    for threshold, expected in ((0.5, "retrain"), (1.0, "escalate")):
        limits = drift.TriageLimits(min_confidence=threshold)
        assert triage_policy.demands_action(evidence, limits)
        guarded, reason = drift.enforce_guardrails(decision, evidence, limits)
        assert guarded.action == expected, reason
        assert "raised to retrain" in reason


def test_a_labelled_batch_too_small_to_train_on_is_not_retrained_on():
    evidence = drift.TriageEvidence(
        model_name="churn",
        champion_version=1,
        quality=QualityEvidence(passed=True, batch_failed=False),
        dataset_drift=False,
        drift_share=0.0,
        columns={},
        labels_available=False,
        performance=PerformanceEvidence(reference=0.85, current=0.70, rows=30),
    )
    outcome = drift.triage(evidence, Settings(agent_tracing=False))
    assert outcome.decision.action != "retrain"
