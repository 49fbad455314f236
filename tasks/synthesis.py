"""Synthetic rows for drifted segments the training window barely covers (SMOTE-NC).

A segment is a region of one drifted feature that recent production data visits far more
often than the training window: a category value, or a tail of a numeric feature beyond a
training quantile. `find_segments` finds them; `synthesize` adds SMOTE-NC rows (numeric and
categorical features together, imbalanced-learn) inside each segment, per label, so the
segment's share of the training rows approaches its recent share while its churn rate stays
what the real rows show. Synthetic rows only ever join the rows a model is fitted on: the
validation and holdout rows a model is chosen and judged on are always real.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTENC
from pydantic import BaseModel, Field

from agentic_mlops.tasks.ledger import digest

TAIL_QUANTILES = (0.02, 0.05, 0.1)
"""Training quantiles a numeric segment's tail may start at (and 1 minus them, above)."""
MIN_SEGMENT_ROWS = 6
"""Fewest real rows of a segment and label SMOTE-NC interpolates between (k neighbours + 1)."""


class Segment(BaseModel):
    """One under-covered region of a drifted feature."""

    feature: str
    kind: Literal["category", "below", "above"]
    value: str | None = Field(default=None, description="The category, for kind=category.")
    edge: float | None = Field(default=None, description="The numeric cut, for tails.")
    training_share: float = Field(description="Share of training rows in the segment.")
    recent_share: float = Field(description="Share of recent production rows in it.")

    @property
    def name(self) -> str:
        if self.kind == "category":
            return f"{self.feature}={self.value}"
        sign = "<" if self.kind == "below" else ">"
        return f"{self.feature}{sign}{self.edge:.4g}"

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        column = frame[self.feature]
        if self.kind == "category":
            return column.astype(str) == self.value
        if self.kind == "below":
            return column < self.edge
        return column > self.edge


def find_segments(
    training: pd.DataFrame,
    recent: pd.DataFrame,
    features: list[str],
    max_training_share: float = 0.1,
    min_lift: float = 2.0,
) -> list[Segment]:
    """Segments of the drifted `features` that recent data visits at least `min_lift` times
    as often as the training window, where the training window has at most
    `max_training_share` of its rows; the strongest one per feature."""
    segments = []
    for feature in features:
        if feature not in training.columns or feature not in recent.columns:
            continue
        train_col, recent_col = training[feature].dropna(), recent[feature].dropna()
        if train_col.empty or recent_col.empty:
            continue
        candidates: list[Segment] = []
        if pd.api.types.is_numeric_dtype(train_col) and pd.api.types.is_numeric_dtype(recent_col):
            for q in TAIL_QUANTILES:
                for kind, edge in (
                    ("below", float(train_col.quantile(q))),
                    ("above", float(train_col.quantile(1 - q))),
                ):
                    segment = Segment(
                        feature=feature, kind=kind, edge=edge, training_share=0, recent_share=0
                    )
                    candidates.append(
                        segment.model_copy(
                            update={
                                "training_share": float(segment.mask(training).mean()),
                                "recent_share": float(segment.mask(recent).mean()),
                            }
                        )
                    )
        else:
            train_shares = train_col.astype(str).value_counts(normalize=True)
            recent_shares = recent_col.astype(str).value_counts(normalize=True)
            for value, share in recent_shares.items():
                candidates.append(
                    Segment(
                        feature=feature,
                        kind="category",
                        value=str(value),
                        training_share=float(train_shares.get(value, 0.0)),
                        recent_share=float(share),
                    )
                )
        under = [
            s
            for s in candidates
            if 0 < s.training_share <= max_training_share
            and s.recent_share >= min_lift * s.training_share
        ]
        if under:
            segments.append(max(under, key=lambda s: s.recent_share - s.training_share))
    return segments


