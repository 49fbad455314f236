"""The MCP server through real MCP clients: the SDK's client over stdio and over HTTP, and
pydantic-ai's MCP toolset, against `agentic-mlops mcp` running on a populated home."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import mlflow
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from prefect.settings import PREFECT_API_URL

from agentic_mlops.agents.canary_promotion import advise
from agentic_mlops.decisions import CanaryEvidence, JudgeResult, MetricVerdict
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.canary_steps import record_decision
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import trained_home

CLI = str(Path(sys.executable).with_name("agentic-mlops"))
READ_TOOLS = {
    "list_models",
    "model_versions",
    "recent_runs",
    "run_artifacts",
    "drift_report",
    "canary_status",
    "decisions",
    "decision",
    "flow_runs",
    "flow_run",
}
ACT_TOOLS = {
    "run_drift_check",
    "request_retrain",
    "request_rollback",
    "start_canary",
    "request_promotion",
    "adopt_model",
}
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def populated(tmp_path_factory, mlflow_template):
    """A home with champion v1, challenger v2, a drift check of a covariate batch (decided
    retrain, not acted on) and a canary step of v2 that was rolled back."""
    root = trained_home(
        tmp_path_factory,
        mlflow_template,
        "mcp",
        dict(generate_rows=1_500, seed=1, hyperparameters=Hyperparameters(max_iter=30)),
    )
    previous = os.environ["AGENTIC_MLOPS_HOME"]
    os.environ["AGENTIC_MLOPS_HOME"] = str(root)
    try:
        settings = Settings(agent_tracing=False)
        client = registry.client(settings)
        first = client.get_model_version("churn", "1")
        client.create_model_version("churn", first.source, run_id=first.run_id)
        registry.set_alias("churn", registry.CHALLENGER, 2, settings)
        batch = write_table(
            generate_churn(1_500, 5, "covariate"), root / "incoming" / "covariate.parquet"
        )
        checked = drift_check(current_path=str(batch), act=False)
        judge = JudgeResult(
            verdict="fail",
            score=20,
            critical_failures=["error_rate"],
            metrics=[
                MetricVerdict(
                    name="error_rate",
                    classification="high",
                    critical=True,
                    effect=0.05,
                    ci_low=0.03,
                    ci_high=0.07,
                    canary_n=400,
                    baseline_n=400,
                )
            ],
        )
        evidence = CanaryEvidence(
            model_name="churn",
            champion_version=1,
            challenger_version=2,
            weight=0.05,
            next_weight=0.25,
            judge=judge,
            sequential_outcome="rollback",
            sequential_reason="error rate of the canary is higher",
        )
        canary = record_decision(evidence, advise(evidence, settings), settings)
    finally:
        mlflow.flush_trace_async_logging()  # agent traces written to this home, if autologged
        os.environ["AGENTIC_MLOPS_HOME"] = previous
    return {"root": root, "triage_id": checked.ledger_id, "canary_id": canary.id}


@pytest.fixture
def home_copy(populated, tmp_path):
    root = tmp_path / "home"
    shutil.copytree(populated["root"], root)
    return root


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """What the server process needs: its home and this session's Prefect server."""
    return {
        "AGENTIC_MLOPS_HOME": str(home),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AGENTIC_MLOPS_AGENT_TRACING": "false",
        **extra,
    }


def over_stdio(env: dict[str, str], conversation) -> None:
    """Spawn `agentic-mlops mcp` and hold one MCP session with it."""

    async def main():
        server = StdioServerParameters(command=CLI, args=["mcp"], env=env)
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await conversation(session)

    anyio.run(main)


async def call(session: ClientSession, tool: str, **arguments):
    """A tool's structured answer; an error answer is `{"error": {code, message, hint}}`."""
    result = await session.call_tool(tool, arguments, read_timeout_seconds=300)
    text = "".join(getattr(part, "text", "") for part in result.content)
    assert "Traceback" not in text
    if result.is_error:
        assert result.structured_content and "error" in result.structured_content, text
    return result.structured_content


