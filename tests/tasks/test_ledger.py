import pytest

from agentic_mlops.tasks import ledger


def entry(flow_run_id="run-1", action="retrain", model_name="churn", inputs=None):
    inputs_digest = ledger.digest(inputs or {"batch": flow_run_id})
    return ledger.LedgerEntry(
        id=ledger.decision_id(flow_run_id, "drift_triage", inputs_digest),
        created_at=ledger.now(),
        decision_point="drift_triage",
        model_name=model_name,
        model_version=1,
        inputs_digest=inputs_digest,
        action=action,
        severity="high",
        confidence=0.8,
        rationale="drift on important features",
        evidence={"drift_share": 0.4, "columns": ["monthly_charges"]},
        agent_model="policy",
        flow_run_id=flow_run_id,
    )


def test_decision_round_trip_and_outcome(home):
    recorded = ledger.record_decision(entry(), home)
    assert recorded.evidence["columns"] == ["monthly_charges"] and recorded.outcome is None
    updated = ledger.record_outcome(recorded.id, {"challenger_beat_champion": True}, home)
    assert updated.outcome == {"challenger_beat_champion": True} and updated.outcome_at


def test_a_retried_flow_records_its_decision_once(home):
    ledger.record_decision(entry(), home)
    ledger.record_decision(entry(action="none"), home)
    decisions = ledger.list_decisions(settings=home)
    assert len(decisions) == 1 and decisions[0].action == "retrain"


def test_filters_by_model_action_and_time(home):
    ledger.record_decision(entry("a", "retrain"), home)
    ledger.record_decision(entry("b", "none"), home)
    ledger.record_decision(entry("c", "retrain", model_name="other"), home)
    assert {d.flow_run_id for d in ledger.list_decisions("churn", settings=home)} == {"a", "b"}
    assert [d.flow_run_id for d in ledger.list_decisions(action="none", settings=home)] == ["b"]
    assert ledger.list_decisions(since="2999-01-01", settings=home) == []


def test_outcome_of_an_unknown_decision_is_an_error(home):
    with pytest.raises(KeyError, match="no decision"):
        ledger.record_outcome("nope", {}, home)


def test_drift_history_keeps_order_and_replaces_a_rechecked_batch(home):
    for index, score in enumerate([0.1, 0.2, 0.3]):
        ledger.record_drift(
            ledger.DriftObservation(
                model_name="churn",
                batch_id=f"b{index}",
                created_at=f"2026-01-0{index + 1}",
                drift_score=score,
                drift_share=score,
                dataset_drift=False,
                sequential_alarm=False,
                detector_state={"sum": score},
            ),
            home,
        )
    ledger.record_drift(
        ledger.DriftObservation(
            model_name="churn",
            batch_id="b2",
            created_at="2026-01-03",
            drift_score=0.9,
            drift_share=0.9,
            dataset_drift=True,
            sequential_alarm=True,
            detector_state={"sum": 0.9},
        ),
        home,
    )
    history = ledger.drift_history("churn", settings=home)
    assert [h.batch_id for h in history] == ["b0", "b1", "b2"]
    assert history[-1].drift_score == 0.9 and history[-1].detector_state == {"sum": 0.9}
    assert ledger.drift_history("other", settings=home) == []


def test_attribution_round_trips(home):
    attribution = {"decided_by": "guardrail", "model_action": "none", "policy_action": "escalate"}
    recorded = ledger.record_decision(entry().model_copy(update={"attribution": attribution}), home)
    assert ledger.get_decision(recorded.id, home).attribution == attribution


def test_a_ledger_written_before_attribution_gains_the_column_and_keeps_its_rows(home):
    import sqlite3

    old_schema = ledger.SCHEMA.replace(",\n    attribution TEXT", "")
    assert "attribution" not in old_schema
    with sqlite3.connect(ledger.store_path(home)) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO decisions VALUES "
            "('old', '2026-01-01T00:00:00+00:00', 'drift_triage', 'churn', 1, 'd', 'none', "
            "NULL, 0.9, 'r', '{}', 'policy', NULL, NULL, NULL, NULL)"
        )
    assert ledger.get_decision("old", home).attribution is None
    recorded = ledger.record_decision(entry().model_copy(update={"attribution": {"a": 1}}), home)
    assert recorded.attribution == {"a": 1}
    assert {e.id for e in ledger.list_decisions(settings=home)} == {"old", recorded.id}
