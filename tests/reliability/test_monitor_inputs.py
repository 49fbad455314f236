"""Bad inputs to the monitor: a damaged request log, broken rows, a broken reference, metrics
that cannot be read. A clear outcome, no good row lost, and the next run as usual.

The monitor reads the router's request log (JSON lines, rotated), the champion's reference
and the serving metrics. A line that is not a record as the router writes it (cut short,
binary, a field of the wrong type or missing, a timestamp from the future) is skipped and
counted in `unusable_lines`, once, and in the report; every good row around it is counted
and checked. Rows the router did answer but whose data is broken (all null, wrong types,
unseen categories, a renamed, duplicated or nested field) reach the drift check, which
quarantines the window's batch whole and escalates. Unreadable metrics are named in
`serving_error` and the run goes on; an unreadable reference ends the run `Failed` named
`InvalidData` with one line naming the file. After each, the next run on good data counts
exactly the new rows and labels and checks them as usual.

The logs are written by the router's own writer (`RequestLog`), the rows scored by the
champion, as if served; the damage is written into the files afterwards.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from agentic_mlops.flows.monitor import monitor
from agentic_mlops.serving.request_log import (
    LABELS,
    REQUESTS,
    RequestLog,
    log_files,
    log_folder,
)
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import registry, serving_log
from agentic_mlops.tasks.batches import read_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.reference import score_with
from tests.conftest import artifacts_by_key
from tests.reliability.test_bad_inputs import BROKEN
from tests.reliability.test_faults import closed_port


def customers(rows: int, seed: int) -> tuple[pd.DataFrame, list[int]]:
    frame = generate_churn(rows, seed)
    return frame.drop(columns="churn"), frame["churn"].tolist()


def served(
    settings: Settings,
    frame: pd.DataFrame,
    labels: list[int],
    prefix: str,
    labelled: int,
    sent: pd.DataFrame | None = None,
) -> list[str]:
    """Log `frame`'s rows as answered by the champion and the first `labelled` labels, with
    the router's own writer; `sent` is what the clients sent instead, when it differs (the
    scores stay those of `frame`). Returns the request ids."""
    log = RequestLog(log_folder(settings))
    scores = score_with(settings.model_name, 1, frame, settings)
    bodies = (frame if sent is None else sent).to_dict("records")
    ids = [f"{prefix}-{index}" for index in range(len(frame))]
    for request_id, body, score in zip(ids, bodies, scores, strict=True):
        log.served(request_id, "baseline", 1, [float(score)], json.dumps(body).encode())
    for request_id, label in list(zip(ids, labels, strict=True))[:labelled]:
        log.labelled(request_id, label)
    log.flush()
    return ids


def good_traffic(settings: Settings, prefix: str, seed: int, rows=300, labelled=250) -> None:
    served(settings, *customers(rows, seed), prefix, labelled)


def damage(settings: Settings, kind: str, lines: list[bytes]) -> None:
    """Write raw lines into the newest file of a log, as a crash, a disk or a bad writer
    would."""
    with log_files(log_folder(settings), kind)[-1].open("ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def request(**fields) -> bytes:
    """A request line as the router writes it, with `fields` replaced (None: left out)."""
    record = {
        "ts": round(time.time(), 3),
        "request_id": "damaged",
        "variant": "baseline",
        "version": 1,
        "scores": [0.3],
        "row": customers(1, 9)[0].to_dict("records")[0],
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


def label(**fields) -> bytes:
    record = {"ts": round(time.time(), 3), "request_id": "good-0", "label": 1, **fields}
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


UNUSABLE_REQUESTS: dict[str, bytes] = {
    "cut-short": request()[:40],
    "binary": b"\x1f\x8b\x08\x00\xff\xfe\x00garbage",
    "not-an-object": b"[1, 2, 3]",
    "ts-as-text": request(ts="yesterday"),
    "ts-in-the-future": request(ts=4_102_444_800.0),
    "ts-missing": request(ts=None),
    "request-id-a-list": request(request_id=["a"]),
    "scores-a-number": request(scores=0.5),
    "scores-missing": request(scores=None),
    "score-not-a-number": request(scores=[float("nan")]),
    "fewer-scores-than-rows": request(row={"instances": [{}, {}]}),
    "instances-a-number": request(row={"instances": 5}),
    "row-a-list": request(row=[1, 2]),
}
UNUSABLE_LABELS: dict[str, bytes] = {
    "label-as-text": label(label="yes"),
    "label-out-of-range": label(label=2),
    "label-ts-missing": label(ts=None),
}
UNKNOWN_LABELS = [label(request_id="never-served"), label(request_id="rotated-away", label=0)]
"""Usable label lines whose requests are not in the log: nothing to join, not counted."""


def run(**params):
    return monitor(act=False, **params, return_state=True)


def assert_usual(state, rows: int, labels: int) -> None:
    """A run on good data: completed, exactly the new rows and labels, all of them usable,
    and a drift check that passed the data's quality."""
    assert state.is_completed() and state.name == "Completed", (state.name, state.message)
    result = state.result()
    assert (result.rows, result.labels, result.unusable_lines) == (rows, labels, 0)
    check = result.drift_check
    assert check is not None and result.drift_check_error is None
    assert check.quality.passed and check.quarantined is None
    assert check.decision.action != "escalate"
    assert len(read_table(result.batch_path)) == labels


