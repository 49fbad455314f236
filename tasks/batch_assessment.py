"""A batch measured against the champion's reference, up to the evidence the triage reads.

The drift check's steps before the triage, in order: load the batch and its reference (a
batch the check cannot go on with raises `BatchRejected`, which names the run's `Failed`
state); after the quality check, score the rows with the champion (and the previous
champion); test each column against the reference profile; keep a bounded sample for
Evidently's HTML report, which is rendered after the decision; add the batch to the
sequential (CUSUM) detector and the drift history; measure performance on the batch's
labels; and assemble the triage evidence from all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from agentic_mlops.decisions import PerformanceEvidence, ServingEvidence, TriageEvidence
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, reference
from agentic_mlops.tasks.batches import load_batch
from agentic_mlops.tasks.drift import (
    DriftResult,
    ReportRequest,
    detect_drift,
    plan_report,
    update_sequential,
)
from agentic_mlops.tasks.quality import QualityCheck


class BatchRejected(Exception):
    """A batch the drift check cannot go on with, and the name of the `Failed` state it ends
    the run in (`InvalidData`, or the reason there is no reference)."""

    def __init__(self, state_name: str, message: str):
        super().__init__(message)
        self.state_name = state_name
        self.message = message


def batch_and_reference(
    current_path: str, reference_path: str | None, target: str | None, settings: Settings
) -> tuple[pd.DataFrame, reference.Reference]:
    """Load the batch and the reference it is checked against (the champion's stored one, or
    one built from `reference_path`), which must share a column.

    Raises:
        BatchRejected: an unusable batch file, no reference, or no column in common.
    """
    logger = get_run_logger()
    loaded = load_batch(current_path, return_state=True)
    if loaded.is_failed():
        logger.error("batch rejected: %s", loaded.message)
        raise BatchRejected("InvalidData", loaded.message)
    current = loaded.result()
    resolved = reference.resolve_reference(
        reference_path, target, settings, settings.model_name, return_state=True
    )
    if resolved.is_failed():
        logger.error("no reference: %s", resolved.message)
        raise BatchRejected(resolved.name, resolved.message)
    ref = resolved.result()
    if not set(ref.profile.columns) & set(current.columns):
        message = f"{current_path}: no columns shared with the reference"
        logger.error(message)
        raise BatchRejected("InvalidData", message)
    return current, ref


@dataclass
class BatchAssessment:
    """What the drift check measured on a batch, and the triage evidence built from it."""

    drift: DriftResult
    observation: ledger.DriftObservation | None
    performance: PerformanceEvidence | None
    evidence: TriageEvidence
    report: ReportRequest | None


def plan_drift_report(
    ref: reference.Reference,
    rows: pd.DataFrame,
    drift: DriftResult,
    batch_id: str,
    settings: Settings,
) -> ReportRequest | None:
    """Keep a sample of the tested columns for Evidently's report of this batch, unless the
    report is off (`drift_report_mode`); a plan that fails is logged, not fatal."""
    if settings.drift.report_mode == "off":
        return None
    planning = plan_report(
        ref.folder / reference.PROFILE_FILE,
        ref.folder / reference.SAMPLE_FILE,
        rows[list(drift.columns)],
        settings.reports_dir / settings.model_name / f"{Path(batch_id).stem}-drift.html",
        settings.model_name,
        ref.version,
        settings.drift.report_rows,
        settings.seed,
        return_state=True,
    )
    if planning.is_failed():
        get_run_logger().warning("Evidently report not planned: %s", planning.message)
    return planning.result() if planning.is_completed() else None


def assess_batch(
    current_path: str,
    current: pd.DataFrame,
    ref: reference.Reference,
    quality: QualityCheck,
    batch_id: str,
    target: str | None,
    serving: ServingEvidence | None,
    settings: Settings,
) -> BatchAssessment:
    """Score, drift-test and measure a batch's rows, and build the triage's evidence.

    The rows are the clean ones, or the whole batch when it failed its quality checks; a
    failed batch with no testable column still gets evidence (its triage escalates), and
    does not advance the sequential detector.

    Raises:
        BatchRejected: no column of a batch that passed quality could be tested.
    """
    broken = quality.result.batch_failed
    rows = current if broken else quality.clean_rows
    scores = reference.score_batch(rows, ref, settings)
    checked = detect_drift(ref.profile, rows, scores.champion, settings=settings, return_state=True)
    if checked.is_failed():
        error = checked.result(raise_on_failure=False)
        if not broken:
            raise BatchRejected("InvalidData", f"{current_path}: {error}")
        drift = DriftResult.untested(ref.profile.columns, str(error), len(rows))
    else:
        drift = checked.result()
    report = plan_drift_report(ref, rows, drift, batch_id, settings)
    name = settings.model_name
    history = [o.drift_score for o in ledger.drift_history(name, 20, settings=settings)]
    observation = None
    if not broken:
        observation = update_sequential(name, batch_id, drift, ref.key, settings)
        history.append(observation.drift_score)
    performance = reference.labelled_performance(rows, target, ref, scores)
    evidence = reference.triage_evidence(
        ref, quality.result, drift, observation, history, performance, rows, target, serving
    )
    return BatchAssessment(drift, observation, performance, evidence, report)
