"""Canary judge benchmark: the sequential judge against a fixed-horizon non-inferiority test.

Both tests promote a canary truly worse than the baseline by at least the tolerance with
probability at most alpha (0.05); they differ in when they decide. Simulated canaries of graded
badness: the baseline errs on 1% of requests, with lognormal latency (median 100 ms, sigma 0.5);
the canaries err on 0.25% (and answer faster, median 90 ms: a clearly better canary), 0.5%, 1%,
1.5%, 2%, 3%, 3.5% and 5%, with the baseline's latency. The error rate's tolerance is 0.01 and
latency's 10 ms; both metrics are gates. Requests arrive in steps of 50 per variant, up to
20,000 per variant.

The sequential judge looks after every step and stops at its first promote or rollback (a run
still undecided at the cap counts as the cap). The fixed-horizon test looks once, at the sample
size that promotes a canary as good as the baseline with 80% power (in some rows 90%), and must
decide there. Both see the same simulated traffic. Reported per level: promote and rollback
rates and mean requests per variant to a decision. Then: requests to a decision for the clearly
good canaries (no worse than the baseline: 0.25%, 0.5%, 1%) and the clearly bad ones (worse by
at least 2.5 tolerances: 3.5%, 5%); for the canary exactly as good as the baseline, against the
fixed test planned for the promotion rate the sequential judge reaches there (equal power); the
false-promotion rate at exactly the tolerance (2%); the false-rollback rate of the worst-served
canary no worse than the baseline. The 1.5% canary is worse but within the tolerance, so either
decision is acceptable for it. For context, one row gives the promotion rate at the tolerance of
the Kayenta-style `judge` run at a size planned against a harm of twice the tolerance, which
bounds no false-promotion rate. Runs are seeded, 500 per level by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Row = dict[str, object]
BASELINE_ERROR_RATE = 0.01
ERROR_TOLERANCE = 0.01
LATENCY_MEDIAN_MS, LATENCY_SIGMA = 100.0, 0.5
LATENCY_TOLERANCE_MS = 10.0
STEP = 50
CAP = 20_000
ALPHA = 0.05
POWER, HIGH_POWER = 0.8, 0.9
CLEARLY_BAD = 2.5
"""Canaries worse by at least this many tolerances are "clearly bad"."""
MAX_PLANNED_POWER = 0.999


@dataclass(frozen=True)
class Level:
    """One simulated canary."""

    error_rate: float
    latency_median_ms: float = LATENCY_MEDIAN_MS

    @property
    def harm(self) -> float:
        """The error rate's harm in tolerances (latency is never worse than the baseline's)."""
        return (self.error_rate - BASELINE_ERROR_RATE) / ERROR_TOLERANCE

    @property
    def label(self) -> str:
        faster = self.latency_median_ms != LATENCY_MEDIAN_MS
        latency = f", median latency {self.latency_median_ms:g} ms" if faster else ""
        return f"error {self.error_rate:.2%}{latency} ({self.harm:+.2g} tolerance)"


LEVELS = (
    Level(0.0025, 90.0),
    *(Level(rate) for rate in (0.005, 0.01, 0.015, 0.02, 0.03, 0.035, 0.05)),
)


def _specs():
    from agentic_mlops.tasks.canary_judge import MetricSpec

    return [
        MetricSpec(
            name="error",
            kind="binary",
            direction="increase_is_bad",
            critical=True,
            tolerance=ERROR_TOLERANCE,
        ),
        MetricSpec(
            name="latency_ms",
            kind="continuous",
            direction="increase_is_bad",
            critical=True,
            tolerance=LATENCY_TOLERANCE_MS,
        ),
    ]


def _requests(
    rng: np.random.Generator, error_rate: float, latency_median_ms: float
) -> dict[str, np.ndarray]:
    """`CAP` requests of one variant: error flags and latencies, in arrival order."""
    return {
        "error": (rng.random(CAP) < error_rate).astype(float),
        "latency_ms": rng.lognormal(np.log(latency_median_ms), LATENCY_SIGMA, CAP),
    }


def _rate(outcomes: list[str], outcome: str) -> float:
    return sum(o == outcome for o in outcomes) / len(outcomes)


def _horizon(power: float) -> int:
    """The fixed test's planned values per variant: the largest over the two metrics."""
    from agentic_mlops.tasks.canary_judge import noninferiority_sample_size

    latency_mean = LATENCY_MEDIAN_MS * np.exp(LATENCY_SIGMA**2 / 2)
    latency_sd = latency_mean * np.sqrt(np.exp(LATENCY_SIGMA**2) - 1)
    errors, latency = _specs()
    return max(
        noninferiority_sample_size(errors, BASELINE_ERROR_RATE, alpha=ALPHA, power=power),
        noninferiority_sample_size(latency, latency_mean, latency_sd, ALPHA, power),
    )


