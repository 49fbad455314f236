"""PrometheusMetrics against real processes: the router, two model servers and Prometheus.

A baseline and a canary failing half its calls serve real traffic with labels; a real
`prometheus` scrapes the router every second; the per-interval values it yields are checked
against what the router itself recorded. Needs Debian's `prometheus` binary (`apt-get install
prometheus`): without it every test here fails, so `make test-all` cannot pass unnoticed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from agentic_mlops.settings import Settings
from agentic_mlops.tasks.canary_judge import judge
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout, free_port
from agentic_mlops.tasks.metrics import (
    MetricsError,
    PrometheusMetrics,
    RouterMetrics,
    canary_metrics,
    interval_canary_metrics,
    metrics_source,
)
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import trained_home
from tests.prometheus import prometheus_binary as find_prometheus
from tests.prometheus import running_prometheus

pytestmark = pytest.mark.slow

TRAFFIC_SECONDS = 12.0
FAULT_ERROR_RATE = 0.5
METRICS = {"error", "latency_ms", "brier"}


@pytest.fixture(scope="module", autouse=True)
def prometheus_binary() -> str:
    return find_prometheus()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, mlflow_template) -> Path:
    """A home with two small registered versions, trained once per module."""
    small = Hyperparameters(max_iter=10)
    return trained_home(
        tmp_path_factory,
        mlflow_template,
        "prometheus",
        dict(generate_rows=1_000, seed=1, hyperparameters=small),
        dict(generate_rows=1_000, seed=2, hyperparameters=small),
    )


@pytest.fixture(scope="module")
def router_url(two_versions) -> Iterator[str]:
    """The router with v1 as baseline and v2, failing half its calls, as canary at 50%."""
    backend = LocalRollout(Settings(home=two_versions))
    try:
        url = backend.start_router()
        backend.set_baseline(1)
        backend.deploy(2, fault_error_rate=FAULT_ERROR_RATE)
        backend.set_weight(0.5)
        yield url
    finally:
        backend.shutdown()


@pytest.fixture(scope="module")
def prometheus_url(prometheus_binary, router_url, tmp_path_factory) -> Iterator[str]:
    target = router_url.removeprefix("http://")
    with running_prometheus("router", {target: {}}, tmp_path_factory.mktemp("prom")) as url:
        yield url


def send_traffic(router_url: str, seconds: float) -> int:
    """Score churn rows one after another for `seconds`, sending each label back at once."""
    frame = generate_churn(500, 77)
    labels = frame.pop("churn").tolist()
    rows = frame.to_dict("records")
    sent = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            index = sent % len(rows)
            answer = client.post(f"{router_url}/predict", json=rows[index])
            assert answer.status_code == 200, answer.text
            request_id = answer.json()["request_id"]
            client.post(
                f"{router_url}/feedback", json={"request_id": request_id, "label": labels[index]}
            )
            sent += 1
    return sent


@pytest.fixture(scope="module")
def observed(router_url, prometheus_url) -> dict[str, dict]:
    """One window of traffic, read through Prometheus (all jobs, the router's job, another
    job) and through the router's own samples."""
    sources = {
        "prometheus": PrometheusMetrics(prometheus_url),
        "router_job": PrometheusMetrics(prometheus_url, matchers='job="router"'),
        "other_job": PrometheusMetrics(prometheus_url, matchers='job="elsewhere"'),
        "router": RouterMetrics(router_url),
    }
    for source in sources.values():
        source.mark()
    sent = send_traffic(router_url, TRAFFIC_SECONDS)
    assert sent > 200, f"only {sent} requests in {TRAFFIC_SECONDS} s"
    time.sleep(sources["prometheus"].window_seconds + 1.5)
    return {name: source.collect() for name, source in sources.items()}


def test_per_interval_values_match_what_the_router_saw(observed):
    values, samples = observed["prometheus"], observed["router"]
    assert set(values) == {"baseline", "canary"}
    for variant in values:
        assert set(values[variant]) == METRICS
        for name, series in values[variant].items():
            assert series.dtype == float and np.isfinite(series).all(), (variant, name)
            assert 4 <= series.size <= TRAFFIC_SECONDS / 2 + 1, (variant, name, series)

    assert (values["baseline"]["error"] == 0).all()
    assert 0.3 <= np.median(values["canary"]["error"]) <= 0.7
    assert np.mean(samples["canary"]["error"]) == pytest.approx(FAULT_ERROR_RATE, abs=0.1)
    assert np.mean(values["canary"]["error"]) == pytest.approx(
        np.mean(samples["canary"]["error"]), abs=0.1
    )
    for variant in values:
        latency = np.mean(values[variant]["latency_ms"])
        assert latency == pytest.approx(np.mean(samples[variant]["latency_ms"]), rel=0.5)
        brier = values[variant]["brier"]
        assert ((brier >= 0) & (brier <= 1)).all()
        assert np.mean(brier) == pytest.approx(np.mean(samples[variant]["brier"]), abs=0.05)


