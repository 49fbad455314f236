"""The canary judge: fixed analysis, failing closed, estimators, and the sequential judge."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentic_mlops.tasks import canary_judge
from agentic_mlops.tasks.canary_judge import (
    MetricSpec,
    compare_proportions,
    fixed_horizon_judge,
    fixed_horizon_noninferiority,
    fixed_horizon_sample_size,
    hodges_lehmann,
    judge,
    noninferiority_sample_size,
    replay_sequential,
    sequential_judge,
)

LATENCY = MetricSpec(
    name="latency_ms", kind="continuous", direction="increase_is_bad", tolerance=5.0
)
ERRORS = MetricSpec(
    name="error", kind="binary", direction="increase_is_bad", tolerance=0.01, critical=True
)
ACCURACY = MetricSpec(name="correct", kind="binary", direction="decrease_is_bad", tolerance=0.02)
SPECS = [ERRORS, LATENCY]


def traffic(rng, n, error_rate=0.01, latency_shift=0.0):
    """One variant's requests: error flags and lognormal latencies around 100 ms."""
    return {
        "error": (rng.random(n) < error_rate).astype(float),
        "latency_ms": rng.lognormal(np.log(100), 0.5, n) + latency_shift,
    }


def verdict_of(result, name):
    return next(m for m in result.metrics if m.name == name)


def test_identical_variants_pass_with_full_score():
    rng = np.random.default_rng(1)
    result = judge(traffic(rng, 2_000), traffic(rng, 2_000), SPECS)
    assert result.verdict == "pass"
    assert result.score == 100
    assert result.critical_failures == []
    assert all(m.classification == "pass" for m in result.metrics)


def test_higher_error_rate_on_a_critical_metric_fails():
    rng = np.random.default_rng(2)
    result = judge(traffic(rng, 3_000, error_rate=0.05), traffic(rng, 3_000), SPECS)
    assert result.verdict == "fail"
    assert result.critical_failures == ["error"]
    errors = verdict_of(result, "error")
    assert errors.classification == "high"
    assert errors.ci_low > 0 and errors.p_value < 0.05
    assert "error" in result.reason


def test_much_slower_canary_is_high_on_latency():
    rng = np.random.default_rng(3)
    result = judge(traffic(rng, 1_000, latency_shift=40), traffic(rng, 1_000), SPECS)
    latency = verdict_of(result, "latency_ms")
    assert latency.classification == "high"
    assert latency.effect > LATENCY.tolerance
    assert result.score == 50 and result.verdict == "fail"


def test_faster_canary_never_fails():
    rng = np.random.default_rng(4)
    result = judge(traffic(rng, 1_000, latency_shift=-40), traffic(rng, 1_000), SPECS)
    latency = verdict_of(result, "latency_ms")
    assert latency.p_value < 1e-6 and latency.effect < -LATENCY.tolerance
    assert latency.classification == "pass"
    assert result.verdict == "pass"


def test_lower_accuracy_is_low_and_higher_accuracy_passes():
    rng = np.random.default_rng(5)
    baseline = {"correct": (rng.random(3_000) < 0.9).astype(float)}
    worse = judge({"correct": (rng.random(3_000) < 0.8).astype(float)}, baseline, [ACCURACY])
    better = judge({"correct": (rng.random(3_000) < 0.97).astype(float)}, baseline, [ACCURACY])
    assert worse.metrics[0].classification == "low"
    assert better.metrics[0].classification == "pass"
    assert better.metrics[0].effect > ACCURACY.tolerance


def test_significant_change_within_tolerance_passes():
    rng = np.random.default_rng(6)
    n = 60_000
    canary, baseline = traffic(rng, n, latency_shift=2.0), traffic(rng, n)
    result = judge(canary, baseline, [LATENCY])
    latency = result.metrics[0]
    assert latency.p_value < 1e-6 and latency.ci_low > 0
    assert latency.classification == "pass"
    strict = LATENCY.model_copy(update={"tolerance": 1.0})
    assert judge(canary, baseline, [strict]).metrics[0].classification == "high"