@pytest.fixture(scope="module")
def transcript(populated, tmp_path_factory):
    """One stdio session with `agentic-mlops mcp` on a copy of the populated home, acts
    enabled and retraining forbidden: every read tool, the resources and prompts, then the
    acts. Its answers by name; the tests below each check a part of it."""
    root = tmp_path_factory.mktemp("transcript") / "home"
    shutil.copytree(populated["root"], root)
    env = server_env(
        root,
        AGENTIC_MLOPS_MCP_ACT_ENABLED="true",
        AGENTIC_MLOPS_TRIAGE_ALLOWED_ACTIONS='["none", "monitor", "escalate"]',
    )
    answers = {"home": root}

    async def reads(session):
        answers["tools"] = {tool.name: tool for tool in (await session.list_tools()).tools}
        answers["models"] = await call(session, "list_models")
        answers["versions"] = await call(session, "model_versions")
        answers["no_version"] = await call(session, "model_versions", version=9)
        answers["no_model"] = await call(session, "model_versions", model_name="fraud")
        answers["runs"] = await call(session, "recent_runs")
        run_id = answers["runs"]["runs"][0]["run_id"]
        answers["artifacts"] = await call(session, "run_artifacts", run_id=run_id)
        answers["importance"] = await call(
            session, "run_artifacts", run_id=run_id, path="feature_importance.json"
        )
        answers["no_run"] = await call(session, "run_artifacts", run_id="0" * 32)
        answers["escape"] = await call(session, "run_artifacts", run_id=run_id, path="../..")
        answers["drift"] = await call(session, "drift_report")
        answers["canary"] = await call(session, "canary_status")
        answers["rollbacks"] = await call(session, "decisions", action="rollback")
        answers["recent"] = await call(session, "decisions", since="1h")
        answers["old"] = await call(session, "decisions", until="2001-01-01")
        answers["bad_time"] = await call(session, "decisions", since="last tuesday")
        answers["decision"] = await call(session, "decision", ledger_id=populated["triage_id"])
        answers["no_decision"] = await call(session, "decision", ledger_id="nope")
        answers["flows"] = await call(session, "flow_runs", flow_name="drift-check", limit=50)
        answers["no_flow"] = await call(session, "flow_runs", flow_name="fraud-check")
        flow_run_id = answers["drift"]["flow_run_id"]
        answers["flow_run"] = await call(session, "flow_run", flow_run_id=flow_run_id)
        answers["bad_flow_run"] = await call(session, "flow_run", flow_run_id="42")
        invalid = await session.call_tool("decisions", {"limit": 0})
        answers["invalid"] = (invalid.is_error, invalid.content[0].text)

    async def resources_and_prompts(session):
        answers["resources"] = {str(r.uri) for r in (await session.list_resources()).resources}
        answers["templates"] = {
            t.uri_template for t in (await session.list_resource_templates()).resource_templates
        }
        for name, uri in (
            ("drift_md", "agentic-mlops://drift/latest"),
            ("canary_md", "agentic-mlops://canary/churn/latest"),
            ("ledger_md", "agentic-mlops://ledger/latest"),
            ("model_md", "agentic-mlops://models/churn"),
        ):
            answers[name] = (await session.read_resource(uri)).contents[0].text
        try:
            await session.read_resource("agentic-mlops://models/fraud")
        except Exception as error:  # the SDK raises the server's error answer
            answers["unknown_md"] = str(error)
        answers["prompts"] = {p.name for p in (await session.list_prompts()).prompts}
        for name, version in (("why", "2"), ("why_not", "1")):
            prompt = await session.get_prompt("why_rolled_back", {"version": version})
            answers[name] = prompt.messages[0].content.text

    async def acts(session):
        answers["retrain"] = await call(
            session, "request_retrain", batch_path="incoming/covariate.parquet"
        )
        answers["outside"] = await call(session, "run_drift_check", batch_path="/etc/hostname")
        answers["missing"] = await call(session, "request_rollback", batch_path="nope.parquet")
        answers["no_canary_version"] = await call(session, "start_canary", version=9)
        answers["champion"] = await call(session, "request_promotion", version=1)

    async def conversation(session):
        await reads(session)
        await resources_and_prompts(session)
        await acts(session)

    over_stdio(env, conversation)
    return answers


