"""The local stack's drift-check server: the drift check's modules and clients loaded once.

A drift check in a new process spends most of its time importing Prefect, MLflow, Great
Expectations and pydantic-ai and opening MLflow's store, not checking. While the stack runs
(`agentic-mlops up`), this process keeps them loaded and runs `drift-check` commands as flow
runs on the stack's Prefect server, one at a time; the command line only sends the request
and prints the answer. A request made under other settings than the server's is refused, and
the command runs the check itself.

Run by `stack.py` as `python -m agentic_mlops.check_server --port N`; it answers `GET /health`
once warm and `POST /drift-check` with a `CheckRequest`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, HTTPServer

from pydantic import BaseModel, ValidationError

from agentic_mlops.settings import Settings, load_settings


class CheckRequest(BaseModel):
    """A `drift-check` command's arguments (absolute paths) and the digest of its settings."""

    current_path: str
    reference_path: str | None = None
    target: str | None = "churn"
    act: bool = True
    model_name: str | None = None
    settings_digest: str


class CheckAnswer(BaseModel):
    """How the flow run ended: its state's name and message, and the result when it has one;
    or why the request was refused (the command then runs the check itself)."""

    refused: str | None = None
    failed: bool = False
    state: str | None = None
    message: str | None = None
    result: dict | None = None


def settings_digest(settings: Settings) -> str:
    """A digest of the settings in force (secrets masked), to tell whether the command and
    the server would check under the same settings."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()


def run_check(request: CheckRequest) -> CheckAnswer:
    """Run one drift check as a flow run, here, if the settings agree."""
    from agentic_mlops.flows.drift import drift_check

    if request.settings_digest != settings_digest(load_settings()):
        return CheckAnswer(refused="the command's settings differ from the server's")
    state = drift_check(
        current_path=request.current_path,
        reference_path=request.reference_path,
        target=request.target,
        act=request.act,
        model_name=request.model_name,
        return_state=True,
    )
    if state.is_failed():
        return CheckAnswer(failed=True, state=state.name, message=state.message)
    return CheckAnswer(
        state=state.name, message=state.message, result=state.result().model_dump(mode="json")
    )


class CheckHandler(BaseHTTPRequestHandler):
    """`GET /health`, `POST /drift-check`; one request at a time (a plain `HTTPServer`)."""

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/health" else 404, {"ok": self.path == "/health"})

    def do_POST(self) -> None:
        if self.path != "/drift-check":
            self._answer(404, {"error": "unknown path"})
            return
        try:
            length = int(self.headers.get("Content-Length", 0))
            request = CheckRequest.model_validate_json(self.rfile.read(length))
        except (ValueError, ValidationError) as error:
            self._answer(400, {"error": str(error)})
            return
        try:
            answer = run_check(request)
        except Exception as error:  # the command reports it; the server stays up
            answer = CheckAnswer(failed=True, state="Crashed", message=str(error))
        self._answer(200, answer.model_dump(mode="json"))

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        """Requests are not logged line by line; the flow runs are in Prefect."""


def warm_up(store_ready_at: str | None = None, timeout: float = 180.0) -> None:
    """Import what a check uses and open the MLflow store, before answering `/health`.

    With `store_ready_at` (the MLflow UI's health address, when `up` starts the UI beside this
    server), the store is opened only once that address answers: the UI creates the tables
    of a new SQLite store, and two processes creating them at once fail.
    """
    import great_expectations  # noqa: F401

    import agentic_mlops.flows.drift  # noqa: F401
    from agentic_mlops import stack
    from agentic_mlops.tasks import registry

    if store_ready_at:
        deadline = time.monotonic() + timeout
        while not stack.answers(store_ready_at):
            if time.monotonic() > deadline:
                raise SystemExit(f"{store_ready_at} did not answer within {timeout:.0f} s")
            time.sleep(0.25)
    registry.client(load_settings())


WARM_UP_NICENESS = 10
"""How much lower the check server's CPU priority is while it imports (11 CPU seconds on the
2-core machine), so that the Prefect server and the MLflow UI starting beside it, and the
first command after `up`, come first."""


@contextmanager
def lower_priority(niceness: int):
    """Run at a lower CPU priority, then go back to the priority before where the system
    allows it (raising one's priority again needs privileges; without them it stays low)."""
    if not hasattr(os, "nice"):
        yield
        return
    os.nice(niceness)
    try:
        yield
    finally:
        with suppress(PermissionError):
            os.nice(-niceness)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store-ready-at", help="open the MLflow store once this URL answers")
    arguments = parser.parse_args()
    with lower_priority(WARM_UP_NICENESS):  # `up` returns once the others answer
        warm_up(arguments.store_ready_at)
    HTTPServer(("127.0.0.1", arguments.port), CheckHandler).serve_forever()


if __name__ == "__main__":
    main()
