"""Carrying out triage decisions against the real Prefect server and MLflow."""

import datetime as dt
import time

import pytest
from prefect.client.orchestration import get_client
from pydantic import ValidationError

from agentic_mlops.flows.retrain import retrain
from agentic_mlops.flows.train import train
from agentic_mlops.schemas import DecisionSummary
from agentic_mlops.tasks import drift_actions, ledger
from tests.conftest import triage_record


def record(home, action="retrain"):
    return ledger.record_decision(
        ledger.LedgerEntry(
            id=ledger.digest([action, time.time_ns()]),
            created_at=ledger.now(),
            decision_point="drift_triage",
            model_name="churn",
            inputs_digest="x",
            action=action,
            agent_model="policy",
            evidence=triage_record(["column_drift"], ["monthly_charges"]),
        ),
        home,
    )


def events_named(
    name: str, since: dt.datetime, ledger_id: str, timeout: float = 30.0
) -> list[dict]:
    """The events of that name about one ledger entry, waiting until one arrives: other tests
    on the same server emit events of the same name."""
    body = {
        "filter": {
            "event": {"name": [name]},
            "occurred": {"since": since.isoformat(), "until": dt.datetime.now(dt.UTC).isoformat()},
        },
        "limit": 50,
        "order": "DESC",
    }
    deadline = time.monotonic() + timeout
    while True:
        body["filter"]["occurred"]["until"] = (
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        ).isoformat()
        with get_client(sync_client=True) as client:
            events = client.request("POST", "/events/filter", json=body).json()["events"]
        found = [e for e in events if e["payload"].get("ledger_id") == ledger_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_escalation_emits_an_event_an_automation_can_route(home):
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    entry = record(home, "escalate")
    decision = DecisionSummary(
        action="escalate",
        severity="high",
        confidence=0.9,
        rationale="broken data",
        drifted_features=["monthly_charges"],
    )
    said = drift_actions.escalate("churn", "batch-7.parquet", decision, entry.id)
    assert drift_actions.ESCALATED_EVENT in said
    events = events_named(drift_actions.ESCALATED_EVENT, since, entry.id)
    payloads = [e["payload"] for e in events]
    assert payloads and payloads[0]["batch_id"] == "batch-7.parquet"
    assert payloads[0]["drifted_features"] == ["monthly_charges"]


def test_the_result_keeps_only_an_action_the_triage_can_take():
    fields = {"severity": "high", "confidence": 0.9, "rationale": "r", "drifted_features": []}
    assert DecisionSummary(action="rollback", **fields).action == "rollback"
    with pytest.raises(ValidationError):
        DecisionSummary(action="promote", **fields)
    with pytest.raises(ValidationError):
        DecisionSummary(action="retrain", model_action="hold", **fields)


def test_retrain_goes_through_the_deployment_once_per_decision(home):
    deployment_id = retrain.to_deployment(name="retrain").apply()
    try:
        entry = record(home)
        params = {"generate_rows": 500, "seed": 3}
        first = drift_actions.start_retraining(retrain, params, entry.id, home)
        second = drift_actions.start_retraining(retrain, params, entry.id, home)
        assert first["how"] == "deployment" and first["flow_run_id"] == second["flow_run_id"]
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(first["flow_run_id"])
        assert run.deployment_id == deployment_id
        assert run.parameters["generate_rows"] == 500
        stored = ledger.get_decision(entry.id, home)
        assert stored.outcome == {"retrain_flow_run": first["flow_run_id"]}
        other = drift_actions.start_retraining(retrain, params, record(home).id, home)
        assert other["flow_run_id"] != first["flow_run_id"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
    assert not drift_actions.deployment_exists(drift_actions.RETRAIN_DEPLOYMENT)


@pytest.mark.slow
def test_without_a_deployment_retraining_runs_in_process_and_records_the_outcome(home):
    entry = record(home)
    done = drift_actions.start_retraining(
        retrain,
        {
            "generate_rows": 600,
            "triage_ledger_id": entry.id,
            "max_trials": 2,
            "time_budget_seconds": 60,
            "hand_over": "none",
        },
        entry.id,
        home,
    )
    assert done["how"] == "subflow" and done["version"] == 1
    outcome = ledger.get_decision(entry.id, home).outcome
    assert outcome["challenger_version"] == 1 and outcome["champion_version"] is None


def test_a_failed_retraining_is_recorded_not_raised(home, tmp_path):
    entry = record(home)
    done = drift_actions.start_retraining(
        retrain, {"data_path": str(tmp_path / "absent.csv")}, entry.id, home
    )
    assert "failed" in done["summary"]
    assert "no such file" in ledger.get_decision(entry.id, home).outcome["retrain_failed"]


def test_rollback_without_a_previous_champion_moves_nothing_and_says_so(home):
    from agentic_mlops.tasks.training import Hyperparameters

    train(generate_rows=400, hyperparameters=Hyperparameters(max_iter=10))
    entry = record(home, "rollback")
    said = drift_actions.roll_back("churn", entry.id, home)
    assert "nothing moved" in said
    outcome = ledger.get_decision(entry.id, home).outcome
    assert outcome["aliases_after"]["champion"] == 1 == outcome["aliases_before"]["champion"]
