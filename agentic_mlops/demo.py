"""The whole story on the embedded defaults: drift in production, noticed, fixed, and a bad fix
caught.

1. Train a champion on reference customers, serve it behind the canary router, and send
   simulated customer traffic with delayed labels.
2. A lifecycle turn on a normal window: nothing to do. Its rows come as in production: the
   monitor's window of what the router logged, with the labels customers sent back.
3. A price rise that also changes churn behaviour arrives mid-stream, as the normal turn
   begins. The next lifecycle turn, on the router's window since the rise, detects it,
   triages, retrains with a search, canaries the challenger on live traffic and promotes it.
4. A broken label join in an offline pipeline feeds the next retraining wrong labels (this
   turn gets that offline batch: the window after the rise's, which filled while the drift
   turn ran). Offline evaluation shares the bug; the canary, judged on live labels, catches
   the worse model and rolls it back.

Customers call all along, so each window fills while the turn before it runs.
5. Final state: aliases, the router's traffic, the ledger with outcomes, and where to look.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from agentic_mlops.flows.lifecycle import lifecycle
from agentic_mlops.flows.train import train
from agentic_mlops.schemas import LifecycleResult
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.lifecycle_report import summary, verdict
from agentic_mlops.tasks.mlflow_environment import environment_kept
from agentic_mlops.tasks.rollout import rollout_backend
from agentic_mlops.tasks.rollout_protocol import RolloutBackend
from agentic_mlops.tasks.traffic import CustomerTraffic
from agentic_mlops.tasks.training import Hyperparameters
from agentic_mlops.tasks.tuning import warm_up

DRIFT_SEVERITY = 1.0


@dataclass
class DemoPlan:
    """Sizes and budgets of the demo; the end-to-end test runs a smaller one."""

    train_rows: int = 3_000
    window_rows: int = 700
    rate: float = 160.0
    label_delay_seconds: float = 1.0
    max_trials: int = 4
    search_seconds: float = 30.0
    canary_steps: tuple[int, ...] = (50, 100)
    canary_step_seconds: float = 25.0
    canary_min_samples: int = 120
    approval_timeout_seconds: int = 20
    bad_model: bool = True


@dataclass
class DemoRun:
    """What the story's steps share: where they print, the plan, the settings, and the clock."""

    console: Console
    plan: DemoPlan
    settings: Settings
    wait_for_person: bool
    step: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    def took(self, what: str, since: float | None = None) -> None:
        """Note how long something took, from `since` (default: the demo's start)."""
        self.timings[what] = time.monotonic() - (self.started if since is None else since)


def _wait_for_window(traffic, since: int, rows: int, console: Console, what: str):
    started = time.monotonic()
    with console.status(f"{what}: waiting for {rows} labelled requests...") as status:
        while True:
            window = traffic.window(since)
            if len(window) >= rows:
                return window
            status.update(
                f"{what}: {len(window)}/{rows} labelled requests "
                f"({traffic.counts.sent} sent, {traffic.counts.failed} failed, "
                f"{time.monotonic() - started:.0f} s)"
            )
            time.sleep(0.5)


def train_and_serve(run: DemoRun) -> tuple[RolloutBackend, str]:
    """Step 1: train the champion on reference customers and serve it behind the router."""
    run.step("1/5 Training the champion on reference customers")
    console = run.console
    backend = rollout_backend(run.settings)
    with ThreadPoolExecutor(1) as pool:
        router = pool.submit(backend.start_router)  # the router needs no model: it starts now
        try:
            with console.status("Training, logging to MLflow, registering..."):
                trained = train(
                    generate_rows=run.plan.train_rows,
                    seed=1,
                    hyperparameters=Hyperparameters(max_iter=100),
                )
            console.print(
                f"champion: {trained.model_name} v{trained.version}, holdout ROC AUC "
                f"{trained.metrics['roc_auc']:.3f}"
            )
            with console.status("Starting the champion's model server behind the router..."):
                url = router.result()
                backend.set_baseline(trained.version)
        except BaseException:
            router.exception()  # the router has started or failed; either way, stop it
            backend.shutdown()
            raise
    console.print(f"serving v{trained.version} behind the router at {url}")
    run.took("trained and serving")
    return backend, url


