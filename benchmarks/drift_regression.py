"""The drift check's performance evidence for a regression model, on a table we did not make.

A regressor's labelled batch gives its R²; the triage counts a fall as a performance drop only
when it passes `triage_performance_drop` and also twice its standard error (the batch's and
the holdout's, `reference.r2_standard_error`). The baseline is the same limit without the
noise test. The model is scikit-learn's gradient boosting fitted on half of the diabetes table;
its holdout is the other half, and each batch is 111 rows drawn from that holdout (the size
of the adoption tests' batches): clean, or with labels that moved by a share of their spread
(a concept change the model did not see).
"""

from __future__ import annotations

import math

import numpy as np

Row = dict[str, object]
BATCH_ROWS = 111
LABEL_SHIFTS = (0.0, 0.35, 0.5)
"""How far a batch's labels move, in standard deviations of the target."""


def diabetes_holdout(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A gradient-boosting regressor's predictions on the diabetes holdout, and the labels."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import train_test_split

    data = load_diabetes(as_frame=True, scaled=False)
    x_fit, x_hold, y_fit, y_hold = train_test_split(
        data.data, data.target, test_size=0.5, random_state=seed
    )
    model = GradientBoostingRegressor(random_state=0, n_estimators=100, max_depth=2)
    return model.fit(x_fit, y_fit).predict(x_hold), y_hold.to_numpy(dtype=float)


def bench_drift_check_regression(runs: int = 1_000, seed: int = 7) -> list[Row]:
    """Alarm rates of the triage's R² rule against the limit alone, per label shift."""
    from agentic_mlops.agents.triage_policy import performance_dropped
    from agentic_mlops.decisions import PerformanceEvidence, task_metric
    from agentic_mlops.settings import TriageLimits
    from agentic_mlops.tasks.reference import r2_standard_error

    predictions, labels = diabetes_holdout()
    reference = task_metric("regression", labels, predictions)
    holdout_error = r2_standard_error(labels, predictions)
    limits = TriageLimits()
    spread = float(labels.std())
    rows: list[Row] = []
    for shift in LABEL_SHIFTS:
        ruled = naive = 0
        for run in range(runs):
            rng = np.random.default_rng([seed, run])
            picked = rng.integers(0, len(labels), BATCH_ROWS)
            batch_labels = labels[picked] + shift * spread
            batch_predictions = predictions[picked]
            noise = math.hypot(r2_standard_error(batch_labels, batch_predictions), holdout_error)
            evidence = PerformanceEvidence(
                metric="r2",
                reference=reference,
                current=task_metric("regression", batch_labels, batch_predictions),
                rows=BATCH_ROWS,
                drop_standard_error=noise,
            )
            ruled += performance_dropped(evidence, limits)
            naive += performance_dropped(
                evidence.model_copy(update={"drop_standard_error": None}), limits
            )
        label = (
            "clean batches: false performance-drop alarms"
            if shift == 0
            else f"labels moved by {shift:g} sd: R² drops detected"
        )
        row: Row = {
            "name": f"drift check, regression (diabetes, {BATCH_ROWS}-row labelled batches, "
            f"holdout R² {reference:.2f}): {label} (baseline: the "
            f"{limits.performance_drop:g} limit without the noise test)",
            "value": round(ruled / runs, 3),
            "unit": "share",
            "baseline": round(naive / runs, 3),
        }
        if shift == 0:
            row |= {"target": "<= 0.05", "met": ruled / runs <= 0.05}
        rows.append(row)
    return rows
