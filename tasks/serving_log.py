"""Reading the router's request log: production rows with their scores, and their labels.

The router writes the log (`serving/request_log.py`); this module turns it into
tables. A logged request becomes one row per instance it carried, with `ts` (seconds since
the epoch), `request_id`, `variant`, `version` (the model version that answered), `row_index`
(its place in the request) and `score`, beside the features as the client sent them. A label
joins the first row of its request by `request_id`, as the router's own feedback counts it.

The router may be writing while the log is read: a line cut short at the end of a file, or a
file rotated away meanwhile, is skipped, never an error. A line that is not a record as the
router writes it (corrupt, cut short by a crash, a field of the wrong type) is skipped and
counted (`LogWindow.unusable_lines`), so a damaged log is reported, not read as less traffic.

The monitor's rows reach the drift check as batches written here (`write_window_batch`,
`collect_window`), after the router is asked to flush its buffered lines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from agentic_mlops.serving.request_log import LABELS, REQUESTS, log_files, log_folder
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import reference
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.rollout import rollout_backend

META_COLUMNS = ("ts", "request_id", "variant", "version", "row_index", "score")
LABEL_COLUMNS = ("request_id", "label", "label_ts")
CLOCK_SLACK_SECONDS = 3_600.0
"""How far ahead of the reader's clock a line may be dated. One dated later is not a line the
router wrote: read as the newest row, it would move the monitor's cursor past every row
logged until then."""


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _usable(record: object, kind: str, latest: float, task: str = "binary") -> bool:
    """Whether a parsed line is a record as the router writes it: a finite `ts` up to
    `latest`, a string `request_id`, and a label the model's task takes (0 or 1; a finite
    number for a regressor; a number or a class name for a multiclass model), or a body of
    one row object or
    `{"instances": [...]}` with a finite score per row."""
    if not (
        isinstance(record, dict)
        and _number(record.get("ts"))
        and record["ts"] <= latest
        and isinstance(record.get("request_id"), str)
    ):
        return False
    if kind == LABELS:
        label = record.get("label")
        if task == "regression":
            return _number(label)
        if task == "multiclass":
            return _number(label) or (isinstance(label, str) and bool(label))
        return label in (0, 1)
    body, scores = record.get("row"), record.get("scores")
    instances = body.get("instances", [body]) if isinstance(body, dict) else None
    return (
        isinstance(instances, list)
        and all(isinstance(row, dict) for row in instances)
        and isinstance(scores, list)
        and len(scores) == len(instances)
        and all(_number(score) for score in scores)
    )


def _lines(path: Path, kind: str, task: str) -> list[dict | None]:
    """The lines of one log file in order: each a usable record, or None for one that is not."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return []
    latest = time.time() + CLOCK_SLACK_SECONDS
    records: list[dict | None] = []
    for line in content.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if _usable(record, kind, latest, task) else None)
    return records


def _newest_first(folder: Path, kind: str, task: str = "binary") -> Iterator[list[dict | None]]:
    """The lines of each file of a log, newest file first, each file's lines in order."""
    for path in reversed(log_files(folder, kind)):
        yield _lines(path, kind, task)


def _expand(record: dict) -> list[dict]:
    """The rows of one logged request, with their scores."""
    body = record["row"]
    instances = body.get("instances", [body])
    meta = {key: record.get(key) for key in ("ts", "request_id", "variant", "version")}
    return [
        {**row, **meta, "row_index": index, "score": score}
        for index, (row, score) in enumerate(zip(instances, record["scores"], strict=True))
    ]


def _table(records: Iterable[dict]) -> pd.DataFrame:
    rows = [row for record in records for row in _expand(record)]
    if not rows:
        return pd.DataFrame(columns=list(META_COLUMNS))
    frame = pd.DataFrame.from_records(rows)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    frame["version"] = pd.to_numeric(frame["version"], errors="coerce").astype("Int64")
    return frame


def _unusable_since(lines: list[dict | None], since: float | None, newer_records: bool) -> int:
    """The unusable lines of one file that no earlier read counted: those followed by a record
    after `since` (in this file, or in a newer one when `newer_records`) with no record up to
    `since` in between. One not yet followed by any record (perhaps still being written) waits
    for the next read, so no line is counted twice."""
    counted = waiting = 0
    for line in lines:
        if line is None:
            waiting += 1
            continue
        if since is None or line["ts"] > since:
            counted += waiting
        waiting = 0
    return counted + (waiting if newer_records else 0)


