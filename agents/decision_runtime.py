"""What every decision agent shares: the policy as a model, an LLM backed by it, a safe run.

An agent's `policy` is a deterministic function of its tools' results. `policy_model` turns it
into a pydantic-ai `FunctionModel` that first calls every evidence tool and then returns the
policy's decision through the output tool, so the agent path is the same with or without an
LLM. `agent_model` reads the model from settings (a base URL means an OpenAI-compatible server
spoken to through chat completions; the API key is passed to the provider, never logged), and
`model_problem` says at start-up what is wrong with it. `decide_within` builds and runs an agent
under usage limits and a timeout, traced to MLflow, and whatever happens returns a valid
decision with its `Attribution`: the model that actually answered (a fallback to the policy
shows), the model's own decision, the policy's for the same evidence, every guardrail that
changed it and why, tokens and latency. A decision whose `evidence_used` names a tool the
model never called is ungrounded, and the policy decides. `agent_mode` says whose decision
acts: the policy's alone (no model asked), the policy's with the model deciding in its shadow
(agreement recorded), or the model's within its guardrails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from agentic_mlops.settings import Settings

POLICY = "policy"
GUARDRAIL = "guardrail"
OUTPUT_TOOLS = ("final_result",)
"""pydantic-ai's name for an agent's output tool: not evidence."""
Decision = TypeVar("Decision", bound=BaseModel)


class Attribution(BaseModel):
    """Who decided, what the model itself said, what the policy would have done, and why the
    decision that stands differs from the model's."""

    configured_model: str = Field(description="The `agent_model` setting in force.")
    mode: str = Field(default="llm", description="policy, shadow or llm (`agent_mode`).")
    answered_by: str | None = Field(
        default=None,
        description="Model that gave the run's last response, as the response names it: a "
        "fallback to the policy shows as `policy`. None when the run failed.",
    )
    decided_by: str = Field(
        description="Where the decision that stands comes from: the answering model, `policy` "
        "(failed or ungrounded run, fallback, or a guardrail's replacement) or `guardrail` "
        "(a guardrail or floor changed the model's action)."
    )
    model_action: str | None = Field(
        default=None, description="The run's own answer before any guardrail; None if it failed."
    )
    model_decision: dict[str, Any] | None = None
    policy_action: str = Field(description="What the policy decides on the same evidence.")
    overridden_by: list[str] = Field(
        default_factory=list, description="Every reason the model's answer did not stand as is."
    )
    shadow_action: str | None = Field(
        default=None,
        description="In shadow mode, what the model's path would have done after guardrails.",
    )
    agreed: bool | None = Field(
        default=None,
        description="Whether the model's own action is the policy's; None when the model gave "
        "none (not asked, failed, or its provider failed over to the policy).",
    )
    tools_called: list[str] = Field(default_factory=list)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_seconds: float = 0.0
    trace_id: str | None = Field(
        default=None, description="The decision's MLflow trace (an LLM's run), when traced."
    )

    def reasons(self) -> str | None:
        return "; ".join(self.overridden_by) or None

    def markdown(self) -> str:
        """The attribution as the Prefect artifacts show it."""
        overrides = "\n".join(f"- {reason}" for reason in self.overridden_by) or "- none"
        return (
            f"Decided by **{self.decided_by}**; configured model `{self.configured_model}`, "
            f"answered by `{self.answered_by or 'nobody (the run failed)'}`.  \n"
            f"Model's own decision: {self.model_action or 'none given'}; the policy's on the "
            f"same evidence: {self.policy_action}.  \n"
            f"Tools called: {', '.join(self.tools_called) or 'none'}; {self.requests} "
            f"request(s), {self.input_tokens} input and {self.output_tokens} output tokens, "
            f"{self.latency_seconds:.2f} s."
            + (f" MLflow trace `{self.trace_id}`." if self.trace_id else "")
            + f"\n\nOverrides:\n{overrides}\n"
        )


class ModelConfigError(ValueError):
    """The `agent_model` setting names no model this installation can build."""


def model_string(settings: Settings) -> str:
    """The pydantic-ai model string in force: with a base URL, a bare name or `openai:` means
    chat completions (`openai-chat:`), which Ollama, vLLM and llama.cpp servers all speak."""
    name = settings.agent_model
    if settings.agent_base_url:
        if ":" not in name:
            return f"openai-chat:{name}"
        if name.startswith("openai:"):
            return "openai-chat:" + name.removeprefix("openai:")
    return name


