"""Evidence helpers of the drift check: the calibration-shift statistic, and the reference
built from an explicit file, profiled once per content."""

import shutil

import numpy as np
import pandas as pd
import pytest

from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.reference import (
    PROFILE_FILE,
    calibration_shift_z,
    paired_gain_standard_error,
    resolve_reference,
)


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


def paired_bootstrap(task, labels, previous, current, draws=400):
    """The spread of the metric gain over rows drawn again with replacement."""
    from agentic_mlops.decisions import task_metric

    rng = np.random.default_rng(7)
    gains = []
    for _ in range(draws):
        rows = rng.integers(0, len(labels), len(labels))
        gains.append(
            task_metric(task, labels[rows], previous[rows])
            - task_metric(task, labels[rows], current[rows])
        )
    return float(np.std(gains))


def two_models(task):
    """Two models of one of scikit-learn's own tables, fitted on its first half and scored on
    the second: a binary tumour classifier, a multiclass wine classifier, a diabetes regressor."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    loader = {"binary": load_breast_cancer, "multiclass": load_wine, "regression": load_diabetes}
    x, y = loader[task](return_X_y=True)
    order = np.random.default_rng(3).permutation(len(y))
    x, y = x[order], y[order]
    half = len(y) // 2
    if task == "regression":
        first, second = LinearRegression(), DecisionTreeRegressor(max_depth=3, random_state=0)
    else:
        first = LogisticRegression(max_iter=5_000)
        second = DecisionTreeClassifier(max_depth=2, random_state=0)
    scores = []
    for model in (first, second):
        model.fit(x[:half], y[:half])
        if task == "binary":
            scores.append(model.predict_proba(x[half:])[:, 1])
        else:
            scores.append(model.predict(x[half:]).astype(float))
    return y[half:], scores[0], scores[1]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_gain_of_one_model_over_another_has_the_standard_error_a_bootstrap_finds(task):
    labels, previous, current = two_models(task)
    bootstrap = paired_bootstrap(task, labels, previous, current)
    assert paired_gain_standard_error(task, labels, previous, current) == pytest.approx(
        bootstrap, rel=0.2
    )


def test_shuffled_labels_give_a_standard_error_that_covers_the_noise_of_the_gain():
    """Two models of the same table, judged on labels shuffled by a broken join: each batch's
    gain is noise, and it exceeds twice its standard error about as rarely as a normal
    variable exceeds 2 (one side: 2.3%)."""
    from agentic_mlops.decisions import task_metric

    labels, previous, current = two_models("binary")
    rng = np.random.default_rng(11)
    beyond = 0
    for _ in range(300):
        shuffled = rng.permutation(labels)
        gain = task_metric("binary", shuffled, previous) - task_metric("binary", shuffled, current)
        beyond += gain >= 2 * paired_gain_standard_error("binary", shuffled, previous, current)
    assert beyond / 300 < 0.06


def test_one_class_gives_no_standard_error():
    scores = np.linspace(0, 1, 10)
    assert paired_gain_standard_error("binary", np.ones(10), scores, scores[::-1]) is None


def test_two_versions_with_other_class_lists_are_each_judged_by_their_own(tmp_path):
    """Classes named by text are coded by each version's class list: a previous champion
    that knew two of the three classes is still judged by the names it predicted."""
    from agentic_mlops.tasks.drift import build_profile
    from agentic_mlops.tasks.reference import (
        BatchScores,
        ModelCard,
        Reference,
        labelled_performance,
    )

    rng = np.random.default_rng(4)
    names = np.array(["a", "b", "c"])
    truth = names[rng.integers(0, 3, 300)]
    current = np.where(rng.random(300) < 0.8, truth, names[rng.integers(0, 3, 300)])
    previous = np.where(truth == "b", "c", truth)  # never says "b": its classes are a and c
    frame = pd.DataFrame({"x": rng.normal(size=300), "kind": truth})
    card = ModelCard(model_name="m", target="kind", task="multiclass", metrics={"accuracy": 0.8})
    ref = Reference(
        profile=build_profile(frame[["x"]]),
        suite={},
        card=card,
        sample=frame.head(5),
        version=2,
        previous_version=1,
        folder=tmp_path,
    )
    scores = BatchScores(
        champion=np.searchsorted(names, current).astype(float),
        previous_champion=np.searchsorted(["a", "c"], previous).astype(float),
        champion_classes=list(names),
        previous_classes=["a", "c"],
    )
    found = labelled_performance(frame, "kind", ref, scores)
    assert found.metric == "accuracy"
    assert found.current == pytest.approx(np.mean(current == truth))
    assert found.previous_champion_current == pytest.approx(np.mean(previous == truth))
    gains = (previous == truth).astype(float) - (current == truth).astype(float)
    assert found.previous_champion_gain_standard_error == pytest.approx(
        np.std(gains, ddof=1) / np.sqrt(300)
    )