def _recent(
    folder: Path,
    kind: str,
    since: float | None,
    limit: int | None,
    until: float | None = None,
    task: str = "binary",
) -> tuple[list[dict], int]:
    """The records of a log after `since` and up to `until`, at least the newest `limit` of
    them, oldest first; and how many unusable lines (for the model's task) were logged after
    `since`."""
    kept: list[list[dict]] = []
    count = unusable = 0
    for lines in _newest_first(folder, kind, task):
        records = [r for r in lines if r is not None]
        fresh = [r for r in records if since is None or r["ts"] > since]
        unusable += _unusable_since(lines, since, count > 0)
        inside = [r for r in fresh if until is None or r["ts"] <= until]
        kept.append(inside)
        count += len(inside)
        if (limit is not None and count >= limit) or len(fresh) < len(records):
            break
    return [record for records in reversed(kept) for record in records], unusable


def _requests_table(records: list[dict], limit: int | None) -> pd.DataFrame:
    frame = _table(records)
    return frame.tail(limit).reset_index(drop=True) if limit is not None else frame


def requests_by_id(folder: Path, request_ids: Iterable[str]) -> pd.DataFrame:
    """The logged rows of the given requests (as far back as the log goes), oldest first."""
    wanted = set(request_ids)
    kept: list[list[dict]] = []
    for records in _newest_first(folder, REQUESTS):
        if not wanted:
            break
        found = [r for r in records if r is not None and r["request_id"] in wanted]
        wanted -= {r["request_id"] for r in found}
        kept.append(found)
    return _table(record for records in reversed(kept) for record in records)


def labels(
    folder: Path,
    since: float | None = None,
    limit: int | None = None,
    until: float | None = None,
    task: str = "binary",
) -> pd.DataFrame:
    """The labels (of the model's task) received after `since` and up to `until`, the newest
    `limit`, oldest first; a request labelled twice keeps its last label."""
    return _labels_table(_recent(folder, LABELS, since, limit, until, task)[0], limit)


def _labels_table(records: list[dict], limit: int | None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "request_id": [r["request_id"] for r in records],
            "label": [r["label"] for r in records],
            "label_ts": [float(r["ts"]) for r in records],
        },
        columns=list(LABEL_COLUMNS),
    )
    frame = frame.drop_duplicates("request_id", keep="last").reset_index(drop=True)
    return frame.tail(limit).reset_index(drop=True) if limit is not None else frame


def labelled_requests(folder: Path, received: pd.DataFrame) -> pd.DataFrame:
    """The logged rows the given labels belong to, with `label` and `label_ts`, in label order.

    A label whose request has left the log (rotated away) is dropped.
    """
    if received.empty:
        return pd.DataFrame(columns=[*META_COLUMNS, *LABEL_COLUMNS[1:]])
    rows = requests_by_id(folder, received["request_id"])
    if rows.empty:
        return pd.DataFrame(columns=[*META_COLUMNS, *LABEL_COLUMNS[1:]])
    first_rows = rows[rows["row_index"] == 0].drop_duplicates("request_id", keep="last")
    joined = received.merge(first_rows, on="request_id", how="inner")
    return joined.sort_values("label_ts", kind="stable").reset_index(drop=True)


def _text(value: object) -> object:
    """A value of a column of mixed kinds as text (as JSON writes it); a missing one stays."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return value
    return json.dumps(value)


def as_batch(
    rows: pd.DataFrame, like: pd.DataFrame | None = None, target: str | None = None
) -> pd.DataFrame:
    """Logged rows as a data batch: their feature columns (those of `like`, a reference
    sample, when given, cast to its types where the values allow), and the label as `target`
    when given.

    JSON leaves a number's type to the client (`12` for a float column); the casts undo that,
    so quality and drift checks see the types the model was trained on. A column the values do
    not allow to cast (`"expensive"` among numbers) is written as text, as sent, for the
    quality check to flag: Parquet holds no column of mixed kinds.
    """
    logged = {*META_COLUMNS, *LABEL_COLUMNS}
    if like is None:
        columns = [c for c in rows.columns if c not in logged and c != target]
    else:
        columns = [c for c in like.columns if c in rows.columns and c != target]
    batch = rows[columns].copy()
    for column in columns if like is not None else []:
        with contextlib.suppress(TypeError, ValueError):
            batch[column] = batch[column].astype(like[column].dtype)
    for column in batch.columns:
        if batch[column].dtype == object:
            batch[column] = batch[column].map(_text)
    if target is not None and "label" in rows.columns:
        batch[target] = whole_numbers(rows["label"])
        if like is not None and target in like.columns:
            with contextlib.suppress(TypeError, ValueError):
                batch[target] = batch[target].astype(like[target].dtype)
    return batch.reset_index(drop=True)


def whole_numbers(labels: pd.Series) -> pd.Series:
    """Labels as the table they came from held them: whole numbers (0/1, classes) as
    integers, regression targets as floats, class names as text (JSON writes `1` and `1.0`
    alike)."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.notna().all() and (numbers % 1 == 0).all():
        return numbers.astype("int64")
    return numbers if numbers.notna().all() else labels.astype(str)


