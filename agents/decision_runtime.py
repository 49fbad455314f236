"""One decision point, whichever agent: evidence, limits, a closed decision, policy, guardrails.

A decision point is an `Agent` (what the model sees: instructions and tools over the evidence),
a pure `policy` (what the deterministic rule decides on the same evidence) and pure
`guardrails` (what code lets stand, both ways: ceilings and floors). `DecisionPoint.decide`
chooses the model per run from settings (`agent_model`: `policy`, or an LLM backed by the
policy through `FallbackModel`; a base URL means an OpenAI-compatible server spoken to through
chat completions, the API key is passed to the provider and never logged), runs the agent under
usage limits and a timeout, traced to MLflow, and whatever happens returns a valid decision
with its `Attribution`: the model that actually answered (a fallback shows as `policy`), the
model's own decision, the policy's for the same evidence, every guardrail or floor that changed
it and why, tokens and latency. A decision whose `evidence_used` names a tool the model never
called is ungrounded, and the policy decides. `agent_mode` says whose decision acts: the
policy's alone (no model asked), the policy's with the model deciding in its shadow (agreement
recorded), or the model's within its guardrails.

The policy as a model (`policy_model`) calls the evidence tools, so its decision is grounded in
the same tool results a model reads, and returns the decision the policy function already took:
nothing is rebuilt from tool returns. Every agent also gets two tools from here: the limits in
force and this decision point's past decisions with their outcomes, from the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.durable_exec.prefect import PrefectDurability
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

from agentic_mlops.agents.mcp_toolsets import mounted_toolsets
from agentic_mlops.decisions import POLICY, Attribution, Outcome
from agentic_mlops.settings import DecisionLimits, Settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.lifecycle_report import summary, verdict

GUARDRAIL = "guardrail"
OUTPUT_TOOLS = ("final_result",)
"""pydantic-ai's name for an agent's output tool: not evidence."""
Decision = TypeVar("Decision", bound=BaseModel)
Evidence = TypeVar("Evidence", bound=BaseModel)
Limits = TypeVar("Limits", bound="DecisionLimits")
PAST_DECISIONS = 20
"""The most past decisions a model may ask for at once."""


@dataclass
class DecisionDeps(Generic[Evidence, Limits]):
    """What an agent's tools read: one case's evidence, the limits in force, the settings."""

    evidence: Evidence
    limits: Limits
    settings: Settings


class ModelConfigError(ValueError):
    """The `agent_model` setting names no model this installation can build."""


def model_string(settings: Settings) -> str:
    """The pydantic-ai model string in force: with a base URL, a bare name or `openai:` means
    chat completions (`openai-chat:`), which Ollama, vLLM and llama.cpp servers all speak."""
    name = settings.agents.model
    if settings.agents.base_url:
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
    if settings.agents.model == POLICY:
        return POLICY
    from pydantic_ai.models import infer_model
    from pydantic_ai.providers import infer_provider_class

    def provider(name: str) -> Any:
        options = {
            "api_key": settings.agents.api_key.get_secret_value()
            if settings.agents.api_key
            else None,
            "base_url": settings.agents.base_url,
        }
        return infer_provider_class(name)(**{k: v for k, v in options.items() if v is not None})

    string = model_string(settings)
    try:
        return infer_model(string, provider_factory=provider)
    except Exception as error:  # UserError, ValueError, ImportError: all mean misconfigured
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = "" if ":" in string else " (a model string is `provider:name`, e.g. openai:gpt-4o)"
        raise ModelConfigError(f"agent_model {settings.agents.model!r}: {first}{hint}") from None


def model_problem(settings: Settings) -> str | None:
    """What is wrong with the model setting, in one line, or None."""
    try:
        agent_model(settings)
    except ModelConfigError as error:
        return str(error)
    return None


def model_settings(settings: Settings) -> ModelSettings:
    chosen: ModelSettings = {}
    if settings.agents.temperature is not None:
        chosen["temperature"] = settings.agents.temperature
    if settings.agents.seed is not None:
        chosen["seed"] = settings.agents.seed
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


def policy_model(evidence_tools: tuple[str, ...], decision: BaseModel) -> FunctionModel:
    """The policy as a model for one case: call every evidence tool, then return `decision`
    (the policy's, already taken on the same evidence) through the output tool."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = tool_returns(messages)
        missing = [name for name in evidence_tools if name not in returns]
        if missing:
            return ModelResponse(parts=[ToolCallPart(name, {}) for name in missing])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, decision.model_dump())])

    return FunctionModel(respond, model_name=POLICY)


