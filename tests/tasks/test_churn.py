import numpy as np
import pandas as pd
import pytest

from agentic_mlops.tasks.churn import (
    CONTRACTS,
    FEATURES,
    PRICE_RISE,
    SCENARIOS,
    TARGET,
    churn_probability,
    generate_batches,
    generate_churn,
)


def test_same_seed_gives_the_same_table_and_another_seed_does_not():
    pd.testing.assert_frame_equal(generate_churn(500, seed=7), generate_churn(500, seed=7))
    assert not generate_churn(500, seed=7).equals(generate_churn(500, seed=8))


def test_reference_table_is_mixed_complete_and_plausible():
    frame = generate_churn(5_000, seed=1)
    assert list(frame.columns) == [*FEATURES, TARGET]
    assert frame.notna().all().all()
    assert set(frame["contract"]) == set(CONTRACTS)
    assert frame["tenure_months"].between(0, 72).all()
    assert frame["monthly_charges"].between(18, 120).all()
    assert 0.15 < frame[TARGET].mean() < 0.35


def test_label_follows_the_ground_truth_function():
    frame = generate_churn(20_000, seed=3)
    probability = churn_probability(frame)
    high, low = frame[probability > 0.5], frame[probability < 0.1]
    assert high[TARGET].mean() > 0.5 > low[TARGET].mean()


def test_covariate_drift_raises_prices_and_keeps_the_relationship():
    reference, drifted = generate_churn(10_000, 1), generate_churn(10_000, 1, "covariate")
    ratio = drifted["monthly_charges"].mean() / reference["monthly_charges"].mean()
    assert ratio == pytest.approx(1 + PRICE_RISE, rel=0.02)
    expected = churn_probability(drifted).mean()
    assert drifted[TARGET].mean() == pytest.approx(expected, abs=0.02)


def test_concept_drift_keeps_inputs_and_changes_the_label():
    reference, drifted = generate_churn(10_000, 1), generate_churn(10_000, 1, "concept")
    pd.testing.assert_frame_equal(reference[list(FEATURES)], drifted[list(FEATURES)])
    helped = reference["support_calls"] >= 3
    assert drifted.loc[helped, TARGET].mean() < reference.loc[helped, TARGET].mean() - 0.15
    expensive, cheap = reference["monthly_charges"] > 90, reference["monthly_charges"] < 50
    gap = lambda frame: frame.loc[expensive, TARGET].mean() - frame.loc[cheap, TARGET].mean()  # noqa: E731
    assert gap(drifted) > gap(reference)


def test_quality_scenario_breaks_schema_values_and_nulls():
    frame = generate_churn(5_000, 1, "quality")
    assert "PaymentMethod" in frame.columns and "payment_method" not in frame.columns
    assert "support_calls" not in frame.columns
    assert frame["monthly_charges"].isna().mean() == pytest.approx(0.2, abs=0.03)
    assert (frame["tenure_months"] < 0).any()
    assert "unknown_plan" in set(frame["contract"])


def test_gradual_drift_grows_over_batches():
    batches = generate_batches(5, 3_000, seed=1, scenario="gradual")
    means = [batch["monthly_charges"].mean() for batch in batches]
    assert np.all(np.diff(means) > 0)
    assert means[-1] / means[0] == pytest.approx(1 + PRICE_RISE, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "tsunami"}, "unknown scenario"),
        ({"n_rows": 0}, "n_rows"),
        ({"severity": 1.5}, "severity"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_churn(**kwargs)


def test_every_scenario_is_generated():
    for scenario in SCENARIOS:
        assert len(generate_churn(50, 1, scenario)) == 50
