"""`make bench`: run every benchmark, write `benchmarks/results/<date>.json` and a markdown table.

Each benchmark returns rows of {name, value, unit, baseline, ratio, target, met, headline}; a
ratio is taken against a baseline measured in the same process, because the machine is shared
and noisy. A run of every benchmark also times itself against its own 20-minute target and
rewrites the README's table of targets and headline figures (between the `bench` markers) from
its rows, so the README never shows a figure this run did not measure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
BENCH_TARGET_MINUTES = 20
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
    from agentic_mlops.flows.train import train
    from agentic_mlops.tasks.churn import generate_churn
    from agentic_mlops.tasks.training import Hyperparameters, evaluate_model, fit_model, split_data

    rows, seed, test_size = 5_000, 42, 0.25
    hyperparameters = Hyperparameters(max_iter=100)

    def direct() -> None:
        frame = generate_churn(rows, seed)
        split = split_data.fn(frame, "churn", test_size, seed)
        model = fit_model.fn(split, hyperparameters, seed)
        evaluate_model.fn(model, split.x_test, split.y_test, seed)

    def flow() -> None:
        train(generate_rows=rows, seed=seed, test_size=test_size, hyperparameters=hyperparameters)

    flow()  # warm-up: server start, MLflow migrations, imports
    direct_s = best_of(3, direct)
    flow_s = best_of(3, flow)
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
    from benchmarks.canary_judge import bench_canary_judge, bench_canary_judge_regression

    return bench_canary_judge() + bench_canary_judge_regression()


def _drift_check_regression() -> list[Row]:
    from benchmarks.drift_regression import bench_drift_check_regression

    return bench_drift_check_regression()


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


def _cli_drift() -> list[Row]:
    from benchmarks.cli_drift import bench_cli_drift

    return bench_cli_drift()


def _end_to_end() -> list[Row]:
    from benchmarks.end_to_end import bench_end_to_end

    return bench_end_to_end()


def _demo_with_stack() -> list[Row]:
    from benchmarks.end_to_end import bench_demo_with_stack

    return bench_demo_with_stack()


BENCHMARKS: dict[str, Callable[[], list[Row]]] = {
    "training_flow_overhead": bench_training_flow_overhead,
    "drift_throughput": _drift_throughput,
    "sequential_detection": _sequential_detection,
    "canary_judge": _canary_judge,
    "drift_check_regression": _drift_check_regression,
    "router": _router,
    "tuning_time_to_target": _tuning,
    "drift_streams": _drift_streams,
    "prefect_overhead": _prefect_overhead,
    "cli_drift": _cli_drift,
    "end_to_end": _end_to_end,
    "demo_with_stack": _demo_with_stack,
}


def plain(value: object) -> object:
    """JSON for what benchmarks return besides plain types (numpy scalars)."""
    return value.item() if hasattr(value, "item") else str(value)


HEADER = "| figure | value | baseline | ratio | target | met |\n" + "| --- " * 6 + "|"


def table_line(row: Row) -> str:
    """One markdown row; a `|` inside a cell (as in `|score - Evidently score|`) is escaped."""
    cells = [
        row["name"],
        f"{row['value']} {row.get('unit', '')}".strip(),
        row.get("baseline", ""),
        row.get("ratio", ""),
        row.get("target", ""),
        "" if row.get("met") is None else ("yes" if row["met"] else "**no**"),
    ]
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table(rows: list[Row]) -> str:
    return "\n".join([HEADER, *map(table_line, rows)])


def readme_table(rows: list[Row], stamp: str) -> str:
    """Every row with a target, then the headline figures without one."""
    targets = [r for r in rows if r.get("target")]
    headlines = [r for r in rows if r.get("headline") and not r.get("target")]
    met = sum(bool(r.get("met")) for r in targets)
    summary = (
        f"`make bench` on {stamp}, this 2-core machine: {met} of {len(targets)} targets met. "
        f"Every row: [benchmarks/results/{stamp}.md](benchmarks/results/{stamp}.md)."
    )
    return summary + "\n\n" + markdown_table(targets + headlines)


def update_readme(table: str, readme: Path = README) -> bool:
    """Put `table` between the README's bench markers; False when the markers are missing."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")
    return True


def readme_from_results(path: Path) -> int:
    """Rewrite the README's table from a stored complete run (`--readme results/<date>.json`)."""
    report = json.loads(path.read_text())
    if not report.get("complete_run"):
        print(f"error: {path} is not a run of every benchmark; the README shows only those")
        return 2
    update_readme(readme_table(report["results"], report["date"]))
    return 0


def main(selected: list[str]) -> int:
    if selected[:1] == ["--readme"]:
        return readme_from_results(Path(selected[1]))
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    home = tempfile.mkdtemp(prefix="agentic-mlops-bench-")
    os.environ.setdefault("AGENTIC_MLOPS_HOME", home)
    from agentic_mlops.runtime import configure_environment

    configure_environment()  # Prefect's and MLflow's offline defaults, before Prefect loads
    from prefect.testing.utilities import prefect_test_harness

    started = time.perf_counter()
    rows: list[Row] = []
    with prefect_test_harness(server_startup_timeout=120):
        for name, bench in BENCHMARKS.items():
            if selected and name not in selected:
                continue
            print(f"running {name} ...", flush=True)
            began = time.perf_counter()
            try:
                rows.extend({"benchmark": name, **row} for row in bench())
            except Exception as error:  # one failed benchmark must not lose the others' rows
                traceback.print_exc()
                rows.append(
                    {"benchmark": name, "name": f"{name}: failed", "value": str(error)[-300:]}
                )
            print(f"  {name}: {time.perf_counter() - began:.0f} s", flush=True)
    minutes = (time.perf_counter() - started) / 60
    if not selected:
        rows.append(
            {
                "benchmark": "make_bench",
                "name": "make bench: every benchmark, wall time",
                "value": round(minutes, 1),
                "unit": "min",
                "target": f"<= {BENCH_TARGET_MINUTES} min",
                "met": minutes <= BENCH_TARGET_MINUTES,
            }
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    earlier = RESULTS / f"{stamp}.json"
    if selected and earlier.exists():
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
        "complete_run": not selected,
        "results": rows,
    }
    table = markdown_table(rows)
    print(table, flush=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=plain))
    (RESULTS / f"{stamp}.md").write_text(table + "\n")
    if not selected and update_readme(readme_table(rows, stamp)):
        print(f"README table updated from this run ({minutes:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
