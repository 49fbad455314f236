"""Monitor: what the served model is doing now, where it is heading, and a drift check.

Runbook:
1. Get the champion's reference (its reference scores and training metrics); no champion
   ends the run in `Failed` named `NoReference`.
2. Read the serving metrics since the previous run: traffic, failed calls, latency, Brier
   score, from the router (or Prometheus when `prometheus_url` is set).
3. Read the router's request log: rows logged since the previous run, labels received since
   then (joined to their rows by request id), and the latest labelled rows.
4. Assess the champion's rows: prediction drift against its reference scores, online
   performance on the new labels, and the label-free estimate (CBPE), trusted only when the
   labelled rows (or, lacking them, the training holdout) show calibrated scores.
5. Trends: this run becomes a point of the history; every limited metric is tested for a
   worsening trend over the last runs and projected to its limit. Values beyond their limit
   and trends that will cross it within the horizon are the run's alerts.
6. Drift check: the window's rows as a batch (the newly labelled rows when there are enough
   of them, so a retraining has labels) go through the drift check, whose triage agent
   decides, and with `act` acts.
7. Report: a markdown artifact, the `agentic-mlops.monitor.alert` event when there are
   alerts, and the typed result.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Literal

import httpx
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from agentic_mlops.decisions import ServingEvidence
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.flows.form import Empty
from agentic_mlops.schemas import DriftCheckResult
from agentic_mlops.serving.request_log import log_folder
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import monitoring, reference, serving_log
from agentic_mlops.tasks.drift import ColumnDrift
from agentic_mlops.tasks.monitoring import (
    OnlinePerformance,
    PerformanceEstimate,
    ServingWindow,
    Trend,
)
from agentic_mlops.tasks.reports import artifact_key
from agentic_mlops.tasks.rollout import rollout_backend

ALERT_EVENT = "agentic-mlops.monitor.alert"


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
    prediction_drift: ColumnDrift | None = None
    online: OnlinePerformance | None = None
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


def local_router_url(settings: Settings) -> str | None:
    """The address of the router that serves this home, if one does (none on Kubernetes)."""
    return rollout_backend(settings).router_url()


@task(name="flush-request-log", cache_policy=NO_CACHE)
def flush_router_log(router_url: str | None) -> bool:
    """Ask the router to write its buffered log lines now; a router that cannot is read as it
    is on disk (at most `serving_log_flush_seconds` behind)."""
    if router_url is None:
        return False
    try:
        return httpx.post(f"{router_url}/admin/flush-log", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def champion_rows(rows: pd.DataFrame, version: int | None) -> pd.DataFrame:
    """The rows the champion answered: by version, or the baseline's when none was logged."""
    if rows.empty:
        return rows
    if version is not None and rows["version"].notna().any():
        return rows[rows["version"] == version]
    return rows[rows["variant"] == "baseline"]


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


@task(name="write-window-batch", cache_policy=NO_CACHE)
def write_window_batch(
    window: serving_log.LogWindow,
    ref: reference.Reference,
    choice: str,
    settings: Settings,
) -> Path | None:
    """The rows the drift check gets, as a Parquet batch under `home/incoming/monitor/`; None
    when there are fewer than `monitor_min_rows`."""
    labelled = choice == "labelled" or (
        choice == "auto" and len(window.labelled) >= settings.monitor_min_rows
    )
    rows = window.labelled if labelled else window.rows
    if len(rows) < settings.monitor_min_rows:
        return None
    batch = serving_log.as_batch(rows, ref.sample, ref.card.target if labelled else None)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return serving_log.write_batch(
        batch,
        settings.home / "incoming" / "monitor",
        f"{settings.model_name}-{stamp}{'-labelled' if labelled else ''}",
        settings.monitor_batches_kept,
    )


def report_markdown(result: MonitorResult) -> str:
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


