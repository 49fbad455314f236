"""Take the screenshots in docs/deployments.md from a real Prefect UI in headless Chromium.

    apt-get install chromium && python -m venv /tmp/shots && /tmp/shots/bin/pip install playwright
    .venv/bin/python docs/screenshots.py /tmp/shots/bin/python

It starts a `prefect server start` with its UI on a temporary home, deploys prefect.yaml, runs a
process worker with approval mode `all`, triggers two drift checks with `prefect deployment
run` (a clean batch, and a price rise that pauses for approval), and has the browser (driven by
the Playwright interpreter given as argument) capture the run form, the approval form and the
drift check's artifacts into docs/images/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGES = ROOT / "docs" / "images"

BROWSER = """
import json, sys
from playwright.sync_api import sync_playwright
job = json.loads(sys.argv[1])
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    for shot in job:
        page.goto(shot["url"])
        page.wait_for_timeout(4000)
        if shot.get("click"):
            page.get_by_role("button", name=shot["click"]).first.click()
            page.wait_for_timeout(2500)
        page.screenshot(path=shot["path"], full_page=shot.get("full", False))
    browser.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, env: dict) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def wait_state(api: str, run_id: str, wanted: set[str], seconds: float = 300) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]["type"]
        if state in wanted:
            return state
        time.sleep(1)
    raise TimeoutError(f"run {run_id} not in {wanted}")


def main(playwright_python: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentic-mlops-shots-"))
    port = free_port()
    api, ui = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env = {
        **base,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AGENTIC_MLOPS_HOME": str(work / "home"),
        "AGENTIC_MLOPS_APPROVAL_MODE": "all",
    }
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    worker = None
    try:
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        cli = str(BIN / "agentic-mlops")
        run(cli, "train", "--rows", "3000", env=env)
        incoming = work / "home" / "incoming"
        run(cli, "generate", "--out", str(incoming / "clean.parquet"), "--rows", "2000", env=env)
        run(
            cli,
            "generate",
            "--out",
            str(incoming / "price-rise.parquet"),
            "--rows",
            "2000",
            "--scenario",
            "covariate",
            env=env,
        )
        prefect = str(BIN / "prefect")
        run(prefect, "work-pool", "create", "local-process", "--type", "process", env=env)
        run(prefect, "--no-prompt", "deploy", "--all", env=env)
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", "local-process"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ids = {}
        for name, batch, extra in (
            ("clean", "clean.parquet", ["--param", "act=false"]),
            ("price-rise", "price-rise.parquet", []),
        ):
            out = run(
                prefect,
                "deployment",
                "run",
                "drift-check/drift-check",
                "--param",
                f"current_path={incoming / batch}",
                *extra,
                env=env,
            )
            ids[name] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        wait_state(api, ids["clean"], {"COMPLETED"})
        wait_state(api, ids["price-rise"], {"PAUSED"})
        deployment = httpx.get(f"{api}/deployments/name/drift-check/drift-check").json()["id"]
        artifact = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["churn-drift-triage"]}}, "limit": 1},
        ).json()[0]["id"]
        job = [
            {
                "url": f"{ui}/deployments/deployment/{deployment}/run",
                "path": str(IMAGES / "prefect-run-form.png"),
            },
            {
                "url": f"{ui}/runs/flow-run/{ids['price-rise']}",
                "click": "Resume",
                "path": str(IMAGES / "prefect-approval-form.png"),
            },
            {
                "url": f"{ui}/artifacts/artifact/{artifact}",
                "path": str(IMAGES / "prefect-drift-artifact.png"),
                "full": True,
            },
        ]
        subprocess.run([playwright_python, "-c", BROWSER, json.dumps(job)], check=True)
        print("\n".join(shot["path"] for shot in job))
    finally:
        for process in (worker, server):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)


if __name__ == "__main__":
    main(sys.argv[1])
