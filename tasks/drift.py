"""Drift with Evidently's tests, against a reference profile stored once per model version.

Evidently's `DataDriftPreset` re-reads the whole reference on every check. Here the
reference is summarised once, at training time, into a `ReferenceProfile`: per column its
type as Evidently infers it (floats and integers with more than 10 values are numerical,
everything else categorical), its standard deviation, its quantile function on a fine grid,
and its exact value counts when it has few distinct values. A check then runs Evidently's
default test for each column from the profile alone, with Evidently's thresholds:

- reference over 1,000 rows: normed Wasserstein distance (numerical, drift at >= 0.1) and
  Jensen-Shannon distance (categorical, or numerical with at most 5 values; >= 0.1);
- reference of 1,000 rows or fewer: the profile keeps the raw values and Evidently's own
  KS, chi-squared and Z tests run on them (drift at p < 0.05).

The Wasserstein distance is exact for a column with stored value counts, and read off the two
quantile functions on a grid of `QUANTILE_LEVELS` points otherwise (no sampling; the grid's
error is far below the 0.1 threshold, measured in `make bench`).

Across batches, a one-sided CUSUM per column accumulates evidence (the probit of a two-sample
chi-squared test on reference-quantile bins), so gradual drift is caught before any single
batch crosses its threshold. Under no drift each increment is about N(0, 1); with allowance
k = 0.5 and limit h = 8 a column's average run to a false alarm is about 19,000 batches.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from scipy import stats
from scipy.spatial import distance

from agentic_mlops.decisions import ColumnDrift
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import DataError

QUANTILE_LEVELS = 2_048
MAX_DISCRETE = 2_048
"""A numerical column with at most this many distinct values keeps its exact value counts."""
SMALL_REFERENCE = 1_000
"""Evidently's boundary: a reference this small is tested with KS / chi-squared / Z."""
INTEGER_CARDINALITY_LIMIT = 10
"""Evidently treats an integer column with at most this many values as categorical."""
SEQUENTIAL_BINS = 20
PREDICTION = "__prediction__"

Kind = Literal["numerical", "categorical"]


class ColumnProfile(BaseModel):
    """One reference column, summarised for drift checks."""

    kind: Kind
    rows: int = Field(description="Non-missing values.")
    missing: int = 0
    std: float | None = None
    quantiles: list[float] | None = Field(
        default=None, description="Quantile function at levels (i + 0.5) / QUANTILE_LEVELS."
    )
    values: list[Any] | None = Field(default=None, description="Distinct values, sorted.")
    counts: list[int] | None = None
    raw: list[Any] | None = Field(default=None, description="Every value, for a small reference.")


class ReferenceProfile(BaseModel):
    """The reference of a model version, as drift checks need it."""

    format: int = 1
    rows: int
    quantile_levels: int = QUANTILE_LEVELS
    columns: dict[str, ColumnProfile]
    prediction: ColumnProfile | None = None
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())


class ColumnTest(ColumnDrift):
    """The verdict on one column, with the evidence it adds to the sequential detector."""

    evidence: float = Field(
        default=0.0, description="Probit of a two-sample chi-squared p-value, for the CUSUM."
    )


class DriftResult(BaseModel):
    """The verdict on a batch."""

    columns: dict[str, ColumnTest]
    skipped: dict[str, str] = Field(default_factory=dict)
    drift_share: float
    dataset_drift: bool
    prediction: ColumnTest | None = None
    rows: int

    @classmethod
    def untested(cls, columns: Iterable[str], reason: str, rows: int) -> DriftResult:
        """The verdict on a batch none of whose columns could be tested, and why."""
        return cls(
            columns={},
            skipped=dict.fromkeys(columns, reason),
            drift_share=0.0,
            dataset_drift=False,
            rows=rows,
        )

    def verdicts(self) -> dict[str, ColumnDrift]:
        """Each tested column's verdict as results show it (scores to six decimals)."""
        return {
            name: ColumnDrift(
                drifted=c.drifted, test=c.test, score=round(c.score, 6), threshold=c.threshold
            )
            for name, c in self.columns.items()
        }

    @property
    def drift_score(self) -> float:
        """Mean of score / threshold over the tested columns (1.0: on average at threshold)."""
        ratios = [
            c.score / c.threshold
            if c.test in ("wasserstein", "jensenshannon")
            else (1.0 if c.drifted else 0.0)
            for c in self.columns.values()
        ]
        return float(np.mean(ratios)) if ratios else 0.0


