"""One score for any MLflow model: real models saved by MLflow's flavours, loaded by URI."""

from __future__ import annotations

import importlib

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LinearRegression, LogisticRegression

from agentic_mlops.serving.model_server import ModelServer
from agentic_mlops.tasks.scoring import (
    ScoringError,
    check_task,
    infer_task,
    load_scoring_model,
    model_task,
    requirement_mismatches,
    score_kind,
)

GENERATOR = np.random.default_rng(0)
ROWS = pd.DataFrame(
    {
        "tumour size": GENERATOR.normal(10, 2, 200),
        "visits": GENERATOR.integers(0, 5, 200).astype("int64"),
    }
)
LABELS = pd.Series((ROWS["tumour size"] + GENERATOR.normal(0, 1, 200) > 10).astype(int), name="y")
AMOUNTS = pd.Series(3 * ROWS["tumour size"] + ROWS["visits"], name="amount")


def saved(tmp_path, model, signature_outputs=None, **options) -> str:
    path = tmp_path / "model"
    signature = (
        infer_signature(ROWS.astype({"visits": "float64"}), signature_outputs)
        if signature_outputs is not None
        else None
    )
    mlflow.sklearn.save_model(model, path, signature=signature, **options)
    return str(path)


def test_a_classifier_scores_its_positive_class_probability(tmp_path):
    classifier = LogisticRegression().fit(ROWS, LABELS)
    model = load_scoring_model(saved(tmp_path, classifier, classifier.predict(ROWS)))
    assert model_task(model) == "binary" and score_kind("binary", model).startswith("positive")
    scores = model.score(ROWS, "binary")
    np.testing.assert_allclose(scores, classifier.predict_proba(ROWS)[:, 1])
    # a pyfunc alone would give labels: the score is not what pyfunc.predict returns
    assert set(np.unique(model.pyfunc.predict(ROWS.astype({"visits": "float64"})))) <= {0, 1}


def test_our_own_probability_pair_models_keep_working(tmp_path):
    classifier = LogisticRegression().fit(ROWS, LABELS)
    uri = saved(
        tmp_path,
        classifier,
        classifier.predict_proba(ROWS),
        pyfunc_predict_fn="predict_proba",
    )
    model = load_scoring_model(uri)
    np.testing.assert_allclose(model.score(ROWS, "binary"), classifier.predict_proba(ROWS)[:, 1])


def test_a_regressor_scores_its_prediction_and_refuses_to_classify(tmp_path):
    regressor = LinearRegression().fit(ROWS, AMOUNTS)
    model = load_scoring_model(saved(tmp_path, regressor, regressor.predict(ROWS)))
    assert model_task(model) == "regression" == infer_task(model, ROWS, AMOUNTS)
    np.testing.assert_allclose(model.score(ROWS, "regression"), regressor.predict(ROWS))
    with pytest.raises(ScoringError, match="does not match the model, a regressor"):
        check_task(model, "binary", ROWS, LABELS)


def test_the_signature_names_a_missing_or_wrong_column_in_one_line(tmp_path):
    classifier = LogisticRegression().fit(ROWS, LABELS)
    model = load_scoring_model(saved(tmp_path, classifier, classifier.predict(ROWS)))
    with pytest.raises(ScoringError, match=r"input column\(s\) 'visits'") as missing:
        model.score(ROWS.drop(columns=["visits"]), "binary")
    assert "\n" not in str(missing.value)
    with pytest.raises(ScoringError, match="column 'tumour size' must be numbers"):
        model.score(ROWS.assign(**{"tumour size": "big"}), "binary")
    # extra columns are left out, integer columns cast to the declared doubles
    assert len(model.score(ROWS.assign(extra="x"), "binary")) == len(ROWS)


def test_without_a_signature_the_estimators_feature_names_are_checked(tmp_path):
    classifier = LogisticRegression().fit(ROWS, LABELS)
    model = load_scoring_model(saved(tmp_path, classifier))
    assert model.inputs is None
    np.testing.assert_allclose(model.score(ROWS, "binary"), classifier.predict_proba(ROWS)[:, 1])
    with pytest.raises(ScoringError, match="'tumour size'"):
        model.score(ROWS.drop(columns=["tumour size"]), "binary")