def agent_model(settings: Settings) -> Model | str:
    """The model behind the agents: `policy`, or a pydantic-ai model built with the settings'
    base URL and API key (no request is made here).

    Raises:
        ModelConfigError: an unknown model or provider, or a provider whose extra is missing.
    """
    if settings.agent_model == POLICY:
        return POLICY
    from pydantic_ai.models import infer_model
    from pydantic_ai.providers import infer_provider_class

    def provider(name: str) -> Any:
        options = {
            "api_key": settings.agent_api_key.get_secret_value()
            if settings.agent_api_key
            else None,
            "base_url": settings.agent_base_url,
        }
        return infer_provider_class(name)(**{k: v for k, v in options.items() if v is not None})

    string = model_string(settings)
    try:
        return infer_model(string, provider_factory=provider)
    except Exception as error:  # UserError, ValueError, ImportError: all mean misconfigured
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = "" if ":" in string else " (a model string is `provider:name`, e.g. openai:gpt-4o)"
        raise ModelConfigError(f"agent_model {settings.agent_model!r}: {first}{hint}") from None


def model_problem(settings: Settings) -> str | None:
    """What is wrong with the model setting, in one line, or None."""
    try:
        agent_model(settings)
    except ModelConfigError as error:
        return str(error)
    return None


def model_settings(settings: Settings) -> ModelSettings:
    chosen: ModelSettings = {}
    if settings.agent_temperature is not None:
        chosen["temperature"] = settings.agent_temperature
    if settings.agent_seed is not None:
        chosen["seed"] = settings.agent_seed
    return chosen


def tool_returns(messages: list[ModelMessage]) -> dict[str, Any]:
    """What each tool returned so far in a run, by tool name."""
    return {
        part.tool_name: part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


def policy_model(
    evidence_tools: tuple[str, ...], decide: Callable[[dict[str, Any]], BaseModel]
) -> FunctionModel:
    """The policy as a model: call every evidence tool, then decide from their returns."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = tool_returns(messages)
        missing = [name for name in evidence_tools if name not in returns]
        if missing:
            return ModelResponse(parts=[ToolCallPart(name, {}) for name in missing])
        decision = decide(returns)
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, decision.model_dump())])

    return FunctionModel(respond, model_name=POLICY)


def allowed_action(ctx: RunContext[Any], decision: Decision) -> Decision:
    """Ask the model to try again when its decision names an action this deployment forbids.

    Registered as an output validator; the deps must carry `limits.allowed_actions`.
    """
    allowed = ctx.deps.limits.allowed_actions
    if decision.action not in allowed:
        raise ModelRetry(
            f"action {decision.action!r} is not allowed here; choose one of {', '.join(allowed)}"
        )
    return decision


def backed_by_policy(model: Model | str, policy: FunctionModel) -> Model:
    """The policy itself for `policy`, else the given model falling back to the policy."""
    return policy if model == POLICY else FallbackModel(model, policy)


def ungrounded(
    decision: BaseModel, called: set[str], evidence_tools: Mapping[str, str] | None
) -> str | None:
    """Why a decision does not rest on tools the model called, or None when it does."""
    if evidence_tools is None:
        return None
    named = list(getattr(decision, "evidence_used", []))
    if not named:
        return "the decision names no evidence: ungrounded, policy decided"
    missing = [ref for ref in named if evidence_tools.get(ref) not in called]
    if missing:
        return (
            f"evidence_used names {', '.join(missing)}, which the model never read: "
            "ungrounded, policy decided"
        )
    return None


def trace_tags(deps: Any, mode: str) -> dict[str, str]:
    """What leads from an agent's trace to the run and the model it decided for."""
    from prefect.runtime import flow_run

    evidence = getattr(deps, "evidence", None)
    version = next(
        (
            getattr(evidence, field)
            for field in ("champion_version", "challenger_version")
            if getattr(evidence, field, None) is not None
        ),
        None,
    )
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "agentic_mlops.model_name": str(getattr(evidence, "model_name", "") or ""),
        "agentic_mlops.model_version": "" if version is None else str(version),
        "agentic_mlops.agent_mode": mode,
    }
    return {key: value for key, value in tags.items() if value}


