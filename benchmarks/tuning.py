"""Ray Tune on the churn data: time to reach a target ROC AUC with ASHA versus without.

Both searches sample the same configurations (random search, same seed, same trial budget)
and run two trials at a time on the local Ray runtime; the only difference is the scheduler.
The target is set just below the best validation ROC AUC the full (no early stopping) search
finds, so it is reachable; the figure is how long each search took to first report a score at
or above it, and how long each took in all.
"""

from __future__ import annotations

from sklearn.model_selection import train_test_split

ROWS = 12_000
TRIALS = 20
TARGET_GAP = 0.002


def bench_tuning_time_to_target() -> list[dict]:
    from agentic_mlops.settings import load_settings
    from agentic_mlops.tasks.churn import generate_churn
    from agentic_mlops.tasks.models import TuningData
    from agentic_mlops.tasks.training import feature_columns
    from agentic_mlops.tasks.tuning import SearchSpace, ensure_ray, run_search

    settings = load_settings()
    frame = generate_churn(ROWS, 7, "concept")
    numeric, categorical = feature_columns(frame, "churn")
    x_fit, x_val, y_fit, y_val = train_test_split(
        frame.drop(columns="churn"),
        frame["churn"],
        test_size=0.25,
        random_state=7,
        stratify=frame["churn"],
    )
    data = TuningData(x_fit, y_fit, x_val, y_val, numeric, categorical, seed=7)
    space = SearchSpace(
        families={"gradient_boosting": {}, "random_forest": {}},
        max_trials=TRIALS,
        time_budget_seconds=900,
        algorithm="random",
    )
    ensure_ray(settings)
    run_search(data, space.model_copy(update={"max_trials": 2}), settings)  # warm-up
    full = run_search(data, space, settings, early_stopping=False, max_concurrent_trials=2)
    target = full.best_score - TARGET_GAP
    full = run_search(
        data, space, settings, early_stopping=False, max_concurrent_trials=2, target_score=target
    )
    asha = run_search(
        data, space, settings, early_stopping=True, max_concurrent_trials=2, target_score=target
    )
    rows = [
        {
            "name": f"tuning: time to ROC AUC {target:.4f}, ASHA vs none "
            f"({TRIALS} trials, {ROWS // 1000}k rows)",
            "value": round(asha.time_to_target_seconds, 1)
            if asha.time_to_target_seconds is not None
            else "not reached",
            "unit": "s",
            "baseline": round(full.time_to_target_seconds or float("nan"), 1),
            "ratio": round(asha.time_to_target_seconds / full.time_to_target_seconds, 2)
            if asha.time_to_target_seconds and full.time_to_target_seconds
            else "",
            "target": "< 1",
            "met": bool(
                asha.time_to_target_seconds
                and full.time_to_target_seconds
                and asha.time_to_target_seconds < full.time_to_target_seconds
            ),
        },
        {
            "name": "tuning: whole search, ASHA vs none",
            "value": round(asha.seconds, 1),
            "unit": "s",
            "baseline": round(full.seconds, 1),
            "ratio": round(asha.seconds / full.seconds, 2),
            "headline": True,
        },
        {
            "name": "tuning: best validation ROC AUC, ASHA vs none",
            "value": round(asha.best_score, 4),
            "baseline": round(full.best_score, 4),
            "ratio": round(asha.best_score / full.best_score, 4),
        },
        {
            "name": "tuning: trials stopped early by ASHA",
            "value": f"{asha.stopped_early}/{len(asha.trials)}",
        },
    ]
    return rows
