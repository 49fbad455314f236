"""Rollout backends: where model versions are served and how traffic moves between them.

Every backend offers `RolloutBackend`: `deploy` a version as the canary, `set_weight` of the
canary's traffic, `promote` the canary to baseline, `rollback` to the baseline alone, `restore`
a recorded state, `status`, and the reads and clean-ups around them. `rollout_backend(settings)`
is the one place a backend is chosen (`serving_backend`): flows, the CLI, the MCP tools and the
demo take theirs from it. `LocalRollout` (the embedded default) runs the canary router and one
MLflow model server per version as processes on loopback, recorded per registered model in
`home/serving/<model>/processes.json` so that any process (the CLI, a flow run, a test) can
find and stop them; several models serve side by side, each behind its own router.
`KubernetesRollout` keeps a stable and a canary Deployment on a cluster. Each
operation is safe to repeat: deploying a version that is already served reuses its server;
promoting or rolling back when there is no canary changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from agentic_mlops.deployments.kubernetes import manifests as k8s
from agentic_mlops.serving.request_log import log_folder
from agentic_mlops.serving.router import Backend, RouterState
from agentic_mlops.settings import Settings, load_settings

READY, LIVE = "/healthz", "/livez"
"""A server's readiness check (the router: a model serves) and the router's liveness check."""


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
    """The interface every rollout backend offers (local processes, Kubernetes): everything
    the flows, the CLI, the MCP tools and the demo do with serving goes through it."""

    def start_router(self, port: int | None = None) -> str:
        """Make one address serve the model (the router, or the Services and route), and
        return it."""
        ...

    def router_url(self) -> str | None:
        """The address of a router of ours that answers (its `/admin` API and request log);
        None when none runs."""
        ...

    def is_serving(self) -> bool:
        """Whether a baseline is served, so that traffic can be moved and must follow the
        champion."""
        ...

    def why_not_serving(self) -> str | None:
        """Why a canary cannot run now (nothing serves a baseline); None when one can."""
        ...

    def router_state(self) -> RouterState:
        """Baseline, canary and the canary's share of traffic as they are now."""
        ...

    def set_baseline(self, version: int) -> RouterState:
        """Serve `version` as the baseline."""
        ...

    def deploy(self, version: int) -> Backend:
        """Serve `version` as the canary, at weight 0 until `set_weight`."""
        ...

    def set_weight(self, weight: float) -> RouterState:
        """Give the canary `weight` of the traffic."""
        ...

    def promote(self) -> RouterState:
        """The canary becomes the baseline at full traffic."""
        ...

    def rollback(self) -> RouterState:
        """All traffic back to the baseline; the canary stops."""
        ...

    def restore(self, state: RouterState) -> RouterState:
        """Put serving back to a recorded state (the undo of promote or rollback)."""
        ...

    def status(self) -> RolloutStatus:
        """What is served, where, and how traffic is split."""
        ...

    def processes(self) -> list[ServingProcess]:
        """The serving processes of this machine, alive or stale."""
        ...

    def stray_servers(self, keep: set[int | None]) -> list[int]:
        """Stop the servers of versions not in `keep`; their versions."""
        ...

    def stop_all(self) -> list[ServingProcess]:
        """Stop everything that serves and forget it; what was running."""
        ...

    def shutdown(self) -> None:
        """Stop everything that serves."""
        ...


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

    def __init__(self, settings: Settings | None = None, startup_timeout: float = 90.0):
        self.settings = settings or load_settings()
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
        self._wait_healthy(record.router, "the router", LIVE)
        return record.router.url

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
        from agentic_mlops.tasks.reference import stored_card

        card = stored_card(self.settings.model_name, version, self.settings)
        if card is not None:  # the task its card names (adopted pyfunc models declare none)
            args += ["--task", card.task]
        if fault_error_rate:
            args += ["--fault-error-rate", str(fault_error_rate)]
        if fault_latency_ms:
            args += ["--fault-latency-ms", str(fault_latency_ms)]
        pid = self._spawn("agentic_mlops.serving.model_server", args, log)
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
        for served in [*record.servers.values(), *([record.router] if record.router else [])]:
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


