"""Promotion of a canary: the model's lock, the transaction, its journal, and the repair of a
run killed on the way.

Promotions of one model never overlap: the rollout holds the model's promotion lock, a Prefect
global concurrency limit of 1 leased for a minute and renewed while the run lives, so a killed
run's lock is freed when its lease runs out. A promotion moves the `champion` alias and the
router's traffic in one Prefect transaction (if either fails, both are undone), with a journal
written before and removed after, so a process killed in between is repaired by the next run
(`tasks.reconcile`), which also marks the killed run `Crashed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed, Failed, State
from prefect.transactions import transaction
from pydantic import BaseModel, Field

from agentic_mlops.serving.router import RouterState
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import ledger, registry, rollout
from agentic_mlops.tasks.canary_steps import CanaryResult, CanaryState, CanaryStep
from agentic_mlops.tasks.rollout import rollout_backend
from agentic_mlops.tasks.rollout_protocol import RolloutBackend, ServingError

LOCK_LEASE_SECONDS = 60
"""Lease of the promotion lock, renewed while the run lives (Prefect's shortest): a run that is
killed frees the lock once its lease expires, and the Prefect server's repossessor sees it."""


def ensure_promotion_lock(name: str) -> str:
    """The name of the model's global concurrency limit of 1, created on first use."""
    limit = f"agentic-mlops-promote-{name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=limit, limit=1)
                )
            except Exception:  # created meanwhile by another run
                client.read_global_concurrency_limit_by_name(limit)
    return limit


@contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """Hold the model's promotion lock, waiting up to an hour for another rollout to end."""
    with concurrency(
        ensure_promotion_lock(name),
        occupy=1,
        timeout_seconds=3600,
        lease_duration=LOCK_LEASE_SECONDS,
        strict=True,
    ):
        yield


def repair_interrupted(name: str, settings: Settings) -> str | None:
    """Make the champion alias and the router agree after an interrupted run; say what was
    repaired (None: nothing was). Called with the promotion lock held."""
    interrupted = read_journal(settings)
    repaired = reconcile(name, settings)
    if repaired:
        get_run_logger().warning("repaired: %s", repaired)
        mark_interrupted(interrupted, repaired)
    return repaired


def mark_interrupted(journal: PromotionJournal | None, repaired: str | None) -> None:
    """Mark the run that left a promotion journal `Crashed`, saying what was repaired.

    Called with the promotion lock held, so that run no longer holds it: it was killed, yet
    Prefect still shows it running, as nothing reports the death of a process.
    """
    if journal is None or journal.flow_run_id in (None, flow_run.get_id()):
        return
    with get_client(sync_client=True) as client:
        try:
            earlier = client.read_flow_run(journal.flow_run_id)
        except ObjectNotFound:  # recorded by another Prefect server
            return
        if earlier.state is None or not earlier.state.is_final():
            client.set_flow_run_state(
                earlier.id,
                Crashed(message=f"killed while promoting v{journal.version}; {repaired}"),
                force=True,
            )


def promote(name: str, version: int, champion: int | None, settings: Settings) -> None:
    """Move the alias and the traffic together, or neither."""
    backend = rollout.rollout_backend(settings)
    write_journal(
        PromotionJournal(
            model_name=name,
            version=version,
            previous_champion=champion,
            router_before=backend.router_state(),
            flow_run_id=flow_run.get_id(),
        ),
        settings,
    )
    try:
        with transaction(key=f"promote-{name}-v{version}-{flow_run.get_id()}"):
            registry.move_champion_alias(name, version, settings)
            switch_traffic(settings)
    finally:
        clear_journal(settings)  # committed, or undone by the transaction's hooks


