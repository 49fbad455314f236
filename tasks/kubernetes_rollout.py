"""The Kubernetes rollout backend: a stable and a canary Deployment of the model server, and
the traffic between them (an HTTPRoute's weights, or the pods' split), through the official
`kubernetes` client.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.serving.router import Backend, RouterState
from agentic_mlops.tasks.rollout_protocol import RolloutStatus, ServingError, ServingProcess


def kubernetes_api_client(context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: the pod's service account inside a cluster, else the
    kubeconfig (`KUBECONFIG` as it is now, else `~/.kube/config`) with its current or the named
    context. The client library reads `KUBECONFIG` once, at import, so it is passed here."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG") or None
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    return client.ApiClient()


def _holds(current: Any, desired: Any) -> bool:
    """Whether the cluster's value already says everything the manifest says.

    The API server adds defaults and drops empty lists and maps, so what it holds may say
    more than the manifest, never less or otherwise.
    """
    if isinstance(desired, dict):
        current = current or {}
        return isinstance(current, dict) and all(
            _holds(current.get(key), value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        current = current or []
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(_holds(c, d) for c, d in zip(current, desired, strict=True))
        )
    return current == desired


def _rolled_out(deployment: dict[str, Any]) -> tuple[bool, str]:
    """Whether every pod of a Deployment runs its current template and is ready, as
    `kubectl rollout status` decides it; else what is still missing."""
    wanted = deployment.get("spec", {}).get("replicas", 1)
    status = deployment.get("status") or {}
    if (status.get("observedGeneration") or 0) < deployment["metadata"].get("generation", 0):
        return False, "the Deployment controller has not seen the change yet"
    updated = status.get("updatedReplicas") or 0
    if updated < wanted:
        return False, f"{updated} of {wanted} pods run the new template"
    if (status.get("replicas") or 0) > updated:
        return False, f"{status['replicas'] - updated} old pods are still terminating"
    if (status.get("availableReplicas") or 0) < updated:
        return False, f"{status.get('availableReplicas') or 0} of {updated} pods are ready"
    return True, "ready"


def _version_of(deployment: dict[str, Any] | None) -> int | None:
    if deployment is None:
        return None
    value = (deployment["metadata"].get("labels") or {}).get(k8s.VERSION_LABEL)
    return int(value) if value is not None else None


def _pods_of(deployment: dict[str, Any] | None) -> int:
    return (deployment or {}).get("spec", {}).get("replicas", 0)


class KubernetesRollout:
    """Stable and canary Deployments of the model server on a Kubernetes cluster.

    With a Gateway (`serving.gateway`), each track has its Service and an HTTPRoute's weights
    split the traffic; without one, one Service selects both tracks and the split follows the
    pods (`manifests.replica_split`). Every write is a rendered, validated manifest that is
    created, or replaced when the cluster holds something else, and skipped when the cluster
    already holds it; deleting what is gone counts as done. So every operation is safe to
    repeat. Traffic only moves to pods that are ready (their `/healthz` answers); a change whose
    pods are not ready within `ready_timeout` is undone and raises `ServingError`.
    """

    def __init__(
        self,
        api_client: Any = None,
        serving: k8s.KubernetesServing | None = None,
        *,
        model_name: str,
        ready_timeout: float = 600.0,
        poll_seconds: float = 2.0,
        public_url: str | None = None,
        kubernetes_version: str = k8s.KUBERNETES_VERSION,
    ):
        """
        Args:
            api_client: A `kubernetes.client.ApiClient`; default `kubernetes_api_client()`.
            serving: Namespace, image, tracking URI, resources, replicas, Gateway.
            model_name: The registered model it serves.
            ready_timeout: Longest wait for a Deployment's pods to be ready, in seconds.
            poll_seconds: Pause between two reads of a Deployment's status.
            public_url: Where clients reach the model (the Gateway's address), for `status`.
            kubernetes_version: Schemas every manifest is validated against before it is sent.
        """
        from kubernetes import client

        self.client = client
        self.api_client = api_client if api_client is not None else kubernetes_api_client()
        self.serving = serving or k8s.KubernetesServing()
        self.namespace = self.serving.namespace
        self.model_name = model_name
        self.ready_timeout, self.poll_seconds = ready_timeout, poll_seconds
        self.public_url = public_url
        self.kubernetes_version = kubernetes_version
        self.apps = client.AppsV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    @property
    def gateway(self) -> bool:
        return self.serving.gateway is not None

    def _calls(self, kind: str) -> tuple[Callable, Callable, Callable, Callable]:
        """Read, create, replace and delete of one kind in our namespace."""
        ns = self.namespace
        if kind == "Deployment":
            return (
                lambda name: self.apps.read_namespaced_deployment(name, ns),
                lambda body: self.apps.create_namespaced_deployment(ns, body),
                lambda name, body: self.apps.replace_namespaced_deployment(name, ns, body),
                lambda name: self.apps.delete_namespaced_deployment(
                    name, ns, propagation_policy="Background"
                ),
            )
        if kind == "Service":
            return (
                lambda name: self.core.read_namespaced_service(name, ns),
                lambda body: self.core.create_namespaced_service(ns, body),
                lambda name, body: self.core.replace_namespaced_service(name, ns, body),
                lambda name: self.core.delete_namespaced_service(name, ns),
            )
        if kind == "HTTPRoute":
            route = (k8s.GATEWAY_GROUP, "v1", ns, "httproutes")
            return (
                lambda name: self.custom.get_namespaced_custom_object(*route, name),
                lambda body: self.custom.create_namespaced_custom_object(*route, body),
                lambda name, body: self.custom.replace_namespaced_custom_object(*route, name, body),
                lambda name: self.custom.delete_namespaced_custom_object(*route, name),
            )
        raise ValueError(f"the rollout does not manage {kind} objects")

    def _plain(self, answer: Any) -> dict[str, Any]:
        if isinstance(answer, dict):
            return answer
        return self.api_client.sanitize_for_serialization(answer)

    def _refused(self, error: Any, what: str) -> ServingError:
        """An API error the rollout cannot handle, as the `ServingError` flows end on."""
        reason = getattr(error, "reason", None) or error
        return ServingError(f"the Kubernetes API refused {what}: {error.status} {reason}")

    def _read(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self._calls(kind)[0](name))
        except self.client.ApiException as error:
            if error.status == 404:
                return None
            raise self._refused(error, f"a read of {kind}/{name}") from error

    def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the object, or replace it when the cluster holds something else; else
        nothing. A replace carries the resourceVersion read, so a concurrent change is
        noticed (409) and the object read again."""
        k8s.validate_manifest(manifest, self.kubernetes_version)
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        _, create, replace, _ = self._calls(kind)
        metadata = manifest["metadata"]
        wanted = {
            "metadata": {
                "labels": metadata.get("labels"),
                "annotations": metadata.get("annotations"),
            },
            "spec": manifest["spec"],
        }
        for _attempt in range(3):
            current = self._read(kind, name)
            try:
                if current is None:
                    return self._plain(create(manifest))
                if _holds(current, wanted):
                    return current
                body = copy.deepcopy(manifest)
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                return self._plain(replace(name, body))
            except self.client.ApiException as error:
                if error.status != 409:
                    raise self._refused(error, f"a write of {kind}/{name}") from error
        raise ServingError(f"{kind}/{name} kept changing while it was being applied")

    def _delete(self, kind: str, name: str) -> bool:
        """Delete an object; one already gone counts as deleted. Returns whether it existed."""
        try:
            self._calls(kind)[3](name)
        except self.client.ApiException as error:
            if error.status == 404:
                return False
            raise self._refused(error, f"a delete of {kind}/{name}") from error
        return True

    def _pod_trouble(self, track: str) -> str:
        """Why a track's pods are not ready, as their containers say (image pull, crash)."""
        chosen = k8s.selector(self.model_name, track or None)
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=",".join(f"{k}={v}" for k, v in chosen.items())
        )
        reasons = set()
        for pod in pods.items:
            for container in (pod.status and pod.status.container_statuses) or []:
                waiting = container.state and container.state.waiting
                if waiting and waiting.reason:
                    reasons.add(f"{waiting.reason} {waiting.message or ''}".strip())
        return "; ".join(sorted(reasons))

    def _wait_ready(self, name: str) -> None:
        """Wait until every pod of the Deployment runs its template and answers /healthz."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            deployment = self._plain(
                self.apps.read_namespaced_deployment_status(name, self.namespace)
            )
            done, why = _rolled_out(deployment)
            if done:
                return
            conditions = (deployment.get("status") or {}).get("conditions") or []
            stalled = any(c.get("reason") == "ProgressDeadlineExceeded" for c in conditions)
            if stalled or time.monotonic() >= deadline:
                track = (deployment["metadata"].get("labels") or {}).get(k8s.TRACK_LABEL, "")
                trouble = self._pod_trouble(track)
                raise ServingError(
                    f"Deployment {name} was not ready within {self.ready_timeout:.0f} s: {why}"
                    + (f" ({trouble})" if trouble else "")
                )
            time.sleep(self.poll_seconds)

    def _apply_ready(self, manifest: dict[str, Any], undo: dict[str, Any] | None) -> None:
        """Apply a Deployment and wait for its pods; if they are not ready in time, put back
        `undo` (the Deployment as it was) or, when there was none, delete it."""
        self._apply(manifest)
        try:
            self._wait_ready(manifest["metadata"]["name"])
        except ServingError:
            if undo is None:
                self._delete("Deployment", manifest["metadata"]["name"])
            else:
                self._apply(undo)
            raise

    def _deployments(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The stable and the canary Deployment, None where there is none."""
        return tuple(
            self._read("Deployment", k8s.deployment_name(self.model_name, track))
            for track in (k8s.STABLE, k8s.CANARY)
        )

    def _render(self, version: int, track: str, pods: int | None = None) -> dict[str, Any]:
        return k8s.render_deployment(self.model_name, version, track, self.serving, pods)

    def _as_it_is(self, deployment: dict[str, Any] | None, track: str) -> dict | None:
        """The manifest that puts a Deployment back as it is now (None: there is none)."""
        if deployment is None:
            return None
        return self._render(_version_of(deployment), track, _pods_of(deployment))

    def _services(self) -> None:
        for service in k8s.render_services(self.model_name, self.serving):
            self._apply(service)

    def _route(self, weight: float) -> None:
        self._apply(k8s.render_route(self.model_name, self.serving, weight))

    def _route_weight(self) -> float | None:
        """The canary's share in the HTTPRoute; None when there is no route."""
        route = self._read("HTTPRoute", k8s.route_name(self.model_name))
        if route is None:
            return None
        weights = {
            ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]
        }
        total = sum(weights.values())
        canary = weights.get(k8s.service_name(self.model_name, k8s.CANARY), 0)
        return canary / total if total else 0.0

    def _weight(self, stable: dict | None, canary: dict | None) -> float:
        """The canary's share as the cluster has it: route weights, or its share of pods."""
        if canary is None:
            return 0.0
        if self.gateway:
            return self._route_weight() or 0.0
        total = _pods_of(stable) + _pods_of(canary)
        return _pods_of(canary) / total if total else 0.0

    def _url(self, track: str | None) -> str:
        name = k8s.service_name(self.model_name, track if self.gateway else None)
        return f"http://{name}.{self.namespace}.svc.cluster.local:{self.serving.service_port}"

    def _backend(self, deployment: dict[str, Any] | None, track: str) -> Backend | None:
        if deployment is None:
            return None
        return Backend(url=self._url(track), version=_version_of(deployment))

    def _state(self) -> RouterState:
        stable, canary = self._deployments()
        return RouterState(
            baseline=self._backend(stable, k8s.STABLE),
            canary=self._backend(canary, k8s.CANARY),
            weight=self._weight(stable, canary),
        )

    def _split_pods(self, weight: float, stable: dict | None, canary: dict[str, Any]) -> None:
        """Without a Gateway: move pods between the tracks, the growing track first, so the
        model never has fewer ready pods than it had."""
        stable_pods, canary_pods = k8s.replica_split(weight, self.serving.replicas)
        moves = [(k8s.CANARY, canary, canary_pods)]
        if stable is not None:
            moves.append((k8s.STABLE, stable, stable_pods))
        moves.sort(key=lambda move: _pods_of(move[1]) - move[2])
        for track, deployment, pods in moves:
            self._apply_ready(
                self._render(_version_of(deployment), track, pods),
                undo=self._as_it_is(deployment, track),
            )

    def start_router(self, port: int | None = None) -> str:
        """Create the Services (and, with a Gateway, the route) and return where clients
        reach the model; `port` is the local router's and means nothing here."""
        self._services()
        if self.gateway and self._read("HTTPRoute", k8s.route_name(self.model_name)) is None:
            self._route(0.0)
        return self.public_url or self._url(k8s.STABLE if self.gateway else None)

    def router_url(self) -> str | None:
        """None: no router of ours runs; a Gateway or a Service splits the traffic."""
        return None

    def is_serving(self) -> bool:
        return self._deployments()[0] is not None

    def why_not_serving(self) -> str | None:
        """No stable Deployment, or its pods are not ready; None when it serves."""
        stable = self._deployments()[0]
        where = f"{self.model_name!r} in namespace {self.namespace}"
        if stable is None:
            return f"nothing is serving: no stable Deployment of {where}"
        done, why = _rolled_out(stable)
        return None if done else f"the stable Deployment of {where} is not ready: {why}"

    def router_state(self) -> RouterState:
        return self._state()

    def set_baseline(self, version: int) -> RouterState:
        """Serve `version` on the stable track: the first rollout, or a reconcile."""
        self._services()
        stable, canary = self._deployments()
        pods = None
        if not self.gateway and canary is not None:
            pods = self.serving.replicas - _pods_of(canary)
        self._apply_ready(
            self._render(version, k8s.STABLE, pods), self._as_it_is(stable, k8s.STABLE)
        )
        if self.gateway:
            self._route(self._weight(stable, canary))
        return self._state()

    def deploy(self, version: int) -> Backend:
        """Serve `version` as the canary, at weight 0 until `set_weight`.

        With a Gateway, the canary's pods are ready before the route names its Service; without
        one the canary starts with no pods, since any ready pod behind the shared Service gets
        traffic. A canary of another version first loses its traffic. Deploying the version
        already on the canary changes nothing.
        """
        self._services()
        stable, canary = self._deployments()
        backend = Backend(url=self._url(k8s.CANARY), version=version)
        if _version_of(canary) == version:
            self._wait_ready(canary["metadata"]["name"])
            if self.gateway:
                self._route(self._weight(stable, canary))
            return backend
        if self.gateway:
            if canary is not None:
                self._route(0.0)
            self._apply_ready(self._render(version, k8s.CANARY), undo=None)
            self._route(0.0)
            return backend
        if _pods_of(canary) > 0:
            self._split_pods(0.0, stable, canary)
        self._apply_ready(self._render(version, k8s.CANARY, 0), undo=None)
        return backend

    def set_weight(self, weight: float) -> RouterState:
        """Give the canary `weight` of the traffic, once its pods are ready."""
        k8s.route_weights(weight)
        stable, canary = self._deployments()
        if canary is None:
            if weight > 0:
                raise ServingError("there is no canary to send traffic to: deploy one first")
            return self._state()
        if self.gateway:
            self._wait_ready(canary["metadata"]["name"])
            self._route(weight)
        else:
            self._split_pods(weight, stable, canary)
        return self._state()

    def promote(self) -> RouterState:
        """The stable track moves to the canary's version (a rolling update that keeps every
        pod until its successor is ready); then all traffic is stable's and the canary is
        deleted. Without a canary, nothing changes."""
        stable, canary = self._deployments()
        if canary is None:
            return self._state()
        self._apply_ready(
            self._render(_version_of(canary), k8s.STABLE, self.serving.replicas),
            self._as_it_is(stable, k8s.STABLE),
        )
        if self.gateway:
            self._route(0.0)
        self._delete("Deployment", canary["metadata"]["name"])
        return self._state()

    def rollback(self) -> RouterState:
        """All traffic back to the stable track, then the canary is deleted. Without a canary
        and with no traffic routed to one, nothing changes."""
        stable, canary = self._deployments()
        if self.gateway:
            if (self._route_weight() or 0.0) > 0:
                self._route(0.0)
        elif canary is not None and stable is not None and _pods_of(stable) < self.serving.replicas:
            self._apply_ready(
                self._render(_version_of(stable), k8s.STABLE, self.serving.replicas),
                self._as_it_is(stable, k8s.STABLE),
            )
        if canary is not None:
            self._delete("Deployment", canary["metadata"]["name"])
        return self._state()

    def restore(self, state: RouterState) -> RouterState:
        """Put the cluster back to a recorded state (the undo of promote or rollback)."""
        if state.baseline is not None and state.baseline.version is not None:
            self.set_baseline(state.baseline.version)
        if state.canary is not None and state.canary.version is not None:
            self.deploy(state.canary.version)
            return self.set_weight(state.weight)
        return self.rollback()

    def status(self) -> RolloutStatus:
        state = self._state()
        servers = {
            str(backend.version): backend.url
            for backend in (state.baseline, state.canary)
            if backend is not None and backend.version is not None
        }
        router_url = self.public_url or (None if self.gateway else self._url(None))
        return RolloutStatus(router_url=router_url, state=state, servers=servers)

    def processes(self) -> list[ServingProcess]:
        """None: the cluster runs the pods, no process of this machine serves (`status`
        names what the cluster serves)."""
        return []

    def stray_servers(self, keep: set[int | None]) -> list[int]:
        """Delete a canary Deployment whose version is not in `keep`, after taking its
        traffic away; its version."""
        canary = self._deployments()[1]
        if canary is None or _version_of(canary) in keep:
            return []
        self.rollback()
        return [_version_of(canary)]

    def stop_all(self) -> list[ServingProcess]:
        """Delete every object of the model's serving (`shutdown`); no local process ran."""
        self.shutdown()
        return []

    def shutdown(self) -> None:
        """Delete every object of the model's serving: route, Deployments, Services."""
        if self.gateway:
            self._delete("HTTPRoute", k8s.route_name(self.model_name))
        for track in (k8s.CANARY, k8s.STABLE):
            self._delete("Deployment", k8s.deployment_name(self.model_name, track))
        for service in k8s.render_services(self.model_name, self.serving):
            self._delete("Service", service["metadata"]["name"])