class ServingProcess(BaseModel):
    """One recorded serving process, as `agentic-mlops serving status` lists it."""

    role: Literal["router", "model server"]
    model_name: str = Field(default="", description="The registered model it serves.")
    pid: int
    port: int
    url: str
    version: int | None = Field(default=None, description="Model version a server serves.")
    variant: Literal["baseline", "canary"] | None = Field(
        default=None, description="Its place in the router's traffic; none: it gets none."
    )
    weight: float | None = Field(
        default=None,
        description="Share of traffic a model server gets (the router's canary weight on the "
        "router's line); empty when the router does not answer.",
    )
    status: Literal["alive", "stale"] = Field(
        description="alive: the process runs; stale: recorded, but it has ended."
    )
    log: str


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


def served_models(settings: Settings) -> list[str]:
    """The registered models with serving processes recorded under the home."""
    folder = settings.home / "serving"
    return sorted(p.parent.name for p in folder.glob("*/processes.json")) if folder.is_dir() else []


def rollout_backend(settings: Settings) -> RolloutBackend:
    """The rollout backend that `settings.serving.backend` names: the one place a backend is
    made, so every flow, the CLI, the MCP tools and the demo move the same traffic."""
    if settings.serving.backend == "kubernetes":
        serving = k8s.KubernetesServing(
            namespace=settings.kubernetes.namespace,
            image=settings.kubernetes.image,
            tracking_uri=settings.kubernetes.tracking_uri,
            replicas=settings.kubernetes.replicas,
            gateway=(
                k8s.GatewayRef(name=settings.kubernetes.gateway)
                if settings.kubernetes.gateway
                else None
            ),
        )
        return KubernetesRollout(
            kubernetes_api_client(settings.kubernetes.context),
            serving,
            model_name=settings.model_name,
            ready_timeout=settings.kubernetes.ready_timeout_seconds,
            poll_seconds=settings.kubernetes.poll_seconds,
            public_url=settings.kubernetes.public_url,
        )
    return LocalRollout(settings)


def _backends(settings: Settings | None, model_name: str | None) -> list[RolloutBackend]:
    settings = settings or load_settings()
    if settings.serving.backend == "kubernetes":
        names = [model_name or settings.model_name]
    else:
        names = [n for n in served_models(settings) if model_name in (None, n)]
    return [rollout_backend(settings.for_model(name)) for name in names]


def serving_status(
    settings: Settings | None = None, model_name: str | None = None
) -> list[ServingProcess]:
    """Every serving process recorded under the home (of one model, when named): routers and
    model servers."""
    return [p for backend in _backends(settings, model_name) for p in backend.processes()]


def stop_serving(
    settings: Settings | None = None, model_name: str | None = None
) -> list[ServingProcess]:
    """Stop every serving process recorded under the home (of one model, when named) and
    clean the records."""
    return [p for backend in _backends(settings, model_name) for p in backend.stop_all()]


def why_no_canary(settings: Settings) -> str | None:
    """Why a canary cannot run now (nothing serves a baseline); None when one can."""
    return rollout_backend(settings).why_not_serving()


class PromotionJournal(BaseModel):
    """Written before a promotion and removed after it, so a crash in between is seen."""

    model_name: str
    version: int
    previous_champion: int | None
    router_before: RouterState
    flow_run_id: str | None = Field(
        default=None, description="The Prefect flow run promoting, so a repair can name it."
    )


def journal_path(settings: Settings) -> Path:
    return settings.serving_dir / "promotion.json"


def read_journal(settings: Settings) -> PromotionJournal | None:
    """The journal of a promotion under way or interrupted; None when there is none."""
    path = journal_path(settings)
    if not path.exists():
        return None
    return PromotionJournal.model_validate_json(path.read_text())


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

    settings = settings or load_settings()
    backend = rollout_backend(settings)
    before = backend.router_state()
    transaction = get_transaction()
    if transaction is not None:
        transaction.set("router_before", before)
        transaction.set("settings", settings)
    return backend.promote()


