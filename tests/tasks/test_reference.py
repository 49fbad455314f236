"""Evidence helpers of the drift check: the calibration-shift statistic, and the reference
built from an explicit file, profiled once per content."""

import shutil

import numpy as np

from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.reference import PROFILE_FILE, calibration_shift_z, resolve_reference


def holdout_figures(rng, truth, predicted):
    labels = rng.random(len(truth)) < truth
    return {
        "positive_rate": float(labels.mean()),
        "mean_prediction": float(predicted.mean()),
        "prediction_variance_sum": float(np.sum(predicted * (1 - predicted))),
        "holdout_rows": float(len(truth)),
    }


def test_a_biased_but_unchanged_model_gives_standard_normal_z():
    rng = np.random.default_rng(0)
    z = []
    for _ in range(400):
        truth = rng.uniform(0.05, 0.6, 1_250)
        training = holdout_figures(rng, truth, truth * 0.9)
        batch = rng.uniform(0.05, 0.6, 5_000)
        labels = (rng.random(5_000) < batch).astype(float)
        z.append(calibration_shift_z(labels, batch * 0.9, training))
    assert abs(np.mean(z)) < 0.15 and 0.85 < np.std(z) < 1.15
    assert max(abs(v) for v in z) < 4.0


def test_changed_behaviour_moves_z_far_and_without_holdout_figures_the_gap_alone_counts():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.05, 0.6, 1_250)
    training = holdout_figures(rng, truth, truth)
    batch = rng.uniform(0.05, 0.6, 3_000)
    churned_more = (rng.random(3_000) < np.minimum(batch * 1.3, 1)).astype(float)
    assert calibration_shift_z(churned_more, batch, training) > 4
    calibrated = (rng.random(3_000) < batch).astype(float)
    assert abs(calibration_shift_z(calibrated, batch, {})) < 4


def profiled(path, settings):
    """The reference built from a file, and the modification time of its stored profile."""
    ref = resolve_reference.fn(str(path), "churn", settings)
    return ref, (ref.folder / PROFILE_FILE).stat().st_mtime_ns


def test_a_reference_file_is_profiled_once_per_content(home, tmp_path):
    path = write_table(generate_churn(1_500, 3), tmp_path / "ref.parquet")
    first, made = profiled(path, home)
    assert first.folder.is_relative_to(home.home) and first.suite
    again, touched = profiled(path, home)
    assert again.folder == first.folder and touched == made
    copy = shutil.copy(path, tmp_path / "elsewhere.parquet")
    moved, touched = profiled(copy, home)
    assert moved.folder == first.folder and touched == made
    assert list(moved.profile.columns) == list(first.profile.columns)


def test_a_changed_reference_file_is_profiled_again(home, tmp_path):
    path = tmp_path / "ref.parquet"
    first, _ = profiled(write_table(generate_churn(1_500, 3), path), home)
    changed, _ = profiled(write_table(generate_churn(1_500, 4), path), home)
    assert changed.folder != first.folder
    assert changed.profile.rows == 1_500 and (changed.folder / PROFILE_FILE).exists()
    missing = resolve_reference.fn(str(tmp_path / "gone.parquet"), "churn", home)
    assert missing.is_failed() and missing.name == "InvalidData"
