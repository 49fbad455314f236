"""The drift check end to end on generated scenarios: real GX, Evidently, MLflow and Prefect."""

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from agentic_mlops.cli import app
from agentic_mlops.flows.data_quality import data_quality
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.flows.train import train
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.batches import read_table, write_table
from agentic_mlops.tasks.churn import generate_batches, generate_churn
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import artifacts_by_key, trained_home, use_home_copy

FAST = Hyperparameters(max_iter=80)


@pytest.fixture(scope="module")
def champion_v1(tmp_path_factory, mlflow_template):
    """A home with a champion trained on reference data, made once per module."""
    return trained_home(
        tmp_path_factory,
        mlflow_template,
        "trained",
        dict(generate_rows=4_000, seed=1, hyperparameters=FAST),
    )


@pytest.fixture
def champion_home(champion_v1, tmp_path, monkeypatch) -> Settings:
    """A private copy of the trained home, so each test's history and ledger start empty."""
    return use_home_copy(champion_v1, tmp_path, monkeypatch)


def batch(home, scenario, seed=100, rows=2_000, name=None):
    path = home.home / "incoming" / (name or f"{scenario}-{seed}.parquet")
    return write_table(generate_churn(rows, seed, scenario), path)


def check(path, act=False, **extra):
    return drift_check(current_path=str(path), act=act, **extra)


def test_no_drift_means_no_action(champion_home):
    result = check(batch(champion_home, "none"))
    assert result.quality.passed and not result.dataset_drift
    assert not any(c.drifted for c in result.columns.values())
    assert result.decision.action == "none"
    assert ledger.get_decision(result.ledger_id, champion_home).action == "none"


def test_covariate_drift_on_prices_asks_for_retraining(champion_home):
    result = check(batch(champion_home, "covariate"))
    assert result.quality.passed
    drifted = {name for name, c in result.columns.items() if c.drifted}
    assert {"monthly_charges", "total_charges"} <= drifted
    assert result.decision.action == "retrain"
    assert "monthly_charges" in result.decision.drifted_features
    assert result.report_path and result.report_path.endswith(".html")


def renderer_niceness(request: Path, deadline: float) -> set[int]:
    """The CPU niceness seen of the process rendering a report, until it ends: it lowers its
    own priority once it has started."""
    seen: set[int] = set()
    while time.monotonic() < deadline and 19 not in seen:
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_text()
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if str(request) in command and "drift-report" in command:
                found = True
                seen.add(int(stat.rsplit(")", 1)[1].split()[16]))
        if not found and seen:
            break
        time.sleep(0.05)
    return seen


