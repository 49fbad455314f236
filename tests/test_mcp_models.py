"""The MCP tools take a `model_name`: a team's adopted model is checked, proposed and listed
by name through the MCP SDK's client, over stdio, against `agentic-mlops mcp`."""

from __future__ import annotations

import pytest

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger
from tests.test_mcp_server import call, over_stdio, server_env
from tests.test_own_models import adopt, register, team  # noqa: F401

MODEL_ACTS = (
    "run_drift_check",
    "request_retrain",
    "request_rollback",
    "start_canary",
    "request_promotion",
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_act_and_read_tools_guard_the_model_they_are_given(team: Settings):  # noqa: F811
    register(team, "tumour")
    adopt(team, "tumour", "tumour-adopt.csv", "malignant")
    answers = {}

    async def conversation(session):
        answers["tools"] = {tool.name: tool for tool in (await session.list_tools()).tools}
        answers["clean"] = await call(
            session,
            "run_drift_check",
            batch_path="data/tumour-clean.csv",
            act=False,
            model_name="tumour",
        )
        answers["shifted"] = await call(
            session,
            "run_drift_check",
            batch_path="data/tumour-shifted.csv",
            act=False,
            model_name="tumour",
        )
        answers["champion"] = await call(
            session, "request_promotion", version=1, model_name="tumour"
        )
        answers["no_challenger"] = await call(
            session, "start_canary", model_name="tumour", wait_seconds=120
        )
        answers["nobody"] = await call(
            session, "request_retrain", batch_path="data/tumour-clean.csv", model_name="nobody"
        )
        answers["tumour_runs"] = await call(session, "flow_runs", model_name="tumour", limit=50)
        answers["churn_runs"] = await call(session, "flow_runs", model_name="churn", limit=50)
        answers["all_runs"] = await call(session, "flow_runs", limit=50)
        answers["decisions"] = await call(session, "decisions", model_name="tumour")

    over_stdio(server_env(team.home, AGENTIC_MLOPS_MCP_ACT_ENABLED="true"), conversation)

    for tool in MODEL_ACTS:
        assert "model_name" in answers["tools"][tool].input_schema["properties"], tool
    assert "model_name" in answers["tools"]["flow_runs"].input_schema["properties"]

    clean, shifted = answers["clean"], answers["shifted"]
    assert clean["finished"] and clean["decision"]["action"] in ("none", "monitor"), clean
    # no target given: the card's label column (malignant) is used, so the triage sees the
    # gap between the observed and predicted positive rate, as `drift-check --model` does
    assert shifted["decision"]["action"] == "retrain", shifted
    assert "positive rate was" in shifted["decision"]["rationale"]
    entry = ledger.get_decision(shifted["decision"]["ledger_id"], team)
    assert entry.model_name == "tumour" and entry.flow_run_id == shifted["flow_run_id"]
    assert ledger.list_decisions("churn", settings=team) == []

    assert answers["champion"]["error"]["code"] == "already_champion"
    assert "tumour v1" in answers["champion"]["error"]["message"]
    assert answers["no_challenger"]["error"]["code"] == "no_challenger"
    assert "'tumour'" in answers["no_challenger"]["error"]["message"]
    assert answers["nobody"]["error"]["code"] == "unknown_model"

    assert "flow_runs" in answers["tumour_runs"], answers["tumour_runs"]
    tumour_runs = answers["tumour_runs"]["flow_runs"]
    assert {r["flow_name"] for r in tumour_runs} >= {"adopt", "drift-check"}
    assert all(r["parameters"]["model_name"] == "tumour" for r in tumour_runs)
    ours = {clean["flow_run_id"], shifted["flow_run_id"]}
    assert ours <= {r["id"] for r in tumour_runs}
    churn_runs = answers["churn_runs"]["flow_runs"]
    assert not ours & {r["id"] for r in churn_runs}
    assert all(r["parameters"].get("model_name") in (None, "churn") for r in churn_runs)
    assert len(answers["all_runs"]["flow_runs"]) >= len(tumour_runs)
    assert {d["model_name"] for d in answers["decisions"]["decisions"]} == {"tumour"}