@pytest.mark.parametrize(
    "canary_latency",
    [None, np.ones(20), np.full(500, np.nan)],
    ids=["missing", "too-few", "all-nan"],
)
def test_unusable_latency_is_nodata_and_never_passes(canary_latency):
    rng = np.random.default_rng(7)
    canary, baseline = traffic(rng, 500), traffic(rng, 500)
    if canary_latency is None:
        del canary["latency_ms"]
    else:
        canary["latency_ms"] = canary_latency
    result = judge(canary, baseline, SPECS)
    latency = verdict_of(result, "latency_ms")
    assert latency.classification == "nodata"
    assert latency.effect is None and latency.p_value is None
    assert result.score == 50 and result.verdict == "fail"


def test_critical_nodata_fails_even_with_a_passing_score():
    rng = np.random.default_rng(9)
    canary, baseline = traffic(rng, 1_000), traffic(rng, 1_000)
    canary["error"] = canary["error"][:10]
    light = [ERRORS.model_copy(update={"weight": 0.01}), LATENCY]
    result = judge(canary, baseline, light)
    assert result.score > 95
    assert result.verdict == "fail" and result.critical_failures == ["error"]
    assert verdict_of(result, "error").classification == "nodata"


def test_a_few_non_finite_values_are_dropped_and_counted():
    rng = np.random.default_rng(10)
    canary, baseline = traffic(rng, 1_000), traffic(rng, 1_000)
    canary["latency_ms"][:5] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    latency = verdict_of(judge(canary, baseline, SPECS), "latency_ms")
    assert latency.classification == "pass"
    assert latency.canary_dropped >= 5 and latency.canary_n <= 995


def test_binary_metric_with_other_values_is_nodata():
    baseline = {"error": np.zeros(200)}
    assert judge({"error": np.zeros(200)}, baseline, [ERRORS]).verdict == "pass"
    result = judge({"error": np.full(200, 0.5)}, baseline, [ERRORS])
    assert result.metrics[0].classification == "nodata" and result.verdict == "fail"


@pytest.mark.parametrize(
    ("latency_weight", "verdict"), [(0.25, "marginal"), (1.0, "fail"), (0.04, "pass")]
)
def test_score_bands_from_weights(latency_weight, verdict):
    rng = np.random.default_rng(11)
    canary, baseline = traffic(rng, 1_000, latency_shift=40), traffic(rng, 1_000)
    weighted = LATENCY.model_copy(update={"weight": latency_weight})
    result = judge(canary, baseline, [ERRORS, weighted])
    assert result.score == pytest.approx(100 / (1 + latency_weight))
    assert result.verdict == verdict
    assert result.critical_failures == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one metric"):
        judge({}, {}, [])
    with pytest.raises(ValueError, match="repeat"):
        judge({}, {}, [ERRORS, ERRORS])
    with pytest.raises(ValueError, match="threshold"):
        judge({}, {}, [ERRORS], pass_threshold=50, marginal_threshold=75)


def test_latency_spikes_are_filtered_out():
    rng = np.random.default_rng(12)
    canary, baseline = traffic(rng, 2_000), traffic(rng, 2_000)
    canary["latency_ms"][:40] = 60_000.0
    fixed = verdict_of(judge(canary, baseline, SPECS), "latency_ms")
    assert fixed.classification == "pass" and fixed.canary_dropped >= 40
    assert sequential_judge(canary, baseline, SPECS).outcome == "promote"
    raw = [ERRORS, LATENCY.model_copy(update={"remove_outliers": False})]
    assert sequential_judge(canary, baseline, raw).outcome != "promote"