def test_the_evidently_report_is_rendered_after_the_check_returns(champion_home, monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_DRIFT_REPORT_MODE", "after")
    result = check(batch(champion_home, "covariate", rows=3_000))
    report = Path(result.report_path)
    assert "drift-reports/covariate-100-drift.html" in result.report_link
    request = report.with_suffix(".request.json")
    assert request.exists() and len(pd.read_parquet(report.with_suffix(".current.parquet"))) > 0
    deadline = time.monotonic() + 240
    assert 19 in renderer_niceness(request, deadline), "the report did not render at nice 19"
    while not report.with_suffix(".json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert report.exists() and "monthly_charges" in report.with_suffix(".json").read_text()
    run_id = registry.version_run_id("churn", 1, champion_home)
    while time.monotonic() < deadline:
        logged = registry.client(champion_home).list_artifacts(run_id, "drift-reports")
        if "drift-reports/covariate-100-drift.html" in [a.path for a in logged]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not logged to MLflow: {report.with_suffix('.request.log')}")


def test_no_report_is_planned_when_reports_are_off(champion_home, monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_DRIFT_REPORT_MODE", "off")
    result = check(batch(champion_home, "covariate"))
    assert result.report_path is None and result.report_link is None
    assert not list((champion_home.reports_dir / "churn").glob("*.request.json"))


@pytest.mark.slow
def test_concept_drift_is_caught_by_performance_not_by_inputs(champion_home):
    result = check(batch(champion_home, "concept", rows=4_000))
    assert not any(c.drifted for c in result.columns.values())
    assert result.decision.action == "retrain"
    assert "concept" in result.decision.rationale


@pytest.mark.slow
def test_concept_drift_without_labels_cannot_be_seen(champion_home):
    path = champion_home.home / "incoming" / "concept-unlabelled.parquet"
    write_table(generate_churn(2_000, 100, "concept").drop(columns=["churn"]), path)
    result = check(path)
    assert result.decision.action == "none"


def test_broken_batch_is_quarantined_and_escalated(champion_home):
    path = batch(champion_home, "quality")
    content = path.read_bytes()
    state = drift_check(current_path=str(path), act=True, return_state=True)
    assert state.name == "Quarantined" and state.is_completed()
    result = state.result()
    assert not result.quality.passed and result.decision.action == "escalate"
    assert not path.exists()
    moved = champion_home.quarantine_dir / path.name
    assert moved.read_bytes() == content
    assert (champion_home.quarantine_dir / f"{path.name}.validation.json").exists()
    joined = " ".join(result.quality.failures)
    assert "support_calls" in joined and "PaymentMethod" in joined
    assert any("escalate" in a for a in result.actions_taken)


@pytest.mark.slow
def test_gradual_drift_is_flagged_before_the_per_batch_test_alone(champion_home):
    actions, per_batch = [], []
    for index, frame in enumerate(generate_batches(8, 1_500, seed=200, scenario="gradual")):
        path = write_table(frame, champion_home.home / "incoming" / f"g-{index:02d}.parquet")
        result = check(path)
        actions.append(result.decision.action)
        per_batch.append(result.dataset_drift)
    assert actions[0] == "none"
    first_flag = next(i for i, a in enumerate(actions) if a != "none")
    first_dataset_drift = next((i for i, d in enumerate(per_batch) if d), len(per_batch))
    assert first_flag < first_dataset_drift
    assert actions[-1] == "retrain"
    assert len(ledger.drift_history("churn", settings=champion_home)) == 8


@pytest.mark.slow
def test_retrain_decision_registers_a_new_challenger_and_records_the_outcome(champion_home):
    result = check(batch(champion_home, "covariate", rows=3_000), act=True)
    assert result.decision.action == "retrain" and result.retrained_version == 2
    assert registry.model_aliases("churn", champion_home) == {"challenger": 2, "champion": 1}
    entry = ledger.get_decision(result.ledger_id, champion_home)
    assert entry.outcome["challenger_version"] == 2
    assert artifacts_by_key("churn-drift-columns")
    assert "retrain" in artifacts_by_key("churn-decision-ledger")[0]["data"]
    assert not ledger.list_decisions(
        "churn", decision_point="human_approval", settings=champion_home
    )


@pytest.mark.slow
def test_rollback_decision_moves_the_champion_back(champion_home):
    worse = train(
        generate_rows=300, seed=9, scenario="concept", hyperparameters=Hyperparameters(max_iter=5)
    )
    registry.promote_champion("churn", worse.version, champion_home)
    result = check(batch(champion_home, "none", rows=4_000), act=True)
    assert result.decision.action == "rollback", result.decision.rationale
    assert registry.alias_version("churn", "champion", champion_home) == 1


runner = CliRunner()


def test_cli_json_has_the_documented_shape(champion_home):
    path = batch(champion_home, "covariate")
    out = runner.invoke(app, ["drift-check", "--current", str(path), "--no-act", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(payload) == {"quality", "dataset_drift", "drift_share", "columns", "decision"}
    assert set(payload["quality"]) == {"passed", "failures"}
    assert set(payload["columns"]["monthly_charges"]) == {"drifted", "test", "score"}
    assert set(payload["decision"]) == {
        "action",
        "severity",
        "confidence",
        "drifted_features",
        "rationale",
        "decided_by",
        "model_action",
        "policy_action",
        "overridden_by",
    }
    assert payload["decision"]["action"] == "retrain"
    assert payload["decision"]["decided_by"] == "policy"
    assert payload["decision"]["model_action"] == payload["decision"]["policy_action"] == "retrain"
    assert payload["decision"]["overridden_by"] is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.csv", "no such file"),
        (lambda d: _write(d / "empty.csv", b""), "empty"),
        (lambda d: _write(d / "bad.parquet", b"PAR1 garbage"), "unreadable"),
        (
            lambda d: write_table(generate_churn(50).rename(columns=str.upper), d / "x.csv"),
            "no columns shared",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(champion_home, tmp_path, make, message):
    out = runner.invoke(app, ["drift-check", "--current", str(make(tmp_path)), "--json"])
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_cli_with_an_explicit_reference_file(champion_home, tmp_path):
    reference = write_table(generate_churn(3_000, 5), tmp_path / "reference.csv")
    current = batch(champion_home, "none")
    out = runner.invoke(
        app,
        [
            "drift-check",
            "--reference",
            str(reference),
            "--current",
            str(current),
            "--no-act",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.strip().splitlines()[-1])["dataset_drift"] is False


def test_without_a_champion_or_reference_the_check_says_so(home, tmp_path):
    path = write_table(generate_churn(100), tmp_path / "b.csv")
    state = drift_check(current_path=str(path), return_state=True)
    assert state.is_failed() and state.name == "NoReference"


def _write(path, content):
    path.write_bytes(content)
    return path


@pytest.mark.slow
def test_a_few_bad_rows_are_quarantined_and_the_rest_is_checked(champion_home):
    frame = generate_churn(2_000, 100)
    frame.loc[[5, 50, 500], "contract"] = "lifetime_deal"
    path = write_table(frame, champion_home.home / "incoming" / "few-bad.parquet")
    result = check(path)
    assert not result.quality.passed and not result.quality.batch_failed
    assert result.quality.failing_rows == 3 and path.exists()
    rows = read_table(champion_home.quarantine_dir / "few-bad.failing-rows.parquet")
    assert sorted(rows["row"]) == [5, 50, 500] and set(rows["contract"]) == {"lifetime_deal"}
    assert (champion_home.quarantine_dir / "few-bad.failing-rows.parquet.validation.json").exists()
    assert result.decision.action == "none" and not result.dataset_drift


@pytest.mark.slow
def test_standalone_data_quality_flow(champion_home):
    suite = champion_home.home / "models" / "churn" / "v1" / "expectations.json"
    good = batch(champion_home, "none")
    summary = data_quality(current_path=str(good), suite_path=str(suite))
    assert summary.passed
    broken = batch(champion_home, "quality")
    state = data_quality(current_path=str(broken), suite_path=str(suite), return_state=True)
    assert state.name == "Quarantined" and not broken.exists()
    bad_suite = write_table(generate_churn(10), champion_home.home / "not-a-suite.csv")
    state = data_quality(current_path=str(good), suite_path=str(bad_suite), return_state=True)
    assert state.is_failed() and state.name == "InvalidData"


def answer_paused_runs(decision: str, seen: dict, seconds: float = 240) -> None:
    """A person: read the form of the first paused run, then answer it."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state, read_flow_run_input

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not seen:
            for run in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20):
                if run.state and run.state.is_paused():
                    keyset = keyset_from_paused_state(run.state)
                    seen["description"] = read_flow_run_input(keyset["description"], run.id)
                    seen["schema"] = read_flow_run_input(keyset["schema"], run.id)
                    resume_flow_run(run.id, run_input={"decision": decision, "comment": "not now"})
                    return
            time.sleep(0.5)


@pytest.mark.slow
def test_approval_mode_all_stops_the_drift_check_before_it_acts(champion_home, monkeypatch):
    import threading

    monkeypatch.setenv("AGENTIC_MLOPS_APPROVAL_MODE", "all")
    seen: dict = {}
    person = threading.Thread(target=answer_paused_runs, args=("reject", seen), daemon=True)
    person.start()
    result = check(batch(champion_home, "covariate"), act=True)
    person.join(timeout=5)

    assert result.decision.action == "retrain" and result.retrained_version is None
    assert any("not approved" in a for a in result.actions_taken)
    assert any(a.startswith("escalate") for a in result.actions_taken)
    assert registry.model_aliases("churn", champion_home) == {"challenger": 1, "champion": 1}
    form = seen["description"]
    assert result.decision.rationale in form and "Answer by" in form and "UTC" in form
    assert "monthly_charges" in form and "confidence" in form
    assert "decision" in seen["schema"]["required"]
    entry = ledger.get_decision(result.ledger_id, champion_home)
    assert entry.outcome["human"] == "reject"
    person_entry = ledger.get_decision(entry.outcome["human_decision_id"], champion_home)
    assert person_entry.agent_model == "person" and person_entry.action == "reject"
    assert person_entry.rationale == "not now"