def column_kind(values: pd.Series) -> Kind | None:
    """The column type Evidently would infer, or None for one it cannot test here."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_float_dtype(dtype):
        return "numerical"
    if pd.api.types.is_integer_dtype(dtype):
        return "categorical" if values.nunique() <= INTEGER_CARDINALITY_LIMIT else "numerical"
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        present = values.dropna()
        if present.empty or not isinstance(present.iloc[0], str):
            return None
        return None if values.nunique() > 0.5 * values.count() else "categorical"
    return None


def _clean(values: pd.Series, kind: Kind) -> np.ndarray:
    if kind == "numerical":
        array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return array[np.isfinite(array)]
    return values.dropna().to_numpy()


def _quantile_function(sorted_values: np.ndarray, levels: int) -> np.ndarray:
    """The empirical quantile function (inverted CDF) at levels (i + 0.5) / levels."""
    n = len(sorted_values)
    index = np.ceil((np.arange(levels) + 0.5) / levels * n).astype(np.int64) - 1
    return sorted_values[np.clip(index, 0, n - 1)]


def _python(values: np.ndarray) -> list[Any]:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def profile_column(values: pd.Series, kind: Kind, levels: int = QUANTILE_LEVELS) -> ColumnProfile:
    """Summarise one reference column."""
    clean = _clean(values, kind)
    profile = ColumnProfile(kind=kind, rows=len(clean), missing=int(len(values) - len(clean)))
    if len(clean) == 0:
        return profile
    if kind == "numerical":
        ordered = np.sort(clean)
        profile.std = float(np.std(ordered))
        profile.quantiles = _quantile_function(ordered, levels).tolist()
        distinct, counts = np.unique(ordered, return_counts=True)
    else:
        counted = pd.Series(clean).value_counts(sort=False)
        distinct, counts = counted.index.to_numpy(), counted.to_numpy()
    if len(distinct) <= MAX_DISCRETE or kind == "categorical":
        profile.values, profile.counts = _python(distinct), [int(c) for c in counts]
    if len(values) <= SMALL_REFERENCE:
        profile.raw = _python(clean)
    return profile


def build_profile(
    frame: pd.DataFrame, prediction: np.ndarray | None = None, levels: int = QUANTILE_LEVELS
) -> ReferenceProfile:
    """Summarise the reference's feature columns (and the model's scores, if given) once.

    Args:
        frame: Reference features (leave the label out).
        prediction: The model's scores on the same rows, for prediction drift.
        levels: Points of the stored quantile functions.

    Returns:
        The profile; columns Evidently would not test (text, dates) are left out.
    """
    columns = {}
    for name in frame.columns:
        kind = column_kind(frame[name])
        if kind is not None:
            columns[str(name)] = profile_column(frame[name], kind, levels)
    scores = None
    if prediction is not None:
        scores = profile_column(pd.Series(np.asarray(prediction, dtype=float)), "numerical", levels)
    return ReferenceProfile(
        rows=len(frame), quantile_levels=levels, columns=columns, prediction=scores
    )


def save_profile(profile: ReferenceProfile, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(profile.model_dump_json())
    tmp.replace(path)
    return path


def load_profile(path: str | Path) -> ReferenceProfile:
    """Read a stored profile.

    Raises:
        DataError: the file is missing or not a profile.
    """
    path = Path(path)
    try:
        return ReferenceProfile.model_validate_json(path.read_text())
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such reference profile") from error
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable reference profile ({error})") from error


def _wasserstein_exact(ref: ColumnProfile, current_sorted: np.ndarray) -> float:
    """W1 between the reference's exact value counts and the current values."""
    ref_values = np.asarray(ref.values, dtype=float)
    ref_cdf = np.cumsum(ref.counts) / ref.rows
    support = np.union1d(ref_values, np.unique(current_sorted))
    f_ref = np.concatenate([[0.0], ref_cdf])[np.searchsorted(ref_values, support, "right")]
    f_cur = np.searchsorted(current_sorted, support, "right") / len(current_sorted)
    return float(np.sum(np.abs(f_ref - f_cur)[:-1] * np.diff(support)))


def _wasserstein(ref: ColumnProfile, current_sorted: np.ndarray, levels: int) -> float:
    if ref.values is not None:
        return _wasserstein_exact(ref, current_sorted)
    current_q = _quantile_function(current_sorted, levels)
    return float(np.mean(np.abs(np.asarray(ref.quantiles) - current_q)))


