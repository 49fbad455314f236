import pandas as pd
import pytest

from agentic_mlops.tasks.batches import (
    DataError,
    read_batches,
    read_data,
    read_table,
    require_columns,
    write_table,
)
from agentic_mlops.tasks.churn import generate_churn


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_churn(200, seed=5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_of_csv_and_parquet(tmp_path, frame, suffix):
    path = write_table(frame, tmp_path / f"batch{suffix}")
    loaded = read_table(path)
    pd.testing.assert_frame_equal(loaded, frame, check_dtype=suffix == ".parquet")


def test_folder_of_batches_reads_in_name_order(tmp_path, frame):
    write_table(frame.iloc[100:], tmp_path / "batch-0002.csv")
    write_table(frame.iloc[:100], tmp_path / "batch-0001.parquet")
    (tmp_path / "notes.txt").write_text("not a batch")
    batches = read_batches(tmp_path)
    assert [p.name for p, _ in batches] == ["batch-0001.parquet", "batch-0002.csv"]
    assert len(read_data(tmp_path)) == len(frame)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_zero_byte_file_is_empty(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "empty.csv")


def test_header_only_csv_has_no_rows(tmp_path):
    (tmp_path / "header.csv").write_text("tenure_months,churn\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(tmp_path / "header.csv")


def test_corrupted_parquet_is_unreadable(tmp_path, frame):
    path = write_table(frame, tmp_path / "batch.parquet")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="unreadable parquet"):
        read_table(path)


def test_binary_garbage_csv_is_unreadable(tmp_path):
    (tmp_path / "garbage.csv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="unreadable csv"):
        read_table(tmp_path / "garbage.csv")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        read_table(tmp_path / "data.xlsx")


def test_folder_without_batches(tmp_path):
    with pytest.raises(DataError, match="no .csv or .parquet"):
        read_batches(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        read_batches(tmp_path / "absent")


def test_wrong_columns_are_named(frame):
    renamed = frame.rename(columns={"contract": "Contract"})
    with pytest.raises(DataError, match="missing columns: contract"):
        require_columns(renamed, ["contract", "churn"])


def test_duplicated_columns_are_named(frame):
    doubled = pd.concat([frame, frame[["contract"]]], axis=1)
    with pytest.raises(DataError, match="duplicated columns: contract"):
        require_columns(doubled, ["contract"])


def test_write_never_leaves_a_partial_file(tmp_path, frame):
    with pytest.raises(DataError):
        write_table(frame, tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []
