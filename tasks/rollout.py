"""Rollout backends: where model versions are served and how traffic moves between them.

Every backend has the same five operations: `deploy` a version as the canary, `set_weight`
of the canary's traffic, `promote` the canary to baseline, `rollback` to the baseline alone,
and `status`. `LocalRollout` (the embedded default) runs the canary router and one MLflow model
server per version as processes on loopback, recorded in `home/serving/processes.json` so that
any process (the CLI, a flow run, a test) can find and stop them. Each operation is safe to
repeat: deploying a version that is already served reuses its server; promoting or rolling
back when there is no canary changes nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from agentic_mlops.deployments.serving.router import Backend, RouterState
from agentic_mlops.settings import Settings, load_settings


class ServingError(RuntimeError):
    """A server that would not start, or a router that refused a change."""


class ServedProcess(BaseModel):
    """A process of ours: the router, or the model server of one version."""

    pid: int
    port: int
    version: int | None = None
    log: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServingRecord(BaseModel):
    """Every serving process started from this home."""

    router: ServedProcess | None = None
    servers: dict[str, ServedProcess] = Field(default_factory=dict)


class RolloutStatus(BaseModel):
    """What is served and how traffic is split."""

    router_url: str | None
    state: RouterState
    servers: dict[str, str] = Field(description="version -> address of its model server")


class RolloutBackend(Protocol):
    """The interface every rollout backend offers (local processes, Kubernetes)."""

    def deploy(self, version: int) -> Backend: ...

    def set_weight(self, weight: float) -> RouterState: ...

    def promote(self) -> RouterState: ...

    def rollback(self) -> RouterState: ...

    def status(self) -> RolloutStatus: ...


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether a process runs; an exited child of this process is reaped on the way."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LocalRollout:
    """The router and model servers as local processes on loopback."""

    def __init__(self, settings: Settings | None = None, startup_timeout: float = 90.0):
        self.settings = settings or load_settings()
        self.folder = self.settings.home / "serving"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record_path = self.folder / "processes.json"
        self.startup_timeout = startup_timeout

    def record(self) -> ServingRecord:
        if self.record_path.exists():
            return ServingRecord.model_validate_json(self.record_path.read_text())
        return ServingRecord()

    def _save(self, record: ServingRecord) -> None:
        tmp = self.record_path.with_name(f".{self.record_path.name}.tmp")
        tmp.write_text(record.model_dump_json(indent=2))
        tmp.replace(self.record_path)

    def _spawn(self, module: str, args: list[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return process.pid

    def _wait_healthy(self, served: ServedProcess, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not alive(served.pid):
                tail = Path(served.log).read_text(errors="replace")[-800:]
                raise ServingError(f"{what} exited while starting; its log ends:\n{tail}")
            try:
                if httpx.get(f"{served.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._stop(served)
        raise ServingError(f"{what} did not answer /healthz within {self.startup_timeout:.0f} s")

    def _healthy(self, served: ServedProcess | None) -> bool:
        if served is None or not alive(served.pid):
            return False
        try:
            return httpx.get(f"{served.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _stop(self, served: ServedProcess, grace: float = 10.0) -> None:
        try:
            os.killpg(served.pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + grace
        while alive(served.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(served.pid):
            os.killpg(served.pid, signal.SIGKILL)

    def start_router(self, port: int | None = None) -> str:
        """Start the router (or find the running one) and return its address."""
        record = self.record()
        if self._healthy(record.router):
            return record.router.url
        port = port or free_port()
        log = self.folder / "router.log"
        pid = self._spawn(
            "agentic_mlops.deployments.serving.router",
            ["--port", str(port), "--state", str(self.folder / "router.json")],
            log,
        )
        record.router = ServedProcess(pid=pid, port=port, log=str(log))
        self._save(record)
        self._wait_healthy(record.router, "the router")
        return record.router.url

    def serve_version(
        self, version: int, fault_error_rate: float = 0.0, fault_latency_ms: float = 0.0
    ) -> Backend:
        """Start the model server of a version (or find the running one)."""
        record = self.record()
        served = record.servers.get(str(version))
        if self._healthy(served):
            return Backend(url=served.url, version=version)
        port = free_port()
        log = self.folder / f"model-v{version}.log"
        args = [
            "--model-uri",
            f"models:/{self.settings.model_name}/{version}",
            "--port",
            str(port),
            "--tracking-uri",
            self.settings.tracking_uri(),
        ]
        if fault_error_rate:
            args += ["--fault-error-rate", str(fault_error_rate)]
        if fault_latency_ms:
            args += ["--fault-latency-ms", str(fault_latency_ms)]
        pid = self._spawn("agentic_mlops.deployments.serving.model_server", args, log)
        served = ServedProcess(pid=pid, port=port, version=version, log=str(log))
        record.servers[str(version)] = served
        self._save(record)
        self._wait_healthy(served, f"the model server of v{version}")
        return Backend(url=served.url, version=version)

    def router_state(self) -> RouterState:
        response = self._router("GET", "/admin/state")
        return RouterState.model_validate(response)

    def _router(self, method: str, path: str, body: dict | None = None) -> dict:
        record = self.record()
        if record.router is None:
            raise ServingError("the router is not running: start it with `agentic-mlops serve`")
        try:
            response = httpx.request(method, f"{record.router.url}{path}", json=body, timeout=10)
        except httpx.HTTPError as error:
            raise ServingError(f"the router did not answer {path}: {error}") from error
        if response.status_code != 200:
            raise ServingError(f"the router refused {path}: {response.text}")
        return response.json()

    def set_baseline(self, version: int, **faults: float) -> RouterState:
        backend = self.serve_version(version, **faults)
        return RouterState.model_validate(
            self._router("POST", "/admin/state", {"baseline": backend.model_dump()})
        )

    def deploy(self, version: int, **faults: float) -> Backend:
        """Serve `version` as the canary, at weight 0 until `set_weight`."""
        backend = self.serve_version(version, **faults)
        state = self.router_state()
        if state.canary != backend:
            self._router("POST", "/admin/state", {"canary": backend.model_dump(), "weight": 0.0})
        return backend

    def set_weight(self, weight: float) -> RouterState:
        return RouterState.model_validate(self._router("POST", "/admin/state", {"weight": weight}))

    def promote(self) -> RouterState:
        """The canary becomes the baseline at full traffic; the old baseline's server stops."""
        state = self.router_state()
        if state.canary is None:
            return state
        new = RouterState.model_validate(
            self._router(
                "POST",
                "/admin/state",
                {"baseline": state.canary.model_dump(), "canary": None, "weight": 0.0},
            )
        )
        if state.baseline is not None and state.baseline.version != state.canary.version:
            self._retire(state.baseline.version)
        return new

    def rollback(self) -> RouterState:
        """All traffic back to the baseline; the canary's server stops."""
        state = self.router_state()
        if state.canary is None and state.weight == 0:
            return state
        new = RouterState.model_validate(
            self._router("POST", "/admin/state", {"canary": None, "weight": 0.0})
        )
        if state.canary is not None and (
            state.baseline is None or state.canary.version != state.baseline.version
        ):
            self._retire(state.canary.version)
        return new

    def restore(self, state: RouterState) -> RouterState:
        """Put the router back to a recorded state (the undo of promote or rollback)."""
        for backend in (state.baseline, state.canary):
            if backend is not None and backend.version is not None:
                fresh = self.serve_version(backend.version)
                backend.url = fresh.url
        return RouterState.model_validate(
            self._router(
                "POST",
                "/admin/state",
                {
                    "baseline": state.baseline.model_dump() if state.baseline else None,
                    "canary": state.canary.model_dump() if state.canary else None,
                    "weight": state.weight,
                },
            )
        )

    def _retire(self, version: int | None, drain_seconds: float = 1.0) -> None:
        record = self.record()
        served = record.servers.pop(str(version), None)
        self._save(record)
        if served is not None:
            time.sleep(drain_seconds)
            self._stop(served)

    def status(self) -> RolloutStatus:
        record = self.record()
        return RolloutStatus(
            router_url=record.router.url if record.router else None,
            state=self.router_state() if self._healthy(record.router) else RouterState(),
            servers={v: s.url for v, s in record.servers.items() if alive(s.pid)},
        )

    def shutdown(self) -> None:
        """Stop every process this home started."""
        record = self.record()
        for served in [*record.servers.values(), *([record.router] if record.router else [])]:
            self._stop(served)
        self._save(ServingRecord())


