"""Extra MCP servers mounted into the agents: read-only by default, never for the policy.

The extra server in these tests is our own, `agentic-mlops mcp` with its act tools enabled,
so that a read-only mount has write tools to hide."""

import json
import logging
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from pydantic_ai import Agent, models
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from agentic_mlops.agents.decision_runtime import tool_returns
from agentic_mlops.agents.drift_triage import (
    EVIDENCE_TOOLS,
    triage,
)
from agentic_mlops.agents.mcp_toolsets import mounted_servers, mounted_toolsets
from agentic_mlops.decisions import ColumnEvidence, QualityEvidence, TriageEvidence
from agentic_mlops.settings import Settings
from tests.test_mcp_server import READ_TOOLS

models.ALLOW_MODEL_REQUESTS = False
CLI = str(Path(sys.executable).with_name("agentic-mlops"))


def our_server(home: Settings, **entry) -> dict:
    """Our MCP server, acts enabled, as an `mcp_servers` entry named `mlops`."""
    env = {
        "AGENTIC_MLOPS_HOME": str(home.home),
        "AGENTIC_MLOPS_MCP_ACT_ENABLED": "true",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return {"name": "mlops", "command": CLI, "args": ["mcp"], "env": env, **entry}


def mount(monkeypatch, *servers: dict) -> Settings:
    monkeypatch.setenv("AGENTIC_MLOPS_MCP_SERVERS", json.dumps(list(servers)))
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_TRACING", "false")
    return Settings()


def drifted_evidence() -> TriageEvidence:
    return TriageEvidence(
        model_name="churn",
        champion_version=1,
        quality=QualityEvidence(passed=True, batch_failed=False),
        dataset_drift=True,
        drift_share=1.0,
        columns={
            "monthly_charges": ColumnEvidence(drifted=True, test="w", score=0.6, threshold=0.1)
        },
        feature_importance={"monthly_charges": 0.2},
        labels_available=True,
    )


def visible_tools(settings: Settings) -> set[str]:
    """The tool names a model sees through the mounted servers."""
    seen = set()

    def look(messages, info):
        seen.update(tool.name for tool in info.function_tools)
        return ModelResponse(parts=[TextPart("seen")])

    model = FunctionModel(look)
    Agent(model, toolsets=mounted_toolsets(model, settings)).run_sync("which tools?")
    return seen


def test_the_policy_mounts_nothing_and_decides_as_before(home, monkeypatch):
    before = triage(drifted_evidence(), mount(monkeypatch))
    settings = mount(monkeypatch, {"name": "broken", "command": "/nonexistent/server"})
    assert mounted_toolsets("policy", settings) == []
    after = triage(drifted_evidence(), settings)
    assert after.decision == before.decision and after.overridden_by is None
    assert after.attribution.tools_called == before.attribution.tools_called


def test_invalid_entries_are_skipped_with_a_warning(home, monkeypatch, caplog):
    settings = mount(
        monkeypatch,
        {"name": "ok", "url": "http://127.0.0.1:9/mcp"},
        {"name": "both", "command": "x", "url": "http://127.0.0.1:9/mcp"},
        {"name": "neither"},
        {"name": "9lives", "command": "x"},
        {"name": "extra", "command": "x", "writable": True},
    )
    with caplog.at_level(logging.WARNING):
        servers = mounted_servers(settings)
    assert [server.name for server in servers] == ["ok"]
    assert all(server.read_only for server in servers)
    assert {"both", "neither", "9lives", "extra"} <= set(caplog.text.split("'"))


@pytest.mark.slow
def test_a_read_only_mount_shows_only_tools_declared_read_only_unless_told_otherwise(
    home, monkeypatch
):
    read_only = our_server(home)
    writable = our_server(
        home, name="rw", read_only=False, tools=["list_models", "request_retrain"]
    )
    seen = visible_tools(mount(monkeypatch, read_only, writable))
    assert seen == {f"mlops_{name}" for name in READ_TOOLS} | {
        "rw_list_models",
        "rw_request_retrain",
    }


@pytest.mark.slow
def test_a_server_slower_to_start_than_pydantic_ais_five_seconds_is_mounted(home, monkeypatch):
    late = our_server(home)
    late["args"] = ["-c", f"sleep 6; exec {CLI} mcp"]
    late["command"] = "/bin/sh"
    seen = visible_tools(mount(monkeypatch, late))
    assert seen == {f"mlops_{name}" for name in READ_TOOLS}


@pytest.mark.slow
def test_the_triage_agent_on_a_model_calls_a_mounted_tool_and_its_decision_is_guarded(
    home, monkeypatch
):
    """A scripted model reads the registry through the extra server, then proposes a
    rollback: the tool result reaches it as data, and the guardrail still rules (no previous
    champion, so the rollback is replaced by the policy's decision)."""
    calls = []

    def model(messages, info):
        returns = tool_returns(messages)
        if "mlops_list_models" not in returns:
            return ModelResponse(
                parts=[ToolCallPart("mlops_list_models", {})]
                + [ToolCallPart(name, {}) for name in EVIDENCE_TOOLS]
            )
        calls.append(returns["mlops_list_models"])
        decision = {
            "action": "rollback",
            "severity": "high",
            "confidence": 0.9,
            "drifted_features": ["monthly_charges"],
            "rationale": "roll back",
            "evidence_used": ["registry"],
        }
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, decision)])

    settings = mount(monkeypatch, our_server(home))
    outcome = triage(drifted_evidence(), settings, model=FunctionModel(model))
    assert calls and calls[0]["configured_model"] == "churn" and calls[0]["models"] == []
    assert outcome.decision.action == "retrain"
    assert "rollback needs a previous champion" in outcome.overridden_by
    assert "model run failed" not in outcome.overridden_by


def test_an_unreachable_server_fails_the_model_run_and_the_policy_decides(home, monkeypatch):
    def model(messages, info):
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart(name, {}) for name in EVIDENCE_TOOLS])
        decision = {
            "action": "escalate",
            "severity": "medium",
            "confidence": 0.9,
            "rationale": "a person should look",
            "evidence_used": ["column_drift"],
        }
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, decision)])

    settings = mount(monkeypatch, {"name": "gone", "command": "/nonexistent/server"})
    outcome = triage(drifted_evidence(), settings, model=FunctionModel(model))
    assert outcome.decision.action == "retrain"
    assert outcome.overridden_by.startswith("model run failed")
    without = triage(drifted_evidence(), mount(monkeypatch), model=FunctionModel(model))
    assert without.decision.action == "escalate" and without.overridden_by is None
