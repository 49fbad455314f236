"""The Kubernetes rollout backend: its API calls and their order, with the real client.

No Kubernetes API server can run on this machine, so the official `kubernetes` client talks to
`FakeApiServer` on 127.0.0.1, which records every request: that is the boundary tested here.
`test_rollout_end_to_end` also runs against a real cluster (the kind workflow,
.github/workflows/kind-e2e.yml) when `AGENTIC_MLOPS_K8S_E2E=1`.
"""

from __future__ import annotations

import inspect
import json
import os
import uuid

import pytest
from kubernetes import client

from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.deployments.kubernetes.manifests import GatewayRef, KubernetesServing
from agentic_mlops.serving.router import RouterState
from agentic_mlops.tasks.kubernetes_rollout import KubernetesRollout
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.rollout_protocol import RolloutBackend, ServingError
from tests.deployments.apiserver import FakeApiServer

GATEWAY = GatewayRef(name="public")


def rollout_on(server: FakeApiServer, gateway: bool, **options) -> KubernetesRollout:
    api = client.ApiClient(client.Configuration(host=server.url))
    serving = KubernetesServing(gateway=GATEWAY if gateway else None, replicas=4)
    options = {"ready_timeout": 5.0, "poll_seconds": 0.01, **options}
    return KubernetesRollout(api, serving, model_name="churn", **options)


@pytest.fixture
def server():
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture
def gateway(server) -> KubernetesRollout:
    return rollout_on(server, gateway=True)


@pytest.fixture
def replicas(server) -> KubernetesRollout:
    return rollout_on(server, gateway=False)


def route_weights(server: FakeApiServer) -> list[int]:
    route = server.get("httproutes", "churn")
    return [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]]


def version_and_pods(server: FakeApiServer, name: str) -> tuple[str, int] | None:
    deployment = server.get("deployments", name)
    if deployment is None:
        return None
    return deployment["metadata"]["labels"][k8s.VERSION_LABEL], deployment["spec"]["replicas"]


