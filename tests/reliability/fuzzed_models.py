"""Fake LLMs that play back hypothesis-generated scripts, shared by the guardrail fuzzers.

A script is a model's responses in order: free text, calls to real, unknown and forbidden
tools with arbitrary arguments, and calls to the agent's output tool with whatever the
fuzzer generated. `played_back` turns one into a `FunctionModel`; each agent's fuzzer brings
its own evidence and output strategies.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

QUICK, THOROUGH, EXHAUSTIVE = 25, 300, 3_000
OUTPUT_TOOL = "<the agent's output tool>"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def scripts(tools: tuple[str, ...], output: st.SearchStrategy) -> st.SearchStrategy:
    """A model's responses in order; the last one repeats for as long as it is asked."""
    part = st.one_of(
        st.tuples(st.just("text"), st.text(max_size=200)),
        st.tuples(
            st.just("tool"),
            st.sampled_from((*tools, "promote_now", "delete_model", "final_result")),
            st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        ),
        st.tuples(st.just("tool"), st.just(OUTPUT_TOOL), output),
        st.tuples(st.just("tool"), st.just(OUTPUT_TOOL), st.text(max_size=40)),
    )
    return st.lists(st.lists(part, min_size=1, max_size=4), min_size=1, max_size=6)


def grounded_scripts(tools: tuple[str, ...], decision: st.SearchStrategy) -> st.SearchStrategy:
    """A model that reads the evidence (all of it, or some) and answers with well-formed
    decisions, a new one each time it is told to try again. A script drawn from `scripts`
    almost never gets that far (none of 300 did), so without these the guardrails would mostly
    judge the policy's fallback, not a model's own decision."""
    everything = st.just(list(tools))
    some = st.lists(st.sampled_from(tools), min_size=1, unique=True)
    answers = st.lists(decision, min_size=1, max_size=3)
    return st.tuples(everything | some, answers).map(
        lambda drawn: [
            [("tool", name, {}) for name in drawn[0]],
            *([("tool", OUTPUT_TOOL, answer)] for answer in drawn[1]),
        ]
    )


def played_back(script: list[list[tuple]]) -> FunctionModel:
    """A fake LLM that answers with the script's responses, one per request."""
    requests = iter(script)

    def respond(messages, info: AgentInfo) -> ModelResponse:
        parts = []
        for kind, *content in next(requests, script[-1]):
            if kind == "text":
                parts.append(TextPart(content[0]))
                continue
            name, args = content
            name = info.output_tools[0].name if name == OUTPUT_TOOL else name
            parts.append(ToolCallPart(name, args if isinstance(args, str) else json.dumps(args)))
        return ModelResponse(parts=parts)

    return FunctionModel(respond, model_name="fuzzed-llm")


quick = settings(
    max_examples=QUICK,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
thorough = settings(quick, max_examples=THOROUGH)
"""Whole agent runs, about a tenth of a second each: derandomised, so a run in CI is repeatable."""
exhaustive = settings(quick, max_examples=EXHAUSTIVE, derandomize=False)
"""A pure guardrail function, a millisecond an example: many examples, new ones each run."""
