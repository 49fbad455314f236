"""Live monitoring of the served model: serving metrics, prediction drift, online and
label-free performance, and trends that cross a hard limit before they do.

- **Serving metrics** come from the router's observations (`RouterMetrics`, since a cursor
  kept between runs) or from Prometheus (`PrometheusMetrics`, over the time since the last
  run): traffic, the share of failed model calls, latency, the Brier score of labelled calls.
- **Prediction drift** tests the champion's recent scores against its reference scores with
  the drift check's own column test (`tasks/drift.py`).
- **Online performance**: ROC AUC, Brier score and error rate of the rows whose delayed labels
  arrived, joined to the logged rows by request id.
- **Label-free estimate (CBPE)**: if the scores are calibrated, a row scored p is right with
  probability max(p, 1 - p), so expected accuracy, ROC AUC and Brier score follow from the
  scores alone. The estimate is trusted only once calibration was checked: on the recent
  labelled rows (Hosmer-Lemeshow test and expected calibration error), or, with too few of
  them, on the training holdout's calibration error.
- **Trends**: each run's metrics are one point of a history kept beside the decision ledger;
  over the last points a Theil-Sen slope with a one-sided Mann-Kendall test says whether a
  metric is getting worse, and the slope projects when it will cross its limit.

The monitor flow runs these in order (`read_since_last_run`, `assess_champion`, `next_point`,
`trends_and_alerts`) and returns a `MonitorResult`, published by `publish_monitor_report`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field
from scipy import stats
from sklearn.metrics import roc_auc_score

from agentic_mlops.decisions import ServingEvidence, task_metric
from agentic_mlops.schemas import DriftCheckResult
from agentic_mlops.serving.request_log import log_folder
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.drift import ColumnTest, ReferenceProfile, column_drift
from agentic_mlops.tasks.metrics import MetricsError, PrometheusMetrics, RouterMetrics
from agentic_mlops.tasks.reference import Reference
from agentic_mlops.tasks.reports import artifact_key
from agentic_mlops.tasks.serving_log import (
    LogWindow,
    flush_router_log,
    local_router_url,
    read_window,
)
from agentic_mlops.tasks.training import expected_calibration_error

Direction = Literal["increase_is_bad", "decrease_is_bad"]
HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_history (
    model_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ts REAL NOT NULL,
    champion_version INTEGER,
    metrics TEXT NOT NULL,
    cursor TEXT NOT NULL,
    drift_ledger_id TEXT,
    PRIMARY KEY (model_name, run_id)
);
"""
CALIBRATION_GROUPS = 10
_END = 2**62
ALERT_EVENT = "agentic-mlops.monitor.alert"


class ServingWindow(BaseModel):
    """What the router served since the last run."""

    source: Literal["router", "prometheus"]
    seconds: float | None = Field(default=None, description="Length of the window.")
    requests: int | None = Field(default=None, description="Model calls (router only).")
    requests_per_minute: float | None = None
    variants: dict[str, int] = Field(default_factory=dict, description="Model calls by variant.")
    error_rate: float | None = Field(default=None, description="Share of failed model calls.")
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_mean_ms: float | None = None
    labels: int | None = Field(default=None, description="Labels received (router only).")
    brier: float | None = Field(default=None, description="Mean Brier score of labelled calls.")

    @property
    def latency_ms(self) -> float | None:
        """The latency the hard limit applies to: the 95th percentile, else the mean."""
        return self.latency_p95_ms if self.latency_p95_ms is not None else self.latency_mean_ms


class MonitorCursor(BaseModel):
    """Where the previous run stopped reading, so each run sees only what is new."""

    after_request: int = 0
    after_feedback: int = 0
    rows_ts: float | None = Field(default=None, description="Newest logged row already seen.")
    labels_ts: float | None = Field(default=None, description="Newest label already seen.")


class OnlinePerformance(BaseModel):
    """The champion on the rows whose labels arrived, beside its training holdout."""

    rows: int
    roc_auc: float | None = Field(default=None, description="None when one class only.")
    brier: float
    error_rate: float = Field(description="Share misclassified at a 0.5 threshold.")
    observed_rate: float
    predicted_rate: float
    reference_roc_auc: float | None = None
    reference_brier: float | None = None


