"""Multiclass labels as numbers.

A multiclass score is the predicted class, kept as a number in drift profiles, request logs
and the router: numeric classes as they are, classes named by text ("setosa") as their
position in the model's class list (scikit-learn sorts it). Labels of a table are coded by
the same list before they meet the scores, so accuracy compares like with like. This module
imports no more than NumPy and pandas: Ray Tune's trials use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def named_by_text(labels: Any) -> bool:
    """Whether class labels are names ("setosa") rather than numbers."""
    try:
        np.asarray(labels, dtype=float)
    except (TypeError, ValueError):
        return True
    return False


def class_positions(labels: Any, classes: list[Any]) -> np.ndarray:
    """Labels as numbers: numeric ones as they are; names as their position in `classes`,
    -1 for a name not among them (a label no prediction can match)."""
    values = np.asarray(labels).ravel()
    if not named_by_text(values):
        return values.astype(float)
    position = {str(name): float(index) for index, name in enumerate(classes)}
    return np.array([position.get(str(label), -1.0) for label in values])


def coded_series(labels: pd.Series, classes: list[Any]) -> pd.Series:
    """A table's labels coded by a class list (`class_positions`), as a Series."""
    return pd.Series(class_positions(labels, classes), index=labels.index, name=labels.name)