@dataclass
class Simulation:
    """Every simulated run's outcome per level, under each test, and the planned sizes."""

    runs: int
    horizon: int
    long_horizon: int
    kayenta_horizon: int
    sequential: dict[Level, list[str]] = field(default_factory=dict)
    requests: dict[Level, list[int]] = field(default_factory=dict)
    fixed: dict[Level, list[str]] = field(default_factory=dict)
    fixed_long: dict[Level, list[str]] = field(default_factory=dict)
    kayenta: list[str] = field(default_factory=list)

    def mean_requests(self, levels: list[Level]) -> float:
        return float(np.mean([self.requests[level] for level in levels]))


GOOD = [level for level in LEVELS if level.harm <= 0]
BAD = [level for level in LEVELS if level.harm >= CLEARLY_BAD]
MARGIN = next(level for level in LEVELS if level.harm == 1)
EQUAL = next(level for level in LEVELS if level.harm == 0)


def simulate(runs: int, seed: int) -> Simulation:
    """Replay the same seeded traffic through the sequential judge and the fixed tests."""
    from agentic_mlops.tasks.canary_judge import (
        fixed_horizon_judge,
        fixed_horizon_noninferiority,
        fixed_horizon_sample_size,
        replay_sequential,
    )

    specs = _specs()
    kayenta_horizon = fixed_horizon_sample_size(specs[0], BASELINE_ERROR_RATE, alpha=ALPHA)
    sim = Simulation(runs, _horizon(POWER), _horizon(HIGH_POWER), kayenta_horizon)
    for index, level in enumerate(LEVELS):
        for outcomes in (sim.sequential, sim.requests, sim.fixed, sim.fixed_long):
            outcomes[level] = []
        for run in range(runs):
            rng = np.random.default_rng([seed, index, run])
            canary = _requests(rng, level.error_rate, level.latency_median_ms)
            baseline = _requests(rng, BASELINE_ERROR_RATE, LATENCY_MEDIAN_MS)
            result, seen = replay_sequential(canary, baseline, specs, STEP, ALPHA)
            sim.sequential[level].append(result.outcome)
            sim.requests[level].append(seen)
            for outcomes, n in ((sim.fixed, sim.horizon), (sim.fixed_long, sim.long_horizon)):
                decision = fixed_horizon_noninferiority(canary, baseline, specs, n, ALPHA)
                outcomes[level].append(decision.outcome)
            if level == MARGIN:
                old = fixed_horizon_judge(canary, baseline, specs, kayenta_horizon, ALPHA)
                sim.kayenta.append(old.outcome)
    return sim


def level_rows(sim: Simulation) -> list[Row]:
    """Per level: the decisions' rates and the requests to a decision."""
    rows: list[Row] = []
    for level in LEVELS:
        outcomes, fixed = sim.sequential[level], sim.fixed[level]
        mean_n = sim.mean_requests([level])
        rows += [
            {
                "name": f"canary {level.label}: sequential promote/rollback/undecided "
                f"(baseline: fixed non-inferiority promote/rollback at n={sim.horizon})",
                "value": f"{_rate(outcomes, 'promote'):.1%}/{_rate(outcomes, 'rollback'):.1%}/"
                f"{_rate(outcomes, 'continue'):.1%}",
                "baseline": f"{_rate(fixed, 'promote'):.1%}/{_rate(fixed, 'rollback'):.1%}",
            },
            {
                "name": f"canary {level.label}: mean requests per variant to a decision",
                "value": round(mean_n),
                "unit": "requests",
                "baseline": sim.horizon,
                "ratio": round(mean_n / sim.horizon, 2),
            },
        ]
    return rows