def write_batch(batch: pd.DataFrame, folder: Path, name: str, keep: int) -> Path:
    """Write a batch of logged rows as Parquet into `folder`; keep the newest `keep` files."""
    path = write_table(batch, folder / f"{name}.parquet")
    for old in sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime)[:-keep]:
        old.unlink(missing_ok=True)
    return path


@dataclass
class LogWindow:
    """What the log holds that a monitor run has not seen yet, and the latest labelled rows."""

    rows: pd.DataFrame
    """Rows logged since the last run (the newest `limit`)."""
    labelled: pd.DataFrame
    """Rows whose labels arrived since the last run, with `label`."""
    recent_labelled: pd.DataFrame
    """The latest `limit` labelled rows, new or not, with `label`."""
    labels_ts: float | None = None
    """The newest label read, joined to a row or not (its row may have been rotated away)."""
    unusable_lines: int = 0
    """Lines logged since the last run that are not a usable record, skipped."""

    @property
    def rows_ts(self) -> float | None:
        return float(self.rows["ts"].max()) if len(self.rows) else None


@task(name="read-request-log", cache_policy=NO_CACHE)
def read_window(
    folder: Path,
    rows_since: float | None,
    labels_since: float | None,
    limit: int,
    task: str = "binary",
) -> LogWindow:
    """The rows and labels logged after the given times, the latest labelled rows, and how
    many lines since the last run were unusable (a label the model's `task` does not take
    among them)."""
    row_records, unusable_rows = _recent(folder, REQUESTS, rows_since, limit)
    label_records, unusable_labels = _recent(folder, LABELS, labels_since, limit, task=task)
    new_labels = _labels_table(label_records, limit)
    return LogWindow(
        rows=_requests_table(row_records, limit),
        labelled=labelled_requests(folder, new_labels),
        recent_labelled=labelled_requests(folder, labels(folder, limit=limit, task=task)),
        labels_ts=float(new_labels["label_ts"].max()) if len(new_labels) else None,
        unusable_lines=unusable_rows + unusable_labels,
    )


def local_router_url(settings: Settings) -> str | None:
    """The address of the router that serves this home, if one does (none on Kubernetes)."""
    return rollout_backend(settings).router_url()


@task(name="flush-request-log", cache_policy=NO_CACHE)
def flush_router_log(router_url: str | None) -> bool:
    """Ask the router to write its buffered log lines now; a router that cannot is read as it
    is on disk (at most `serving_log_flush_seconds` behind)."""
    if router_url is None:
        return False
    try:
        return httpx.post(f"{router_url}/admin/flush-log", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def monitor_batch(batch: pd.DataFrame, settings: Settings, labelled: bool) -> Path:
    """Write production rows as a timestamped Parquet batch under `home/incoming/monitor/`,
    keeping the newest `monitor_batches_kept`."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return write_batch(
        batch,
        settings.home / "incoming" / "monitor",
        f"{settings.model_name}-{stamp}{'-labelled' if labelled else ''}",
        settings.monitor.batches_kept,
    )


@task(name="write-window-batch", cache_policy=NO_CACHE)
def write_window_batch(
    window: LogWindow,
    ref: reference.Reference,
    choice: str,
    settings: Settings,
) -> Path | None:
    """The rows the drift check gets, as a Parquet batch under `home/incoming/monitor/`; None
    when there are fewer than `monitor_min_rows`."""
    labelled = choice == "labelled" or (
        choice == "auto" and len(window.labelled) >= settings.monitor.min_rows
    )
    rows = window.labelled if labelled else window.rows
    if len(rows) < settings.monitor.min_rows:
        return None
    batch = as_batch(rows, ref.sample, ref.card.target if labelled else None)
    return monitor_batch(batch, settings, labelled)


def collect_window(
    settings: Settings,
    since: float | None = None,
    limit: int | None = None,
    until: float | None = None,
) -> str | None:
    """The latest labelled production rows as a batch file, for a drift check or retraining.

    Rows whose labels arrived after `since` and up to `until` (seconds since the epoch; no
    bound when empty), the newest `limit` (`monitor_window_rows`), with the label column;
    None when fewer than `monitor_min_labels` are labelled. Windows overlap unless `since`
    moves on; `until` checks a window that has passed while later traffic goes on.
    """
    folder = log_folder(settings)
    received = labels(folder, since=since, limit=limit or settings.monitor.window_rows, until=until)
    rows = labelled_requests(folder, received)
    if len(rows) < settings.monitor.min_labels:
        return None
    champion = reference.resolve_reference.fn(None, settings.target, settings)
    stored = not isinstance(champion, State)
    target = champion.card.target if stored else settings.target
    batch = as_batch(rows, champion.sample if stored else None, target)
    return str(monitor_batch(batch, settings, labelled=True))
