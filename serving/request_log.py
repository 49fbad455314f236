"""The router's log of production traffic: every answered row, and every delayed label.

Two logs in one folder (`home/serving/<model>/log/` by default), JSON lines each:

- `requests-<n>.jsonl`: one line per answered `POST /predict`:
  `{"ts", "request_id", "variant", "version", "scores", "row"}`, where `row` is the request
  body exactly as the client sent it (one row object or `{"instances": [...]}`) and `scores`
  the model's answers, in order;
- `labels-<n>.jsonl`: one line per accepted `POST /feedback`: `{"ts", "request_id", "label"}`.
  A label belongs to its request's first row, as the router's own feedback metrics count it.

`ts` is seconds since the epoch to the microsecond: a reader goes on after the newest `ts` it
read, and with a coarser clock the lines written just after a read could share it and be
passed over.

Request overhead is a few microseconds: the line is assembled from the body's bytes without
parsing it, appended to a buffer in memory, and the buffer is written in chunks (when it
reaches `chunk_bytes`, and every `flush_seconds` from the router's event loop). A file that
reaches `max_bytes` is closed and the next one started; of each log only the newest `files`
files are kept, so the folder holds about `2 * files * max_bytes` at most. A write that fails
(a full disk) drops its chunk and is counted, and requests go on being answered.

Only the standard library is used here: the router imports this module, and stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from agentic_mlops.settings import Settings

REQUESTS, LABELS = "requests", "labels"
SUFFIX = ".jsonl"
CHUNK_BYTES = 64 * 1024


def log_folder(settings: Settings) -> Path:
    """Where the router of this home logs: `serving_log_dir`, else `home/serving/<model>/log`."""
    return settings.serving.log_dir or settings.serving_dir / "log"


def log_files(folder: Path, kind: str) -> list[Path]:
    """The files of one log (`requests` or `labels`), oldest first."""
    pattern = re.compile(rf"{kind}-(\d+){re.escape(SUFFIX)}")
    found = []
    for path in folder.glob(f"{kind}-*{SUFFIX}") if folder.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


class RotatingLog:
    """Lines appended to `<folder>/<kind>-<n>.jsonl` in chunks, in files of about `max_bytes`,
    the newest `files` of them kept."""

    def __init__(
        self, folder: Path, kind: str, max_bytes: int, files: int, chunk_bytes: int = CHUNK_BYTES
    ):
        if max_bytes < 1 or files < 1:
            raise ValueError("a log needs a positive file size and at least one file")
        self.folder, self.kind = folder, kind
        self.max_bytes, self.files = max_bytes, files
        self.chunk_bytes = min(chunk_bytes, max_bytes)
        self.buffer = bytearray()
        self.handle: BinaryIO | None = None
        self.size = 0
        self.lines_written = 0
        self.lines_dropped = 0
        self.write_errors = 0

    def add(self, line: bytes) -> None:
        """Buffer one line (ending in a newline); write the buffer once it is a chunk."""
        self.buffer += line
        if len(self.buffer) >= self.chunk_bytes:
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; the number of lines written."""
        if not self.buffer:
            return 0
        chunk = bytes(self.buffer)
        self.buffer.clear()
        lines = chunk.count(b"\n")
        try:
            if self.handle is None:
                self._open()
            self.handle.write(chunk)
            self.handle.flush()
            self.size += len(chunk)
            if self.size >= self.max_bytes:
                self.close()
        except OSError:
            self.write_errors += 1
            self.lines_dropped += lines
            self.close()
            return 0
        self.lines_written += lines
        return lines

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:
                self.write_errors += 1
            self.handle = None

    def _open(self) -> None:
        """Append to the newest file while it has room (after a restart), else start one; then
        delete the oldest files beyond `files`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = log_files(self.folder, self.kind)
        newest = existing[-1] if existing else None
        if newest is not None and newest.stat().st_size < self.max_bytes:
            path = newest
        else:
            number = int(newest.stem.rsplit("-", 1)[1]) + 1 if newest is not None else 1
            path = self.folder / f"{self.kind}-{number:08d}{SUFFIX}"
        self.handle = path.open("ab")
        self.size = path.stat().st_size
        if self.size and not _ends_with_newline(path):
            self.handle.write(b"\n")  # a line cut short by a crash stays one bad line
            self.handle.flush()
            self.size += 1
        for old in log_files(self.folder, self.kind)[: -self.files]:
            old.unlink(missing_ok=True)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


class RequestLog:
    """The requests and labels logs of one router."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int = 16 * 1024 * 1024,
        files: int = 8,
        flush_seconds: float = 1.0,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        self.folder = folder
        self.flush_seconds = flush_seconds
        self.requests = RotatingLog(folder, REQUESTS, max_bytes, files, chunk_bytes)
        self.labels = RotatingLog(folder, LABELS, max_bytes, files, chunk_bytes)
        self.flusher: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLog | None:
        """The log the settings ask for, or None when `serving_log_enabled` is off."""
        if not settings.serving.log_enabled:
            return None
        return cls(
            log_folder(settings),
            settings.serving.log_max_bytes,
            settings.serving.log_files,
            settings.serving.log_flush_seconds,
        )

    def served(
        self,
        request_id: str,
        variant: str,
        version: int | None,
        scores: list[float],
        body: bytes,
    ) -> None:
        """Log an answered request: its body as sent (newlines, which JSON allows only as
        whitespace between tokens, become spaces), and the scores returned."""
        head = (
            f'{{"ts":{time.time():.6f},"request_id":"{request_id}","variant":"{variant}",'
            f'"version":{"null" if version is None else int(version)},'
            f'"scores":{json.dumps(scores)},"row":'
        )
        self.requests.add(b"".join((head.encode(), body.replace(b"\n", b" "), b"}\n")))

    def labelled(self, request_id: str, label: int | float | str) -> None:
        """Log the delayed label of an answered request (a class, 0/1, or a number)."""
        self.labels.add(
            f'{{"ts":{time.time():.6f},"request_id":"{request_id}","label":{json.dumps(label)}}}\n'.encode()
        )

    def flush(self) -> dict[str, int]:
        """Write both buffers now; lines written per log."""
        return {REQUESTS: self.requests.flush(), LABELS: self.labels.flush()}

    def stats(self) -> dict[str, int | str]:
        return {
            "folder": str(self.folder),
            **{
                f"{log.kind}_{name}": getattr(log, name)
                for log in (self.requests, self.labels)
                for name in ("lines_written", "lines_dropped", "write_errors")
            },
        }

    async def start(self) -> None:
        """Flush every `flush_seconds` in the background of the running event loop."""
        self.flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            self.flush()

    async def stop(self) -> None:
        """Stop the background flushes, write what is left and close the files."""
        if self.flusher is not None:
            self.flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.flusher
        self.flush()
        self.requests.close()
        self.labels.close()