@switch_traffic.on_rollback
def _undo_switch_traffic(transaction) -> None:
    rollout_backend(transaction.get("settings")).restore(transaction.get("router_before"))


def reconcile(model_name: str, settings: Settings | None = None) -> str | None:
    """Make the registry's champion and the router's baseline agree; say what was repaired.

    A promotion journal left behind means a process died mid-promotion: both sides go back to
    where they were before it (aliases restored, router restored). Otherwise, if the router's
    baseline is not the champion, the champion alias wins and the router follows it.
    """
    from agentic_mlops.tasks import registry

    settings = settings or load_settings()
    backend = rollout_backend(settings)
    journal = read_journal(settings)
    if journal is not None:
        if journal.previous_champion is not None:
            registry.promote_champion(journal.model_name, journal.previous_champion, settings)
        if backend.is_serving():
            backend.restore(journal.router_before)
        clear_journal(settings)
        return (
            f"an interrupted promotion of v{journal.version} was undone: champion "
            f"v{journal.previous_champion} and its traffic restored"
        )
    champion = registry.alias_version(model_name, registry.CHAMPION, settings)
    if champion is None or not backend.is_serving():
        return None
    state = backend.router_state()
    if state.baseline is None or state.baseline.version != champion:
        backend.set_baseline(champion)
        return (
            f"the router served v{state.baseline.version if state.baseline else None}; "
            f"it now serves the champion v{champion}"
        )
    return None


def restore_champion_traffic(settings: Settings | None = None) -> str:
    """Put all traffic back on the champion and stop the challenger's server, after a canary
    (or a lifecycle turn running one) ended without finishing: cancelled or crashed.

    An interrupted promotion is undone first, as `reconcile` does; then the canary loses its
    traffic and every model server but the baseline's stops. Safe when nothing serves (then
    nothing changes) and safe to run twice. Returns what it did, on one line.
    """
    from agentic_mlops.tasks import registry

    settings = settings or load_settings()
    backend = rollout_backend(settings)
    done: list[str] = []
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    keep: set[int | None] = {champion}
    try:
        repaired = reconcile(settings.model_name, settings)
        if repaired:
            done.append(repaired)
        if backend.is_serving():
            before = backend.router_state()
            after = backend.rollback()
            if before.canary is not None:
                done.append(f"canary v{before.canary.version} at {before.weight:.0%} removed")
            if after.baseline is not None:
                keep = {after.baseline.version}
                done.append(f"all traffic on v{after.baseline.version}")
    except ServingError as error:
        done.append(f"the router could not be changed: {error}")
    stopped = backend.stray_servers(keep)
    if stopped:
        done.append(f"stopped the server of {', '.join(f'v{v}' for v in stopped)}")
    return "; ".join(done) or "nothing was serving a canary"


def _runs_of(flow_run_id: str) -> set[str]:
    """A flow run and its subflow runs (a lifecycle turn's drift check, retrain, canary)."""
    from prefect.client.orchestration import get_client

    ids = {flow_run_id}
    try:
        with get_client(sync_client=True) as client:
            body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "limit": 50}
            runs = client.request("POST", "/flow_runs/filter", json=body).json()
        ids |= {run["id"] for run in runs}
    except Exception:  # the API is out of reach: the run's own decisions only
        pass
    return ids


def record_interruption(
    flow_run_id: str, how: str, what: str, settings: Settings | None = None
) -> list[str]:
    """Attach to the newest decision of each kind made by a flow run (or its subflows) that
    it was interrupted and what was put back; returns the ledger ids told (none: no decision
    was recorded yet)."""
    from agentic_mlops.tasks import ledger

    settings = settings or load_settings()
    runs = _runs_of(flow_run_id)
    newest: dict[str, str] = {}
    for entry in ledger.list_decisions(settings.model_name, limit=500, settings=settings):
        if entry.flow_run_id in runs:
            newest.setdefault(entry.decision_point, entry.id)
    for entry_id in newest.values():
        ledger.record_outcome(
            entry_id,
            {"canary": how, "interrupted": how, "carried_out": "rolled_back", "restored": what},
            settings,
        )
    return list(newest.values())