class OnlineError(BaseModel):
    """A regression champion on the rows whose labels arrived, beside its training holdout."""

    rows: int
    mae: float = Field(description="Mean absolute error of its predictions.")
    r2: float | None = Field(default=None, description="None when the labels do not vary.")
    reference_mae: float | None = None
    reference_r2: float | None = None


class CalibrationCheck(BaseModel):
    """Whether the scores are churn probabilities, on labelled rows."""

    rows: int
    ece: float = Field(description="Expected calibration error, 10 equal-width bins.")
    p_value: float = Field(description="Hosmer-Lemeshow test over score deciles.")
    miscalibrated: bool = Field(description="Significant and larger than the limit.")


class PerformanceEstimate(BaseModel):
    """Performance expected from the scores alone (CBPE), and whether to believe it."""

    rows: int
    accuracy: float
    roc_auc: float | None
    brier: float
    calibration_source: Literal["recent labels", "training holdout", "none"]
    calibration: CalibrationCheck | None = None
    holdout_ece: float | None = None
    trusted: bool
    reasons: list[str] = Field(default_factory=list)


class Trend(BaseModel):
    """One metric over the recent runs: its slope, whether it is getting worse, and when it
    will cross its limit."""

    metric: str
    points: int
    latest: float
    limit: float
    direction: Direction
    slope_per_hour: float = Field(description="Theil-Sen slope.")
    p_value: float = Field(description="One-sided Mann-Kendall p-value, in the bad direction.")
    worsening: bool
    breached: bool = Field(description="The latest value is beyond the limit.")
    seconds_to_limit: float | None = Field(
        default=None, description="When the fitted line crosses the limit, if it is worsening."
    )
    flagged: bool = Field(description="Worsening and projected to cross within the horizon.")


class MonitorPoint(BaseModel):
    """One monitor run in the history."""

    run_id: str
    created_at: str
    ts: float
    champion_version: int | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    cursor: MonitorCursor = Field(default_factory=MonitorCursor)
    drift_ledger_id: str | None = None


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def router_window(
    router_url: str, cursor: MonitorCursor, seconds: float | None
) -> tuple[ServingWindow, MonitorCursor]:
    """The router's observations since the cursor, summarised, and the cursor after them.

    A router restarted since the last run numbers its observations from 1 again: when its
    newest number is below the cursor, everything it holds is new.

    Raises:
        MetricsError: the router could not be read.
    """
    newest = RouterMetrics(router_url)
    newest.after_request = newest.after_feedback = _END
    newest.mark()
    source = RouterMetrics(router_url)
    restarted = newest.after_request < cursor.after_request
    source.after_request = 0 if restarted else cursor.after_request
    source.after_feedback = (
        0 if restarted or newest.after_feedback < cursor.after_feedback else cursor.after_feedback
    )
    values = source.collect()
    latency = np.concatenate([v.get("latency_ms", np.empty(0)) for v in values.values()])
    errors = np.concatenate([v.get("error", np.empty(0)) for v in values.values()])
    brier = np.concatenate([v.get("brier", np.empty(0)) for v in values.values()])
    window = ServingWindow(
        source="router",
        seconds=seconds,
        requests=len(errors),
        requests_per_minute=60 * len(errors) / seconds if seconds else None,
        variants={variant: len(v.get("error", [])) for variant, v in values.items()},
        error_rate=_mean(errors),
        latency_p50_ms=_percentile(latency, 50),
        latency_p95_ms=_percentile(latency, 95),
        latency_mean_ms=_mean(latency),
        labels=len(brier),
        brier=_mean(brier),
    )
    moved = cursor.model_copy(
        update={"after_request": source.after_request, "after_feedback": source.after_feedback}
    )
    return window, moved


def prometheus_window(prometheus_url: str, seconds: float) -> ServingWindow:
    """Per-interval error ratios, mean latencies and Brier scores over the last `seconds`,
    averaged over intervals and variants.

    Raises:
        MetricsError: Prometheus could not be read.
    """
    source = PrometheusMetrics(prometheus_url)
    source.mark()
    source.start -= seconds
    values = source.collect()

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([v.get(name, np.empty(0)) for v in values.values()])

    return ServingWindow(
        source="prometheus",
        seconds=seconds,
        error_rate=_mean(pooled("error")),
        latency_mean_ms=_mean(pooled("latency_ms")),
        brier=_mean(pooled("brier")),
    )


