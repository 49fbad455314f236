"""The decision ledger and the drift history, kept in one SQLite store under home.

Every agent decision is a row: which decision point, for which model, a digest of its inputs,
the evidence it used, the action and its rationale, the model that answered and its
attribution (the model's own and the policy's decision, every override), and later the
outcome. A decision's id is derived from the flow run, the decision point and the inputs
digest, so a retried flow records it once. The drift history keeps one row per checked batch
with its drift score and the sequential detector's state after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agentic_mlops.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    decision_point TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version INTEGER,
    inputs_digest TEXT NOT NULL,
    action TEXT NOT NULL,
    severity TEXT,
    confidence REAL,
    rationale TEXT,
    evidence TEXT NOT NULL,
    agent_model TEXT NOT NULL,
    overridden_by TEXT,
    flow_run_id TEXT,
    outcome TEXT,
    outcome_at TEXT,
    attribution TEXT
);
CREATE INDEX IF NOT EXISTS decisions_by_model ON decisions (model_name, created_at);
CREATE TABLE IF NOT EXISTS drift_history (
    model_name TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    drift_score REAL NOT NULL,
    drift_share REAL NOT NULL,
    dataset_drift INTEGER NOT NULL,
    sequential_alarm INTEGER NOT NULL,
    detector_state TEXT NOT NULL,
    PRIMARY KEY (model_name, batch_id)
);
"""


class LedgerEntry(BaseModel):
    """One recorded decision."""

    id: str
    created_at: str
    decision_point: str = Field(description="Which agent decided, e.g. `drift_triage`.")
    model_name: str
    model_version: int | None = None
    inputs_digest: str
    action: str
    severity: str | None = None
    confidence: float | None = None
    rationale: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    agent_model: str = Field(description="`policy` or the LLM that decided.")
    overridden_by: str | None = Field(
        default=None, description="Why a guardrail replaced the model's decision, if it did."
    )
    flow_run_id: str | None = None
    outcome: dict[str, Any] | None = None
    outcome_at: str | None = None
    attribution: dict[str, Any] | None = Field(
        default=None,
        description="Who decided: the configured model, the model that answered, the model's "
        "own and the policy's action, every override and why, tokens and latency.",
    )


class DriftObservation(BaseModel):
    """One checked batch in the drift history."""

    model_name: str
    batch_id: str
    created_at: str
    drift_score: float
    drift_share: float
    dataset_drift: bool
    sequential_alarm: bool
    detector_state: dict[str, Any]


def store_path(settings: Settings) -> Path:
    return settings.home / "ledger.db"


