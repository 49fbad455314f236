"""The router's request log: what it writes per request and label, its bounds and rotation,
and reading it back as tables. The router and a constant-model server run in this process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
from aiohttp import web

from agentic_mlops.serving.model_server import ModelServer
from agentic_mlops.serving.request_log import (
    LABELS,
    REQUESTS,
    RequestLog,
    log_files,
)
from agentic_mlops.serving.router import Router
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import serving_log
from agentic_mlops.tasks.churn import generate_churn


class ConstantModel:
    """Scores every row 0.3."""

    def predict(self, frame):
        return [[0.7, 0.3]] * len(frame)


@contextmanager
def serving(tmp_path: Path, request_log: RequestLog | None):
    """A router (with `request_log`) in front of a constant-model server, both on loopback in
    a background event loop; yields the router and its address."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    router = Router(tmp_path / "router.json", request_log=request_log, seed=1)
    try:
        model_url = run(start(ModelServer(ConstantModel(), "churn", "1").app()))
        router_url = run(start(router.app()))
        httpx.post(
            f"{router_url}/admin/state", json={"baseline": {"url": model_url, "version": 1}}
        ).raise_for_status()
        yield router, router_url
    finally:
        for runner in reversed(runners):
            run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def logged_rows(folder: Path, since: float | None = None, limit: int | None = None) -> pd.DataFrame:
    """The logged rows after `since`, the newest `limit`, as the monitor's window reads them."""
    return serving_log.read_window.fn(folder, since, None, limit).rows


def customers(n: int, seed: int = 3) -> list[dict]:
    return generate_churn(n, seed).drop(columns="churn").to_dict("records")