def test_each_tool_is_typed_described_and_annotated(transcript):
    tools = transcript["tools"]
    assert set(tools) == READ_TOOLS | ACT_TOOLS
    for tool in tools.values():
        assert tool.description and tool.annotations.read_only_hint is (tool.name in READ_TOOLS)
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"
    assert tools["decisions"].input_schema["properties"]["limit"]["maximum"] == 500


def test_read_tools_answer_from_the_populated_home(transcript, populated):
    answers = transcript
    assert answers["models"]["models"][0]["aliases"] == {"challenger": 2, "champion": 1}
    v2, v1 = answers["versions"]["versions"]
    assert v1["aliases"] == ["champion"] and v2["aliases"] == ["challenger"]
    assert 0.5 < v1["metrics"]["roc_auc"] <= 1

    assert answers["runs"]["runs"][0]["registered_version"] == 1
    listed = {a["path"] for a in answers["artifacts"]["artifacts"]}
    assert {"feature_importance.json", "reference"} <= listed
    assert "monthly_charges" in json.loads(answers["importance"]["content"])

    drift = answers["drift"]
    assert drift["batch"] == "covariate.parquet" and drift["ledger_id"] == populated["triage_id"]
    drifted = [c["column"] for c in drift["columns"] if c["drifted"]]
    assert "monthly_charges" in drifted and drift["columns"][0]["drifted"]
    assert drift["decision"]["action"] == "retrain" and drift["quality"]["passed"]
    assert drift["report_path"].endswith("covariate-drift.html")

    canary = answers["canary"]
    assert canary["aliases"]["challenger"] == 2 and canary["serving"] is None
    step = canary["steps"][-1]
    assert step["action"] == "rollback" and step["judge_verdict"] == "fail"
    assert step["metrics"][0]["name"] == "error_rate"

    assert [d["id"] for d in answers["rollbacks"]["decisions"]] == [populated["canary_id"]]
    recent = {d["id"] for d in answers["recent"]["decisions"]}
    assert recent == {populated["triage_id"], populated["canary_id"]}
    assert answers["old"]["decisions"] == []
    assert answers["decision"]["evidence"]["columns"]["monthly_charges"]["drifted"]

    assert drift["flow_run_id"] in {r["id"] for r in answers["flows"]["flow_runs"]}
    run = answers["flow_run"]
    assert run["flow_run"]["state_type"] == "COMPLETED"
    assert any(t["name"].startswith("load-batch") for t in run["task_runs"])
    assert [d["id"] for d in run["decisions"]] == [populated["triage_id"]]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("no_version", "unknown_version"),
        ("no_model", "unknown_model"),
        ("no_run", "unknown_run"),
        ("bad_time", "bad_time_filter"),
        ("no_decision", "unknown_decision"),
        ("no_flow", "unknown_flow"),
        ("bad_flow_run", "bad_argument"),
        ("escape", "bad_argument"),
    ],
)
def test_bad_arguments_get_a_structured_error(transcript, answer, code):
    error = transcript[answer]["error"]
    assert error["code"] == code and error["message"] and error["hint"]


def test_an_unknown_version_is_answered_with_the_versions_that_exist(transcript):
    assert "1, 2" in transcript["no_version"]["error"]["hint"]


def test_arguments_out_of_range_are_refused_by_the_schema_without_a_traceback(transcript):
    is_error, text = transcript["invalid"]
    assert is_error and "limit" in text and "Traceback" not in text