@task(name="read-serving-metrics", cache_policy=NO_CACHE)
def read_serving_window(
    router_url: str | None,
    cursor: MonitorCursor,
    since_ts: float | None,
    settings: Settings,
) -> tuple[ServingWindow | None, MonitorCursor, str | None]:
    """Serving metrics since the last run from Prometheus (when `prometheus_url` is set) or
    the router; the cursor after them; and why there are none, if there are none."""
    seconds = time.time() - since_ts if since_ts is not None else None
    try:
        if settings.prometheus_url:
            window = prometheus_window(
                settings.prometheus_url, seconds or settings.monitor.window_seconds
            )
            return window, cursor, None
        if router_url is None:
            return None, cursor, "no router is running for this home"
        window, cursor = router_window(router_url, cursor, seconds)
        return window, cursor, None
    except MetricsError as error:
        return None, cursor, str(error)


def prediction_drift(
    profile: ReferenceProfile, scores: np.ndarray, settings: Settings
) -> ColumnTest | None:
    """The champion's recent scores against its reference scores, with the drift check's test
    (normed Wasserstein distance, drift at `drift_num_threshold`); None without reference
    scores or recent ones."""
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if profile.prediction is None or len(scores) == 0:
        return None
    return column_drift(
        profile.prediction,
        pd.Series(scores),
        profile.quantile_levels,
        settings.drift.num_threshold,
        settings.drift.num_threshold,
    )


def online_performance(
    labels: np.ndarray, scores: np.ndarray, reference: dict[str, float] | None = None
) -> OnlinePerformance:
    """ROC AUC, Brier score and error rate of labelled scores, beside the training holdout's."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    reference = reference or {}
    both_classes = 0 < labels.sum() < len(labels)
    return OnlinePerformance(
        rows=len(labels),
        roc_auc=float(roc_auc_score(labels, scores)) if both_classes else None,
        brier=float(np.mean((scores - labels) ** 2)),
        error_rate=float(np.mean((scores >= 0.5) != (labels == 1))),
        observed_rate=float(labels.mean()),
        predicted_rate=float(scores.mean()),
        reference_roc_auc=reference.get("roc_auc"),
        reference_brier=reference.get("brier_score"),
    )


def online_error(
    labels: np.ndarray, predictions: np.ndarray, reference: dict[str, float] | None = None
) -> OnlineError:
    """Mean absolute error and R² of a regressor's labelled predictions, beside the holdout's."""
    labels = np.asarray(labels, dtype=float)
    predictions = np.asarray(predictions, dtype=float)
    reference = reference or {}
    varies = len(labels) > 1 and float(np.var(labels)) > 0
    return OnlineError(
        rows=len(labels),
        mae=float(np.mean(np.abs(predictions - labels))),
        r2=task_metric("regression", labels, predictions) if varies else None,
        reference_mae=reference.get("mae"),
        reference_r2=reference.get("r2"),
    )


def expected_roc_auc(scores: np.ndarray) -> float | None:
    """The ROC AUC expected if each row is positive with probability equal to its score.

    Every pair (i, j) of distinct rows counts with weight p_i (1 - p_j), as a positive i
    ranked against a negative j: won when s_i > s_j, half when tied. The estimate is the
    expected wins over the expected pairs. None when the scores leave no expected pair.
    """
    p = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    values, group = np.unique(p, return_inverse=True)
    positive = np.bincount(group, weights=p, minlength=len(values))
    negative = np.bincount(group, weights=1 - p, minlength=len(values))
    self_pairs = p * (1 - p)
    tied_self = np.bincount(group, weights=self_pairs, minlength=len(values))
    above = positive.sum() - np.cumsum(positive)
    wins = np.sum(negative * above) + 0.5 * np.sum(negative * positive - tied_self)
    pairs = positive.sum() * negative.sum() - self_pairs.sum()
    return float(wins / pairs) if pairs > 0 else None


def calibration_check(
    labels: np.ndarray, scores: np.ndarray, max_ece: float, alpha: float
) -> CalibrationCheck:
    """Expected calibration error, and a Hosmer-Lemeshow test over score deciles (the scores
    were not fitted on these rows, so the statistic has one degree of freedom per group).
    Miscalibrated means both: significant at `alpha`, and an error above `max_ece`, so a few
    labels' noise is not read as miscalibration, nor a tiny error on many labels."""
    labels = np.asarray(labels, dtype=float)
    scores = np.clip(np.asarray(scores, dtype=float), 1e-6, 1 - 1e-6)
    order = np.argsort(scores, kind="stable")
    statistic, groups = 0.0, 0
    for members in np.array_split(order, min(CALIBRATION_GROUPS, len(order))):
        n = len(members)
        expected, observed = scores[members].sum(), labels[members].sum()
        variance = expected * (1 - expected / n)
        if n and variance > 0:
            statistic += (observed - expected) ** 2 / variance
            groups += 1
    p_value = float(stats.chi2.sf(statistic, groups)) if groups else 1.0
    ece = expected_calibration_error(labels, scores)
    return CalibrationCheck(
        rows=len(labels),
        ece=round(ece, 6),
        p_value=p_value,
        miscalibrated=p_value < alpha and ece > max_ece,
    )


