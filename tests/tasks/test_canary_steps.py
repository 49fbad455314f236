"""The canary rollout as a state machine, driven decision by decision without any server, and
a step read back from the ledger in the shape the flow returns."""

import pytest
from prefect import flow

from agentic_mlops.agents.promotion_policy import PromotionDecision
from agentic_mlops.decisions import CanaryEvidence, JudgeResult, MetricVerdict, Outcome
from agentic_mlops.tasks import approval, ledger
from agentic_mlops.tasks.canary_steps import (
    MAX_EXTRA_HOLDS,
    PASSED,
    CanaryState,
    CanaryStep,
    StepDecision,
    next_step,
    record_decision,
    valid_steps,
)

STEPS = [5, 25, 50, 100]


def decide(state, action, answer=None, rationale="because"):
    return next_step(state, StepDecision(action=action, answer=answer, rationale=rationale))


def at_last_step():
    state = CanaryState.start(STEPS)
    for _ in range(2):
        state = decide(state, "increase_traffic")
    assert state.weight == 0.5 and state.next_weight is None
    return state


def test_increase_traffic_walks_the_weights_and_opens_a_new_window_each_time():
    state = CanaryState.start(STEPS)
    assert (state.weight, state.next_weight, state.new_step) == (0.05, 0.25, True)
    state = decide(state, "hold")
    seen = []
    while state.next_weight is not None:
        state = decide(state, "increase_traffic")
        seen.append((state.weight, state.holds, state.new_step, state.taken))
    assert seen == [(0.25, 0, True, "increase_traffic"), (0.5, 0, True, "increase_traffic")]
    assert not state.finished


def test_increase_traffic_at_the_last_step_holds_instead_of_promoting():
    state = decide(at_last_step(), "increase_traffic")
    assert state.taken == "hold" and state.weight == 0.5 and not state.finished
    assert state.holds == 1 and state.new_step is False


@pytest.mark.parametrize("moves", [0, 1, 2])
def test_promote_ends_the_rollout_promoted_from_any_step(moves):
    state = CanaryState.start(STEPS)
    for _ in range(moves):
        state = decide(state, "increase_traffic")
    state = decide(state, "promote")
    assert (state.outcome, state.reason, state.taken) == ("promoted", PASSED, "promote")


def test_rollback_ends_the_rollout_with_the_decision_s_rationale():
    state = decide(CanaryState.start(STEPS), "rollback", rationale="errors doubled")
    assert (state.outcome, state.reason, state.taken) == (
        "rolled_back",
        "errors doubled",
        "rollback",
    )


def test_a_held_step_keeps_its_window_until_the_hold_limit_rolls_back():
    state = CanaryState.start(STEPS)
    limit = state.max_holds + MAX_EXTRA_HOLDS
    assert state.hold_limit == limit == 4
    for held in range(1, limit + 1):
        state = decide(state, "hold")
        assert (state.holds, state.new_step, state.finished) == (held, False, False)
    state = decide(state, "hold")
    assert (
        state.outcome == "rolled_back"
        and state.reason == f"held {limit + 1} times without a verdict"
    )
    assert state.taken == "hold"


def test_a_new_step_starts_with_no_holds():
    state = decide(decide(CanaryState.start(STEPS), "hold"), "hold")
    state = decide(state, "increase_traffic")
    assert (state.weight, state.holds, state.new_step) == (0.25, 0, True)


@pytest.mark.parametrize(
    ("answer", "taken", "weight", "outcome"),
    [
        ("approve", "increase_traffic", 0.25, None),
        ("extend", "hold", 0.05, None),
        ("reject", "rollback", 0.05, "rolled_back"),
    ],
)
def test_a_person_s_answer_decides_an_ask_human_step(answer, taken, weight, outcome):
    state = decide(CanaryState.start(STEPS), "ask_human", answer=answer)
    assert (state.taken, state.weight, state.outcome) == (taken, weight, outcome)