def test_resources_are_markdown_reports_of_the_home(transcript):
    answers = transcript
    assert {"agentic-mlops://drift/latest", "agentic-mlops://ledger/latest"} <= (
        answers["resources"]
    )
    assert "agentic-mlops://models/{model_name}" in answers["templates"]
    assert "**Decision: retrain**" in answers["drift_md"]
    assert "| monthly_charges | **yes**" in answers["drift_md"]
    assert "| 5% | fail |" in answers["canary_md"] and "**rollback**" in answers["canary_md"]
    assert "| drift_triage | v1 | **retrain**" in answers["ledger_md"]
    assert "| canary_promotion | v2 | **rollback**" in answers["ledger_md"]
    assert "| v1 | champion |" in answers["model_md"]
    assert "fraud" in answers["unknown_md"]


def test_the_rollback_prompt_brings_the_ledger_records(transcript, populated):
    assert {"why_rolled_back", "explain_latest_drift", "model_health"} <= transcript["prompts"]
    assert populated["canary_id"] in transcript["why"]
    assert "canary_promotion" in transcript["why"]
    assert "```json\n[]\n```" in transcript["why_not"]


def test_a_proposed_retrain_is_decided_by_the_triage_and_its_guardrails(transcript):
    """Retraining is not allowed here: the proposal runs the drift check, the triage's
    retrain is replaced by the guardrail, nothing is trained, and the caller is told why."""
    retrain = transcript["retrain"]
    assert retrain["proposed"] == "retrain" and retrain["finished"]
    assert retrain["decision"]["action"] == "escalate" and retrain["accepted"] is False
    assert "'retrain' is not allowed" in retrain["decision"]["guardrail"]
    settings = Settings(home=transcript["home"])
    assert registry.model_aliases("churn", settings) == {"challenger": 2, "champion": 1}
    entry = ledger.get_decision(retrain["decision"]["ledger_id"], settings)
    assert entry.action == "escalate" and entry.flow_run_id == retrain["flow_run_id"]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("outside", "path_outside_home"),
        ("missing", "unknown_batch"),
        ("no_canary_version", "unknown_version"),
        ("champion", "already_champion"),
    ],
)
def test_acts_refuse_what_they_cannot_propose(transcript, answer, code):
    assert transcript[answer]["error"]["code"] == code


def test_pydantic_ai_toolset_calls_read_tools_and_sees_no_act_tools_when_disabled(populated):
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    from agentic_mlops.agents.decision_runtime import tool_returns

    seen = {}

    def assistant(messages, info):
        returns = tool_returns(messages)
        if not returns:
            seen["tools"] = {tool.name for tool in info.function_tools}
            return ModelResponse(
                parts=[
                    ToolCallPart("list_models", {}),
                    ToolCallPart("decisions", {"action": "rollback"}),
                ]
            )
        seen["returns"] = returns
        return ModelResponse(parts=[TextPart("v2 was rolled back by the canary")])

    transport = StdioTransport(
        command=CLI, args=["mcp"], env=server_env(populated["root"]), keep_alive=False
    )
    agent = Agent(FunctionModel(assistant), toolsets=[MCPToolset(transport, init_timeout=60)])
    result = agent.run_sync("Why was v2 rolled back?")

    assert result.output == "v2 was rolled back by the canary"
    assert seen["tools"] == READ_TOOLS
    models, rollbacks = seen["returns"]["list_models"], seen["returns"]["decisions"]
    assert models["models"][0]["aliases"]["champion"] == 1
    assert rollbacks["decisions"][0]["id"] == populated["canary_id"]