def estimate_performance(
    scores: np.ndarray,
    labelled_scores: np.ndarray,
    labels: np.ndarray,
    holdout: dict[str, float],
    settings: Settings,
) -> PerformanceEstimate:
    """Expected accuracy (at 0.5), ROC AUC and Brier score of unlabelled scores (CBPE), and
    whether calibration was checked well enough to trust them.

    Calibration is checked on the recent labelled rows when there are `monitor_min_labels`
    of them, else on the training holdout's calibration error, which cannot see a change in
    behaviour since training; without either the estimate is not trusted.
    """
    p = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    reasons: list[str] = []
    check = None
    holdout_ece = holdout.get("expected_calibration_error")
    if len(labels) >= settings.monitor.min_labels:
        source = "recent labels"
        check = calibration_check(
            labels, labelled_scores, settings.monitor.max_ece, settings.monitor.calibration_alpha
        )
        trusted = not check.miscalibrated
        if check.miscalibrated:
            reasons.append(
                f"the scores are miscalibrated on the {check.rows} latest labelled rows "
                f"(ECE {check.ece:.3f} > {settings.monitor.max_ece}, Hosmer-Lemeshow "
                f"p = {check.p_value:.2g}): an estimate from them would be wrong"
            )
    elif holdout_ece is not None:
        source = "training holdout"
        trusted = holdout_ece <= settings.monitor.max_ece
        reasons.append(
            f"only {len(labels)} recent labels (< {settings.monitor.min_labels}): calibration "
            "is taken from the training holdout, which cannot show a change in behaviour since"
        )
        if not trusted:
            reasons.append(
                f"the holdout's calibration error {holdout_ece:.3f} is above "
                f"{settings.monitor.max_ece}"
            )
    else:
        source, trusted = "none", False
        reasons.append("no labels and no holdout calibration: the scores are unchecked")
    return PerformanceEstimate(
        rows=len(p),
        accuracy=float(np.mean(np.maximum(p, 1 - p))),
        roc_auc=expected_roc_auc(p),
        brier=float(np.mean(p * (1 - p))),
        calibration_source=source,
        calibration=check,
        holdout_ece=holdout_ece,
        trusted=trusted,
        reasons=reasons,
    )


def trend(
    times: np.ndarray,
    values: np.ndarray,
    limit: float,
    direction: Direction,
    alpha: float,
    horizon_seconds: float,
    metric: str = "metric",
) -> Trend:
    """Whether a series is getting worse, and when it will cross `limit` if it goes on.

    The slope is Theil-Sen's (the median of pairwise slopes: a few outliers do not move it),
    its significance the one-sided Mann-Kendall test (Kendall's tau of value against time).
    Flagged: significantly worsening, not yet beyond the limit, and the fitted line reaches
    the limit within `horizon_seconds` of the last point.
    """
    times = np.asarray(times, dtype=float)
    values = np.asarray(values, dtype=float)
    worse = 1.0 if direction == "increase_is_bad" else -1.0
    latest = float(values[-1])
    breached = worse * (latest - limit) > 0
    elapsed = times - times[0]
    if len(values) >= 3 and np.ptp(values) > 0 and np.ptp(elapsed) > 0:
        fit = stats.theilslopes(values, elapsed)
        slope, intercept = float(fit.slope), float(fit.intercept)
        tau = stats.kendalltau(
            elapsed, values, alternative="greater" if worse > 0 else "less"
        ).pvalue
        p_value = float(tau) if np.isfinite(tau) else 1.0
    else:
        slope, intercept, p_value = 0.0, latest, 1.0
    worsening = p_value < alpha and worse * slope > 0
    seconds_to_limit = None
    if worsening:
        fitted_now = intercept + slope * elapsed[-1]
        seconds_to_limit = max((limit - fitted_now) / slope, 0.0)
    flagged = bool(
        worsening
        and not breached
        and seconds_to_limit is not None
        and seconds_to_limit <= horizon_seconds
    )
    return Trend(
        metric=metric,
        points=len(values),
        latest=latest,
        limit=limit,
        direction=direction,
        slope_per_hour=slope * 3600,
        p_value=p_value,
        worsening=worsening,
        breached=breached,
        seconds_to_limit=seconds_to_limit,
        flagged=flagged,
    )