def lifecycle_turn(
    run: DemoRun, title: str, offline: pd.DataFrame | None = None, **extra: Any
) -> LifecycleResult:
    """One lifecycle turn: on the monitor's window of the router's log, or on an offline
    batch when one is given."""
    plan, console = run.plan, run.console
    incoming = run.settings.home / "incoming"
    path = write_table(offline, incoming / f"{title}.parquet") if offline is not None else None
    arguments = dict(
        batch_path=str(path) if path else None,
        retrain_max_trials=plan.max_trials,
        retrain_time_budget_seconds=plan.search_seconds,
        canary_steps=list(plan.canary_steps),
        canary_step_seconds=plan.canary_step_seconds,
        canary_min_samples=plan.canary_min_samples,
        approval_timeout_seconds=3600 if run.wait_for_person else plan.approval_timeout_seconds,
        **extra,
    )
    if run.wait_for_person:
        console.print(
            "[yellow]Approval mode `all`: each retrain, rollback and promotion waits for "
            "you. Open the paused run in the Prefect UI (PREFECT_API_URL must point at a "
            "running server) and answer the form.[/]"
        )
    began = time.monotonic()
    with console.status(f"{title}: drift check, triage, and whatever it decides..."):
        result = lifecycle(**arguments)
    run.took(f"{title} turn", began)
    for line in result.steps:
        console.print(f"  - {line}", highlight=False)
    return result


def tell_the_story(run: DemoRun, traffic: CustomerTraffic) -> dict[str, LifecycleResult]:
    """Steps 2 to 4: a normal stretch, a price rise that changes churn behaviour, and (with
    `bad_model`) a broken label join feeding the next retraining.

    Customers keep calling while a turn runs, so each window fills during the turn before
    it: a turn checks the window that had closed when it started (`window_until`), as a
    scheduled monitor does while traffic goes on.
    """
    plan, console = run.plan, run.console
    results = {}
    run.step("2/5 A normal stretch of production traffic")
    since = _label_time(plan)
    _wait_for_window(traffic, traffic.mark(), plan.window_rows, console, "normal traffic")
    until = time.time()
    traffic.use(generate_churn(20_000, 22, "gradual", severity=DRIFT_SEVERITY))
    onset, drift_mark, drift_since = time.monotonic(), traffic.mark(), _label_time(plan)
    results["normal"] = lifecycle_turn(
        run, "normal-window", window_since=since, window_rows=plan.window_rows, window_until=until
    )

    run.step("3/5 A price rise arrived as that turn began, and churn behaviour changed with it")
    _wait_for_window(traffic, drift_mark, plan.window_rows, console, "after the rise")
    until, next_mark = time.time(), traffic.mark()
    results["drift"] = lifecycle_turn(
        run,
        "drift-window",
        window_since=drift_since,
        window_rows=plan.window_rows,
        window_until=until,
    )
    run.took("drift onset to new champion", onset)

    if plan.bad_model:
        run.step("4/5 A broken label join feeds the next retraining wrong labels")
        window = _wait_for_window(traffic, next_mark, plan.window_rows, console, "next window")
        window = window.head(plan.window_rows)
        rng = np.random.default_rng(5)
        window["churn"] = rng.permutation(window["churn"].to_numpy())
        console.print(
            "The labels of the window after the rise were shuffled by the broken join. The "
            "holdout shares the bug, so the holdout gate is off for this turn; the canary is "
            "judged on live labels."
        )
        results["bad"] = lifecycle_turn(run, "bad-labels-window", window, require_improvement=False)
    return results


def _label_time(plan: DemoPlan) -> float:
    """When the labels of the requests sent from now on begin to arrive: a window's start."""
    return time.time() + plan.label_delay_seconds


def ledger_table(settings: Settings) -> Table:
    """The decision ledger, oldest first, each decision marked right, wrong or pending."""
    entries = list(reversed(ledger.list_decisions(settings.model_name, settings=settings)))
    decisions = Table(title="Decision ledger (oldest first)")
    for column in ("decision point", "version", "action", "by", "outcome"):
        decisions.add_column(column)
    marks = {"good": "[green]right[/]", "bad": "[red]wrong[/]", None: "pending"}
    for entry in entries:
        decisions.add_row(
            entry.decision_point,
            "" if entry.model_version is None else f"v{entry.model_version}",
            entry.action,
            entry.agent_model,
            f"{marks[verdict(entry)]} {summary(entry)}",
        )
    return decisions


