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


def test_an_escalation_reaches_the_webhook():
    server, received = webhook_receiver()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        install_escalation_webhook(url)
        install_escalation_webhook(url)  # twice: replaced, not doubled
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
                "ledger_id": "abc123",
            },
        )
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        assert len(received) == 1, received
        assert "churn" in received[0]["subject"]
        assert "broken export" in received[0]["body"] and "abc123" in received[0]["body"]
    finally:
        server.shutdown()
