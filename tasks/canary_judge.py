"""The canary judge: is a new model version at least as good as the one it may replace?

A canary rollout sends part of the traffic to the new version and the rest to the baseline.
Per request each variant yields a latency, an error flag and, once labels arrive, correctness
or a loss; these come as plain arrays of per-observation values (per-interval values from
Prometheus are treated the same). Two judges read them:

- `judge`, a fixed analysis in the style of Kayenta: each metric is classified "pass", "high",
  "low" or "nodata", and the score is the weight of the passing metrics out of the total.
  Continuous metrics are compared with a two-sided Mann-Whitney U test and the Hodges-Lehmann
  shift, binary ones with a two-proportion z-test and Newcombe's interval. A metric fails only
  when its change is significant at `alpha` and at least its `tolerance` in the harmful
  direction, so an improvement, or a change too small to matter, never fails a canary.
- `sequential_judge`, which may be checked as often as one likes while traffic flows: a
  normal-mixture always-valid confidence sequence per metric (the mSPRT of Johari, Pekelis and
  Walsh, "Always valid inference", 2017; Howard et al., "Time-uniform, nonparametric,
  nonasymptotic confidence sequences", 2021). It promotes once every metric is shown
  non-inferior within its tolerance and rolls back once one is shown harmful. However often it
  is checked, a canary truly worse by at least the tolerance on some metric is promoted with
  probability at most `alpha` (up to the normal approximation of the means).

Both fail closed: a metric missing, or with fewer than `min_samples` usable values in either
variant, is "nodata", which never passes and never promotes.

`fixed_horizon_noninferiority` and `noninferiority_sample_size` give the classical alternative
with the same guarantee: one look at a sample size planned to promote a canary as good as the
baseline, promoting only if every metric's one-sided 1 - alpha upper bound of its harm is
below its tolerance. `benchmarks/canary_judge.py` compares it with the sequential judge.
`fixed_horizon_judge` runs `judge` at a planned size instead; it promotes unless harm is
significant, so it does not bound false promotion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from agentic_mlops.decisions import Classification, JudgeResult, MetricVerdict

Direction = Literal["increase_is_bad", "decrease_is_bad"]
Kind = Literal["continuous", "binary"]
SequentialOutcome = Literal["continue", "promote", "rollback"]
Boundary = Literal["harm", "non_inferiority", "none", "nodata"]

TUKEY_FENCE = 3.0
"""Outliers lie beyond Q1 - 3 IQR or Q3 + 3 IQR (Tukey's "far out" fences): gross spikes go, a
heavy but genuine tail mostly stays (0.7% of a lognormal with sigma 0.5 lies beyond)."""
MAX_OUTLIER_SHARE = 0.05
"""Fences that would drop more of a variant than this drop nothing: so many far-out values are
part of its distribution (a regression in the tail, say), not spikes."""
MAX_PAIRS = 1_000_000
"""Above this many canary-baseline pairs, Hodges-Lehmann reads a seeded random subsample."""
PAIR_SEED = 0
VARIANCE_FLOOR = 1e-12
"""The sequential judge's variance is at least this share of its mixture variance."""

Values = dict[str, np.ndarray]


class MetricSpec(BaseModel):
    """One metric the judge compares, and what counts as harm on it."""

    name: str
    kind: Kind = Field(description="binary: values are 0/1 (errors, correct); else continuous.")
    direction: Direction = Field(
        description="latency, errors, loss: increase_is_bad; accuracy: decrease_is_bad."
    )
    critical: bool = Field(
        default=False, description="A critical metric that does not pass fails the analysis."
    )
    weight: float = Field(default=1.0, gt=0)
    tolerance: float = Field(
        gt=0,
        description="Smallest harmful change that matters, in the metric's units (0.01 for an "
        "error rate, 5.0 for latency in ms); also the sequential non-inferiority margin.",
    )
    min_samples: int = Field(
        default=50, ge=2, description="Usable values needed per variant; fewer is nodata."
    )
    remove_outliers: bool = Field(
        default=True, description="Drop values beyond Tukey's fences (continuous metrics only)."
    )


class SequentialMetric(BaseModel):
    """One metric at one look of the sequential judge, oriented so that positive is harm."""

    name: str
    canary_n: int
    baseline_n: int
    harm: float | None = Field(
        description="Canary mean minus baseline mean, sign flipped for decrease_is_bad."
    )
    lower: float | None = Field(description="Lower bound of the harm's confidence sequence.")
    upper: float | None = Field(description="Upper bound of the harm's confidence sequence.")
    crossed: Boundary = Field(
        description="harm: shown worse (rollback); non_inferiority: shown within tolerance; "
        "none: not yet; nodata: missing or too few values."
    )


class SequentialResult(BaseModel):
    """One look of the sequential judge."""

    outcome: SequentialOutcome
    metrics: dict[str, SequentialMetric]
    reason: str


class FixedHorizonResult(BaseModel):
    """The one-look decision at a planned sample size."""

    outcome: SequentialOutcome = Field(description="continue until `n` values are in.")
    n: int = Field(description="The planned values per variant.")
    analysis: JudgeResult | None = None


class NonInferiorityMetric(BaseModel):
    """One metric of the fixed-horizon non-inferiority test, oriented so that positive is harm."""

    name: str
    canary_n: int
    baseline_n: int
    harm: float | None = Field(
        description="Canary minus baseline (mean or proportion), sign flipped for decrease_is_bad."
    )
    upper: float | None = Field(description="One-sided upper confidence bound of the harm.")
    non_inferior: bool = Field(description="upper is below the tolerance; never for nodata.")


class NonInferiorityResult(BaseModel):
    """The one-look non-inferiority decision at a planned sample size."""

    outcome: SequentialOutcome = Field(
        description="continue until `n` values are in; then promote or rollback, never continue."
    )
    n: int = Field(description="The planned values per variant.")
    metrics: dict[str, NonInferiorityMetric] = Field(default_factory=dict)
    reason: str


@dataclass(frozen=True)
class CleanSample:
    """One variant's values of one metric, ready to test."""

    values: np.ndarray
    dropped: int


def clean_sample(values: np.ndarray, spec: MetricSpec) -> CleanSample:
    """Drop values that are not finite and, for continuous metrics, values beyond Tukey's fences.

    The fences (`TUKEY_FENCE` IQRs beyond the quartiles) are computed per variant, so a canary's
    spikes cannot move the baseline's fences, and drop nothing when they would drop more than
    `MAX_OUTLIER_SHARE` of the variant.

    Args:
        values: the variant's per-observation (or per-interval) values.
        spec: the metric; its kind and `remove_outliers` say whether fences apply.

    Returns:
        The remaining values as floats, and how many were dropped.
    """
    raw = np.asarray(values, dtype=float).ravel()
    finite = raw[np.isfinite(raw)]
    if spec.kind == "continuous" and spec.remove_outliers and finite.size >= 4:
        q1, q3 = np.percentile(finite, [25, 75])
        spread = TUKEY_FENCE * (q3 - q1)
        inside = (finite >= q1 - spread) & (finite <= q3 + spread)
        if finite.size - inside.sum() <= MAX_OUTLIER_SHARE * finite.size:
            finite = finite[inside]
    return CleanSample(finite, raw.size - finite.size)


def _prepare(
    spec: MetricSpec, canary: Values, baseline: Values
) -> tuple[CleanSample | None, CleanSample | None, str | None]:
    """Both variants' cleaned values of `spec`, and why the metric is nodata (None if usable)."""
    sides = {"canary": canary.get(spec.name), "baseline": baseline.get(spec.name)}
    missing = [side for side, values in sides.items() if values is None]
    if missing:
        return None, None, f"{spec.name} is missing from the {' and '.join(missing)} data."
    canary_sample, baseline_sample = (clean_sample(v, spec) for v in sides.values())
    if spec.kind == "binary" and any(
        np.any((s.values != 0) & (s.values != 1)) for s in (canary_sample, baseline_sample)
    ):
        return canary_sample, baseline_sample, f"{spec.name} is binary but has values not 0 or 1."
    counts = canary_sample.values.size, baseline_sample.values.size
    if min(counts) < spec.min_samples:
        return (
            canary_sample,
            baseline_sample,
            f"{spec.name} has {counts[0]} canary and {counts[1]} baseline usable values; "
            f"{spec.min_samples} needed in each.",
        )
    return canary_sample, baseline_sample, None


def hodges_lehmann(
    canary: np.ndarray, baseline: np.ndarray, alpha: float = 0.05
) -> tuple[float, float, float]:
    """The Hodges-Lehmann shift of canary over baseline, with its distribution-free interval.

    The shift is the median of all pairwise differences canary - baseline. The interval is
    Moses' (Lehmann, "Nonparametrics", 1975): the k-th smallest and k-th largest differences,
    with k = nm/2 - z * sqrt(nm(n + m + 1)/12) from the normal approximation of the Mann-Whitney
    U statistic (no tie correction). Above `MAX_PAIRS` pairs, all three are read at the same
    ranks from a seeded random subsample of `MAX_PAIRS` pairs, which adds a little noise (for
    200,000 values a side, about a fifth of the interval's half-width) and keeps the cost
    fixed.

    Args:
        canary: the canary's values.
        baseline: the baseline's values.
        alpha: one minus the interval's coverage.

    Returns:
        The shift, the interval's lower end and its upper end.
    """
    n, m = canary.size, baseline.size
    pairs = n * m
    if pairs <= MAX_PAIRS:
        differences = np.subtract.outer(canary, baseline).ravel()
    else:
        rng = np.random.default_rng(PAIR_SEED)
        differences = (
            canary[rng.integers(0, n, MAX_PAIRS)] - baseline[rng.integers(0, m, MAX_PAIRS)]
        )
    z = stats.norm.ppf(1 - alpha / 2)
    k = max(1, math.floor(pairs / 2 - z * math.sqrt(pairs * (n + m + 1) / 12)))
    rank = (k - 1) / (pairs - 1) if pairs > 1 else 0.0
    low, shift, high = np.quantile(differences, [rank, 0.5, 1 - rank])
    return float(shift), float(low), float(high)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for a proportion of `successes` out of `n`."""
    z = stats.norm.ppf(1 - alpha / 2)
    centre = (successes + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(successes * (n - successes) / n + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_proportions(
    canary: np.ndarray, baseline: np.ndarray, alpha: float = 0.05
) -> tuple[float, float, float, float]:
    """Difference in proportions of two 0/1 samples, Newcombe's interval and a z-test p-value.

    Newcombe's hybrid score interval (his method 10, 1998) combines the two Wilson intervals;
    unlike the Wald interval it behaves at rates near 0, such as error rates. The p-value is
    the pooled two-proportion z-test; with no variation at all it is 1.

    Args:
        canary: the canary's 0/1 values.
        baseline: the baseline's 0/1 values.
        alpha: one minus the interval's coverage.

    Returns:
        Canary minus baseline proportion, the interval's ends, and the two-sided p-value.
    """
    n_c, n_b = canary.size, baseline.size
    x_c, x_b = int(canary.sum()), int(baseline.sum())
    p_c, p_b = x_c / n_c, x_b / n_b
    low_c, high_c = wilson_interval(x_c, n_c, alpha)
    low_b, high_b = wilson_interval(x_b, n_b, alpha)
    difference = p_c - p_b
    low = difference - math.hypot(p_c - low_c, high_b - p_b)
    high = difference + math.hypot(high_c - p_c, p_b - low_b)
    pooled = (x_c + x_b) / (n_c + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
    p_value = 2 * stats.norm.sf(abs(difference) / se) if se > 0 else 1.0
    return difference, low, high, float(p_value)


def _classify(
    spec: MetricSpec, effect: float, low: float, high: float, p_value: float, alpha: float
) -> tuple[Classification, str]:
    """Kayenta's classification of one tested metric, and a sentence saying why."""
    significant = p_value < alpha and (low > 0 or high < 0)
    harm = effect if spec.direction == "increase_is_bad" else -effect
    size = f"{effect:+.4g} (interval {low:.4g} to {high:.4g}, p = {p_value:.3g})"
    if not significant:
        return "pass", f"{spec.name}: no significant change, {size}."
    if harm >= spec.tolerance:
        label: Classification = "high" if effect > 0 else "low"
        return label, f"{spec.name}: worse by {size}, beyond the tolerance {spec.tolerance:g}."
    if harm < 0:
        return "pass", f"{spec.name}: better by {size}."
    return "pass", f"{spec.name}: worse by {size}, within the tolerance {spec.tolerance:g}."


def judge_metric(
    spec: MetricSpec, canary: Values, baseline: Values, alpha: float = 0.05
) -> MetricVerdict:
    """The fixed analysis of one metric: its test, effect, interval and classification.

    Args:
        spec: the metric.
        canary: per-metric values of the canary.
        baseline: per-metric values of the baseline.
        alpha: significance level of the test and one minus the interval's coverage.

    Returns:
        The metric's verdict; "nodata" when it is missing or has too few usable values.
    """
    canary_sample, baseline_sample, nodata = _prepare(spec, canary, baseline)
    counts = {
        "name": spec.name,
        "critical": spec.critical,
        "weight": spec.weight,
        "canary_n": 0 if canary_sample is None else canary_sample.values.size,
        "baseline_n": 0 if baseline_sample is None else baseline_sample.values.size,
        "canary_dropped": 0 if canary_sample is None else canary_sample.dropped,
        "baseline_dropped": 0 if baseline_sample is None else baseline_sample.dropped,
    }
    if nodata is not None:
        return MetricVerdict(
            **counts,
            classification="nodata",
            canary_center=None,
            baseline_center=None,
            effect=None,
            ci_low=None,
            ci_high=None,
            p_value=None,
            reason=nodata,
        )
    x, y = canary_sample.values, baseline_sample.values
    if spec.kind == "binary":
        centers = float(x.mean()), float(y.mean())
        effect, low, high, p_value = compare_proportions(x, y, alpha)
    else:
        centers = float(np.median(x)), float(np.median(y))
        effect, low, high = hodges_lehmann(x, y, alpha)
        p_value = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
        if not math.isfinite(p_value):
            p_value = 1.0
    classification, reason = _classify(spec, effect, low, high, p_value, alpha)
    return MetricVerdict(
        **counts,
        classification=classification,
        canary_center=centers[0],
        baseline_center=centers[1],
        effect=effect,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        reason=reason,
    )


def _names(verdicts: list[MetricVerdict]) -> str:
    return ", ".join(f"{v.name} ({v.classification})" for v in verdicts)


def _check_specs(specs: list[MetricSpec]) -> None:
    names = [spec.name for spec in specs]
    if not names:
        raise ValueError("the canary judge needs at least one metric")
    if len(set(names)) != len(names):
        raise ValueError(f"metric names repeat: {names}")


def judge(
    canary: Values,
    baseline: Values,
    specs: list[MetricSpec],
    pass_threshold: float = 95.0,
    marginal_threshold: float = 75.0,
    alpha: float = 0.05,
) -> JudgeResult:
    """Kayenta-style fixed analysis: classify every metric, score, and decide.

    The score is 100 times the weight of the "pass" metrics over the total weight. The verdict
    is "fail" when a critical metric does not pass (nodata included) or the score is below
    `marginal_threshold`, "pass" when the score reaches `pass_threshold`, and "marginal" in
    between. Each metric is tested at `alpha`, without correction for their number, as Kayenta
    does; tolerances, not p-values, keep many metrics from failing on trivial changes.

    Args:
        canary: per-metric arrays of the canary's values.
        baseline: per-metric arrays of the baseline's values.
        specs: the metrics to judge; names must be unique.
        pass_threshold: the lowest score that passes.
        marginal_threshold: the lowest score that is not a fail.
        alpha: significance level per metric.

    Returns:
        The verdict, the score, every metric's verdict and the critical metrics that failed.

    Raises:
        ValueError: no metrics, repeated names, or thresholds out of order.
    """
    _check_specs(specs)
    if not 0 <= marginal_threshold <= pass_threshold <= 100:
        raise ValueError("need 0 <= marginal_threshold <= pass_threshold <= 100")
    verdicts = [judge_metric(spec, canary, baseline, alpha) for spec in specs]
    passing = sum(v.weight for v in verdicts if v.classification == "pass")
    score = 100 * passing / sum(v.weight for v in verdicts)
    failing = [v for v in verdicts if v.classification != "pass"]
    critical = [v for v in failing if v.critical]
    if critical:
        verdict, reason = "fail", f"critical metrics did not pass: {_names(critical)}."
    elif score < marginal_threshold:
        verdict = "fail"
        reason = f"score {score:.1f} is below {marginal_threshold:g}; failing: {_names(failing)}."
    elif score >= pass_threshold:
        verdict = "pass"
        reason = f"score {score:.1f} reaches {pass_threshold:g}" + (
            f"; failing: {_names(failing)}." if failing else "; every metric passed."
        )
    else:
        verdict = "marginal"
        reason = (
            f"score {score:.1f} is between {marginal_threshold:g} and {pass_threshold:g}; "
            f"failing: {_names(failing)}."
        )
    return JudgeResult(
        verdict=verdict,
        score=round(score, 6),
        metrics=verdicts,
        critical_failures=[v.name for v in critical],
        reason=reason,
    )


def mixture_half_width(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the normal-mixture always-valid confidence sequence.

    For an estimate that is normal around the true effect with variance `variance`, the mixture
    over effects ~ N(0, tau2) of likelihood ratios is a martingale, so by Ville's inequality
    the interval estimate +- w covers the true effect at every look at once with probability at
    least 1 - alpha, where w = sqrt(V (V + tau2) / tau2 * (log((V + tau2) / V) + 2 log(1/alpha))).

    Args:
        variance: the estimate's variance V at this look.
        tau2: the mixture variance; the sequence is tightest for effects of about sqrt(tau2).
        alpha: one minus the coverage over all looks.

    Returns:
        The half-width w.
    """
    total = variance + tau2
    return math.sqrt(
        variance * total / tau2 * (math.log(total / variance) + 2 * math.log(1 / alpha))
    )


def _binary_variance(values: np.ndarray) -> float:
    """Variance p(1 - p) of 0/1 values, with p shrunk to (x + 1/2) / (n + 1) so it is never 0."""
    shrunk = (values.sum() + 0.5) / (values.size + 1)
    return float(shrunk * (1 - shrunk))


def sequential_metric(
    spec: MetricSpec, canary: Values, baseline: Values, alpha: float = 0.05
) -> SequentialMetric:
    """One metric's always-valid confidence sequence for its harm, at this look.

    Harm is the difference in means (after the same cleaning as the fixed analysis, so for
    continuous metrics with `remove_outliers` the means are of the values within the fences),
    signed so that positive is worse. Its variance is var_c/n_c + var_b/n_b, with p(1 - p) of
    a slightly shrunk p for binary metrics. The mixture variance is tolerance**2: the sequence
    is then tightest for effects about the tolerance, the size it has to tell from 0 (to roll
    back) and from the tolerance (to promote).

    The metric crosses "harm" when the sequence lies above 0 and the estimate is more than half
    the tolerance, so a harm too small to matter ends in promotion rather than rollback; it
    crosses "non_inferiority" when the sequence lies below the tolerance. Harm is checked first.

    Args:
        spec: the metric.
        canary: per-metric values of the canary so far.
        baseline: per-metric values of the baseline so far.
        alpha: one minus the sequence's coverage over all looks.

    Returns:
        The estimate, the sequence's bounds, the counts, and which boundary was crossed.
    """
    canary_sample, baseline_sample, nodata = _prepare(spec, canary, baseline)
    counts = {
        "canary_n": 0 if canary_sample is None else canary_sample.values.size,
        "baseline_n": 0 if baseline_sample is None else baseline_sample.values.size,
    }
    if nodata is not None:
        return SequentialMetric(
            name=spec.name, **counts, harm=None, lower=None, upper=None, crossed="nodata"
        )
    x, y = canary_sample.values, baseline_sample.values
    if spec.kind == "binary":
        variance = _binary_variance(x) / x.size + _binary_variance(y) / y.size
    else:
        variance = float(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    tau2 = spec.tolerance**2
    variance = max(variance, VARIANCE_FLOOR * tau2)
    sign = 1.0 if spec.direction == "increase_is_bad" else -1.0
    harm = sign * float(x.mean() - y.mean())
    half_width = mixture_half_width(variance, tau2, alpha)
    lower, upper = harm - half_width, harm + half_width
    crossed: Boundary = "none"
    if lower > 0 and harm > spec.tolerance / 2:
        crossed = "harm"
    elif upper < spec.tolerance:
        crossed = "non_inferiority"
    return SequentialMetric(
        name=spec.name, **counts, harm=harm, lower=lower, upper=upper, crossed=crossed
    )


def sequential_judge(
    canary: Values, baseline: Values, specs: list[MetricSpec], alpha: float = 0.05
) -> SequentialResult:
    """One look of the sequential judge: promote, roll back, or wait for more traffic.

    Every metric is a gate here, critical or not (weights play no part): "rollback" as soon as
    any metric crosses its harm boundary, "promote" only when every metric has crossed its
    non-inferiority boundary, "continue" otherwise, including while any metric is missing or
    short of `min_samples`.

    Guarantees, at any number of looks and any stopping rule: if some metric is truly worse by
    at least its tolerance, its sequence lies wholly below the tolerance at some look with
    probability at most `alpha`, so the canary is promoted with probability at most `alpha`.
    A metric that is truly no worse causes a rollback with probability at most `alpha`, so with
    k metrics none worse a rollback has probability at most k * alpha. Both rest on the normal
    approximation of the means, which `min_samples` guards.

    Args:
        canary: per-metric arrays of the canary's values so far.
        baseline: per-metric arrays of the baseline's values so far.
        specs: the metrics; names must be unique.
        alpha: the bound on false promotion, and per metric on false rollback.

    Returns:
        The outcome, each metric's confidence sequence, and why.

    Raises:
        ValueError: no metrics, or repeated names.
    """
    _check_specs(specs)
    metrics = {spec.name: sequential_metric(spec, canary, baseline, alpha) for spec in specs}
    harmful = [m for m in metrics.values() if m.crossed == "harm"]
    waiting = [m for m in metrics.values() if m.crossed != "non_inferiority"]
    if harmful:
        outcome: SequentialOutcome = "rollback"
        reason = "shown worse: " + ", ".join(
            f"{m.name} (harm {m.harm:.4g}, at least {m.lower:.4g})" for m in harmful
        )
    elif not waiting:
        outcome = "promote"
        reason = "every metric shown within its tolerance"
    else:
        outcome = "continue"
        reason = "not yet decided: " + ", ".join(
            f"{m.name} ({'too few values' if m.crossed == 'nodata' else 'undecided'})"
            for m in waiting
        )
    return SequentialResult(outcome=outcome, metrics=metrics, reason=reason + ".")


def replay_sequential(
    canary: Values,
    baseline: Values,
    specs: list[MetricSpec],
    step: int = 50,
    alpha: float = 0.05,
) -> tuple[SequentialResult, int]:
    """Replay recorded traffic through the sequential judge, as if it had looked every `step`.

    Looks at the first `step`, 2 * `step`, ... values of every metric in both variants, and at
    all of them last; stops at the first promote or rollback. For backtesting a rollout and for
    simulations.

    Args:
        canary: per-metric arrays of the canary's values, in arrival order.
        baseline: per-metric arrays of the baseline's values, in arrival order.
        specs: the metrics.
        step: values per variant between looks.
        alpha: as in `sequential_judge`.

    Returns:
        The first decisive look (or the last look, "continue", if none) and the values per
        variant it saw.
    """
    longest = max((len(v) for values in (canary, baseline) for v in values.values()), default=0)
    for n in [*range(step, longest, step), longest]:
        result = sequential_judge(
            {name: values[:n] for name, values in canary.items()},
            {name: values[:n] for name, values in baseline.items()},
            specs,
            alpha,
        )
        if result.outcome != "continue":
            break
    return result, n


def fixed_horizon_judge(
    canary: Values,
    baseline: Values,
    specs: list[MetricSpec],
    n: int,
    alpha: float = 0.05,
    pass_threshold: float = 95.0,
    marginal_threshold: float = 75.0,
) -> FixedHorizonResult:
    """The classical alternative: one fixed analysis once `n` values per variant are in.

    Until every metric present has `n` values in both variants the outcome is "continue"; then
    `judge` runs on the first `n` values of each, and only a "pass" promotes: "marginal" and
    "fail" roll back, since a canary in doubt is not promoted. This promotes unless a harmful
    change beyond tolerance is significant, so unlike `sequential_judge` it does not bound the
    chance of promoting a canary worse by about the tolerance; `fixed_horizon_noninferiority`
    is the fixed-horizon test that does.

    Args:
        canary: per-metric arrays of the canary's values so far, in arrival order.
        baseline: per-metric arrays of the baseline's values so far, in arrival order.
        specs: the metrics.
        n: the planned values per variant, e.g. from `fixed_horizon_sample_size`.
        alpha: significance level per metric.
        pass_threshold: the lowest score that passes.
        marginal_threshold: the lowest score that is not a fail.

    Returns:
        The outcome, `n`, and the fixed analysis once it has run.
    """
    present = [s.name for s in specs if s.name in canary and s.name in baseline]
    if any(min(len(canary[name]), len(baseline[name])) < n for name in present):
        return FixedHorizonResult(outcome="continue", n=n)
    analysis = judge(
        {name: values[:n] for name, values in canary.items()},
        {name: values[:n] for name, values in baseline.items()},
        specs,
        pass_threshold,
        marginal_threshold,
        alpha,
    )
    outcome: SequentialOutcome = "promote" if analysis.verdict == "pass" else "rollback"
    return FixedHorizonResult(outcome=outcome, n=n, analysis=analysis)


def fixed_horizon_sample_size(
    spec: MetricSpec,
    baseline_mean: float,
    baseline_sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Values per variant for the fixed analysis to catch a harm of twice the tolerance.

    The usual two-sample formula n = (z_(1 - alpha/2) + z_power)^2 * (var_c + var_b) / harm^2
    with harm = 2 * tolerance in the harmful direction: for binary metrics the variances are
    p(1 - p) at the baseline rate and at the harmed rate; for continuous metrics both are
    `baseline_sd`^2 (the t-test's size; Mann-Whitney needs at most 16% more, and fewer on
    heavy tails). The fixed analysis also needs the estimate to reach the tolerance, which at
    this size it misses about 8% of the time, so the power is a little under `power`.

    Args:
        spec: the metric.
        baseline_mean: the baseline's rate (binary) or mean (continuous).
        baseline_sd: the baseline's standard deviation; required for continuous metrics.
        alpha: significance level of the fixed analysis.
        power: the wanted chance of failing a canary harmed by twice the tolerance.

    Returns:
        Values needed per variant, at least `spec.min_samples`.

    Raises:
        ValueError: a continuous metric without `baseline_sd`.
    """
    harm = 2 * spec.tolerance
    if spec.kind == "binary":
        harmed = baseline_mean + (harm if spec.direction == "increase_is_bad" else -harm)
        harmed = min(max(harmed, 0.0), 1.0)
        variances = baseline_mean * (1 - baseline_mean) + harmed * (1 - harmed)
    elif baseline_sd is None:
        raise ValueError(f"{spec.name} is continuous: its sample size needs baseline_sd")
    else:
        variances = 2 * baseline_sd**2
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(spec.min_samples, math.ceil(z * z * variances / harm**2))


def noninferiority_metric(
    spec: MetricSpec, canary: Values, baseline: Values, alpha: float = 0.05
) -> NonInferiorityMetric:
    """One metric's one-sided upper confidence bound for its harm, at a single look.

    Harm is what `sequential_metric` estimates, after the same cleaning: the difference in
    proportions for binary metrics, bounded by Newcombe's score interval (`compare_proportions`
    at 2 * alpha: its upper end is a one-sided 1 - alpha bound and, unlike the Wald bound, keeps
    its level at error rates near 0), and the difference in means for continuous metrics,
    bounded by the normal approximation with Welch's standard error.

    Args:
        spec: the metric.
        canary: per-metric values of the canary.
        baseline: per-metric values of the baseline.
        alpha: one minus the bound's coverage.

    Returns:
        The estimate, its upper bound, the counts, and whether the bound is below the tolerance.
    """
    canary_sample, baseline_sample, nodata = _prepare(spec, canary, baseline)
    counts = {
        "canary_n": 0 if canary_sample is None else canary_sample.values.size,
        "baseline_n": 0 if baseline_sample is None else baseline_sample.values.size,
    }
    if nodata is not None:
        return NonInferiorityMetric(
            name=spec.name, **counts, harm=None, upper=None, non_inferior=False
        )
    x, y = canary_sample.values, baseline_sample.values
    sign = 1.0 if spec.direction == "increase_is_bad" else -1.0
    if spec.kind == "binary":
        difference, low, high, _ = compare_proportions(x, y, 2 * alpha)
        harm, upper = sign * difference, high if sign > 0 else -low
    else:
        harm = sign * float(x.mean() - y.mean())
        se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
        upper = harm + float(stats.norm.ppf(1 - alpha)) * se
    return NonInferiorityMetric(
        name=spec.name, **counts, harm=harm, upper=upper, non_inferior=upper < spec.tolerance
    )


def fixed_horizon_noninferiority(
    canary: Values,
    baseline: Values,
    specs: list[MetricSpec],
    n: int,
    alpha: float = 0.05,
) -> NonInferiorityResult:
    """The fixed-horizon test with `sequential_judge`'s guarantee: one look, at `n` values.

    Until every metric present has `n` values in both variants the outcome is "continue"; then
    each metric's first `n` values are tested once and the test must decide: "promote" when
    every metric's one-sided 1 - alpha upper bound of its harm is below its tolerance
    (`noninferiority_metric`), "rollback" otherwise, a missing or short metric included. A
    canary truly worse by at least the tolerance on some metric is promoted with probability
    at most `alpha`, as with `sequential_judge`; promotion needs every metric to pass its own
    test, so no correction for their number is needed. A canary no worse than the baseline is
    rolled back with probability about 1 - power, for the power `n` was planned with
    (`noninferiority_sample_size`).

    Args:
        canary: per-metric arrays of the canary's values so far, in arrival order.
        baseline: per-metric arrays of the baseline's values so far, in arrival order.
        specs: the metrics; names must be unique.
        n: the planned values per variant.
        alpha: the bound on false promotion.

    Returns:
        The outcome, `n`, and each metric's bound once the look has run.

    Raises:
        ValueError: no metrics, or repeated names.
    """
    _check_specs(specs)
    present = [s.name for s in specs if s.name in canary and s.name in baseline]
    short = [name for name in present if min(len(canary[name]), len(baseline[name])) < n]
    if short:
        return NonInferiorityResult(
            outcome="continue", n=n, reason=f"waiting for {n} values of {', '.join(short)}."
        )
    first = [{name: values[:n] for name, values in v.items()} for v in (canary, baseline)]
    metrics = {spec.name: noninferiority_metric(spec, *first, alpha) for spec in specs}
    failing = [m for m in metrics.values() if not m.non_inferior]
    if not failing:
        return NonInferiorityResult(
            outcome="promote", n=n, metrics=metrics, reason="every metric shown within tolerance."
        )
    bounds = ", ".join(
        f"{m.name} ({'too few values' if m.upper is None else f'harm up to {m.upper:.4g}'})"
        for m in failing
    )
    return NonInferiorityResult(
        outcome="rollback", n=n, metrics=metrics, reason=f"not shown within tolerance: {bounds}."
    )


def noninferiority_sample_size(
    spec: MetricSpec,
    baseline_mean: float,
    baseline_sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Values per variant for `fixed_horizon_noninferiority` to promote an equal canary.

    The usual non-inferiority formula n = (z_(1 - alpha) + z_power)^2 * (var_c + var_b) / tol^2
    for a true harm of 0: for binary metrics both variances are p(1 - p) at the baseline rate,
    for continuous metrics both are `baseline_sd`^2. With several metrics, plan for the largest
    n; the chance that all pass is then somewhat under `power`. Newcombe's bound is a little
    wider than the normal one at low rates: at a 1% error rate and a tolerance of 0.01 the
    power is 76% rather than 80%.

    Args:
        spec: the metric.
        baseline_mean: the baseline's rate (binary) or mean (continuous).
        baseline_sd: the baseline's standard deviation; required for continuous metrics.
        alpha: the test's bound on false promotion.
        power: the wanted chance of promoting a canary no worse than the baseline.

    Returns:
        Values needed per variant, at least `spec.min_samples`.

    Raises:
        ValueError: a continuous metric without `baseline_sd`.
    """
    if spec.kind == "binary":
        variances = 2 * baseline_mean * (1 - baseline_mean)
    elif baseline_sd is None:
        raise ValueError(f"{spec.name} is continuous: its sample size needs baseline_sd")
    else:
        variances = 2 * baseline_sd**2
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    return max(spec.min_samples, math.ceil(z * z * variances / spec.tolerance**2))
