"""`agentic-mlops canary` with `serving_backend=kubernetes`: the same canary flow, against the
Kubernetes API.

No cluster can run here, so the boundary is the API server: the real `kubernetes` client,
configured from a kubeconfig file, talks to `FakeApiServer` on 127.0.0.1. What the cluster's
pods would do is played by real processes on loopback: the model server of each track (the
same `agentic_mlops.serving.model_server` the image runs), a real Prometheus scraping them with
the `track` label a cluster's scrape config adds, and customers split between the tracks by the
weights of the HTTPRoute the flow wrote, as the Gateway would split them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agentic_mlops.cli import app
from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.serving.router import Backend, RouterState
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, promotion, registry, rollout
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.kubernetes_rollout import KubernetesRollout
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import trained_home
from tests.deployments.apiserver import FakeApiServer
from tests.prometheus import running_prometheus

runner = CliRunner()
FAST = Hyperparameters(max_iter=60)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, mlflow_template) -> Path:
    """Champion v1 and a challenger v2 as good as it (the same recipe on the same rows)."""
    return trained_home(
        tmp_path_factory,
        mlflow_template,
        "kubernetes-canary",
        dict(generate_rows=2_000, seed=1, hyperparameters=FAST),
        dict(generate_rows=2_000, seed=1, hyperparameters=FAST),
    )


@pytest.fixture
def cluster(two_versions, tmp_path, monkeypatch) -> Iterator[tuple[Settings, FakeApiServer]]:
    """A home copy whose settings choose the kubernetes backend with a Gateway, and the API
    server its kubeconfig points at."""
    root = tmp_path / "home"
    shutil.copytree(two_versions, root, ignore=shutil.ignore_patterns("serving"))
    with FakeApiServer(ready_after=1) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {server.url}\n"
            "users:\n- name: fake\n  user:\n    token: not-a-secret\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        )
        for name, value in {
            "KUBECONFIG": str(kubeconfig),
            "AGENTIC_MLOPS_HOME": str(root),
            "AGENTIC_MLOPS_SERVING_BACKEND": "kubernetes",
            "AGENTIC_MLOPS_KUBERNETES_GATEWAY": "public",
            "AGENTIC_MLOPS_KUBERNETES_POLL_SECONDS": "0.01",
            "AGENTIC_MLOPS_KUBERNETES_READY_TIMEOUT_SECONDS": "10",
            "AGENTIC_MLOPS_CANARY_POLL_SECONDS": "0.5",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield Settings(), server


@contextmanager
def pods_and_gateway(settings: Settings, server: FakeApiServer, canary_faults: dict, folder):
    """The tracks' model servers (v1 stable, v2 canary), Prometheus scraping them, and
    customers sent to either as the HTTPRoute's weights say; yields the counts per track."""
    pods = LocalRollout(settings)
    tracks = {
        k8s.STABLE: pods.serve_version(1),
        k8s.CANARY: pods.serve_version(2, **canary_faults),
    }
    stop = threading.Event()
    counts = {k8s.STABLE: 0, k8s.CANARY: 0}
    rows = generate_churn(500, 77).drop(columns=["churn"]).to_dict("records")

    def customers() -> None:
        with httpx.Client(timeout=10) as client:
            sent = 0
            while not stop.is_set():
                route = server.get("httproutes", "churn")
                weights = (
                    [r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]]
                    if (route)
                    else [1, 0]
                )
                canary_share = weights[1] / sum(weights) if sum(weights) else 0.0
                track = k8s.CANARY if (sent * 0.618) % 1 < canary_share else k8s.STABLE
                client.post(f"{tracks[track].url}/predict", json=rows[sent % len(rows)])
                counts[track] += 1
                sent += 1
                time.sleep(0.005)

    targets = {
        backend.url.removeprefix("http://"): {"track": track} for track, backend in tracks.items()
    }
    try:
        with running_prometheus("model-server", targets, folder) as url:
            thread = threading.Thread(target=customers, daemon=True)
            thread.start()
            try:
                yield url, counts
            finally:
                stop.set()
                thread.join(timeout=10)
    finally:
        pods.shutdown()