def where_things_stand(
    run: DemoRun,
    backend: RolloutBackend,
    traffic: CustomerTraffic,
    results: dict[str, LifecycleResult],
) -> dict:
    """Step 5: print the aliases, the router's traffic, the ledger and the timings; return
    the final state."""
    run.step("5/5 Where things stand")
    console, settings = run.console, run.settings
    aliases = registry.model_aliases(settings.model_name, settings)
    router = backend.router_state()
    table = Table(title=f"Registry aliases of {settings.model_name}")
    table.add_column("alias")
    table.add_column("version", justify="right")
    for alias, version in sorted(aliases.items()):
        table.add_row(alias, str(version))
    console.print(table)
    console.print(
        f"router: baseline v{router.baseline.version if router.baseline else None}, canary "
        f"{router.canary.version if router.canary else 'none'}, weight {router.weight:.0%}; "
        f"customers: {traffic.counts.sent} requests, {traffic.counts.failed} failed, "
        f"{traffic.counts.labelled} labels",
        highlight=False,
    )
    console.print(ledger_table(settings))
    plot = list(results.values())[-1].plot_path if results else None
    console.print(
        f"Decisions-and-outcomes plot: {plot}\n"
        + "\n".join(f"{name}: {seconds:.0f} s" for name, seconds in run.timings.items()),
        highlight=False,
    )
    return {
        "aliases": aliases,
        "router": router.model_dump(),
        "results": {k: v.model_dump() for k, v in results.items()},
        "timings": run.timings,
        "plot": plot,
        "traffic": traffic.counts,
    }


def run_demo(
    console: Console,
    plan: DemoPlan | None = None,
    wait_for_person: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Run the story and return the final state (aliases, router weights, ledger).

    The settings the demo sets for itself are put back afterwards: a person's approval of
    every decision (`wait_for_person`), and canary steps that look at their metrics every half
    second (default 2 s; the sequential test may look as often as it likes, and the story
    moves on as soon as it decides).
    """
    with environment_kept(DEMO_VARIABLES):
        if wait_for_person:
            os.environ["AGENTIC_MLOPS_APPROVAL_MODE"] = "all"
        os.environ.setdefault("AGENTIC_MLOPS_CANARY_POLL_SECONDS", "0.5")
        return _run(console, plan, wait_for_person, on_step)


DEMO_VARIABLES = ("AGENTIC_MLOPS_APPROVAL_MODE", "AGENTIC_MLOPS_CANARY_POLL_SECONDS")


def _run(
    console: Console,
    plan: DemoPlan | None,
    wait_for_person: bool,
    on_step: Callable[[str], None] | None,
) -> dict:
    settings = load_settings()
    settings.ensure_dirs()
    run = DemoRun(
        console,
        plan or DemoPlan(),
        settings,
        wait_for_person,
        on_step or (lambda title: console.rule(f"[bold]{title}")),
    )
    backend, url = train_and_serve(run)
    traffic = CustomerTraffic(
        url,
        generate_churn(20_000, 21),
        rate=run.plan.rate,
        label_delay_seconds=run.plan.label_delay_seconds,
    ).start()
    try:
        with console.status("Customers are calling; starting Ray for the retraining searches..."):
            warm_up(settings)  # while the first window fills, not when the drift turn waits
        results = tell_the_story(run, traffic)
    except BaseException:
        traffic.stop()
        backend.shutdown()
        raise
    traffic.stop()
    run.took("total")
    state = where_things_stand(run, backend, traffic, results)
    backend.shutdown()
    write_summary(state, settings.reports_dir / "demo-summary.json")
    return state


def write_summary(state: dict, path) -> None:
    """Keep the demo's final state as JSON beside the reports, for `make bench` and for anyone
    comparing one run with the next."""
    plain = {**state, "traffic": asdict(state["traffic"])}
    path.write_text(json.dumps(plain, indent=2, default=str))
