"""A retraining's steps on their own: what asked for it, and the run's caps on the advice."""

import pytest

from agentic_mlops.agents.tuning_advisor import advise
from agentic_mlops.decisions import AdvisorEvidence, SegmentCoverage
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, retraining
from agentic_mlops.tasks.batches import DataError
from tests.conftest import triage_record

SEGMENTS = [SegmentCoverage(name="payment_method=crypto", training_share=0.01, recent_share=0.3)]


def evidence(settings: Settings) -> AdvisorEvidence:
    return AdvisorEvidence(model_name=settings.model_name, past_runs=[], segments=SEGMENTS)


def test_the_runs_caps_bound_the_advised_search_and_force_synthesis(home):
    own = advise(evidence(home), home).decision
    capped = retraining.advise_search(advise, evidence(home), home, 1, 5.0, True).decision

    assert own.space.max_trials > 1 and own.space.time_budget_seconds > 5
    assert capped.space.max_trials == 1 and capped.space.time_budget_seconds == 5
    assert capped.space.families == own.space.families
    assert capped.synthesize and capped.segments == ["payment_method=crypto"]


def test_without_caps_the_advice_stands_and_synthesis_can_be_switched_off(home):
    own = advise(evidence(home), home).decision
    unswitched = retraining.advise_search(advise, evidence(home), home, None, None, None)
    switched_off = retraining.advise_search(advise, evidence(home), home, None, None, False)

    assert unswitched.decision == own
    assert not switched_off.decision.synthesize and switched_off.decision.segments == []


def test_the_triage_decision_that_asked_is_read_and_an_unknown_one_refused(home):
    entry = ledger.LedgerEntry(
        id="triage-asking",
        created_at=ledger.now(),
        decision_point="drift_triage",
        model_name=home.model_name,
        model_version=1,
        inputs_digest="x",
        action="retrain",
        severity="high",
        confidence=0.9,
        rationale="performance dropped",
        evidence=triage_record(used=["performance"], drifted_features=["tenure"]),
        agent_model="policy",
    )
    ledger.record_decision(entry, home)

    triage, recent = retraining.read_request("triage-asking", None, home)
    assert recent is None
    assert triage.drifted_features == ["tenure"] and triage.performance_dropped
    assert retraining.read_request(None, None, home) == (None, None)
    with pytest.raises(DataError, match="no-such-decision"):
        retraining.read_request("no-such-decision", None, home)
    step = entry.model_copy(update={"id": "a-canary-step", "decision_point": "canary_promotion"})
    ledger.record_decision(step, home)
    with pytest.raises(DataError, match="is a canary_promotion, not a drift triage"):
        retraining.read_request("a-canary-step", None, home)
    untyped = entry.model_copy(update={"id": "untyped", "evidence": {"used": ["performance"]}})
    ledger.record_decision(untyped, home)
    with pytest.raises(DataError, match="'untyped' holds no triage evidence"):
        retraining.read_request("untyped", None, home)
