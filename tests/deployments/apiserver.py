"""A stand-in for the Kubernetes API server on 127.0.0.1 that records every request.

It answers the official `kubernetes` client as far as the rollout backend needs: create, read,
replace and delete of Deployments, Services and Gateway API HTTPRoutes in a namespace, the
Deployment status subresource, and pod lists. Like the real server it assigns uid,
resourceVersion and generation, refuses a create of an existing object and a replace with a
stale resourceVersion (409), answers 404 for what is absent, and keeps a Service's clusterIP
across replaces. Deployment controllers are simulated: after a change, a Deployment reports
its pods ready once its status has been read `ready_after` times, or never if its name is in
`never_ready`. A replace of an object named in `conflict_once` finds it changed by someone else
(a new resourceVersion, so 409) the first time.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

ROUTES = [
    (
        "deployments",
        re.compile(
            r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments"
            r"(?:/(?P<name>[^/]+))?(?P<status>/status)?$"
        ),
    ),
    ("services", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services(?:/(?P<name>[^/]+))?$")),
    (
        "httproutes",
        re.compile(
            r"^/apis/gateway\.networking\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/httproutes"
            r"(?:/(?P<name>[^/]+))?$"
        ),
    ),
    ("pods", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")),
]


@dataclass(frozen=True)
class Call:
    """One request as the server saw it."""

    method: str
    path: str
    body: dict[str, Any] | None

    @property
    def short(self) -> str:
        """`METHOD resource/name[/status]`, e.g. `PUT httproutes/churn`."""
        tail = self.path.split("/namespaces/", 1)[-1].split("/", 1)[-1]
        if self.method == "POST":
            tail = f"{tail}/{self.body['metadata']['name']}"
        return f"{self.method} {tail}"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


class FakeApiServer:
    """The recording API server; use as a context manager, then read `calls`."""

    def __init__(
        self,
        ready_after: int = 2,
        never_ready: set[str] | None = None,
        conflict_once: set[str] | None = None,
    ):
        self.ready_after = ready_after
        self.never_ready = never_ready or set()
        self.conflict_once = conflict_once or set()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.status_reads: dict[str, int] = {}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.versions = itertools.count(1)
        self.addresses = itertools.count(10)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    def short_calls(self, since: int = 0) -> list[str]:
        """Every request since the `since`-th, as `METHOD resource/name`."""
        return [call.short for call in self.calls[since:]]

    def story(self, since: int = 0) -> list[str]:
        """The writes and the waits (status reads) since the `since`-th request."""
        return [
            call.short
            for call in self.calls[since:]
            if call.method != "GET" or call.path.endswith("/status")
        ]

    def writes(self, since: int = 0) -> list[Call]:
        return [call for call in self.calls[since:] if call.method != "GET"]

    def get(self, resource: str, name: str, namespace: str = "default") -> dict | None:
        return self.objects.get((resource, namespace, name))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with server.lock:
                    server.calls.append(Call(self.command, path, body))
                    code, payload = server.handle(self.command, path, body)
                self._answer(code, payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        return Handler

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, dict[str, Any]]:
        found = [(resource, pattern.match(path)) for resource, pattern in ROUTES]
        resource, match = next(((r, m) for r, m in found if m), (None, None))
        if match is None:
            return 404, _status(404, "NotFound", f"no route for {path}")
        if resource == "pods":
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}
        namespace, name = match["ns"], match["name"]
        key = (resource, namespace, name or (body or {}).get("metadata", {}).get("name"))
        current = self.objects.get(key)
        if method == "POST" and name is None:
            if current is not None:
                return 409, _status(409, "AlreadyExists", f"{key[2]} already exists")
            return 201, self._store(resource, key, body, None)
        if current is None:
            return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
        if method == "GET":
            if match.groupdict().get("status"):
                self._observe(key)
            return 200, current
        if method == "PUT":
            if name in self.conflict_once:
                self.conflict_once.discard(name)
                current["metadata"]["resourceVersion"] = str(next(self.versions))
            sent = (body or {}).get("metadata", {}).get("resourceVersion")
            if sent != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified")
            return 200, self._store(resource, key, body, current)
        if method == "DELETE":
            del self.objects[key]
            if resource == "deployments":
                return 200, _status(200, "Success", f"{name} deleted")
            return 200, current
        return 405, _status(405, "MethodNotAllowed", method)

    def _store(self, resource: str, key: tuple, body: dict, current: dict | None) -> dict:
        stored = copy.deepcopy(body)
        metadata = stored.setdefault("metadata", {})
        metadata["namespace"] = key[1]
        metadata["resourceVersion"] = str(next(self.versions))
        if current is None:
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            metadata["generation"] = 1
        else:
            metadata["uid"] = current["metadata"]["uid"]
            metadata["creationTimestamp"] = current["metadata"]["creationTimestamp"]
            changed = stored.get("spec") != current.get("spec")
            metadata["generation"] = current["metadata"]["generation"] + int(changed)
        if resource == "services":
            address = (current or {}).get("spec", {}).get("clusterIP")
            stored["spec"]["clusterIP"] = address or f"10.96.0.{next(self.addresses)}"
        if resource == "deployments":
            if current is not None and metadata["generation"] == current["metadata"]["generation"]:
                stored["status"] = current["status"]
            else:
                self.status_reads[key[2]] = 0
                stored["status"] = {"observedGeneration": metadata["generation"], "replicas": 0}
        self.objects[key] = stored
        return stored

    def _observe(self, key: tuple) -> None:
        """One read of a Deployment's status; enough of them and its pods are ready."""
        name = key[2]
        self.status_reads[name] = self.status_reads.get(name, 0) + 1
        if name in self.never_ready or self.status_reads[name] < self.ready_after:
            return
        deployment = self.objects[key]
        wanted = deployment["spec"].get("replicas", 1)
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": wanted,
            "updatedReplicas": wanted,
            "readyReplicas": wanted,
            "availableReplicas": wanted,
        }