def test_the_router_logs_each_answered_row_and_its_label(tmp_path):
    folder = tmp_path / "log"
    rows = customers(4)
    with (
        serving(tmp_path, RequestLog(folder, flush_seconds=60)) as (_, url),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        ids = [client.post("/predict", json=row).json()["request_id"] for row in rows[:2]]
        pair = client.post("/predict", json={"instances": rows[2:4]}).json()
        assert client.post("/predict", json={"instances": "no rows"}).status_code == 400
        assert client.post("/feedback", json={"request_id": ids[1], "label": 1}).is_success
        assert client.post("/feedback", json={"request_id": "nobody", "label": 1}).is_error
        assert not log_files(folder, REQUESTS), "buffered until a flush"
        flushed = client.post("/admin/flush-log").json()
    assert flushed["written"] == {REQUESTS: 3, LABELS: 1}

    logged = logged_rows(folder)
    assert logged["request_id"].tolist() == [*ids, pair["request_id"], pair["request_id"]]
    assert logged["row_index"].tolist() == [0, 0, 0, 1]
    assert logged["score"].tolist() == pytest.approx([0.3] * 4)
    assert set(logged["variant"]) == {"baseline"} and set(logged["version"]) == {1}
    features = logged[list(rows[0])].to_dict("records")
    assert features == rows

    received = serving_log.labels(folder)
    assert received[["request_id", "label"]].values.tolist() == [[ids[1], 1]]
    labelled = serving_log.labelled_requests(folder, received)
    assert labelled["request_id"].tolist() == [ids[1]] and labelled["label"].tolist() == [1]


def test_the_router_flushes_by_itself_and_on_shutdown(tmp_path):
    folder = tmp_path / "log"
    with serving(tmp_path, RequestLog(folder, flush_seconds=0.2)) as (_, url):
        httpx.post(f"{url}/predict", json=customers(1)[0]).raise_for_status()
        deadline = time.monotonic() + 10
        while not log_files(folder, REQUESTS) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(logged_rows(folder)) == 1
    with serving(tmp_path, RequestLog(folder, flush_seconds=60)) as (_, url):
        httpx.post(f"{url}/predict", json=customers(1)[0]).raise_for_status()
    assert len(logged_rows(folder)) == 2, "the last lines are written on stop"


def test_a_router_without_a_log_has_no_flush(tmp_path):
    with serving(tmp_path, None) as (_, url):
        httpx.post(f"{url}/predict", json=customers(1)[0]).raise_for_status()
        assert httpx.post(f"{url}/admin/flush-log").status_code == 404
    assert RequestLog.from_settings(Settings(serving_log_enabled=False)) is None


def fill(log: RequestLog, count: int, start: int = 0) -> list[str]:
    body = json.dumps(customers(1)[0]).encode()
    ids = [f"request-{i:05d}" for i in range(start, start + count)]
    for request_id in ids:
        log.served(request_id, "baseline", 1, [0.25], body)
    log.flush()
    return ids


def test_rotation_keeps_the_newest_files_within_their_bounds(tmp_path):
    folder = tmp_path / "log"
    log = RequestLog(folder, max_bytes=8_192, files=3, chunk_bytes=1_024)
    ids = fill(log, 600)
    files = log_files(folder, REQUESTS)
    assert len(files) == 3
    line = len(next(iter(files[0].read_bytes().splitlines(keepends=True))))
    assert all(f.stat().st_size <= 8_192 + 1_024 + line for f in files)
    assert int(files[0].stem.split("-")[1]) > 1, "the oldest files were deleted"

    kept = logged_rows(folder)["request_id"].tolist()
    assert kept == ids[-len(kept) :], "the newest rows, in order, none missing"
    assert 3 * 8_192 / line * 0.6 < len(kept) < len(ids)
    assert logged_rows(folder, limit=10)["request_id"].tolist() == ids[-10:]


def test_a_restarted_log_appends_and_a_torn_line_is_skipped(tmp_path):
    folder = tmp_path / "log"
    first = fill(RequestLog(folder), 5)
    newest = log_files(folder, REQUESTS)[-1]
    with newest.open("ab") as handle:
        handle.write(b'{"ts": 1, "request_id": "torn", "row": {"ten')  # killed mid-write
    second = fill(RequestLog(folder), 5, start=5)
    assert log_files(folder, REQUESTS) == [newest], "a file with room is appended to"
    assert logged_rows(folder)["request_id"].tolist() == first + second


def test_reading_since_a_time_returns_only_newer_rows(tmp_path):
    folder = tmp_path / "log"
    log = RequestLog(folder, max_bytes=2_048, files=50, chunk_bytes=512)
    fill(log, 30)
    cut = logged_rows(folder)["ts"].max()
    time.sleep(0.01)
    later = fill(log, 30, start=30)
    newer = logged_rows(folder, since=cut)
    assert newer["request_id"].tolist() == later
    assert logged_rows(folder, since=newer["ts"].max()).empty


def test_a_past_window_is_bounded_on_both_sides_while_traffic_goes_on(tmp_path):
    folder = tmp_path / "log"
    log = RequestLog(folder, max_bytes=2_048, files=50, chunk_bytes=512)
    ids = fill(log, 90)
    bursts: list[list[str]] = []
    for burst in (ids[:30], ids[30:60], ids[60:]):
        for request_id in burst:
            log.labelled(request_id, 1)
        log.flush()
        bursts.append(burst)
        time.sleep(0.01)
    times = serving_log.labels(folder)["label_ts"].tolist()
    since, until = times[29], times[59]
    assert len(log_files(folder, LABELS)) > 1, "the window spans rotated files"

    window = serving_log.labels(folder, since=since, until=until)
    assert window["request_id"].tolist() == bursts[1]
    newest = serving_log.labels(folder, since=since, until=until, limit=10)
    assert newest["request_id"].tolist() == bursts[1][-10:]
    assert serving_log.labels(folder, until=times[29])["request_id"].tolist() == bursts[0]


def test_a_failing_disk_drops_lines_and_never_raises(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    log = RequestLog(blocked / "log")
    fill(log, 3)
    log.labelled("request-00000", 1)
    log.flush()
    stats = log.stats()
    assert stats["requests_lines_dropped"] == 3 and stats["labels_lines_dropped"] == 1
    assert stats["requests_write_errors"] >= 1 and stats["requests_lines_written"] == 0


def test_logging_a_request_costs_microseconds(tmp_path):
    log = RequestLog(tmp_path / "log", max_bytes=1_000_000, files=2)
    body = json.dumps(customers(1)[0]).encode()
    start = time.perf_counter()
    for i in range(20_000):
        log.served(f"{i:032x}", "baseline", 1, [0.123456], body)
    per_row = (time.perf_counter() - start) / 20_000
    assert per_row < 50e-6, f"{per_row * 1e6:.1f} us per logged request"


def test_a_batch_takes_the_reference_types_and_the_label(tmp_path):
    like = pd.DataFrame({"monthly_charges": [70.5], "contract": ["one_year"], "churn": [0]})
    rows = pd.DataFrame(
        {
            "monthly_charges": [70, 80],
            "contract": ["one_year", "two_year"],
            "extra": [1, 2],
            "ts": [1.0, 2.0],
            "request_id": ["a", "b"],
            "score": [0.1, 0.2],
            "label": [1.0, 0.0],
        }
    )
    batch = serving_log.as_batch(rows, like, "churn")
    assert list(batch.columns) == ["monthly_charges", "contract", "churn"]
    assert batch["monthly_charges"].dtype == float and batch["churn"].tolist() == [1, 0]
    unlabelled = serving_log.as_batch(rows)
    assert list(unlabelled.columns) == ["monthly_charges", "contract", "extra"]


def test_batch_files_beyond_the_kept_number_are_deleted(tmp_path):
    frame = pd.DataFrame({"x": [1.0]})
    paths = []
    for i in range(4):
        paths.append(serving_log.write_batch(frame, tmp_path, f"batch-{i}", keep=2))
        time.sleep(0.01)
    assert sorted(tmp_path.glob("*.parquet")) == paths[-2:]


def test_a_window_moves_past_labels_whose_rows_left_the_log(tmp_path):
    folder = tmp_path / "log"
    log = RequestLog(folder)
    ids = fill(log, 3)
    log.labelled(ids[0], 1)
    log.labelled("rotated-away", 0)
    log.flush()
    window = serving_log.read_window.fn(folder, None, None, limit=100)
    assert window.labelled["request_id"].tolist() == [ids[0]]
    assert window.labels_ts == serving_log.labels(folder)["label_ts"].max()
    later = serving_log.read_window.fn(folder, window.rows_ts, window.labels_ts, limit=100)
    assert later.rows.empty and later.labelled.empty and later.labels_ts is None
    assert len(later.recent_labelled) == 1


@pytest.mark.parametrize(
    ("task", "labels", "dtype"),
    [
        ("regression", (151.0, 75.0), "int64"),
        ("regression", (151.5, 75.0), "float64"),
        ("multiclass", ("setosa", "virginica"), "object"),
    ],
)
def test_labels_of_every_task_reach_the_monitors_window(tmp_path, task, labels, dtype):
    """A regressor's targets and classes named by text are read back as logged, not only 0/1
    labels; a binary champion's window still skips them as unusable."""
    folder = tmp_path / "log"
    log = RequestLog(folder)
    ids = fill(log, 4)
    for request_id, label in zip(ids, labels, strict=False):
        log.labelled(request_id, label)
    log.labelled(ids[-1], 1)
    log.flush()
    window = serving_log.read_window.fn(folder, None, None, limit=100, task=task)
    assert window.labelled["label"].tolist()[:2] == list(labels) and window.unusable_lines == 0
    binary = serving_log.read_window.fn(folder, None, None, limit=100)
    assert binary.labelled["label"].tolist() == [1] and binary.unusable_lines == 2
    window.labelled = window.labelled.head(2)
    batch = serving_log.as_batch(window.labelled, target="target")
    assert batch["target"].tolist() == list(labels) and str(batch["target"].dtype) == dtype
    like = pd.DataFrame({"target": [0.5]})
    if dtype != "object":
        assert serving_log.as_batch(window.labelled, like, "target")["target"].dtype == float
