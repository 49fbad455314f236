"""Data quality with Great Expectations 1.x: a suite derived from the reference, and validation.

The suite is built once from the training rows and saved as JSON beside the model version,
so a person can review and edit it. It expects the reference's columns, each column's type
family, nulls no more often than in the reference, numeric values within a plausible range
(one reference span either side, never below zero for a column that never was) and
categories from the reference's set. Plausible rather than observed ranges: a price rise is
drift for the drift check to weigh, not broken data.

A batch fails as a whole when a column is missing or of the wrong type, or when more rows
than the tolerance break a row-level expectation; otherwise the breaking rows are split off
and the clean rows go on. A failed batch file is moved to quarantine, never deleted, with
the validation result beside it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from agentic_mlops.schemas import QualitySummary
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.batches import DataError, write_table

NUMERIC_TYPES = [
    "int",
    "int8",
    "int16",
    "int32",
    "int64",
    "Int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float",
    "float16",
    "float32",
    "float64",
    "Float64",
    "bool",
]
TEXT_TYPES = ["object", "str", "string", "category", "bool"]
ROW_LEVEL = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
}
MAX_CATEGORIES = 1_000
"""A text column with more distinct values than this gets no value-set expectation."""


@dataclass(frozen=True)
class QualityFailure:
    """One failed expectation."""

    expectation: str
    column: str | None
    detail: str
    rows: int = 0


@dataclass
class QualityResult:
    """The verdict on a batch: what failed, which rows broke, and the raw GX result."""

    passed: bool
    batch_failed: bool
    failures: list[QualityFailure]
    failing_rows: list[int]
    row_count: int
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def failing_row_share(self) -> float:
        return len(self.failing_rows) / self.row_count if self.row_count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "batch_failed": self.batch_failed,
            "row_count": self.row_count,
            "failing_rows": len(self.failing_rows),
            "failures": [f.__dict__ for f in self.failures],
            "validation": self.validation,
        }


@cache
def _gx():
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    asset = context.data_sources.add_pandas("agentic-mlops").add_dataframe_asset("batch")
    return gx, asset.add_batch_definition_whole_dataframe("whole-batch")


def _plausible_range(values: pd.Series) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    span = max(high - low, abs(high), 1.0)
    return (0.0 if low >= 0 else low - span), high + span


def build_suite(frame: pd.DataFrame, name: str, target: str | None = None) -> dict[str, Any]:
    """Derive an expectation suite from reference rows.

    Args:
        frame: The reference rows (the target column, if present, is left out).
        name: Suite name.
        target: Label column, not expected in production batches.

    Returns:
        The suite as GX's JSON dict, with how it was derived in `meta`.
    """
    gx, _ = _gx()
    import great_expectations.expectations as gxe

    features = frame.drop(columns=[target], errors="ignore") if target else frame
    expectations: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(map(str, features.columns)), exact_match=False
        )
    ]
    for column in features.columns:
        values = features[column]
        null_share = float(values.isna().mean())
        expectations.append(gxe.ExpectColumnToExist(column=column))
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        expectations.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=column, type_list=NUMERIC_TYPES if numeric else TEXT_TYPES
            )
        )
        if null_share == 0:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        else:
            expectations.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column, mostly=round(max(0.0, 1 - 2 * null_share - 0.01), 4)
                )
            )
        present = values.dropna()
        if present.empty:
            continue
        if numeric:
            low, high = _plausible_range(present)
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high)
            )
        elif present.nunique() <= MAX_CATEGORIES:
            expectations.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column, value_set=sorted(map(str, present.unique()))
                )
            )
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    payload = suite.to_json_dict()
    payload["meta"] = {
        "derived_from_rows": len(frame),
        "target": target,
        "note": "Derived from the reference by agentic-mlops; edit freely. Ranges are the "
        "reference's span widened by one span either side, floored at 0 for non-negative "
        "columns; null shares allow twice the reference's.",
    }
    return payload


def save_suite(suite: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(suite, indent=2, default=str))
    return path


def _suite_object(suite: dict[str, Any], source: str = "suite"):
    gx, _ = _gx()
    try:
        return gx.ExpectationSuite(
            name=suite["name"], expectations=suite["expectations"], meta=suite.get("meta") or {}
        )
    except Exception as error:  # GX raises many types for a malformed suite
        raise DataError(f"{source}: not a valid expectation suite ({error})") from error


def load_suite(path: str | Path) -> dict[str, Any]:
    """Read and check an expectation suite file.

    Raises:
        DataError: the file is missing, not JSON, or not a valid GX suite.
    """
    path = Path(path)
    try:
        suite = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file") from error
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable expectation suite ({error})") from error
    if not isinstance(suite, dict) or "expectations" not in suite or "name" not in suite:
        raise DataError(f"{path}: not an expectation suite (needs `name` and `expectations`)")
    _suite_object(suite, str(path))
    return suite


def _detail(kind: str, result: dict[str, Any], kwargs: dict[str, Any], target: str | None) -> str:
    if kind == "expect_table_columns_to_match_set":
        expected = set(kwargs.get("column_set", []))
        observed = set(result.get("observed_value") or []) - {target}
        parts = [f"missing columns: {', '.join(sorted(expected - observed))}"]
        if observed - expected:
            parts.append(f"unexpected columns: {', '.join(sorted(observed - expected))}")
        return "; ".join(parts)
    if kind == "expect_column_to_exist":
        return "column is missing"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"type {result.get('observed_value')} not in the expected family"
    count = result.get("unexpected_count") or 0
    share = result.get("unexpected_percent") or 0.0
    examples = ", ".join(map(str, (result.get("partial_unexpected_list") or [])[:3]))
    return f"{count} rows ({share:.1f}%) unexpected" + (f", e.g. {examples}" if examples else "")


def validate_data(
    frame: pd.DataFrame, suite: dict[str, Any], row_tolerance: float = 0.05
) -> QualityResult:
    """Validate a batch against a suite.

    Args:
        frame: The batch.
        suite: A suite dict from `build_suite` or `load_suite`.
        row_tolerance: The largest share of breaking rows that still lets the clean rows go on.

    Returns:
        The verdict. `batch_failed` when a table-level or type expectation fails or more
        than `row_tolerance` of the rows break; `passed` only when nothing broke at all.
    """
    _, batch_definition = _gx()
    nullable = _nullable_columns(suite)
    target = (suite.get("meta") or {}).get("target")
    adjusted = _suite_object(_with_tolerance(suite, row_tolerance))
    frame = frame.reset_index(drop=True)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    validation = batch.validate(adjusted, result_format={"result_format": "COMPLETE"})
    failures: list[QualityFailure] = []
    failing: set[int] = set()
    batch_failed = False
    for item in validation.results:
        config = item.expectation_config
        kind, kwargs = config.type, dict(config.kwargs)
        result = dict(item.result or {})
        column = kwargs.get("column")
        if column is not None and column not in frame.columns and kind != "expect_column_to_exist":
            continue  # reported once, by expect_column_to_exist
        rows = list(result.get("unexpected_index_list") or [])
        if kind in ROW_LEVEL and not (
            kind == "expect_column_values_to_not_be_null" and column in nullable
        ):
            failing.update(int(i) for i in rows)
        if item.success and not (kind in ROW_LEVEL and rows and column not in nullable):
            continue
        failures.append(
            QualityFailure(kind, column, _detail(kind, result, kwargs, target), len(rows))
        )
        batch_failed = batch_failed or not item.success
    failing_rows = sorted(failing)
    if len(failing_rows) > row_tolerance * len(frame):
        batch_failed = True
    summary = validation.describe_dict() if hasattr(validation, "describe_dict") else {}
    return QualityResult(
        passed=not failures and not failing_rows,
        batch_failed=batch_failed,
        failures=failures,
        failing_rows=failing_rows,
        row_count=len(frame),
        validation=json.loads(json.dumps(summary, default=str)),
    )


def _nullable_columns(suite: dict[str, Any]) -> set[str]:
    """Columns whose null expectation allows some nulls: a null there breaks no row."""
    return {
        expectation["kwargs"].get("column")
        for expectation in suite["expectations"]
        if (expectation.get("type") or expectation.get("expectation_type"))
        == "expect_column_values_to_not_be_null"
        and (expectation["kwargs"].get("mostly") or 1.0) < 1.0
    }


def _with_tolerance(suite: dict[str, Any], row_tolerance: float) -> dict[str, Any]:
    """Row-level expectations without their own `mostly` allow `row_tolerance` breaking rows."""
    expectations = []
    for expectation in suite["expectations"]:
        kind = expectation.get("type") or expectation.get("expectation_type")
        kwargs = dict(expectation.get("kwargs", {}))
        if kind in ROW_LEVEL and kwargs.get("mostly") is None:
            kwargs["mostly"] = 1 - row_tolerance
        expectations.append({**expectation, "kwargs": kwargs})
    return {**suite, "expectations": expectations}


def split_failing_rows(
    frame: pd.DataFrame, result: QualityResult
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clean rows and the breaking rows of a validated batch (positions from validation)."""
    mask = np.zeros(len(frame), dtype=bool)
    mask[result.failing_rows] = True
    frame = frame.reset_index(drop=True)
    return frame[~mask].reset_index(drop=True), frame[mask]


