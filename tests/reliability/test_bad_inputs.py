"""Bad inputs to the drift-check and data-quality flows: a clear error or a correct quarantine.

An unusable file (empty, no rows, corrupt, a column named twice, an unsupported format) ends
the run `Failed` named `InvalidData` with a one-line message naming the file, and the file
stays where it was, unchanged. Usable but broken data (all null, wrong types, unseen
categories, a renamed column, infinite values) is moved, unchanged, into quarantine with its
validation result, the run ends `Completed` named `Quarantined`, and the drift check
escalates. Nothing reaches the sequential detector but batches that passed, and the next good
batch is checked as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentic_mlops.flows.data_quality import data_quality
from agentic_mlops.flows.drift import drift_check
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import read_table
from agentic_mlops.tasks.churn import FEATURES, generate_churn


def features(rows: int = 500, seed: int = 100) -> pd.DataFrame:
    return generate_churn(rows, seed).drop(columns=["churn"])


def header_only(path: Path) -> None:
    path.write_text(",".join(FEATURES) + "\n")


def truncated(path: Path) -> None:
    features().to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scrambled(path: Path) -> None:
    features().to_parquet(path)
    data = bytearray(path.read_bytes())
    for index in range(64, len(data) - 64, 37):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def repeated_csv_header(path: Path) -> None:
    frame = features()
    frame.insert(1, "copy", frame["tenure_months"] + 1)
    text = frame.to_csv(index=False)
    path.write_text(text.replace("copy", "tenure_months", 1))


def repeated_parquet_column(path: Path) -> None:
    table = pa.Table.from_pandas(features(), preserve_index=False)
    pq.write_table(
        pa.Table.from_arrays(
            [*table.columns, table.column("contract")], names=[*table.column_names, "contract"]
        ),
        path,
    )


UNUSABLE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty.csv": (lambda path: path.write_bytes(b""), "file is empty"),
    "header-only.csv": (header_only, "file has no rows"),
    "no-rows.parquet": (lambda path: features().iloc[:0].to_parquet(path), "file has no rows"),
    "truncated.parquet": (truncated, "unreadable parquet file"),
    "scrambled.parquet": (scrambled, "unreadable parquet file"),
    "repeated-header.csv": (repeated_csv_header, "duplicated columns: tenure_months"),
    "repeated-column.parquet": (repeated_parquet_column, "duplicated columns: contract"),
    "batch.xlsx": (lambda path: path.write_bytes(b"PK\x03\x04"), "unsupported format .xlsx"),
}
QUICK_UNUSABLE = ("truncated.parquet", "repeated-header.csv")


def all_null(frame: pd.DataFrame) -> pd.DataFrame:
    """Every value missing, each column keeping its kind (float for numbers, else object)."""
    return pd.DataFrame(
        {
            name: pd.Series(
                [None] * len(frame),
                dtype=float if pd.api.types.is_numeric_dtype(values) else object,
            )
            for name, values in frame.items()
        }
    )


def wrong_types(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(
        monthly_charges="expensive", tenure_months=frame["tenure_months"].astype(str)
    )


BROKEN: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "all-null": all_null,
    "wrong-types": wrong_types,
    "unseen-categories": lambda frame: frame.assign(contract="lifetime_deal"),
    "renamed-column": lambda frame: frame.rename(columns={"monthly_charges": "MonthlyCharges"}),
    "infinite-values": lambda frame: frame.assign(monthly_charges=np.inf),
}
QUICK_BROKEN = ("all-null",)


def check_drift(path: Path, **extra):
    return drift_check(current_path=str(path), **extra, return_state=True)


def check_quality(path: Path, settings):
    suite = settings.home / "models" / "churn" / "v1" / "expectations.json"
    return data_quality(current_path=str(path), suite_path=str(suite), return_state=True)


FLOWS = {
    "drift-check": lambda path, settings: check_drift(path, act=True),
    "data-quality": check_quality,
}


def assert_refused(state, path: Path, content: bytes, fragment: str, settings) -> None:
    """A named Failed state with a one-line message; the file untouched; nothing recorded."""
    assert state.is_failed() and state.name == "InvalidData", (state.name, state.message)
    assert "\n" not in state.message and fragment in state.message and str(path) in state.message
    assert path.read_bytes() == content
    assert not any(settings.quarantine_dir.iterdir())
    assert ledger.drift_history("churn", settings=settings) == []
    assert ledger.list_decisions("churn", settings=settings) == []


def cases(names, quick_names, quick: bool) -> list:
    """(flow, case) pairs: the quick ones with the drift check in `make test`, the rest slow."""
    return [
        pytest.param(flow, name, id=f"{flow}-{name}")
        for flow in FLOWS
        for name in names
        if (flow == "drift-check" and name in quick_names) == quick
    ]


def _refuses(flow: str, name: str, settings) -> None:
    make, fragment = UNUSABLE[name]
    path = settings.home / "incoming" / name
    make(path)
    content = path.read_bytes()
    assert_refused(FLOWS[flow](path, settings), path, content, fragment, settings)


@pytest.mark.parametrize(("flow", "name"), cases(UNUSABLE, QUICK_UNUSABLE, quick=True))
def test_an_unusable_file_is_refused_and_left_in_place(champion_home, flow, name):
    _refuses(flow, name, champion_home)


@pytest.mark.slow
@pytest.mark.parametrize(("flow", "name"), cases(UNUSABLE, QUICK_UNUSABLE, quick=False))
def test_every_unusable_file_is_refused_and_left_in_place(champion_home, flow, name):
    _refuses(flow, name, champion_home)


def _quarantines(flow: str, breakage: str, settings) -> None:
    path = settings.home / "incoming" / f"{breakage}.parquet"
    BROKEN[breakage](features()).to_parquet(path)
    content = path.read_bytes()
    state = FLOWS[flow](path, settings)
    assert state.is_completed() and state.name == "Quarantined", (state.name, state.message)
    moved = settings.quarantine_dir / path.name
    assert not path.exists() and moved.read_bytes() == content
    assert (settings.quarantine_dir / f"{path.name}.validation.json").exists()
    if flow == "drift-check":
        result = state.result()
        assert result.quarantined == str(moved) and not result.quality.passed
        assert result.decision.action == "escalate"
        assert any(action.startswith("escalate") for action in result.actions_taken)
        assert ledger.drift_history("churn", settings=settings) == []


@pytest.mark.parametrize(("flow", "breakage"), cases(BROKEN, QUICK_BROKEN, quick=True))
def test_broken_data_is_quarantined_whole_and_escalated(champion_home, flow, breakage):
    _quarantines(flow, breakage, champion_home)


@pytest.mark.slow
@pytest.mark.parametrize(("flow", "breakage"), cases(BROKEN, QUICK_BROKEN, quick=False))
def test_every_kind_of_broken_data_is_quarantined_by_both_flows(champion_home, flow, breakage):
    _quarantines(flow, breakage, champion_home)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("reference.parquet", lambda path: generate_churn(10).iloc[:0].to_parquet(path)),
        pytest.param("reference.csv", header_only, marks=pytest.mark.slow),
    ],
)
def test_a_reference_with_no_rows_is_refused_and_the_batch_kept(
    champion_home, tmp_path, name, make
):
    reference = tmp_path / name
    make(reference)
    batch = champion_home.home / "incoming" / "good.parquet"
    features().to_parquet(batch)
    content = batch.read_bytes()
    state = check_drift(batch, reference_path=str(reference))
    assert_refused(state, reference, reference.read_bytes(), "file has no rows", champion_home)
    assert batch.read_bytes() == content


@pytest.mark.slow
def test_after_bad_inputs_the_next_good_batch_is_checked_as_usual(champion_home):
    incoming = champion_home.home / "incoming"
    truncated(incoming / "truncated.parquet")
    all_null(features()).to_parquet(incoming / "all-null.parquet")
    for name in ("truncated.parquet", "all-null.parquet"):
        assert check_drift(incoming / name).name in ("InvalidData", "Quarantined")
    good = incoming / "good.parquet"
    features(seed=101).to_parquet(good)
    state = check_drift(good)
    assert state.is_completed() and state.name == "Completed"
    assert state.result().decision.action == "none"
    history = ledger.drift_history("churn", settings=champion_home)
    assert [o.batch_id for o in history] == ["good.parquet"]
    assert not history[0].sequential_alarm


HUGE_ROWS = 3_000_000


@pytest.mark.slow
def test_a_huge_batch_is_checked_whole_and_no_row_is_lost(champion_home):
    frame = generate_churn(HUGE_ROWS, 7).drop(columns=["churn"])
    frame.loc[frame.index % 200 == 0, "contract"] = "lifetime_deal"
    path = champion_home.home / "incoming" / "huge.parquet"
    frame.to_parquet(path)
    state = check_drift(path)
    assert state.is_completed() and state.name == "Completed", state.message
    result = state.result()
    assert result.quality.failing_rows == HUGE_ROWS // 200
    assert path.exists()
    failing = read_table(champion_home.quarantine_dir / "huge.failing-rows.parquet")
    clean = read_table(champion_home.data_dir / "clean" / "huge.parquet")
    assert len(failing) + len(clean) == HUGE_ROWS
    assert set(failing["contract"]) == {"lifetime_deal"}
    assert result.decision.action == "none" and not result.dataset_drift
