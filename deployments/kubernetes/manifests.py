"""Kubernetes manifests of the model server: rendered from templates, validated offline.

A model is served on two tracks, `stable` and `canary`, each a Deployment of the MLflow model
server (`serving/model_server.py`) probed on `/healthz` and scraped on `/metrics`.
Traffic is split in one of two ways:

- **with a Gateway** (`KubernetesServing.gateway` set): one Service per track and a Gateway API
  v1 `HTTPRoute` whose backend weights, out of `WEIGHT_TOTAL`, give the canary its share;
- **without one**: both tracks behind one Service, so the canary's share is its share of the
  ready pods (`replica_split`).

The templates (`*.yaml.j2` beside this module) are plain YAML in which every inserted value
goes through Jinja's `tojson`, so no value can change a document's structure. Every manifest
passes `validate_manifest` before it is written or applied: core kinds against the official
Kubernetes JSON schemas that `kubernetes-validate` ships (strict: an unknown field is an error),
the HTTPRoute against `httproute-gateway.networking.k8s.io-v1.json` (a subset of the Gateway API
CRD, never looser), and every kind against the API server's rules that no schema expresses
(names, label syntax, selector and template labels, images, probe ports).
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import jinja2
import jsonschema
import kubernetes_validate
import yaml
from packaging.version import Version
from pydantic import BaseModel, Field, field_validator
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE
HTTPROUTE_SCHEMA = HERE / "httproute-gateway.networking.k8s.io-v1.json"
KUBERNETES_VERSION = "1.37"
GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
WEIGHT_TOTAL = 1000
STABLE, CANARY = "stable", "canary"
Track = Literal["stable", "canary"]
MODEL_LABEL = "agentic-mlops.io/model"
VERSION_LABEL = "agentic-mlops.io/version"
TRACK_LABEL = "agentic-mlops.io/track"
MODEL_URI_ANNOTATION = "agentic-mlops.io/model-uri"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LONGEST_SUFFIX = len("-canary")


class ManifestError(ValueError):
    """A manifest that the Kubernetes API server would refuse."""


class GatewayRef(BaseModel):
    """The Gateway that the model's HTTPRoute attaches to."""

    name: str = Field(description="Name of the Gateway.")
    namespace: str | None = Field(
        default=None, description="Namespace of the Gateway; default the route's own."
    )
    section_name: str | None = Field(
        default=None, description="Listener of the Gateway to attach to; default all."
    )

    @field_validator("name")
    @classmethod
    def _a_gateway_name(cls, name: str) -> str:
        """A Gateway's name is a DNS subdomain, as every Kubernetes object's; the route's
        schema alone would take any string and attach to nothing."""
        if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            raise ValueError(
                f"gateway {name!r} is not a Kubernetes object name "
                "(lower-case letters, digits, '-' and '.')"
            )
        return name


class Resources(BaseModel):
    """CPU and memory of one model server container."""

    cpu_request: str = Field(default="250m", description="CPU reserved for one pod.")
    memory_request: str = Field(default="512Mi", description="Memory reserved for one pod.")
    cpu_limit: str | None = Field(
        default=None, description="CPU ceiling; none by default, so a pod is never throttled."
    )
    memory_limit: str | None = Field(
        default="1Gi", description="Memory ceiling: above it the pod is killed and restarted."
    )

    def as_manifest(self) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        manifest = {"requests": requests, "limits": {k: v for k, v in limits.items() if v}}
        return {key: value for key, value in manifest.items() if value}


