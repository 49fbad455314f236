"""Shared fixtures: an isolated home per test, real MLflow on SQLite, real Prefect server.

The environment is set before `agentic_mlops` is imported, because Prefect reads its settings
at import time. MLflow's schema migrations are the slow part of a fresh SQLite store, so one
migrated template database is made per session and copied into each test's home.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="agentic-mlops-tests-"))
os.environ["AGENTIC_MLOPS_HOME"] = str(_SESSION_HOME / "home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# retraining searches with a small budget in tests: seconds, not minutes
os.environ.setdefault("AGENTIC_MLOPS_TUNE_MAX_TRIALS", "3")
os.environ.setdefault("AGENTIC_MLOPS_TUNE_TIME_BUDGET_SECONDS", "60")
# the Evidently report is rendered before a check returns, so tests can read it at once
os.environ.setdefault("AGENTIC_MLOPS_DRIFT_REPORT_MODE", "inline")
# no standby model server warming beside each test's servers (10 CPU seconds each here): the
# standby's own tests and the demo's turn it on
os.environ.setdefault("AGENTIC_MLOPS_SERVING_STANDBY", "false")
for _name in (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "AGENTIC_MLOPS_AGENT_MODEL",
):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from agentic_mlops.decisions import QualityEvidence, TriageRecord  # noqa: E402
from agentic_mlops.settings import Settings  # noqa: E402

LONGEST_MODULES = (
    "tests/flows/test_canary_flow.py",
    "tests/test_deployments.py",
    "tests/test_stack.py",
    "tests/flows/test_canary_on_kubernetes.py",
    "tests/tasks/test_scoring.py",
    "tests/test_mcp_server.py",
    "tests/test_own_models.py",
    "tests/test_guarded_models.py",
    "tests/flows/test_drift_flow.py",
    "tests/agents/test_through_an_openai_compatible_server.py",
    "tests/flows/test_monitor_flow.py",
    "tests/deployments/test_kubernetes_rollout.py",
    "tests/agents/test_eval_cli.py",
    "tests/agents/test_drift_triage.py",
    "tests/reliability/test_prompt_injection.py",
)
"""The modules that take longest in `make test`, longest first (`--durations`, 2026-11-29).

The two workers take whole modules (`--dist loadfile`) in collection order
(`--no-loadscope-reorder`): the long ones first, so the short ones fill the gaps at the end
and neither worker is left running a long module alone. A module missing here costs balance,
never a test."""


LONGEST_MODULES_WITH_SLOW = (
    "tests/reliability/test_serving_faults.py",
    "tests/reliability/test_monitor_inputs.py",
    "tests/flows/test_canary_flow.py",
    "tests/flows/test_canary_cancellation.py",
    "tests/test_stack.py",
    "tests/test_own_models.py",
    "tests/reliability/test_load.py",
    "tests/test_canary_per_task.py",
    "tests/flows/test_lifecycle_flow.py",
    "tests/flows/test_shadow_demo.py",
    "tests/reliability/test_bad_inputs.py",
    "tests/test_guarded_models.py",
    "tests/test_deployments.py",
    "tests/reliability/test_guardrail_fuzzing.py",
    "tests/test_boosted_flavours.py",
    "tests/test_mcp_server.py",
    "tests/flows/test_drift_flow.py",
    "tests/tasks/test_tuning.py",
    "tests/tasks/test_serving_processes.py",
    "tests/test_postgres.py",
    "tests/flows/test_canary_on_kubernetes.py",
    "tests/tasks/test_scoring.py",
)
"""The same for `make test-all`, whose slow tests make other modules the longest (the slow
tests' `--durations` on the 2-core machine, 2026-11-30: 127 minutes of tests in all, 19 of
them in the serving faults)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    quick = "not slow" in (config.getoption("markexpr") or "")
    order = LONGEST_MODULES if quick else LONGEST_MODULES_WITH_SLOW
    rank = {module: place for place, module in enumerate(order)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One temporary Prefect server (its own SQLite database) for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    folder = _SESSION_HOME / "mlflow-template"
    folder.mkdir(parents=True)
    database = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Settings:
    """A fresh home directory with an empty, migrated MLflow database; returns its settings."""
    root = tmp_path / "home"
    root.mkdir()
    shutil.copy(mlflow_template, root / "mlflow.db")
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    settings.ensure_dirs()
    return settings


def artifacts_by_key(key: str) -> list[dict]:
    """Every version of a keyed Prefect artifact, newest first, read through the REST API.

    `Artifact.get` and `read_artifacts` in prefect 3.8.8 send null filter fields that the
    server rejects with a 422, so the filter is posted as the server expects it.
    """
    from prefect.client.orchestration import get_client

    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 50, "offset": 0}
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json=body)
    return response.json()


