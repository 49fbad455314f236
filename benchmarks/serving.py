"""Serving benchmarks: the canary router's added latency, and traffic through weight changes.

Everything runs as real processes on loopback: the router and the model servers, started by
`LocalRollout` in a temporary home, and v1 (the baseline) and v2 (the canary), trained here on
small data. Load is open loop: each single-row `POST /predict` is sent at its scheduled time,
whether or not earlier ones have been answered, over one keep-alive client session. Latency is
measured by the client, from sending a request to having read its whole answer. Every server
is sent traffic before it is measured, because its first answer pays for imports; how long
that first answer takes is reported once, for v2 just after it said it was ready.

One model server scores a single row in about 10 ms of CPU (pandas and scikit-learn per call),
so it cannot keep up with 200 requests/s, and latencies at that rate would measure its queue,
not the router. The targets are therefore measured against constant-model servers (the model
server's own code around a model that always answers 0.3), which keep up with every rate tested
here; the real model servers are measured at 50 requests/s, which one of them sustains.

Overhead: straight to a model server (A) and through the router at canary weight 0 (B), which
forwards to that same server, alternating in 1 s segments (A B B A ...) so that a slow patch
of the shared machine falls on both; 20 s each. Target at 200 requests/s: the router adds at
most 2 ms at the median and 5 ms at p99. Beside the p99 of all requests, the median over
segment pairs of (B's p99 - A's p99) shows whether a miss is the router or a few bad seconds.

Weight changes: traffic through the router for 20 s while another thread moves the canary's
weight every second (0, 5%, 25%, 50%, 25%, 5%, ...) and, at 16 s, rolls back, after which the
canary's server is stopped. At 320 requests/s with constant-model servers, then at 50
requests/s with v1 and v2; last, 10 s at 50 requests/s with v2 failing 20% of its requests at
weight 50%, which the router answers from the baseline. Target: no request fails (non-200
status, refused connection or timeout).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import httpx
import numpy as np

if TYPE_CHECKING:
    from agentic_mlops.tasks.local_rollout import LocalRollout

Row = dict[str, object]
TARGET_RATE = 200.0
LOAD_RATE = 320.0
REAL_RATE = 50.0
SEGMENT_SECONDS = 1.0
WARMUP_SECONDS = 2.0
LOAD_SECONDS = 20.0
ROLLBACK_AT_SECONDS = 16.0
FAULTY_SECONDS = 10.0
FAULT_ERROR_RATE = 0.2
WEIGHTS = (0.0, 0.05, 0.25, 0.5, 0.25, 0.05)
REQUEST_TIMEOUT_SECONDS = 10.0
JSON = {"Content-Type": "application/json"}
_OVERRIDDEN = ("AGENTIC_MLOPS_HOME", "AGENTIC_MLOPS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
CONSTANT_MODEL_SERVER = """
import sys
from aiohttp import web
from agentic_mlops.serving.model_server import ModelServer

class ConstantModel:
    def predict(self, frame):
        return [[0.7, 0.3]] * len(frame)

server = ModelServer(ConstantModel(), "constant", "0")
web.run_app(server.app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass
class Load:
    """What the client saw of one or more open-loop runs."""

    sent: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    variants: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    segment_p99s: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    @property
    def rate(self) -> float:
        """Requests answered successfully per second, from the first send to the last answer."""
        return (self.sent - self.failed) / self.seconds


class ConstantModelServer:
    """The model server's code around a model that always answers 0.3, as its own process."""

    def __init__(self, log: Path):
        from agentic_mlops.tasks.local_rollout import free_port

        self.url = f"http://127.0.0.1:{free_port()}"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CONSTANT_MODEL_SERVER, self.url.rsplit(":", 1)[1]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the constant-model server exited ({self.process.returncode})")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the constant-model server did not start within {timeout:.0f} s")

    def stop(self, drain_seconds: float = 0.0) -> None:
        time.sleep(drain_seconds)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def temporary_home() -> Iterator[Path]:
    """A fresh home with its own MLflow store, made the one in force; restored afterwards."""
    from agentic_mlops.tasks.mlflow_environment import environment_kept

    home = Path(tempfile.mkdtemp(prefix="agentic-mlops-bench-serving-"))
    with environment_kept(_OVERRIDDEN):
        for name in _OVERRIDDEN:
            os.environ.pop(name, None)
        os.environ["AGENTIC_MLOPS_HOME"] = str(home)
        try:
            yield home
        finally:
            shutil.rmtree(home, ignore_errors=True)


