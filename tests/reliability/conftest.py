"""A champion trained once for the whole reliability suite, and a private copy per test; the
canary tests' champion and equal challenger, served from a private home (`serving_home`)."""

from __future__ import annotations

import pytest

from agentic_mlops.settings import Settings
from tests.conftest import use_home_copy
from tests.flows.test_canary_flow import serving_home, two_versions  # noqa: F401 - fixtures
from tests.reliability.test_faults import mlflow_at  # noqa: F401 - fixture


@pytest.fixture
def reliability_champion(trained_champion):
    """The session's champion (`tests/conftest.py`), trained once for every module."""
    return trained_champion


@pytest.fixture
def champion_home(reliability_champion, tmp_path, monkeypatch) -> Settings:
    """A private copy of the trained home: its ledger, history and quarantine start empty."""
    settings = use_home_copy(reliability_champion, tmp_path, monkeypatch)
    (settings.home / "incoming").mkdir(exist_ok=True)
    return settings
