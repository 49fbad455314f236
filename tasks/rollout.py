"""Rollout backends: where model versions are served and how traffic moves between them.

Every backend offers `RolloutBackend`: `deploy` a version as the canary, `set_weight` of the
canary's traffic, `promote` the canary to baseline, `rollback` to the baseline alone, `restore`
a recorded state, `status`, and the reads and clean-ups around them. `rollout_backend(settings)`
is the one place a backend is chosen (`serving_backend`): flows, the CLI, the MCP tools and the
demo take theirs from it. `LocalRollout` (the embedded default) runs the canary router and one
MLflow model server per version as processes on loopback, recorded per registered model in
`home/serving/<model>/processes.json` so that any process (the CLI, a flow run, a test) can
find and stop them; several models serve side by side, each behind its own router.
`KubernetesRollout` keeps a stable and a canary Deployment on a cluster. Each
operation is safe to repeat: deploying a version that is already served reuses its server;
promoting or rolling back when there is no canary changes nothing.
"""

from __future__ import annotations

from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.kubernetes_rollout import KubernetesRollout, kubernetes_api_client
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.rollout_protocol import RolloutBackend, ServingProcess


def served_models(settings: Settings) -> list[str]:
    """The registered models with serving processes recorded under the home."""
    folder = settings.home / "serving"
    return sorted(p.parent.name for p in folder.glob("*/processes.json")) if folder.is_dir() else []


def rollout_backend(settings: Settings) -> RolloutBackend:
    """The rollout backend that `settings.serving.backend` names: the one place a backend is
    made, so every flow, the CLI, the MCP tools and the demo move the same traffic."""
    if settings.serving.backend == "kubernetes":
        serving = k8s.KubernetesServing(
            namespace=settings.kubernetes.namespace,
            image=settings.kubernetes.image,
            tracking_uri=settings.kubernetes.tracking_uri,
            replicas=settings.kubernetes.replicas,
            gateway=(
                k8s.GatewayRef(name=settings.kubernetes.gateway)
                if settings.kubernetes.gateway
                else None
            ),
        )
        return KubernetesRollout(
            kubernetes_api_client(settings.kubernetes.context),
            serving,
            model_name=settings.model_name,
            ready_timeout=settings.kubernetes.ready_timeout_seconds,
            poll_seconds=settings.kubernetes.poll_seconds,
            public_url=settings.kubernetes.public_url,
        )
    return LocalRollout(settings)


def _backends(settings: Settings, model_name: str | None) -> list[RolloutBackend]:
    if settings.serving.backend == "kubernetes":
        names = [model_name or settings.model_name]
    else:
        names = [n for n in served_models(settings) if model_name in (None, n)]
    return [rollout_backend(settings.for_model(name)) for name in names]


def serving_status(settings: Settings, model_name: str | None = None) -> list[ServingProcess]:
    """Every serving process recorded under the home (of one model, when named): routers and
    model servers."""
    return [p for backend in _backends(settings, model_name) for p in backend.processes()]


def stop_serving(settings: Settings, model_name: str | None = None) -> list[ServingProcess]:
    """Stop every serving process recorded under the home (of one model, when named) and
    clean the records."""
    return [p for backend in _backends(settings, model_name) for p in backend.stop_all()]


def why_no_canary(settings: Settings) -> str | None:
    """Why a canary cannot run now (nothing serves a baseline); None when one can."""
    return rollout_backend(settings).why_not_serving()