def limits_in_force(ctx: RunContext[DecisionDeps[Any, Any]]) -> dict[str, Any]:
    """The limits code enforces on this decision, whatever you answer: the rule in words, the
    actions this deployment allows, and every threshold, ceiling and floor. An answer outside
    them is changed by code before it acts, and the change is recorded."""
    limits = ctx.deps.limits
    return {"rule": limits.RULE, **limits.model_dump(mode="json")}


def past_decisions(ctx: RunContext[DecisionDeps[Any, Any]], limit: int = 5) -> dict[str, Any]:
    """This decision point's latest decisions for this model, newest first (at most `limit`,
    up to 20): the action that stood, who decided it, what the policy and the model said, and
    the outcome once known (`right`, `wrong`, or `pending`)."""
    if not 1 <= limit <= PAST_DECISIONS:
        return {"error": f"limit must be between 1 and {PAST_DECISIONS}, not {limit}"}
    point = ctx.agent.name if ctx.agent else None
    entries = ledger.list_decisions(
        model_name=getattr(ctx.deps.evidence, "model_name", None),
        decision_point=point,
        limit=limit,
        settings=ctx.deps.settings,
    )
    return {
        "decision_point": point,
        "decisions": [
            {
                "created_at": entry.created_at,
                "model_version": entry.model_version,
                "action": entry.action,
                "decided_by": (entry.attribution or {}).get("decided_by", entry.agent_model),
                "model_action": (entry.attribution or {}).get("model_action"),
                "policy_action": (entry.attribution or {}).get("policy_action"),
                "outcome": {"good": "right", "bad": "wrong"}.get(verdict(entry) or "", "pending"),
                "outcome_detail": summary(entry),
            }
            for entry in entries
        ],
    }


SHARED_TOOLS = (limits_in_force, past_decisions)
"""Tools every decision point offers besides its own."""


def action_of(decision: BaseModel) -> str:
    return decision.action


@dataclass
class ModelAnswer(Generic[Decision]):
    """What a model run left: the decision (the policy's when the run failed or was
    ungrounded), the model that answered, what the record keeps of the run, and why the
    model's own answer was set aside."""

    decision: Decision
    answered_by: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    latency_seconds: float = 0.0
    trace_id: str | None = None