def test_label_matchers_pick_the_router_or_nothing(observed):
    for variant, metrics in observed["router_job"].items():
        for name, series in metrics.items():
            everything = observed["prometheus"][variant][name]
            assert abs(series.size - everything.size) <= 1, (variant, name)
            assert np.median(series) == pytest.approx(np.median(everything), rel=0.05, abs=1e-3)
    for metrics in observed["other_job"].values():
        assert all(series.size == 0 for series in metrics.values())


def test_the_judge_reads_interval_error_ratios_as_continuous(observed):
    values = observed["prometheus"]
    verdicts = {
        m.name: m
        for m in judge(values["canary"], values["baseline"], interval_canary_metrics(4)).metrics
    }
    assert verdicts["error"].classification == "high", verdicts["error"].reason
    assert verdicts["error"].effect == pytest.approx(FAULT_ERROR_RATE, abs=0.2)

    binary = judge(values["canary"], values["baseline"], canary_metrics(4))
    error = next(m for m in binary.metrics if m.name == "error")
    assert error.classification == "nodata" and "binary" in error.reason


def test_intervals_without_traffic_are_dropped_not_zero(observed, prometheus_url):
    metrics = PrometheusMetrics(prometheus_url)
    metrics.mark()
    time.sleep(2 * metrics.window_seconds + 1)
    values = metrics.collect()
    assert all(series.size == 0 for v in values.values() for series in v.values()), values

    counters = httpx.get(
        f"{prometheus_url}/api/v1/query",
        params={"query": "router_latency_seconds_count"},
        timeout=5,
    ).json()["data"]["result"]
    assert {s["metric"]["variant"] for s in counters if float(s["value"][1]) > 0} == {
        "baseline",
        "canary",
    }


def test_a_prometheus_error_answer_raises(prometheus_url):
    metrics = PrometheusMetrics(prometheus_url, matchers='job=~"("')
    metrics.mark()
    time.sleep(metrics.window_seconds + 0.5)
    with pytest.raises(MetricsError, match="bad_data"):
        metrics.collect()


def test_a_prometheus_that_goes_down_raises(prometheus_binary, router_url, tmp_path):
    target = router_url.removeprefix("http://")
    with running_prometheus("router", {target: {}}, tmp_path) as url:
        metrics = PrometheusMetrics(url)
        metrics.mark()
    time.sleep(metrics.window_seconds + 0.5)
    with pytest.raises(MetricsError, match="unavailable"):
        metrics.collect()
    with pytest.raises(MetricsError, match="unavailable"):
        metrics.mark()


def test_a_wrong_address_raises(router_url):
    with pytest.raises(MetricsError, match="unavailable"):
        PrometheusMetrics(f"http://127.0.0.1:{free_port()}").mark()
    with pytest.raises(MetricsError, match="HTTP 404"):
        PrometheusMetrics(router_url).mark()
    with pytest.raises(MetricsError, match="mark"):
        PrometheusMetrics(router_url).collect()


@pytest.fixture
def answering(request) -> Iterator[str]:
    """A loopback server answering `time()` correctly and range queries with the parametrised
    body (HTTP 200), or everything with it when `everything` is set."""
    body, everything = request.param

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            answer = body
            if not everything and not self.path.startswith("/api/v1/query_range"):
                now = time.time()
                answer = json.dumps(
                    {
                        "status": "success",
                        "data": {"resultType": "scalar", "result": [now, str(now)]},
                    }
                ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


MATRIX = '{"status": "success", "data": {"resultType": "matrix", "result": %s}}'


@pytest.mark.parametrize(
    "answering",
    [
        (b"{not json", True),
        (b'{"status": "success", "data": {"resultType": "vector", "result": []}}', True),
        (b"{not json", False),
        (b"[]", False),
        (b'{"status": "success"}', False),
        (b'{"status": "success", "data": {"resultType": "vector", "result": []}}', False),
        ((MATRIX % '[{"metric": {"variant": "canary"}, "values": [[1, "x"]]}]').encode(), False),
        ((MATRIX % '[{"metric": null, "values": []}]').encode(), False),
        ((MATRIX % '{"oops": 1}').encode(), False),
    ],
    indirect=True,
)
def test_a_malformed_answer_raises(answering):
    metrics = PrometheusMetrics(answering, step_seconds=0.05, scrape_interval_seconds=0.05)
    with pytest.raises(MetricsError):
        metrics.mark()
        time.sleep(0.2)
        metrics.collect()


def test_the_source_is_prometheus_only_when_configured(tmp_path):
    router = "http://127.0.0.1:8080"
    assert isinstance(metrics_source(Settings(home=tmp_path), router), RouterMetrics)
    configured = Settings(home=tmp_path, prometheus_url="http://127.0.0.1:9090/")
    source = metrics_source(configured, router)
    assert isinstance(source, PrometheusMetrics)
    assert source.prometheus_url == "http://127.0.0.1:9090"
