"""`make bench`: run every benchmark, write `benchmarks/results/<date>.json` and a markdown table.

Each benchmark returns rows of {name, value, unit, baseline, ratio, target, met}; a ratio is
taken against a baseline measured in the same process, because the machine is shared and noisy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
Row = dict[str, object]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """The fastest of `repeats` wall-clock timings of `run`, in seconds."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def bench_training_flow_overhead() -> list[Row]:
    """The training flow (Prefect + MLflow logging) versus its fit/evaluate called directly."""
    from agentic_mlops.flows.train import TrainParameters, train
    from agentic_mlops.tasks.churn import generate_churn
    from agentic_mlops.tasks.training import Hyperparameters, evaluate_model, fit_model, split_data

    params = TrainParameters(rows=5_000, hyperparameters=Hyperparameters(max_iter=100))

    def direct() -> None:
        frame = generate_churn(params.rows, params.seed)
        split = split_data.fn(frame, "churn", params.test_size, params.seed)
        model = fit_model.fn(split, params.hyperparameters, params.seed)
        evaluate_model.fn(model, split.x_test, split.y_test, params.seed)

    train(params)  # warm-up: server start, MLflow migrations, imports
    direct_s = best_of(3, direct)
    flow_s = best_of(3, lambda: train(params))
    return [
        {
            "name": "training: direct fit+evaluate (5k rows)",
            "value": round(direct_s, 3),
            "unit": "s",
        },
        {
            "name": "training: full flow incl. MLflow logging + registry",
            "value": round(flow_s, 3),
            "unit": "s",
            "baseline": round(direct_s, 3),
            "ratio": round(flow_s / direct_s, 2),
        },
    ]


def _drift_throughput() -> list[Row]:
    from benchmarks.drift import bench_drift_throughput

    return bench_drift_throughput()


def _sequential_detection() -> list[Row]:
    from benchmarks.drift import bench_sequential_detection

    return bench_sequential_detection()


def _canary_judge() -> list[Row]:
    from benchmarks.canary_judge import bench_canary_judge

    return bench_canary_judge()


def _router() -> list[Row]:
    from benchmarks.serving import bench_router

    return bench_router()


def _tuning() -> list[Row]:
    from benchmarks.tuning import bench_tuning_time_to_target

    return bench_tuning_time_to_target()


def _drift_streams() -> list[Row]:
    from benchmarks.drift_streams import bench_drift_streams

    return bench_drift_streams()


def _prefect_overhead() -> list[Row]:
    from benchmarks.prefect_overhead import bench_prefect_overhead

    return bench_prefect_overhead()


BENCHMARKS: dict[str, Callable[[], list[Row]]] = {
    "training_flow_overhead": bench_training_flow_overhead,
    "drift_throughput": _drift_throughput,
    "sequential_detection": _sequential_detection,
    "canary_judge": _canary_judge,
    "router": _router,
    "tuning_time_to_target": _tuning,
    "drift_streams": _drift_streams,
    "prefect_overhead": _prefect_overhead,
}


def plain(value: object) -> object:
    """JSON for what benchmarks return besides plain types (numpy scalars)."""
    return value.item() if hasattr(value, "item") else str(value)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        value = f"{row['value']} {row.get('unit', '')}".strip()
        cells = [
            row["name"],
            value,
            row.get("baseline", ""),
            row.get("ratio", ""),
            row.get("target", ""),
            {True: "yes", False: "no"}.get(row.get("met"), ""),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(selected: list[str]) -> int:
    home = tempfile.mkdtemp(prefix="agentic-mlops-bench-")
    os.environ.setdefault("AGENTIC_MLOPS_HOME", home)
    from agentic_mlops.runtime import configure_environment

    configure_environment()  # Prefect's and MLflow's offline defaults, before Prefect loads
    from prefect.testing.utilities import prefect_test_harness

    rows: list[Row] = []
    with prefect_test_harness(server_startup_timeout=120):
        for name, bench in BENCHMARKS.items():
            if selected and name not in selected:
                continue
            print(f"running {name} ...", flush=True)
            rows.extend({"benchmark": name, **row} for row in bench())
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    earlier = RESULTS / f"{stamp}.json"
    if earlier.exists():
        ran = {row["benchmark"] for row in rows}
        kept = [r for r in json.loads(earlier.read_text())["results"] if r["benchmark"] not in ran]
        rows = kept + rows
    report = {
        "date": stamp,
        "machine": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "results": rows,
    }
    table = markdown_table(rows)
    print(table, flush=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=plain))
    (RESULTS / f"{stamp}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
