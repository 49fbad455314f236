"""What every decision agent shares: the policy as a model, an LLM backed by it, a safe run.

An agent's `policy` is a deterministic function of its tools' results. `policy_model` turns it
into a pydantic-ai `FunctionModel` that first calls every evidence tool and then returns the
policy's decision through the output tool, so the agent path is the same with or without an
LLM. `decide` runs an agent under usage limits and a timeout, traced to MLflow, and falls back
to the policy when the run fails, so a caller always gets a valid decision and knows whether
the model's own answer was replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
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
from pydantic_ai.usage import UsageLimits

from agentic_mlops.settings import Settings

POLICY = "policy"
Decision = TypeVar("Decision", bound=BaseModel)


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


def decide(
    agent: Agent[Any, Decision],
    prompt: str,
    deps: Any,
    settings: Settings,
    fallback: Callable[[], Decision],
) -> tuple[Decision, str | None]:
    """Run an agent once; on any failure, the policy's decision.

    Returns:
        The decision and, when the model's run failed, why the policy decided instead.
    """
    if settings.agent_tracing:
        from agentic_mlops.tasks.registry import trace_agent_runs

        trace_agent_runs(settings)
    try:
        result = agent.run_sync(
            prompt,
            deps=deps,
            usage_limits=UsageLimits(
                request_limit=settings.agent_request_limit,
                tool_calls_limit=settings.agent_tool_calls_limit,
            ),
            timeout=settings.agent_timeout_seconds,
        )
    except Exception as error:  # a provider, a tool or the output: any failure means the policy
        return fallback(), f"model run failed ({type(error).__name__}): policy decided"
    return result.output, None


def decide_within(
    agent: Agent[Any, Decision],
    prompt: str,
    deps: Any,
    settings: Settings,
    fallback: Callable[[], Decision],
    guard: Callable[[Decision], tuple[Decision, str | None]],
) -> tuple[Decision, str | None]:
    """`decide`, then the agent's guardrails: the decision that stands and every reason it
    is not the model's own (a failed run, a guardrail), or None."""
    decision, overridden_by = decide(agent, prompt, deps, settings, fallback)
    decision, guarded = guard(decision)
    return decision, "; ".join(r for r in (overridden_by, guarded) if r) or None
