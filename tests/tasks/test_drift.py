"""Drift against a stored profile: parity with Evidently, the sequential detector, bad input."""

import numpy as np
import pandas as pd
import pytest

from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.churn import generate_batches, generate_churn
from agentic_mlops.tasks.drift import (
    CusumState,
    build_profile,
    chi_square_evidence,
    column_kind,
    compare_to_profile,
    cusum_step,
    evidently_report,
    load_profile,
    save_profile,
    update_sequential,
)
from benchmarks.drift import evidently_columns

SETTINGS = Settings()


def features(frame):
    return frame.drop(columns=["churn"])


@pytest.mark.parametrize("reference_rows", [4_000, 600], ids=["large", "small"])
@pytest.mark.parametrize("scenario", ["none", "covariate", "gradual"])
def test_verdicts_and_scores_agree_with_evidently(reference_rows, scenario):
    reference = features(generate_churn(reference_rows, 1))
    current = features(generate_churn(1_500, 50, scenario))
    ours = compare_to_profile(build_profile(reference), current, settings=SETTINGS)
    theirs = evidently_columns(evidently_report(build_profile(reference), reference, current))
    assert set(ours.columns) == set(theirs)
    for name, column in ours.columns.items():
        assert column.score == pytest.approx(theirs[name][1], abs=2e-3), name
        assert column.drifted == (
            column.score >= 0.1
            if column.test in ("wasserstein", "jensenshannon")
            else column.score < 0.05
        )
    if reference_rows > 1_000:
        assert {c.test for c in ours.columns.values()} == {"wasserstein", "jensenshannon"}
    if scenario == "covariate":
        assert ours.columns["monthly_charges"].drifted


def test_column_kinds_follow_evidently():
    frame = pd.DataFrame(
        {
            "price": [1.5, 2.0, 3.0, 4.0],
            "few": [1, 2, 3, 1],
            "name": ["a", "b", "a", "a"],
            "flag": [True, False, True, True],
            "when": pd.to_datetime(["2026-01-01"] * 4),
            "ids": ["x1", "x2", "x3", "x4"],
        }
    )
    kinds = {name: column_kind(frame[name]) for name in frame}
    assert kinds == {
        "price": "numerical",
        "few": "categorical",
        "name": "categorical",
        "flag": "categorical",
        "when": None,
        "ids": None,
    }
    assert column_kind(pd.Series(range(50))) == "numerical"


def test_profile_round_trips_without_the_reference(tmp_path):
    reference = features(generate_churn(3_000, 1))
    path = save_profile(
        build_profile(reference, prediction=np.linspace(0, 1, 3_000)), tmp_path / "profile.json"
    )
    current = features(generate_churn(1_000, 2, "covariate"))
    loaded = load_profile(path)
    result = compare_to_profile(
        loaded, current, prediction=np.linspace(0.2, 1, 1_000), settings=SETTINGS
    )
    direct = compare_to_profile(build_profile(reference), current, settings=SETTINGS)
    assert {n: c.score for n, c in result.columns.items()} == pytest.approx(
        {n: c.score for n, c in direct.columns.items()}
    )
    assert result.prediction is not None and result.prediction.drifted


def test_a_bad_profile_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such reference profile"):
        load_profile(tmp_path / "absent.json")
    (tmp_path / "p.json").write_text('{"rows": "many"}')
    with pytest.raises(DataError, match="unreadable reference profile"):
        load_profile(tmp_path / "p.json")


def test_missing_empty_and_retyped_columns_are_skipped_with_a_reason():
    profile = build_profile(features(generate_churn(2_000, 1)))
    current = features(generate_churn(500, 2)).drop(columns=["support_calls"])
    current["monthly_charges"] = "n/a"
    current["tenure_months"] = np.nan
    current["extra"] = 1
    result = compare_to_profile(profile, current, settings=SETTINGS)
    assert result.skipped["support_calls"] == "missing from the batch"
    assert "numerical in the reference" in result.skipped["monthly_charges"]
    assert result.skipped["tenure_months"] == "no values in the batch"
    assert result.skipped["extra"] == "not in the reference"
    assert "monthly_charges" not in result.columns and result.columns


def test_no_shared_testable_column_is_an_error():
    profile = build_profile(features(generate_churn(2_000, 1)))
    with pytest.raises(DataError, match="no testable column"):
        compare_to_profile(profile, pd.DataFrame({"other": [1, 2]}), settings=SETTINGS)


def test_chi_square_evidence_is_standard_normal_without_drift():
    rng = np.random.default_rng(0)
    probabilities = np.full(10, 0.1)
    z = [
        chi_square_evidence(
            rng.multinomial(5_000, probabilities).astype(float),
            rng.multinomial(800, probabilities).astype(float),
        )
        for _ in range(2_000)
    ]
    assert abs(np.mean(z)) < 0.1 and 0.9 < np.std(z) < 1.1


def run_cusum(profile, batches):
    state, alarms, per_batch = CusumState(), [], []
    for frame in batches:
        result = compare_to_profile(profile, features(frame), settings=SETTINGS)
        state = cusum_step(
            state,
            result,
            SETTINGS.sequential.k,
            SETTINGS.sequential.h,
            SETTINGS.sequential.min_effect,
        )
        alarms.append(bool(state.alarm_columns))
        per_batch.append(any(c.drifted for c in result.columns.values()))
    return alarms, per_batch


def test_sequential_detector_sees_gradual_drift_before_any_single_batch_test():
    profile = build_profile(features(generate_churn(10_000, 1)))
    alarms, per_batch = run_cusum(profile, generate_batches(30, 1_000, 300, "gradual"))
    assert alarms[-1] and per_batch[-1]
    assert alarms.index(True) < per_batch.index(True)


def test_sequential_detector_stays_quiet_on_drift_free_batches():
    profile = build_profile(features(generate_churn(10_000, 1)))
    alarms, _ = run_cusum(profile, generate_batches(60, 1_000, 500, "none"))
    assert not any(alarms)


def test_history_restarts_with_a_new_reference_and_a_retried_batch_counts_once(home):
    profile = build_profile(features(generate_churn(3_000, 1)))
    drifted = compare_to_profile(
        profile, features(generate_churn(1_000, 2, "covariate")), settings=home
    )
    first = update_sequential.fn("churn", "b1", drifted, "v1", home)
    again = update_sequential.fn("churn", "b1", drifted, "v1", home)
    assert first.detector_state == again.detector_state
    assert again.detector_state["batches"] == 1
    second = update_sequential.fn("churn", "b2", drifted, "v1", home)
    assert second.detector_state["batches"] == 2 and second.sequential_alarm
    fresh = update_sequential.fn("churn", "b3", drifted, "v2", home)
    assert fresh.detector_state["batches"] == 1 and fresh.detector_state["reference"] == "v2"
    assert [o.batch_id for o in ledger.drift_history("churn", settings=home)] == ["b1", "b2", "b3"]