def test_unusable_log_lines_are_counted_once_and_every_good_row_kept(champion_home):
    good_traffic(champion_home, "good", 50, rows=150, labelled=120)
    damage(champion_home, REQUESTS, list(UNUSABLE_REQUESTS.values()))
    damage(champion_home, LABELS, [*UNUSABLE_LABELS.values(), *UNKNOWN_LABELS])
    good_traffic(champion_home, "more", 51, rows=150, labelled=120)

    state = run(check_drift=False)

    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert result.rows == 300 and result.labels == 240
    assert result.unusable_lines == len(UNUSABLE_REQUESTS) + len(UNUSABLE_LABELS)
    assert result.online.rows == 240
    report = artifacts_by_key("churn-monitor")[0]["data"]
    assert f"Unusable request-log lines skipped: {result.unusable_lines}" in report

    good_traffic(champion_home, "next", 52)
    assert_usual(run(), rows=300, labels=250)


def test_an_unreachable_router_and_an_empty_log_leave_a_run_with_nothing_to_check(
    champion_home,
):
    state = run(router_url=f"http://127.0.0.1:{closed_port()}")
    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert result.serving is None and "router metrics unavailable" in result.serving_error
    assert (result.rows, result.labels, result.unusable_lines) == (0, 0, 0)
    assert (
        result.drift_check is None
        and f"fewer than {champion_home.monitor.min_rows} new rows" in result.drift_check_error
    )

    good_traffic(champion_home, "good", 50)
    assert_usual(run(), rows=300, labels=250)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "line"),
    [
        pytest.param(kind, line, id=name)
        for kind, lines in ((REQUESTS, UNUSABLE_REQUESTS), (LABELS, UNUSABLE_LABELS))
        for name, line in lines.items()
    ],
)
def test_each_unusable_line_is_counted_and_the_rows_around_it_kept(champion_home, kind, line):
    good_traffic(champion_home, "good", 50, rows=150, labelled=120)
    damage(champion_home, kind, [line])
    good_traffic(champion_home, "more", 51, rows=150, labelled=120)
    state = run()
    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert (result.rows, result.labels, result.unusable_lines) == (300, 240, 1)
    assert result.drift_check is not None and result.drift_check.quality.passed

    good_traffic(champion_home, "next", 52)
    assert_usual(run(), rows=300, labels=250)


@pytest.mark.slow
def test_a_line_cut_short_at_the_end_is_counted_once_a_record_follows_it(champion_home):
    good_traffic(champion_home, "good", 50)
    damage(champion_home, REQUESTS, [UNUSABLE_REQUESTS["cut-short"]])
    first = run(check_drift=False).result()
    assert (first.rows, first.unusable_lines) == (300, 0), "perhaps still being written"

    good_traffic(champion_home, "next", 52)
    second = run(check_drift=False).result()
    assert (second.rows, second.unusable_lines) == (300, 1)
    third = run(check_drift=False).result()
    assert (third.rows, third.unusable_lines) == (0, 0), "counted once"