def speed_rows(sim: Simulation) -> list[Row]:
    """Requests to a decision for the clearly good and clearly bad canaries, and for the
    canary as good as the baseline against the fixed test of equal power."""
    rows: list[Row] = []
    for levels, kind in (
        (GOOD, "clearly good canaries (no worse than baseline)"),
        (BAD, f"clearly bad canaries (>= {CLEARLY_BAD:g}x tolerance worse)"),
    ):
        mean_n = sim.mean_requests(levels)
        for n, power in ((sim.horizon, POWER), (sim.long_horizon, HIGH_POWER)):
            rows.append(
                {
                    "name": f"canary: requests per variant to a decision, {kind}, sequential "
                    f"(baseline: fixed non-inferiority at {power:.0%} power)",
                    "value": round(mean_n),
                    "unit": "requests",
                    "baseline": n,
                    "ratio": round(mean_n / n, 2),
                }
            )
    equal_power = min(_rate(sim.sequential[EQUAL], "promote"), MAX_PLANNED_POWER)
    matched = _horizon(equal_power)
    rows.append(
        {
            "name": f"canary {EQUAL.label}: requests per variant to a decision, sequential "
            f"(baseline: fixed non-inferiority planned for the sequential's {equal_power:.1%} "
            "promotion rate there)",
            "value": round(sim.mean_requests([EQUAL])),
            "unit": "requests",
            "baseline": matched,
            "ratio": round(sim.mean_requests([EQUAL]) / matched, 2),
        }
    )
    return rows


def error_rows(sim: Simulation) -> list[Row]:
    """False promotions at the tolerance, false rollbacks of good canaries, undecided runs."""
    slack = 2 * np.sqrt(ALPHA * (1 - ALPHA) / sim.runs)
    target = f"<= {ALPHA:g} (+ {slack:.3f} slack: 2 s.e. at {sim.runs} runs)"

    def worst_rollback(outcomes: dict[Level, list[str]]) -> float:
        return max(_rate(outcomes[level], "rollback") for level in GOOD)

    seq_promote = _rate(sim.sequential[MARGIN], "promote")
    rows: list[Row] = [
        {
            "name": "canary: false-promotion rate at exactly the tolerance "
            f"(error {MARGIN.error_rate:.0%}), "
            f"sequential (baseline: fixed at {POWER:.0%} power)",
            "value": round(seq_promote, 3),
            "unit": "share",
            "baseline": round(_rate(sim.fixed[MARGIN], "promote"), 3),
            "target": target,
            "met": seq_promote <= ALPHA + slack,
        }
    ]
    for outcomes, n, power in (
        (sim.fixed, sim.horizon, POWER),
        (sim.fixed_long, sim.long_horizon, HIGH_POWER),
    ):
        promoted = _rate(outcomes[MARGIN], "promote")
        rows.append(
            {
                "name": "canary: false-promotion rate at exactly the tolerance, fixed "
                f"non-inferiority at {power:.0%} power (n={n})",
                "value": round(promoted, 3),
                "unit": "share",
                "target": target,
                "met": promoted <= ALPHA + slack,
            }
        )
    seq_rollback = worst_rollback(sim.sequential)
    gates = len(_specs())
    rows += [
        {
            "name": "canary: false-rollback rate, worst canary no worse than baseline, "
            f"sequential (baseline: fixed at {POWER:.0%} power)",
            "value": round(seq_rollback, 3),
            "unit": "share",
            "baseline": round(worst_rollback(sim.fixed), 3),
            "target": f"<= {gates * ALPHA:g} (alpha per metric)",
            "met": seq_rollback <= gates * ALPHA,
        },
        {
            "name": "canary: false-rollback rate, worst canary no worse than baseline, fixed "
            f"non-inferiority at {HIGH_POWER:.0%} power (n={sim.long_horizon})",
            "value": round(worst_rollback(sim.fixed_long), 3),
            "unit": "share",
        },
        {
            "name": "canary: sequential runs undecided at the cap, all levels",
            "value": round(
                float(np.mean([_rate(sim.sequential[lv], "continue") for lv in LEVELS])), 3
            ),
            "unit": "share",
        },
        {
            "name": "canary: for context, Kayenta-style judge at a size planned against 2x the "
            f"tolerance (n={sim.kayenta_horizon}): promotion rate at exactly the tolerance (it "
            "promotes unless harm is significant, so it does not bound false promotion)",
            "value": round(_rate(sim.kayenta, "promote"), 3),
            "unit": "share",
        },
    ]
    return rows


def bench_canary_judge(runs: int = 500, seed: int = 7) -> list[Row]:
    """Sequential against fixed-horizon non-inferiority over seeded simulated canaries."""
    sim = simulate(runs, seed)
    return level_rows(sim) + speed_rows(sim) + error_rows(sim)


