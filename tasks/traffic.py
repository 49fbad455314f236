"""Simulated customers for demos and drills: requests to the router, labels sent back later.

`CustomerTraffic` calls the router's `/predict` with rows drawn from a source table at a
steady rate from background threads (customers calling at once, as they do: one caller waiting
on each answer and label in turn reaches about 120 requests a second here, whatever the rate
asked), and posts each row's true label to `/feedback` after a delay, as a churn label arrives
weeks after the prediction. The source can be swapped while
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
    """Customers calling the router at `rate` requests a second in all until stopped, from
    `callers` threads that share the rate."""

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
        callers: int = 2,
    ):
        self.url, self.target, self.rate, self.delay = url, target, rate, label_delay_seconds
        self.limit, self.seconds = limit, seconds
        self.counts = TrafficCounts()
        self.served: deque[tuple[int, float, dict, int]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._threads = [
            threading.Thread(
                target=self.run, args=(rate / callers,), name=f"customer-{i}", daemon=True
            )
            for i in range(callers)
        ]
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

    def _next(self) -> tuple[int, dict, int] | None:
        """The next request's sequence number, row and label; None once the bound is reached."""
        with self._lock:
            if self.limit is not None and self.counts.sent >= self.limit:
                return None
            if self._deadline is not None and time.monotonic() > self._deadline:
                return None
            seq = self.counts.sent
            self.counts.sent += 1
            index = self._index % len(self._rows)
            self._index += 1
            return seq, self._rows[index], self._labels[index]

    def _send_due_labels(self, client: httpx.Client, pending: deque, now: float) -> None:
        while pending and pending[0][0] <= now:
            _, request_id, label = pending.popleft()
            try:
                client.post(f"{self.url}/feedback", json={"request_id": request_id, "label": label})
                with self._lock:
                    self.counts.labelled += 1
            except httpx.HTTPError:
                pass

    def _call(self, client: httpx.Client, seq: int, row: dict, label: int, pending: deque) -> None:
        started = time.monotonic()
        try:
            answer = client.post(f"{self.url}/predict", json=row)
        except httpx.HTTPError:
            answer = None
        with self._lock:
            if answer is None or answer.status_code != 200:
                self.counts.failed += 1
                return
            body = answer.json()
            variants = self.counts.variants
            variants[body["variant"]] = variants.get(body["variant"], 0) + 1
            self.served.append((seq, started, row, label))
        pending.append((started + self.delay, body["request_id"], label))

    def run(self, rate: float | None = None) -> None:
        """One caller: call the router at `rate` until stopped, or until `limit` requests or
        `seconds` have gone by in all (a test's bound); `start` runs the callers in threads."""
        rate = rate or self.rate
        pending: deque[tuple[float, str, int]] = deque()
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                request = self._next()
                if request is None:
                    break
                self._call(client, *request, pending)
                self._send_due_labels(client, pending, time.monotonic())
                time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
            self._send_due_labels(client, pending, float("inf"))

    def start(self) -> CustomerTraffic:
        if self.seconds is not None:
            self._deadline = time.monotonic() + self.seconds
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __enter__(self) -> CustomerTraffic:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
