"""The tuning advisor: policy proposals, validation, ceilings, and models that break them."""

import pytest
from pydantic_ai import models
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentic_mlops.agents.tuning_advisor import (
    EVIDENCE_TOOLS,
    advise,
    enforce_guardrails,
    policy_proposal,
)
from agentic_mlops.decisions import AdvisorEvidence, PastRun, SegmentCoverage, TriageContext
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.models import FAMILIES, PARAMETER_BOUNDS

models.ALLOW_MODEL_REQUESTS = False
SETTINGS = Settings(agent_tracing=False, tune_max_trials=12, tune_max_trials_ceiling=20)
LIMITS = SETTINGS.tune


def history(n_per_family=4) -> list[PastRun]:
    """Gradient boosting did best around learning rate 0.1; forests trailed by far."""
    runs = []
    for i in range(n_per_family):
        runs.append(
            PastRun(
                family="gradient_boosting",
                params={"learning_rate": 0.08 + 0.01 * i, "max_iter": 100 + 10 * i},
                score=0.85 - 0.002 * i,
                seconds=2.0,
                kind="tuning-trial",
            )
        )
        runs.append(
            PastRun(
                family="random_forest",
                params={"n_estimators": 100, "max_depth": 5 + i},
                score=0.78 - 0.01 * i,
                seconds=4.0,
                kind="tuning-trial",
            )
        )
    return runs


def test_without_history_every_family_is_searched_over_the_defaults():
    proposal = policy_proposal(AdvisorEvidence(model_name="churn"), LIMITS)
    assert set(proposal.space.families) == set(FAMILIES)
    assert all(ranges == {} for ranges in proposal.space.families.values())
    assert proposal.space.max_trials == 12 and not proposal.synthesize


def test_a_stable_optimum_narrows_around_the_best_past_runs():
    proposal = policy_proposal(AdvisorEvidence(model_name="churn", past_runs=history()), LIMITS)
    assert set(proposal.space.families) == {"gradient_boosting"}  # forests trailed by 0.07
    rate = proposal.space.families["gradient_boosting"]["learning_rate"]
    assert 0.05 < rate.low <= 0.08 and 0.10 <= rate.high < 0.16
    assert proposal.space.max_trials == 6  # half the default: the region is known
    # the time budget follows the median past trial (2 s), not the 120 s default
    assert proposal.space.time_budget_seconds == 60.0


def test_a_moved_optimum_widens_the_search_to_every_family():
    triage = TriageContext(action="retrain", severity="high", performance_dropped=True)
    proposal = policy_proposal(
        AdvisorEvidence(model_name="churn", past_runs=history(), triage=triage), LIMITS
    )
    stable = policy_proposal(AdvisorEvidence(model_name="churn", past_runs=history()), LIMITS)
    assert set(proposal.space.families) == set(FAMILIES)
    wide = proposal.space.families["gradient_boosting"]["learning_rate"]
    narrow = stable.space.families["gradient_boosting"]["learning_rate"]
    assert wide.low < narrow.low and wide.high > narrow.high
    assert proposal.space.max_trials == 12


def test_synthesis_is_asked_for_when_drifted_segments_are_under_covered():
    segment = SegmentCoverage(
        name="payment_method=mailed_check", training_share=0.03, recent_share=0.3
    )
    triage = TriageContext(action="retrain", drifted_features=["payment_method"])
    evidence = AdvisorEvidence(model_name="churn", triage=triage, segments=[segment])
    proposal = policy_proposal(evidence, LIMITS)
    assert proposal.synthesize and proposal.segments == ["payment_method=mailed_check"]
    no_triage = policy_proposal(evidence.model_copy(update={"triage": None}), LIMITS)
    assert not no_triage.synthesize
    forced = policy_proposal(
        evidence.model_copy(update={"triage": None}),
        LIMITS.model_copy(update={"synthesis_enabled": True}),
    )
    assert forced.synthesize


def test_the_policy_runs_through_the_agent_and_calls_every_tool():
    evidence = AdvisorEvidence(model_name="churn", past_runs=history())
    outcome = advise(evidence, SETTINGS)
    assert outcome.agent_model == "policy" and outcome.overridden_by is None
    assert outcome.decision == policy_proposal(evidence, LIMITS)


