"""A model version's reference: what new batches are compared with, stored beside the model.

At training time the training rows are summarised once into a drift profile (with the
model's scores, for prediction drift), an expectation suite, a model card (metrics, feature
importance) and a small sample for Evidently's HTML report, saved under
`home/models/<name>/v<version>/` and logged to the version's MLflow run. A drift check loads
these instead of re-reading the training data. This module also scores a batch with the
champion and assembles the triage agent's evidence.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from agentic_mlops.decisions import (
    TASK_METRIC,
    ColumnDrift,
    ColumnEvidence,
    Distribution,
    PerformanceEvidence,
    QualityEvidence,
    SegmentScore,
    ServingEvidence,
    Task,
    TriageEvidence,
    task_metric,
)
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import registry
from agentic_mlops.tasks.batches import DataError, read_table, write_table
from agentic_mlops.tasks.drift import (
    ColumnProfile,
    DriftResult,
    ReferenceProfile,
    build_profile,
    load_profile,
    profile_column,
    save_profile,
)
from agentic_mlops.tasks.ledger import DriftObservation, digest
from agentic_mlops.tasks.quality import QualityResult, build_suite, load_suite, save_suite
from agentic_mlops.tasks.scoring import (
    ScoringError,
    ScoringModel,
    coded_labels,
    load_scoring_model,
    model_task,
    score_kind,
)

PROFILE_FILE = "profile.json"
SUITE_FILE = "expectations.json"
CARD_FILE = "model_card.json"
SAMPLE_FILE = "sample.parquet"
SAMPLE_ROWS = 5_000
SUMMARY_QUANTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
TOP_VALUES = 8
SEGMENT_ROWS = 20_000
"""Labelled rows a segment breakdown is computed on at most (a seeded sample beyond that)."""
MIN_SEGMENT_ROWS = 20


class ModelCard(BaseModel):
    """What a drift check needs to know about the model a reference belongs to."""

    model_name: str
    version: int | None = None
    target: str
    metrics: dict[str, float] = Field(default_factory=dict)
    feature_importance: dict[str, float] = Field(default_factory=dict)
    features: list[str] = Field(default_factory=list)
    data_source: str = ""
    task: Task = "binary"
    score: str = Field(
        default="positive-class probability",
        description="What the model's score is: a probability, a label or a prediction.",
    )
    adopted: bool = Field(
        default=False,
        description="Registered outside agentic-mlops and adopted (by `adopt`), not trained "
        "by our recipe; the recipe retrains it all the same, for the card's task.",
    )

    @property
    def primary_metric(self) -> str:
        """The metric performance on labelled batches is judged by, for the card's task."""
        return TASK_METRIC[self.task]


@dataclass
class Reference:
    """A loaded reference: profile, suite, card, report sample, and the versions in play."""

    profile: ReferenceProfile
    suite: dict[str, Any]
    card: ModelCard
    sample: pd.DataFrame
    version: int | None
    previous_version: int | None
    folder: Path

    @property
    def key(self) -> str:
        """Identifies this reference, so sequential evidence is never mixed across references."""
        return str(self.folder)


@dataclass
class BatchScores:
    """The champion's (and previous champion's) scores for a batch, and, for a multiclass
    model, each one's class list (by which labels named by text are coded)."""

    champion: np.ndarray | None = None
    previous_champion: np.ndarray | None = None
    champion_classes: list[Any] | None = None
    previous_classes: list[Any] | None = None


