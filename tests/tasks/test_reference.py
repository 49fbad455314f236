"""Evidence helpers of the drift check: the calibration-shift statistic."""

import numpy as np

from agentic_mlops.tasks.reference import calibration_shift_z


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