def request_bodies(count: int = 2_000, seed: int = 11) -> list[bytes]:
    """Single churn rows without the label, encoded once so the client spends no time on it."""
    from agentic_mlops.tasks.churn import generate_churn

    rows = generate_churn(count, seed).drop(columns="churn").to_dict("records")
    return [json.dumps(row).encode() for row in rows]


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
    )


async def send(session: aiohttp.ClientSession, url: str, body: bytes, load: Load) -> None:
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=JSON) as response:
            payload = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        load.failed += 1
        return
    if status != 200:
        load.failed += 1
        return
    load.latencies_ms.append((time.perf_counter() - start) * 1000)
    load.variants[json.loads(payload).get("variant", "direct")] += 1


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    load: Load,
) -> Load:
    """Send `rate * seconds` requests at fixed intervals, none waiting for another's answer.

    Bounded: the count is fixed and every request gives up after the client's timeout.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    answered_before = len(load.latencies_ms)
    in_flight = set()
    for index in range(round(rate * seconds)):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = bodies[(load.sent + index) % len(bodies)]
        in_flight.add(asyncio.create_task(send(session, url, body, load)))
    load.sent += len(in_flight)
    await asyncio.wait(in_flight)
    load.seconds += loop.time() - start
    if len(load.latencies_ms) > answered_before:
        load.segment_p99s.append(float(np.percentile(load.latencies_ms[answered_before:], 99)))
    return load


async def alternate(
    direct_url: str, router_url: str, bodies: list[bytes], rate: float, segments: str
) -> tuple[Load, Load]:
    """Straight to a model server (A) and through the router (B), in alternating segments."""
    urls = {"A": f"{direct_url}/predict", "B": f"{router_url}/predict"}
    loads = {"A": Load(), "B": Load()}
    async with client_session() as session:
        for key in "AB":
            await open_loop(session, urls[key], bodies, rate, WARMUP_SECONDS, Load())
        for key in segments:
            await open_loop(session, urls[key], bodies, rate, SEGMENT_SECONDS, loads[key])
    return loads["A"], loads["B"]


async def warm_up(urls: list[str], bodies: list[bytes]) -> None:
    """Traffic that is not measured, so that each server has paid for its first answers."""
    async with client_session() as session:
        for url in urls:
            await open_loop(session, f"{url}/predict", bodies, REAL_RATE, WARMUP_SECONDS, Load())


def first_answer_ms(url: str, body: bytes) -> float:
    """Milliseconds to the first answer of a model server that has just said it is ready."""
    start = time.perf_counter()
    httpx.post(f"{url}/predict", content=body, headers=JSON, timeout=60).raise_for_status()
    return (time.perf_counter() - start) * 1000


async def through_router(router_url: str, bodies: list[bytes], rate: float, seconds: float) -> Load:
    async with client_session() as session:
        return await open_loop(session, f"{router_url}/predict", bodies, rate, seconds, Load())


def move_weights_then_roll_back(
    rollout: LocalRollout, after_rollback: Callable[[], None] | None
) -> int:
    """Change the canary's weight once a second, then roll back; the number of changes made."""
    start = time.monotonic()
    changes = 0
    for second, weight in enumerate(itertools.cycle(WEIGHTS)):
        if second >= ROLLBACK_AT_SECONDS:
            break
        time.sleep(max(0.0, start + second - time.monotonic()))
        rollout.set_weight(weight)
        changes += 1
    time.sleep(max(0.0, start + ROLLBACK_AT_SECONDS - time.monotonic()))
    rollout.rollback()
    if after_rollback is not None:
        after_rollback()
    return changes