def test_a_slow_tail_is_not_mistaken_for_spikes():
    rng = np.random.default_rng(12)
    steady = {"latency_ms": rng.normal(100, 2, 4_000)}
    canary = {"latency_ms": rng.normal(100, 2, 4_000)}
    assert sequential_judge(canary, steady, [LATENCY]).outcome == "promote"
    canary["latency_ms"][:400] = 150.0
    look = sequential_judge(canary, steady, [LATENCY])
    assert look.metrics["latency_ms"].canary_n == 4_000
    assert look.outcome != "promote"


def test_hodges_lehmann_recovers_a_known_shift():
    rng = np.random.default_rng(13)
    baseline = rng.lognormal(np.log(100), 0.2, 1_000)
    canary = rng.lognormal(np.log(100), 0.2, 1_000) + 20
    shift, low, high = hodges_lehmann(canary, baseline)
    assert shift == pytest.approx(20, abs=2)
    assert low < 20 < high and high - low < 5
    _, low, high = hodges_lehmann(baseline[:500], baseline[500:])
    assert low < 0 < high


def test_hodges_lehmann_interval_covers_at_its_level():
    covered = 0
    for run in range(200):
        rng = np.random.default_rng([14, run])
        _, low, high = hodges_lehmann(rng.exponential(1, 80) + 1, rng.exponential(1, 100))
        covered += low < 1 < high
    assert 0.9 <= covered / 200 <= 0.99


def test_hodges_lehmann_subsample_is_deterministic_and_close_to_exact(monkeypatch):
    rng = np.random.default_rng(15)
    canary, baseline = rng.normal(0.5, 1, 1_200), rng.normal(0, 1, 1_000)
    sampled = hodges_lehmann(canary, baseline)
    assert sampled == hodges_lehmann(canary, baseline)
    monkeypatch.setattr(canary_judge, "MAX_PAIRS", 2_000_000)
    exact = hodges_lehmann(canary, baseline)
    width = exact[2] - exact[1]
    assert sampled != exact
    assert np.allclose(sampled, exact, atol=0.1 * width)


def test_newcombe_interval_matches_the_published_example():
    """Newcombe (1998), example (a): 56/70 against 48/80, method 10 gives 0.0524 to 0.3339."""
    canary = np.r_[np.ones(56), np.zeros(14)]
    baseline = np.r_[np.ones(48), np.zeros(32)]
    difference, low, high, p_value = compare_proportions(canary, baseline)
    assert difference == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    assert p_value < 0.05
    assert compare_proportions(np.zeros(50), np.zeros(50))[3] == 1.0


def test_sequential_rolls_back_a_bad_canary_before_the_fixed_horizon():
    rng = np.random.default_rng(15)
    canary, baseline = traffic(rng, 5_000, error_rate=0.06), traffic(rng, 5_000)
    result, seen = replay_sequential(canary, baseline, SPECS, step=50)
    horizon = fixed_horizon_sample_size(ERRORS, 0.01)
    assert result.outcome == "rollback"
    assert result.metrics["error"].crossed == "harm" and result.metrics["error"].lower > 0
    assert seen < horizon
    fixed = fixed_horizon_judge(canary, baseline, SPECS, horizon)
    assert fixed.outcome == "rollback"


def test_sequential_promotes_a_good_canary_eventually():
    rng = np.random.default_rng(16)
    canary, baseline = traffic(rng, 8_000, error_rate=0.008), traffic(rng, 8_000)
    result, seen = replay_sequential(canary, baseline, SPECS, step=200)
    assert result.outcome == "promote"
    assert all(result.metrics[spec.name].upper < spec.tolerance for spec in SPECS)
    early = sequential_judge(
        {k: v[:200] for k, v in canary.items()}, {k: v[:200] for k, v in baseline.items()}, SPECS
    )
    assert early.outcome == "continue" and seen > 200


def test_sequential_rolls_back_on_lower_accuracy():
    rng = np.random.default_rng(17)
    canary = {"correct": (rng.random(4_000) < 0.8).astype(float)}
    baseline = {"correct": (rng.random(4_000) < 0.9).astype(float)}
    assert sequential_judge(canary, baseline, [ACCURACY]).outcome == "rollback"
    assert sequential_judge(baseline, canary, [ACCURACY]).outcome == "promote"


