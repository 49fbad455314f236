"""Promotion of a canary: the model's lock, the transaction, its journal, and the repair of a
run killed on the way.

Promotions of one model never overlap: the rollout holds the model's promotion lock, a Prefect
global concurrency limit of 1 leased for a minute and renewed while the run lives, so a killed
run's lock is freed when its lease runs out. A promotion moves the `champion` alias and the
router's traffic in one Prefect transaction (if either fails, both are undone), with a journal
written before and removed after, so a process killed in between is repaired by the next run
(`tasks.rollout.reconcile`), which also marks the killed run `Crashed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed, Failed, State
from prefect.transactions import transaction

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import registry, rollout
from agentic_mlops.tasks.canary_steps import CanaryResult, CanaryState, CanaryStep

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
    interrupted = rollout.read_journal(settings)
    repaired = rollout.reconcile(name, settings)
    if repaired:
        get_run_logger().warning("repaired: %s", repaired)
        mark_interrupted(interrupted, repaired)
    return repaired


def mark_interrupted(journal: rollout.PromotionJournal | None, repaired: str | None) -> None:
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
    rollout.write_journal(
        rollout.PromotionJournal(
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
            rollout.switch_traffic(settings)
    finally:
        rollout.clear_journal(settings)  # committed, or undone by the transaction's hooks


def failed_rollout(
    name: str, message: str, backend: rollout.RolloutBackend, champion: int | None
) -> State:
    """End a rollout that could not finish: the canary loses its traffic if the router still
    answers, the champion is unchanged, and the state says so on one line."""
    try:
        backend.rollback()
    except rollout.ServingError as error:
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
    backend: rollout.RolloutBackend,
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