@contextmanager
def connect(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A connection to the store, created with its schema on first use; commits on success."""
    path = store_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        connection.executescript(SCHEMA)
        columns = {row["name"] for row in connection.execute("PRAGMA table_info(decisions)")}
        if "attribution" not in columns:  # a ledger written before attribution was recorded
            connection.execute("ALTER TABLE decisions ADD COLUMN attribution TEXT")
        yield connection
        connection.commit()
    finally:
        connection.close()


def digest(value: Any) -> str:
    """A short, stable digest of any JSON-serialisable value."""
    payload = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record_decision(entry: LedgerEntry, settings: Settings) -> LedgerEntry:
    """Append a decision; recording the same id again keeps the first (a retried flow)."""
    with connect(settings) as db:
        values = {
            **entry.model_dump(),
            "evidence": json.dumps(entry.evidence, default=str),
            "outcome": json.dumps(entry.outcome) if entry.outcome is not None else None,
            "attribution": json.dumps(entry.attribution, default=str)
            if entry.attribution is not None
            else None,
        }
        db.execute(
            f"INSERT OR IGNORE INTO decisions ({', '.join(values)}) "
            f"VALUES ({', '.join(':' + name for name in values)})",
            values,
        )
    return get_decision(entry.id, settings) or entry


def decision_id(flow_run_id: str | None, decision_point: str, inputs_digest: str) -> str:
    return digest([flow_run_id or "no-flow-run", decision_point, inputs_digest])


def record_agent_decision(
    decision_point: str,
    inputs: dict[str, Any],
    flow_run_id: str | None,
    settings: Settings,
    **fields: Any,
) -> LedgerEntry:
    """Record what an agent decided on `inputs` (its evidence, as JSON). The entry's digest and
    id come from the inputs and the flow run, so recording the same decision twice in one run
    (a retried task) keeps one entry. A decision an LLM's run made carries its MLflow trace id
    in its attribution; the trace gets the entry's id as a tag, so each leads to the other."""
    inputs_digest = digest(inputs)
    entry = record_decision(
        LedgerEntry(
            id=decision_id(flow_run_id, decision_point, inputs_digest),
            created_at=now(),
            decision_point=decision_point,
            inputs_digest=inputs_digest,
            flow_run_id=flow_run_id,
            **fields,
        ),
        settings,
    )
    trace_id = (entry.attribution or {}).get("trace_id")
    if trace_id:
        from agentic_mlops.tasks.registry import tag_trace

        tag_trace(trace_id, {"agentic_mlops.ledger_id": entry.id}, settings)
    return entry


def _entry(row: sqlite3.Row) -> LedgerEntry:
    values = dict(row)
    values["evidence"] = json.loads(values["evidence"])
    values["outcome"] = json.loads(values["outcome"]) if values["outcome"] else None
    values["attribution"] = json.loads(values["attribution"]) if values["attribution"] else None
    return LedgerEntry(**values)


def get_decision(entry_id: str, settings: Settings) -> LedgerEntry | None:
    with connect(settings) as db:
        row = db.execute("SELECT * FROM decisions WHERE id = ?", (entry_id,)).fetchone()
    return _entry(row) if row else None


def record_outcome(entry_id: str, outcome: dict[str, Any], settings: Settings) -> LedgerEntry:
    """Attach the later outcome of a decision (did the retrained model beat the old one?).

    Outcomes accumulate: keys already recorded stay unless this outcome names them again,
    so each later step (retraining, canary, follow-up) adds what it learned.

    Raises:
        KeyError: no decision has that id.
    """
    with connect(settings) as db:
        row = db.execute("SELECT outcome FROM decisions WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"no decision with id {entry_id!r}")
        merged = {**json.loads(row["outcome"] or "{}"), **outcome}
        db.execute(
            "UPDATE decisions SET outcome = ?, outcome_at = ? WHERE id = ?",
            (json.dumps(merged, default=str), now(), entry_id),
        )
    return get_decision(entry_id, settings)


def list_decisions(
    model_name: str | None = None,
    action: str | None = None,
    decision_point: str | None = None,
    since: str | None = None,
    limit: int = 100,
    *,
    settings: Settings,
) -> list[LedgerEntry]:
    """Decisions, newest first, filtered by model, action, decision point and time (ISO)."""
    clauses, values = [], []
    for column, value in (
        ("model_name", model_name),
        ("action", action),
        ("decision_point", decision_point),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            values.append(value)
    if since is not None:
        clauses.append("created_at >= ?")
        values.append(since)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with connect(settings) as db:
        rows = db.execute(
            f"SELECT * FROM decisions {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*values, limit),
        ).fetchall()
    return [_entry(row) for row in rows]


def record_drift(observation: DriftObservation, settings: Settings) -> None:
    """Add a checked batch to the drift history; the same batch again replaces its row."""
    with connect(settings) as db:
        db.execute(
            "INSERT OR REPLACE INTO drift_history VALUES "
            "(:model_name, :batch_id, :created_at, :drift_score, :drift_share, "
            ":dataset_drift, :sequential_alarm, :detector_state)",
            {**observation.model_dump(), "detector_state": json.dumps(observation.detector_state)},
        )


def drift_history(
    model_name: str, limit: int = 50, *, settings: Settings
) -> list[DriftObservation]:
    """The latest checked batches of a model, oldest first."""
    with connect(settings) as db:
        rows = db.execute(
            "SELECT * FROM drift_history WHERE model_name = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (model_name, limit),
        ).fetchall()
    history = []
    for row in reversed(rows):
        values = dict(row)
        values["detector_state"] = json.loads(values["detector_state"])
        history.append(DriftObservation(**values))
    return history
