"""Process environment for the embedded defaults, set before Prefect is first imported.

Prefect reads its settings from the environment when it is imported, so the defaults that put
its home and database under our home directory, and that keep it quiet offline, are applied
here, once, from `agentic_mlops/__init__.py`. Only unset variables are filled: whatever the
user exported (a `PREFECT_API_URL`, a `PREFECT_HOME`) wins. When the home's local stack runs
(`agentic-mlops up`, see `stack.py`), Prefect is pointed at its server; otherwise Prefect
starts a temporary one for the process.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from agentic_mlops import stack
from agentic_mlops.settings import Settings

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_ENABLED": "false",
    # Prefect's 20 s is too short for the temporary server on a loaded 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
MLFLOW_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    # tracing looks up model prices in a catalog on GitHub; no network at run time
    "MLFLOW_MODEL_CATALOG_URI": "",
}


def configure_environment(settings: Settings | None = None) -> Settings:
    """Fill unset Prefect and MLflow variables with the embedded defaults.

    Settings that do not validate still give their home here; the command line then reports
    the bad value on one line.
    """
    if settings is None:
        try:
            settings = Settings()
        except (ValidationError, SettingsError):
            home = Path(os.environ.get("AGENTIC_MLOPS_HOME", ".mlops")).expanduser().resolve()
            settings = Settings.model_construct(home=home)
    if "PREFECT_HOME" not in os.environ:
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(settings.prefect_home)
    if "PREFECT_API_URL" not in os.environ and (url := stack.prefect_api_url(settings.home)):
        os.environ["PREFECT_API_URL"] = url
    for name, value in {**PREFECT_DEFAULTS, **MLFLOW_DEFAULTS}.items():
        os.environ.setdefault(name, value)
    return settings


temporary_server: stack.StackProcess | None = None
"""The Prefect server this process started for itself, if any (`start_temporary_server`)."""


def start_temporary_server(settings: Settings) -> stack.StackProcess | None:
    """With no Prefect server to use (no local stack, no `PREFECT_API_URL`), start the
    temporary one now, in the background, and point this process at it; Prefect itself would
    start it only at the first flow run and wait for it there. The command imports its
    libraries and reads its data meanwhile. Nothing is started once Prefect is imported (it
    has read its settings then) or when a server is set. The server ends with the process.
    """
    global temporary_server
    if temporary_server or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    folder = stack.stack_dir(settings.home)
    temporary_server = stack.start_temporary_prefect(settings.prefect_home, folder)
    os.environ["PREFECT_API_URL"] = temporary_server.api_url
    atexit.register(stop_temporary_server)
    return temporary_server


def stop_temporary_server(grace: float | None = 5.0) -> None:
    """End the temporary server this process started; safe to call twice. With no `grace`
    (None), it is told to stop and finishes on its own."""
    global temporary_server
    if temporary_server is None:
        return
    stack.stop(temporary_server, grace)
    temporary_server = None


def quick_exit(code: int, budget: float = 2.0) -> NoReturn:
    """End a command's process as soon as its result is printed.

    Prefect's queued logs and events, and MLflow's queued trace exports, get a flush bounded
    by `budget` seconds each; a local Ray runtime is shut down (its workers would outlive us);
    a temporary Prefect server is told to stop and finishes on its own, where Prefect would
    wait up to five seconds for it and then kill it. What misses the budget is missing from
    the UIs only: results, the ledger and MLflow runs are written before the result prints.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if "prefect.logging.handlers" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=budget)
    if "mlflow.tracing" in sys.modules:
        import mlflow

        flush = threading.Thread(target=mlflow.flush_trace_async_logging, daemon=True)
        flush.start()
        flush.join(budget)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            if server.server_process is not None:
                server.server_process.terminate()
    stop_temporary_server(grace=None)
    os._exit(code)
