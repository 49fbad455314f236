"""Drift benchmarks: throughput against a stored profile, and the sequential detector.

Throughput: 1,000,000 rows x 50 mixed columns (20 float, 10 wide-range integer, 15 text
categories, 5 small integers that Evidently treats as categories), a quarter of them shifted.
The same check runs as Evidently's `DataDriftPreset` on the same two tables, in the same
process, as the baseline; per-column verdicts and scores are compared. No sampling is used.

Sequential: batches of the churn `gradual` scenario, where the price rise and the change in
behaviour grow from nothing to full over 30 batches: the first batch at which the CUSUM
alarms against the first at which any single-batch test (Evidently's defaults) flags a
column; and alarms over drift-free batches.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

Row = dict[str, object]
ROWS = 1_000_000
FALSE_ALARM_BOUND = 1.0
"""Sequential evidence must keep false alarms bounded: at most this many per 100 clean batches."""


def evidently_columns(snapshot) -> dict[str, tuple[str, float]]:
    """Per-column (method, score) from an Evidently snapshot, to compare with ours."""
    found = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            found[config["column"]] = (config.get("method", ""), float(metric["value"]))
    return found


def wide_table(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """A mixed table; with `shift`, every fourth column of each kind moves."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for i in range(20):
        moved = shift if i % 4 == 0 else 0.0
        columns[f"float_{i:02d}"] = rng.normal(i * 0.1 + moved, 1 + i * 0.05, rows)
    for i in range(10):
        moved = 3 * shift if i % 4 == 0 else 0.0
        columns[f"count_{i:02d}"] = rng.poisson(5 + i + moved, rows)
    for i in range(15):
        size = 3 + 3 * i
        weights = np.ones(size)
        weights[0] += shift * size * (i % 4 == 0)
        labels = np.array([f"level_{j}" for j in range(size)], dtype=object)
        columns[f"category_{i:02d}"] = rng.choice(labels, rows, p=weights / weights.sum())
    for i in range(5):
        columns[f"small_{i}"] = rng.integers(0, 4 + i, rows)
    return pd.DataFrame(columns)


def bench_drift_throughput() -> list[Row]:
    from agentic_mlops.settings import Settings
    from agentic_mlops.tasks.drift import (
        build_profile,
        compare_to_profile,
        evidently_report,
    )

    reference, current = wide_table(ROWS, 1), wide_table(ROWS, 2, shift=0.3)
    start = time.perf_counter()
    profile = build_profile(reference)
    profile_s = time.perf_counter() - start

    timings, ours = {}, None
    for threads in (1, 2):
        settings = Settings(drift_threads=threads)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            ours = compare_to_profile(profile, current, settings=settings)
            best = min(best, time.perf_counter() - start)
        timings[threads] = best

    start = time.perf_counter()
    snapshot = evidently_report(profile, reference, current)
    evidently_s = time.perf_counter() - start
    theirs = evidently_columns(snapshot)

    shared = [name for name in ours.columns if name in theirs]
    agree = sum(ours.columns[n].drifted == (theirs[n][1] >= 0.1) for n in shared)
    worst = max(abs(ours.columns[n].score - theirs[n][1]) for n in shared)
    check_s = timings[2]
    return [
        {
            "name": "drift: build reference profile once (1M x 50)",
            "value": round(profile_s, 2),
            "unit": "s",
        },
        {
            "name": "drift: check 1M x 50 vs stored profile, 1 thread",
            "value": round(timings[1], 2),
            "unit": "s",
            "baseline": round(evidently_s, 2),
            "ratio": round(evidently_s / timings[1], 1),
        },
        {
            "name": "drift: check 1M x 50 vs stored profile, 2 threads",
            "value": round(check_s, 2),
            "unit": "s",
            "target": "<= 10 s",
            "met": check_s <= 10,
        },
        {
            "name": "drift: Evidently DataDriftPreset, same data (baseline)",
            "value": round(evidently_s, 2),
            "unit": "s",
        },
        {
            "name": "drift: speed-up over Evidently (2 threads)",
            "value": round(evidently_s / check_s, 1),
            "unit": "x",
            "baseline": round(evidently_s, 2),
            "ratio": round(evidently_s / check_s, 1),
            "target": ">= 10x",
            "met": evidently_s / check_s >= 10,
        },
        {
            "name": "drift: per-column verdicts agreeing with Evidently",
            "value": f"{agree}/{len(shared)}",
            "target": "all",
            "met": agree == len(shared),
        },
        {"name": "drift: largest |score - Evidently score|", "value": f"{worst:.2e}"},
    ]


def bench_sequential_detection(runs: int = 10, batches: int = 30, rows: int = 1_000) -> list[Row]:
    from agentic_mlops.settings import Settings
    from agentic_mlops.tasks.churn import generate_batches, generate_churn
    from agentic_mlops.tasks.drift import CusumState, build_profile, compare_to_profile, cusum_step

    settings = Settings()
    profile = build_profile(generate_churn(10_000, 1).drop(columns=["churn"]))

    def first_flags(frames):
        state, alarm, single = CusumState(), None, None
        for index, frame in enumerate(frames):
            result = compare_to_profile(profile, frame.drop(columns=["churn"]), settings=settings)
            state = cusum_step(
                state,
                result,
                settings.sequential.k,
                settings.sequential.h,
                settings.sequential.min_effect,
            )
            if alarm is None and state.alarm_columns:
                alarm = index
            if single is None and any(c.drifted for c in result.columns.values()):
                single = index
        return alarm, single

    cusum, single = [], []
    for run in range(runs):
        alarm, flagged = first_flags(generate_batches(batches, rows, 1_000 * run, "gradual"))
        cusum.append(batches if alarm is None else alarm)
        single.append(batches if flagged is None else flagged)
    null_batches = 200
    false_alarms, per_batch_flags = 0, 0
    state = CusumState()
    for index in range(null_batches):
        frame = generate_churn(rows, 50_000 + index).drop(columns=["churn"])
        result = compare_to_profile(profile, frame, settings=settings)
        state = cusum_step(
            state,
            result,
            settings.sequential.k,
            settings.sequential.h,
            settings.sequential.min_effect,
        )
        per_batch_flags += any(c.drifted for c in result.columns.values())
        if state.alarm_columns:
            false_alarms += 1
            state = CusumState()
    return [
        {
            "name": f"sequential: batches to detect gradual drift, CUSUM (mean of {runs})",
            "value": round(float(np.mean(cusum)), 1),
            "unit": "batches",
            "baseline": round(float(np.mean(single)), 1),
            "ratio": round(float(np.mean(cusum)) / max(float(np.mean(single)), 1e-9), 2),
            "target": "< single-batch test",
            "met": float(np.mean(cusum)) < float(np.mean(single)),
        },
        {
            "name": "sequential: false alarms per 100 drift-free batches, CUSUM",
            "value": round(100 * false_alarms / null_batches, 2),
            "unit": "per 100",
            "baseline": round(100 * per_batch_flags / null_batches, 2),
            "target": f"<= {FALSE_ALARM_BOUND:g} per 100",
            "met": 100 * false_alarms / null_batches <= FALSE_ALARM_BOUND,
        },
    ]