class Synthesis(BaseModel):
    """What `synthesize` made and from what, for the dataset's lineage in MLflow."""

    model_config = {"arbitrary_types_allowed": True}

    rows: pd.DataFrame = Field(exclude=True)
    per_segment: dict[str, int]
    skipped: dict[str, str] = Field(default_factory=dict)
    source_digest: str
    method: str = "SMOTE-NC"
    k_neighbors: int
    seed: int

    def digest(self) -> str:
        """A digest of the synthetic rows themselves."""
        return digest(pd.util.hash_pandas_object(self.rows, index=False).tolist())

    def lineage(self) -> dict[str, str]:
        return {
            "method": self.method,
            "source_digest": self.source_digest,
            "segments": ", ".join(f"{k}: {v} rows" for k, v in self.per_segment.items()),
            "k_neighbors": str(self.k_neighbors),
            "seed": str(self.seed),
        }


def _rows_to_add(segment: Segment, size: int, present: int, room: int) -> int:
    wanted = int(segment.recent_share * size) - present
    return max(0, min(wanted, room))


def synthesize(
    training: pd.DataFrame,
    target: str,
    segments: list[Segment],
    max_rows: int,
    seed: int = 42,
    k_neighbors: int = 5,
) -> Synthesis:
    """SMOTE-NC rows inside each segment, at most `max_rows` in all.

    Each segment's real rows are split by label and each label's rows are oversampled by
    the same factor, so the synthetic rows keep the segment's churn rate. Rows with missing
    values are not used as seeds. Integer columns stay integers.

    Args:
        training: The rows a model will be fitted on (never validation or holdout rows).
        target: Label column.
        segments: Segments to fill, from `find_segments`.
        max_rows: Most synthetic rows in total.
        seed: Seed of the sampler.
        k_neighbors: Neighbours SMOTE-NC interpolates between.
    """
    features = [c for c in training.columns if c != target]
    complete = training.dropna(subset=features + [target])
    categorical = [
        i for i, c in enumerate(features) if not pd.api.types.is_numeric_dtype(complete[c])
    ]
    integers = [c for c in features if pd.api.types.is_integer_dtype(complete[c])]
    made: list[pd.DataFrame] = []
    per_segment: dict[str, int] = {}
    skipped: dict[str, str] = {}
    room = max_rows
    for segment in segments:
        inside = segment.mask(complete)
        add = _rows_to_add(segment, len(training), int(inside.sum()), room)
        if add == 0:
            skipped[segment.name] = "already covered, or no room left under the cap"
            continue
        labels = complete.loc[inside, target].astype(int)
        counts = labels.value_counts()
        usable = counts[counts >= MIN_SEGMENT_ROWS]
        if usable.empty:
            skipped[segment.name] = f"fewer than {MIN_SEGMENT_ROWS} complete rows per label"
            continue
        strata = pd.Series(0, index=complete.index)
        strategy = {}
        for label, count in usable.items():
            code = int(label) + 1
            strata[inside & (complete[target].astype(int) == label)] = code
            strategy[code] = int(count + round(add * count / usable.sum()))
        if not (strata == 0).any():
            skipped[segment.name] = "the segment covers every training row"
            continue
        x, y = complete[features], strata
        sampler = SMOTENC(
            categorical_features=categorical,
            sampling_strategy=strategy,
            random_state=seed,
            k_neighbors=min(k_neighbors, int(usable.min()) - 1),
        )
        x_new, y_new = sampler.fit_resample(x, y)
        extra = pd.DataFrame(x_new, columns=features).iloc[len(x) :].reset_index(drop=True)
        extra[target] = (np.asarray(y_new)[len(x) :] == 2).astype(int)
        made.append(extra)
        per_segment[segment.name] = len(extra)
        room -= len(extra)
    rows = (
        pd.concat(made, ignore_index=True)
        if made
        else pd.DataFrame(columns=training.columns).astype(training.dtypes.to_dict())
    )
    for column in integers:
        rows[column] = rows[column].astype(float).round().astype(training[column].dtype)
    for column in features:
        if column not in integers and pd.api.types.is_numeric_dtype(training[column]):
            rows[column] = rows[column].astype(float)
    rows[target] = rows[target].astype(training[target].dtype)
    return Synthesis(
        rows=rows[list(training.columns)],
        per_segment=per_segment,
        skipped=skipped,
        source_digest=digest(pd.util.hash_pandas_object(training, index=False).tolist()),
        k_neighbors=k_neighbors,
        seed=seed,
    )