@flow(name="monitor", log_prints=True)
def monitor(
    router_url: str | Empty = None,
    check_drift: bool = True,
    act: bool = True,
    batch: Literal["auto", "labelled", "unlabelled"] = "auto",
    model_name: str | Empty = None,
) -> MonitorResult | State:
    """Measure the served champion since the last run, flag what is heading for its limit,
    and drift-check the recent production rows.

    Args:
        router_url: The canary router to read. Empty: the one `agentic-mlops serve` started.
        check_drift: Run the drift check (and its triage) on the window's rows.
        act: Let the drift check carry out its decision (retrain, rollback, escalate).
        batch: Rows the drift check gets: the newly labelled ones, the newly logged ones, or
            (auto) the labelled ones when at least `monitor_min_rows` arrived.
        model_name: The registered model to monitor (its router, request log and history);
            one deployment serves several models through schedules that set it. Empty: the
            settings' model name.
    """
    settings = load_settings().for_model(model_name)
    settings.ensure_dirs()
    logger = get_run_logger()
    name = settings.model_name
    started = time.time()

    resolved = reference.resolve_reference(None, settings.target, settings, return_state=True)
    if resolved.is_failed():
        # the reason may quote a multi-line parser error; the state's message stays one line
        return Failed(name=resolved.name, message=" ".join(str(resolved.message).split()))
    ref = resolved.result()
    holdout = ref.card.metrics
    earlier = monitoring.monitor_history(name, limit=1, settings=settings)
    cursor = earlier[-1].cursor if earlier else monitoring.MonitorCursor()
    since = earlier[-1].ts if earlier else None

    router_url = router_url or local_router_url(settings)
    serving, cursor, serving_error = monitoring.read_serving_window(
        router_url, cursor, since, settings
    )
    flush_router_log(router_url)
    window = serving_log.read_window(
        log_folder(settings), cursor.rows_ts, cursor.labels_ts, settings.monitor_window_rows
    )
    if window.unusable_lines:
        logger.warning("%d unusable request-log lines skipped", window.unusable_lines)
    rows = champion_rows(window.rows, ref.version)
    labelled = champion_rows(window.labelled, ref.version)
    recent_labelled = champion_rows(window.recent_labelled, ref.version)

    enough_rows = len(rows) >= settings.monitor_min_rows
    drift = (
        monitoring.prediction_drift(ref.profile, rows["score"], settings) if enough_rows else None
    )
    online = (
        monitoring.online_performance(labelled["label"], labelled["score"], holdout)
        if len(labelled) >= settings.monitor_min_labels
        else None
    )
    estimate = (
        monitoring.estimate_performance(
            rows["score"], recent_labelled["score"], recent_labelled["label"], holdout, settings
        )
        if enough_rows
        else None
    )
    metrics = monitoring.point_metrics(serving, drift, online, estimate)
    point = monitoring.MonitorPoint(
        run_id=str(flow_run.get_id() or uuid.uuid4()),
        created_at=dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        ts=started,
        champion_version=ref.version,
        metrics=metrics,
        cursor=cursor.model_copy(
            update={
                "rows_ts": window.rows_ts or cursor.rows_ts,
                "labels_ts": window.labels_ts or cursor.labels_ts,
            }
        ),
    )
    limits = monitoring.metric_limits(settings, holdout)
    history = monitoring.monitor_history(
        name, ref.version, settings.monitor_history_points - 1, settings
    )
    trends = monitoring.detect_trends([*history, point], limits, settings)
    alerts = alerts_of(metrics, limits, trends)
    if drift is not None and drift.drifted:
        alerts.append(f"the champion's scores drifted ({drift.test} {drift.score:.3f})")
    for alert in alerts:
        logger.warning("alert: %s", alert)

    batch_path, checked, check_error = None, None, None
    if check_drift:
        batch_path = write_window_batch(window, ref, batch, settings)
        if batch_path is None:
            check_error = f"fewer than {settings.monitor_min_rows} new rows: no drift check"
        else:
            state = drift_check(
                current_path=str(batch_path),
                target=ref.card.target,
                batch_id=batch_path.name,
                act=act,
                model_name=name,
                serving=ServingEvidence(
                    rows=len(rows),
                    alerts=alerts,
                    reference_roc_auc=holdout.get("roc_auc"),
                    estimated_roc_auc=estimate.roc_auc if estimate else None,
                    estimate_trusted=bool(estimate and estimate.trusted),
                ),
                return_state=True,
            )
            if state.is_failed():
                check_error = f"drift check {state.name}: {state.message}"
            else:
                checked = state.result()
    point.drift_ledger_id = checked.ledger_id if checked else None
    monitoring.record_point(name, point, settings)

    result = MonitorResult(
        model_name=name,
        champion_version=ref.version,
        checked_at=point.created_at,
        serving=serving,
        serving_error=serving_error,
        rows=len(rows),
        labels=len(window.labelled),
        unusable_lines=window.unusable_lines,
        prediction_drift=drift,
        online=online,
        estimate=estimate,
        trends=trends,
        alerts=alerts,
        batch_path=str(batch_path) if batch_path else None,
        drift_check=checked,
        drift_check_error=check_error,
    )
    create_markdown_artifact(
        key=artifact_key(name, "monitor"),
        markdown=report_markdown(result),
        description=f"{name}: {len(alerts)} alerts",
    )
    if alerts:
        emit_event(
            event=ALERT_EVENT,
            resource={
                "prefect.resource.id": f"agentic-mlops.model.{name}",
                "prefect.resource.name": name,
            },
            payload={"alerts": alerts, "ledger_id": result.ledger_id},
        )
    return result


def collect_window(
    settings: Settings | None = None, since: float | None = None, limit: int | None = None
) -> str | None:
    """The latest labelled production rows as a batch file, for a drift check or retraining.

    Rows whose labels arrived after `since` (seconds since the epoch; all of them when
    empty), the newest `limit` (`monitor_window_rows`), with the label column; None when
    fewer than `monitor_min_labels` are labelled. Windows overlap unless `since` moves on.
    """
    settings = settings or load_settings()
    folder = log_folder(settings)
    received = serving_log.labels(folder, since=since, limit=limit or settings.monitor_window_rows)
    rows = serving_log.labelled_requests(folder, received)
    if len(rows) < settings.monitor_min_labels:
        return None
    champion = reference.resolve_reference.fn(None, settings.target, settings)
    stored = not isinstance(champion, State)
    target = champion.card.target if stored else settings.target
    batch = serving_log.as_batch(rows, champion.sample if stored else None, target)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = serving_log.write_batch(
        batch,
        settings.home / "incoming" / "monitor",
        f"{settings.model_name}-{stamp}-labelled",
        settings.monitor_batches_kept,
    )
    return str(path)