def duplicated_keys(frame: pd.DataFrame) -> list[str]:
    """Each row's JSON with `contract` given twice, the second time with an unseen value."""
    return [
        json.dumps(row)[:-1] + ', "contract": "lifetime_deal"}' for row in frame.to_dict("records")
    ]


SENT_BROKEN = {
    **BROKEN,
    "nested-values": lambda frame: frame.assign(contract=[["one_year", 1]] * len(frame)),
}
"""The drift check's broken batches (`test_bad_inputs.BROKEN`) as clients would send them,
and a value JSON can hold but no column can."""


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [*SENT_BROKEN, "duplicated-keys"])
def test_broken_rows_among_good_ones_are_quarantined_with_the_window(champion_home, breakage):
    good_traffic(champion_home, "good", 50)
    frame, labels = customers(40, 77)
    if breakage == "duplicated-keys":
        log = RequestLog(log_folder(champion_home))
        scores = score_with("churn", 1, frame, champion_home)
        for index, (body, score) in enumerate(zip(duplicated_keys(frame), scores, strict=True)):
            log.served(f"broken-{index}", "baseline", 1, [float(score)], body.encode())
            log.labelled(f"broken-{index}", labels[index])
        log.flush()
    else:
        served(champion_home, frame, labels, "broken", 40, sent=SENT_BROKEN[breakage](frame))

    state = run()

    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert (result.rows, result.labels, result.unusable_lines) == (340, 290, 0)
    check = result.drift_check
    assert check.decision.action == "escalate" and not check.quality.passed
    assert len(read_table(check.quarantined)) == 290, "the window's rows, whole, in quarantine"

    good_traffic(champion_home, "next", 52)
    assert_usual(run(), rows=300, labels=250)


@pytest.mark.slow
def test_a_log_with_empty_files_is_an_empty_window(champion_home):
    folder = log_folder(champion_home)
    folder.mkdir(parents=True)
    for kind in (REQUESTS, LABELS):
        (folder / f"{kind}-00000001.jsonl").write_bytes(b"")
    result = run().result()
    assert (result.rows, result.labels, result.unusable_lines) == (0, 0, 0)
    assert f"fewer than {champion_home.monitor.min_rows} new rows" in result.drift_check_error

    good_traffic(champion_home, "good", 50)
    assert_usual(run(), rows=300, labels=250)


@pytest.mark.slow
def test_prometheus_down_is_named_and_the_rows_still_checked(champion_home, monkeypatch):
    good_traffic(champion_home, "good", 50)
    monkeypatch.setenv("AGENTIC_MLOPS_PROMETHEUS_URL", f"http://127.0.0.1:{closed_port()}")
    state = run()
    result = state.result()
    assert result.serving is None and "prometheus unavailable" in result.serving_error
    assert result.rows == 300 and result.drift_check is not None

    monkeypatch.delenv("AGENTIC_MLOPS_PROMETHEUS_URL")
    good_traffic(champion_home, "next", 52)
    assert_usual(run(), rows=300, labels=250)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


REFERENCE_BREAKAGES = {
    "profile.json": (lambda path: path.write_text('{"columns": {"x"'), "unreadable reference"),
    "sample.parquet": (truncate, "unreadable parquet file"),
    "model_card.json": (lambda path: path.write_text("[]"), "unreadable model card"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*REFERENCE_BREAKAGES, "0-row sample.parquet"])
