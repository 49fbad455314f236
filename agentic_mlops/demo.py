"""The whole story on the embedded defaults: drift in production, noticed, fixed, and a bad fix
caught.

1. Train a champion on reference customers, serve it behind the canary router, and send
   simulated customer traffic with delayed labels.
2. A lifecycle turn on a normal window: nothing to do. Its rows come as in production: the
   monitor's window of what the router logged, with the labels customers sent back.
3. A price rise that also changes churn behaviour arrives mid-stream. The next lifecycle turn,
   on the router's window since the rise, detects it, triages, retrains with a search,
   canaries the challenger on live traffic and promotes it.
4. A broken label join in an offline pipeline feeds the next retraining wrong labels (this
   turn gets that offline batch). Offline evaluation shares the bug; the canary, judged on
   live labels, catches the worse model and rolls it back.
5. Final state: aliases, the router's traffic, the ledger with outcomes, and where to look.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

DRIFT_SEVERITY = 1.0


@dataclass
class DemoPlan:
    """Sizes and budgets of the demo; the end-to-end test runs a smaller one."""

    train_rows: int = 3_000
    window_rows: int = 700
    rate: float = 70.0
    label_delay_seconds: float = 1.0
    max_trials: int = 4
    search_seconds: float = 30.0
    canary_steps: tuple[int, ...] = (50, 100)
    canary_step_seconds: float = 25.0
    canary_min_samples: int = 120
    approval_timeout_seconds: int = 20
    bad_model: bool = True


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


def run_demo(
    console: Console,
    plan: DemoPlan | None = None,
    wait_for_person: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Run the story and return the final state (aliases, router weights, ledger)."""
    from agentic_mlops.flows.lifecycle import lifecycle
    from agentic_mlops.flows.train import train
    from agentic_mlops.settings import load_settings
    from agentic_mlops.tasks import ledger, registry
    from agentic_mlops.tasks.batches import write_table
    from agentic_mlops.tasks.churn import generate_churn
    from agentic_mlops.tasks.rollout import rollout_backend
    from agentic_mlops.tasks.traffic import CustomerTraffic
    from agentic_mlops.tasks.training import Hyperparameters

    plan = plan or DemoPlan()
    if wait_for_person:
        os.environ["AGENTIC_MLOPS_APPROVAL_MODE"] = "all"
    settings = load_settings()
    settings.ensure_dirs()
    step = on_step or (lambda title: console.rule(f"[bold]{title}"))
    incoming = settings.home / "incoming"
    timings: dict[str, float] = {}
    started = time.monotonic()

    step("1/5 Training the champion on reference customers")
    with console.status("Training, logging to MLflow, registering..."):
        trained = train(
            generate_rows=plan.train_rows, seed=1, hyperparameters=Hyperparameters(max_iter=100)
        )
    console.print(
        f"champion: {trained.model_name} v{trained.version}, holdout ROC AUC "
        f"{trained.metrics['roc_auc']:.3f}"
    )
    backend = rollout_backend(settings)
    with console.status("Starting the router and the champion's model server..."):
        url = backend.start_router()
        backend.set_baseline(trained.version)
    console.print(f"serving v{trained.version} behind the router at {url}")
    timings["trained and serving"] = time.monotonic() - started

    def turn(title: str, offline=None, **extra):
        """One lifecycle turn: on the monitor's window of the router's log, or on an offline
        batch when one is given."""
        path = write_table(offline, incoming / f"{title}.parquet") if offline is not None else None
        arguments = dict(
            batch_path=str(path) if path else None,
            retrain_max_trials=plan.max_trials,
            retrain_time_budget_seconds=plan.search_seconds,
            canary_steps=list(plan.canary_steps),
            canary_step_seconds=plan.canary_step_seconds,
            canary_min_samples=plan.canary_min_samples,
            approval_timeout_seconds=3600 if wait_for_person else plan.approval_timeout_seconds,
            **extra,
        )
        if wait_for_person:
            console.print(
                "[yellow]Approval mode `all`: each retrain, rollback and promotion waits for "
                "you. Open the paused run in the Prefect UI (PREFECT_API_URL must point at a "
                "running server) and answer the form.[/]"
            )
        began = time.monotonic()
        with console.status(f"{title}: drift check, triage, and whatever it decides..."):
            result = lifecycle(**arguments)
        timings[f"{title} turn"] = time.monotonic() - began
        for line in result.steps:
            console.print(f"  - {line}", highlight=False)
        return result

    reference = generate_churn(20_000, 21)
    traffic = CustomerTraffic(
        url, reference, rate=plan.rate, label_delay_seconds=plan.label_delay_seconds
    ).start()
    results = {}
    try:
        step("2/5 A normal stretch of production traffic")
        mark, since = traffic.mark(), time.time() + plan.label_delay_seconds
        _wait_for_window(traffic, mark, plan.window_rows, console, "normal traffic")
        results["normal"] = turn("normal-window", window_since=since, window_rows=plan.window_rows)

        step("3/5 A price rise arrives, and churn behaviour changes with it")
        drifted = generate_churn(20_000, 22, "gradual", severity=DRIFT_SEVERITY)
        traffic.use(drifted)
        onset = time.monotonic()
        mark, since = traffic.mark(), time.time() + plan.label_delay_seconds
        _wait_for_window(traffic, mark, plan.window_rows, console, "after the rise")
        results["drift"] = turn("drift-window", window_since=since, window_rows=plan.window_rows)
        timings["drift onset to new champion"] = time.monotonic() - onset

        if plan.bad_model:
            step("4/5 A broken label join feeds the next retraining wrong labels")
            mark = traffic.mark()
            window = _wait_for_window(traffic, mark, plan.window_rows, console, "next window")
            rng = np.random.default_rng(5)
            window["churn"] = rng.permutation(window["churn"].to_numpy())
            console.print(
                "The labels of this window were shuffled by the broken join. The holdout "
                "shares the bug, so the holdout gate is off for this turn; the canary is "
                "judged on live labels."
            )
            results["bad"] = turn("bad-labels-window", window, require_improvement=False)
    except BaseException:
        traffic.stop()
        backend.shutdown()
        raise
    traffic.stop()
    timings["total"] = time.monotonic() - started

    step("5/5 Where things stand")
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
    entries = list(reversed(ledger.list_decisions(settings.model_name, settings=settings)))
    decisions = Table(title="Decision ledger (oldest first)")
    for column in ("decision point", "version", "action", "by", "outcome"):
        decisions.add_column(column)
    from agentic_mlops.tasks.lifecycle_report import summary, verdict

    for entry in entries:
        mark_ = {"good": "[green]right[/]", "bad": "[red]wrong[/]", None: "pending"}
        decisions.add_row(
            entry.decision_point,
            "" if entry.model_version is None else f"v{entry.model_version}",
            entry.action,
            entry.agent_model,
            f"{mark_[verdict(entry)]} {summary(entry)}",
        )
    console.print(decisions)
    plot = list(results.values())[-1].plot_path if results else None
    console.print(
        f"Decisions-and-outcomes plot: {plot}\n"
        + "\n".join(f"{name}: {seconds:.0f} s" for name, seconds in timings.items()),
        highlight=False,
    )
    backend.shutdown()
    state = {
        "aliases": aliases,
        "router": router.model_dump(),
        "results": {k: v.model_dump() for k, v in results.items()},
        "timings": timings,
        "plot": plot,
        "traffic": traffic.counts,
    }
    write_summary(state, settings.reports_dir / "demo-summary.json")
    return state


def write_summary(state: dict, path) -> None:
    """Keep the demo's final state as JSON beside the reports, for `make bench` and for anyone
    comparing one run with the next."""
    plain = {**state, "traffic": asdict(state["traffic"])}
    path.write_text(json.dumps(plain, indent=2, default=str))
