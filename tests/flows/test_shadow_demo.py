"""The demo in shadow mode with a scripted model, then `agentic-mlops agents report`.

Every decision point the demo reaches (triage, tuning advisor, canary promotion) asks the model
on the loopback server beside the policy; the policy's decisions act, so the demo's story is
unchanged, and the report shows per decision point how often the model agreed.
"""

from __future__ import annotations

import json

import pytest
from pydantic_ai import models
from rich.console import Console
from typer.testing import CliRunner

from agentic_mlops.cli import app
from agentic_mlops.tasks import ledger
from tests.agents import scripted_openai as llm


@pytest.mark.slow
def test_the_report_after_a_shadow_demo_gives_agreement_per_decision_point(home, monkeypatch):
    from agentic_mlops.demo import DemoPlan, run_demo

    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with llm.ScriptedOpenAI(llm.diligent(llm.drastic)) as server:
        for name, value in {
            "AGENT_MODEL": "scripted-llm",
            "AGENT_MODE": "shadow",
            "AGENT_BASE_URL": server.url,
            "AGENT_API_KEY": "sk-shadow",
            "AGENT_TRACING": "false",
        }.items():
            monkeypatch.setenv(f"AGENTIC_MLOPS_{name}", value)
        state = run_demo(Console(quiet=True), DemoPlan(max_trials=3, search_seconds=25))
    assert server.requests, "the model was asked"

    assert state["results"]["normal"]["decision"] == "none", "the policy acts in shadow mode"
    assert state["results"]["drift"]["canary"] == "promoted"
    entries = ledger.list_decisions(settings=home)
    shadowed = [e for e in entries if (e.attribution or {}).get("mode") == "shadow"]
    assert {e.decision_point for e in shadowed} == {
        "drift_triage",
        "tuning_advisor",
        "canary_promotion",
    }

    out = CliRunner().invoke(app, ["agents", "report", "--json"])
    assert out.exit_code == 0, out.output
    figures = {f["decision_point"]: f for f in json.loads(out.stdout)}
    for point in ("drift_triage", "tuning_advisor", "canary_promotion"):
        shown = figures[point]
        assert shown["model"] == "scripted-llm" and shown["modes"] == ["shadow"]
        assert shown["cases"] == sum(e.decision_point == point for e in shadowed)
        assert shown["answered"] == shown["cases"], "the model answered every shadow case"
        assert shown["agreement"] is not None
    triage = figures["drift_triage"]
    assert triage["agreement"] < 1.0, "a model that always rolls back disagrees on a calm window"
    assert {d["model_action"] for d in triage["disagreements"]} == {"rollback"}
    assert all(d["acted"] == d["policy_action"] for d in triage["disagreements"])