def scripted(proposal: dict):
    """A fake LLM that reads every tool, then proposes `proposal` every time it is asked."""

    def respond(messages, info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart(name, {}) for name in EVIDENCE_TOOLS])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, proposal)])

    return FunctionModel(respond, model_name="scripted-llm")


def space(families, trials=8, seconds=60.0):
    return {"families": families, "max_trials": trials, "time_budget_seconds": seconds}


def test_a_valid_model_proposal_stands():
    wanted = space({"random_forest": {"max_depth": {"low": 3, "high": 9}}})
    outcome = advise(
        AdvisorEvidence(model_name="churn"),
        SETTINGS,
        model=scripted({"space": wanted, "rationale": "forests"}),
    )
    assert outcome.overridden_by is None and outcome.agent_model == "scripted-llm"
    assert set(outcome.decision.space.families) == {"random_forest"}
    assert outcome.decision.space.families["random_forest"]["max_depth"].high == 9


@pytest.mark.parametrize(
    "proposal, why",
    [
        # a range outside the parameter's bounds: rejected by validation, retries exhausted
        (
            {"space": space({"gradient_boosting": {"learning_rate": {"low": 0, "high": 7}}})},
            "model run failed",
        ),
        # a parameter the family does not have
        ({"space": space({"logistic_regression": {"max_depth": {"low": 1, "high": 3}}})}, "failed"),
        # low above high
        ({"space": space({"random_forest": {"max_depth": {"low": 9, "high": 3}}})}, "failed"),
        # more trials than the ceiling
        ({"space": space({"random_forest": {}}, trials=500)}, "failed"),
        # a time budget beyond the ceiling
        ({"space": space({"random_forest": {}}, seconds=10**6)}, "failed"),
        # a segment the evidence does not show
        (
            {"space": space({"random_forest": {}}), "synthesize": True, "segments": ["x=y"]},
            "failed",
        ),
    ],
)
def test_invalid_model_output_is_replaced_by_the_policy(proposal, why):
    evidence = AdvisorEvidence(model_name="churn", past_runs=history())
    outcome = advise(evidence, SETTINGS, model=scripted({**proposal, "rationale": "trust me"}))
    assert outcome.decision == policy_proposal(evidence, LIMITS)
    assert why in outcome.overridden_by
    for family, ranges in outcome.decision.space.families.items():
        for name, span in ranges.items():
            bound = PARAMETER_BOUNDS[family][name]
            assert bound.low <= span.low <= span.high <= bound.high
    assert outcome.decision.space.max_trials <= SETTINGS.tune.max_trials_ceiling


def test_settings_switch_synthesis_on_over_a_model_that_leaves_it_off():
    segment = SegmentCoverage(name="contract=one_year", training_share=0.02, recent_share=0.2)
    evidence = AdvisorEvidence(model_name="churn", segments=[segment])
    settings = SETTINGS.model_copy(update={"synthesis_enabled": True})
    outcome = advise(
        evidence,
        settings,
        model=scripted({"space": space({"random_forest": {}}), "rationale": "x"}),
    )
    assert outcome.decision.synthesize and outcome.decision.segments == ["contract=one_year"]
    assert "settings enable synthesis" in outcome.overridden_by


def test_a_search_too_small_to_find_anything_is_raised_to_the_floors():
    tiny = {
        "space": {"families": {"random_forest": {}}, "max_trials": 1, "time_budget_seconds": 0.01},
        "rationale": "quick",
    }
    outcome = advise(AdvisorEvidence(model_name="churn"), SETTINGS, model=scripted(tiny))
    limits = SETTINGS.tune
    space = outcome.decision.space
    assert (
        space.max_trials == limits.min_trials
        and space.time_budget_seconds == limits.min_time_budget_seconds
    )
    assert "below the floor" in outcome.overridden_by
    assert outcome.attribution.decided_by == "guardrail"
    assert outcome.attribution.model_decision["space"]["max_trials"] == 1


def test_the_policys_proposal_is_within_its_own_floors():
    limits = SETTINGS.tune
    proposal = policy_proposal(AdvisorEvidence(model_name="churn"), limits)
    assert enforce_guardrails(proposal, AdvisorEvidence(model_name="churn"), limits)[1] is None
