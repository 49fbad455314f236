"""The closed loop: a lifecycle turn, approval modes, the report, and both demo scenarios."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from agentic_mlops.flows.lifecycle import lifecycle
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.lifecycle_report import decision_rows, verdict
from tests.conftest import artifacts_by_key, use_home_copy


@pytest.fixture
def champion_v1(trained_champion):
    """The session's champion (`tests/conftest.py`), trained once for every module."""
    return trained_champion


@pytest.fixture
def champion_home(champion_v1, tmp_path, monkeypatch) -> Settings:
    return use_home_copy(champion_v1, tmp_path, monkeypatch)


def window(home, scenario, seed, rows=1_500):
    frame = generate_churn(
        rows, seed, scenario, **({"severity": 1.0} if scenario == "gradual" else {})
    )
    return str(write_table(frame, home.home / "incoming" / f"{scenario}-{seed}.parquet"))


def test_a_quiet_window_changes_nothing_and_is_reported(champion_home):
    result = lifecycle(batch_path=window(champion_home, "none", 31))
    assert result.decision == "none" and result.aliases == {"champion": 1, "challenger": 1}
    assert result.retrained_version is None and result.canary is None
    assert Path(result.plot_path).read_bytes()[:4] == b"\x89PNG"
    rows = decision_rows(champion_home)
    assert [r["action"] for r in rows] == ["none"]
    table = artifacts_by_key("churn-decisions-and-outcomes")[0]
    assert "drift_triage" in table["data"]


@pytest.mark.slow
def test_approval_mode_all_waits_and_no_answer_escalates(champion_home, monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_APPROVAL_MODE", "all")
    result = lifecycle(batch_path=window(champion_home, "gradual", 32), approval_timeout_seconds=2)
    assert result.decision == "retrain"
    assert any(step.startswith("not approved") for step in result.steps)
    assert any("escalate" in step for step in result.steps)
    assert result.retrained_version is None
    assert registry.model_aliases("churn", champion_home)["challenger"] == 1
    entry = ledger.get_decision(result.ledger_id, champion_home)
    assert entry.outcome["human"] == "no answer" and verdict(entry) is None
    person = ledger.get_decision(entry.outcome["human_decision_id"], champion_home)
    assert (person.decision_point, person.agent_model, person.action) == (
        "human_approval",
        "person",
        "no answer",
    )
    assert person.evidence == {"asked_about": entry.id, "agent_action": "retrain"}


@pytest.mark.slow
def test_the_demo_promotes_the_fix_and_rolls_back_the_bad_model(home, monkeypatch):
    from agentic_mlops.demo import DemoPlan, run_demo

    monkeypatch.setenv("AGENTIC_MLOPS_SERVING_STANDBY", "true")  # as a user's demo runs

    # the demo's own data sizes (a smaller champion makes a normal window look like a drop),
    # with a smaller search
    plan = DemoPlan(max_trials=3, search_seconds=25)
    state = run_demo(Console(quiet=True), plan)

    assert state["results"]["normal"]["decision"] == "none"
    drift, bad = state["results"]["drift"], state["results"]["bad"]
    assert drift["decision"] == "retrain" and drift["canary"] == "promoted"
    assert bad["decision"] == "retrain" and bad["canary"] == "rolled_back"
    assert state["aliases"]["champion"] == drift["retrained_version"] == 2
    assert state["aliases"]["challenger"] == bad["retrained_version"] == 3
    router = state["router"]
    assert router["baseline"]["version"] == 2 and router["canary"] is None
    assert router["weight"] == 0
    assert state["traffic"].failed == 0

    triage = ledger.list_decisions("churn", decision_point="drift_triage", settings=home)
    outcomes = {e.model_version: e.outcome for e in triage if e.action == "retrain"}
    assert outcomes[1]["canary"] == "promoted" and outcomes[1]["beat_champion"] is True
    assert outcomes[2]["canary"] == "rolled_back"
    promoted = ledger.list_decisions(
        "churn", action="promote", decision_point="canary_promotion", settings=home
    )
    assert promoted and promoted[0].outcome["held"] is True
    summary = json.loads((home.reports_dir / "demo-summary.json").read_text())
    assert summary["aliases"] == state["aliases"] and summary["traffic"]["failed"] == 0
    assert 0 < summary["timings"]["drift onset to new champion"] < summary["timings"]["total"]
    logs = {path.name for path in home.serving_dir.glob("model-*.log")}
    assert len(logs) == 4 and all("standby" in name for name in logs), (
        "v1, v2 and v3 were served by warm standbys, and a fourth waited"
    )
