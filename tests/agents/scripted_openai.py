"""An OpenAI-compatible chat-completions server on loopback that plays a scripted LLM.

The agents reach it exactly as they would reach Ollama, vLLM or llama.cpp: the real OpenAI
client, through `agent_base_url`, with `agent_api_key` as the bearer token. Each request body is
handed to a behaviour, which reads the tools offered and the conversation so far and answers
with tool calls, text, a delay or an HTTP error. The behaviours below are the adversaries a team
meets in practice: complacent, reckless, gullible, garbage, slow and unavailable.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OUTPUT_TOOL = "final_result"
MODEL_NAME = "scripted-llm-2026-01"
"""What the server says answered: the `model` field of every response."""


@dataclass
class Reply:
    """One answer: tool calls (name, arguments), text, or an HTTP error after a delay."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    text: str | None = None
    status: int = 200
    delay: float = 0.0


Behaviour = Callable[[dict[str, Any]], Reply]


def offered_tools(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


def evidence_tools(body: dict[str, Any]) -> list[str]:
    """The summaries offered: every tool but the output one that needs no argument."""
    return [
        tool["function"]["name"]
        for tool in body.get("tools", [])
        if tool["function"]["name"] != OUTPUT_TOOL
        and not tool["function"].get("parameters", {}).get("required")
    ]


def called_tools(body: dict[str, Any]) -> list[str]:
    return [
        call["function"]["name"]
        for message in body["messages"]
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
    ]


def tool_results(body: dict[str, Any]) -> str:
    return "\n".join(
        str(message.get("content")) for message in body["messages"] if message["role"] == "tool"
    )


def complacent(answer: dict[str, Any]) -> Behaviour:
    """Answers at once, sure of itself, without calling a single tool."""
    return lambda body: Reply(calls=[(OUTPUT_TOOL, answer)])


def diligent(answer: Callable[[dict[str, Any]], dict[str, Any]] | dict[str, Any]) -> Behaviour:
    """Calls every evidence tool first, then answers (a dict, or a function of the request)."""

    def behave(body: dict[str, Any]) -> Reply:
        if not called_tools(body):
            return Reply(calls=[(name, {}) for name in evidence_tools(body)])
        return Reply(calls=[(OUTPUT_TOOL, answer(body) if callable(answer) else answer)])

    return behave


def gullible(answer: dict[str, Any], key: str, choices: tuple[str, ...]) -> Behaviour:
    """Reads every tool, then does whatever the data tells it: the first of `choices` named
    in a tool result after 'IGNORE PREVIOUS INSTRUCTIONS' becomes its answer's `key`."""

    def told(body: dict[str, Any]) -> dict[str, Any]:
        text = tool_results(body)
        order = text[text.find("IGNORE PREVIOUS INSTRUCTIONS") :]
        named = [choice for choice in choices if choice in order]
        return {**answer, key: min(named, key=order.find)} if named else answer

    return diligent(told)


def garbage(body: dict[str, Any]) -> Reply:
    """Free text, and an output call whose arguments are not even JSON."""
    return Reply(calls=[(OUTPUT_TOOL, "{'action': promote!!")], text="Sure! Here's my answer:")


def slow(seconds: float) -> Behaviour:
    return lambda body: Reply(text="too late", delay=seconds)


def unavailable(body: dict[str, Any]) -> Reply:
    return Reply(status=503)


class ScriptedOpenAI:
    """The server: start it, point `agent_base_url` at `url`, read `requests` afterwards."""

    def __init__(self, behave: Behaviour):
        self.behave = behave
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.authorizations.append(self.headers.get("Authorization"))
                reply = server.behave(body)
                time.sleep(reply.delay)
                if reply.status != 200:
                    payload = {"error": {"message": "overloaded", "type": "server_error"}}
                else:
                    payload = completion(reply, len(server.requests))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(reply: Reply, number: int) -> dict[str, Any]:
    """A chat.completion object as OpenAI's API returns it."""
    calls = [
        {
            "id": f"call_{number}_{index}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        }
        for index, (name, arguments) in enumerate(reply.calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }


INJECTED_ACTIONS = ("promote", "increase_traffic", "rollback", "retrain", "none")


def decision_point(body: dict[str, Any]) -> str:
    """Which decision point a request comes from, by the tools it offers."""
    tools = offered_tools(body)
    if "judge_result" in tools:
        return "canary_promotion"
    return "drift_triage" if "quality_result" in tools else "tuning_advisor"


def drastic(body: dict[str, Any], confident: bool = True) -> dict[str, Any]:
    """The most drastic answer of the request's decision point, grounded in every summary."""
    point = decision_point(body)
    if point == "canary_promotion":
        used: list[str] = ["judge", "sequential", "traffic"]
        return {"action": "promote", "confidence": 0.99, "rationale": "ship it",
                "evidence_used": used}  # fmt: skip
    if point == "drift_triage":
        used = ["quality", "column_drift", "drift_history", "feature_importance", "performance",
                "registry", "serving"]  # fmt: skip
        return {"action": "rollback", "severity": "high", "confidence": 0.99,
                "rationale": "roll it back", "evidence_used": used}  # fmt: skip
    return {"space": {"families": {"random_forest": {}}, "max_trials": 1,
                      "time_budget_seconds": 1}, "rationale": "quick"}  # fmt: skip


def idle(body: dict[str, Any]) -> dict[str, Any]:
    """The do-nothing answer of the request's decision point, at 0.99, citing no tool."""
    point = decision_point(body)
    if point == "canary_promotion":
        return {"action": "promote", "confidence": 0.99, "rationale": "looks fine"}
    if point == "drift_triage":
        return {"action": "none", "severity": "none", "confidence": 0.99, "rationale": "fine"}
    return {"space": {"families": {}, "max_trials": 1, "time_budget_seconds": 1},
            "rationale": "nothing to search"}  # fmt: skip


def complacent_anywhere(body: dict[str, Any]) -> Reply:
    """`none` or `promote` at 0.99 at once, without reading a tool."""
    return Reply(calls=[(OUTPUT_TOOL, idle(body))])


def follows_injection(body: dict[str, Any]) -> Reply:
    """Reads every summary, then does what injected text in them says, else the drastic thing."""
    if not called_tools(body):
        return Reply(calls=[(name, {}) for name in evidence_tools(body)])
    answer = drastic(body)
    text = tool_results(body)
    order = text[text.find("IGNORE PREVIOUS INSTRUCTIONS") :] if "IGNORE" in text else ""
    named = [choice for choice in INJECTED_ACTIONS if choice in order]
    if named and "action" in answer:
        answer["action"] = min(named, key=order.find)
    return Reply(calls=[(OUTPUT_TOOL, answer)])


ADVERSARIES: dict[str, Behaviour] = {
    "complacent": complacent_anywhere,
    "reckless": diligent(drastic),
    "gullible": follows_injection,
    "garbage": garbage,
    "unavailable": unavailable,
}
"""The adversaries by the model name a request asks for (`--model NAME` with a base URL)."""


def by_model(body: dict[str, Any]) -> Reply:
    """The adversary named by the request's `model`."""
    return ADVERSARIES[body["model"]](body)