def test_a_person_s_approval_at_the_last_step_promotes():
    state = decide(at_last_step(), "ask_human", answer="approve")
    assert (state.outcome, state.taken) == ("promoted", "promote")


def test_ask_human_without_an_answer_and_a_decision_after_the_end_are_refused():
    with pytest.raises(ValueError, match="needs a person's answer"):
        decide(CanaryState.start(STEPS), "ask_human")
    ended = decide(CanaryState.start(STEPS), "rollback")
    with pytest.raises(ValueError, match="has ended"):
        decide(ended, "promote")


def test_the_state_is_frozen_and_next_step_leaves_it_unchanged():
    state = CanaryState.start(STEPS)
    decide(state, "increase_traffic")
    assert state.index == 0 and state.taken is None
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        state.index = 1


def test_a_rollout_straight_to_full_traffic_has_nothing_to_analyse():
    state = CanaryState.start([100])
    assert state.finished and state.outcome == "promoted"


@pytest.mark.parametrize(
    ("steps", "valid"),
    [
        ([5, 25, 50, 100], True),
        ([100], True),
        ([], False),
        ([5, 50], False),
        ([0, 100], False),
        ([50, 25, 100], False),
    ],
)
def test_steps_must_rise_and_end_at_full_traffic(steps, valid):
    assert valid_steps(steps) is valid


def evidence(next_weight=None):
    judge = JudgeResult(
        verdict="marginal",
        score=60.0,
        critical_failures=[],
        metrics=[MetricVerdict(name="error", classification="pass", critical=True)],
    )
    return CanaryEvidence(
        model_name="churn",
        champion_version=1,
        challenger_version=2,
        weight=0.5,
        next_weight=next_weight,
        judge=judge,
        sequential_outcome="continue",
    )


def canary_entry(action, outcome=None, next_weight=None):
    payload = evidence(next_weight).model_dump(mode="json")
    return ledger.LedgerEntry(
        id="canary-1",
        created_at=ledger.now(),
        decision_point="canary_promotion",
        model_name="churn",
        model_version=2,
        inputs_digest=ledger.digest(payload),
        action=action,
        confidence=0.6,
        rationale="marginal",
        evidence={"used": ["judge"], **payload},
        agent_model="policy",
        outcome=outcome,
    )


@pytest.mark.parametrize(
    ("action", "outcome", "next_weight", "taken"),
    [
        ("increase_traffic", None, 0.75, "increase_traffic"),
        ("increase_traffic", None, None, "hold"),
        ("ask_human", None, None, "ask_human"),
        ("ask_human", {"human": "approve"}, None, "promote"),
        ("ask_human", {"human": "no answer"}, 0.75, "rollback"),
        (
            "promote",
            {"approval_mode": "all", "action": "ask_human", "human": "extend"},
            None,
            "hold",
        ),
    ],
)
def test_a_step_read_from_the_ledger_says_what_the_rollout_did(action, outcome, next_weight, taken):
    step = CanaryStep.from_entry(canary_entry(action, outcome, next_weight))
    assert (step.action, step.agent_action) == (taken, action)
    assert step.judge_verdict == "marginal" and step.metrics[0]["name"] == "error"
    assert step.human_answer == (outcome or {}).get("human")


def test_approval_mode_none_turns_ask_human_into_a_recorded_rollback(home):
    settings = home.model_copy(update={"approval_mode": "none"})
    asked = Outcome[PromotionDecision](
        decision=PromotionDecision(action="ask_human", confidence=0.6, rationale="marginal"),
        agent_model="policy",
    )

    @flow
    def gate() -> tuple[str, str]:
        entry = record_decision(evidence(), asked, settings)
        return approval.canary_gate("ask_human", evidence(), entry, settings), entry.id

    action, entry_id = gate()
    step = CanaryStep.recorded(entry_id, settings)
    assert action == "rollback" and (step.action, step.agent_action) == ("rollback", "ask_human")
    assert ledger.get_decision(entry_id, settings).outcome == {
        "approval_mode": "none",
        "action": "rollback",
    }
