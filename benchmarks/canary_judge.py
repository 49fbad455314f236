"""Canary judge benchmark: the sequential judge against one fixed-horizon look.

Simulated canaries of graded badness: the baseline errs on 1% of requests and the canaries on
0.5%, 1%, 1.5%, 2%, 3% and 5%, with the error rate's tolerance at 0.01; latency is lognormal
(median 100 ms, sigma 0.5) in both variants, with a tolerance of 10 ms. Both metrics are
critical. Requests arrive in steps of 50 per variant, up to 20,000 per variant.

The sequential judge looks after every step and stops at its first promote or rollback (a
run still undecided at the cap is counted apart). The fixed-horizon judge looks once, at the
sample size giving about 80% power against a harm of twice the tolerance. Reported: mean
requests per variant to a decision; the false-promotion rate of the worst-served canary among
those worse by at least the tolerance (2%, 3%, 5%; the 2% one, at the margin, is the hard
case); the false-rollback rate of the worst-served canary among those no worse (0.5%, 1%).
The 1.5% canary is worse but within the tolerance, so either decision is acceptable for it.
Fixed-horizon figures are the rows' baselines; runs are seeded, 200 per level by default.
"""

from __future__ import annotations

import numpy as np

Row = dict[str, object]
BASELINE_ERROR_RATE = 0.01
CANARY_ERROR_RATES = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05)
ERROR_TOLERANCE = 0.01
LATENCY_MEDIAN_MS, LATENCY_SIGMA = 100.0, 0.5
LATENCY_TOLERANCE_MS = 10.0
STEP = 50
CAP = 20_000
ALPHA = 0.05


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


def _requests(rng: np.random.Generator, error_rate: float) -> dict[str, np.ndarray]:
    """`CAP` requests of one variant: error flags and latencies, in arrival order."""
    return {
        "error": (rng.random(CAP) < error_rate).astype(float),
        "latency_ms": rng.lognormal(np.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA, CAP),
    }


def _rate(outcomes: list[str], outcome: str) -> float:
    return sum(o == outcome for o in outcomes) / len(outcomes)


def bench_canary_judge(runs: int = 200, seed: int = 7) -> list[Row]:
    """Sequential against fixed-horizon judging over seeded simulated canaries (see module)."""
    from agentic_mlops.tasks.canary_judge import (
        fixed_horizon_judge,
        fixed_horizon_sample_size,
        replay_sequential,
    )

    specs = _specs()
    latency_mean = LATENCY_MEDIAN_MS * np.exp(LATENCY_SIGMA**2 / 2)
    latency_sd = latency_mean * np.sqrt(np.exp(LATENCY_SIGMA**2) - 1)
    horizon = max(
        fixed_horizon_sample_size(specs[0], BASELINE_ERROR_RATE, alpha=ALPHA),
        fixed_horizon_sample_size(specs[1], float(latency_mean), float(latency_sd), alpha=ALPHA),
    )
    sequential: dict[float, list[str]] = {rate: [] for rate in CANARY_ERROR_RATES}
    requests: dict[float, list[int]] = {rate: [] for rate in CANARY_ERROR_RATES}
    fixed: dict[float, list[str]] = {rate: [] for rate in CANARY_ERROR_RATES}
    for level, rate in enumerate(CANARY_ERROR_RATES):
        for run in range(runs):
            rng = np.random.default_rng([seed, level, run])
            canary, baseline = _requests(rng, rate), _requests(rng, BASELINE_ERROR_RATE)
            result, seen = replay_sequential(canary, baseline, specs, STEP, ALPHA)
            sequential[rate].append(result.outcome)
            requests[rate].append(seen)
            fixed[rate].append(fixed_horizon_judge(canary, baseline, specs, horizon, ALPHA).outcome)

    worse = [r for r in CANARY_ERROR_RATES if r - BASELINE_ERROR_RATE >= ERROR_TOLERANCE - 1e-12]
    no_worse = [r for r in CANARY_ERROR_RATES if r <= BASELINE_ERROR_RATE]
    seq_promote = max(_rate(sequential[r], "promote") for r in worse)
    fix_promote = max(_rate(fixed[r], "promote") for r in worse)
    seq_rollback = max(_rate(sequential[r], "rollback") for r in no_worse)
    fix_rollback = max(_rate(fixed[r], "rollback") for r in no_worse)
    mean_n = float(np.mean([requests[r] for r in CANARY_ERROR_RATES]))
    undecided = float(np.mean([_rate(sequential[r], "continue") for r in CANARY_ERROR_RATES]))

    rows: list[Row] = []
    for rate in CANARY_ERROR_RATES:
        mean_requests = float(np.mean(requests[rate]))
        outcomes = sequential[rate]
        rows.append(
            {
                "name": f"canary: error {rate:.1%} vs {BASELINE_ERROR_RATE:.0%}, sequential "
                "promote/rollback/undecided (baseline: fixed-horizon promote)",
                "value": f"{_rate(outcomes, 'promote'):.0%}/{_rate(outcomes, 'rollback'):.0%}/"
                f"{_rate(outcomes, 'continue'):.0%}",
                "baseline": f"{_rate(fixed[rate], 'promote'):.0%}",
            }
        )
        rows.append(
            {
                "name": f"canary: error {rate:.1%}, mean requests per variant to a decision",
                "value": round(mean_requests),
                "unit": "requests",
                "baseline": horizon,
                "ratio": round(mean_requests / horizon, 2),
            }
        )
    rows += [
        {
            "name": f"canary: mean requests per variant to a decision, all levels ({runs} runs "
            f"each; cap {CAP} counted as {CAP})",
            "value": round(mean_n),
            "unit": "requests",
            "baseline": horizon,
            "ratio": round(mean_n / horizon, 2),
        },
        {
            "name": "canary: sequential false-promotion rate, worst canary worse by >= tolerance",
            "value": round(seq_promote, 3),
            "unit": "share",
            "baseline": round(fix_promote, 3),
            "target": f"<= {ALPHA}",
            "met": seq_promote <= ALPHA,
        },
        {
            "name": "canary: sequential false-rollback rate, worst canary no worse",
            "value": round(seq_rollback, 3),
            "unit": "share",
            "baseline": round(fix_rollback, 3),
            "target": f"<= {len(specs) * ALPHA:g} (alpha per metric)",
            "met": seq_rollback <= len(specs) * ALPHA,
        },
        {
            "name": "canary: sequential runs undecided at the cap",
            "value": round(undecided, 3),
            "unit": "share",
        },
    ]
    return rows
