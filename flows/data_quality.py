"""Data quality: validate a batch against the reference's expectation suite, quarantine failures.

Runbook:
1. Validate the batch with Great Expectations against the suite stored with the champion
   (or a suite file given by hand).
2. If the batch as a whole failed (schema broken, too many failing rows), move the file into
   quarantine with the validation result beside it. It is never deleted.
3. If only some rows failed, write those rows to quarantine and keep the clean rows, saved
   under home, for the rest of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from agentic_mlops.schemas import QualitySummary
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks.batches import DataError, load_batch, write_table
from agentic_mlops.tasks.quality import (
    QualityResult,
    load_suite,
    quarantine_batch,
    split_failing_rows,
    validate_data,
)


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
    path: str, frame: pd.DataFrame, suite: dict[str, Any], settings: Settings | None = None
) -> QualityCheck:
    """Validate one loaded batch and quarantine what failed."""
    settings = settings or load_settings()
    logger = get_run_logger()
    result = validate_data(frame, suite, settings.quality_row_tolerance)
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


@flow(name="data-quality")
def data_quality(current_path: str, suite_path: str) -> QualitySummary | State:
    """Validate a batch file against an expectation suite and quarantine what failed.

    Args:
        current_path: The batch to validate: a CSV or Parquet file on the worker's disk (a
            relative path resolves against the deployment's working directory).
        suite_path: Expectation suite JSON, such as a model version's `expectations.json`
            under the home's `models/` folder.
    """
    loaded = load_batch(current_path, return_state=True)
    if loaded.is_failed():
        return Failed(name="InvalidData", message=loaded.message)
    try:
        suite = load_suite(suite_path)
    except DataError as error:
        return Failed(name="InvalidData", message=str(error))
    check = check_quality(current_path, loaded.result(), suite)
    if check.result.batch_failed:
        return Completed(
            name="Quarantined", data=check.summary, message=f"moved to {check.quarantined}"
        )
    return check.summary