def save_reference(
    folder: Path,
    train_frame: pd.DataFrame,
    card: ModelCard,
    scores: np.ndarray | None,
    seed: int = 42,
) -> Path:
    """Write the profile, suite, card and report sample of a training table into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    features = train_frame.drop(columns=[card.target], errors="ignore")
    save_profile(build_profile(features, prediction=scores), folder / PROFILE_FILE)
    save_suite(
        build_suite(train_frame, f"{card.model_name}-reference", card.target), folder / SUITE_FILE
    )
    (folder / CARD_FILE).write_text(card.model_dump_json(indent=2))
    sample = train_frame.sample(min(SAMPLE_ROWS, len(train_frame)), random_state=seed)
    write_table(sample, folder / SAMPLE_FILE)
    return folder


@task(name="save-reference", cache_policy=NO_CACHE)
def store_reference(
    train_frame: pd.DataFrame,
    card: ModelCard,
    scores: np.ndarray | None,
    settings: Settings,
) -> Path:
    """Save a new version's reference under home and log it to the version's MLflow run."""
    folder = registry.reference_dir(card.model_name, card.version, settings)
    save_reference(folder, train_frame, card, scores, settings.seed)
    registry.log_reference(card.model_name, card.version, settings)
    return folder


def load_reference(folder: Path, version: int | None, previous: int | None) -> Reference:
    """Read a reference folder.

    Raises:
        DataError: a file is missing or corrupt.
    """
    try:
        card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder / CARD_FILE}: unreadable model card ({error})") from error
    return Reference(
        profile=load_profile(folder / PROFILE_FILE),
        suite=load_suite(folder / SUITE_FILE),
        card=card,
        sample=read_table(folder / SAMPLE_FILE),
        version=version,
        previous_version=previous,
        folder=folder,
    )


def stored_card(name: str, version: int, settings: Settings) -> ModelCard | None:
    """The model card stored with a version (local copy or its MLflow run); None when the
    version has none, or an unreadable one."""
    try:
        folder = registry.fetch_reference(name, version, settings)
        return ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    except (DataError, OSError, ValueError):
        return None


def newest_card(name: str, settings: Settings) -> ModelCard | None:
    """The card of the newest version of a model with one stored under home; None if none."""
    models = registry.reference_dir(name, 1, settings).parent
    versions = sorted(
        (int(folder.name[1:]) for folder in models.glob("v*") if folder.name[1:].isdigit()),
        reverse=True,
    )
    for version in versions:
        try:
            path = registry.reference_dir(name, version, settings) / CARD_FILE
            return ModelCard.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue
    return None


@task(name="resolve-reference", cache_policy=NO_CACHE)
def resolve_reference(
    reference_path: str | None,
    target: str | None,
    settings: Settings,
    model_name: str | None = None,
) -> Reference | State:
    """The reference a batch is checked against.

    With `reference_path`, it is built from that file once (the champion's card is used for
    feature importance and task when one exists; a champion without stored reference
    artifacts still scores it) and kept under home by the file's content digest, the champion
    version and the target; the next check against the same content reuses it without reading
    the file. Otherwise it is the champion's stored reference.

    Args:
        model_name: The registered model; None: the settings' model name.

    Returns:
        The reference, or a `Failed` state named `NoReference` or `InvalidData`.
    """
    name = model_name or settings.model_name
    champion = registry.alias_version(name, registry.CHAMPION, settings)
    previous = registry.alias_version(name, registry.PREVIOUS_CHAMPION, settings)
    try:
        stored = None
        if champion is not None:
            try:
                folder = registry.fetch_reference(name, champion, settings)
                stored = load_reference(folder, champion, previous)
            except DataError:
                if reference_path is None:
                    raise
        if reference_path is None:
            if stored is None:
                return Failed(
                    name="NoReference",
                    message=f"no champion of {name!r} is registered: train a model first "
                    "or give a reference file",
                )
            return stored
        target = target or (stored.card.target if stored else settings.target)
        folder = (
            settings.reports_dir
            / "adhoc-reference"
            / name
            / digest([content_digest(reference_path), champion, target])
        )
        if (folder / CARD_FILE).exists():
            return load_reference(folder, champion, previous)
        frame = read_table(reference_path)
        task = stored.card.task if stored else None
        if task is None and champion is not None:
            task = model_task(scoring_model(name, champion, settings))
        card = ModelCard(
            model_name=name,
            version=champion,
            target=target,
            metrics=stored.card.metrics if stored else {},
            feature_importance=stored.card.feature_importance if stored else {},
            features=[c for c in frame.columns if c != target],
            data_source=str(Path(reference_path).resolve()),
            task=task or "binary",
            score=stored.card.score if stored else score_kind(task or "binary", None),
            adopted=stored.card.adopted if stored else False,
        )
        scores = None
        if champion is not None:
            scores = score_with(
                name,
                champion,
                frame.drop(columns=[target], errors="ignore"),
                settings,
                card.task,
            )
        save_reference(folder, frame, card, scores, settings.seed)
        return load_reference(folder, champion, previous)
    except DataError as error:
        return Failed(name="InvalidData", message=str(error))


def content_digest(path: str) -> str:
    """SHA-256 of a file's bytes: what is built from a reference file (its profile, suite and
    scores) is kept under this name and reused for the same content, wherever it lies.

    Raises:
        DataError: the file cannot be read.
    """
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                sha.update(chunk)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error})") from error
    return sha.hexdigest()


def scoring_model(name: str, version: int, settings: Settings) -> ScoringModel:
    """A registered version, loaded for scoring.

    Raises:
        ScoringError: no such version, or its artifact cannot be loaded.
    """
    registry.client(settings)
    return load_scoring_model(f"models:/{name}/{version}", settings.tracking_uri())


def score_with(
    name: str,
    version: int,
    frame: pd.DataFrame,
    settings: Settings,
    task: Task | None = None,
) -> np.ndarray | None:
    """Scores of a registered version for a batch (see `tasks/scoring.py`: the positive-class
    probability of a binary classifier, the prediction of a regressor), or None if the batch
    cannot be scored (missing feature columns).

    Args:
        task: The model's task, from its card; None: what the model declares, else binary.
    """
    model = scoring_model(name, version, settings)
    try:
        return model.score(frame, task or model_task(model) or "binary")
    except ScoringError:  # the error names the column; the batch is just unscorable
        return None


@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch(frame: pd.DataFrame, ref: Reference, settings: Settings) -> BatchScores:
    """Score a batch with the champion and the previous champion, when they exist."""
    features = frame.drop(columns=[ref.card.target], errors="ignore")
    if ref.version is None or features.empty:
        return BatchScores()
    name = ref.card.model_name
    previous = None
    task = ref.card.task
    if ref.previous_version is not None:
        previous = score_with(name, ref.previous_version, features, settings, task)
    scores = BatchScores(score_with(name, ref.version, features, settings, task), previous)
    if task == "multiclass":
        scores.champion_classes = scoring_model(name, ref.version, settings).classes
        if ref.previous_version is not None:
            scores.previous_classes = scoring_model(name, ref.previous_version, settings).classes
    return scores


def r2_standard_error(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Approximate standard error of R² on these rows: that of the mean squared error (the
    spread of the squared errors over sqrt(n)) divided by the labels' variance, which is
    taken as known. Small batches make R² noisy; the triage does not read noise as a drop."""
    squared = (labels - predictions) ** 2
    variance = float(np.var(labels))
    if len(labels) < 2 or variance <= 0:
        return 0.0
    return float(np.std(squared, ddof=1) / math.sqrt(len(labels)) / variance)


