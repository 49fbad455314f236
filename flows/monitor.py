"""Monitor: what the served model is doing now, where it is heading, and a drift check.

Runbook:
1. Get the champion's reference (its reference scores and training metrics); no champion
   ends the run in `Failed` named `NoReference`. A `challenger` alias moved in MLflow by code
   that did not announce it is announced (once), so the canary deployment's trigger takes it.
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

import time
import uuid
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from agentic_mlops.flows.drift import drift_check
from agentic_mlops.flows.form import Empty
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks import drift_actions, monitoring, reference, serving_log
from agentic_mlops.tasks.monitoring import MonitorResult


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
    name = settings.model_name
    started = time.time()

    resolved = reference.resolve_reference(None, settings.target, settings, return_state=True)
    if resolved.is_failed():
        # the reason may quote a multi-line parser error; the state's message stays one line
        return Failed(name=resolved.name, message=" ".join(str(resolved.message).split()))
    ref = resolved.result()
    holdout = ref.card.metrics
    announced = drift_actions.announce_unseen_challenger(settings)
    if announced is not None:
        get_run_logger().info("%s v%d is challenger and nobody said so: announced", name, announced)

    read = monitoring.read_since_last_run(router_url, settings, ref.card.task)
    window = read.window
    champion = monitoring.assess_champion(window, ref, settings)

    run_id = str(flow_run.get_id() or uuid.uuid4())
    point = monitoring.next_point(run_id, started, ref.version, read, champion)
    trends, alerts = monitoring.trends_and_alerts(point, champion, holdout, settings)
    result = MonitorResult(
        model_name=name,
        champion_version=ref.version,
        checked_at=point.created_at,
        serving=read.serving,
        serving_error=read.serving_error,
        rows=len(champion.rows),
        labels=len(window.labelled),
        unusable_lines=window.unusable_lines,
        prediction_drift=champion.drift,
        online=champion.online,
        online_error=champion.error,
        announced_challenger=announced,
        estimate=champion.estimate,
        trends=trends,
        alerts=alerts,
    )

    if check_drift:
        batch_path = serving_log.write_window_batch(window, ref, batch, settings)
        result.batch_path = str(batch_path) if batch_path else None
        if batch_path is None:
            result.drift_check_error = (
                f"fewer than {settings.monitor.min_rows} new rows: no drift check"
            )
        else:
            state = drift_check(
                current_path=str(batch_path),
                target=ref.card.target,
                batch_id=batch_path.name,
                act=act,
                model_name=name,
                serving=champion.serving_evidence(alerts, holdout),
                return_state=True,
            )
            if state.is_failed():
                result.drift_check_error = f"drift check {state.name}: {state.message}"
            else:
                result.drift_check = state.result()
    point.drift_ledger_id = result.ledger_id
    monitoring.record_point(name, point, settings)
    monitoring.publish_monitor_report(result)
    return result
