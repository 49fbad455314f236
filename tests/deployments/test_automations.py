"""The escalation automation, end to end on the real Prefect server: event in, webhook out."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from prefect.events import emit_event

from agentic_mlops.deployments.automations import ESCALATED_EVENT, install_escalation_webhook


def webhook_receiver():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def escalate(ledger_id: str) -> None:
    emit_event(
        event=ESCALATED_EVENT,
        resource={
            "prefect.resource.id": "agentic-mlops.model.churn",
            "prefect.resource.name": "churn",
        },
        payload={
            "severity": "high",
            "batch_id": "b-9",
            "rationale": "broken export",
            "ledger_id": ledger_id,
        },
    )


def test_an_escalation_reaches_the_webhook():
    """The server's trigger service learns of a new automation a moment after it is made (a
    message between its services, slower under load): escalations are emitted every few
    seconds until one reaches the webhook, each exactly once."""
    server, received = webhook_receiver()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        install_escalation_webhook(url)
        install_escalation_webhook(url)  # twice: replaced, not doubled
        sent: list[str] = []
        deadline = time.monotonic() + 90
        while not received and time.monotonic() < deadline:
            sent.append(f"ledger-{len(sent):03d}")
            escalate(sent[-1])
            time.sleep(3)
        time.sleep(3)
        assert received, f"no webhook call for {len(sent)} escalations"
        bodies = [call["body"] for call in received]
        told = [ledger_id for ledger_id in sent if any(ledger_id in body for body in bodies)]
        assert told and len(received) == len(told), "each escalation is sent once, not twice"
        assert "churn" in received[0]["subject"] and "broken export" in received[0]["body"]
    finally:
        server.shutdown()
