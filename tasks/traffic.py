"""Simulated customers for demos and drills: requests to the router, labels sent back later.

`CustomerTraffic` calls the router's `/predict` with rows drawn from a source table at a
steady rate in a background thread, and posts each row's true label to `/feedback` after a
delay, as a churn label arrives weeks after the prediction. The source can be swapped while
it runs (drift arrives mid-stream). It keeps the rows it served with their labels so a window
of labelled production data can be written out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
import pandas as pd


@dataclass
class TrafficCounts:
    sent: int = 0
    failed: int = 0
    labelled: int = 0
    variants: dict[str, int] = field(default_factory=dict)


class CustomerTraffic:
    """Customers calling the router at `rate` requests a second until stopped."""

    def __init__(
        self,
        url: str,
        source: pd.DataFrame,
        target: str = "churn",
        rate: float = 60.0,
        label_delay_seconds: float = 1.0,
        keep: int = 20_000,
        limit: int | None = None,
        seconds: float | None = None,
    ):
        self.url, self.target, self.rate, self.delay = url, target, rate, label_delay_seconds
        self.limit, self.seconds = limit, seconds
        self.counts = TrafficCounts()
        self.served: deque[tuple[int, float, dict, int]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: deque[tuple[float, str, int]] = deque()
        self._thread = threading.Thread(target=self.run, name="customers", daemon=True)
        self.use(source)

    def use(self, source: pd.DataFrame) -> None:
        """Serve rows from this table from now on (drift arrives)."""
        with self._lock:
            self._labels = source[self.target].tolist()
            self._rows = source.drop(columns=[self.target]).to_dict("records")
            self._index = 0

    def mark(self) -> int:
        """The sequence number of the next request: windows start here."""
        return self.counts.sent

    def window(self, since: int) -> pd.DataFrame:
        """Rows served since a mark whose label has arrived, with the label."""
        arrived = time.monotonic() - self.delay
        with self._lock:
            rows = [
                {**row, self.target: label}
                for seq, sent, row, label in self.served
                if seq >= since and sent <= arrived
            ]
        return pd.DataFrame(rows)

    def _next(self) -> tuple[dict, int]:
        with self._lock:
            index = self._index % len(self._rows)
            self._index += 1
            return self._rows[index], self._labels[index]

    def _send_due_labels(self, client: httpx.Client, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, request_id, label = self._pending.popleft()
            try:
                client.post(f"{self.url}/feedback", json={"request_id": request_id, "label": label})
                self.counts.labelled += 1
            except httpx.HTTPError:
                pass

    def run(self) -> None:
        """Call the router until stopped, or until `limit` requests or `seconds` have gone by
        (a test's bound); `start` runs this in a thread."""
        deadline = time.monotonic() + self.seconds if self.seconds is not None else None
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                if self.limit is not None and self.counts.sent >= self.limit:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                started = time.monotonic()
                row, label = self._next()
                seq = self.counts.sent
                try:
                    answer = client.post(f"{self.url}/predict", json=row)
                    if answer.status_code == 200:
                        body = answer.json()
                        variants = self.counts.variants
                        variants[body["variant"]] = variants.get(body["variant"], 0) + 1
                        self._pending.append((started + self.delay, body["request_id"], label))
                        with self._lock:
                            self.served.append((seq, started, row, label))
                    else:
                        self.counts.failed += 1
                except httpx.HTTPError:
                    self.counts.failed += 1
                self.counts.sent += 1
                self._send_due_labels(client, time.monotonic())
                time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))
            self._send_due_labels(client, float("inf"))

    def start(self) -> CustomerTraffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> CustomerTraffic:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