class KubernetesServing(BaseModel):
    """How a model's servers run on Kubernetes: the same for every version of the model."""

    namespace: str = Field(default="default", description="Namespace of every object.")
    image: str = Field(
        default="agentic-mlops-model-server:0.1.0",
        description="Image with agentic-mlops installed (deployments/kubernetes/Dockerfile).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    tracking_uri: str = Field(
        default="http://mlflow:5000",
        description="MLflow tracking URI as the pods reach it (not the one of this machine).",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Model server's container port.")
    service_port: int = Field(default=80, ge=1, le=65535, description="Port of the Services.")
    replicas: int = Field(
        default=2,
        ge=1,
        description="Pods of the stable track; without a Gateway, pods of both tracks together.",
    )
    canary_replicas: int = Field(
        default=1, ge=1, description="Pods of the canary track when a Gateway splits traffic."
    )
    resources: Resources = Field(default_factory=Resources)
    gateway: GatewayRef | None = Field(
        default=None,
        description="Gateway to route through; none splits traffic by replica counts.",
    )
    hostnames: list[str] = Field(
        default_factory=list, description="Hostnames the HTTPRoute answers; default any."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment of the model server."
    )
    secret_name: str | None = Field(
        default=None,
        description="Secret whose keys become environment variables (artifact-store "
        "credentials such as AWS_ACCESS_KEY_ID), so that no secret is ever rendered.",
    )
    startup_seconds: int = Field(
        default=300, ge=10, description="Longest a pod may take to load and warm its model."
    )
    progress_deadline_seconds: int = Field(
        default=600, ge=30, description="Kubernetes marks a rollout failed after this long."
    )


def object_name(model_name: str) -> str:
    """The model's name as Kubernetes object names and label values allow it.

    Lower case, runs of other characters replaced by `-`, starting with a letter (Service names
    are DNS-1035 labels) and short enough for the longest suffix (`-canary`) to fit in 63.
    """
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not name:
        raise ManifestError(f"model name {model_name!r} has no letter or digit to name objects by")
    if not name[0].isalpha():
        name = f"m-{name}"
    return name[: 63 - LONGEST_SUFFIX].rstrip("-")


def deployment_name(model_name: str, track: Track) -> str:
    return f"{object_name(model_name)}-{track}"


def service_name(model_name: str, track: Track | None) -> str:
    """The Service of one track (behind a Gateway), or of both (`track=None`)."""
    return f"{object_name(model_name)}-{track}" if track else object_name(model_name)


def route_name(model_name: str) -> str:
    return object_name(model_name)


def selector(model_name: str, track: Track | None = None) -> dict[str, str]:
    """Labels that select the pods of a model, of one track or of both."""
    chosen = {"app.kubernetes.io/name": "model-server", MODEL_LABEL: object_name(model_name)}
    if track:
        chosen[TRACK_LABEL] = track
    return chosen


def labels(model_name: str, track: Track | None = None, version: int | None = None) -> dict:
    """The labels of an object: what it is, which model, track and version it serves."""
    result = {
        **selector(model_name, track),
        "app.kubernetes.io/part-of": "agentic-mlops",
        "app.kubernetes.io/managed-by": "agentic-mlops",
    }
    if version is not None:
        result[VERSION_LABEL] = str(version)
        result["app.kubernetes.io/version"] = str(version)
    return result


def _half_up(value: float) -> int:
    return math.floor(round(value, 9) + 0.5)


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a canary weight is a share between 0 and 1, not {weight}")


def route_weights(weight: float) -> tuple[int, int]:
    """HTTPRoute weights (stable, canary) out of `WEIGHT_TOTAL` for a canary share.

    The canary's weight is rounded half up to the nearest 1/1000 (0.0004 -> 0, 0.0005 -> 1).
    """
    _check_weight(weight)
    canary = _half_up(weight * WEIGHT_TOTAL)
    return WEIGHT_TOTAL - canary, canary


def replica_split(weight: float, total: int) -> tuple[int, int]:
    """Pods (stable, canary) out of `total` whose ratio comes nearest a canary share.

    The canary's pods are `weight * total` rounded half up, then kept within reach of the
    share asked for: a share above 0 gets at least one canary pod (the canary is tested), a
    share below 1 keeps at least one stable pod (the stable track keeps serving). A share
    strictly between 0 and 1 therefore needs `total >= 2`. The share served is then
    `canary / total`: with 4 pods, 5% becomes 25% and 60% becomes 50%.

    Raises:
        ValueError: the share is outside [0, 1], or between 0 and 1 with fewer than 2 pods.
    """
    _check_weight(weight)
    if total < 1:
        raise ValueError(f"a split needs at least one pod, not {total}")
    if 0 < weight < 1 and total < 2:
        raise ValueError(
            f"a canary share of {weight} needs at least 2 pods to split by replica counts"
        )
    canary = _half_up(weight * total)
    if weight > 0:
        canary = max(canary, 1)
    if weight < 1:
        canary = min(canary, total - 1)
    return total - canary, canary


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _render(template: str, **values: Any) -> dict[str, Any]:
    return yaml.safe_load(_templates().get_template(template).render(**values))


def render_deployment(
    model_name: str,
    version: int,
    track: Track,
    serving: KubernetesServing | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The Deployment of one track serving `models:/<model_name>/<version>`.

    Args:
        model_name: Registered model name in MLflow.
        version: Registered model version the track serves.
        track: `stable` or `canary`.
        serving: Image, tracking URI, resources and the other knobs; defaults otherwise.
        replicas: Pods; default `serving.replicas` (stable) or `serving.canary_replicas`.

    Returns:
        The manifest as a dict.
    """
    serving = serving or KubernetesServing()
    if replicas is None:
        replicas = serving.replicas if track == STABLE else serving.canary_replicas
    return _render(
        "deployment.yaml.j2",
        name=deployment_name(model_name, track),
        namespace=serving.namespace,
        labels=labels(model_name, track, version),
        selector=selector(model_name, track),
        model_uri=f"models:/{model_name}/{version}",
        replicas=replicas,
        image=serving.image,
        image_pull_policy=serving.image_pull_policy,
        tracking_uri=serving.tracking_uri,
        port=serving.port,
        env=serving.env,
        secret_name=serving.secret_name,
        resources=serving.resources.as_manifest(),
        startup_failure_threshold=math.ceil(serving.startup_seconds / 5),
        progress_deadline_seconds=serving.progress_deadline_seconds,
    )


def render_services(model_name: str, serving: KubernetesServing | None = None) -> list[dict]:
    """One Service per track behind a Gateway; else one Service over both tracks."""
    serving = serving or KubernetesServing()
    tracks: list[Track | None] = [STABLE, CANARY] if serving.gateway else [None]
    return [
        _render(
            "service.yaml.j2",
            name=service_name(model_name, track),
            namespace=serving.namespace,
            labels=labels(model_name, track),
            selector=selector(model_name, track),
            service_port=serving.service_port,
        )
        for track in tracks
    ]


def render_route(
    model_name: str, serving: KubernetesServing, canary_weight: float = 0.0
) -> dict[str, Any]:
    """The HTTPRoute sending `canary_weight` of the traffic to the canary's Service."""
    if serving.gateway is None:
        raise ValueError("an HTTPRoute needs a Gateway to attach to (serving.gateway)")
    stable, canary = route_weights(canary_weight)
    return _render(
        "httproute.yaml.j2",
        name=route_name(model_name),
        namespace=serving.namespace,
        labels=labels(model_name),
        gateway=serving.gateway,
        hostnames=serving.hostnames,
        service_port=serving.service_port,
        weight_total=WEIGHT_TOTAL,
        backends=[
            {"service": service_name(model_name, STABLE), "weight": stable},
            {"service": service_name(model_name, CANARY), "weight": canary},
        ],
    )


def render_manifests(
    model_name: str,
    version: int,
    serving: KubernetesServing | None = None,
    *,
    canary_version: int | None = None,
    canary_weight: float = 0.0,
) -> list[dict[str, Any]]:
    """Every object of a model's serving: Deployments, Services and, with a Gateway, the route.

    Args:
        model_name: Registered model name in MLflow.
        version: Version of the stable track.
        serving: Image, namespace, tracking URI, resources, replicas, Gateway; defaults otherwise.
        canary_version: Version of the canary track, if there is one.
        canary_weight: The canary's share of the traffic, 0 to 1.

    Returns:
        The manifests in the order they can be applied.

    Raises:
        ValueError: a canary weight above 0 without a canary version, or a weight that cannot be
            split by replica counts (see `replica_split`).
    """
    serving = serving or KubernetesServing()
    _check_weight(canary_weight)
    if canary_weight > 0 and canary_version is None:
        raise ValueError("a canary weight above 0 needs a canary version")
    manifests = render_services(model_name, serving)
    if serving.gateway:
        manifests.append(render_deployment(model_name, version, STABLE, serving))
        if canary_version is not None:
            manifests.append(render_deployment(model_name, canary_version, CANARY, serving))
        manifests.append(render_route(model_name, serving, canary_weight))
        return manifests
    stable, canary = (
        replica_split(canary_weight, serving.replicas)
        if canary_version is not None
        else (serving.replicas, 0)
    )
    manifests.append(render_deployment(model_name, version, STABLE, serving, stable))
    if canary_version is not None:
        manifests.append(render_deployment(model_name, canary_version, CANARY, serving, canary))
    return manifests


def _shipped_schema_version(kubernetes_version: str) -> str:
    """The newest schema version kubernetes-validate ships that is not newer than asked."""
    wanted = Version(kubernetes_version.removeprefix("v"))
    wanted = Version(f"{wanted.major}.{wanted.minor}")
    shipped = [
        version
        for version in kubernetes_validate.utils.all_versions()
        if Version(".".join(version.split(".")[:2])) <= wanted
    ]
    if not shipped:
        raise ManifestError(f"kubernetes-validate ships no schemas for {kubernetes_version}")
    return shipped[-1]


@cache
def _httproute_validator(kubernetes_version: str) -> jsonschema.protocols.Validator:
    shipped = _shipped_schema_version(kubernetes_version)
    definitions = json.loads(
        files("kubernetes_validate")
        .joinpath(f"kubernetes-json-schema/v{shipped}-local-strict/_definitions.json")
        .read_text()
    )
    schema = json.loads(HTTPROUTE_SCHEMA.read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _label_problems(where: str, values: dict[str, str] | None) -> list[str]:
    problems = []
    for key, value in (values or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or not (
            len(name) <= 63 and LABEL_NAME.match(name)
        ):
            problems.append(f"{where}: {key!r} is not a valid label key")
        if not isinstance(value, str) or (
            value and not (len(value) <= 63 and LABEL_NAME.match(value))
        ):
            problems.append(f"{where}: {key}={value!r} is not a valid label value")
    return problems


def _probe_problems(container: dict[str, Any]) -> list[str]:
    declared = {port.get("name") for port in container.get("ports") or []}
    problems = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
        if port is None:
            continue
        if isinstance(port, str) and port not in declared:
            problems.append(f"{probe} uses port {port!r}, which the container does not name")
        if isinstance(port, int) and not 1 <= port <= 65535:
            problems.append(f"{probe} uses port {port}, outside 1-65535")
    return problems


def api_server_problems(manifest: dict[str, Any]) -> list[str]:
    """What the API server would refuse that no JSON schema says: names, labels, pods.

    Checked: object names (DNS-1123 subdomain; DNS-1035 label for Services) and namespaces;
    label keys and values; a Deployment's selector matching its pod template; every
    container having an image; container ports in range; probes naming a declared port.
    """
    problems = []
    metadata = manifest.get("metadata") or {}
    name, kind = metadata.get("name") or "", manifest.get("kind")
    pattern, limit = (DNS_1035_LABEL, 63) if kind == "Service" else (DNS_SUBDOMAIN, 253)
    if not (len(name) <= limit and pattern.match(name)):
        problems.append(f"metadata.name {name!r} is not a valid {kind} name")
    namespace = metadata.get("namespace")
    if namespace is not None and not (len(namespace) <= 63 and DNS_LABEL.match(namespace)):
        problems.append(f"metadata.namespace {namespace!r} is not a valid namespace")
    problems += _label_problems("metadata.labels", metadata.get("labels"))
    spec = manifest.get("spec") or {}
    if kind == "Service":
        problems += _label_problems("spec.selector", spec.get("selector"))
    if kind == "Deployment":
        pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        problems += _label_problems("spec.template.metadata.labels", pod_labels)
        if not wanted or any(pod_labels.get(key) != value for key, value in wanted.items()):
            problems.append("spec.selector.matchLabels does not select the pod template")
        for container in ((spec.get("template") or {}).get("spec") or {}).get("containers") or []:
            where = f"container {container.get('name')!r}"
            if not container.get("image"):
                problems.append(f"{where} has no image")
            for port in container.get("ports") or []:
                if not 1 <= port.get("containerPort", 0) <= 65535:
                    problems.append(f"{where}: containerPort outside 1-65535")
            problems += [f"{where}: {problem}" for problem in _probe_problems(container)]
    return problems


def validate_manifest(
    manifest: dict[str, Any], kubernetes_version: str = KUBERNETES_VERSION
) -> str:
    """Check one manifest offline, as far as an API server would, and say against what.

    Core kinds are validated by kubernetes-validate against the official schemas of
    `kubernetes_version` in strict mode; an HTTPRoute against the Gateway API subset schema,
    whose metadata is the official ObjectMeta of that version. Both then go through
    `api_server_problems`.

    Returns:
        What the manifest was checked against, e.g. `Kubernetes 1.37 schema (strict)`.

    Raises:
        ManifestError: naming the object and every problem found (the first one only for core
            kinds, where kubernetes-validate stops at it).
    """
    kind = manifest.get("kind")
    name = (manifest.get("metadata") or {}).get("name")
    problems: list[str] = []
    if kind == "HTTPRoute" and manifest.get("apiVersion") == HTTPROUTE_API_VERSION:
        validator = _httproute_validator(kubernetes_version)
        for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.path)):
            problems.append(f"{'.'.join(map(str, error.path)) or '(root)'}: {error.message}")
        checked = f"Gateway API v1 HTTPRoute subset schema (ObjectMeta of {kubernetes_version})"
    else:
        try:
            shipped = kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{'.'.join(map(str, error.path)) or '(root)'}: {error.message}")
            shipped = kubernetes_version
        except kubernetes_validate.SchemaNotFoundError as error:
            raise ManifestError(error.message) from error
        checked = f"Kubernetes {shipped} schema (strict)"
    problems += api_server_problems(manifest)
    if problems:
        raise ManifestError(f"{kind}/{name}: " + "; ".join(problems))
    return checked


def manifest_filename(manifest: dict[str, Any]) -> str:
    return f"{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


def write_manifests(
    model_name: str,
    version: int,
    out_dir: Path,
    serving: KubernetesServing | None = None,
    *,
    canary_version: int | None = None,
    canary_weight: float = 0.0,
    kubernetes_version: str = KUBERNETES_VERSION,
) -> list[Path]:
    """Render, validate, then write one YAML file per object, for review or for GitOps.

    Nothing is written unless every manifest validates. Files are named `<kind>-<name>.yaml`;
    other files in `out_dir` are left alone. `kubectl apply -f out_dir` applies them.

    Returns:
        The files written, in the order the objects can be applied.
    """
    manifests = render_manifests(
        model_name,
        version,
        serving,
        canary_version=canary_version,
        canary_weight=canary_weight,
    )
    checked = [validate_manifest(manifest, kubernetes_version) for manifest in manifests]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for manifest, against in zip(manifests, checked, strict=True):
        path = out_dir / manifest_filename(manifest)
        header = (
            f"# Rendered by agentic-mlops from deployments/kubernetes/*.yaml.j2; "
            f"validated against the {against}.\n"
        )
        path.write_text(header + yaml.safe_dump(manifest, sort_keys=False))
        paths.append(path)
    return paths
