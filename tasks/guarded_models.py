"""The models one home guards, side by side: where each stands in the registry, the ledger and
serving.

A model is guarded once it has a `champion` in the MLflow registry (trained here, or adopted).
Each keeps its own aliases, reference, ledger entries, serving processes and monitor history,
all keyed by its registered name, so one home and one set of Prefect deployments serve many.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry, rollout


class GuardedModel(BaseModel):
    """One guarded model, as `agentic-mlops models` lists it."""

    name: str
    champion: int
    challenger: int | None = None
    last_check_at: str | None = Field(default=None, description="Time of the latest drift check.")
    last_check: str | None = Field(
        default=None, description="The latest drift check's decision, e.g. `retrain (high)`."
    )
    last_decision_at: str | None = Field(default=None, description="Time of the latest decision.")
    last_decision: str | None = Field(
        default=None, description="The latest decision of any agent: `point: action vN`."
    )
    router_url: str | None = Field(
        default=None, description="The local router serving it, when one is recorded and alive."
    )


def _decision(entry: ledger.LedgerEntry) -> str:
    version = "" if entry.model_version is None else f" v{entry.model_version}"
    return f"{entry.decision_point}: {entry.action}{version}"


def guarded_models(settings: Settings) -> list[GuardedModel]:
    """Every registered model with a champion, by name, with its latest check and decision."""
    client = registry.client(settings)
    listed = []
    for model in sorted(client.search_registered_models(max_results=1_000), key=lambda m: m.name):
        aliases = {alias: int(version) for alias, version in model.aliases.items()}
        if registry.CHAMPION not in aliases:
            continue
        checks = ledger.list_decisions(
            model.name, decision_point="drift_triage", limit=1, settings=settings
        )
        latest = ledger.list_decisions(model.name, limit=1, settings=settings)
        served = model.name in rollout.served_models(settings)
        backend = rollout.rollout_backend(settings.for_model(model.name)) if served else None
        listed.append(
            GuardedModel(
                name=model.name,
                champion=aliases[registry.CHAMPION],
                challenger=aliases.get(registry.CHALLENGER),
                last_check_at=checks[0].created_at if checks else None,
                last_check=(
                    f"{checks[0].action} ({checks[0].severity})"
                    if checks and checks[0].severity
                    else (checks[0].action if checks else None)
                ),
                last_decision_at=latest[0].created_at if latest else None,
                last_decision=_decision(latest[0]) if latest else None,
                router_url=backend.router_url() if backend else None,
            )
        )
    return listed
