"""Rendered manifests: every variant validates offline; broken ones do not."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.deployments.kubernetes.manifests import (
    GatewayRef,
    KubernetesServing,
    ManifestError,
    Resources,
)

KIND_NODE_VERSION = "1.32"  # the kind cluster of .github/workflows/kind-e2e.yml
LATEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
VERSIONS = [KIND_NODE_VERSION, LATEST]
GATEWAY = KubernetesServing(gateway=GatewayRef(name="public"))
FULL = KubernetesServing(
    namespace="mlops",
    image="registry.example.com/agentic-mlops/model-server:1.2.3",
    image_pull_policy="Always",
    tracking_uri="https://mlflow.example.com",
    port=9000,
    service_port=8080,
    replicas=4,
    canary_replicas=2,
    resources=Resources(cpu_request="1", memory_request="2Gi", cpu_limit="2", memory_limit="4Gi"),
    gateway=GatewayRef(name="public", namespace="gateways", section_name="https"),
    hostnames=["churn.example.com", "*.models.example.com"],
    env={"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "QUOTE": 'it\'s <fine> & "safe"'},
    secret_name="mlflow-artifacts",
)
NO_GATEWAY = KubernetesServing(replicas=4)

VARIANTS = {
    "gateway-stable-only": ("churn", GATEWAY, None, 0.0),
    "gateway-canary-at-0": ("churn", GATEWAY, 4, 0.0),
    "gateway-canary-at-5pct": ("churn", GATEWAY, 4, 0.05),
    "gateway-canary-at-100pct": ("churn", GATEWAY, 4, 1.0),
    "gateway-every-option": ("Churn_Model.v2", FULL, 4, 0.25),
    "replicas-stable-only": ("churn", NO_GATEWAY, None, 0.0),
    "replicas-canary-at-0": ("churn", NO_GATEWAY, 4, 0.0),
    "replicas-canary-at-30pct": ("churn", NO_GATEWAY, 4, 0.3),
    "replicas-canary-at-100pct": ("churn", NO_GATEWAY, 4, 1.0),
    "defaults": ("churn", None, None, 0.0),
}


def render(variant: str) -> list[dict]:
    model, serving, canary, weight = VARIANTS[variant]
    return k8s.render_manifests(model, 3, serving, canary_version=canary, canary_weight=weight)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_variant_validates(variant, version):
    for manifest in render(variant):
        checked = k8s.validate_manifest(manifest, version)
        assert version in checked


def test_variants_hold_the_objects_of_their_split():
    kinds = {v: [(m["kind"], m["metadata"]["name"]) for m in render(v)] for v in VARIANTS}
    assert kinds["gateway-canary-at-5pct"] == [
        ("Service", "churn-stable"),
        ("Service", "churn-canary"),
        ("Deployment", "churn-stable"),
        ("Deployment", "churn-canary"),
        ("HTTPRoute", "churn"),
    ]
    assert kinds["replicas-canary-at-30pct"] == [
        ("Service", "churn"),
        ("Deployment", "churn-stable"),
        ("Deployment", "churn-canary"),
    ]
    assert kinds["gateway-every-option"][-1] == ("HTTPRoute", "churn-model-v2")


def test_deployment_runs_the_model_server_with_probes_and_scrape_annotations():
    deployment = k8s.render_deployment("churn", 7, "canary", FULL)
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == FULL.image
    assert container["command"] == [
        "python",
        "-m",
        "agentic_mlops.serving.model_server",
    ]
    assert container["args"] == [
        "--model-uri",
        "models:/churn/7",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--tracking-uri",
        "https://mlflow.example.com",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * 5 >= FULL.startup_seconds
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert {"name": "QUOTE", "value": 'it\'s <fine> & "safe"'} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-artifacts"}}]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9000"
    assert pod["metadata"]["labels"][k8s.VERSION_LABEL] == "7"
    assert pod["metadata"]["labels"][k8s.TRACK_LABEL] == "canary"
    assert k8s.VERSION_LABEL not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] == FULL.canary_replicas


def test_route_weights_and_gateway_reference():
    route = k8s.render_route("churn", FULL, 0.05)
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gateways",
            "sectionName": "https",
        }
    ]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["port"], r["weight"]) for r in refs] == [
        ("churn-stable", 8080, 950),
        ("churn-canary", 8080, 50),
    ]


def test_a_value_cannot_change_the_structure_of_a_manifest():
    serving = KubernetesServing(image='x"\nkind: Secret\nstringData: {a: b}')
    deployment = k8s.render_deployment("churn", 1, "stable", serving)
    assert deployment["kind"] == "Deployment"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == serving.image


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (0.0, (1000, 0)),
        (0.05, (950, 50)),
        (0.0004, (1000, 0)),
        (0.0005, (999, 1)),
        (1.0, (0, 1000)),
    ],
)
def test_route_weights_round_half_up_to_a_thousandth(weight, expected):
    assert k8s.route_weights(weight) == expected


@pytest.mark.parametrize(
    ("weight", "total", "expected"),
    [
        (0.0, 4, (4, 0)),
        (0.05, 4, (3, 1)),
        (0.25, 4, (3, 1)),
        (0.375, 4, (2, 2)),
        (0.6, 4, (2, 2)),
        (0.95, 4, (1, 3)),
        (1.0, 4, (0, 4)),
        (0.5, 2, (1, 1)),
        (0.15, 10, (8, 2)),
        (1.0, 1, (0, 1)),
        (0.0, 1, (1, 0)),
    ],
)
def test_replica_split_rounds_half_up_and_keeps_both_tracks_alive(weight, total, expected):
    assert k8s.replica_split(weight, total) == expected


def test_replica_split_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="at least 2 pods"):
        k8s.replica_split(0.5, 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        k8s.replica_split(1.5, 4)
    with pytest.raises(ValueError, match="canary version"):
        k8s.render_manifests("churn", 1, canary_weight=0.1)


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [("churn", "churn"), ("Churn_Model.v2", "churn-model-v2"), ("2024 churn", "m-2024-churn")],
)
def test_object_names_follow_dns_rules(model_name, expected):
    assert k8s.object_name(model_name) == expected
    assert len(k8s.object_name("x" * 200) + "-canary") <= 63
    with pytest.raises(ManifestError):
        k8s.object_name("___")


def test_write_manifests_writes_one_valid_file_per_object(tmp_path):
    paths = k8s.write_manifests("churn", 3, tmp_path / "out", GATEWAY, canary_version=4)
    names = [path.name for path in paths]
    assert names == [
        "service-churn-stable.yaml",
        "service-churn-canary.yaml",
        "deployment-churn-stable.yaml",
        "deployment-churn-canary.yaml",
        "httproute-churn.yaml",
    ]
    rendered = k8s.render_manifests("churn", 3, GATEWAY, canary_version=4)
    for path, manifest in zip(paths, rendered, strict=True):
        text = path.read_text()
        assert text.startswith("# Rendered by agentic-mlops")
        assert yaml.safe_load(text) == manifest
        k8s.validate_manifest(yaml.safe_load(text))
        assert (
            kubernetes_validate.validate_file(str(path), k8s.KUBERNETES_VERSION, True, True, True)
            == 0
        )


def test_write_manifests_writes_nothing_when_one_manifest_is_invalid(tmp_path):
    with pytest.raises(ManifestError, match="has no image"):
        k8s.write_manifests("churn", 3, tmp_path / "out", KubernetesServing(image=""))
    assert not (tmp_path / "out").exists()


def _deployment() -> dict:
    return k8s.render_deployment("churn", 3, "stable", FULL)


def _container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def _break(change) -> dict:
    manifest = _deployment()
    change(manifest)
    return manifest


BROKEN_DEPLOYMENTS = {
    "container without a name": (
        lambda m: _container(m).pop("name"),
        "'name' is a required property",
    ),
    "probe port of the wrong type": (
        lambda m: _container(m)["readinessProbe"]["httpGet"].update(port=[8080]),
        "readinessProbe.httpGet.port",
    ),
    "replicas as text": (lambda m: m["spec"].update(replicas="two"), "spec.replicas"),
    "misspelt field": (
        lambda m: _container(m).update(livenesProbe={"httpGet": {"port": "http"}}),
        "livenesProbe",
    ),
    "container without an image": (lambda m: _container(m).pop("image"), "has no image"),
    "probe on an undeclared port": (
        lambda m: _container(m)["livenessProbe"]["httpGet"].update(port="metrics"),
        "livenessProbe uses port 'metrics'",
    ),
    "probe port out of range": (
        lambda m: _container(m)["startupProbe"]["httpGet"].update(port=70000),
        "outside 1-65535",
    ),
    "upper-case name": (lambda m: m["metadata"].update(name="Churn-Stable"), "metadata.name"),
    "selector not matching the pods": (
        lambda m: m["spec"]["selector"]["matchLabels"].update({k8s.TRACK_LABEL: "canary"}),
        "does not select the pod template",
    ),
    "label value too long": (
        lambda m: m["metadata"]["labels"].update(team="x" * 64),
        "not a valid label value",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_DEPLOYMENTS))
def test_a_broken_deployment_fails_validation(case):
    change, message = BROKEN_DEPLOYMENTS[case]
    with pytest.raises(ManifestError, match="Deployment/") as error:
        k8s.validate_manifest(_break(change))
    assert message in str(error.value)


def _route() -> dict:
    return k8s.render_route("churn", FULL, 0.25)


def _backend(route: dict, index: int = 1) -> dict:
    return route["spec"]["rules"][0]["backendRefs"][index]


BROKEN_ROUTES = {
    "negative weight": (lambda r: _backend(r).update(weight=-1), "-1 is less than the minimum"),
    "weight above the CRD maximum": (
        lambda r: _backend(r).update(weight=1_000_001),
        "greater than the maximum",
    ),
    "Service backend without a port": (lambda r: _backend(r).pop("port"), "'port' is a required"),
    "unknown backend field": (lambda r: _backend(r).update(weigth=5), "weigth"),
    "no parent": (lambda r: r["spec"].update(parentRefs=[]), "should be non-empty"),
    "relative path prefix": (
        lambda r: r["spec"]["rules"][0]["matches"][0]["path"].update(value="predict"),
        "does not match '^/'",
    ),
    "wildcard in the middle of a hostname": (
        lambda r: r["spec"].update(hostnames=["churn.*.example.com"]),
        "hostnames.0",
    ),
    "unknown metadata field": (lambda r: r["metadata"].update(labelz={}), "labelz"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ROUTES))
def test_a_broken_httproute_fails_validation(case):
    change, message = BROKEN_ROUTES[case]
    route = copy.deepcopy(_route())
    change(route)
    with pytest.raises(ManifestError, match="HTTPRoute/churn") as error:
        k8s.validate_manifest(route)
    assert message in str(error.value)


def test_a_broken_service_fails_validation():
    service = k8s.render_services("churn", GATEWAY)[0]
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(ManifestError, match="spec.ports.0.port"):
        k8s.validate_manifest(service)
    service = k8s.render_services("churn", GATEWAY)[0]
    service["metadata"]["name"] = "1-churn"
    with pytest.raises(ManifestError, match="not a valid Service name"):
        k8s.validate_manifest(service)


def test_a_kind_without_a_schema_is_refused():
    with pytest.raises(ManifestError, match="Couldn't find schema"):
        k8s.validate_manifest({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
