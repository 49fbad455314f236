"""Guardrail fuzzing of the tuning advisor: whatever the model proposes, a search that can run.

tests/agents/test_tuning_advisor.py checks chosen invalid proposals. Here hypothesis writes
the model (`fuzzed_models`): free text, tool calls with arbitrary arguments, and proposals
from well-formed through ranges on, just past and far outside each parameter's bounds,
reversed, non-finite or on a log scale through zero, unknown families and parameters,
budgets past the ceilings, unknown segments, to junk; on generated past runs (some logged
outside the bounds a search may use, as a hand-made training can be), triage decisions,
segments and limits. The proposal that stands is always one a search can run: known
families, every range finite, ordered and within its parameter's bounds (holding an integer
where the parameter is one, above zero on a log scale), trials and seconds within the
ceilings, synthesis only for segments the evidence shows (always, when settings force it),
and Ray Tune builds its space and samples configurations within the bounds.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_ai import models

from agentic_mlops.agents.tuning_advisor import (
    EVIDENCE_TOOLS,
    advise,
)
from agentic_mlops.decisions import AdvisorEvidence, PastRun, SegmentCoverage, TriageContext
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.models import FAMILIES, PARAMETER_BOUNDS, Bound
from agentic_mlops.tasks.tuning import SearchSpace, param_space
from tests.reliability.fuzzed_models import (
    OUTPUT_TOOL,
    json_values,
    played_back,
    quick,
    scripts,
    thorough,
)

models.ALLOW_MODEL_REQUESTS = False
COLUMNS = ("tenure_months", "contract", "monthly_charges", "payment_method")
SEGMENTS = (
    "contract=month_to_month",
    "payment_method=mailed_check",
    "tenure_months<6",
    "monthly_charges>100",
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def range_ends(bound: Bound) -> st.SearchStrategy:
    """A number a model may give as one end of a range: inside the bounds, on them, just past
    them, zero, far off, non-finite, or not a number at all."""
    step = (bound.high - bound.low) / 100
    return (
        st.floats(bound.low, bound.high)
        | st.sampled_from([bound.low, bound.high, bound.low - step, bound.high + step, 0, -1])
        | st.integers(-10, 2_000)
        | non_finite
        | st.text(max_size=4)
    )


def inside(bound: Bound) -> st.SearchStrategy:
    """A range a model that read the bounds would write: ordered, within them, their scale."""
    ends = st.floats(bound.low, bound.high)
    return st.tuples(ends, ends).map(
        lambda pair: {"low": min(pair), "high": max(pair), "log": bound.log}
    )


def anywhere(bound: Bound) -> st.SearchStrategy:
    """A range with ends from `range_ends`, in either order, on either scale."""
    return st.fixed_dictionaries(
        {"low": range_ends(bound), "high": range_ends(bound)}, optional={"log": st.booleans()}
    )


FOREIGN = {"max_depth": Bound(1, 40, integer=True), "n_neighbors": Bound(1, 50)}
"""Parameters a family may not have, named by a model all the same."""


def search_spaces(
    spans, trials: st.SearchStrategy, seconds: st.SearchStrategy, foreign: bool
) -> st.SearchStrategy:
    """Some known families (and, with `foreign`, an unknown one and parameters a family does
    not have), each with ranges drawn by `spans`, a budget and an algorithm."""
    ranges = {}
    for family, own in PARAMETER_BOUNDS.items():
        bounds = {**FOREIGN, **own} if foreign else own
        ranges[family] = st.fixed_dictionaries(
            {}, optional={name: spans(bound) for name, bound in bounds.items()}
        )
    families = st.fixed_dictionaries({}, optional=ranges).filter(bool)
    if foreign:
        ranges["k_nearest_neighbours"] = st.dictionaries(st.text(max_size=8), json_values)
        families = st.fixed_dictionaries({}, optional=ranges)
    return st.fixed_dictionaries(
        {
            "families": families,
            "max_trials": trials,
            "time_budget_seconds": seconds,
        },
        optional={"algorithm": st.sampled_from(["random", "optuna"])},
    )


def shaped_proposals(space: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"space": space, "rationale": st.text(max_size=200)},
        optional={
            "synthesize": st.booleans(),
            "segments": st.lists(st.sampled_from(SEGMENTS), max_size=3, unique=True),
        },
    )


plausible_proposals = shaped_proposals(
    search_spaces(inside, st.integers(1, 24), st.floats(1, 600), foreign=False)
)
"""Proposals as asked for, many of them valid: the ceilings, segments and synthesis
guardrails decide, and a valid proposal that stands must be runnable too."""
edge_proposals = shaped_proposals(
    search_spaces(
        anywhere,
        st.integers(-2, 120) | non_finite,
        st.floats(-10, 4_000) | non_finite,
        foreign=True,
    )
)
"""Shaped as asked, with ranges, budgets, families and parameters on and past every edge."""
wild_proposals = st.fixed_dictionaries(
    {"space": json_values},
    optional={
        "synthesize": json_values,
        "segments": st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=12), max_size=4),
        "rationale": st.text(max_size=1_200) | json_values,
    },
) | st.dictionaries(st.text(max_size=10), json_values, max_size=5)
proposals = st.one_of(plausible_proposals, plausible_proposals, edge_proposals, wild_proposals)
"""Half of them plausible."""
advisor_scripts = scripts(EVIDENCE_TOOLS, proposals) | st.lists(
    st.tuples(st.just("tool"), st.just(OUTPUT_TOOL), proposals).map(lambda part: [part]),
    min_size=1,
    max_size=3,
)
"""Either any script, or a model that proposes at once and, told what is wrong, tries again:
a fair share of runs then end in a proposal the guardrails judge on its merits, not on its
shape or on the retries it used up."""


def logged_params(family: str) -> st.SearchStrategy:
    """Hyperparameters as MLflow holds them: a training run may have used values outside the
    bounds a search may use (training allows 5,000 boosting rounds, a search 1,000)."""
    return st.fixed_dictionaries(
        {},
        optional={
            name: st.floats(bound.low, bound.high) | st.floats(0, 5 * bound.high) | non_finite
            for name, bound in PARAMETER_BOUNDS[family].items()
        },
    )


past_run = st.sampled_from(FAMILIES).flatmap(
    lambda family: st.builds(
        PastRun,
        family=st.just(family),
        params=logged_params(family),
        score=st.floats(0.4, 1) | st.just(math.nan),
        seconds=st.none() | st.floats(0, 600) | non_finite,
        kind=st.sampled_from(["training", "tuning-trial"]),
    )
)
advisor_evidence = st.builds(
    AdvisorEvidence,
    model_name=st.just("churn"),
    past_runs=st.lists(past_run, max_size=14),
    triage=st.none()
    | st.builds(
        TriageContext,
        action=st.just("retrain"),
        severity=st.sampled_from([None, "low", "medium", "high", "critical"]),
        drifted_features=st.lists(st.sampled_from(COLUMNS), unique=True),
        performance_dropped=st.booleans(),
    ),
    segments=st.lists(
        st.builds(
            SegmentCoverage,
            name=st.sampled_from(SEGMENTS),
            training_share=st.floats(0, 0.1),
            recent_share=st.floats(0.1, 1),
        ),
        max_size=3,
        unique_by=lambda segment: segment.name,
    ),
)
advisor_limits = st.fixed_dictionaries(
    {
        "tune_max_trials": st.integers(1, 100),
        "tune_max_trials_ceiling": st.integers(1, 100),
        "tune_time_budget_seconds": st.floats(1, 3_600),
        "tune_time_budget_ceiling_seconds": st.floats(1, 3_600),
        "tune_num_cpus": st.integers(1, 8),
        "tune_search_algorithm": st.sampled_from(["random", "optuna"]),
        "synthesis_enabled": st.booleans(),
    }
)


def assert_runnable(space: SearchSpace) -> None:
    """Ray Tune builds the space, and what it samples is a known family with every
    parameter finite and within its bounds."""
    config = {
        key: domain.sample() if hasattr(domain, "sample") else domain
        for key, domain in param_space(space).items()
    }
    assert config["family"] in space.families
    for key, value in config.items():
        if key == "family":
            continue
        family, name = key.split(".")
        bound = PARAMETER_BOUNDS[family][name]
        assert math.isfinite(value) and bound.low <= value <= bound.high, (key, value)


def check_advice(evidence: AdvisorEvidence, script, limits: dict) -> None:
    chosen = Settings(agent_tracing=False, **limits)
    outcome = advise(evidence, chosen, model=played_back(script))
    proposal = outcome.decision
    space = proposal.space
    assert space.families and set(space.families) <= set(FAMILIES)
    for family, ranges in space.families.items():
        for name, span in ranges.items():
            bound = PARAMETER_BOUNDS[family][name]
            assert math.isfinite(span.low) and math.isfinite(span.high), (family, name, span)
            assert bound.low <= span.low <= span.high <= bound.high, (family, name, span)
            assert span.low > 0 or not span.log
            assert math.floor(span.high) >= span.low or not bound.integer
    floors = chosen.tune
    assert floors.min_trials <= space.max_trials <= chosen.tune.max_trials_ceiling
    assert floors.min_time_budget_seconds <= space.time_budget_seconds
    assert space.time_budget_seconds <= chosen.tune.time_budget_ceiling_seconds
    assert set(proposal.segments) <= {segment.name for segment in evidence.segments}
    assert proposal.segments or not proposal.synthesize
    if chosen.tune.synthesis_enabled and evidence.segments:
        assert proposal.synthesize
    assert SearchSpace.model_validate(space.model_dump()) == space
    assert_runnable(space)


@quick
@given(evidence=advisor_evidence, script=advisor_scripts, limits=advisor_limits)
def test_no_model_output_gets_an_unrunnable_search_past_the_advisor(evidence, script, limits):
    check_advice(evidence, script, limits)


@pytest.mark.slow
@thorough
@given(evidence=advisor_evidence, script=advisor_scripts, limits=advisor_limits)
def test_no_model_output_gets_an_unrunnable_search_past_the_advisor_thoroughly(
    evidence, script, limits
):
    check_advice(evidence, script, limits)