class Doubled(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input["tumour size"].to_numpy() * 2


def test_a_custom_pyfunc_scores_its_output_and_its_task_is_read_from_the_labels(tmp_path):
    path = tmp_path / "doubled"
    mlflow.pyfunc.save_model(path, python_model=Doubled())
    model = load_scoring_model(str(path))
    assert model.native is None and model_task(model) is None
    assert infer_task(model, ROWS, AMOUNTS) == "regression"
    np.testing.assert_allclose(model.score(ROWS, "regression"), ROWS["tumour size"] * 2)
    with pytest.raises(ScoringError, match="outside 0..1"):
        check_task(model, "binary", ROWS, LABELS)


class Sized(mlflow.pyfunc.PythonModel):
    """A team's custom pyfunc naming its classes by text, listed as `classes_` when given."""

    def __init__(self, classes=None):
        if classes is not None:
            self.classes_ = classes

    def predict(self, context, model_input, params=None):
        return np.where(model_input["tumour size"] > 10, "large", "small")


def test_a_custom_pyfunc_naming_its_classes_by_text_scores_them_by_its_class_list(tmp_path):
    mlflow.pyfunc.save_model(tmp_path / "listed", python_model=Sized(["large", "small"]))
    listed = load_scoring_model(str(tmp_path / "listed"))
    sizes = pd.Series(np.where(ROWS["tumour size"] > 10, "large", "small"), name="size")
    assert listed.classes == ["large", "small"] and model_task(listed) == "binary"
    check_task(listed, "multiclass", ROWS, sizes)
    codes = listed.score(ROWS, "multiclass")
    np.testing.assert_array_equal(codes, (ROWS["tumour size"] <= 10).astype(float))
    np.testing.assert_array_equal(listed.coded(sizes, "multiclass"), codes)
    mlflow.pyfunc.save_model(tmp_path / "unlisted", python_model=Sized())
    unlisted = load_scoring_model(str(tmp_path / "unlisted"))
    with pytest.raises(ScoringError, match="lists no classes .*give its PythonModel a `classes_`"):
        unlisted.score(ROWS, "multiclass")
    with pytest.raises(ScoringError, match="lists no classes"):
        check_task(unlisted, "multiclass", ROWS, sizes)


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path):
    with pytest.raises(ScoringError, match="cannot be loaded"):
        load_scoring_model(str(tmp_path / "absent"))


@pytest.mark.parametrize("flavour", ["xgboost", "lightgbm"])
def test_boosted_classifiers_score_their_positive_class_through_their_flavour(tmp_path, flavour):
    if flavour == "xgboost":
        from xgboost import XGBClassifier

        classifier = XGBClassifier(n_estimators=20, max_depth=2, n_jobs=1)
    else:
        from lightgbm import LGBMClassifier

        classifier = LGBMClassifier(n_estimators=20, num_leaves=4, n_jobs=1, verbose=-1)
    classifier.fit(ROWS, LABELS)
    save_model = importlib.import_module(f"mlflow.{flavour}").save_model
    save_model(
        classifier,
        str(tmp_path / "model"),
        signature=infer_signature(ROWS, classifier.predict_proba(ROWS)),
    )
    model = load_scoring_model(str(tmp_path / "model"))
    assert model.flavour == flavour and model_task(model) == "binary"
    np.testing.assert_allclose(
        model.score(ROWS, "binary"), classifier.predict_proba(ROWS)[:, 1], rtol=1e-6
    )


def test_a_multiclass_model_server_answers_its_class_probabilities(tmp_path):
    kinds = pd.Series(np.digitize(ROWS["tumour size"], [9, 11]), name="kind")
    classifier = LogisticRegression(max_iter=1_000).fit(ROWS, kinds)
    model = load_scoring_model(saved(tmp_path, classifier, classifier.predict(ROWS)))
    server = ModelServer(model, "kind", "1")
    answer = server.answer(ROWS.head(4).to_dict("records"))
    assert answer["task"] == "multiclass" and answer["classes"] == [0, 1, 2]
    np.testing.assert_allclose(answer["predictions"], classifier.predict(ROWS.head(4)))
    np.testing.assert_allclose(
        answer["probabilities"], classifier.predict_proba(ROWS.head(4)), atol=1e-6
    )
    binary = ModelServer(
        load_scoring_model(saved(tmp_path / "b", LogisticRegression().fit(ROWS, LABELS))), "y", "1"
    )
    assert set(binary.answer(ROWS.head(2).to_dict("records"))) == {"predictions", "task"}


def test_the_model_server_answers_with_the_score(tmp_path):
    regressor = LinearRegression().fit(ROWS, AMOUNTS)
    model = load_scoring_model(saved(tmp_path, regressor, regressor.predict(ROWS)))
    server = ModelServer(model, "amount", "1")
    assert server.task == "regression"
    rows = ROWS.head(3).to_dict("records")
    np.testing.assert_allclose(server.score(rows), regressor.predict(ROWS.head(3)))


def test_loading_a_model_leaves_no_tracking_uri_in_the_environment(tmp_path, monkeypatch):
    """MLflow's setter exports its URI: left there, every later home of this process (a test
    session's, the check server's) would read and write the first home's registry."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    classifier = LogisticRegression().fit(ROWS, LABELS)
    uri = saved(tmp_path, classifier, classifier.predict(ROWS))
    load_scoring_model(uri, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_model_logged_with_other_packages_is_told_and_loaded_once(tmp_path):
    """Loading skips MLflow's requirements check (a scan of every installed distribution);
    `requirement_mismatches`, which adoption runs, names what differs. The flavour's own model
    is the one the pyfunc holds, not a second copy."""
    classifier = LogisticRegression().fit(ROWS, LABELS)
    uri = saved(tmp_path, classifier, pip_requirements=["scikit-learn==0.24.2", "numpy"])
    model = load_scoring_model(uri)
    assert model.native is model.pyfunc.get_raw_model()
    [mismatch] = requirement_mismatches(uri, mlflow.get_tracking_uri())
    assert mismatch.startswith("scikit-learn (current: ") and "scikit-learn==0.24.2" in mismatch
    assert requirement_mismatches(saved(tmp_path / "same", classifier), "") == []