@dataclass(frozen=True)
class DecisionPoint(Generic[Evidence, Limits, Decision]):
    """One decision point: its agent, how its limits, policy and guardrails are found, and
    which tools ground a decision. `decide` runs it once on one case's evidence."""

    agent: Agent[Any, Decision]
    prompt: str
    deps: Callable[[Evidence, Limits, Settings], DecisionDeps[Evidence, Limits]]
    limits: Callable[[Settings], Limits]
    policy: Callable[[Evidence, Limits], Decision]
    guardrails: Callable[[Decision, Evidence, Limits], tuple[Decision, str | None]]
    evidence_tools: tuple[str, ...]
    grounding: Mapping[str, str] | None = None
    """The tool each `evidence_used` entry stands for; None: decisions name no evidence."""
    action: Callable[[Decision], str] = action_of

    def run_model(self, settings: Settings, model: Model | None, decision: Decision) -> Model:
        """The model of this run: the policy itself for `policy`, else the given model or the
        settings' one, falling back to the policy's `decision`.

        Raises:
            ModelConfigError: the settings name a model this installation cannot build.
        """
        chosen = model if model is not None else agent_model(settings)
        return backed_by_policy(chosen, policy_model(self.evidence_tools, decision))

    def decide(
        self, evidence: Evidence, settings: Settings, model: Model | None = None
    ) -> Outcome[Decision]:
        """Run the agent once on `evidence` and apply the guardrails: always a valid decision.

        `model` overrides the setting (tests pass a scripted `FunctionModel`). Choosing the
        model is inside the same `try` as running it, so a model setting that cannot be built,
        a provider that fails, a timeout, usage limits or an output that stays invalid after
        retries all mean the policy decides, with the reason recorded.
        """
        limits = self.limits(settings)
        policy_decision = self.policy(evidence, limits)
        configured = model.model_name if model is not None else settings.agents.model
        decision, attribution = self._decide(
            evidence, limits, settings, model, configured, policy_decision
        )
        return Outcome[type(policy_decision)](
            decision=decision,
            agent_model=attribution.answered_by or POLICY,
            overridden_by=attribution.reasons(),
            attribution=attribution,
        )

    def _decide(
        self,
        evidence: Evidence,
        limits: Limits,
        settings: Settings,
        model: Model | None,
        configured: str,
        policy_decision: Decision,
    ) -> tuple[Decision, Attribution]:
        def guard(decision: Decision) -> tuple[Decision, str | None]:
            return self.guardrails(decision, evidence, limits)

        mode = settings.agents.mode or (POLICY if configured == POLICY else "llm")
        if mode == POLICY and configured != POLICY:
            decision, guarded = guard(policy_decision)
            return decision, Attribution(
                configured_model=configured,
                mode=mode,
                decided_by=POLICY,
                policy_action=self.action(policy_decision),
                overridden_by=[r for r in (guarded,) if r],
            )
        answer = self._ask_model(
            evidence, limits, settings, model, configured, mode, policy_decision
        )
        decision, answered, record, reasons = (
            answer.decision,
            answer.answered_by,
            answer.record,
            answer.reasons,
        )
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
        model_answered = answered is not None and (answered != POLICY or configured == POLICY)
        agreed = record["model_action"] == self.action(policy_decision) if model_answered else None
        shadow_action = None
        if mode == "shadow":
            shadow_action = self.action(decision)
            decision, policy_guarded = guard(policy_decision)
            reasons.extend(r for r in (policy_guarded,) if r)
            reasons.append("shadow mode: the policy's decision acts")
            decided_by = POLICY
        return decision, Attribution(
            configured_model=configured,
            mode=mode,
            answered_by=answered,
            decided_by=decided_by,
            policy_action=self.action(policy_decision),
            overridden_by=reasons,
            shadow_action=shadow_action,
            agreed=agreed,
            latency_seconds=answer.latency_seconds,
            trace_id=answer.trace_id,
            **record,
        )

    def _ask_model(
        self,
        evidence: Evidence,
        limits: Limits,
        settings: Settings,
        model: Model | None,
        configured: str,
        mode: str,
        policy_decision: Decision,
    ) -> ModelAnswer:
        """Run the agent on the model in force. Any failure, choosing the model included,
        and an answer that cites tools it did not call leave the policy's decision."""
        deps = self.deps(evidence, limits, settings)
        traced = settings.agents.tracing and configured != POLICY
        if traced:
            from agentic_mlops.tasks.registry import trace_agent_runs

            traced = trace_agent_runs(settings)
        answer = ModelAnswer(decision=policy_decision)
        trace: dict[str, str] = {}
        started = time.monotonic()
        try:
            run_model = self.run_model(settings, model, policy_decision)
            with decision_trace(self.agent.name or "", trace_tags(deps, mode), traced) as trace:
                result = self.agent.run_sync(
                    self.prompt,
                    deps=deps,
                    model=run_model,
                    toolsets=mounted_toolsets(run_model, settings),
                    capabilities=[PrefectDurability(models={"decision": run_model})],
                    model_settings=model_settings(settings),
                    usage_limits=UsageLimits(
                        request_limit=settings.agents.request_limit,
                        tool_calls_limit=settings.agents.tool_calls_limit,
                    ),
                    timeout=settings.agents.timeout_seconds,
                )
        except Exception as error:
            answer.reasons.append(f"model run failed ({type(error).__name__}): policy decided")
        else:
            answer.decision, answer.answered_by = result.output, result.response.model_name
            usage = result.usage
            called = {n for n in tool_returns(result.all_messages()) if n not in OUTPUT_TOOLS}
            answer.record = {
                "model_action": self.action(result.output),
                "model_decision": result.output.model_dump(mode="json"),
                "tools_called": sorted(called),
                "requests": usage.requests,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            }
            if answer.answered_by == POLICY and configured != POLICY:
                answer.reasons.append("the model's provider failed: the policy answered (fallback)")
            elif why := ungrounded(result.output, called, self.grounding):
                answer.reasons.append(why)
                answer.decision = policy_decision
        answer.latency_seconds = round(time.monotonic() - started, 3)
        answer.trace_id = trace.get("trace_id")
        return answer