def with_weight_changes(
    rollout: LocalRollout,
    router_url: str,
    bodies: list[bytes],
    rate: float,
    after_rollback: Callable[[], None] | None = None,
) -> tuple[Load, int]:
    """Open-loop traffic through the router while another thread moves weights and rolls back."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        mover = pool.submit(move_weights_then_roll_back, rollout, after_rollback)
        load = asyncio.run(through_router(router_url, bodies, rate, LOAD_SECONDS))
        return load, mover.result(timeout=60)


def failovers(router_url: str) -> float:
    """The router's count of canary failures answered by the baseline."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{router_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "router_failover_total":
                return sample.value
    return 0.0


def train_two_versions() -> tuple[int, int]:
    """Two small versions of the churn model; the first becomes champion."""
    from agentic_mlops.flows.train import train
    from agentic_mlops.schemas import TrainingResult
    from agentic_mlops.tasks.training import Hyperparameters

    versions = []
    for seed in (1, 2):
        result = train(generate_rows=2_000, seed=seed, hyperparameters=Hyperparameters(max_iter=30))
        if not isinstance(result, TrainingResult):
            raise RuntimeError(f"training with seed {seed} did not register a version: {result}")
        versions.append(result.version)
    return versions[0], versions[1]


def overhead_rows(direct: Load, routed: Load, setting: str, targets: bool) -> list[Row]:
    where = f"{setting}, {direct.sent:,} requests per path"
    rows: list[Row] = []
    for q, label in ((50, "median"), (99, "p99")):
        rows.append(
            {
                "name": f"serving: latency direct to model server, {label} ({where})",
                "value": round(direct.percentile(q), 2),
                "unit": "ms",
            }
        )
        rows.append(
            {
                "name": f"serving: latency through router, {label} ({where})",
                "value": round(routed.percentile(q), 2),
                "unit": "ms",
                "baseline": round(direct.percentile(q), 2),
                "ratio": round(routed.percentile(q) / direct.percentile(q), 2),
            }
        )
    for q, label, limit in ((50, "median", 2.0), (99, "p99", 5.0)):
        added = routed.percentile(q) - direct.percentile(q)
        row: Row = {
            "name": f"serving: latency the router adds, {label} ({where})",
            "value": round(added, 2),
            "unit": "ms",
        }
        if targets:
            row.update(target=f"<= {limit:.0f} ms", met=added <= limit)
        rows.append(row)
    count = min(len(routed.segment_p99s), len(direct.segment_p99s))
    pairs = np.subtract(routed.segment_p99s[:count], direct.segment_p99s[:count])
    rows.append(
        {
            "name": f"serving: latency the router adds, p99 of 1 s segments, median of "
            f"{len(pairs)} pairs ({where})",
            "value": round(float(np.median(pairs)), 2),
            "unit": "ms",
        }
    )
    failed = direct.failed + routed.failed
    rows.append(
        {
            "name": f"serving: failed requests ({where})",
            "value": failed,
            "target": "0",
            "met": failed == 0,
        }
    )
    return rows


def load_rows(load: Load, setting: str, rate_target: float | None = None) -> list[Row]:
    rate: Row = {
        "name": f"serving: requests answered per second ({setting})",
        "value": round(load.rate, 1),
        "unit": "req/s",
    }
    if rate_target is not None:
        rate.update(target=f">= {rate_target:.0f} req/s", met=load.rate >= rate_target)
    return [
        {"name": f"serving: requests sent ({setting})", "value": load.sent},
        {
            "name": f"serving: failed requests ({setting})",
            "value": load.failed,
            "target": "0",
            "met": load.failed == 0,
        },
        rate,
        {
            "name": f"serving: latency through router, median / p99 ({setting})",
            "value": f"{load.percentile(50):.1f} / {load.percentile(99):.1f}",
            "unit": "ms",
        },
        {
            "name": f"serving: share answered by the canary ({setting})",
            "value": round(100 * load.variants["canary"] / max(load.sent, 1), 1),
            "unit": "%",
        },
    ]