def _auc_components(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of ROC AUC: for each positive row, the share of negative
    rows it outscores (ties count half), and for each negative row, the share of positive rows
    that outscore it. Each averages to the AUC; midranks give both in O(n log n)."""
    from scipy.stats import rankdata

    positives, negatives = scores[positive], scores[~positive]
    ranks = rankdata(np.concatenate([positives, negatives]))
    size = positives.size
    below = (ranks[:size] - rankdata(positives)) / negatives.size
    above = 1 - (ranks[size:] - rankdata(negatives)) / size
    return below, above


def paired_gain_standard_error(
    task: str, labels: np.ndarray, previous: np.ndarray, current: np.ndarray
) -> float | None:
    """Standard error of (previous champion's metric - champion's metric) on the same rows,
    from the rows' paired contributions: DeLong's for ROC AUC, each row's correct answer for
    accuracy, each row's squared error over the labels' variance for R². None when the rows
    cannot give it (a single class, fewer than two rows of a class)."""
    previous, current = np.asarray(previous, dtype=float), np.asarray(current, dtype=float)
    if task == "binary":
        positive = np.asarray(labels).astype(bool)
        if min(positive.sum(), (~positive).sum()) < 2:
            return None
        previous_below, previous_above = _auc_components(previous, positive)
        current_below, current_above = _auc_components(current, positive)
        variance = np.var(previous_below - current_below, ddof=1) / previous_below.size
        variance += np.var(previous_above - current_above, ddof=1) / previous_above.size
        return float(math.sqrt(variance))
    if len(labels) < 2:
        return None
    truth = np.asarray(labels, dtype=float)
    if task == "multiclass":
        gains = (previous == truth).astype(float) - (current == truth).astype(float)
    else:
        spread = float(np.var(truth))
        if spread <= 0:
            return None
        gains = ((truth - current) ** 2 - (truth - previous) ** 2) / spread
    return float(np.std(gains, ddof=1) / math.sqrt(len(gains)))


def labelled_performance(
    frame: pd.DataFrame, target: str | None, ref: Reference, scores: BatchScores
) -> PerformanceEvidence | None:
    """The champion's primary metric on the batch's labels next to its training-time figure
    (ROC AUC for a binary classifier, accuracy for a multiclass one, R² for a regressor),
    and, for a binary classifier, whether the observed positive rate moved away from the
    predicted one since training (`calibration_shift_z`); regression and multiclass models
    have no calibration evidence."""
    metric = ref.card.primary_metric
    if (
        not target
        or target not in frame.columns
        or scores.champion is None
        or metric not in ref.card.metrics
    ):
        return None
    labels = frame[target]
    if labels.isna().any() or labels.nunique() < 2:
        return None
    task = ref.card.task
    previous = gain_noise = None
    if task == "multiclass":  # each version's scores meet the labels coded by its classes
        labels = coded_labels(frame[target], scores.champion_classes)
    if scores.previous_champion is not None:
        if task == "multiclass":
            previous_labels = coded_labels(frame[target], scores.previous_classes)
            previous = task_metric(task, previous_labels, scores.previous_champion)
            # two versions may code their classes apart: compared by whether each is right
            previous_right = scores.previous_champion == previous_labels.to_numpy()
            right = scores.champion == labels.to_numpy()
            gain_noise = paired_gain_standard_error(
                task, np.ones(len(right)), previous_right, right
            )
        else:
            previous = task_metric(task, labels, scores.previous_champion)
            gain_noise = paired_gain_standard_error(
                task, labels.to_numpy(), scores.previous_champion, scores.champion
            )
    current = task_metric(task, labels, scores.champion)
    segments = segment_scores(frame, labels, scores.champion, task, list(ref.profile.columns))
    if task != "binary":
        noise = None
        if task == "regression":
            batch = r2_standard_error(labels.to_numpy(dtype=float), scores.champion)
            holdout = ref.card.metrics.get("r2_standard_error", 0.0)
            noise = math.sqrt(batch**2 + holdout**2)
        return PerformanceEvidence(
            metric=metric,
            reference=ref.card.metrics[metric],
            current=current,
            rows=len(frame),
            previous_champion_current=previous,
            previous_champion_gain_standard_error=gain_noise,
            drop_standard_error=noise,
            segments=segments,
        )
    predicted = np.clip(scores.champion, 1e-6, 1 - 1e-6)
    return PerformanceEvidence(
        reference=ref.card.metrics[metric],
        current=current,
        rows=len(frame),
        previous_champion_current=previous,
        previous_champion_gain_standard_error=gain_noise,
        observed_rate=float(labels.mean()),
        predicted_rate=float(predicted.mean()),
        calibration_z=calibration_shift_z(
            labels.to_numpy(dtype=float), predicted, ref.card.metrics
        ),
        segments=segments,
    )


def segment_scores(
    frame: pd.DataFrame, labels: pd.Series, scores: np.ndarray, task: Task, columns: list[str]
) -> dict[str, list[SegmentScore]]:
    """The primary metric on each segment of each column: quartiles of a number, the most
    frequent values of a category (the rest as `other`); None where a segment has too few rows
    or a single class. At most `SEGMENT_ROWS` rows are used (a seeded sample)."""
    rows = np.arange(len(frame))
    if len(rows) > SEGMENT_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, SEGMENT_ROWS, replace=False))
    found: dict[str, list[SegmentScore]] = {}
    for name in columns:
        if name not in frame.columns:
            continue
        values = frame[name].iloc[rows]
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().mean() > 0.9 and numbers.nunique() > TOP_VALUES:
            edges = np.unique(np.nanquantile(numbers, [0, 0.25, 0.5, 0.75, 1]))
            bins = np.clip(np.searchsorted(edges, numbers, side="right") - 1, 0, len(edges) - 2)
            masks = {
                f"{edges[i]:.4g} <= x < {edges[i + 1]:.4g}": (bins == i) & numbers.notna()
                for i in range(len(edges) - 1)
            }
        else:
            top = values.astype(str).value_counts().index[: TOP_VALUES - 1]
            masks = {value: (values.astype(str) == value) for value in top}
            masks["other"] = ~values.astype(str).isin(top)
        found[name] = [
            SegmentScore(
                segment=segment,
                rows=int(mask.sum()),
                score=_segment_score(task, labels.iloc[rows][mask.to_numpy()], scores[rows][mask]),
            )
            for segment, mask in masks.items()
            if mask.sum() > 0
        ]
    return found


def _segment_score(task: Task, labels: pd.Series, scores: np.ndarray) -> float | None:
    if len(labels) < MIN_SEGMENT_ROWS or labels.nunique() < 2:
        return None
    try:
        return round(task_metric(task, labels, scores), 4)
    except ValueError:
        return None


def calibration_shift_z(
    labels: np.ndarray, predicted: np.ndarray, training: dict[str, float]
) -> float:
    """How far the gap between observed and predicted churn moved since the holdout, as z.

    Under an unchanged relationship, (observed - predicted) has the same expectation on the
    batch as on the training holdout, whatever the model's own bias; each side's variance is
    sum p(1 - p) / n^2. Without holdout figures (older versions), the batch gap alone is used.
    """
    n = len(labels)
    gap = (labels.sum() - predicted.sum()) / n
    variance = float(np.sum(predicted * (1 - predicted))) / n**2
    if {"positive_rate", "mean_prediction", "prediction_variance_sum"} <= set(training):
        rows = training["holdout_rows"]
        gap -= training["positive_rate"] - training["mean_prediction"]
        variance += training["prediction_variance_sum"] / rows**2
    return float(gap / math.sqrt(variance)) if variance > 0 else 0.0


def quality_evidence(result: QualityResult) -> QualityEvidence:
    return QualityEvidence(
        passed=result.passed,
        batch_failed=result.batch_failed,
        failures=[f"{f.expectation} {f.column or ''}: {f.detail}".strip() for f in result.failures],
        failing_row_share=result.failing_row_share,
    )


def triage_evidence(
    ref: Reference,
    quality: QualityResult,
    drift: DriftResult,
    observation: DriftObservation | None,
    history: list[float],
    performance: PerformanceEvidence | None,
    frame: pd.DataFrame,
    target: str | None,
    serving: ServingEvidence | None = None,
) -> TriageEvidence:
    """Everything the triage agent may look at for one batch, and what the monitor saw in
    serving when it was the monitor that sent the batch."""
    labelled = bool(target) and target in frame.columns and frame[target].notna().all()
    return TriageEvidence(
        model_name=ref.card.model_name,
        champion_version=ref.version,
        previous_champion_version=ref.previous_version,
        quality=quality_evidence(quality),
        dataset_drift=drift.dataset_drift,
        drift_share=drift.drift_share,
        columns={
            name: ColumnEvidence(
                **c.model_dump(include=set(ColumnDrift.model_fields)),
                reference=distribution(ref.profile.columns[name]),
                current=distribution(profile_column(frame[name], ref.profile.columns[name].kind))
                if name in frame.columns
                else None,
            )
            for name, c in drift.columns.items()
        },
        prediction_drifted=drift.prediction.drifted if drift.prediction else None,
        skipped_columns=drift.skipped,
        history_scores=[round(score, 4) for score in history],
        sequential_alarm=bool(observation and observation.sequential_alarm),
        sequential_alarm_columns=list(
            observation.detector_state.get("alarm_columns", []) if observation else []
        ),
        feature_importance=ref.card.feature_importance,
        labels_available=labelled and len(frame) >= 40,
        performance=performance,
        serving=serving,
    )


def distribution(profile: ColumnProfile) -> Distribution:
    """A column profile as the triage's tools show it: five quantiles of a number, the shares
    of the most frequent values of a category."""
    summary = Distribution(kind=profile.kind, rows=profile.rows, missing=profile.missing)
    if profile.kind == "numerical" and profile.quantiles:
        levels = len(profile.quantiles)
        summary.quantiles = {
            label: round(float(profile.quantiles[min(int(level * levels), levels - 1)]), 6)
            for label, level in SUMMARY_QUANTILES.items()
        }
    elif profile.values is not None and profile.counts:
        total = sum(profile.counts)
        ranked = sorted(zip(profile.values, profile.counts, strict=True), key=lambda vc: -vc[1])
        summary.top = {str(v): round(c / total, 4) for v, c in ranked[:TOP_VALUES]}
    return summary


def champion_target(settings: Settings) -> str:
    """The label column of the champion's model card, else the settings' `target`."""
    stored = resolve_reference.fn(None, None, settings)
    return settings.target if isinstance(stored, State) else stored.card.target