def test_a_broken_reference_fails_the_run_named_and_leaves_the_log_unread(champion_home, name):
    good_traffic(champion_home, "good", 50)
    folder = registry.reference_dir("churn", 1, champion_home)
    intact = champion_home.home / "intact-reference"
    shutil.copytree(folder, intact)
    if name == "0-row sample.parquet":
        path, fragment = folder / "sample.parquet", "file has no rows"
        read_table(path).iloc[:0].to_parquet(path)
    else:
        path = folder / name
        make, fragment = REFERENCE_BREAKAGES[name]
        make(path)

    state = run()

    assert state.is_failed() and state.name == "InvalidData", (state.name, state.message)
    assert "\n" not in state.message and fragment in state.message and str(path) in state.message
    shutil.rmtree(folder)
    shutil.copytree(intact, folder)
    assert_usual(run(), rows=300, labels=250)


def request_ids(path: Path) -> set[str]:
    return {json.loads(line)["request_id"] for line in path.read_bytes().splitlines()}


@pytest.mark.slow
def test_a_log_rotated_while_it_is_read_loses_only_the_rows_rotated_away(
    champion_home, monkeypatch
):
    log = RequestLog(log_folder(champion_home), max_bytes=16_384, files=3, chunk_bytes=4_096)
    frame, _ = customers(260, 50)
    scores = score_with("churn", 1, frame, champion_home)
    bodies = [json.dumps(row).encode() for row in frame.to_dict("records")]

    def serve(indices, pause: float = 0.0) -> None:
        for index in indices:
            log.served(f"row-{index:04d}", "baseline", 1, [float(scores[index])], bodies[index])
            time.sleep(pause)  # a timestamp of its own per line, however fast the machine
        log.flush()

    serve(range(150))
    listed = serving_log.log_files
    read: dict[Path, set[str]] = {}

    def rotating_after_listing(folder: Path, kind: str) -> list[Path]:
        """The files as listed; then, before they are read, the router goes on and rotates."""
        files = listed(folder, kind)
        if kind == REQUESTS and not read:
            read.update({path: request_ids(path) for path in files})
            serve(range(150, 260), pause=0.001)
        return files

    monkeypatch.setattr(serving_log, "log_files", rotating_after_listing)
    first = run(check_drift=False).result()
    monkeypatch.setattr(serving_log, "log_files", listed)

    folder = log_folder(champion_home)
    rotated_away = set().union(*(ids for path, ids in read.items() if not path.exists()))
    read_then = set().union(*(request_ids(path) for path in read if path.exists()))
    started_since = [path for path in listed(folder, REQUESTS) if path not in read]
    assert rotated_away, "the router rotated a listed file away while it was read"
    assert first.rows == len(read_then) and first.unusable_lines == 0

    second = run(check_drift=False).result()
    assert second.rows == len(set().union(*map(request_ids, started_since)))
    listed_rows = set().union(*read.values())
    assert len(rotated_away) + first.rows + second.rows == len(listed_rows) + 110, "none lost"


HUGE_ROWS = 100_000


@pytest.mark.slow
def test_a_huge_log_is_read_to_the_newest_window_and_the_next_run_goes_on(champion_home):
    log = RequestLog(log_folder(champion_home), max_bytes=8 * 1024 * 1024, files=4)
    frame, _ = customers(2_000, 50)
    scores = score_with("churn", 1, frame, champion_home)
    bodies = [json.dumps(row).encode() for row in frame.to_dict("records")]
    for index in range(HUGE_ROWS):
        log.served(
            f"huge-{index:06d}",
            "baseline",
            1,
            [float(scores[index % 2_000])],
            bodies[index % 2_000],
        )
    log.flush()
    on_disk = serving_log.read_window.fn(log_folder(champion_home), None, None, None).rows
    assert len(on_disk) > champion_home.monitor.window_rows

    started = time.perf_counter()
    state = run()
    assert time.perf_counter() - started < 60
    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert result.rows == champion_home.monitor.window_rows and result.unusable_lines == 0
    newest = on_disk.tail(champion_home.monitor.window_rows)
    batch = read_table(result.batch_path)
    assert batch["monthly_charges"].tolist() == newest["monthly_charges"].astype(float).tolist()
    assert result.drift_check.quality.passed

    good_traffic(champion_home, "next", 52)
    assert_usual(run(), rows=300, labels=250)
