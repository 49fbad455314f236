"""MLflow down or slow at the lifecycle steps test_faults.py does not cover: the monitor reading
the champion, and the retraining registering its challenger."""

from __future__ import annotations

import socket
import time

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from agentic_mlops.flows.monitor import monitor
from agentic_mlops.flows.retrain import retrain
from agentic_mlops.tasks import monitoring, registry
from tests.reliability.test_faults import closed_port


def assert_failed_on_one_line(state) -> None:
    assert state.is_failed(), (state.name, state.message)
    assert state.name != "NoReference" and state.message and "\n" not in state.message


def test_mlflow_refusing_connections_fails_the_monitor_and_records_nothing(
    champion_home, mlflow_at
):
    mlflow_at(f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    state = monitor(act=False, return_state=True)
    assert time.monotonic() - started < 30
    assert_failed_on_one_line(state)
    assert "Connection refused" in state.message
    assert monitoring.monitor_history("churn", settings=champion_home) == []


@pytest.mark.slow
def test_mlflow_accepting_but_never_answering_fails_the_monitor_within_its_timeout(
    champion_home, mlflow_at
):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mlflow_at(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        state = monitor(act=False, return_state=True)
        assert time.monotonic() - started < 60
    assert_failed_on_one_line(state)
    assert monitoring.monitor_history("churn", settings=champion_home) == []


@pytest.mark.slow
def test_mlflow_failing_when_the_retraining_registers_its_challenger(champion_home, monkeypatch):
    """The registry refuses the new version (a transient error, retried with backoff, then the
    run fails): the aliases stay where they were and no version is added."""
    attempts = []

    def refused(self, *args, **kwargs):
        attempts.append(time.monotonic())
        raise MlflowException("API request to MLflow failed: connection refused")

    monkeypatch.setattr(MlflowClient, "create_model_version", refused)
    before = registry.model_aliases("churn", champion_home)
    state = retrain(
        generate_rows=2_000,
        seed=3,
        max_trials=2,
        time_budget_seconds=60,
        hand_over="none",
        return_state=True,
    )
    assert_failed_on_one_line(state)
    assert "connection refused" in state.message
    assert len(attempts) == 1 + champion_home.mlflow.retries
    assert registry.model_aliases("churn", champion_home) == before
    client = MlflowClient(champion_home.tracking_uri())
    versions = client.search_model_versions("name='churn'")
    assert [int(v.version) for v in versions] == [1]
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=500)
    searches = [r for r in runs if r.data.tags.get("agentic_mlops.kind") == "tuning-search"]
    assert [r.info.status for r in searches] == ["FAILED"]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