def _free_name(folder: Path, name: str) -> Path:
    candidate, index = folder / name, 1
    while candidate.exists():
        stem, _, suffix = name.partition(".")
        candidate = folder / f"{stem}-{index}.{suffix}" if suffix else folder / f"{name}-{index}"
        index += 1
    return candidate


def quarantine_batch(
    path: Path,
    result: QualityResult,
    quarantine_dir: Path,
    failing: pd.DataFrame | None = None,
) -> Path:
    """Quarantine a failed batch (the file is moved) or its breaking rows (written beside).

    The validation result is written next to what was quarantined. Moving a file that is
    already in quarantine (a retried run) changes nothing and returns where it is.

    Returns:
        The quarantined file.
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    if failing is not None:
        target = quarantine_dir / f"{path.stem}.failing-rows.parquet"
        write_table(failing.reset_index(names="row"), target)
    else:
        target = quarantine_dir / path.name
        if not path.exists() and target.exists():
            return target
        if target.exists():
            target = _free_name(quarantine_dir, path.name)
        shutil.move(str(path), target)
    (quarantine_dir / f"{target.name}.validation.json").write_text(
        json.dumps(result.to_json(), indent=2, default=str)
    )
    return target


@dataclass
class QualityCheck:
    """The verdict on a batch and what happened to its rows."""

    result: QualityResult
    summary: QualitySummary
    clean_rows: pd.DataFrame
    clean_path: str | None
    quarantined: str | None


def summarise(result: QualityResult) -> QualitySummary:
    return QualitySummary(
        passed=result.passed,
        batch_failed=result.batch_failed,
        failures=[f"{f.expectation} {f.column or ''}: {f.detail}".strip() for f in result.failures],
        failing_rows=len(result.failing_rows),
    )


@task(name="check-quality", cache_policy=NO_CACHE)
def check_quality(
    path: str, frame: pd.DataFrame, suite: dict[str, Any], settings: Settings
) -> QualityCheck:
    """Validate one loaded batch and quarantine what failed: a failed batch's file, or the
    failing rows, with the clean rows written under home for the rest of the pipeline."""
    logger = get_run_logger()
    result = validate_data(frame, suite, settings.quality.row_tolerance)
    if result.batch_failed:
        moved = quarantine_batch(Path(path), result, settings.quarantine_dir)
        logger.warning("batch failed %d expectations; moved to %s", len(result.failures), moved)
        return QualityCheck(result, summarise(result), frame.iloc[0:0], None, str(moved))
    if not result.failing_rows:
        return QualityCheck(result, summarise(result), frame, None, None)
    clean, failing = split_failing_rows(frame, result)
    moved = quarantine_batch(Path(path), result, settings.quarantine_dir, failing)
    clean_path = write_table(clean, settings.data_dir / "clean" / f"{Path(path).stem}.parquet")
    logger.warning("%d failing rows quarantined to %s", len(failing), moved)
    return QualityCheck(result, summarise(result), clean, str(clean_path), str(moved))