def failed_rollout(name: str, message: str, backend: RolloutBackend, champion: int | None) -> State:
    """End a rollout that could not finish: the canary loses its traffic if the router still
    answers, the champion is unchanged, and the state says so on one line."""
    try:
        backend.rollback()
    except ServingError as error:
        message += f"; the canary could not be removed ({error})"
    message = f"{message}; champion v{champion} unchanged"
    get_run_logger().error(message)
    return Failed(name=name, message=" ".join(message.split()))


def finish_rollout(
    state: CanaryState,
    name: str,
    version: int,
    champion: int | None,
    steps: list[CanaryStep],
    repaired: str | None,
    backend: RolloutBackend,
    settings: Settings,
) -> CanaryResult | State:
    """Carry out how the rollout ended: roll the canary back, or promote it.

    A promotion that fails was undone by its transaction: the run ends `PromotionFailed`. A
    rollback's serving errors are left to the caller, as during the steps.
    """
    try:
        if state.outcome == "rolled_back":
            backend.rollback()
        else:
            promote(name, version, champion, settings)
        registry.tag_canary_outcome(name, version, state.outcome, state.reason, settings)
        result = CanaryResult(
            model_name=name,
            version=version,
            outcome=state.outcome,
            steps=steps,
            champion=registry.alias_version(name, registry.CHAMPION, settings),
            repaired=repaired,
            reason=state.reason,
        )
    except Exception as error:
        if state.outcome == "rolled_back":
            raise
        return failed_rollout(
            "PromotionFailed",
            f"promotion of v{version} failed and was undone: {error}",
            backend,
            champion,
        )
    get_run_logger().info("canary v%d %s: %s", version, state.outcome, state.reason)
    return result


class PromotionJournal(BaseModel):
    """Written before a promotion and removed after it, so a crash in between is seen."""

    model_name: str
    version: int
    previous_champion: int | None
    router_before: RouterState
    flow_run_id: str | None = Field(
        default=None, description="The Prefect flow run promoting, so a repair can name it."
    )


def journal_path(settings: Settings) -> Path:
    return settings.serving_dir / "promotion.json"


def read_journal(settings: Settings) -> PromotionJournal | None:
    """The journal of a promotion under way or interrupted; None when there is none."""
    path = journal_path(settings)
    if not path.exists():
        return None
    return PromotionJournal.model_validate_json(path.read_text())


def write_journal(journal: PromotionJournal, settings: Settings) -> None:
    path = journal_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(journal.model_dump_json())
    tmp.replace(path)


def clear_journal(settings: Settings) -> None:
    journal_path(settings).unlink(missing_ok=True)


@task(name="switch-traffic", cache_policy=NO_CACHE)
def switch_traffic(settings: Settings) -> RouterState:
    """Send all traffic to the canary inside a promotion transaction; undone on rollback."""
    from prefect.transactions import get_transaction

    backend = rollout_backend(settings)
    before = backend.router_state()
    transaction = get_transaction()
    if transaction is not None:
        transaction.set("router_before", before)
        transaction.set("settings", settings)
    return backend.promote()


@switch_traffic.on_rollback
def _undo_switch_traffic(transaction) -> None:
    rollout_backend(transaction.get("settings")).restore(transaction.get("router_before"))


def reconcile(model_name: str, settings: Settings) -> str | None:
    """Make the registry's champion and the router's baseline agree; say what was repaired.

    A promotion journal left behind means a process died mid-promotion: both sides go back to
    where they were before it (aliases restored, router restored). Otherwise, if the router's
    baseline is not the champion, the champion alias wins and the router follows it.
    """
    backend = rollout_backend(settings)
    journal = read_journal(settings)
    if journal is not None:
        if journal.previous_champion is not None:
            registry.promote_champion(journal.model_name, journal.previous_champion, settings)
        if backend.is_serving():
            backend.restore(journal.router_before)
        clear_journal(settings)
        return (
            f"an interrupted promotion of v{journal.version} was undone: champion "
            f"v{journal.previous_champion} and its traffic restored"
        )
    champion = registry.alias_version(model_name, registry.CHAMPION, settings)
    if champion is None or not backend.is_serving():
        return None
    state = backend.router_state()
    if state.baseline is None or state.baseline.version != champion:
        backend.set_baseline(champion)
        return (
            f"the router served v{state.baseline.version if state.baseline else None}; "
            f"it now serves the champion v{champion}"
        )
    return None