def canary_on_the_cli(monkeypatch, prometheus_url: str) -> dict:
    monkeypatch.setenv("AGENTIC_MLOPS_PROMETHEUS_URL", prometheus_url)
    result = runner.invoke(
        app, ["canary", "--version", "2", "--steps", "50,100", "--step-seconds", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_canary_flow_promotes_through_the_kubernetes_api(cluster, monkeypatch, tmp_path):
    settings, server = cluster
    with pods_and_gateway(settings, server, {}, tmp_path / "prom") as (prometheus, counts):
        rollout.rollout_backend(settings).set_baseline(1)
        result = canary_on_the_cli(monkeypatch, prometheus)
    assert result["outcome"] == "promoted", result
    assert counts[k8s.CANARY] > 50, counts
    assert registry.alias_version("churn", registry.CHAMPION, settings) == 2
    story = server.story()
    assert "POST deployments/churn-canary" in story and "DELETE deployments/churn-canary" in story
    weights = [
        [ref["weight"] for ref in call.body["spec"]["rules"][0]["backendRefs"]]
        for call in server.writes()
        if call.short.startswith(("PUT httproutes", "POST httproutes"))
    ]
    assert [500, 500] in weights and weights[-1] == [1000, 0], weights
    stable = server.get("deployments", "churn-stable")
    assert stable["metadata"]["labels"][k8s.VERSION_LABEL] == "2"
    assert server.get("deployments", "churn-canary") is None
    assert promotion.read_journal(settings) is None
    steps = ledger.list_decisions("churn", decision_point="canary_promotion", settings=settings)
    assert steps and steps[0].evidence["judge"]["metrics"], "judged on the model servers' series"
    judged = {m["name"] for m in steps[0].evidence["judge"]["metrics"]}
    assert judged == {"error", "latency_ms", "latency_regression_ms"}


@pytest.mark.slow
def test_a_failing_canary_on_kubernetes_is_rolled_back(cluster, monkeypatch, tmp_path):
    settings, server = cluster
    faults = {"fault_error_rate": 0.3}
    with pods_and_gateway(settings, server, faults, tmp_path / "prom") as (prometheus, _):
        rollout.rollout_backend(settings).set_baseline(1)
        result = canary_on_the_cli(monkeypatch, prometheus)
    assert result["outcome"] == "rolled_back", result
    assert registry.alias_version("churn", registry.CHAMPION, settings) == 1
    assert server.get("deployments", "churn-canary") is None
    stable = server.get("deployments", "churn-stable")
    assert stable["metadata"]["labels"][k8s.VERSION_LABEL] == "1"
    route = server.get("httproutes", "churn")
    assert [r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]] == [1000, 0]


def test_without_prometheus_the_kubernetes_canary_fails_before_deploying(cluster):
    settings, server = cluster
    rollout.rollout_backend(settings).set_baseline(1)
    result = runner.invoke(app, ["canary", "--version", "2", "--steps", "50,100"])
    assert result.exit_code == 1 and "AGENTIC_MLOPS_PROMETHEUS_URL" in result.output
    assert server.get("deployments", "churn-canary") is None
    assert registry.alias_version("churn", registry.CHAMPION, settings) == 1


def test_an_interrupted_promotion_on_kubernetes_is_undone(cluster):
    settings, server = cluster
    backend = rollout.rollout_backend(settings)
    before = backend.set_baseline(1)
    promotion.write_journal(
        promotion.PromotionJournal(
            model_name="churn", version=2, previous_champion=1, router_before=before
        ),
        settings,
    )
    registry.move_champion_alias("churn", 2, settings)
    backend.deploy(2)
    backend.promote()  # killed here: alias and stable moved, the journal left behind
    assert backend.router_state().baseline.version == 2
    repaired = promotion.reconcile("churn", settings)
    assert repaired and "v2" in repaired
    assert backend.router_state().baseline.version == 1
    assert registry.alias_version("churn", registry.CHAMPION, settings) == 1
    assert promotion.read_journal(settings) is None
    assert promotion.reconcile("churn", settings) is None, "nothing left to repair"


def test_the_backend_is_chosen_by_the_settings(cluster, tmp_path):
    settings, _ = cluster
    chosen = rollout.rollout_backend(settings)
    assert isinstance(chosen, KubernetesRollout)
    assert chosen.gateway and chosen.namespace == "default" and chosen.poll_seconds == 0.01
    local = rollout.rollout_backend(settings.model_copy(update={"serving_backend": "local"}))
    assert isinstance(local, LocalRollout)
    with pytest.raises(ValueError, match=r"serving\.backend"):
        Settings(serving_backend="docker")


def test_a_cluster_that_serves_nothing_is_told(cluster):
    settings, server = cluster
    backend = rollout.rollout_backend(settings)
    assert "no stable Deployment" in rollout.why_no_canary(settings)
    assert not backend.is_serving() and backend.router_url() is None
    backend.set_baseline(1)
    assert rollout.why_no_canary(settings) is None and backend.is_serving()
    assert backend.router_state() == RouterState(
        baseline=Backend(url="http://churn-stable.default.svc.cluster.local:80", version=1)
    )


@pytest.mark.slow
def test_serve_on_kubernetes_applies_the_champion_and_leaves_it_serving(cluster):
    settings, server = cluster
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0 and "on Kubernetes" in result.output, result.output
    stable = server.get("deployments", "churn-stable")
    assert stable["metadata"]["labels"][k8s.VERSION_LABEL] == "1"
    assert server.get("httproutes", "churn") is not None

    server.never_ready.add("churn-stable")
    registry.move_champion_alias("churn", 2, settings)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1 and "not ready" in result.output, result.output
    stable = server.get("deployments", "churn-stable")
    assert stable["metadata"]["labels"][k8s.VERSION_LABEL] == "1", "put back, not deleted"