@pytest.mark.slow
def test_an_accepted_retrain_registers_a_challenger_through_the_drift_check(home_copy):
    answers = {}

    async def conversation(session):
        answers["retrain"] = await call(
            session, "request_retrain", batch_path="incoming/covariate.parquet"
        )
        answers["rollback"] = await call(
            session, "request_rollback", batch_path="incoming/covariate.parquet", wait_seconds=0
        )
        flow_run_id = answers["retrain"]["flow_run_id"]
        answers["run"] = await call(session, "flow_run", flow_run_id=flow_run_id)

    over_stdio(server_env(home_copy, AGENTIC_MLOPS_MCP_ACT_ENABLED="true"), conversation)

    retrain = answers["retrain"]
    assert retrain["accepted"] is True and retrain["decision"]["action"] == "retrain"
    assert "v3 registered as challenger" in retrain["actions_taken"][0]
    assert registry.model_aliases("churn", Settings(home=home_copy))["challenger"] == 3
    assert {"mcp", "mcp:retrain"} <= set(answers["run"]["flow_run"]["tags"])
    rollback = answers["rollback"]
    assert not rollback["finished"] and rollback["decision"] is None and rollback["flow_run_id"]


@pytest.mark.slow
def test_a_canary_started_over_mcp_without_traffic_is_rolled_back(home_copy):
    from agentic_mlops.tasks.local_rollout import LocalRollout

    answers = {}

    async def conversation(session):
        answers["canary"] = await call(
            session, "start_canary", version=2, steps=[50, 100], step_seconds=2, wait_seconds=400
        )
        answers["status"] = await call(session, "canary_status")

    try:
        over_stdio(server_env(home_copy, AGENTIC_MLOPS_MCP_ACT_ENABLED="true"), conversation)
    finally:
        LocalRollout(Settings(home=home_copy)).shutdown()

    canary = answers["canary"]
    assert canary["finished"] and canary["decision"]["action"] == "rollback"
    assert canary["accepted"] is False
    assert registry.model_aliases("churn", Settings(home=home_copy))["champion"] == 1
    assert answers["status"]["rollout_flow_run_id"] == canary["flow_run_id"]
    assert [s["action"] for s in answers["status"]["steps"]][-1] == "rollback"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_http_refuses_to_start_without_a_token(home):
    env = {**os.environ, "AGENTIC_MLOPS_HOME": str(home.home)}
    env.pop("AGENTIC_MLOPS_MCP_TOKEN", None)
    port = str(free_port())
    refused = subprocess.run(
        [CLI, "mcp", "--http", "--port", port], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "needs a bearer token" in refused.stderr
    weak = subprocess.run(
        [CLI, "mcp", "--http", "--port", port],
        env={**env, "AGENTIC_MLOPS_MCP_TOKEN": "secret"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert weak.returncode == 2 and "shorter than 16" in weak.stderr


def test_http_answers_only_the_bearer_of_the_token(populated):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = {
        **os.environ,
        **server_env(populated["root"]),
        "AGENTIC_MLOPS_MCP_TOKEN": TOKEN,
    }
    server = subprocess.Popen(
        [CLI, "mcp", "--http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    accept = {"accept": "application/json, text/event-stream"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                anonymous = httpx.post(url, json=initialize, headers=accept, timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.2)
        wrong = httpx.post(
            url, json=initialize, headers={**accept, "authorization": "Bearer x" + TOKEN}
        )
        assert anonymous.status_code == 401 and wrong.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")

        async def listed():
            client = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
            async with (
                client,
                streamable_http_client(url, http_client=client) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return {tool.name for tool in (await session.list_tools()).tools}

        assert anyio.run(listed) == READ_TOOLS
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_decision_brief_carries_its_attribution(home):
    from agentic_mlops.mcp_reads import brief
    from agentic_mlops.tasks import ledger

    attribution = {"decided_by": "guardrail", "model_action": "none", "policy_action": "escalate"}
    entry = ledger.record_agent_decision(
        "drift_triage",
        {"batch": 1},
        "run-1",
        home,
        model_name="churn",
        action="escalate",
        agent_model="scripted-llm",
        overridden_by="none ignores that the batch failed: raised to escalate",
        attribution=attribution,
    )
    shown = brief(entry)
    assert shown.attribution == attribution and shown.decided_by == "scripted-llm"
