"""What code enforces on a tuning proposal: the search limits, the closed proposal, the policy
and the guardrails, as pure functions of the evidence.

`policy_proposal` is the deterministic rule (the default model and every fallback): narrow
around the best past configurations, widen when the drift says the old optimum moved.
`enforce_guardrails` bounds any proposal both ways: ceilings (a broken one is replaced by the
policy's), floors (too small a search is raised), and synthesis when settings force it. The
space validates itself (ranges inside each parameter's bounds).
"""

from __future__ import annotations

import math
import statistics

from pydantic import BaseModel, Field

from agentic_mlops.decisions import METRIC_LABEL, AdvisorEvidence, PastRun
from agentic_mlops.settings import TuneLimits
from agentic_mlops.tasks.models import PARAMETER_BOUNDS, TASK_FAMILIES
from agentic_mlops.tasks.tuning import DEFAULT_RANGES, ParameterRange, SearchSpace

NEAR_BEST = 0.02
"""A family whose best score (ROC AUC, accuracy or R²) is within this of the overall best
stays in a narrowed search."""
TOP_RUNS = 3
"""Best runs per family a narrowed range is drawn around."""
MIN_HISTORY = 2 * TOP_RUNS
"""Past runs needed before a search is narrowed around them."""
SEARCH_OVERHEAD_SECONDS = 30.0


class TuningProposal(BaseModel):
    """What the retraining should search, and whether to synthesise rows."""

    space: SearchSpace = Field(description="Families, parameter ranges, budget, algorithm.")
    synthesize: bool = Field(
        default=False, description="Add SMOTE-NC rows for the under-covered drifted segments."
    )
    segments: list[str] = Field(
        default_factory=list, description="Names of the segments to synthesise rows for."
    )
    rationale: str = Field(max_length=1_000, description="Two or three sentences of why.")


def _around(family: str, name: str, values: list[float], widen: float) -> ParameterRange:
    """A range around the values seen in good runs, `widen` times their spread, in bounds.

    A value logged outside the bounds (a training may use more rounds than a search) counts
    as the bound it passed.
    """
    bound = PARAMETER_BOUNDS[family][name]
    default = DEFAULT_RANGES[family][name]
    values = [min(max(value, bound.low), bound.high) for value in values]
    log = default.log and min(values) > 0
    scale = (lambda v: math.log(v)) if log else (lambda v: v)
    unscale = (lambda v: math.exp(v)) if log else (lambda v: v)
    low, high = scale(min(values)), scale(max(values))
    spread = max(high - low, 0.1 * (scale(default.high) - scale(default.low)))
    low, high = unscale(low - widen * spread), unscale(high + widen * spread)
    low, high = max(low, bound.low), min(high, bound.high)
    if bound.integer:
        low, high = math.floor(low), max(math.ceil(high), math.floor(low))
    return ParameterRange(low=low, high=high, log=log)


