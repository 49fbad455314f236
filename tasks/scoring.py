"""Scoring any MLflow model: one loader and one score, for drift checks, serving and evaluation.

A model is loaded by URI (`models:/NAME/VERSION`, `runs:/...`) through its MLflow flavour.
Its *score* is one number per row, the same wherever the model is scored:

- a classifier whose flavour offers `predict_proba` (scikit-learn, XGBoost and LightGBM
  through their MLflow flavours): the positive-class probability (binary), else the
  predicted label (multiclass, or a classifier without probabilities);
- a multiclass label is a number: numeric classes as they are, classes named by text
  ("setosa") as their position in the model's class list (`class_codes`); labels of a table
  are coded by the same list before they meet the scores;
- a model logged with `pyfunc_predict_fn="predict_proba"` (our own churn models): the
  second column of what `predict` returns;
- a regression model: its prediction;
- a custom `pyfunc` model: its `predict`, one column (or the second of two, for a binary
  probability pair).

When the model has a column signature, a batch is checked against it first: a missing
column, or text where the signature asks for a number, raises `ScoringError` with a one-line
message naming the column. Integer columns are cast to what the signature declares.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from agentic_mlops.decisions import Task
from agentic_mlops.tasks.batches import DataError
from agentic_mlops.tasks.classes import class_positions, named_by_text
from agentic_mlops.tasks.mlflow_environment import tracking_at

NATIVE_FLAVOURS = ("sklearn", "xgboost", "lightgbm")
"""MLflow flavours whose native model is loaded beside the pyfunc, for `predict_proba`."""
_NUMERIC_TYPES = {"double", "float", "long", "integer"}


class ScoringError(DataError):
    """A model that cannot be loaded, or a batch it cannot score as it is."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


