"""Settings in sections: both variable forms, flat names in code, and one-line errors."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError
from typer.testing import CliRunner

from agentic_mlops.agents.canary_promotion import CANARY_PROMOTION
from agentic_mlops.agents.drift_triage import DRIFT_TRIAGE
from agentic_mlops.agents.tuning_advisor import TUNING_ADVISOR
from agentic_mlops.cli import app
from agentic_mlops.settings import (
    FLAT_NAMES,
    SECTIONS,
    Settings,
    settings_problem,
)

BOTH_NAMES = "AGENTIC_MLOPS_CANARY__MIN_CONFIDENCE (or AGENTIC_MLOPS_CANARY_MIN_CONFIDENCE)"
DOCS = Path(__file__).parents[1] / "docs" / "configuration.md"


@pytest.mark.parametrize(
    "variable",
    ["AGENTIC_MLOPS_CANARY__STEPS", "AGENTIC_MLOPS_CANARY_STEPS"],
    ids=["nested", "flat"],
)
def test_either_form_of_a_variable_sets_the_sections_field(monkeypatch, variable):
    monkeypatch.setenv(variable, "[10, 40, 100]")
    monkeypatch.setenv(variable.replace("STEPS", "MIN_SAMPLES"), "50")
    canary = Settings().canary
    assert canary.steps == [10, 40, 100] and canary.min_samples == 50
    assert canary.step_seconds == 60.0


def test_the_nested_form_wins_over_the_flat_one_and_arguments_over_both(monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_REQUEST_LIMIT", "5")
    monkeypatch.setenv("AGENTIC_MLOPS_AGENTS__REQUEST_LIMIT", "6")
    assert Settings().agents.request_limit == 6
    assert Settings(agent_request_limit=7).agents.request_limit == 7


def test_flat_names_in_code_set_and_copy_their_section():
    settings = Settings(canary_steps=[50, 100], sequential_h=4.0, agent_tracing=False)
    assert (settings.canary.steps, settings.sequential.h, settings.agents.tracing) == (
        [50, 100],
        4.0,
        False,
    )
    copied = settings.model_copy(update={"agent_model": "test", "model_name": "tumour"})
    assert (copied.agents.model, copied.agents.tracing, copied.model_name) == (
        "test",
        False,
        "tumour",
    )
    assert settings.agents.model == "policy"


def test_every_field_of_every_section_has_one_flat_name():
    fields = [(section, name) for section, model in SECTIONS.items() for name in model.model_fields]
    assert sorted(FLAT_NAMES.values()) == sorted(fields)
    assert not set(FLAT_NAMES) & set(Settings.model_fields)


def test_every_documented_variable_is_read():
    documented = set(re.findall(r"AGENTIC_MLOPS_([A-Z_]+[A-Z])", DOCS.read_text()))
    known = {name.upper() for name in Settings.model_fields} | {name.upper() for name in FLAT_NAMES}
    known |= {f"{section}__{name}".upper() for section, name in FLAT_NAMES.values()}
    unknown = {
        name
        for name in documented
        if name not in known and not any(name.startswith(f"{k}_") for k in known)
    }
    assert not unknown, f"documented but not read: {sorted(unknown)}"


def test_each_decision_point_gets_its_section_as_its_limits():
    settings = Settings(triage_min_confidence=0.9, canary_min_confidence=0.8, tune_max_trials=9)
    assert DRIFT_TRIAGE.limits(settings) is settings.triage
    assert CANARY_PROMOTION.limits(settings) is settings.canary
    assert TUNING_ADVISOR.limits(settings) is settings.tune
    assert settings.triage.min_confidence == 0.9 and settings.canary.min_confidence == 0.8


def test_a_tuning_default_above_its_ceiling_is_lowered_to_it():
    tune = Settings(
        tune_max_trials=80,
        tune_max_trials_ceiling=20,
        tune_min_trials=30,
        tune_time_budget_seconds=500,
        tune_time_budget_ceiling_seconds=100,
        tune_min_time_budget_seconds=200,
    ).tune
    assert (tune.max_trials, tune.min_trials) == (20, 20)
    assert (tune.time_budget_seconds, tune.min_time_budget_seconds) == (100, 100)
    assert Settings(tune_max_trials=8).tune.max_trials == 8


@pytest.mark.parametrize(
    ("variable", "value", "error", "message"),
    [
        (
            "AGENTIC_MLOPS_CANARY_MIN_CONFIDENCE",
            "2",
            ValidationError,
            f"settings: {BOTH_NAMES}: Input should be less than or equal to 1",
        ),
        (
            "AGENTIC_MLOPS_CANARY__MIN_CONFIDENCE",
            "sure",
            ValidationError,
            f"settings: {BOTH_NAMES}: Input should be a valid number, unable to parse string "
            "as a number",
        ),
        (
            "AGENTIC_MLOPS_CANARY_STEPS",
            "5, 100",
            SettingsError,
            "settings: AGENTIC_MLOPS_CANARY_STEPS: '5, 100' is not valid JSON",
        ),
        (
            "AGENTIC_MLOPS_CANARY__STEPS",
            "5, 100",
            SettingsError,
            "settings: AGENTIC_MLOPS_CANARY__STEPS: not valid JSON",
        ),
    ],
    ids=["flat-out-of-range", "nested-not-a-number", "flat-not-json", "nested-not-json"],
)
def test_a_bad_value_is_one_line_naming_its_variable(monkeypatch, variable, value, error, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(error) as raised:
        Settings()
    assert settings_problem(raised.value) == message
    shown = CliRunner().invoke(app, ["settings"])
    assert shown.exit_code == 2
    assert shown.output.strip().splitlines() == [f"error: {message}"]


def test_the_settings_command_lists_both_names_of_every_variable(monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_CANARY_STEPS", "[20, 100]")
    shown = CliRunner().invoke(app, ["settings", "--env"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "AGENTIC_MLOPS_CANARY__STEPS (or AGENTIC_MLOPS_CANARY_STEPS) = [20, 100]" in lines
    assert 'AGENTIC_MLOPS_MODEL_NAME = "churn"' in lines
    assert len(lines) == len(FLAT_NAMES) + len(Settings.model_fields) - len(SECTIONS)
