"""The monitor's pure parts: trends, the label-free estimate and its calibration check,
prediction drift, online performance, serving windows and the history."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import monitoring
from agentic_mlops.tasks.drift import build_profile
from agentic_mlops.tasks.monitoring import MonitorCursor, MonitorPoint
from tests.tasks.test_serving_log import customers, serving

HOUR = 3_600.0
RUNS = np.arange(12) * 300.0
"""Twelve monitor runs, five minutes apart."""


def rising_error_rate(seed: int) -> np.ndarray:
    """An error rate climbing 0.05 percentage points a run from 0.2%, with noise: about 0.75%
    at the last run, 1% (the limit) about five runs later."""
    rng = np.random.default_rng(seed)
    return 0.002 + 0.0005 * np.arange(12) + rng.normal(0, 0.0004, 12)


def flat_error_rate(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.005 + rng.normal(0, 0.002, 12), 0, None)


def test_a_steadily_worsening_metric_is_flagged_before_it_crosses():
    found = monitoring.trend(RUNS, rising_error_rate(1), 0.01, "increase_is_bad", 0.05, HOUR)
    assert found.flagged and found.worsening and not found.breached
    assert found.latest < 0.01 and found.p_value < 0.01
    assert found.slope_per_hour == pytest.approx(0.0005 * 12, rel=0.3)
    true_seconds_left = (0.01 - (0.002 + 0.0005 * 11)) / 0.0005 * 300
    assert found.seconds_to_limit == pytest.approx(true_seconds_left, rel=0.35)


def test_a_flat_noisy_metric_is_not_flagged():
    found = monitoring.trend(RUNS, flat_error_rate(1), 0.01, "increase_is_bad", 0.05, HOUR)
    assert not found.flagged and found.seconds_to_limit is None
    false_flags = sum(
        monitoring.trend(RUNS, flat_error_rate(s), 0.01, "increase_is_bad", 0.05, HOUR).flagged
        for s in range(300)
    )
    assert false_flags / 300 <= 0.06, "about alpha or less"
    caught = sum(
        monitoring.trend(RUNS, rising_error_rate(s), 0.01, "increase_is_bad", 0.05, HOUR).flagged
        for s in range(100)
    )
    assert caught >= 85


def test_a_trend_far_from_its_limit_or_improving_is_not_flagged():
    slow = monitoring.trend(RUNS, rising_error_rate(2), 0.5, "increase_is_bad", 0.05, HOUR)
    assert slow.worsening and not slow.flagged and slow.seconds_to_limit > HOUR
    auc = 0.80 + 0.002 * np.arange(12)
    improving = monitoring.trend(RUNS, auc, 0.78, "decrease_is_bad", 0.05, HOUR)
    assert not improving.worsening and not improving.flagged


def test_a_falling_roc_auc_is_flagged_and_one_already_beyond_is_a_breach():
    auc = 0.86 - 0.004 * np.arange(12)
    falling = monitoring.trend(RUNS, auc, 0.80, "decrease_is_bad", 0.05, HOUR)
    assert falling.flagged and falling.slope_per_hour < 0
    crossed = monitoring.trend(RUNS, auc - 0.05, 0.80, "decrease_is_bad", 0.05, HOUR)
    assert crossed.breached and not crossed.flagged


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 5, n)
    return scores, (rng.random(n) < scores).astype(float)


def test_the_label_free_estimate_matches_the_truth_on_calibrated_scores():
    settings = Settings()
    scores, truth = calibrated(20_000, 7)
    labelled_scores, labels = calibrated(2_000, 8)
    estimate = monitoring.estimate_performance(
        scores, labelled_scores, labels, {"expected_calibration_error": 0.01}, settings
    )
    assert estimate.trusted and estimate.calibration_source == "recent labels"
    assert not estimate.calibration.miscalibrated and not estimate.reasons
    assert estimate.accuracy == pytest.approx(np.mean((scores >= 0.5) == (truth == 1)), abs=0.01)
    assert estimate.roc_auc == pytest.approx(roc_auc_score(truth, scores), abs=0.01)
    assert estimate.brier == pytest.approx(np.mean((scores - truth) ** 2), abs=0.005)


def test_the_estimate_is_not_trusted_on_miscalibrated_scores():
    settings = Settings()
    probabilities, labels = calibrated(2_000, 9)
    overconfident = probabilities**0.4
    estimate = monitoring.estimate_performance(
        overconfident, overconfident, labels, {"expected_calibration_error": 0.01}, settings
    )
    assert not estimate.trusted and estimate.calibration.miscalibrated
    assert "miscalibrated" in estimate.reasons[0]
    truth = np.mean((overconfident >= 0.5) == (labels == 1))
    assert estimate.accuracy - truth > 0.05, "the estimate it refuses to trust is wrong"


def test_without_recent_labels_the_holdout_decides_and_without_it_nothing_is_trusted():
    settings = Settings()
    scores, labels = calibrated(50, 10)
    good = monitoring.estimate_performance(
        scores, scores, labels, {"expected_calibration_error": 0.02}, settings
    )
    assert good.trusted and good.calibration_source == "training holdout" and good.reasons
    poor = monitoring.estimate_performance(
        scores, scores, labels, {"expected_calibration_error": 0.2}, settings
    )
    assert not poor.trusted
    unchecked = monitoring.estimate_performance(scores, scores[:0], labels[:0], {}, settings)
    assert not unchecked.trusted and unchecked.calibration_source == "none"


def test_few_labels_of_calibrated_scores_are_rarely_called_miscalibrated():
    alarms = 0
    for seed in range(300):
        scores, labels = calibrated(150, seed)
        alarms += monitoring.calibration_check(labels, scores, 0.05, 0.01).miscalibrated
    assert alarms / 300 <= 0.02


def test_the_expected_roc_auc_of_uninformative_and_perfect_scores():
    assert monitoring.expected_roc_auc(np.full(100, 0.3)) == pytest.approx(0.5)
    assert monitoring.expected_roc_auc(np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert monitoring.expected_roc_auc(np.zeros(10)) is None


def test_prediction_drift_sees_shifted_scores_and_not_resampled_ones():
    settings = Settings()
    rng = np.random.default_rng(0)
    reference = rng.beta(2, 5, 5_000)
    profile = build_profile(pd.DataFrame({"x": rng.normal(size=5_000)}), prediction=reference)
    same = monitoring.prediction_drift(profile, rng.beta(2, 5, 1_000), settings)
    shifted = monitoring.prediction_drift(profile, rng.beta(4, 4, 1_000), settings)
    assert same.test == "wasserstein" and not same.drifted
    assert shifted.drifted and shifted.score > 3 * same.score
    assert monitoring.prediction_drift(profile, np.array([np.nan]), settings) is None


def test_online_performance_of_labelled_rows():
    found = monitoring.online_performance(
        np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.6]), {"roc_auc": 0.8}
    )
    assert found.roc_auc == pytest.approx(0.75) and found.error_rate == pytest.approx(0.5)
    assert found.brier == pytest.approx((0.01 + 0.04 + 0.36 + 0.36) / 4)
    assert found.reference_roc_auc == 0.8 and found.reference_brier is None
    one_class = monitoring.online_performance(np.array([0, 0]), np.array([0.1, 0.2]))
    assert one_class.roc_auc is None


def point(run: int, **metrics) -> MonitorPoint:
    return MonitorPoint(
        run_id=f"run-{run}",
        created_at=f"2026-11-24T10:{run:02d}:00+00:00",
        ts=1_700_000_000 + 300.0 * run,
        champion_version=metrics.pop("version", 1),
        metrics=metrics,
        cursor=MonitorCursor(after_request=run),
    )


def test_the_history_keeps_one_row_per_run_by_champion(home):
    for run in range(3):
        monitoring.record_point("churn", point(run, error_rate=0.001 * run), home)
    monitoring.record_point("churn", point(2, error_rate=0.5), home)
    monitoring.record_point("churn", point(3, error_rate=0.0, version=2), home)
    first = monitoring.monitor_history("churn", 1, settings=home)
    assert [p.run_id for p in first] == ["run-0", "run-1", "run-2"]
    assert first[-1].metrics["error_rate"] == 0.5, "a retried run replaces its row"
    latest = monitoring.monitor_history("churn", limit=1, settings=home)
    assert latest[0].run_id == "run-3" and latest[0].cursor.after_request == 3
    assert monitoring.monitor_history("other", settings=home) == []


def test_trends_need_enough_measured_points():
    settings = Settings(monitor_trend_min_points=6)
    limits = {"error_rate": (0.01, "increase_is_bad"), "roc_auc": (0.8, "decrease_is_bad")}
    values = rising_error_rate(1)
    points = [point(i, error_rate=float(v), roc_auc=None) for i, v in enumerate(values)]
    found = monitoring.detect_trends(points, limits, settings)
    assert [t.metric for t in found] == ["error_rate"] and found[0].flagged
    assert monitoring.detect_trends(points[:5], limits, settings) == []


def test_metric_limits_follow_the_training_holdout():
    settings = Settings(monitor_max_roc_auc_drop=0.05, monitor_max_brier_rise=0.02)
    limits = monitoring.metric_limits(settings, {"roc_auc": 0.85, "brier_score": 0.15})
    assert limits["roc_auc"] == (pytest.approx(0.80), "decrease_is_bad")
    assert limits["brier"] == (pytest.approx(0.17), "increase_is_bad")
    assert "roc_auc" not in monitoring.metric_limits(settings, {})


def test_the_router_window_counts_only_what_is_new_and_survives_a_restart(tmp_path):
    rows = customers(12)
    with serving(tmp_path, None) as (_, url):
        for row in rows[:10]:
            answer = httpx.post(f"{url}/predict", json=row).json()
        httpx.post(f"{url}/feedback", json={"request_id": answer["request_id"], "label": 0})
        first, cursor = monitoring.router_window(url, MonitorCursor(), seconds=60)
        for row in rows[10:]:
            httpx.post(f"{url}/predict", json=row)
        second, cursor = monitoring.router_window(url, cursor, seconds=60)
    assert first.requests == 10 and first.labels == 1 and first.error_rate == 0
    assert first.brier == pytest.approx(0.09) and first.requests_per_minute == 10
    assert first.latency_p95_ms >= first.latency_p50_ms > 0
    assert second.requests == 2 and second.labels == 0 and second.brier is None
    assert cursor.after_request == 12
    with serving(tmp_path, None) as (_, url):
        for row in rows[:3]:
            httpx.post(f"{url}/predict", json=row)
        restarted, cursor = monitoring.router_window(url, cursor, seconds=None)
    assert restarted.requests == 3 and cursor.after_request == 3


def test_an_unreachable_router_is_a_reason_not_an_error():
    window, cursor, error = monitoring.read_serving_window.fn(
        "http://127.0.0.1:9", MonitorCursor(after_request=5), None, Settings()
    )
    assert window is None and cursor.after_request == 5 and "unavailable" in error
    window, _, error = monitoring.read_serving_window.fn(None, MonitorCursor(), None, Settings())
    assert window is None and "no router" in error


SERIES = {
    "router_brier_sum_total": {"baseline": [0.10, 0.20], "canary": [0.30]},
    "router_errors_total": {"baseline": [0.0, 0.02], "canary": [0.04]},
    "router_latency_seconds_sum": {"baseline": [10.0, 20.0], "canary": [30.0]},
}


@pytest.fixture
def prometheus():
    """A loopback stand-in for Prometheus: `time()`, and per-interval values by metric."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/api/v1/query_range":
                query = parse_qs(url.query)["query"][0]
                name = next(name for name in SERIES if name in query)
                result = [
                    {"metric": {"variant": variant}, "values": [[1, str(v)] for v in values]}
                    for variant, values in SERIES[name].items()
                ]
                data = {"resultType": "matrix", "result": result}
            else:
                data = {"resultType": "scalar", "result": [time.time(), str(time.time())]}
            body = json.dumps({"status": "success", "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_with_prometheus_configured_the_window_comes_from_it(prometheus):
    settings = Settings(prometheus_url=prometheus)
    window, cursor, error = monitoring.read_serving_window.fn(
        "http://127.0.0.1:9", MonitorCursor(after_request=7), time.time() - 120, settings
    )
    assert error is None and window.source == "prometheus" and cursor.after_request == 7
    assert window.seconds == pytest.approx(120, abs=5) and window.requests is None
    assert window.error_rate == pytest.approx(0.02) and window.brier == pytest.approx(0.2)
    assert window.latency_ms == window.latency_mean_ms == pytest.approx(20.0)
    assert window.latency_p95_ms is None


def test_a_regression_champion_gets_prediction_drift_its_error_and_no_probability_estimates(
    tmp_path,
):
    """A regressor's predictions are not probabilities: the monitor measures their drift and,
    on labelled rows, their absolute error against the holdout's, and neither a CBPE estimate
    nor a Brier score of them (scikit-learn's diabetes regressor)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    from agentic_mlops.tasks.reference import ModelCard, Reference
    from agentic_mlops.tasks.serving_log import LogWindow

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    model = LinearRegression().fit(x[:300], y[:300])
    holdout_mae = float(np.mean(np.abs(model.predict(x[:300]) - y[:300])))
    reference_scores, served = model.predict(x[:300]), model.predict(x[300:] * 1.8)
    settings = Settings(home=tmp_path, monitor={"min_rows": 50, "min_labels": 10_000})
    logged = pd.DataFrame(
        {"ts": np.arange(len(served), dtype=float), "version": 1, "variant": "baseline"}
    ).assign(score=served, label=y[300:].to_numpy())
    window = LogWindow(rows=logged, labelled=logged, recent_labelled=logged)

    def reference(task: str) -> Reference:
        card = ModelCard(
            model_name="diabetes",
            version=1,
            target="progression",
            task=task,
            metrics={"mae": holdout_mae, "r2": 0.5},
        )
        return Reference(
            profile=build_profile(x[:300], reference_scores),
            suite={},
            card=card,
            sample=x[:10],
            version=1,
            previous_version=None,
            folder=tmp_path,
        )

    regression = monitoring.assess_champion(window, reference("regression"), settings)
    assert regression.drift is not None and regression.drift.drifted
    assert regression.estimate is None and regression.online is None
    labelled = settings.model_copy(
        update={"monitor": settings.monitor.model_copy(update={"min_labels": 50})}
    )
    measured = monitoring.assess_champion(window, reference("regression"), labelled)
    assert measured.online is None and measured.error.rows == len(logged)
    # inputs scaled by 1.8: the predictions are far off, and the limit (holdout MAE + 20%) says so
    assert measured.error.mae == pytest.approx(np.mean(np.abs(served - y[300:].to_numpy())))
    assert measured.error.mae > 1.2 * holdout_mae and measured.error.r2 < 0.1
    limits = monitoring.metric_limits(labelled, reference("regression").card.metrics)
    assert limits["mae"] == (pytest.approx(1.2 * holdout_mae), "increase_is_bad")
    point = monitoring.point_metrics(None, None, None, None, measured.error)
    assert monitoring.alerts_of(point, limits, [])[0].startswith("mae is")
    assert regression.error is None, "fewer labels than monitor_min_labels: not measured"
    as_if_binary = monitoring.assess_champion(window, reference("binary"), settings)
    assert as_if_binary.estimate is not None, "the guard, not a lack of rows, left it out"
