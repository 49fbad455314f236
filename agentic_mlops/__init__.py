"""agentic-mlops: the ML lifecycle as Prefect flows, with AI agents at its decision points.

The phases are Prefect flows that a team's own flows call as subflows, with typed parameters
and typed results (see docs/own-models.md, "Inside your own flows")::

    from agentic_mlops import adopt, canary_rollout, drift_check, lifecycle

They are imported on first use, so importing the package stays cheap.
"""

from importlib import import_module
from typing import Any

from agentic_mlops.runtime import configure_environment

configure_environment()

__version__ = "0.1.0"

_PUBLIC = {
    "adopt": "agentic_mlops.flows.adopt",
    "drift_check": "agentic_mlops.flows.drift",
    "canary_rollout": "agentic_mlops.flows.canary",
    "lifecycle": "agentic_mlops.flows.lifecycle",
    "monitor": "agentic_mlops.flows.monitor",
    "announce_challenger": "agentic_mlops.tasks.drift_actions",
    "AdoptionResult": "agentic_mlops.schemas",
    "DriftCheckResult": "agentic_mlops.schemas",
    "CanaryResult": "agentic_mlops.tasks.canary_steps",
    "LifecycleResult": "agentic_mlops.schemas",
    "MonitorResult": "agentic_mlops.tasks.monitoring",
}
"""The Python API: each name and the module that defines it."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public flow or result type the first time it is asked for."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'agentic_mlops' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