def metric_limits(settings: Settings, holdout: dict[str, float]) -> dict[str, tuple[float, str]]:
    """Each monitored metric's hard limit and which way is bad; performance limits are
    relative to the champion's training holdout."""
    limits: dict[str, tuple[float, str]] = {
        "error_rate": (settings.monitor.max_error_rate, "increase_is_bad"),
        "latency_ms": (settings.monitor.max_latency_ms, "increase_is_bad"),
        "prediction_drift": (settings.drift.num_threshold, "increase_is_bad"),
    }
    if "roc_auc" in holdout:
        floor = holdout["roc_auc"] - settings.monitor.max_roc_auc_drop
        limits["roc_auc"] = (floor, "decrease_is_bad")
        limits["estimated_roc_auc"] = (floor, "decrease_is_bad")
    if "brier_score" in holdout:
        limits["brier"] = (
            holdout["brier_score"] + settings.monitor.max_brier_rise,
            "increase_is_bad",
        )
    if "mae" in holdout:
        limits["mae"] = (holdout["mae"] * (1 + settings.monitor.max_mae_rise), "increase_is_bad")
    return limits


def detect_trends(
    points: list[MonitorPoint], limits: dict[str, tuple[float, str]], settings: Settings
) -> list[Trend]:
    """A trend per limited metric that has at least `monitor_trend_min_points` values in the
    last `monitor_history_points` runs."""
    recent = points[-settings.monitor.history_points :]
    trends = []
    for metric, (limit, direction) in limits.items():
        series = [
            (p.ts, p.metrics[metric])
            for p in recent
            if p.metrics.get(metric) is not None and math.isfinite(p.metrics[metric])
        ]
        if len(series) < settings.monitor.trend_min_points:
            continue
        times, values = zip(*series, strict=True)
        trends.append(
            trend(
                np.asarray(times),
                np.asarray(values),
                limit,
                direction,
                settings.monitor.trend_alpha,
                settings.monitor.trend_horizon_seconds,
                metric,
            )
        )
    return trends


def record_point(model_name: str, point: MonitorPoint, settings: Settings) -> None:
    """Add a run to the monitor history; the same run again replaces its row (a retry)."""
    with ledger.connect(settings) as db:
        db.executescript(HISTORY_SCHEMA)
        db.execute(
            "INSERT OR REPLACE INTO monitor_history VALUES "
            "(:model_name, :run_id, :created_at, :ts, :champion_version, :metrics, :cursor, "
            ":drift_ledger_id)",
            {
                **point.model_dump(),
                "model_name": model_name,
                "metrics": json.dumps(point.metrics),
                "cursor": point.cursor.model_dump_json(),
            },
        )


def monitor_history(
    model_name: str,
    champion_version: int | None = None,
    limit: int = 50,
    *,
    settings: Settings,
) -> list[MonitorPoint]:
    """The latest monitor runs of a model (of one champion version, if given), oldest first."""
    clause, values = "", [model_name]
    if champion_version is not None:
        clause = "AND champion_version = ?"
        values.append(champion_version)
    with ledger.connect(settings) as db:
        db.executescript(HISTORY_SCHEMA)
        rows = db.execute(
            f"SELECT * FROM monitor_history WHERE model_name = ? {clause} ORDER BY ts DESC LIMIT ?",
            (*values, limit),
        ).fetchall()
    return [
        MonitorPoint(
            run_id=row["run_id"],
            created_at=row["created_at"],
            ts=row["ts"],
            champion_version=row["champion_version"],
            metrics=json.loads(row["metrics"]),
            cursor=MonitorCursor.model_validate_json(row["cursor"]),
            drift_ledger_id=row["drift_ledger_id"],
        )
        for row in reversed(rows)
    ]