def _frequencies(ref: ColumnProfile, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts over the union of their values, reference's first."""
    counted = pd.Series(current).value_counts(sort=False)
    ref_counts = dict(zip(ref.values, ref.counts, strict=True))
    keys = list(ref_counts) + [k for k in _python(counted.index.to_numpy()) if k not in ref_counts]
    current_counts = dict(zip(_python(counted.index.to_numpy()), counted.to_numpy(), strict=True))
    return (
        np.array([ref_counts.get(k, 0) for k in keys], dtype=float),
        np.array([current_counts.get(k, 0) for k in keys], dtype=float),
    )


def _binned(ref: ColumnProfile, current_sorted: np.ndarray, levels: int):
    """Reference and current counts in bins (a, b] cut at the reference's 5% quantiles."""
    grid = np.asarray(ref.quantiles)
    cut = np.unique(grid[(np.arange(1, SEQUENTIAL_BINS) * levels) // SEQUENTIAL_BINS])
    if ref.values is not None:
        bins = np.searchsorted(cut, np.asarray(ref.values, dtype=float), "left")
        ref_counts = np.bincount(bins, weights=ref.counts, minlength=len(cut) + 1)
    else:
        bins = np.searchsorted(cut, grid, "left")
        ref_counts = np.bincount(bins, minlength=len(cut) + 1) * (ref.rows / levels)
    edges = np.searchsorted(current_sorted, cut, "right")
    current_counts = np.diff(np.concatenate([[0], edges, [len(current_sorted)]]))
    return ref_counts.astype(float), current_counts.astype(float)


def chi_square_evidence(ref_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Probit of the two-sample chi-squared p-value: about N(0, 1) when nothing drifted."""
    used = (ref_counts + current_counts) > 0
    ref_counts, current_counts = ref_counts[used], current_counts[used]
    m, n = ref_counts.sum(), current_counts.sum()
    if len(ref_counts) < 2 or m == 0 or n == 0:
        return 0.0
    statistic = np.sum(
        (current_counts * math.sqrt(m / n) - ref_counts * math.sqrt(n / m)) ** 2
        / (ref_counts + current_counts)
    )
    p_value = stats.chi2.sf(statistic, len(ref_counts) - 1)
    return float(np.clip(stats.norm.isf(max(p_value, 1e-300)), -8.0, 37.0))


def _evidently_small_test(
    ref: ColumnProfile, current: np.ndarray
) -> tuple[str, float, bool, float]:
    """Evidently's own test for a small reference: KS, chi-squared or Z, at p < 0.05."""
    from evidently.legacy.calculations.stattests import chi_stat_test, ks_stat_test, z_stat_test
    from evidently.legacy.core import ColumnType

    reference = pd.Series(ref.raw)
    series = pd.Series(current)
    n_values = pd.concat([reference, series]).nunique()
    if ref.kind == "numerical" and n_values > 5:
        test, column_type = ks_stat_test, ColumnType.Numerical
    else:
        test = chi_stat_test if n_values > 2 else z_stat_test
        column_type = ColumnType.Categorical
    result = test(reference, series, column_type, None)
    return (
        test.name,
        float(result.drift_score),
        bool(result.drifted),
        float(result.actual_threshold),
    )


def column_drift(
    ref: ColumnProfile, values: pd.Series, levels: int, num_threshold: float, cat_threshold: float
) -> ColumnTest:
    """Evidently's default test for one column, run against its profile.

    Raises:
        ValueError: the batch has no usable value in the column, or a type the profile's
            kind cannot take.
    """
    if ref.kind == "numerical" and not (
        pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    ):
        raise ValueError(f"numerical in the reference, {values.dtype} in the batch")
    current = _clean(values, ref.kind)
    if len(current) == 0:
        raise ValueError("no values in the batch")
    if ref.rows == 0:
        raise ValueError("no values in the reference")
    current_sorted = np.sort(current) if ref.kind == "numerical" else current
    if ref.kind == "numerical" and ref.values is not None and len(ref.values) <= 5:
        few_values = len(np.union1d(np.asarray(ref.values, dtype=float), current_sorted)) <= 5
    else:
        few_values = False
    if ref.kind == "categorical" or few_values:
        ref_counts, current_counts = _frequencies(ref, current_sorted)
    else:
        ref_counts, current_counts = _binned(ref, current_sorted, levels)
    evidence = chi_square_evidence(ref_counts, current_counts)
    if ref.raw is not None:
        test, score, drifted, threshold = _evidently_small_test(ref, current_sorted)
        return ColumnTest(
            drifted=drifted, test=test, score=score, threshold=threshold, evidence=evidence
        )
    if ref.kind == "categorical" or few_values:
        score = float(distance.jensenshannon(ref_counts / ref.rows, current_counts / len(current)))
        return ColumnTest(
            drifted=score >= cat_threshold,
            test="jensenshannon",
            score=score,
            threshold=cat_threshold,
            evidence=evidence,
        )
    score = _wasserstein(ref, current_sorted, levels) / max(ref.std or 0.0, 0.001)
    return ColumnTest(
        drifted=score >= num_threshold,
        test="wasserstein",
        score=score,
        threshold=num_threshold,
        evidence=evidence,
    )


def compare_to_profile(
    profile: ReferenceProfile,
    frame: pd.DataFrame,
    prediction: np.ndarray | None = None,
    *,
    settings: Settings,
) -> DriftResult:
    """Per-column, dataset-level and prediction drift of a batch against a profile.

    Columns are tested in parallel threads (numpy's sorts release the GIL). Columns the
    profile has but the batch lacks, or cannot be tested, are listed in `skipped` with why;
    they do not count towards the drift share.

    Raises:
        DataError: the batch shares no testable column with the profile.
    """
    skipped = {str(c): "not in the reference" for c in frame.columns if c not in profile.columns}
    present = [name for name in profile.columns if name in frame.columns]
    for name in profile.columns:
        if name not in frame.columns:
            skipped[name] = "missing from the batch"

    def run(name: str) -> tuple[str, ColumnTest | str]:
        try:
            return name, column_drift(
                profile.columns[name],
                frame[name],
                profile.quantile_levels,
                settings.drift.num_threshold,
                settings.drift.cat_threshold,
            )
        except ValueError as error:
            return name, str(error)

    with ThreadPoolExecutor(max_workers=settings.drift.threads) as pool:
        outcomes = list(pool.map(run, present))
    columns = {}
    for name, outcome in outcomes:
        if isinstance(outcome, str):
            skipped[name] = outcome
        else:
            columns[name] = outcome
    if not columns:
        raise DataError("the batch shares no testable column with the reference")
    drifted = sum(c.drifted for c in columns.values())
    share = drifted / len(columns)
    scores = None
    if prediction is not None and profile.prediction is not None:
        scores = column_drift(
            profile.prediction,
            pd.Series(np.asarray(prediction, dtype=float)),
            profile.quantile_levels,
            settings.drift.num_threshold,
            settings.drift.num_threshold,
        )
    return DriftResult(
        columns=columns,
        skipped=skipped,
        drift_share=share,
        dataset_drift=share >= settings.drift.share_threshold,
        prediction=scores,
        rows=len(frame),
    )


@task(name="detect-drift", cache_policy=NO_CACHE)
def detect_drift(
    profile: ReferenceProfile,
    frame: pd.DataFrame,
    prediction: np.ndarray | None = None,
    *,
    settings: Settings,
) -> DriftResult:
    """Prefect task around `compare_to_profile`."""
    return compare_to_profile(profile, frame, prediction, settings=settings)


class CusumState(BaseModel):
    """The sequential detector after a batch: one cumulative sum per column."""

    reference: str | None = None
    batches: int = 0
    sums: dict[str, float] = Field(default_factory=dict)
    alarm_columns: list[str] = Field(default_factory=list)


def cusum_step(
    state: CusumState, drift: DriftResult, k: float, h: float, min_effect: float
) -> CusumState:
    """Add one batch's evidence: S = max(0, S + z - k) per column; alarm where S > h.

    A column's increment counts only when its effect reaches `min_effect` of its threshold
    (else it can only lower the sum): at large batch sizes a chi-squared test finds
    differences too small to matter. Gating only lowers the sums, so the false-alarm bound
    of the ungated detector still holds.
    """
    sums = dict(state.sums)
    for name, column in drift.columns.items():
        z = column.evidence
        material = column.test not in ("wasserstein", "jensenshannon") or (
            column.score >= min_effect * column.threshold
        )
        increment = z if material else min(z, 0.0)
        sums[name] = max(0.0, sums.get(name, 0.0) + increment - k)
    alarms = sorted(name for name, value in sums.items() if value > h)
    return CusumState(
        reference=state.reference,
        batches=state.batches + 1,
        sums={n: round(v, 6) for n, v in sums.items()},
        alarm_columns=alarms,
    )


@task(name="update-sequential-detector", cache_policy=NO_CACHE)
def update_sequential(
    model_name: str,
    batch_id: str,
    drift: DriftResult,
    reference: str,
    settings: Settings,
) -> ledger.DriftObservation:
    """Advance the CUSUM with this batch and record the batch in the drift history.

    The detector starts afresh when the reference changes (a new champion). Checking the same
    batch again replaces its row and starts from the state before it, so a retry does not
    count the batch twice.
    """
    history = ledger.drift_history(model_name, limit=2, settings=settings)
    if history and history[-1].batch_id == batch_id:
        history = history[:-1]
    state = CusumState(reference=reference)
    if history:
        last = CusumState.model_validate(history[-1].detector_state)
        if last.reference == reference:
            state = last
    state = cusum_step(
        state, drift, settings.sequential.k, settings.sequential.h, settings.sequential.min_effect
    )
    observation = ledger.DriftObservation(
        model_name=model_name,
        batch_id=batch_id,
        created_at=ledger.now(),
        drift_score=round(drift.drift_score, 6),
        drift_share=drift.drift_share,
        dataset_drift=drift.dataset_drift,
        sequential_alarm=bool(state.alarm_columns),
        detector_state=state.model_dump(),
    )
    ledger.record_drift(observation, settings)
    return observation


def _evidently_definition(profile: ReferenceProfile, columns: list[str]):
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=[c for c in columns if profile.columns[c].kind == "numerical"],
        categorical_columns=[c for c in columns if profile.columns[c].kind == "categorical"],
    )


def evidently_report(profile: ReferenceProfile, reference: pd.DataFrame, current: pd.DataFrame):
    """Evidently's `DataDriftPreset` on two tables, with the profile's column types."""
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in profile.columns if c in reference.columns and c in current.columns]
    definition = _evidently_definition(profile, columns)
    return Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )


class ReportRequest(BaseModel):
    """What Evidently's HTML report of one check is rendered from, kept beside the file it
    renders to, so that it can be rendered after the decision, or again on demand."""

    html: str = Field(description="Where the report appears.")
    profile: str = Field(description="The reference profile (column kinds).")
    reference_sample: str = Field(description="The reference's stored sample.")
    current_sample: str = Field(description="A bounded sample of the checked rows.")
    model_name: str
    version: int | None = Field(description="The version whose MLflow run receives it.")
    rows: int = Field(description="Rows of the current sample.")

    @property
    def path(self) -> Path:
        return Path(self.html).with_suffix(".request.json")


@task(name="plan-evidently-report", cache_policy=NO_CACHE)
def plan_report(
    profile_path: Path,
    reference_sample_path: Path,
    current: pd.DataFrame,
    html: Path,
    model_name: str,
    version: int | None,
    max_rows: int = 10_000,
    seed: int = 42,
) -> ReportRequest | None:
    """Keep up to `max_rows` of the checked rows and a request to render their report later.

    Returns None when there is nothing to report (no column was tested).
    """
    if current.empty or not len(current.columns):
        return None
    if len(current) > max_rows:
        current = current.sample(max_rows, random_state=seed)
    html.parent.mkdir(parents=True, exist_ok=True)
    sample = html.with_suffix(".current.parquet")
    current.to_parquet(sample)
    request = ReportRequest(
        html=str(html),
        profile=str(profile_path),
        reference_sample=str(reference_sample_path),
        current_sample=str(sample),
        model_name=model_name,
        version=version,
        rows=len(current),
    )
    request.path.write_text(request.model_dump_json(indent=2))
    return request


def render_report(request: ReportRequest) -> Path | None:
    """Render a planned report: Evidently's HTML and its JSON snapshot beside it.

    Returns None when the reference and the sample share no column.
    """
    return save_report(
        load_profile(request.profile),
        pd.read_parquet(request.reference_sample),
        pd.read_parquet(request.current_sample),
        Path(request.html),
    )


def save_report(
    profile: ReferenceProfile, reference: pd.DataFrame, current: pd.DataFrame, path: Path
) -> Path | None:
    if not [c for c in profile.columns if c in reference.columns and c in current.columns]:
        return None
    snapshot = evidently_report(profile, reference, current)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    path.with_suffix(".json").write_text(json.dumps(snapshot.dict(), default=str))
    return path


@task(name="evidently-report", cache_policy=NO_CACHE)
def drift_report(
    profile: ReferenceProfile,
    reference_sample: pd.DataFrame,
    current: pd.DataFrame,
    path: Path,
    max_rows: int = 50_000,
    seed: int = 42,
) -> Path | None:
    """Save Evidently's HTML data-drift report of a batch against the reference sample.

    The report compares the stored reference sample with up to `max_rows` rows of the batch;
    its figures are for people to look at, the verdicts of the check come from the profile.
    Returns None when the two share no column.
    """
    if len(current) > max_rows:
        current = current.sample(max_rows, random_state=seed)
    return save_report(profile, reference_sample, current, path)