class PromotionJournal(BaseModel):
    """Written before a promotion and removed after it, so a crash in between is seen."""

    model_name: str
    version: int
    previous_champion: int | None
    router_before: RouterState


def journal_path(settings: Settings) -> Path:
    return settings.home / "serving" / "promotion.json"


def write_journal(journal: PromotionJournal, settings: Settings) -> None:
    path = journal_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(journal.model_dump_json())
    tmp.replace(path)


def clear_journal(settings: Settings) -> None:
    journal_path(settings).unlink(missing_ok=True)


@task(name="switch-traffic", cache_policy=NO_CACHE)
def switch_traffic(settings: Settings | None = None) -> RouterState:
    """Send all traffic to the canary inside a promotion transaction; undone on rollback."""
    from prefect.transactions import get_transaction

    backend = LocalRollout(settings)
    before = backend.router_state()
    transaction = get_transaction()
    if transaction is not None:
        transaction.set("router_before", before)
        transaction.set("settings", settings)
    return backend.promote()


@switch_traffic.on_rollback
def _undo_switch_traffic(transaction) -> None:
    LocalRollout(transaction.get("settings")).restore(transaction.get("router_before"))


def reconcile(model_name: str, settings: Settings | None = None) -> str | None:
    """Make the registry's champion and the router's baseline agree; say what was repaired.

    A promotion journal left behind means a process died mid-promotion: both sides go back to
    where they were before it (aliases restored, router restored). Otherwise, if the router's
    baseline is not the champion, the champion alias wins and the router follows it.
    """
    from agentic_mlops.tasks import registry

    settings = settings or load_settings()
    backend = LocalRollout(settings)
    path = journal_path(settings)
    if path.exists():
        journal = PromotionJournal.model_validate_json(path.read_text())
        if journal.previous_champion is not None:
            registry.promote_champion(journal.model_name, journal.previous_champion, settings)
        if backend.record().router is not None:
            backend.restore(journal.router_before)
        clear_journal(settings)
        return (
            f"an interrupted promotion of v{journal.version} was undone: champion "
            f"v{journal.previous_champion} and its traffic restored"
        )
    champion = registry.alias_version(model_name, registry.CHAMPION, settings)
    record = backend.record()
    if champion is None or record.router is None or not backend._healthy(record.router):
        return None
    state = backend.router_state()
    if state.baseline is None or state.baseline.version != champion:
        backend.set_baseline(champion)
        return (
            f"the router served v{state.baseline.version if state.baseline else None}; "
            f"it now serves the champion v{champion}"
        )
    return None