def operations(kind: type) -> dict[str, list[str]]:
    """Each public method of a class with the names of its parameters."""
    return {
        name: list(inspect.signature(member).parameters)
        for name, member in vars(kind).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize("backend", [KubernetesRollout, LocalRollout])
def test_it_offers_every_operation_of_a_rollout_backend(backend):
    wanted = operations(RolloutBackend)
    assert {"deploy", "set_weight", "promote", "rollback", "restore", "router_state"} <= set(wanted)
    offered = operations(backend)
    for name, parameters in wanted.items():
        assert name in offered, f"{backend.__name__} lacks {name}"
        assert offered[name][: len(parameters)] == parameters, name


def test_a_class_missing_an_operation_is_told_apart():
    class Partial:
        def deploy(self, version):
            return version

    assert "promote" not in operations(Partial)


def test_deploy_creates_the_canary_waits_for_it_then_routes_it_at_weight_0(server, gateway):
    backend = gateway.deploy(2)
    assert backend.version == 2
    assert backend.url == "http://churn-canary.default.svc.cluster.local:80"
    assert server.short_calls() == [
        "GET services/churn-stable",
        "POST services/churn-stable",
        "GET services/churn-canary",
        "POST services/churn-canary",
        "GET deployments/churn-stable",
        "GET deployments/churn-canary",
        "GET deployments/churn-canary",
        "POST deployments/churn-canary",
        "GET deployments/churn-canary/status",
        "GET deployments/churn-canary/status",
        "GET httproutes/churn",
        "POST httproutes/churn",
    ]
    assert route_weights(server) == [1000, 0]
    posted = next(call.body for call in server.writes() if "deployments" in call.path)
    assert k8s.validate_manifest(posted)
    assert posted["spec"]["template"]["spec"]["containers"][0]["args"][1] == "models:/churn/2"


def test_deploying_twice_writes_nothing_the_second_time(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    gateway.set_weight(0.1)
    before = len(server.calls)
    assert gateway.deploy(2).version == 2
    assert server.writes(before) == []
    assert route_weights(server) == [900, 100], "a repeated deploy keeps the canary's traffic"


def test_deploying_another_version_takes_the_old_canary_out_of_the_route_first(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    gateway.set_weight(0.5)
    before = len(server.calls)
    gateway.deploy(3)
    assert server.story(before) == [
        "PUT httproutes/churn",
        "PUT deployments/churn-canary",
        "GET deployments/churn-canary/status",
        "GET deployments/churn-canary/status",
    ]
    assert server.writes(before)[0].body["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0
    assert version_and_pods(server, "churn-canary") == ("3", 1)


def test_set_weight_checks_the_canary_then_changes_only_the_route(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    before = len(server.calls)
    state = gateway.set_weight(0.05)
    assert server.short_calls(before) == [
        "GET deployments/churn-stable",
        "GET deployments/churn-canary",
        "GET deployments/churn-canary/status",
        "GET httproutes/churn",
        "PUT httproutes/churn",
        "GET deployments/churn-stable",
        "GET deployments/churn-canary",
        "GET httproutes/churn",
    ]
    assert route_weights(server) == [950, 50]
    assert state.weight == 0.05 and state.canary.version == 2 and state.baseline.version == 1


def test_promote_updates_stable_then_routes_everything_to_it_then_deletes_the_canary(
    server, gateway
):
    gateway.set_baseline(1)
    gateway.deploy(2)
    gateway.set_weight(0.5)
    before = len(server.calls)
    state = gateway.promote()
    assert server.story(before) == [
        "PUT deployments/churn-stable",
        "GET deployments/churn-stable/status",
        "GET deployments/churn-stable/status",
        "PUT httproutes/churn",
        "DELETE deployments/churn-canary",
    ]
    stable = server.writes(before)[0].body
    assert stable["metadata"]["labels"][k8s.VERSION_LABEL] == "2"
    assert stable["spec"]["replicas"] == 4
    assert route_weights(server) == [1000, 0]
    assert state == RouterState(baseline=state.baseline, weight=0.0)
    assert state.baseline.version == 2


def test_rollback_routes_everything_to_stable_then_deletes_the_canary(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    gateway.set_weight(0.25)
    before = len(server.calls)
    state = gateway.rollback()
    assert server.story(before) == ["PUT httproutes/churn", "DELETE deployments/churn-canary"]
    assert route_weights(server) == [1000, 0]
    assert version_and_pods(server, "churn-stable") == ("1", 4)
    assert state.canary is None and state.baseline.version == 1 and state.weight == 0


def test_rollback_promote_and_zero_weight_without_a_canary_change_nothing(server, gateway):
    gateway.set_baseline(1)
    before = len(server.calls)
    gateway.rollback()
    gateway.rollback()
    gateway.promote()
    gateway.set_weight(0.0)
    assert server.writes(before) == []
    with pytest.raises(ServingError, match="no canary"):
        gateway.set_weight(0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        gateway.set_weight(1.2)


def test_rollback_on_an_empty_namespace_creates_nothing(server, gateway, replicas):
    gateway.rollback()
    replicas.rollback()
    assert server.writes() == []
    assert gateway.status().state == RouterState()


def test_a_canary_that_never_gets_ready_is_deleted_and_gets_no_traffic(server):
    server.never_ready.add("churn-canary")
    rollout = rollout_on(server, gateway=True, ready_timeout=0.2)
    rollout.set_baseline(1)
    before = len(server.calls)
    with pytest.raises(ServingError, match="churn-canary was not ready within"):
        rollout.deploy(2)
    story = server.story(before)
    assert story[0] == "POST deployments/churn-canary"
    assert story[-1] == "DELETE deployments/churn-canary"
    assert not any("httproutes" in step for step in story)
    assert server.get("deployments", "churn-canary") is None
    assert route_weights(server) == [1000, 0]


def test_a_promotion_whose_pods_never_get_ready_puts_stable_back(server):
    rollout = rollout_on(server, gateway=True, ready_timeout=0.2)
    rollout.set_baseline(1)
    rollout.deploy(2)
    rollout.set_weight(0.5)
    server.never_ready.add("churn-stable")
    before = len(server.calls)
    with pytest.raises(ServingError, match="churn-stable was not ready"):
        rollout.promote()
    puts = [call for call in server.writes(before) if call.method == "PUT"]
    assert [call.body["metadata"]["labels"][k8s.VERSION_LABEL] for call in puts] == ["2", "1"]
    assert version_and_pods(server, "churn-stable") == ("1", 4)
    assert version_and_pods(server, "churn-canary") == ("2", 1)
    assert route_weights(server) == [500, 500], "the split is left as it was"


def test_a_concurrent_change_is_read_again_before_replacing(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    server.conflict_once.add("churn")
    before = len(server.calls)
    gateway.set_weight(0.3)
    assert [call.short for call in server.calls[before:] if "httproutes" in call.path] == [
        "GET httproutes/churn",
        "PUT httproutes/churn",
        "GET httproutes/churn",
        "PUT httproutes/churn",
        "GET httproutes/churn",
    ]
    assert route_weights(server) == [700, 300]


def test_without_a_gateway_deploy_adds_a_canary_with_no_pods(server, replicas):
    replicas.set_baseline(1)
    before = len(server.calls)
    backend = replicas.deploy(2)
    assert server.story(before) == [
        "POST deployments/churn-canary",
        "GET deployments/churn-canary/status",
    ]
    assert version_and_pods(server, "churn-canary") == ("2", 0)
    assert backend.url == "http://churn.default.svc.cluster.local:80"
    assert server.get("httproutes", "churn") is None


def test_without_a_gateway_weights_move_pods_adding_before_removing(server, replicas):
    replicas.set_baseline(1)
    replicas.deploy(2)
    before = len(server.calls)
    state = replicas.set_weight(0.25)
    assert server.story(before) == [
        "PUT deployments/churn-canary",
        "GET deployments/churn-canary/status",
        "GET deployments/churn-canary/status",
        "PUT deployments/churn-stable",
        "GET deployments/churn-stable/status",
        "GET deployments/churn-stable/status",
    ]
    assert version_and_pods(server, "churn-canary") == ("2", 1)
    assert version_and_pods(server, "churn-stable") == ("1", 3)
    assert state.weight == 0.25
    before = len(server.calls)
    replicas.set_weight(0.05)
    assert server.writes(before) == [], "5% of 4 pods rounds to the 1 canary pod it has"
    replicas.set_weight(0.75)
    assert version_and_pods(server, "churn-canary") == ("2", 3)
    before = len(server.calls)
    state = replicas.set_weight(0.25)
    assert [step for step in server.story(before) if step.startswith("PUT")] == [
        "PUT deployments/churn-stable",
        "PUT deployments/churn-canary",
    ]
    assert state.weight == 0.25


def test_without_a_gateway_promote_and_rollback(server, replicas):
    replicas.set_baseline(1)
    replicas.deploy(2)
    replicas.set_weight(0.5)
    before = len(server.calls)
    state = replicas.promote()
    assert [step for step in server.story(before) if not step.endswith("/status")] == [
        "PUT deployments/churn-stable",
        "DELETE deployments/churn-canary",
    ]
    assert version_and_pods(server, "churn-stable") == ("2", 4)
    assert state.baseline.version == 2 and state.canary is None
    replicas.deploy(3)
    replicas.set_weight(0.5)
    before = len(server.calls)
    state = replicas.rollback()
    assert [step for step in server.story(before) if not step.endswith("/status")] == [
        "PUT deployments/churn-stable",
        "DELETE deployments/churn-canary",
    ]
    assert version_and_pods(server, "churn-stable") == ("2", 4)
    assert state.canary is None and state.weight == 0


def test_restore_puts_back_a_recorded_state(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    before = gateway.set_weight(0.25)
    gateway.promote()
    restored = gateway.restore(before)
    assert restored == before
    assert version_and_pods(server, "churn-stable") == ("1", 4)
    assert route_weights(server) == [750, 250]


def test_status_names_versions_addresses_and_weight(server, gateway):
    gateway.set_baseline(1)
    gateway.deploy(2)
    gateway.set_weight(0.1)
    status = gateway.status()
    assert status.servers == {
        "1": "http://churn-stable.default.svc.cluster.local:80",
        "2": "http://churn-canary.default.svc.cluster.local:80",
    }
    assert status.state.weight == 0.1
    assert status.router_url is None
    gateway.shutdown()
    gateway.shutdown()
    assert server.objects == {}


def test_every_object_sent_to_the_cluster_validates(server, gateway, replicas):
    for rollout in (gateway, replicas):
        rollout.set_baseline(1)
        rollout.deploy(2)
        rollout.set_weight(0.5)
        rollout.promote()
    for call in server.writes():
        if call.method in ("POST", "PUT"):
            k8s.validate_manifest({k: v for k, v in call.body.items() if k != "status"})


def served_share(rollout: KubernetesRollout, weight: float) -> float:
    """The canary share a weight becomes: thousandths of a route, or a share of the pods."""
    if rollout.gateway:
        return k8s.route_weights(weight)[1] / k8s.WEIGHT_TOTAL
    return k8s.replica_split(weight, rollout.serving.replicas)[1] / rollout.serving.replicas


def run_scenario(rollout: KubernetesRollout, check_serving=None) -> None:
    """The life of a canary: baseline v1, canary v2 promoted, canary v3 rolled back."""
    state = rollout.set_baseline(1)
    assert state.baseline.version == 1 and state.canary is None
    assert rollout.deploy(2).version == 2
    assert rollout.status().state.weight == 0
    state = rollout.set_weight(0.25)
    assert state.weight == served_share(rollout, 0.25) and state.canary.version == 2
    state = rollout.promote()
    assert state.baseline.version == 2 and state.canary is None and state.weight == 0
    if check_serving:
        check_serving(rollout, 2)
    rollout.deploy(3)
    rollout.deploy(3)
    assert rollout.set_weight(0.5).weight == served_share(rollout, 0.5)
    state = rollout.rollback()
    assert state.baseline.version == 2 and state.canary is None and state.weight == 0
    assert rollout.rollback() == state
    assert set(rollout.status().servers) == {"2"}
    if check_serving:
        check_serving(rollout, 2)


def healthz_through_the_api_server(rollout: KubernetesRollout, version: int) -> None:
    """Ask the stable Service's pods which version they serve, via the API server's proxy."""
    name = k8s.service_name(rollout.model_name, k8s.STABLE if rollout.gateway else None)
    answer = rollout.core.connect_get_namespaced_service_proxy_with_path(
        f"{name}:http", rollout.namespace, "healthz"
    )
    body = json.loads(answer) if isinstance(answer, str) else answer
    assert body["status"] == "ok" and str(body["version"]) == str(version)


KIND = os.environ.get("AGENTIC_MLOPS_K8S_E2E") == "1"


@pytest.mark.parametrize(
    "cluster",
    [
        "fake",
        pytest.param(
            "kind",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(
                    not KIND,
                    reason="needs a real Kubernetes cluster with the Gateway API CRDs, the "
                    "model-server image and an MLflow server holding churn v1-v3; none can run "
                    "on this machine (no container engine). .github/workflows/kind-e2e.yml "
                    "sets AGENTIC_MLOPS_K8S_E2E=1 on a kind cluster.",
                ),
            ],
        ),
    ],
)
@pytest.mark.parametrize("split", ["gateway", "replicas"])
def test_rollout_end_to_end(cluster, split):
    if cluster == "fake":
        with FakeApiServer() as server:
            run_scenario(rollout_on(server, gateway=split == "gateway"))
        return
    from agentic_mlops.tasks.kubernetes_rollout import kubernetes_api_client

    api = kubernetes_api_client()
    namespace = f"e2e-{split}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    serving = KubernetesServing(
        namespace=namespace,
        image=os.environ["AGENTIC_MLOPS_K8S_E2E_IMAGE"],
        image_pull_policy="Never",
        tracking_uri=os.environ["AGENTIC_MLOPS_K8S_E2E_TRACKING_URI"],
        replicas=2,
        gateway=GatewayRef(name="e2e") if split == "gateway" else None,
    )
    rollout = KubernetesRollout(api, serving, model_name="churn", ready_timeout=300)
    run_scenario(rollout, check_serving=healthz_through_the_api_server)
    rollout.shutdown()  # a failed run leaves its namespace to the workflow's diagnostics
    client.CoreV1Api(api).delete_namespace(namespace)