def roll_back_interrupted_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` and `on_crashed` hook of the `canary-rollout` and
    `lifecycle` flows: all traffic back on the champion, the challenger's server stopped, and
    the run's latest decisions told so in the ledger. Run by the worker once it has stopped
    the run's process (or by the engine, for a run in this process); never raises."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)
    how = "crashed" if state.is_crashed() else "cancelled"
    settings = load_settings().for_model((flow_run.parameters or {}).get("model_name"))
    try:
        what = restore_champion_traffic(settings)
    except Exception as error:  # noqa: BLE001 - a hook reports, it cannot fail the run again
        logger.error("the %s run could not put traffic back on the champion: %s", how, error)
        return
    logger.warning("the run was %s: %s", how, what)
    try:
        told = record_interruption(str(flow_run.id), how, what, settings)
    except Exception as error:  # noqa: BLE001
        logger.error("the ledger could not be told: %s", error)
        return
    logger.info("ledger entries told: %s", ", ".join(told) or "none (no decision yet)")


def kubernetes_api_client(context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: the pod's service account inside a cluster, else the
    kubeconfig (`KUBECONFIG` as it is now, else `~/.kube/config`) with its current or the named
    context. The client library reads `KUBECONFIG` once, at import, so it is passed here."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG") or None
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    return client.ApiClient()


def _holds(current: Any, desired: Any) -> bool:
    """Whether the cluster's value already says everything the manifest says.

    The API server adds defaults and drops empty lists and maps, so what it holds may say
    more than the manifest, never less or otherwise.
    """
    if isinstance(desired, dict):
        current = current or {}
        return isinstance(current, dict) and all(
            _holds(current.get(key), value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        current = current or []
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(_holds(c, d) for c, d in zip(current, desired, strict=True))
        )
    return current == desired


def _rolled_out(deployment: dict[str, Any]) -> tuple[bool, str]:
    """Whether every pod of a Deployment runs its current template and is ready, as
    `kubectl rollout status` decides it; else what is still missing."""
    wanted = deployment.get("spec", {}).get("replicas", 1)
    status = deployment.get("status") or {}
    if (status.get("observedGeneration") or 0) < deployment["metadata"].get("generation", 0):
        return False, "the Deployment controller has not seen the change yet"
    updated = status.get("updatedReplicas") or 0
    if updated < wanted:
        return False, f"{updated} of {wanted} pods run the new template"
    if (status.get("replicas") or 0) > updated:
        return False, f"{status['replicas'] - updated} old pods are still terminating"
    if (status.get("availableReplicas") or 0) < updated:
        return False, f"{status.get('availableReplicas') or 0} of {updated} pods are ready"
    return True, "ready"


def _version_of(deployment: dict[str, Any] | None) -> int | None:
    if deployment is None:
        return None
    value = (deployment["metadata"].get("labels") or {}).get(k8s.VERSION_LABEL)
    return int(value) if value is not None else None


def _pods_of(deployment: dict[str, Any] | None) -> int:
    return (deployment or {}).get("spec", {}).get("replicas", 0)


class KubernetesRollout:
    """Stable and canary Deployments of the model server on a Kubernetes cluster.

    With a Gateway (`serving.gateway`), each track has its Service and an HTTPRoute's weights
    split the traffic; without one, one Service selects both tracks and the split follows the
    pods (`manifests.replica_split`). Every write is a rendered, validated manifest that is
    created, or replaced when the cluster holds something else, and skipped when the cluster
    already holds it; deleting what is gone counts as done. So every operation is safe to
    repeat. Traffic only moves to pods that are ready (their `/healthz` answers); a change whose
    pods are not ready within `ready_timeout` is undone and raises `ServingError`.
    """

    def __init__(
        self,
        api_client: Any = None,
        serving: k8s.KubernetesServing | None = None,
        *,
        model_name: str | None = None,
        ready_timeout: float = 600.0,
        poll_seconds: float = 2.0,
        public_url: str | None = None,
        kubernetes_version: str = k8s.KUBERNETES_VERSION,
    ):
        """
        Args:
            api_client: A `kubernetes.client.ApiClient`; default `kubernetes_api_client()`.
            serving: Namespace, image, tracking URI, resources, replicas, Gateway.
            model_name: Registered model name; default the settings' `model_name`.
            ready_timeout: Longest wait for a Deployment's pods to be ready, in seconds.
            poll_seconds: Pause between two reads of a Deployment's status.
            public_url: Where clients reach the model (the Gateway's address), for `status`.
            kubernetes_version: Schemas every manifest is validated against before it is sent.
        """
        from kubernetes import client

        self.client = client
        self.api_client = api_client if api_client is not None else kubernetes_api_client()
        self.serving = serving or k8s.KubernetesServing()
        self.namespace = self.serving.namespace
        self.model_name = model_name or load_settings().model_name
        self.ready_timeout, self.poll_seconds = ready_timeout, poll_seconds
        self.public_url = public_url
        self.kubernetes_version = kubernetes_version
        self.apps = client.AppsV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    @property
    def gateway(self) -> bool:
        return self.serving.gateway is not None

    def _calls(self, kind: str) -> tuple[Callable, Callable, Callable, Callable]:
        """Read, create, replace and delete of one kind in our namespace."""
        ns = self.namespace
        if kind == "Deployment":
            return (
                lambda name: self.apps.read_namespaced_deployment(name, ns),
                lambda body: self.apps.create_namespaced_deployment(ns, body),
                lambda name, body: self.apps.replace_namespaced_deployment(name, ns, body),
                lambda name: self.apps.delete_namespaced_deployment(
                    name, ns, propagation_policy="Background"
                ),
            )
        if kind == "Service":
            return (
                lambda name: self.core.read_namespaced_service(name, ns),
                lambda body: self.core.create_namespaced_service(ns, body),
                lambda name, body: self.core.replace_namespaced_service(name, ns, body),
                lambda name: self.core.delete_namespaced_service(name, ns),
            )
        if kind == "HTTPRoute":
            route = (k8s.GATEWAY_GROUP, "v1", ns, "httproutes")
            return (
                lambda name: self.custom.get_namespaced_custom_object(*route, name),
                lambda body: self.custom.create_namespaced_custom_object(*route, body),
                lambda name, body: self.custom.replace_namespaced_custom_object(*route, name, body),
                lambda name: self.custom.delete_namespaced_custom_object(*route, name),
            )
        raise ValueError(f"the rollout does not manage {kind} objects")

    def _plain(self, answer: Any) -> dict[str, Any]:
        if isinstance(answer, dict):
            return answer
        return self.api_client.sanitize_for_serialization(answer)

    def _refused(self, error: Any, what: str) -> ServingError:
        """An API error the rollout cannot handle, as the `ServingError` flows end on."""
        reason = getattr(error, "reason", None) or error
        return ServingError(f"the Kubernetes API refused {what}: {error.status} {reason}")

    def _read(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self._calls(kind)[0](name))
        except self.client.ApiException as error:
            if error.status == 404:
                return None
            raise self._refused(error, f"a read of {kind}/{name}") from error

    def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the object, or replace it when the cluster holds something else; else
        nothing. A replace carries the resourceVersion read, so a concurrent change is
        noticed (409) and the object read again."""
        k8s.validate_manifest(manifest, self.kubernetes_version)
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        _, create, replace, _ = self._calls(kind)
        metadata = manifest["metadata"]
        wanted = {
            "metadata": {
                "labels": metadata.get("labels"),
                "annotations": metadata.get("annotations"),
            },
            "spec": manifest["spec"],
        }
        for _attempt in range(3):
            current = self._read(kind, name)
            try:
                if current is None:
                    return self._plain(create(manifest))
                if _holds(current, wanted):
                    return current
                body = copy.deepcopy(manifest)
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                return self._plain(replace(name, body))
            except self.client.ApiException as error:
                if error.status != 409:
                    raise self._refused(error, f"a write of {kind}/{name}") from error
        raise ServingError(f"{kind}/{name} kept changing while it was being applied")

    def _delete(self, kind: str, name: str) -> bool:
        """Delete an object; one already gone counts as deleted. Returns whether it existed."""
        try:
            self._calls(kind)[3](name)
        except self.client.ApiException as error:
            if error.status == 404:
                return False
            raise self._refused(error, f"a delete of {kind}/{name}") from error
        return True

    def _pod_trouble(self, track: str) -> str:
        """Why a track's pods are not ready, as their containers say (image pull, crash)."""
        chosen = k8s.selector(self.model_name, track or None)
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=",".join(f"{k}={v}" for k, v in chosen.items())
        )
        reasons = set()
        for pod in pods.items:
            for container in (pod.status and pod.status.container_statuses) or []:
                waiting = container.state and container.state.waiting
                if waiting and waiting.reason:
                    reasons.add(f"{waiting.reason} {waiting.message or ''}".strip())
        return "; ".join(sorted(reasons))

    def _wait_ready(self, name: str) -> None:
        """Wait until every pod of the Deployment runs its template and answers /healthz."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            deployment = self._plain(
                self.apps.read_namespaced_deployment_status(name, self.namespace)
            )
            done, why = _rolled_out(deployment)
            if done:
                return
            conditions = (deployment.get("status") or {}).get("conditions") or []
            stalled = any(c.get("reason") == "ProgressDeadlineExceeded" for c in conditions)
            if stalled or time.monotonic() >= deadline:
                track = (deployment["metadata"].get("labels") or {}).get(k8s.TRACK_LABEL, "")
                trouble = self._pod_trouble(track)
                raise ServingError(
                    f"Deployment {name} was not ready within {self.ready_timeout:.0f} s: {why}"
                    + (f" ({trouble})" if trouble else "")
                )
            time.sleep(self.poll_seconds)

    def _apply_ready(self, manifest: dict[str, Any], undo: dict[str, Any] | None) -> None:
        """Apply a Deployment and wait for its pods; if they are not ready in time, put back
        `undo` (the Deployment as it was) or, when there was none, delete it."""
        self._apply(manifest)
        try:
            self._wait_ready(manifest["metadata"]["name"])
        except ServingError:
            if undo is None:
                self._delete("Deployment", manifest["metadata"]["name"])
            else:
                self._apply(undo)
            raise

    def _deployments(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The stable and the canary Deployment, None where there is none."""
        return tuple(
            self._read("Deployment", k8s.deployment_name(self.model_name, track))
            for track in (k8s.STABLE, k8s.CANARY)
        )

    def _render(self, version: int, track: str, pods: int | None = None) -> dict[str, Any]:
        return k8s.render_deployment(self.model_name, version, track, self.serving, pods)

    def _as_it_is(self, deployment: dict[str, Any] | None, track: str) -> dict | None:
        """The manifest that puts a Deployment back as it is now (None: there is none)."""
        if deployment is None:
            return None
        return self._render(_version_of(deployment), track, _pods_of(deployment))

    def _services(self) -> None:
        for service in k8s.render_services(self.model_name, self.serving):
            self._apply(service)

    def _route(self, weight: float) -> None:
        self._apply(k8s.render_route(self.model_name, self.serving, weight))

    def _route_weight(self) -> float | None:
        """The canary's share in the HTTPRoute; None when there is no route."""
        route = self._read("HTTPRoute", k8s.route_name(self.model_name))
        if route is None:
            return None
        weights = {
            ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]
        }
        total = sum(weights.values())
        canary = weights.get(k8s.service_name(self.model_name, k8s.CANARY), 0)
        return canary / total if total else 0.0

    def _weight(self, stable: dict | None, canary: dict | None) -> float:
        """The canary's share as the cluster has it: route weights, or its share of pods."""
        if canary is None:
            return 0.0
        if self.gateway:
            return self._route_weight() or 0.0
        total = _pods_of(stable) + _pods_of(canary)
        return _pods_of(canary) / total if total else 0.0

    def _url(self, track: str | None) -> str:
        name = k8s.service_name(self.model_name, track if self.gateway else None)
        return f"http://{name}.{self.namespace}.svc.cluster.local:{self.serving.service_port}"

    def _backend(self, deployment: dict[str, Any] | None, track: str) -> Backend | None:
        if deployment is None:
            return None
        return Backend(url=self._url(track), version=_version_of(deployment))

    def _state(self) -> RouterState:
        stable, canary = self._deployments()
        return RouterState(
            baseline=self._backend(stable, k8s.STABLE),
            canary=self._backend(canary, k8s.CANARY),
            weight=self._weight(stable, canary),
        )

    def _split_pods(self, weight: float, stable: dict | None, canary: dict[str, Any]) -> None:
        """Without a Gateway: move pods between the tracks, the growing track first, so the
        model never has fewer ready pods than it had."""
        stable_pods, canary_pods = k8s.replica_split(weight, self.serving.replicas)
        moves = [(k8s.CANARY, canary, canary_pods)]
        if stable is not None:
            moves.append((k8s.STABLE, stable, stable_pods))
        moves.sort(key=lambda move: _pods_of(move[1]) - move[2])
        for track, deployment, pods in moves:
            self._apply_ready(
                self._render(_version_of(deployment), track, pods),
                undo=self._as_it_is(deployment, track),
            )

    def start_router(self, port: int | None = None) -> str:
        """Create the Services (and, with a Gateway, the route) and return where clients
        reach the model; `port` is the local router's and means nothing here."""
        self._services()
        if self.gateway and self._read("HTTPRoute", k8s.route_name(self.model_name)) is None:
            self._route(0.0)
        return self.public_url or self._url(k8s.STABLE if self.gateway else None)

    def router_url(self) -> str | None:
        """None: no router of ours runs; a Gateway or a Service splits the traffic."""
        return None

    def is_serving(self) -> bool:
        return self._deployments()[0] is not None

    def why_not_serving(self) -> str | None:
        """No stable Deployment, or its pods are not ready; None when it serves."""
        stable = self._deployments()[0]
        where = f"{self.model_name!r} in namespace {self.namespace}"
        if stable is None:
            return f"nothing is serving: no stable Deployment of {where}"
        done, why = _rolled_out(stable)
        return None if done else f"the stable Deployment of {where} is not ready: {why}"

    def router_state(self) -> RouterState:
        return self._state()

    def set_baseline(self, version: int) -> RouterState:
        """Serve `version` on the stable track: the first rollout, or a reconcile."""
        self._services()
        stable, canary = self._deployments()
        pods = None
        if not self.gateway and canary is not None:
            pods = self.serving.replicas - _pods_of(canary)
        self._apply_ready(
            self._render(version, k8s.STABLE, pods), self._as_it_is(stable, k8s.STABLE)
        )
        if self.gateway:
            self._route(self._weight(stable, canary))
        return self._state()

    def deploy(self, version: int) -> Backend:
        """Serve `version` as the canary, at weight 0 until `set_weight`.

        With a Gateway, the canary's pods are ready before the route names its Service; without
        one the canary starts with no pods, since any ready pod behind the shared Service gets
        traffic. A canary of another version first loses its traffic. Deploying the version
        already on the canary changes nothing.
        """
        self._services()
        stable, canary = self._deployments()
        backend = Backend(url=self._url(k8s.CANARY), version=version)
        if _version_of(canary) == version:
            self._wait_ready(canary["metadata"]["name"])
            if self.gateway:
                self._route(self._weight(stable, canary))
            return backend
        if self.gateway:
            if canary is not None:
                self._route(0.0)
            self._apply_ready(self._render(version, k8s.CANARY), undo=None)
            self._route(0.0)
            return backend
        if _pods_of(canary) > 0:
            self._split_pods(0.0, stable, canary)
        self._apply_ready(self._render(version, k8s.CANARY, 0), undo=None)
        return backend

    def set_weight(self, weight: float) -> RouterState:
        """Give the canary `weight` of the traffic, once its pods are ready."""
        k8s.route_weights(weight)
        stable, canary = self._deployments()
        if canary is None:
            if weight > 0:
                raise ServingError("there is no canary to send traffic to: deploy one first")
            return self._state()
        if self.gateway:
            self._wait_ready(canary["metadata"]["name"])
            self._route(weight)
        else:
            self._split_pods(weight, stable, canary)
        return self._state()

    def promote(self) -> RouterState:
        """The stable track moves to the canary's version (a rolling update that keeps every
        pod until its successor is ready); then all traffic is stable's and the canary is
        deleted. Without a canary, nothing changes."""
        stable, canary = self._deployments()
        if canary is None:
            return self._state()
        self._apply_ready(
            self._render(_version_of(canary), k8s.STABLE, self.serving.replicas),
            self._as_it_is(stable, k8s.STABLE),
        )
        if self.gateway:
            self._route(0.0)
        self._delete("Deployment", canary["metadata"]["name"])
        return self._state()

    def rollback(self) -> RouterState:
        """All traffic back to the stable track, then the canary is deleted. Without a canary
        and with no traffic routed to one, nothing changes."""
        stable, canary = self._deployments()
        if self.gateway:
            if (self._route_weight() or 0.0) > 0:
                self._route(0.0)
        elif canary is not None and stable is not None and _pods_of(stable) < self.serving.replicas:
            self._apply_ready(
                self._render(_version_of(stable), k8s.STABLE, self.serving.replicas),
                self._as_it_is(stable, k8s.STABLE),
            )
        if canary is not None:
            self._delete("Deployment", canary["metadata"]["name"])
        return self._state()

    def restore(self, state: RouterState) -> RouterState:
        """Put the cluster back to a recorded state (the undo of promote or rollback)."""
        if state.baseline is not None and state.baseline.version is not None:
            self.set_baseline(state.baseline.version)
        if state.canary is not None and state.canary.version is not None:
            self.deploy(state.canary.version)
            return self.set_weight(state.weight)
        return self.rollback()

    def status(self) -> RolloutStatus:
        state = self._state()
        servers = {
            str(backend.version): backend.url
            for backend in (state.baseline, state.canary)
            if backend is not None and backend.version is not None
        }
        router_url = self.public_url or (None if self.gateway else self._url(None))
        return RolloutStatus(router_url=router_url, state=state, servers=servers)

    def processes(self) -> list[ServingProcess]:
        """None: the cluster runs the pods, no process of this machine serves (`status`
        names what the cluster serves)."""
        return []

    def stray_servers(self, keep: set[int | None]) -> list[int]:
        """Delete a canary Deployment whose version is not in `keep`, after taking its
        traffic away; its version."""
        canary = self._deployments()[1]
        if canary is None or _version_of(canary) in keep:
            return []
        self.rollback()
        return [_version_of(canary)]

    def stop_all(self) -> list[ServingProcess]:
        """Delete every object of the model's serving (`shutdown`); no local process ran."""
        self.shutdown()
        return []

    def shutdown(self) -> None:
        """Delete every object of the model's serving: route, Deployments, Services."""
        if self.gateway:
            self._delete("HTTPRoute", k8s.route_name(self.model_name))
        for track in (k8s.CANARY, k8s.STABLE):
            self._delete("Deployment", k8s.deployment_name(self.model_name, track))
        for service in k8s.render_services(self.model_name, self.serving):
            self._delete("Service", service["metadata"]["name"])