def restore_champion_traffic(settings: Settings) -> str:
    """Put all traffic back on the champion and stop the challenger's server, after a canary
    (or a lifecycle turn running one) ended without finishing: cancelled or crashed.

    An interrupted promotion is undone first, as `reconcile` does; then the canary loses its
    traffic and every model server but the baseline's stops. Safe when nothing serves (then
    nothing changes) and safe to run twice. Returns what it did, on one line.
    """
    backend = rollout_backend(settings)
    done: list[str] = []
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    keep: set[int | None] = {champion}
    try:
        repaired = reconcile(settings.model_name, settings)
        if repaired:
            done.append(repaired)
        if backend.is_serving():
            before = backend.router_state()
            after = backend.rollback()
            if before.canary is not None:
                done.append(f"canary v{before.canary.version} at {before.weight:.0%} removed")
            if after.baseline is not None:
                keep = {after.baseline.version}
                done.append(f"all traffic on v{after.baseline.version}")
    except ServingError as error:
        done.append(f"the router could not be changed: {error}")
    stopped = backend.stray_servers(keep)
    if stopped:
        done.append(f"stopped the server of {', '.join(f'v{v}' for v in stopped)}")
    return "; ".join(done) or "nothing was serving a canary"


def _runs_of(flow_run_id: str) -> set[str]:
    """A flow run and its subflow runs (a lifecycle turn's drift check, retrain, canary)."""
    from prefect.client.orchestration import get_client

    ids = {flow_run_id}
    try:
        with get_client(sync_client=True) as client:
            body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "limit": 50}
            runs = client.request("POST", "/flow_runs/filter", json=body).json()
        ids |= {run["id"] for run in runs}
    except Exception:  # the API is out of reach: the run's own decisions only
        pass
    return ids


def record_interruption(flow_run_id: str, how: str, what: str, settings: Settings) -> list[str]:
    """Attach to the newest decision of each kind made by a flow run (or its subflows) that
    it was interrupted and what was put back; returns the ledger ids told (none: no decision
    was recorded yet)."""
    runs = _runs_of(flow_run_id)
    newest: dict[str, str] = {}
    for entry in ledger.list_decisions(settings.model_name, limit=500, settings=settings):
        if entry.flow_run_id in runs:
            newest.setdefault(entry.decision_point, entry.id)
    for entry_id in newest.values():
        ledger.record_outcome(
            entry_id,
            {"canary": how, "interrupted": how, "carried_out": "rolled_back", "restored": what},
            settings,
        )
    return list(newest.values())


def roll_back_interrupted_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` and `on_crashed` hook of the `canary-rollout` and
    `lifecycle` flows: all traffic back on the champion, the challenger's server stopped, and
    the run's latest decisions told so in the ledger. Run by the worker once it has stopped
    the run's process (or by the engine, for a run in this process); never raises."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)
    how = "crashed" if state.is_crashed() else "cancelled"
    settings = load_settings().for_model((flow_run.parameters or {}).get("model_name"))
    try:
        what = restore_champion_traffic(settings)
    except Exception as error:  # noqa: BLE001 - a hook reports, it cannot fail the run again
        logger.error("the %s run could not put traffic back on the champion: %s", how, error)
        return
    logger.warning("the run was %s: %s", how, what)
    try:
        told = record_interruption(str(flow_run.id), how, what, settings)
    except Exception as error:  # noqa: BLE001
        logger.error("the ledger could not be told: %s", error)
        return
    logger.info("ledger entries told: %s", ", ".join(told) or "none (no decision yet)")