def trained_home(
    tmp_path_factory, mlflow_template: Path, name: str, *trainings, start: Path | None = None
) -> Path:
    """A home holding the versions trained from `trainings` (`train` arguments), in order, on
    top of a copy of the home `start` when given; made once per module or session by fixtures
    and copied by each test."""
    from agentic_mlops.flows.train import train

    root = tmp_path_factory.mktemp(name) / "home"
    if start is not None:
        shutil.copytree(start, root)
    else:
        root.mkdir()
        shutil.copy(mlflow_template, root / "mlflow.db")
    previous = os.environ["AGENTIC_MLOPS_HOME"]
    os.environ["AGENTIC_MLOPS_HOME"] = str(root)
    try:
        for arguments in trainings:
            train(**arguments)
    finally:
        os.environ["AGENTIC_MLOPS_HOME"] = previous
    return root


def champion_recipe() -> dict:
    """The `train` arguments of the shared champion: 3,000 generated rows, seed 1, a quick fit."""
    from agentic_mlops.tasks.training import Hyperparameters

    return dict(generate_rows=3_000, seed=1, hyperparameters=Hyperparameters(max_iter=60))


@pytest.fixture(scope="session")
def trained_champion(tmp_path_factory, mlflow_template: Path) -> Path:
    """One home with champion v1 (`champion_recipe`), trained once per session and shared by
    every module that needs a plain champion; tests work on copies (`use_home_copy`)."""
    return trained_home(tmp_path_factory, mlflow_template, "champion", champion_recipe())


def use_home_copy(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of a trained home (made once per module or session), in force for one
    test, so each test's ledger, history and quarantine start empty; returns its settings."""
    root = tmp_path / "home"
    shutil.copytree(source, root)
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Settings()


def subprocess_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child process, without the Prefect and MLflow settings
    the test session made for itself, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return {**base, **extra}


@contextmanager
def running_prefect_server(
    folder: Path, database_url: str | None = None, **extra: str
) -> Iterator[str]:
    """A `prefect server start` of its own, with its services (the test harness's server runs
    none), on `database_url` or else SQLite under `folder`, waiting on a locked database as
    our stack's server does; yields its API address.

    Its output goes to `folder / "server.log"`; `extra` are more of its settings.
    """
    from agentic_mlops.stack import SQLITE_WAIT_SECONDS
    from agentic_mlops.tasks.local_rollout import free_port

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    environment = subprocess_environment(
        PREFECT_HOME=str(folder),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_DATABASE_TIMEOUT=SQLITE_WAIT_SECONDS,
        **database,
        **extra,
    )
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Prefect server did not start:\n{tail}")
            time.sleep(0.5)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def triage_record(used: list[str], drifted_features: list[str]) -> dict:
    """A drift triage's evidence as the ledger keeps it (`TriageRecord`), for hand-made
    ledger entries."""
    return TriageRecord(
        model_name="churn",
        quality=QualityEvidence(passed=True, batch_failed=False),
        dataset_drift=bool(drifted_features),
        drift_share=0.5 if drifted_features else 0.0,
        columns={},
        used=used,
        drifted_features=drifted_features,
    ).model_dump(mode="json")
