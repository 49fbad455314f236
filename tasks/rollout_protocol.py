"""What every rollout backend offers (`RolloutBackend`), and what they share: the error they
raise, the status they report and the serving processes they list. `tasks/rollout.py` chooses
a backend; `tasks/local_rollout.py` and `tasks/kubernetes_rollout.py` implement it.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

from agentic_mlops.serving.router import Backend, RouterState


class ServingError(RuntimeError):
    """A server that would not start, or a router that refused a change."""


class RolloutStatus(BaseModel):
    """What is served and how traffic is split."""

    router_url: str | None
    state: RouterState
    servers: dict[str, str] = Field(description="version -> address of its model server")


class RolloutBackend(Protocol):
    """The interface every rollout backend offers (local processes, Kubernetes): everything
    the flows, the CLI, the MCP tools and the demo do with serving goes through it."""

    def start_router(self, port: int | None = None) -> str:
        """Make one address serve the model (the router, or the Services and route), and
        return it."""
        ...

    def router_url(self) -> str | None:
        """The address of a router of ours that answers (its `/admin` API and request log);
        None when none runs."""
        ...

    def is_serving(self) -> bool:
        """Whether a baseline is served, so that traffic can be moved and must follow the
        champion."""
        ...

    def why_not_serving(self) -> str | None:
        """Why a canary cannot run now (nothing serves a baseline); None when one can."""
        ...

    def router_state(self) -> RouterState:
        """Baseline, canary and the canary's share of traffic as they are now."""
        ...

    def set_baseline(self, version: int) -> RouterState:
        """Serve `version` as the baseline."""
        ...

    def deploy(self, version: int) -> Backend:
        """Serve `version` as the canary, at weight 0 until `set_weight`."""
        ...

    def set_weight(self, weight: float) -> RouterState:
        """Give the canary `weight` of the traffic."""
        ...

    def promote(self) -> RouterState:
        """The canary becomes the baseline at full traffic."""
        ...

    def rollback(self) -> RouterState:
        """All traffic back to the baseline; the canary stops."""
        ...

    def restore(self, state: RouterState) -> RouterState:
        """Put serving back to a recorded state (the undo of promote or rollback)."""
        ...

    def status(self) -> RolloutStatus:
        """What is served, where, and how traffic is split."""
        ...

    def processes(self) -> list[ServingProcess]:
        """The serving processes of this machine, alive or stale."""
        ...

    def stray_servers(self, keep: set[int | None]) -> list[int]:
        """Stop the servers of versions not in `keep`; their versions."""
        ...

    def stop_all(self) -> list[ServingProcess]:
        """Stop everything that serves and forget it; what was running."""
        ...

    def shutdown(self) -> None:
        """Stop everything that serves."""
        ...


class ServingProcess(BaseModel):
    """One recorded serving process, as `agentic-mlops serving status` lists it."""

    role: Literal["router", "model server", "standby"]
    model_name: str = Field(default="", description="The registered model it serves.")
    pid: int
    port: int
    url: str
    version: int | None = Field(default=None, description="Model version a server serves.")
    variant: Literal["baseline", "canary"] | None = Field(
        default=None, description="Its place in the router's traffic; none: it gets none."
    )
    weight: float | None = Field(
        default=None,
        description="Share of traffic a model server gets (the router's canary weight on the "
        "router's line); empty when the router does not answer.",
    )
    status: Literal["alive", "stale"] = Field(
        description="alive: the process runs; stale: recorded, but it has ended."
    )
    log: str
