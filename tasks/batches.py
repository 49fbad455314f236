"""Reading and writing data batches: CSV and Parquet files, and folders of them.

Every way a file can be unusable (missing, unreadable, empty, wrong columns) raises
`DataError` with a one-line message naming the file, so a flow can end in a named state and
the CLI can print the message instead of a traceback.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")


class DataError(ValueError):
    """A data file or table that cannot be used as it is."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one CSV or Parquet file.

    Args:
        path: The file; its suffix decides the format (`.csv`, `.parquet` or `.pq`).

    Returns:
        The table, with at least one row and one column.

    Raises:
        DataError: the file is missing, not a supported format, unreadable, empty, or names a
            column twice.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; use read_batches for a folder of batches")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported format {suffix or '(none)'}; use .csv or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        names = _column_names(path, suffix)
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if not duplicated:
            frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (pd.errors.EmptyDataError, StopIteration) as error:
        raise DataError(f"{path}: file is empty") from error
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: unreadable {suffix[1:]} file ({_one_line(error)})") from error
    except Exception as error:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"{path}: unreadable {suffix[1:]} file ({_one_line(error)})") from error
    if duplicated:
        raise DataError(f"{path}: duplicated columns: {', '.join(duplicated)}")
    if frame.columns.empty:
        raise DataError(f"{path}: file has no columns")
    if frame.empty:
        raise DataError(f"{path}: file has no rows")
    return frame


def _column_names(path: Path, suffix: str) -> list[str]:
    """The column names as the file states them (pandas renames a repeated CSV header)."""
    if suffix == ".csv":
        with path.open(newline="") as handle:
            return next(csv.reader(handle))
    return pq.read_schema(path).names


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def batch_files(folder: str | Path) -> list[Path]:
    """The CSV and Parquet files of a folder, in name order (name them so it is time order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no .csv or .parquet files in the folder")
    return files


def read_batches(folder: str | Path) -> list[tuple[Path, pd.DataFrame]]:
    """Read every batch of a folder, in name order.

    Raises:
        DataError: the folder is missing or holds no batch, or one batch is unusable.
    """
    return [(path, read_table(path)) for path in batch_files(folder)]


def read_data(path: str | Path) -> pd.DataFrame:
    """Read a file, or a folder of batches concatenated in name order."""
    path = Path(path)
    if path.is_dir():
        return pd.concat([frame for _, frame in read_batches(path)], ignore_index=True)
    return read_table(path)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str = "data") -> None:
    """Raise `DataError` naming every expected column the table lacks, and duplicated ones."""
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise DataError(f"{source}: duplicated columns: {', '.join(duplicated)}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing columns: {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns))})"
        )


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV or Parquet by the path's suffix, creating the folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported format {suffix or '(none)'}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


@task(name="load-batch", cache_policy=NO_CACHE)
def load_batch(path: str | Path) -> pd.DataFrame | State:
    """One batch file, or a `Failed` state named `InvalidData` saying why it is unusable."""
    try:
        return read_table(path)
    except DataError as error:
        return Failed(name="InvalidData", message=str(error))
