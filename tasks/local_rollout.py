"""The embedded rollout backend: the canary router and one MLflow model server per version as
processes on loopback, recorded per registered model in `home/serving/<model>/processes.json`
so that any process (the CLI, a flow run, a test) can find and stop them; several models serve
side by side, each behind its own router. Deploying a version that is already served reuses
its server; promoting or rolling back when there is no canary changes nothing.

With the `serving_standby` setting (on by default) one more model server waits, started
with the router and again after each use, its libraries imported: serving a new version
hands that version to the standby (`POST /admin/load`), which answers in about a second
instead of a new process's 9 s here. A standby that died or cannot load the version is
stopped, and a server is started for the version as without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from agentic_mlops.serving.request_log import log_folder
from agentic_mlops.serving.router import Backend, RouterState
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.rollout_protocol import RolloutStatus, ServingError, ServingProcess

READY, LIVE = "/healthz", "/livez"
"""A server's readiness check (the router: a model serves) and the router's liveness check."""


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
    standby: ServedProcess | None = None


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


def runs_ours(served: ServedProcess) -> bool:
    """Whether a recorded pid still runs one of our serving processes, not a process that
    was given the same pid after ours ended (where `/proc` exists to tell)."""
    if not alive(served.pid):
        return False
    try:
        command = Path(f"/proc/{served.pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: trust the pid
        return True
    return b"agentic_mlops.serving" in command


class LocalRollout:
    """The router and model servers as local processes on loopback."""

    def __init__(self, settings: Settings, startup_timeout: float = 90.0):
        self.settings = settings
        self.folder = self.settings.serving_dir
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record_path = self.folder / "processes.json"
        self.startup_timeout = startup_timeout

    def record(self) -> ServingRecord:
        if self.record_path.exists():
            return ServingRecord.model_validate_json(self.record_path.read_text())
        return ServingRecord()

    def _save(self, record: ServingRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
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

    def _wait_healthy(self, served: ServedProcess, what: str, check: str = READY) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not alive(served.pid):
                tail = Path(served.log).read_text(errors="replace")[-800:]
                raise ServingError(f"{what} exited while starting; its log ends:\n{tail}")
            try:
                if httpx.get(f"{served.url}{check}", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._stop(served)
        raise ServingError(f"{what} did not answer {check} within {self.startup_timeout:.0f} s")

    def _healthy(self, served: ServedProcess | None, check: str = READY) -> bool:
        if served is None or not alive(served.pid):
            return False
        try:
            return httpx.get(f"{served.url}{check}", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _stop(self, served: ServedProcess, grace: float = 10.0) -> None:
        if not runs_ours(served):  # ended already, or its pid now belongs to someone else
            return
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
        if self.router_alive():
            return record.router.url
        port = port or free_port()
        log = self.folder / "router.log"
        pid = self._spawn(
            "agentic_mlops.serving.router",
            [
                "--port",
                str(port),
                "--state",
                str(self.folder / "router.json"),
                "--request-log",
                str(log_folder(self.settings)),
            ],
            log,
        )
        record.router = ServedProcess(pid=pid, port=port, log=str(log))
        self._save(record)
        self.keep_standby()  # warms while the router starts and the first model is chosen
        self._wait_healthy(record.router, "the router", LIVE)
        return record.router.url

    def keep_standby(self) -> ServedProcess | None:
        """Start a standby model server unless one runs or the setting is off; not waited
        for. Returns the standby."""
        if not self.settings.serving.standby:
            return None
        record = self.record()
        if record.standby is not None and runs_ours(record.standby):
            return record.standby
        port = free_port()
        log = self.folder / f"model-standby-{time.time_ns() // 1_000_000}.log"
        args = ["--standby", "--port", str(port)]
        pid = self._spawn("agentic_mlops.serving.model_server", args, log)
        record.standby = ServedProcess(pid=pid, port=port, log=str(log))
        self._save(record)
        return record.standby

    def _from_standby(self, version: int, load: dict) -> ServedProcess | None:
        """The standby, given `version` to serve and taken off the record; None when no
        standby runs or it could not load the version (it is stopped then)."""
        record = self.record()
        standby = record.standby
        if standby is None:
            return None
        record.standby = None
        self._save(record)
        if not runs_ours(standby):
            return None
        deadline = time.monotonic() + self.startup_timeout
        while alive(standby.pid) and time.monotonic() < deadline:  # still importing, maybe
            try:
                answer = httpx.post(
                    f"{standby.url}/admin/load", json=load, timeout=self.startup_timeout
                )
            except httpx.ConnectError:
                time.sleep(0.2)
                continue
            except httpx.HTTPError:
                break
            if answer.status_code == 200:
                return standby.model_copy(update={"version": version})
            break
        self._stop(standby)
        return None

    def router_alive(self) -> bool:
        """Whether the recorded router runs and answers (`/livez`), with a model or not."""
        return self._healthy(self.record().router, LIVE)

    def router_url(self) -> str | None:
        router = self.record().router
        return router.url if router is not None and self.router_alive() else None

    def is_serving(self) -> bool:
        return self.router_alive()

    def why_not_serving(self) -> str | None:
        """No router runs, or it serves no model (no baseline to compare with, no traffic to
        judge by); None when the router is ready."""
        router = self.record().router
        if router is None or not self.router_alive():
            return "nothing is serving: no router is running (start one with `agentic-mlops serve`)"
        if not self._healthy(router, READY):
            return "nothing is serving: the router runs but serves no model (no baseline)"
        return None

    def serve_version(
        self, version: int, fault_error_rate: float = 0.0, fault_latency_ms: float = 0.0
    ) -> Backend:
        """Start the model server of a version (or find the running one); one that runs but
        does not answer is stopped first, so that no process is left behind unrecorded."""
        record = self.record()
        served = record.servers.get(str(version))
        if self._healthy(served):
            return Backend(url=served.url, version=version)
        if served is not None:
            self._stop(served)
        from agentic_mlops.tasks.reference import stored_card

        card = stored_card(self.settings.model_name, version, self.settings)
        load = {
            "model_uri": f"models:/{self.settings.model_name}/{version}",
            "tracking_uri": self.settings.tracking_uri(),
            # the task its card names (adopted pyfunc models declare none)
            "task": card.task if card is not None else "auto",
            "fault_error_rate": fault_error_rate,
            "fault_latency_ms": fault_latency_ms,
        }
        served = self._from_standby(version, load) or self._started(version, load)
        record = self.record()
        record.servers[str(version)] = served
        self._save(record)
        self.keep_standby()  # for the next version
        self._wait_healthy(served, f"the model server of v{version}")
        return Backend(url=served.url, version=version)

    def _started(self, version: int, load: dict) -> ServedProcess:
        """A new model server process for the version (not waited for)."""
        port = free_port()
        log = self.folder / f"model-v{version}.log"
        args = ["--model-uri", load["model_uri"], "--port", str(port)]
        args += ["--tracking-uri", load["tracking_uri"], "--task", load["task"]]
        for option in ("fault_error_rate", "fault_latency_ms"):
            if load[option]:
                args += [f"--{option.replace('_', '-')}", str(load[option])]
        pid = self._spawn("agentic_mlops.serving.model_server", args, log)
        return ServedProcess(pid=pid, port=port, version=version, log=str(log))

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

    def _answering(self, backend: Backend) -> Backend:
        """The backend of a version whose server answers: its own, or a fresh one if it died."""
        if backend.version is None:
            return backend
        return self.serve_version(backend.version)

    def promote(self) -> RouterState:
        """The canary becomes the baseline at full traffic; the old baseline's server stops.

        A canary whose server died since it was deployed is started again first: all traffic
        must never go to a server that does not answer.
        """
        state = self.router_state()
        if state.canary is None:
            return state
        canary = self._answering(state.canary)
        new = RouterState.model_validate(
            self._router(
                "POST",
                "/admin/state",
                {"baseline": canary.model_dump(), "canary": None, "weight": 0.0},
            )
        )
        if state.baseline is not None and state.baseline.version != state.canary.version:
            self._retire(state.baseline.version)
        return new

    def rollback(self) -> RouterState:
        """All traffic back to the baseline; the canary's server stops.

        A baseline whose server died during the rollout is started again first, as in
        `promote`.
        """
        state = self.router_state()
        if state.canary is None and state.weight == 0:
            return state
        change = {"canary": None, "weight": 0.0}
        if state.baseline is not None:
            change["baseline"] = self._answering(state.baseline).model_dump()
        new = RouterState.model_validate(self._router("POST", "/admin/state", change))
        if state.canary is not None and (
            state.baseline is None or state.canary.version != state.baseline.version
        ):
            self._retire(state.canary.version)
        return new

    def restore(self, state: RouterState) -> RouterState:
        """Put the router back to a recorded state (the undo of promote or rollback)."""
        for backend in (state.baseline, state.canary):
            if backend is not None:
                backend.url = self._answering(backend).url
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
        """Stop a version's server after its requests drain, then forget it: a process killed
        in between leaves a server that is still recorded, never one running unrecorded."""
        served = self.record().servers.get(str(version))
        if served is None:
            return
        time.sleep(drain_seconds)
        self._stop(served)
        record = self.record()
        record.servers.pop(str(version), None)
        self._save(record)

    def status(self) -> RolloutStatus:
        record = self.record()
        return RolloutStatus(
            router_url=record.router.url if record.router else None,
            state=self.router_state() if self.router_alive() else RouterState(),
            servers={v: s.url for v, s in record.servers.items() if alive(s.pid)},
        )

    def shutdown(self) -> None:
        """Stop every process this home started."""
        record = self.record()
        others = [p for p in (record.router, record.standby) if p is not None]
        for served in [*record.servers.values(), *others]:
            self._stop(served)
        self._save(ServingRecord())

    def processes(self) -> list[ServingProcess]:
        """Every recorded process, alive or stale, with its place in the router's traffic."""
        record = self.record()
        state = None
        if self.router_alive():
            with contextlib.suppress(ServingError):
                state = self.router_state()
        listed = []
        if record.router is not None:
            listed.append(_listed("router", record.router, state, self.settings.model_name))
        for served in sorted(record.servers.values(), key=lambda s: s.version or 0):
            listed.append(_listed("model server", served, state, self.settings.model_name))
        if record.standby is not None:
            listed.append(_listed("standby", record.standby, state, self.settings.model_name))
        return listed

    def stop_all(self) -> list[ServingProcess]:
        """Stop every recorded process and forget them and the router's traffic state, so a
        router started later serves nothing until it is given a baseline. Returns what was
        recorded; safe to run twice (the second time nothing is)."""
        listed = self.processes()
        self.shutdown()
        (self.folder / "router.json").unlink(missing_ok=True)
        return listed

    def stray_servers(self, keep: set[int | None]) -> list[int]:
        """Stop the recorded model servers of versions not in `keep`; their versions."""
        stopped = []
        for version in list(self.record().servers):
            if int(version) not in keep:
                self._retire(int(version), drain_seconds=0.0)
                stopped.append(int(version))
        return stopped


def _listed(
    role: str, served: ServedProcess, state: RouterState | None, model_name: str
) -> ServingProcess:
    variant, weight = None, None
    if state is not None:
        weight = state.weight if role == "router" else 0.0
        if role == "model server":
            for name, backend in (("baseline", state.baseline), ("canary", state.canary)):
                if backend is not None and backend.url == served.url:
                    variant = name
                    weight = 1 - state.weight if name == "baseline" else state.weight
    return ServingProcess(
        role=role,
        model_name=model_name,
        pid=served.pid,
        port=served.port,
        url=served.url,
        version=served.version,
        variant=variant,
        weight=weight,
        status="alive" if runs_ours(served) else "stale",
        log=served.log,
    )
