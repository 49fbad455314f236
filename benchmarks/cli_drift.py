"""What a user waits for: `agentic-mlops drift-check` as whole processes, from process start to
exit, against Evidently's `DataDriftPreset` in one Python process on the same files.

The tables: 200,000 rows x 20 columns (16 numeric, 4 categorical), the current one with a
quarter of its columns shifted, as Parquet files. Each command runs in a new process on a new
home with no champion, so the reference is the `--reference` file, profiled on its first
use; `--no-act`, as a check before deciding to act. Three settings:

- cold, no local stack: Prefect starts a temporary server for the process;
- cold, with the home's local stack up (`agentic-mlops up`, timed apart);
- a 10,000-row batch against the same reference, with the stack up (its profile cached).

Each run also gives the gap between the printed result (the JSON line) and the process's exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agentic_mlops import stack

Row = dict[str, object]
ROWS = 200_000
SMALL_ROWS = 10_000
SMALL_TARGET_SECONDS = 5.0
TIMEOUT_SECONDS = 600


def mixed_table(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """16 numeric and 4 categorical columns; with `shift`, every fourth of each kind moves."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for i in range(16):
        moved = shift if i % 4 == 0 else 0.0
        columns[f"num_{i:02d}"] = rng.normal(i * 0.1 + moved, 1 + i * 0.05, rows)
    for i in range(4):
        size = 4 + 3 * i
        weights = np.ones(size)
        weights[0] += shift * size * (i % 4 == 0)
        labels = np.array([f"level_{j}" for j in range(size)], dtype=object)
        columns[f"cat_{i}"] = rng.choice(labels, rows, p=weights / weights.sum())
    return pd.DataFrame(columns)


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a new user: nothing but the home is set."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "MLFLOW_", "AGENTIC_MLOPS_", "RAY_"))
    }
    env["AGENTIC_MLOPS_HOME"] = str(home)
    return env


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, float | None]:
    """Run a command; seconds from start to exit, and from its last stdout line to exit."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed = None
    lines = []
    for line in process.stdout:
        printed = time.perf_counter()
        lines.append(line)
    process.wait(timeout=TIMEOUT_SECONDS)
    ended = time.perf_counter()
    if process.returncode != 0:
        tail = process.stderr.read()[-2000:]
        raise RuntimeError(f"{command[:3]} failed ({process.returncode}):\n{tail}")
    return ended - started, (ended - printed) if printed else None


def cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


EVIDENTLY = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
    definition = DataDefinition(
        numerical_columns=[c for c in reference if c.startswith("num_")],
        categorical_columns=[c for c in reference if c.startswith("cat_")],
    )
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    print(len(snapshot.dict()["metrics"]))
    """
)


def drift_check(reference: Path, current: Path, env: dict[str, str]) -> tuple[float, float]:
    command = [cli("agentic-mlops"), "drift-check", "--reference", str(reference)]
    command += ["--current", str(current), "--no-act", "--json"]
    return timed_process(command, env)


def bench_cli_drift() -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="agentic-mlops-cli-bench-"))
    reference, current, small = (folder / f"{n}.parquet" for n in ("ref", "cur", "small"))
    mixed_table(ROWS, 1).to_parquet(reference)
    drifted = mixed_table(ROWS, 2, shift=0.3)
    drifted.to_parquet(current)
    drifted.head(SMALL_ROWS).to_parquet(small)

    evidently_s, _ = timed_process(
        [sys.executable, "-c", EVIDENTLY, str(reference), str(current)], clean_env(folder)
    )
    bare_env = clean_env(folder / "home-bare")
    bare_s, bare_gap = drift_check(reference, current, bare_env)

    stacked_env = clean_env(folder / "home-stack")
    up_s, _ = timed_process([cli("agentic-mlops"), "up"], stacked_env)
    try:
        # "stack up" is the whole stack ready: the check server goes on loading after `up`
        stack.wait_for_checks(Path(stacked_env["AGENTIC_MLOPS_HOME"]))
        stacked_s, stacked_gap = drift_check(reference, current, stacked_env)
        again_s, _ = drift_check(reference, current, stacked_env)
        small_s, small_gap = drift_check(reference, small, stacked_env)
    finally:
        timed_process([cli("agentic-mlops"), "down"], stacked_env)
    shape = f"{ROWS // 1000}k x 20"
    return [
        {
            "name": f"cli drift-check: Evidently DataDriftPreset, one process ({shape})",
            "value": round(evidently_s, 1),
            "unit": "s",
        },
        {
            "name": f"cli drift-check --reference, whole process, cold, no stack ({shape})",
            "value": round(bare_s, 1),
            "unit": "s",
            "baseline": round(evidently_s, 1),
            "ratio": round(evidently_s / bare_s, 2),
            "target": ">= 1x Evidently",
            "met": bare_s <= evidently_s,
            "headline": True,
        },
        {
            "name": f"cli drift-check --reference, whole process, cold, stack up ({shape})",
            "value": round(stacked_s, 1),
            "unit": "s",
            "baseline": round(evidently_s, 1),
            "ratio": round(evidently_s / stacked_s, 2),
            "target": ">= 2x Evidently",
            "met": 2 * stacked_s <= evidently_s,
            "headline": True,
        },
        {
            "name": f"cli drift-check, same reference again (profile cached), stack up ({shape})",
            "value": round(again_s, 1),
            "unit": "s",
            "baseline": round(evidently_s, 1),
            "ratio": round(evidently_s / again_s, 2),
        },
        {
            "name": f"cli drift-check on a {SMALL_ROWS // 1000}k-row batch, stack up",
            "value": round(small_s, 1),
            "unit": "s",
            "target": f"<= {SMALL_TARGET_SECONDS:.0f} s",
            "met": small_s <= SMALL_TARGET_SECONDS,
            "headline": True,
        },
        {
            "name": "cli drift-check: result printed to process exit (no stack / stack / 10k)",
            "value": f"{bare_gap:.2f} / {stacked_gap:.2f} / {small_gap:.2f}",
            "unit": "s",
        },
        {
            "name": "cli: `agentic-mlops up` (Prefect server + MLflow UI)",
            "value": round(up_s, 1),
            "unit": "s",
        },  # fmt: skip
    ]
