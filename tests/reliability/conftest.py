"""A champion trained once for the whole reliability suite, and a private copy per test; the
canary tests' champion and equal challenger, served from a private home (`serving_home`)."""

from __future__ import annotations

import pytest

from agentic_mlops.settings import Settings
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import trained_home, use_home_copy
from tests.flows.test_canary_flow import serving_home, two_versions  # noqa: F401 - fixtures
from tests.reliability.test_faults import mlflow_at  # noqa: F401 - fixture


@pytest.fixture(scope="session")
def reliability_champion(tmp_path_factory, mlflow_template):
    return trained_home(
        tmp_path_factory,
        mlflow_template,
        "reliability",
        dict(generate_rows=3_000, seed=1, hyperparameters=Hyperparameters(max_iter=60)),
    )


@pytest.fixture
def champion_home(reliability_champion, tmp_path, monkeypatch) -> Settings:
    """A private copy of the trained home: its ledger, history and quarantine start empty."""
    settings = use_home_copy(reliability_champion, tmp_path, monkeypatch)
    (settings.home / "incoming").mkdir(exist_ok=True)
    return settings
