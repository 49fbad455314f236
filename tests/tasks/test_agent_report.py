"""The agents report: agreement, fallbacks and overrides per decision point, from the ledger."""

import json

import pytest
from pydantic_ai import models
from typer.testing import CliRunner

from agentic_mlops.agents import canary_promotion as canary
from agentic_mlops.cli import app
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.agent_report import agent_figures
from tests.agents import scripted_openai as llm
from tests.agents.test_through_an_openai_compatible_server import (
    CANARY_REFS,
    LAST_STEP,
    settings_for,
)


@pytest.fixture(autouse=True)
def loopback_requests_only(monkeypatch):
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def record(outcome, evidence, home, run_id):
    return ledger.record_agent_decision(
        "canary_promotion",
        evidence.model_dump(mode="json"),
        run_id,
        home,
        model_name="churn",
        action=outcome.decision.action,
        confidence=outcome.decision.confidence,
        rationale=outcome.decision.rationale,
        agent_model=outcome.agent_model,
        overridden_by=outcome.overridden_by,
        attribution=outcome.attribution.model_dump(mode="json"),
    )


def test_shadow_cases_give_agreement_disagreements_and_fallbacks(home):
    answers = iter(["hold", "rollback", "hold", "hold"])

    def next_answer(body):
        return {"action": next(answers), "confidence": 0.9, "rationale": "r"} | {
            "evidence_used": CANARY_REFS
        }

    with llm.ScriptedOpenAI(llm.diligent(next_answer)) as server:
        chosen = settings_for(server, agent_mode="shadow").model_copy(update={"home": home.home})
        for run in range(4):
            record(canary.advise(LAST_STEP, chosen), LAST_STEP, home, f"run-{run}")
    with llm.ScriptedOpenAI(llm.unavailable) as server:
        chosen = settings_for(server, agent_mode="shadow").model_copy(update={"home": home.home})
        record(canary.advise(LAST_STEP, chosen), LAST_STEP, home, "run-503")
    (disagreed,) = [
        e for e in ledger.list_decisions(settings=home) if e.attribution["agreed"] is False
    ]
    ledger.record_outcome(disagreed.id, {"carried_out": "rolled_back"}, home)

    (figures,) = agent_figures(ledger.list_decisions(settings=home))
    assert (figures.decision_point, figures.model, figures.modes) == (
        "canary_promotion",
        "scripted-llm",
        ["shadow"],
    )
    assert figures.cases == 5 and figures.answered == 4 and figures.agreed == 3
    assert figures.agreement == 0.75 and figures.fallbacks == 1
    (disagreement,) = figures.disagreements
    assert (disagreement.model_action, disagreement.policy_action, disagreement.acted) == (
        "rollback",
        "hold",
        "hold",
    )
    assert disagreement.ledger_id == disagreed.id and disagreement.acted_proved == "good"
    assert figures.input_tokens == 4 * 2 * 120, "only the model's own requests cost tokens"

    out = CliRunner().invoke(app, ["agents", "report", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)[0]["agreement"] == 0.75
    table = CliRunner().invoke(app, ["agents", "report"])
    assert "model rollback, policy hold, acted hold -> good" in table.output


def test_an_empty_ledger_says_so(home):
    out = CliRunner().invoke(app, ["agents", "report"])
    assert out.exit_code == 0 and "no attributed decisions" in out.output
