"""What Prefect costs in the drift check: each task as a task run against its function called
directly, and the whole flow against its steps called directly.

A champion is trained on 3,000 churn rows in a fresh home and a clean, labelled batch of 2,000
rows is checked. Per task: inside one flow run, the task's function is called directly (`.fn`,
same arguments, same process, same warm caches) and as a task, alternately, `REPEATS` times;
the medians are compared. A task that does nothing shows the fixed cost of a task run; the
rest grows with the arguments, which Prefect walks to record the run's inputs. The triage
agent's model requests and tool calls are task runs only inside a flow (`PrefectDurability`),
so the agent is timed outside any flow (direct) and inside one. Whole flow: the median wall
time of `drift_check` (no action) against the sum of the direct medians of its steps; what
is left after an empty flow run's own cost, spread over the task runs the flow created.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentic_mlops.settings import Settings

Row = dict[str, object]
REPEATS = 7
TRAIN_ROWS = 3_000
BATCH_ROWS = 2_000


def _timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call(*args, **kwargs)
    return time.perf_counter() - start, value


def _median_ms(timings: list[float]) -> float:
    return 1_000 * statistics.median(timings)


def task_runs_of(flow_run_id: str) -> int:
    """How many task runs a flow run created, read through the REST API."""
    from prefect.client.orchestration import get_client

    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}, "limit": 200, "offset": 0}
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/task_runs/filter", json=body)
    return len(response.json())


def nothing() -> None:
    """A task that does nothing: what a task run costs with no work and no arguments."""


def _steps(
    batch_path: str, settings: Settings
) -> list[tuple[str, Any, Callable[[dict], tuple], dict[str, Any]]]:
    """A no-op task, then the drift check's tasks in flow order, each with how to build its
    arguments from the results of the steps before it (`done`, by task name) and its keyword
    arguments."""
    from prefect import task

    from agentic_mlops.tasks import drift_actions, reference
    from agentic_mlops.tasks.batches import load_batch
    from agentic_mlops.tasks.drift import detect_drift, drift_report, update_sequential
    from agentic_mlops.tasks.quality import check_quality

    name = settings.model_name
    report = settings.reports_dir / name / "overhead-drift.html"
    in_force = {"settings": settings}
    return [
        ("a task doing nothing", task(nothing, name="nothing"), lambda d: (), {}),
        ("load-batch", load_batch, lambda d: (batch_path,), {}),
        ("resolve-reference", reference.resolve_reference, lambda d: (None, "churn"), in_force),
        (
            "check-quality",
            check_quality,
            lambda d: (batch_path, d["load-batch"], d["resolve-reference"].suite),
            in_force,
        ),
        (
            "score-batch",
            reference.score_batch,
            lambda d: (d["load-batch"], d["resolve-reference"]),
            in_force,
        ),
        (
            "detect-drift",
            detect_drift,
            lambda d: (
                d["resolve-reference"].profile,
                d["load-batch"],
                d["score-batch"].champion,
            ),
            in_force,
        ),
        (
            "evidently-report",
            drift_report,
            lambda d: (
                d["resolve-reference"].profile,
                d["resolve-reference"].sample,
                d["load-batch"],
                report,
                settings.drift.report_rows,
                settings.seed,
            ),
            {},
        ),
        (
            "update-sequential-detector",
            update_sequential,
            lambda d: (name, "overhead.parquet", d["detect-drift"], d["resolve-reference"].key),
            in_force,
        ),
        (
            "record-triage",
            drift_actions.record_triage,
            lambda d: (d["triage"], d["evidence"], d["resolve-reference"].version, None),
            in_force,
        ),
    ]


def _evidence(done: dict) -> Any:
    from agentic_mlops.tasks import reference

    ref = done["resolve-reference"]
    return reference.triage_evidence(
        ref,
        done["check-quality"].result,
        done["detect-drift"],
        done["update-sequential-detector"],
        [],
        None,
        done["load-batch"],
        "churn",
    )


def _probe(batch_path: str, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Inside one flow run, each step called directly and as a task, alternately; then the
    triage agent outside any flow (no task runs) on the same evidence."""
    from prefect import flow

    from agentic_mlops.agents.drift_triage import triage
    from agentic_mlops.settings import load_settings

    agent = "triage agent (its model requests and tool calls)"
    settings = load_settings()

    @flow(name="prefect-overhead-probe")
    def probe() -> tuple[dict[str, tuple[list[float], list[float]]], Any]:
        done: dict[str, Any] = {}
        timings: dict[str, tuple[list[float], list[float]]] = {}
        for name, task_obj, arguments, keywords in _steps(batch_path, settings):
            if name == "record-triage":
                done["evidence"] = _evidence(done)
                done["triage"] = triage(done["evidence"], settings)
            direct, as_task = [], []
            for index in range(repeats):
                args = arguments(done)
                order = [(direct, task_obj.fn), (as_task, task_obj)]
                for timings_of, call in order if index % 2 == 0 else order[::-1]:
                    seconds, done[name] = _timed(call, *args, **keywords)
                    timings_of.append(seconds)
            timings[name] = (direct, as_task)
        in_flow = [_timed(lambda: triage(done["evidence"], settings))[0] for _ in range(repeats)]
        timings[agent] = ([], in_flow)
        return timings, done["evidence"]

    timings, evidence = probe()
    timings[agent][0].extend(_timed(lambda: triage(evidence, settings))[0] for _ in range(repeats))
    return timings


