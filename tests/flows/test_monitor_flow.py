"""The monitor end to end on loopback: a real model server and router, customers' requests
and delayed labels, the request log, the drift check and its triage."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from agentic_mlops.flows.monitor import monitor
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, monitoring
from agentic_mlops.tasks.batches import read_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.monitoring import MonitorPoint
from agentic_mlops.tasks.serving_log import collect_window
from tests.conftest import artifacts_by_key


@pytest.fixture
def champion(trained_champion):
    """The session's champion (`tests/conftest.py`), trained once for every module."""
    return trained_champion


@pytest.fixture
def served(champion, tmp_path, monkeypatch):
    """The champion served behind the router, from a private copy of the home."""
    root = tmp_path / "home"
    shutil.copytree(champion, root, ignore=shutil.ignore_patterns("serving"))
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(root))
    monkeypatch.setenv("AGENTIC_MLOPS_SERVING_LOG_FLUSH_SECONDS", "0.5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    backend = LocalRollout(settings)
    url = backend.start_router()
    backend.set_baseline(1)
    yield settings, url
    backend.shutdown()


def customers_call(url: str, frame: pd.DataFrame, labelled: int) -> list[str]:
    """Each customer's row to `/predict`, then the true label of the first `labelled`."""
    labels = frame["churn"].tolist()
    rows = frame.drop(columns="churn").to_dict("records")
    with httpx.Client(base_url=url, timeout=30) as client:
        ids = []
        for row in rows:
            answer = client.post("/predict", json=row)
            answer.raise_for_status()
            ids.append(answer.json()["request_id"])
        for request_id, label in list(zip(ids, labels, strict=True))[:labelled]:
            client.post("/feedback", json={"request_id": request_id, "label": label})
    return ids


def earlier_runs(settings: Settings, count: int) -> None:
    """`count` earlier monitor runs of v1 with no failed calls, five minutes apart."""
    now = time.time()
    for index in range(count):
        monitoring.record_point(
            settings.model_name,
            MonitorPoint(
                run_id=f"earlier-{index}",
                created_at="earlier",
                ts=now - 300 * (count - index),
                champion_version=1,
                metrics={"error_rate": 0.0},
            ),
            settings,
        )


def test_the_monitor_measures_the_traffic_and_drift_checks_the_labelled_window(served):
    settings, url = served
    earlier_runs(settings, 5)
    customers_call(url, generate_churn(300, 50), labelled=250)

    result = monitor(act=False)

    assert result.champion_version == 1 and result.serving_error is None
    assert result.serving.source == "router" and result.serving.requests == 300
    assert result.serving.error_rate == 0 and result.serving.labels == 250
    assert result.serving.latency_p95_ms > 0 and result.serving.variants["baseline"] == 300
    assert result.rows == 300 and result.labels == 250
    assert not result.prediction_drift.drifted
    assert result.online.rows == 250 and result.online.roc_auc > 0.65
    estimate = result.estimate
    assert estimate.trusted and estimate.calibration_source == "recent labels"
    assert abs(estimate.roc_auc - result.online.roc_auc) < 0.1
    assert abs(estimate.accuracy - (1 - result.online.error_rate)) < 0.1
    assert not [a for a in result.alerts if "error_rate" in a or "drift" in a]
    error_trend = next(t for t in result.trends if t.metric == "error_rate")
    assert error_trend.points == 6 and not error_trend.flagged

    batch = read_table(result.batch_path)
    assert len(batch) == 250 and batch["churn"].isin([0, 1]).all()
    assert batch["monthly_charges"].dtype == float and "score" not in batch
    check = result.drift_check
    assert check is not None and check.batch_id.endswith("-labelled.parquet")
    assert check.decision.action in ("none", "monitor") and not check.actions_taken
    entry = ledger.get_decision(result.ledger_id, settings)
    assert entry.decision_point == "drift_triage"
    serving = entry.evidence["serving"]
    assert serving["rows"] == 300 and serving["alerts"] == result.alerts
    assert serving["estimated_roc_auc"] == estimate.roc_auc and serving["estimate_trusted"]
    history = monitoring.monitor_history("churn", 1, settings=settings)
    assert len(history) == 6 and history[-1].drift_ledger_id == result.ledger_id
    assert "Monitor of churn v1" in artifacts_by_key("churn-monitor")[0]["data"]

    again = monitor(act=False)
    assert again.rows == 0 and again.labels == 0 and again.serving.requests == 0
    assert again.drift_check is None and "fewer than" in again.drift_check_error

    path = collect_window(settings)
    assert path is not None and len(read_table(path)) == 250


def test_without_a_champion_the_monitor_fails_named(home):
    state = monitor(return_state=True)
    assert state.is_failed() and state.name == "NoReference"
    assert collect_window(home) is None


def test_the_monitor_deployment_runs_every_five_minutes_one_at_a_time():
    root = Path(__file__).resolve().parents[2]
    deployments = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    found = next(d for d in deployments if d["name"] == "monitor")
    assert found["schedules"][0]["cron"] == "*/5 * * * *"
    assert found["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    loaded = load_flow_from_entrypoint(str(root / found["entrypoint"]))
    assert loaded.name == "monitor" and {"router_url", "check_drift", "act"} <= set(
        loaded.parameters.properties
    )


@pytest.mark.slow
def test_a_price_rise_mid_stream_is_seen_in_the_scores_and_sent_to_retraining(served):
    settings, url = served
    customers_call(url, generate_churn(300, 51), labelled=300)
    before = monitor(act=False)
    assert not before.prediction_drift.drifted

    customers_call(url, generate_churn(400, 52, "covariate"), labelled=400)
    after = monitor(act=False)

    assert after.rows == 400 and after.prediction_drift.drifted
    assert any("scores drifted" in alert for alert in after.alerts)
    assert after.drift_check.decision.action == "retrain"
    assert "monthly_charges" in after.drift_check.decision.drifted_features
    assert after.ledger_id != before.ledger_id