@contextmanager
def decision_trace(name: str, tags: dict[str, str], traced: bool) -> Iterator[dict[str, str]]:
    """The agent run inside one MLflow trace named for its decision point, when traced."""
    if not traced:
        yield {}
        return
    from agentic_mlops.tasks.registry import decision_trace as mlflow_trace

    with mlflow_trace(name or "agent", tags) as found:
        yield found


def decide_within(
    build: Callable[[], Agent[Any, Decision]],
    prompt: str,
    deps: Any,
    settings: Settings,
    policy: Callable[[], Decision],
    guard: Callable[[Decision], tuple[Decision, str | None]],
    *,
    configured_model: str,
    evidence_tools: Mapping[str, str] | None = None,
    action_of: Callable[[Decision], str] = lambda decision: decision.action,
) -> tuple[Decision, Attribution]:
    """Build and run an agent once, then its guardrails: always a valid decision, attributed.

    Building the agent is inside the same `try` as running it, so a model setting that cannot
    be built, a provider that fails, a timeout, usage limits or an output that stays invalid
    after retries all mean the policy decides, with the reason recorded.
    """
    policy_decision = policy()
    mode = settings.agent_mode or (POLICY if configured_model == POLICY else "llm")
    if mode == POLICY and configured_model != POLICY:
        decision, guarded = guard(policy_decision)
        return decision, Attribution(
            configured_model=configured_model,
            mode=mode,
            decided_by=POLICY,
            policy_action=action_of(policy_decision),
            overridden_by=[r for r in (guarded,) if r],
        )
    traced = settings.agent_tracing and configured_model != POLICY
    if traced:
        from agentic_mlops.tasks.registry import trace_agent_runs

        traced = trace_agent_runs(settings)
    reasons: list[str] = []
    record: dict[str, Any] = {}
    trace: dict[str, str] = {}
    started = time.monotonic()
    try:
        agent = build()
        with decision_trace(agent.name, trace_tags(deps, mode), traced) as trace:
            result = agent.run_sync(
                prompt,
                deps=deps,
                model_settings=model_settings(settings),
                usage_limits=UsageLimits(
                    request_limit=settings.agent_request_limit,
                    tool_calls_limit=settings.agent_tool_calls_limit,
                ),
                timeout=settings.agent_timeout_seconds,
            )
    except Exception as error:  # any failure, building included, means the policy decides
        reasons.append(f"model run failed ({type(error).__name__}): policy decided")
        decision, answered = policy_decision, None
    else:
        decision, answered = result.output, result.response.model_name
        usage = result.usage
        called = {name for name in tool_returns(result.all_messages()) if name not in OUTPUT_TOOLS}
        record = {
            "model_action": action_of(decision),
            "model_decision": decision.model_dump(mode="json"),
            "tools_called": sorted(called),
            "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }
        if answered == POLICY and configured_model != POLICY:
            reasons.append("the model's provider failed: the policy answered (fallback)")
        elif why := ungrounded(decision, called, evidence_tools):
            reasons.append(why)
            decision = policy_decision
    latency = time.monotonic() - started
    failed_over = decision is policy_decision
    decision, guarded = guard(decision)
    if guarded:
        reasons.append(guarded)
    if failed_over or (guarded and decision == policy_decision):
        decided_by = POLICY
    elif guarded:
        decided_by = GUARDRAIL
    else:
        decided_by = answered or POLICY
    model_answered = answered is not None and (answered != POLICY or configured_model == POLICY)
    agreed = record["model_action"] == action_of(policy_decision) if model_answered else None
    shadow_action = None
    if mode == "shadow":
        shadow_action = action_of(decision)
        decision, policy_guarded = guard(policy_decision)
        reasons.extend(r for r in (policy_guarded,) if r)
        reasons.append("shadow mode: the policy's decision acts")
        decided_by = POLICY
    return decision, Attribution(
        configured_model=configured_model,
        mode=mode,
        answered_by=answered,
        decided_by=decided_by,
        policy_action=action_of(policy_decision),
        overridden_by=reasons,
        shadow_action=shadow_action,
        agreed=agreed,
        latency_seconds=round(latency, 3),
        trace_id=trace.get("trace_id"),
        **record,
    )
