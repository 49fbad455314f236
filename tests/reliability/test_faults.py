"""MLflow down or slow during a drift check: a failed state in Prefect, and no batch lost.

tests/flows/test_canary_flow.py covers MLflow unreachable during a promotion, a failed
traffic switch, a promotion killed half way and unreachable metrics. Here: the drift check
with MLflow refusing connections, accepting them and never answering, failing while the
champion is loaded for scoring, and failing while the retraining it decided on logs its run.
"""

from __future__ import annotations

import socket
import time

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from agentic_mlops.flows.drift import drift_check
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.churn import generate_churn


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_at(monkeypatch):
    """Point MLflow at a URI, with no HTTP retries, a 2 s timeout and no task retries.

    Agent traces of earlier tests still queued would be exported to the dead server, whose
    retries then block the next switch of tracking URI for minutes: they are sent first, and
    MLflow is pointed back where it was afterwards.
    """
    mlflow.flush_trace_async_logging()
    before = mlflow.get_tracking_uri()

    def point(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        monkeypatch.setenv("AGENTIC_MLOPS_MLFLOW_RETRIES", "0")

    yield point
    mlflow.set_tracking_uri(before)


def batch(settings, scenario="none", name="batch.parquet", rows=1_000):
    path = settings.home / "incoming" / name
    generate_churn(rows, 100, scenario).to_parquet(path)
    return path, path.read_bytes()


def assert_failed_and_kept(state, path, content, settings) -> None:
    assert state.is_failed(), (state.name, state.message)
    assert state.message and "\n" not in state.message
    assert path.read_bytes() == content
    assert not any(settings.quarantine_dir.iterdir())
    assert ledger.drift_history("churn", settings=settings) == []


def test_mlflow_refusing_connections_fails_the_check_and_keeps_the_batch(champion_home, mlflow_at):
    path, content = batch(champion_home)
    mlflow_at(f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    state = drift_check(current_path=str(path), return_state=True)
    assert time.monotonic() - started < 30
    assert_failed_and_kept(state, path, content, champion_home)


def test_mlflow_refusing_connections_is_named_as_the_cause(champion_home, mlflow_at):
    path, _ = batch(champion_home)
    mlflow_at(f"http://127.0.0.1:{closed_port()}")
    state = drift_check(current_path=str(path), return_state=True)
    assert state.name != "NoReference", state.message


@pytest.mark.slow
def test_mlflow_accepting_but_never_answering_fails_within_its_timeout(champion_home, mlflow_at):
    path, content = batch(champion_home)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mlflow_at(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        state = drift_check(current_path=str(path), return_state=True)
        assert time.monotonic() - started < 60
    assert_failed_and_kept(state, path, content, champion_home)


@pytest.mark.slow
def test_mlflow_failing_while_the_champion_loads_keeps_every_row(champion_home, monkeypatch):
    from agentic_mlops.tasks import reference

    def unreachable(uri, tracking_uri):
        raise MlflowException("API request to MLflow failed: connection refused")

    monkeypatch.setattr(reference, "load_scoring_model", unreachable)
    frame = generate_churn(1_000, 100)
    frame.loc[[3, 30, 300], "contract"] = "lifetime_deal"
    path = champion_home.home / "incoming" / "few-bad.parquet"
    frame.to_parquet(path)
    content = path.read_bytes()
    state = drift_check(current_path=str(path), return_state=True)
    assert state.is_failed() and "connection refused" in state.message
    assert "\n" not in state.message
    assert path.read_bytes() == content
    failing = champion_home.quarantine_dir / "few-bad.failing-rows.parquet"
    clean = champion_home.data_dir / "clean" / "few-bad.parquet"
    assert failing.exists() and clean.exists()
    assert ledger.drift_history("churn", settings=champion_home) == []


@pytest.mark.slow
def test_mlflow_failing_while_retraining_records_the_decision_and_the_failure(
    champion_home, monkeypatch
):
    from agentic_mlops.tasks import publishing

    def unreachable(*args, **kwargs):
        raise MlflowException("API request to MLflow failed: connection refused")

    monkeypatch.setattr(publishing, "log_training_run", unreachable)
    path, content = batch(champion_home, "covariate", rows=2_000)
    state = drift_check(current_path=str(path), act=True, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.decision.action == "retrain" and result.retrained_version is None
    assert any("failed" in action for action in result.actions_taken)
    entry = ledger.get_decision(result.ledger_id, champion_home)
    assert entry.action == "retrain" and "retrain_failed" in entry.outcome
    assert path.read_bytes() == content
