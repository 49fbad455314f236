"""A real Prometheus for tests: Debian's `prometheus` binary scraping loopback targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from agentic_mlops.tasks.local_rollout import free_port


def prometheus_binary() -> str:
    """The `prometheus` binary; a test that needs one fails (never skips) without it."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the `prometheus` binary is not on PATH: install it with "
            "`apt-get install -y prometheus` (Debian 12 ships 2.42) to run these tests",
            pytrace=False,
        )
    return binary


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout:.0f} s", pytrace=False)


@contextmanager
def running_prometheus(job: str, targets: dict[str, dict[str, str]], folder: Path) -> Iterator[str]:
    """A Prometheus scraping every `host:port` of `targets` (each with its extra labels) every
    second as `job`; yields its address once every target is up, stops it after."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = "".join(
        f"      - targets: ['{target}']\n"
        + (f"        labels: {json.dumps(labels)}\n" if labels else "")
        for target, labels in targets.items()
    )
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n{groups}"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def scraped() -> bool:
            if process.poll() is not None:
                tail = (folder / "prometheus.log").read_text(errors="replace")[-800:]
                pytest.fail(f"prometheus exited; its log ends:\n{tail}", pytrace=False)
            answer = httpx.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=1)
            results = answer.json()["data"]["result"] if answer.status_code == 200 else []
            return sum(series["value"][1] == "1" for series in results) == len(targets)

        wait_for(scraped, 30, f"prometheus did not scrape every {job} target")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
