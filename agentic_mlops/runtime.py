"""Process environment for the embedded defaults, set before Prefect is first imported.

Prefect reads its settings from the environment when it is imported, so the defaults that put
its home and database under our home directory, and that keep it quiet offline, are applied
here, once, from `agentic_mlops/__init__.py`. Only unset variables are filled: whatever the
user exported (a `PREFECT_API_URL`, a `PREFECT_HOME`) wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from agentic_mlops.settings import Settings

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_ENABLED": "false",
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
        except ValidationError:
            home = Path(os.environ.get("AGENTIC_MLOPS_HOME", ".mlops")).expanduser().resolve()
            settings = Settings.model_construct(home=home)
    if "PREFECT_HOME" not in os.environ:
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(settings.prefect_home)
    for name, value in {**PREFECT_DEFAULTS, **MLFLOW_DEFAULTS}.items():
        os.environ.setdefault(name, value)
    return settings