def point_metrics(
    window: ServingWindow | None,
    drift: ColumnTest | None,
    online: OnlinePerformance | None,
    estimate: PerformanceEstimate | None,
    error: OnlineError | None = None,
) -> dict[str, Any]:
    """The values of one run that go into the history (None: not measured this run)."""
    trusted = estimate is not None and estimate.trusted
    return {
        "mae": error.mae if error else None,
        "requests_per_minute": window.requests_per_minute if window else None,
        "error_rate": window.error_rate if window else None,
        "latency_ms": window.latency_ms if window else None,
        "prediction_drift": drift.score if drift and drift.test == "wasserstein" else None,
        "roc_auc": online.roc_auc if online else None,
        "brier": online.brier if online else None,
        "estimated_roc_auc": estimate.roc_auc if trusted else None,
        "estimated_accuracy": estimate.accuracy if trusted else None,
    }


class MonitorResult(BaseModel):
    """What one monitor run measured, projected and set off."""

    model_name: str
    champion_version: int | None
    checked_at: str
    serving: ServingWindow | None = None
    serving_error: str | None = Field(default=None, description="Why there are no metrics.")
    rows: int = Field(description="Rows the champion answered since the previous run.")
    labels: int = Field(description="Labels received since the previous run.")
    unusable_lines: int = Field(
        default=0,
        description="Request-log lines since the previous run that are not a usable record "
        "(corrupt, cut short, a field of the wrong type): skipped, and counted here.",
    )
    prediction_drift: ColumnTest | None = None
    online: OnlinePerformance | None = None
    online_error: OnlineError | None = Field(
        default=None, description="A regression champion's error on the labelled rows."
    )
    announced_challenger: int | None = Field(
        default=None,
        description="A challenger moved in MLflow without being announced, announced this run "
        "(the canary deployment's trigger starts its canary).",
    )
    estimate: PerformanceEstimate | None = None
    trends: list[Trend] = Field(default_factory=list)
    alerts: list[str] = Field(default_factory=list)
    batch_path: str | None = None
    drift_check: DriftCheckResult | None = None
    drift_check_error: str | None = None

    @property
    def ledger_id(self) -> str | None:
        """The drift triage's entry in the decision ledger, when a drift check ran."""
        return self.drift_check.ledger_id if self.drift_check else None


def champion_rows(rows: pd.DataFrame, version: int | None) -> pd.DataFrame:
    """The rows the champion answered: by version, or the baseline's when none was logged."""
    if rows.empty:
        return rows
    if version is not None and rows["version"].notna().any():
        return rows[rows["version"] == version]
    return rows[rows["variant"] == "baseline"]


@dataclass
class SinceLastRun:
    """What serving did since the previous monitor run, and the request log's new rows."""

    serving: ServingWindow | None
    serving_error: str | None
    """Why there are no serving metrics."""
    cursor: MonitorCursor
    """Where this run's reading of the metrics ended."""
    window: LogWindow


def read_since_last_run(
    router_url: str | None, settings: Settings, task: str = "binary"
) -> SinceLastRun:
    """The serving metrics since the previous run, from the router (the one that serves this
    home when `router_url` is empty) or Prometheus, and the rows and labels logged since
    then, after asking the router to write its buffered log lines (unusable lines, a label
    the champion's `task` does not take among them, are skipped, and logged)."""
    earlier = monitor_history(settings.model_name, limit=1, settings=settings)
    cursor = earlier[-1].cursor if earlier else MonitorCursor()
    since = earlier[-1].ts if earlier else None
    router_url = router_url or local_router_url(settings)
    serving, cursor, serving_error = read_serving_window(router_url, cursor, since, settings)
    flush_router_log(router_url)
    window = read_window(
        log_folder(settings),
        cursor.rows_ts,
        cursor.labels_ts,
        settings.monitor.window_rows,
        task,
    )
    if window.unusable_lines:
        get_run_logger().warning("%d unusable request-log lines skipped", window.unusable_lines)
    return SinceLastRun(serving, serving_error, cursor, window)