def test_sequential_continues_with_too_little_data():
    rng = np.random.default_rng(18)
    result = sequential_judge(traffic(rng, 30), traffic(rng, 30), SPECS)
    assert result.outcome == "continue"
    assert {m.crossed for m in result.metrics.values()} == {"nodata"}
    assert sequential_judge({}, {}, SPECS).outcome == "continue"


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    damage=st.sampled_from(["missing", "short", "nan"]),
    side=st.sampled_from(["canary", "baseline", "both"]),
    kept=st.integers(0, ERRORS.min_samples - 1),
)
def test_sequential_never_promotes_without_enough_data(seed, damage, side, kept):
    rng = np.random.default_rng(seed)
    canary = traffic(rng, 5_000, error_rate=0.002, latency_shift=-10)
    baseline = traffic(rng, 5_000)
    assert sequential_judge(canary, baseline, SPECS).outcome == "promote"
    for variant in {"canary": [canary], "baseline": [baseline], "both": [canary, baseline]}[side]:
        if damage == "missing":
            del variant["error"]
        elif damage == "short":
            variant["error"] = variant["error"][:kept]
        else:
            variant["error"][kept:] = np.nan
    assert sequential_judge(canary, baseline, SPECS).outcome != "promote"


def test_false_promotion_rate_at_the_margin_stays_below_alpha():
    """200 canaries worse by exactly the tolerance, each watched until it decides."""
    spec = MetricSpec(
        name="loss", kind="continuous", direction="increase_is_bad", tolerance=0.5, min_samples=20
    )
    promoted = 0
    for run in range(200):
        rng = np.random.default_rng([19, run])
        canary = {"loss": rng.normal(spec.tolerance, 1, 1_000)}
        baseline = {"loss": rng.normal(0, 1, 1_000)}
        result, _ = replay_sequential(canary, baseline, [spec], step=10)
        promoted += result.outcome == "promote"
    assert promoted / 200 < 0.10


def test_false_rollback_rate_of_an_equal_canary_stays_below_alpha():
    spec = MetricSpec(
        name="loss", kind="continuous", direction="increase_is_bad", tolerance=0.5, min_samples=20
    )
    rolled_back = 0
    for run in range(200):
        rng = np.random.default_rng([20, run])
        canary, baseline = {"loss": rng.normal(0, 1, 1_000)}, {"loss": rng.normal(0, 1, 1_000)}
        result, _ = replay_sequential(canary, baseline, [spec], step=10)
        rolled_back += result.outcome == "rollback"
    assert rolled_back / 200 < 0.10


def test_fixed_horizon_waits_for_its_sample_size():
    rng = np.random.default_rng(21)
    canary, baseline = traffic(rng, 1_000), traffic(rng, 1_000)
    assert fixed_horizon_judge(canary, baseline, SPECS, n=2_000).outcome == "continue"
    decided = fixed_horizon_judge(canary, baseline, SPECS, n=800)
    assert decided.outcome == "promote" and decided.analysis.verdict == "pass"
    assert verdict_of(decided.analysis, "error").canary_n == 800


def test_fixed_horizon_sample_size():
    assert fixed_horizon_sample_size(ERRORS, 0.01) == 766
    assert fixed_horizon_sample_size(LATENCY, 113, baseline_sd=60) == 566
    assert fixed_horizon_sample_size(ERRORS.model_copy(update={"tolerance": 0.5}), 0.01) == 50
    with pytest.raises(ValueError, match="baseline_sd"):
        fixed_horizon_sample_size(LATENCY, 113)


