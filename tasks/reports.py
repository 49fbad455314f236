"""What the flows publish for a person: artifact keys, and links that lead somewhere.

A Prefect artifact or approval form names other things (a flow run, a deployment, an MLflow
run, a file). Each is a link a browser can open where one is known: the Prefect UI's address
when the run talks to a server, the MLflow UI's when tracking is a server; otherwise the id
and the command that opens it.
"""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from agentic_mlops.settings import Settings


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free-form parts."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def prefect_ui() -> str | None:
    """The Prefect UI's address for the server this process talks to, if there is one."""
    from prefect.utilities.urls import url_for

    url = url_for("flow", obj_id="x")
    return url.removesuffix("/flows/flow/x") if url else None


def prefect_link(kind: str, obj_id: str | UUID, label: str | None = None) -> str:
    """Markdown for a Prefect object (`flow-run`, `deployment`, `task-run`): a UI link, or
    its id when no UI is known."""
    from prefect.utilities.urls import url_for

    label = label or f"{kind} {str(obj_id)[:8]}"
    url = url_for(kind, obj_id=str(obj_id))
    return f"[{label}]({url})" if url else f"{label} (`{obj_id}`)"


def artifact_link(key: str, label: str | None = None) -> str:
    """Markdown for the latest artifact of a key in the Prefect UI, or the key itself."""
    ui = prefect_ui()
    return f"[{label or key}]({ui}/artifacts/key/{key})" if ui else f"artifact `{key}`"


def mlflow_ui(settings: Settings) -> str | None:
    """The MLflow UI's address: the tracking server's, or the local stack's UI over the home's
    store (`agentic-mlops up`); else None."""
    uri = settings.tracking_uri()
    if uri.startswith("http"):
        return uri.rstrip("/")
    from agentic_mlops import stack

    return stack.mlflow_ui_url(settings.home)


def mlflow_run_link(
    run_id: str, experiment_id: str, settings: Settings, label: str | None = None
) -> str:
    """Markdown for an MLflow run: a UI link, or its page and the command that serves it."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    label = label or f"MLflow run {run_id[:8]}"
    ui = mlflow_ui(settings)
    if ui:
        return f"[{label}]({ui}/{page})"
    return f"{label} (`{page}` in `mlflow ui --backend-store-uri {settings.tracking_uri()}`)"


def mlflow_version_link(name: str, version: int, settings: Settings) -> str:
    """Markdown for a registered model version in the MLflow UI, or its name and version."""
    ui = mlflow_ui(settings)
    label = f"{name} v{version}"
    return f"[{label}]({ui}/#/models/{name}/versions/{version})" if ui else f"`{label}`"


def mlflow_artifact_link(
    run_id: str, experiment_id: str, path: str, settings: Settings, label: str
) -> str:
    """Markdown for a file logged to an MLflow run: its page in the MLflow UI, or the run's
    page and the file's path there."""
    ui = mlflow_ui(settings)
    page = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"
    if ui:
        return f"[{label}]({ui}/{page})"
    return f"{label}: `{path}` of {mlflow_run_link(run_id, experiment_id, settings)}"


def file_note(path: Path | str) -> str:
    """A file on the worker's disk, said as one (a browser cannot follow file:// from http)."""
    return f"`{path}` on the worker's disk"


def logged_file_link(
    model_name: str,
    version: int | None,
    file: Path | str | None,
    folder: str,
    label: str,
    settings: Settings,
) -> str | None:
    """Log a file about a model version (a drift report, the decisions plot) to its MLflow run
    and return a markdown link to it there; the file on the worker's disk when MLflow cannot
    take it (the run goes on either way)."""
    if not file:
        return None
    if version is None:
        return file_note(file)
    from agentic_mlops.tasks import registry

    try:
        logged = registry.log_version_file(model_name, version, Path(file), folder, settings)
    except Exception as error:  # any tracking failure: the file stays where it is
        get_run_logger().warning("%s not logged to MLflow: %s", label, error)
        return file_note(file)
    return mlflow_artifact_link(logged.run_id, logged.experiment_id, logged.path, settings, label)


def planned_file_link(
    model_name: str,
    version: int | None,
    file: Path | str,
    folder: str,
    label: str,
    settings: Settings,
) -> str:
    """Markdown for a file that is logged to a version's MLflow run later (a report rendered
    after the decision): where it will be there, or the file on the worker's disk when the run
    cannot be found."""
    if version is None:
        return file_note(file)
    from agentic_mlops.tasks import registry

    try:
        where = registry.version_file_location(model_name, version, Path(file), folder, settings)
    except Exception:  # any tracking failure: the file's own place is still a link
        return file_note(file)
    return mlflow_artifact_link(where.run_id, where.experiment_id, where.path, settings, label)


DRIFT_REPORTS = "drift-reports"
"""The folder of a model version's MLflow run that receives its drift reports."""


def publish_drift_report(request_path: Path | str, settings: Settings) -> Path | None:
    """Render a planned Evidently report (see `tasks/drift.py: plan_report`) and log it to the
    version's MLflow run; the file stays on disk when MLflow cannot take it."""
    from agentic_mlops.tasks import registry
    from agentic_mlops.tasks.drift import ReportRequest, render_report

    request = ReportRequest.model_validate_json(Path(request_path).read_text())
    html = render_report(request)
    if html is not None and request.version is not None:
        registry.log_version_file(
            request.model_name, request.version, html, DRIFT_REPORTS, settings
        )
    return html


REPORT_NICENESS = 19
"""How much lower than the drift check's own the background report's CPU priority is."""


def start_drift_report(request_path: Path, settings: Settings) -> int:
    """Render and log a planned report in a process of its own, which the caller does not wait
    for, at the lowest CPU priority: a busy machine serves its decisions and customers first,
    and the report takes what CPU is left (a report took 13 CPU seconds on the 2-core
    machine in the demo). Its output goes to a `.log` beside the report. Returns its pid."""
    import os
    import subprocess
    import sys

    log = Path(request_path).with_suffix(".log")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "agentic_mlops.cli", "drift-report"),
                *(str(request_path), "--nice", str(REPORT_NICENESS)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "AGENTIC_MLOPS_HOME": str(settings.home)},
        )
    return process.pid


@task(name="evidently-report", cache_policy=NO_CACHE)
def render_drift_report(request_path: Path, settings: Settings) -> str:
    """Render the planned Evidently report: in a process of its own (`after`, the default) or
    here (`inline`). A report that fails is logged, not fatal: the decision stands."""
    logger = get_run_logger()
    try:
        if settings.drift.report_mode == "after":
            pid = start_drift_report(request_path, settings)
            logger.info("Evidently report rendering in the background (pid %s)", pid)
            return f"rendering (pid {pid})"
        publish_drift_report(request_path, settings)
    except Exception as error:  # Evidently, MLflow, a process: the report is for people only
        logger.warning("Evidently report not written: %s", error)
        return f"failed: {error}"
    return "written"