@dataclass
class ChampionWindow:
    """The champion's rows of a monitor window and what they show."""

    rows: pd.DataFrame
    drift: ColumnTest | None
    """Prediction drift of its scores, with at least `monitor_min_rows` rows."""
    online: OnlinePerformance | None
    """Performance on the newly labelled rows, with at least `monitor_min_labels` of them."""
    error: OnlineError | None
    """A regression champion's error on those rows, with as many of them."""
    estimate: PerformanceEstimate | None
    """The label-free estimate (CBPE), with at least `monitor_min_rows` rows."""

    def serving_evidence(self, alerts: list[str], holdout: dict[str, float]) -> ServingEvidence:
        """What the triage of a drift check the monitor sends is told about serving."""
        return ServingEvidence(
            rows=len(self.rows),
            alerts=alerts,
            reference_roc_auc=holdout.get("roc_auc"),
            estimated_roc_auc=self.estimate.roc_auc if self.estimate else None,
            estimate_trusted=bool(self.estimate and self.estimate.trusted),
        )


def assess_champion(window: LogWindow, ref: Reference, settings: Settings) -> ChampionWindow:
    """Prediction drift, online performance and the label-free estimate of the rows the
    champion answered in the window, each where there are enough rows to measure it.

    Online performance and the estimate read scores as one class's probabilities, so they
    are for a binary classifier only. A regression champion gets the drift of its predictions
    and, on labelled rows, its mean absolute error and R² (`online_error`); a prediction says
    nothing of its own error, so none is estimated without labels. A multiclass champion gets
    the drift of its predicted labels only."""
    holdout = ref.card.metrics
    rows = champion_rows(window.rows, ref.version)
    labelled = champion_rows(window.labelled, ref.version)
    recent_labelled = champion_rows(window.recent_labelled, ref.version)
    enough_rows = len(rows) >= settings.monitor.min_rows
    binary = ref.card.task == "binary"
    labels_enough = len(labelled) >= settings.monitor.min_labels
    return ChampionWindow(
        rows=rows,
        drift=prediction_drift(ref.profile, rows["score"], settings) if enough_rows else None,
        online=online_performance(labelled["label"], labelled["score"], holdout)
        if binary and labels_enough
        else None,
        error=online_error(labelled["label"], labelled["score"], holdout)
        if ref.card.task == "regression" and labels_enough
        else None,
        estimate=estimate_performance(
            rows["score"], recent_labelled["score"], recent_labelled["label"], holdout, settings
        )
        if binary and enough_rows
        else None,
    )


def next_point(
    run_id: str, started: float, version: int | None, read: SinceLastRun, champion: ChampionWindow
) -> MonitorPoint:
    """This run as a point of the history: its metrics, and its cursor moved past the rows
    and labels read."""
    window = read.window
    return MonitorPoint(
        run_id=run_id,
        created_at=dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        ts=started,
        champion_version=version,
        metrics=point_metrics(
            read.serving, champion.drift, champion.online, champion.estimate, champion.error
        ),
        cursor=read.cursor.model_copy(
            update={
                "rows_ts": window.rows_ts or read.cursor.rows_ts,
                "labels_ts": window.labels_ts or read.cursor.labels_ts,
            }
        ),
    )


def alerts_of(
    point: dict[str, float | None], limits: dict[str, tuple[float, str]], trends: list[Trend]
) -> list[str]:
    """Values beyond their limit now, and worsening trends that will cross theirs soon."""
    alerts = []
    for metric, (limit, direction) in limits.items():
        value = point.get(metric)
        if value is None:
            continue
        beyond = value > limit if direction == "increase_is_bad" else value < limit
        if beyond:
            alerts.append(f"{metric} is {value:.4g}, beyond its limit {limit:.4g}")
    for found in trends:
        if found.flagged:
            alerts.append(
                f"{found.metric} is worsening ({found.slope_per_hour:+.3g} per hour, "
                f"p = {found.p_value:.2g}): {found.latest:.4g} now, its limit {found.limit:.4g} "
                f"in about {found.seconds_to_limit / 60:.0f} min"
            )
    return alerts


def trends_and_alerts(
    point: MonitorPoint,
    champion: ChampionWindow,
    holdout: dict[str, float],
    settings: Settings,
) -> tuple[list[Trend], list[str]]:
    """This run's point added to the champion's history: each limited metric's trend, and the
    alerts, each logged (values beyond their limit, worsening trends that will cross theirs
    soon, and drifted champion scores)."""
    limits = metric_limits(settings, holdout)
    history = monitor_history(
        settings.model_name,
        point.champion_version,
        settings.monitor.history_points - 1,
        settings=settings,
    )
    trends = detect_trends([*history, point], limits, settings)
    alerts = alerts_of(point.metrics, limits, trends)
    drift = champion.drift
    if drift is not None and drift.drifted:
        alerts.append(f"the champion's scores drifted ({drift.test} {drift.score:.3f})")
    for alert in alerts:
        get_run_logger().warning("alert: %s", alert)
    return trends, alerts