REGRESSION_FACTORS = (0.9, 1.0, 1.05, 1.1, 1.2, 1.3)
"""The canary's absolute errors as a multiple of the baseline's. The tolerance is 10% of the
champion's holdout MAE (`ABSOLUTE_ERROR_TOLERANCE_SHARE`), so 1.1 is exactly at it; 1.05 is
worse but within it, where either decision is acceptable."""


def diabetes_errors(seed: int = 0) -> np.ndarray:
    """Absolute errors of a gradient-boosting regressor on the held-out half of scikit-learn's
    bundled diabetes table: a real regression model's error distribution, not a made-up one."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, random_state=seed)
    model = GradientBoostingRegressor(random_state=seed).fit(x_fit, y_fit)
    return np.abs(model.predict(x_test) - y_test)


def bench_canary_judge_regression(runs: int = 500, seed: int = 7) -> list[Row]:
    """The sequential judge on a regression canary's absolute errors, against the fixed-horizon
    non-inferiority test at 80% power: canaries whose errors are the diabetes regressor's,
    resampled and scaled by `REGRESSION_FACTORS`; labels arrive with every request. A run
    still undecided at five times the fixed test's size counts as that many requests."""
    from agentic_mlops.tasks.canary_judge import (
        fixed_horizon_noninferiority,
        noninferiority_sample_size,
        replay_sequential,
    )
    from agentic_mlops.tasks.metrics import ABSOLUTE_ERROR_TOLERANCE_SHARE, CanaryTask
    from agentic_mlops.tasks.metrics import label_metric as loss_spec

    errors = diabetes_errors()
    mae = float(errors.mean())
    spec = loss_spec(CanaryTask("regression", ABSOLUTE_ERROR_TOLERANCE_SHARE * mae), 50)
    horizon = noninferiority_sample_size(spec, mae, float(errors.std()), ALPHA, POWER)
    cap = 5 * horizon
    sequential: dict[float, list[str]] = {}
    fixed: dict[float, list[str]] = {}
    requests: dict[float, list[int]] = {}
    for index, factor in enumerate(REGRESSION_FACTORS):
        sequential[factor], fixed[factor], requests[factor] = [], [], []
        for run in range(runs):
            rng = np.random.default_rng([seed, index, run])
            canary = {"absolute_error": factor * rng.choice(errors, cap)}
            baseline = {"absolute_error": rng.choice(errors, cap)}
            result, seen = replay_sequential(canary, baseline, [spec], STEP, ALPHA)
            sequential[factor].append(result.outcome)
            requests[factor].append(seen)
            decision = fixed_horizon_noninferiority(canary, baseline, [spec], horizon, ALPHA)
            fixed[factor].append(decision.outcome)
    rows: list[Row] = []
    for factor in REGRESSION_FACTORS:
        outcomes, mean_n = sequential[factor], float(np.mean(requests[factor]))
        label = f"regression canary, absolute error x{factor:g} of the champion's"
        rows += [
            {
                "name": f"{label}: sequential promote/rollback/undecided (baseline: fixed "
                f"non-inferiority promote/rollback at n={horizon})",
                "value": f"{_rate(outcomes, 'promote'):.1%}/{_rate(outcomes, 'rollback'):.1%}/"
                f"{_rate(outcomes, 'continue'):.1%}",
                "baseline": f"{_rate(fixed[factor], 'promote'):.1%}/"
                f"{_rate(fixed[factor], 'rollback'):.1%}",
            },
            {
                "name": f"{label}: mean labelled requests per variant to a decision",
                "value": round(mean_n),
                "unit": "requests",
                "baseline": horizon,
                "ratio": round(mean_n / horizon, 2),
            },
        ]
    slack = 2 * np.sqrt(ALPHA * (1 - ALPHA) / runs)
    at_tolerance = _rate(sequential[1 + ABSOLUTE_ERROR_TOLERANCE_SHARE], "promote")
    rows.append(
        {
            "name": "regression canary: false-promotion rate at exactly the tolerance (absolute "
            f"error +{ABSOLUTE_ERROR_TOLERANCE_SHARE:.0%} of the champion's MAE {mae:.1f}), "
            f"sequential (baseline: fixed at {POWER:.0%} power)",
            "value": round(at_tolerance, 3),
            "unit": "share",
            "baseline": round(_rate(fixed[1 + ABSOLUTE_ERROR_TOLERANCE_SHARE], "promote"), 3),
            "target": f"<= {ALPHA:g} (+ {slack:.3f} slack: 2 s.e. at {runs} runs)",
            "met": at_tolerance <= ALPHA + slack,
        }
    )
    return rows