def test_noninferiority_sample_size():
    assert noninferiority_sample_size(ERRORS, 0.01) == 1225
    assert noninferiority_sample_size(ERRORS, 0.01, power=0.9) == 1696
    assert noninferiority_sample_size(LATENCY, 113, baseline_sd=60) == 1781
    assert noninferiority_sample_size(ERRORS.model_copy(update={"tolerance": 0.5}), 0.01) == 50
    with pytest.raises(ValueError, match="baseline_sd"):
        noninferiority_sample_size(LATENCY, 113)


def test_noninferiority_waits_then_promotes_an_equal_canary():
    rng = np.random.default_rng(23)
    canary = traffic(rng, 2_000, error_rate=0.005, latency_shift=-10)
    baseline = traffic(rng, 2_000)
    n = noninferiority_sample_size(ERRORS, 0.01)
    assert fixed_horizon_noninferiority(canary, baseline, SPECS, n=2_500).outcome == "continue"
    result = fixed_horizon_noninferiority(canary, baseline, SPECS, n)
    assert result.outcome == "promote" and result.n == n
    errors = result.metrics["error"]
    assert errors.canary_n == n and errors.non_inferior
    assert errors.harm < errors.upper < ERRORS.tolerance


def test_noninferiority_rolls_back_a_canary_not_shown_within_tolerance():
    rng = np.random.default_rng(24)
    canary = traffic(rng, 2_000, error_rate=0.005, latency_shift=8)
    baseline = traffic(rng, 2_000)
    result = fixed_horizon_noninferiority(canary, baseline, SPECS, n=2_000)
    assert result.outcome == "rollback"
    assert result.metrics["error"].non_inferior
    assert not result.metrics["latency_ms"].non_inferior
    assert "latency_ms" in result.reason


def test_noninferiority_fails_closed_on_a_missing_metric():
    rng = np.random.default_rng(25)
    canary = traffic(rng, 2_000, error_rate=0.005, latency_shift=-10)
    baseline = traffic(rng, 2_000)
    assert fixed_horizon_noninferiority(canary, baseline, SPECS, n=2_000).outcome == "promote"
    del canary["latency_ms"]
    result = fixed_horizon_noninferiority(canary, baseline, SPECS, n=2_000)
    assert result.outcome == "rollback"
    latency = result.metrics["latency_ms"]
    assert latency.upper is None and not latency.non_inferior
    assert "too few values" in result.reason


def test_noninferiority_orients_decrease_is_bad_metrics():
    rng = np.random.default_rng(26)
    baseline = {"correct": (rng.random(3_000) < 0.9).astype(float)}
    better = {"correct": (rng.random(3_000) < 0.92).astype(float)}
    worse = {"correct": (rng.random(3_000) < 0.85).astype(float)}
    promoted = fixed_horizon_noninferiority(better, baseline, [ACCURACY], n=3_000)
    rolled_back = fixed_horizon_noninferiority(worse, baseline, [ACCURACY], n=3_000)
    assert promoted.outcome == "promote" and promoted.metrics["correct"].harm < 0
    assert rolled_back.outcome == "rollback" and rolled_back.metrics["correct"].harm > 0


@pytest.mark.parametrize("metric", ["error", "loss"])
def test_noninferiority_false_promotion_at_the_margin_stays_near_alpha(metric):
    """400 canaries worse by exactly the tolerance, each tested once at the planned size."""
    loss = MetricSpec(name="loss", kind="continuous", direction="increase_is_bad", tolerance=0.5)
    spec = ERRORS if metric == "error" else loss
    n = noninferiority_sample_size(spec, 0.01, baseline_sd=1.0)
    promoted = 0
    for run in range(400):
        rng = np.random.default_rng([27, run])
        if metric == "error":
            canary = {"error": (rng.random(n) < 0.02).astype(float)}
            baseline = {"error": (rng.random(n) < 0.01).astype(float)}
        else:
            canary = {"loss": rng.normal(spec.tolerance, 1, n)}
            baseline = {"loss": rng.normal(0, 1, n)}
        promoted += fixed_horizon_noninferiority(canary, baseline, [spec], n).outcome == "promote"
    assert promoted / 400 < 0.08