def monitor_markdown(result: MonitorResult) -> str:
    """The run as its Prefect artifact shows it: alerts, serving, performance, trends and the
    drift check."""
    serving = result.serving
    lines = [
        f"# Monitor of {result.model_name} v{result.champion_version} at {result.checked_at}",
        "",
        "## Alerts",
        *([f"- {alert}" for alert in result.alerts] or ["- none"]),
        "",
        "## Serving since the previous run",
    ]
    if serving is None:
        lines.append(f"No metrics: {result.serving_error}")
    else:
        lines.append("| metric | value |\n|---|---|")
        for name, value in serving.model_dump(exclude={"source", "variants"}).items():
            if value is not None:
                lines.append(f"| {name} | {value:.4g} |")
    lines += [
        "",
        f"Rows answered by the champion: {result.rows}; labels received: {result.labels}",
        "",
    ]
    if result.unusable_lines:
        lines += [f"Unusable request-log lines skipped: {result.unusable_lines}", ""]
    if result.prediction_drift:
        drift = result.prediction_drift
        lines.append(
            f"Prediction drift: {drift.test} {drift.score:.4f} (threshold {drift.threshold}), "
            f"{'drifted' if drift.drifted else 'not drifted'}"
        )
    if result.online:
        online = result.online
        auc = "n/a" if online.roc_auc is None else f"{online.roc_auc:.3f}"
        lines.append(
            f"Online, {online.rows} labels: ROC AUC {auc} (training {online.reference_roc_auc}), "
            f"Brier {online.brier:.4f}, error rate {online.error_rate:.3f}"
        )
    if result.online_error:
        error = result.online_error
        r2 = "n/a" if error.r2 is None else f"{error.r2:.3f}"
        training = "n/a" if error.reference_mae is None else f"{error.reference_mae:.4g}"
        lines.append(
            f"Online, {error.rows} labels: MAE {error.mae:.4g} (training {training}), R² {r2}"
        )
    if result.estimate:
        estimate = result.estimate
        auc = "n/a" if estimate.roc_auc is None else f"{estimate.roc_auc:.3f}"
        lines.append(
            f"Estimated without labels (CBPE), {estimate.rows} rows: accuracy "
            f"{estimate.accuracy:.3f}, ROC AUC {auc}; "
            f"{'trusted' if estimate.trusted else 'NOT trusted'} (calibration from "
            f"{estimate.calibration_source}) {'; '.join(estimate.reasons)}"
        )
    if result.trends:
        lines += [
            "",
            "## Trends",
            "| metric | points | latest | limit | slope per hour | p | to limit | flagged |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for found in result.trends:
            to_limit = (
                "" if found.seconds_to_limit is None else f"{found.seconds_to_limit / 60:.0f} min"
            )
            lines.append(
                f"| {found.metric} | {found.points} | {found.latest:.4g} | {found.limit:.4g} | "
                f"{found.slope_per_hour:+.3g} | {found.p_value:.2g} | {to_limit} | "
                f"{'**yes**' if found.flagged else ''} |"
            )
    lines += ["", "## Drift check"]
    if result.drift_check:
        decision = result.drift_check.decision
        lines.append(
            f"Batch `{result.batch_path}`: **{decision.action}** ({decision.severity}, "
            f"{decision.confidence:.2f}) {decision.rationale}  \nLedger entry: "
            f"`{result.ledger_id}`"
        )
    else:
        lines.append(result.drift_check_error or "not run")
    return "\n".join(lines) + "\n"


def publish_monitor_report(result: MonitorResult) -> None:
    """The run's markdown artifact, and the `agentic-mlops.monitor.alert` event when it has
    alerts (called from the flow, not a task)."""
    name = result.model_name
    create_markdown_artifact(
        key=artifact_key(name, "monitor"),
        markdown=monitor_markdown(result),
        description=f"{name}: {len(result.alerts)} alerts",
    )
    if result.alerts:
        emit_event(
            event=ALERT_EVENT,
            resource={
                "prefect.resource.id": f"agentic-mlops.model.{name}",
                "prefect.resource.name": name,
            },
            payload={"alerts": result.alerts, "ledger_id": result.ledger_id},
        )