def bench_router() -> list[Row]:
    """The router's added latency, and failures through weight changes, rollback and faults."""
    from agentic_mlops.serving.router import Backend, RouterState
    from agentic_mlops.settings import load_settings
    from agentic_mlops.tasks.local_rollout import LocalRollout

    bodies = request_bodies()
    rows: list[Row] = []
    with temporary_home() as home:
        settings = load_settings()
        settings.ensure_dirs()
        baseline, canary = train_two_versions()
        rollout = LocalRollout(settings)
        constants: list[ConstantModelServer] = []
        try:
            router_url = rollout.start_router()
            constants = [
                ConstantModelServer(home / "serving" / f"constant-{i}.log") for i in (1, 2)
            ]
            for server in constants:
                server.wait_ready()
            first, second = constants

            rollout.restore(RouterState(baseline=Backend(url=first.url)))
            direct, routed = asyncio.run(
                alternate(first.url, router_url, bodies, TARGET_RATE, "ABBA" * 10)
            )
            rows += overhead_rows(direct, routed, f"{TARGET_RATE:.0f} req/s, constant model", True)

            asyncio.run(warm_up([second.url], bodies))
            rollout.restore(
                RouterState(baseline=Backend(url=first.url), canary=Backend(url=second.url))
            )
            load, changes = with_weight_changes(
                rollout,
                router_url,
                bodies,
                LOAD_RATE,
                after_rollback=functools.partial(second.stop, drain_seconds=1.0),
            )
            setting = f"{LOAD_RATE:.0f} req/s, constant model, {changes} weight changes + rollback"
            rows += load_rows(load, setting, rate_target=300)

            direct_url = rollout.set_baseline(baseline).baseline.url
            canary_url = rollout.deploy(canary).url
            cold_ms = first_answer_ms(canary_url, bodies[0])
            asyncio.run(warm_up([canary_url], bodies))
            direct, routed = asyncio.run(
                alternate(direct_url, router_url, bodies, REAL_RATE, "ABBA" * 10)
            )
            rows += overhead_rows(direct, routed, f"{REAL_RATE:.0f} req/s, v{baseline}", False)
            rows.append(
                {
                    "name": f"serving: first answer of v{canary}'s model server once it is ready",
                    "value": round(cold_ms, 1),
                    "unit": "ms",
                    "baseline": round(direct.percentile(50), 2),
                    "ratio": round(cold_ms / direct.percentile(50), 1),
                }
            )

            load, changes = with_weight_changes(rollout, router_url, bodies, REAL_RATE)
            setting = f"{REAL_RATE:.0f} req/s, v{baseline} + v{canary}, {changes} weight changes"
            rows += load_rows(load, f"{setting} + rollback")

            faulty_url = rollout.deploy(canary, fault_error_rate=FAULT_ERROR_RATE).url
            asyncio.run(warm_up([faulty_url], bodies))
            rollout.set_weight(0.5)
            before = failovers(router_url)
            load = asyncio.run(through_router(router_url, bodies, REAL_RATE, FAULTY_SECONDS))
            setting = f"{REAL_RATE:.0f} req/s, v{canary} failing {FAULT_ERROR_RATE:.0%} at 50%"
            rows += load_rows(load, setting)
            rows.append(
                {
                    "name": f"serving: canary failures answered by the baseline ({setting})",
                    "value": int(failovers(router_url) - before),
                }
            )
        finally:
            for server in constants:
                server.stop()
            rollout.shutdown()
    return rows
