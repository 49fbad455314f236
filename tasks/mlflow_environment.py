"""MLflow's setters, kept from leaking into the environment.

`mlflow.set_tracking_uri`, `set_registry_uri` and `set_experiment` also export `MLFLOW_*`
variables, which `Settings.tracking_uri` would then take for the user's choice: a process that
switched homes (a test session, the check server) would keep writing to the first one. Every
call of those setters runs inside `environment_kept`. A light module: the model server loads
models through it without importing the registry's Prefect tasks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

WORKERS_VARIABLE = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
KEPT_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    WORKERS_VARIABLE,
)


@contextmanager
def environment_kept(names: Iterable[str] = KEPT_VARIABLES) -> Iterator[None]:
    """Put every variable named (`KEPT_VARIABLES` by default) back as it was, whatever ran
    inside."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at `uri` for tracking and the registry (it stays so after
    the block), with the variables its setters export put back when the block ends."""
    import mlflow

    with environment_kept():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