def policy_proposal(evidence: AdvisorEvidence, limits: TuneLimits) -> TuningProposal:
    """The deterministic rule, the default model and every fallback.

    - Only the families that can fit the model's task (no logistic regression for a
      regression model).
    - Fewer than `MIN_HISTORY` past runs: every family over the default ranges.
    - Past runs and a stable optimum: only families within `NEAR_BEST` of the best, each
      parameter narrowed to its best runs' span (plus half of it each side), half the trials.
    - Past runs and a moved optimum (the triage saw a performance drop or high severity):
      every family, ranges widened to two spans each side and at least the defaults.
    - The time budget follows the past trials' median duration, within the ceiling.
    - Synthesis when settings force it or the triage named drifted features with segments
      the training rows barely cover.
    """
    fitting = TASK_FAMILIES[evidence.task]
    runs = [r for r in evidence.past_runs if r.family in fitting and math.isfinite(r.score)]
    triage = evidence.triage
    moved = bool(triage and (triage.performance_dropped or triage.severity == "high"))
    families: dict[str, dict[str, ParameterRange]]
    if len(runs) < MIN_HISTORY:
        families = {family: {} for family in fitting}
        trials = limits.max_trials
        why = (
            f"{len(runs) or 'No'} past run(s) of this model, too few to narrow on: search every "
            "family over the default ranges."
        )
    else:
        best = max(r.score for r in runs)
        by_family: dict[str, list[PastRun]] = {}
        for run in sorted(runs, key=lambda r: -r.score):
            by_family.setdefault(run.family, []).append(run)
        kept = [f for f, rs in by_family.items() if rs[0].score >= best - NEAR_BEST]
        widen = 2.0 if moved else 0.5
        families = {}
        for family in fitting if moved else kept:
            top = by_family.get(family, [])[:TOP_RUNS]
            ranges = {}
            for name in PARAMETER_BOUNDS[family]:
                seen = [r.params[name] for r in top if math.isfinite(r.params.get(name, math.nan))]
                if seen:
                    ranges[name] = _around(family, name, seen, widen)
                    if moved:
                        default = DEFAULT_RANGES[family][name]
                        ranges[name] = ranges[name].model_copy(
                            update={
                                "low": min(ranges[name].low, default.low),
                                "high": max(ranges[name].high, default.high),
                            }
                        )
            families[family] = ranges
        trials = limits.max_trials if moved else max(4, limits.max_trials // 2)
        why = (
            f"The drift moved the optimum ({triage.severity} severity"
            f"{', performance dropped' if triage.performance_dropped else ''}): every family, "
            "ranges widened around the best past runs."
            if moved and triage
            else f"Narrowed to {', '.join(sorted(families))} around the best {TOP_RUNS} past "
            f"runs of each (best {METRIC_LABEL.get(evidence.metric, evidence.metric)} {best:.3f})."
        )
    durations = [r.seconds for r in runs if r.seconds and math.isfinite(r.seconds)]
    seconds = limits.time_budget_seconds
    if durations:
        per_trial = statistics.median(durations)
        seconds = SEARCH_OVERHEAD_SECONDS + 2 * per_trial * trials / max(limits.num_cpus, 1)
        seconds = max(seconds, min(limits.time_budget_seconds, 60.0))
    seconds = min(round(seconds, 1), limits.time_budget_ceiling_seconds)
    segments = [s.name for s in evidence.segments]
    synthesize = bool(segments) and (
        limits.synthesis_enabled or bool(triage and triage.drifted_features)
    )
    if synthesize:
        why += f" Synthesise rows for {', '.join(segments)}: recent data visits them far more."
    return TuningProposal(
        space=SearchSpace(
            families=families,
            max_trials=min(trials, limits.max_trials_ceiling),
            time_budget_seconds=seconds,
            algorithm=limits.search_algorithm,
        ),
        synthesize=synthesize,
        segments=segments if synthesize else [],
        rationale=why,
    )


def budget_problems(
    proposal: TuningProposal, evidence: AdvisorEvidence, limits: TuneLimits
) -> list[str]:
    """What a proposal breaks that its own validation cannot know: ceilings, segments, and
    families that cannot fit the model's task."""
    problems = []
    unfit = sorted(set(proposal.space.families) - set(TASK_FAMILIES[evidence.task]))
    if unfit:
        problems.append(f"{', '.join(unfit)} cannot fit a {evidence.task} model")
    if proposal.space.max_trials > limits.max_trials_ceiling:
        problems.append(
            f"{proposal.space.max_trials} trials is above the {limits.max_trials_ceiling} cap"
        )
    if proposal.space.time_budget_seconds > limits.time_budget_ceiling_seconds:
        problems.append(
            f"{proposal.space.time_budget_seconds:.0f} s is above the "
            f"{limits.time_budget_ceiling_seconds:.0f} s cap"
        )
    known = {s.name for s in evidence.segments}
    unknown = [name for name in proposal.segments if name not in known]
    if unknown:
        problems.append(f"unknown segments {', '.join(unknown)}")
    if proposal.synthesize and not proposal.segments:
        problems.append("synthesis asked for without segments")
    return problems


def enforce_guardrails(
    proposal: TuningProposal, evidence: AdvisorEvidence, limits: TuneLimits
) -> tuple[TuningProposal, str | None]:
    """Bound a proposal both ways; return the proposal that stands and why it changed.

    - a ceiling broken or unknown segments named: the policy's proposal instead;
    - floors: fewer trials than `min_trials` or a shorter budget than `min_seconds` are
      raised to them, so a search is never too small to find anything;
    - synthesis is switched on when settings force it and segments exist.
    """
    problems = budget_problems(proposal, evidence, limits)
    if problems:
        return (
            policy_proposal(evidence, limits),
            "; ".join(problems) + ": replaced by the policy's proposal",
        )
    reasons = []
    space = proposal.space
    if space.max_trials < limits.min_trials:
        reasons.append(f"{space.max_trials} trials is below the floor {limits.min_trials}: raised")
        space = space.model_copy(update={"max_trials": limits.min_trials})
    if space.time_budget_seconds < limits.min_time_budget_seconds:
        reasons.append(
            f"{space.time_budget_seconds:g} s is below the floor "
            f"{limits.min_time_budget_seconds:g} s: raised"
        )
        space = space.model_copy(update={"time_budget_seconds": limits.min_time_budget_seconds})
    proposal = proposal.model_copy(update={"space": space})
    if limits.synthesis_enabled and evidence.segments and not proposal.synthesize:
        proposal = proposal.model_copy(
            update={"synthesize": True, "segments": [s.name for s in evidence.segments]}
        )
        reasons.append("settings enable synthesis: switched on for every under-covered segment")
    return proposal, "; ".join(reasons) or None


def proposal_action(proposal: TuningProposal) -> str:
    """A proposal as the ledger names it."""
    return "search+synthesize" if proposal.synthesize else "search"
