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

from prefect import flow
from prefect.states import Completed, Failed, State

from agentic_mlops.schemas import QualitySummary
from agentic_mlops.settings import load_settings
from agentic_mlops.tasks.batches import DataError, load_batch
from agentic_mlops.tasks.quality import check_quality, load_suite


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
    check = check_quality(current_path, loaded.result(), suite, load_settings())
    if check.result.batch_failed:
        return Completed(
            name="Quarantined", data=check.summary, message=f"moved to {check.quarantined}"
        )
    return check.summary
