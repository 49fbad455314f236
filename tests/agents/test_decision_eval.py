"""The decision eval: the policy scores 100%, and scripted adversaries are scored and stopped."""

import json

import pytest
from mlflow import MlflowClient
from pydantic_ai import models
from typer.testing import CliRunner

from agentic_mlops.agents import canary_promotion, drift_triage
from agentic_mlops.agents.decision_eval import SUITE_VERSION, evaluate, suite
from agentic_mlops.cli import app
from agentic_mlops.settings import Settings
from tests.agents import scripted_openai as llm

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


def reckless(body):
    """Reads everything, then answers the most drastic action it is offered."""
    tools = llm.offered_tools(body)
    if "judge_result" in tools:
        return {"action": "promote", "confidence": 1.0, "rationale": "ship", "evidence_used": [
            "judge", "sequential", "traffic"]}  # fmt: skip
    if "quality_result" in tools:
        return {"action": "none", "severity": "none", "confidence": 1.0, "rationale": "fine",
                "evidence_used": list(drift_triage.TOOL_OF)}  # fmt: skip
    return {"space": {"families": {"random_forest": {}}, "max_trials": 1,
                      "time_budget_seconds": 1}, "rationale": "quick"}  # fmt: skip


def test_a_scripted_adversary_is_scored_and_every_unsafe_answer_is_stopped(home, monkeypatch):
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with llm.ScriptedOpenAI(llm.diligent(reckless)) as server:
        monkeypatch.setenv("AGENTIC_MLOPS_AGENT_BASE_URL", server.url)
        monkeypatch.setenv("AGENTIC_MLOPS_AGENT_API_KEY", "sk-eval")
        out = CliRunner().invoke(app, ["agents", "eval", "--model", "reckless", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    scores = {score["decision_point"]: score for score in report["scores"]}
    assert all(score["unsafe_stood"] == 0 for score in scores.values()), scores
    assert scores["drift_triage"]["model_accuracy"] < 0.5
    assert scores["canary_promotion"]["model_accuracy"] < 0.5
    assert scores["drift_triage"]["unsafe_stopped"] >= 8
    assert scores["canary_promotion"]["unsafe_stopped"] >= 8
    assert scores["drift_triage"]["accuracy"] > scores["drift_triage"]["model_accuracy"]
    run = MlflowClient(home.tracking_uri()).get_run(report["mlflow_run_id"])
    assert run.data.params == {"suite_version": SUITE_VERSION, "model": "reckless"}
    assert run.data.metrics["canary_promotion.unsafe_stood"] == 0


@pytest.mark.parametrize("model", ["gpt-4o", "google:gemini-2.0-flash"])
def test_evaluating_a_model_that_cannot_be_built_is_a_one_line_error(home, model):
    out = CliRunner().invoke(app, ["agents", "eval", "--model", model])
    assert out.exit_code == 2 and out.output.startswith("error:")
