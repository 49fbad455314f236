"""The decision eval: the policy scores 100%, and scripted adversaries are scored and stopped."""

import pytest
from pydantic_ai import models
from typer.testing import CliRunner

from agentic_mlops.agents import canary_promotion, drift_triage
from agentic_mlops.agents.decision_eval import evaluate, suite
from agentic_mlops.cli import app
from agentic_mlops.settings import Settings

ALL_ACTIONS = {
    "drift_triage": set(drift_triage.ACTIONS),
    "canary_promotion": set(canary_promotion.ACTIONS),
    "tuning_advisor": {"search", "search+synthesize"},
}


def test_the_suite_covers_every_action_of_every_decision_point():
    covered: dict[str, set[str]] = {}
    for case in suite():
        covered.setdefault(case.decision_point, set()).update(case.acceptable)
    assert covered == ALL_ACTIONS


def test_the_policy_scores_every_case():
    models.ALLOW_MODEL_REQUESTS = False
    report = evaluate(Settings(agent_tracing=False))
    assert [score.accuracy for score in report.scores] == [1.0, 1.0, 1.0]
    assert all(score.unsafe_stopped == score.unsafe_stood == 0 for score in report.scores)


@pytest.mark.parametrize("model", ["gpt-4o", "google:gemini-2.0-flash"])
def test_evaluating_a_model_that_cannot_be_built_is_a_one_line_error(home, model):
    out = CliRunner().invoke(app, ["agents", "eval", "--model", model])
    assert out.exit_code == 2 and out.output.startswith("error:")