@dataclass
class ScoringModel:
    """A loaded MLflow model: its pyfunc, its native model where the flavour has one, and its
    input columns from the signature."""

    uri: str
    pyfunc: Any
    native: Any | None
    flavour: str
    inputs: list[tuple[str, str]] | None
    proba_from_pyfunc: bool

    @classmethod
    def of(cls, model: Any, uri: str = "model") -> ScoringModel:
        """Any object with a pyfunc-like `predict` (a test double, a model in memory)."""
        return cls(uri, model, None, "python_function", None, False)

    @property
    def classes(self) -> list[Any] | None:
        """The classifier's classes, when its native model says (or a custom pyfunc model's
        `PythonModel` lists them as `classes_`)."""
        classes = getattr(self.native, "classes_", None)
        if classes is None and self.native is None:
            classes = getattr(_python_model(self.pyfunc), "classes_", None)
        return list(classes) if classes is not None else None

    def coded(self, labels: pd.Series, task: Task) -> pd.Series:
        """A table's labels as they meet this model's scores: multiclass labels coded as its
        scores are (`class_codes`), other tasks' as they are."""
        return coded_labels(labels, self.classes) if task == "multiclass" else labels

    @property
    def has_proba(self) -> bool:
        return self.proba_from_pyfunc or callable(getattr(self.native, "predict_proba", None))

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The batch as the model takes it: the signature's columns in its order, integer
        columns cast to its types.

        Raises:
            ScoringError: a column the signature asks for is missing, or holds text where
                a number is declared.
        """
        if self.inputs is None:
            expected = getattr(self.native, "feature_names_in_", None)
            if expected is None:
                return frame
            names = [str(n) for n in expected]
            missing = [n for n in names if n not in frame.columns]
            if missing:
                raise ScoringError(_missing_message(self.uri, missing, len(names)))
            return frame[names]
        names = [name for name, _ in self.inputs]
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise ScoringError(_missing_message(self.uri, missing, len(names)))
        rows = frame[names]
        casts: dict[str, str] = {}
        for name, kind in self.inputs:
            values = rows[name]
            numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
            if kind in _NUMERIC_TYPES and not numeric:
                raise ScoringError(
                    f"{self.uri}: column {name!r} must be numbers ({kind} in the model's "
                    f"signature), got {values.dtype}"
                )
            if kind in ("double", "float") and pd.api.types.is_integer_dtype(values):
                casts[name] = "float64" if kind == "double" else "float32"
            elif kind in ("long", "integer") and pd.api.types.is_float_dtype(values):
                whole = values.dropna()
                if values.notna().all() and (whole == whole.round()).all():
                    casts[name] = "int64" if kind == "long" else "int32"
        return rows.astype(casts) if casts else rows

    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        """What the model's `predict` returns for a conformed batch, as an array."""
        try:
            if self.native is not None:
                return np.asarray(self.native.predict(frame))
            return np.asarray(self.pyfunc.predict(frame))
        except Exception as error:  # the model's own refusal of a batch: one line, named
            raise ScoringError(
                f"{self.uri}: cannot score the batch ({_one_line(error)})"
            ) from error

    def probabilities(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Class probabilities of a conformed batch, one column per class; None without them."""
        try:
            if self.proba_from_pyfunc:
                return np.asarray(self.pyfunc.predict(frame), dtype=float)
            if callable(getattr(self.native, "predict_proba", None)):
                return np.asarray(self.native.predict_proba(frame), dtype=float)
        except ScoringError:
            raise
        except Exception as error:
            raise ScoringError(
                f"{self.uri}: cannot score the batch ({_one_line(error)})"
            ) from error
        return None

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted labels (classifiers) or predictions (regression) of a conformed batch."""
        return _one_column(self.outputs(frame), self.uri)

    def score(self, frame: pd.DataFrame, task: Task) -> np.ndarray:
        """One score per row (see the module docstring), after checking the signature."""
        rows = self.conform(frame)
        if task == "binary":
            probabilities = self.probabilities(rows)
            if probabilities is not None:
                if probabilities.ndim == 2 and probabilities.shape[1] == 2:
                    return probabilities[:, 1]
                raise ScoringError(
                    f"{self.uri}: a binary task needs two class probabilities, the model "
                    f"gives {probabilities.shape[-1] if probabilities.ndim == 2 else 1}"
                )
            outputs = self.outputs(rows)
            if outputs.ndim == 2 and outputs.shape[1] == 2:
                return outputs[:, 1].astype(float)
            return _one_column(outputs, self.uri).astype(float)
        if task == "multiclass":
            return class_codes(self.labels(rows), self.classes, self.uri)
        return _one_column(self.outputs(rows), self.uri).astype(float)


def _python_model(pyfunc: Any) -> Any:
    try:
        return pyfunc.unwrap_python_model()
    except Exception:  # not a custom pyfunc model: no PythonModel to ask
        return None


def class_codes(labels: Any, classes: list[Any] | None, source: str) -> np.ndarray:
    """Multiclass labels as the numbers a multiclass score is (`tasks/classes.py`): numeric
    classes as they are, classes named by text as their position in `classes`. The model
    server sends the class list beside its scores, so the router reads a label by its name.

    Raises:
        ScoringError: the classes are named by text and no class list is known.
    """
    values = np.asarray(labels).ravel()
    if named_by_text(values) and classes is None:
        shown = sorted({str(label) for label in values})[:3]
        raise ScoringError(
            f"{source}: the classes are named by text ({', '.join(repr(s) for s in shown)}) "
            "but the model lists no classes (`classes_`): give its PythonModel a `classes_` "
            "attribute, or encode the classes as 0, 1, 2..."
        )
    return class_positions(values, classes or [])


def coded_labels(labels: pd.Series, classes: list[Any] | None) -> pd.Series:
    """A table's multiclass labels coded by a model's class list (`class_codes`)."""
    codes = class_codes(labels, classes, f"target column {labels.name!r}")
    return pd.Series(codes, index=labels.index, name=labels.name)


def _missing_message(uri: str, missing: list[str], expected: int) -> str:
    shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return f"{uri}: the batch lacks the model's input column(s) {shown} ({expected} expected)"


def _one_column(outputs: np.ndarray, uri: str) -> np.ndarray:
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim != 1:
        raise ScoringError(
            f"{uri}: the model returns {outputs.shape[1]} columns per row; one was expected"
        )
    return outputs


def _signature_inputs(pyfunc: Any) -> list[tuple[str, str]] | None:
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return None
    try:
        return [(spec.name, getattr(spec.type, "name", str(spec.type))) for spec in schema.inputs]
    except AttributeError:  # tensor or object specs: MLflow's own enforcement applies
        return None


def _native_model(uri: str, pyfunc: Any) -> tuple[Any | None, str]:
    """The flavour's own model object beside the pyfunc, for `predict_proba`: the one the
    pyfunc already holds when the flavour loaded it (no second download and deserialisation),
    else loaded by the flavour."""
    flavours = pyfunc.metadata.flavors
    loader = flavours.get("python_function", {}).get("loader_module")
    for flavour in NATIVE_FLAVOURS:
        if flavour not in flavours:
            continue
        if loader == f"mlflow.{flavour}":
            return pyfunc.get_raw_model(), flavour
        try:
            module = importlib.import_module(f"mlflow.{flavour}")
            return module.load_model(uri), flavour
        except ImportError:  # the flavour's library is not installed: the pyfunc scores alone
            return None, flavour
    return None, "python_function"


@lru_cache(maxsize=16)
def _load(uri: str, tracking_uri: str) -> ScoringModel:
    import mlflow.pyfunc

    try:
        with tracking_at(tracking_uri):
            # MLflow's check of the model's requirements against what is installed scans
            # every installed distribution: 1.3 s in each new process, a model server's
            # start included; adoption runs it once (`requirement_mismatches`)
            pyfunc = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
            native, flavour = _native_model(uri, pyfunc)
    except (MlflowException, OSError) as error:
        raise ScoringError(f"{uri}: the model cannot be loaded ({_one_line(error)})") from error
    except Exception as error:  # a corrupt or incompatible artifact fails in many ways
        raise ScoringError(f"{uri}: the model cannot be loaded ({_one_line(error)})") from error
    sklearn_conf = pyfunc.metadata.flavors.get("sklearn", {})
    proba_from_pyfunc = sklearn_conf.get("pyfunc_predict_fn") == "predict_proba"
    return ScoringModel(
        uri=uri,
        pyfunc=pyfunc,
        native=native,
        flavour=flavour,
        inputs=_signature_inputs(pyfunc),
        proba_from_pyfunc=proba_from_pyfunc,
    )


def requirement_mismatches(uri: str, tracking_uri: str) -> list[str]:
    """The model's logged pip requirements that the packages installed here do not meet, as
    MLflow words them ("scikit-learn (current: 1.9.1, required: scikit-learn==1.3.0)")."""
    from mlflow.pyfunc import get_model_dependencies
    from mlflow.utils.requirements_utils import _check_requirement_satisfied, _parse_requirements

    with tracking_at(tracking_uri):
        path = get_model_dependencies(uri)
    found = []
    for requirement in _parse_requirements(path, is_constraint=False):
        mismatch = _check_requirement_satisfied(requirement.req_str)
        if mismatch is not None:
            found.append(str(mismatch))
    return found


def load_scoring_model(uri: str, tracking_uri: str | None = None) -> ScoringModel:
    """Load a model by URI (cached per URI and tracking URI).

    Raises:
        ScoringError: the model does not exist or its artifact cannot be loaded.
    """
    return _load(uri, tracking_uri or mlflow.get_tracking_uri())


def model_task(model: ScoringModel) -> Task | None:
    """The task the model itself declares: a classifier's classes say binary or multiclass;
    our own probability-pair models are binary; None when the model does not say."""
    if model.proba_from_pyfunc and model.classes is None:
        return "binary"
    if model.classes is not None:
        return "binary" if len(model.classes) == 2 else "multiclass"
    if model.native is not None and hasattr(model.native, "fit"):
        from sklearn.base import is_regressor

        try:
            if is_regressor(model.native):
                return "regression"
        except Exception:  # an estimator without scikit-learn's tags says nothing
            return None
    return None


def infer_task(model: ScoringModel, features: pd.DataFrame, labels: pd.Series) -> Task:
    """The task of a model on labelled rows: what the model declares, else what its outputs
    and the labels show (outputs all among two 0/1 labels: binary; among a few labels:
    multiclass; anything else: regression)."""
    declared = model_task(model)
    if declared is not None:
        return declared
    outputs = model.outputs(model.conform(features))
    if outputs.ndim == 2 and outputs.shape[1] == 2:
        return "binary"
    values = pd.Series(_one_column(outputs, model.uri))
    known = set(pd.unique(labels.dropna()))
    if known <= {0, 1} and values.between(0, 1).all():
        return "binary"
    if set(pd.unique(values)) <= known and len(known) <= 20:
        return "multiclass"
    return "regression"


def check_task(model: ScoringModel, task: Task, features: pd.DataFrame, labels: pd.Series) -> None:
    """Raise `ScoringError` when the task asked for does not match the model and its labels.

    Raises:
        ScoringError: a classifier asked to regress, a regressor asked to classify, a binary
            task on a model or labels with other than two classes, multiclass labels named by
            text that are none of the model's classes, or that the model cannot code.
    """
    declared = model_task(model)
    if task == "regression" and declared in ("binary", "multiclass"):
        raise ScoringError(
            f"{model.uri}: task 'regression' does not match the model, a {declared} classifier"
        )
    if task in ("binary", "multiclass") and declared == "regression":
        raise ScoringError(f"{model.uri}: task {task!r} does not match the model, a regressor")
    if task == "binary" and declared == "multiclass":
        raise ScoringError(
            f"{model.uri}: task 'binary' does not match the model's {len(model.classes)} classes"
        )
    present = set(pd.unique(labels.dropna()))
    if task == "binary" and not present <= {0, 1}:
        raise ScoringError(
            f"task 'binary' needs 0/1 labels; {labels.name!r} holds {sorted(map(str, present))[:5]}"
        )
    if task in ("binary", "multiclass") and declared is None:
        values = model.score(features, task)
        if task == "binary" and not ((values >= 0) & (values <= 1)).all():
            raise ScoringError(
                f"{model.uri}: task 'binary' does not match the model's outputs (values "
                f"outside 0..1, e.g. {values[(values < 0) | (values > 1)][0]:.4g})"
            )
    if task == "regression" and not pd.api.types.is_numeric_dtype(labels):
        raise ScoringError(f"task 'regression' needs numeric labels; {labels.name!r} is not")
    if task == "multiclass" and named_by_text(pd.unique(labels.dropna())):
        known = model.classes
        if known is None:
            model.score(features, task)  # names without a class list: refused, in one line
            known = []
        named = {str(name) for name in known}
        present = {str(label) for label in pd.unique(labels.dropna())}
        if not present & named:
            raise ScoringError(
                f"target column {labels.name!r} holds none of the model's classes "
                f"{sorted(named)[:5]} (it holds {sorted(present)[:5]})"
            )


def score_kind(task: Task, model: ScoringModel | None) -> str:
    """What a model's score is for a task, in words (for the model card and the docs)."""
    if task == "regression":
        return "prediction"
    if task == "multiclass":
        return "predicted label"
    if model is None or model.has_proba:
        return "positive-class probability"
    return "predicted label (0/1)"