def bench_prefect_overhead(repeats: int = REPEATS) -> list[Row]:
    from prefect import flow

    from agentic_mlops.flows.drift import drift_check
    from agentic_mlops.flows.train import train
    from agentic_mlops.tasks.batches import write_table
    from agentic_mlops.tasks.churn import generate_churn
    from agentic_mlops.tasks.training import Hyperparameters

    previous_home = os.environ.get("AGENTIC_MLOPS_HOME")
    home = Path(tempfile.mkdtemp(prefix="agentic-mlops-overhead-"))
    os.environ["AGENTIC_MLOPS_HOME"] = str(home)
    try:
        train(generate_rows=TRAIN_ROWS, seed=1, hyperparameters=Hyperparameters(max_iter=80))
        batch = str(write_table(generate_churn(BATCH_ROWS, 100), home / "incoming" / "b.parquet"))
        params = {"current_path": batch, "act": False}
        drift_check(**params)  # warm-up: imports, model load, Evidently
        timings = _probe(batch, repeats)
        empty = flow(nothing, name="empty")
        empty_seconds = [_timed(empty)[0] for _ in range(repeats)]
        flow_seconds, task_runs = [], []
        for _ in range(repeats):
            seconds, state = _timed(lambda: drift_check(**params, return_state=True))
            flow_seconds.append(seconds)
            task_runs.append(task_runs_of(state.state_details.flow_run_id))
    finally:
        if previous_home is None:
            os.environ.pop("AGENTIC_MLOPS_HOME", None)
        else:
            os.environ["AGENTIC_MLOPS_HOME"] = previous_home

    rows: list[Row] = []
    overheads = []
    for name, (direct, as_task) in timings.items():
        direct_ms, task_ms = _median_ms(direct), _median_ms(as_task)
        overheads.append(task_ms - direct_ms)
        row: Row = {
            "name": f"prefect overhead: {name}, as a task run in a flow "
            f"(baseline: called directly), median of {repeats}",
            "value": round(task_ms, 1),
            "unit": "ms",
            "baseline": round(direct_ms, 2),
        }
        if direct_ms >= 0.1:
            row["ratio"] = round(task_ms / direct_ms, 2)
        rows.append(row)
    per_task = [
        overhead
        for name, overhead in zip(timings, overheads, strict=True)
        if "agent" not in name and "nothing" not in name
    ]
    direct_total = sum(_median_ms(direct) for direct, _ in timings.values())
    flow_ms = _median_ms(flow_seconds)
    runs = int(statistics.median(task_runs))
    rows += [
        {
            "name": "prefect overhead: added per task run, median over the drift check's "
            f"{len(per_task)} tasks",
            "value": round(statistics.median(per_task), 1),
            "unit": "ms",
            "headline": True,
        },
        {
            "name": f"prefect overhead: a flow run doing nothing, median of {repeats}",
            "value": round(_median_ms(empty_seconds), 1),
            "unit": "ms",
        },
        {
            "name": f"prefect overhead: drift check flow, {BATCH_ROWS} rows, no action "
            "(baseline: its steps called directly, incl. the agent outside a flow)",
            "value": round(flow_ms, 1),
            "unit": "ms",
            "baseline": round(direct_total, 1),
            "ratio": round(flow_ms / direct_total, 2),
            "headline": True,
        },
        {
            "name": f"prefect overhead: drift check flow, added per task run beyond an empty "
            f"flow run ({runs} task runs incl. the agent's model requests and tool calls)",
            "value": round((flow_ms - direct_total - _median_ms(empty_seconds)) / runs, 1),
            "unit": "ms",
        },
    ]
    return rows
