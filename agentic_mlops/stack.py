"""The local stack: a Prefect server on the home's SQLite and the MLflow UI on the home's
tracking store, started once in the background and used by every command and flow while it
runs; beside them, a drift-check server with the check's modules loaded (`check_server.py`),
which answers `drift-check` commands in seconds.

`agentic-mlops up` starts them and records them in `home/stack/stack.json` (pid, port, URL and
log file of each); `down` stops them; `status` says what runs. `configure_environment` points
Prefect at the recorded server before Prefect is imported, unless `PREFECT_API_URL` is set
already, so a flow runs there instead of in a temporary server started for one process. A
record whose process has ended (a reboot, a kill) is stale: it is ignored, and removed by
`status`, `up` and `down`.

This module is read by every process at import (`runtime.py`), so it imports nothing heavy:
the standard library and pydantic, which the settings import anyway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

Role = Literal["prefect", "mlflow", "checks"]
COMMAND_MARKERS: dict[str, bytes] = {
    "prefect": b"prefect",
    "mlflow": b"mlflow",
    "checks": b"agentic_mlops.check_server",
}
PR_SET_PDEATHSIG = 1
HEALTH = {"prefect": "/api/health", "mlflow": "/health", "checks": "/health"}


class StackError(RuntimeError):
    """A stack process did not start: the message ends with its log's last lines."""


class StackProcess(BaseModel):
    """One background process of the stack, as recorded under home."""

    role: Role
    pid: int
    port: int
    url: str
    log: str
    started_at: str

    @property
    def api_url(self) -> str:
        """Where clients talk to it: Prefect's API under `/api`, MLflow's at its root."""
        return f"{self.url}/api" if self.role == "prefect" else self.url


class StackRecord(BaseModel):
    """The stack's processes recorded under home; a role without a process is not running."""

    prefect: StackProcess | None = None
    mlflow: StackProcess | None = None
    checks: StackProcess | None = None

    def processes(self) -> list[StackProcess]:
        return [p for p in (self.prefect, self.mlflow, self.checks) if p is not None]


def stack_dir(home: Path) -> Path:
    return home / "stack"


def record_path(home: Path) -> Path:
    return stack_dir(home) / "stack.json"


def read_record(home: Path) -> StackRecord:
    """The recorded stack; an empty record when there is none or it cannot be read."""
    try:
        return StackRecord.model_validate_json(record_path(home).read_text())
    except (OSError, ValidationError):
        return StackRecord()


def write_record(home: Path, record: StackRecord) -> None:
    path = record_path(home)
    if not record.processes():
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(record.model_dump_json(indent=2))
    temporary.replace(path)


def running(process: StackProcess) -> bool:
    """Whether the recorded pid still runs the recorded program, not a process that was given
    the same pid after ours ended (where `/proc` exists to tell)."""
    try:
        done, _ = os.waitpid(process.pid, os.WNOHANG)
        if done == process.pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(process.pid, 0)
    except OSError:
        return False
    try:
        command = command_line(process.pid)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return COMMAND_MARKERS[process.role] in command


def command_line(pid: int, patience: float = 1.0) -> bytes:
    """A process's command line from `/proc`. It reads empty for a moment while the process
    runs exec (its new name already shows), so an empty one is read again for a short while;
    a zombie's stays empty."""
    deadline = time.monotonic() + patience
    while not (command := Path(f"/proc/{pid}/cmdline").read_bytes()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return command


def live_record(home: Path) -> StackRecord:
    """The recorded processes that still run; stale entries are left out (not removed)."""
    record = read_record(home)
    return StackRecord(
        **{p.role: p for p in record.processes() if running(p)},
    )


def prefect_api_url(home: Path) -> str | None:
    """The API address of the home's running Prefect server, or None when it is not up."""
    process = live_record(home).prefect
    return process.api_url if process else None


def mlflow_ui_url(home: Path) -> str | None:
    """The address of the home's running MLflow UI, or None when it is not up."""
    process = live_record(home).mlflow
    return process.url if process else None


def check_server_url(home: Path) -> str | None:
    """The address of the home's running drift-check server, when this process uses the stack."""
    process = live_record(home).checks
    return process.url if process and in_use(home) else None


def wait_for_checks(home: Path, timeout: float = 180.0) -> bool:
    """Wait while the home's check server runs but does not answer yet (it imports and opens
    the MLflow store after `up` returns); whether it answers."""
    deadline = time.monotonic() + timeout
    while (process := live_record(home).checks) is not None:
        if answers(process.url + HEALTH["checks"]):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return False


def ask_check_server(url: str, request_json: str) -> dict | None:
    """Send a drift check to the check server and wait for its answer; None when it cannot be
    reached (the command then checks by itself)."""
    post = urllib.request.Request(
        f"{url}/drift-check",
        data=request_json.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(post, timeout=None) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def in_use(home: Path) -> str | None:
    """The stack's Prefect API address when this process talks to it, else None."""
    url = prefect_api_url(home)
    return url if url and os.environ.get("PREFECT_API_URL") == url else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-1200:]
    except OSError:
        return "(no log)"


def _end_with_parent() -> None:
    """In a child before it runs: ask Linux to end it when the process that started it ends."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(
    role: Role, command: list[str], port: int, log: Path, env: dict, with_parent: bool = False
) -> StackProcess:
    """Start a process in a session of its own, its output appended to `log`; with
    `with_parent`, it ends when this process ends, however this one ends (Linux)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=_end_with_parent if with_parent and sys.platform == "linux" else None,
        )
    return StackProcess(
        role=role,
        pid=process.pid,
        port=port,
        url=f"http://127.0.0.1:{port}",
        log=str(log),
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def ensure_running(process: StackProcess) -> None:
    """Check that a process that was starting still runs.

    Raises:
        StackError: it has exited (the message ends with its log's tail).
    """
    if not running(process):
        raise StackError(
            f"{process.role} exited while starting; {process.log} ends:\n"
            + _log_tail(Path(process.log))
        )


def wait_ready(process: StackProcess, timeout: float) -> None:
    """Wait until a started process answers its health address.

    Raises:
        StackError: it exited, or did not answer within `timeout` (it is then stopped).
    """
    deadline = time.monotonic() + timeout
    health = process.url + HEALTH[process.role]
    while time.monotonic() < deadline:
        ensure_running(process)
        if answers(health):
            return
        time.sleep(0.25)
    stop(process)
    raise StackError(
        f"{process.role} did not answer {health} within {timeout:.0f} s; {process.log} ends:\n"
        + _log_tail(Path(process.log))
    )


def _program(name: str) -> str:
    """An entry point of this environment (`prefect`, `mlflow`), beside its interpreter."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


SQLITE_WAIT_SECONDS = "30"
"""How long Prefect's server waits on the home's SQLite database while another write holds it.
Prefect's default, 10 s, was passed on a loaded two-core machine ("database is locked" on a
worker's heartbeat); Prefect's own test mode waits 30 s."""


def _server_env(prefect_home: Path) -> dict[str, str]:
    """The environment of the Prefect server: the home's database, its UI on, a longer wait
    on a locked SQLite database (unless the user set one)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if not any(
        k in env for k in ("PREFECT_SERVER_DATABASE_TIMEOUT", "PREFECT_API_DATABASE_TIMEOUT")
    ):
        env["PREFECT_SERVER_DATABASE_TIMEOUT"] = SQLITE_WAIT_SECONDS
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_UI_ENABLED="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


TEMPLATES_VARIABLE = "AGENTIC_MLOPS_STACK_TEMPLATES"
"""Folder of the template databases; default: the environment's `share/agentic-mlops`."""
DATABASE_URL_VARIABLES = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)
Store = Literal["prefect", "mlflow"]


def template(store: Store) -> Path | None:
    """Where this environment keeps an empty database of `store` at its installed version's
    schema, made by `make setup` (or the first `up`); None for a Prefect server whose
    database the user named."""
    if store == "prefect" and any(os.environ.get(name) for name in DATABASE_URL_VARIABLES):
        return None
    from importlib.metadata import version

    folder = os.environ.get(TEMPLATES_VARIABLE) or Path(sys.prefix) / "share" / "agentic-mlops"
    return Path(folder) / f"{store}-{version(store)}.db"


def seed_database(store: Store, database: Path, artifacts: Path | None = None) -> bool:
    """Give a new home the template's migrated database, so that its server starts without
    creating its schema (Prefect: 12.3 s against 4.2 s on the 2-core machine). An MLflow
    store's `Default` experiment is pointed at `artifacts`, as the MLflow UI makes it.
    Returns whether it did; a home with a database, or no template yet, is left alone."""
    source = template(store)
    if source is None or not source.exists() or database.exists():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.seeding")
    shutil.copyfile(source, partial)
    if store == "mlflow" and artifacts is not None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(partial)) as db, db:
            db.execute(
                "update experiments set artifact_location = ? where experiment_id = 0",
                (f"{artifacts.as_uri()}/0",),
            )
    partial.replace(database)
    return True


def save_template(store: Store, database: Path) -> Path | None:
    """Keep a copy of a newly made database as the template (SQLite's online backup,
    consistent while a server writes), unless one exists. Returns the template."""
    target = template(store)
    if target is None or target.exists() or not database.exists():
        return None
    import sqlite3

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(partial)) as copy,
    ):
        with copy:
            source.backup(copy)
        copy.execute("pragma journal_mode=delete")  # one file, whatever the source's mode
    partial.replace(target)
    return target


MAKE_MLFLOW_STORE = (
    "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
)


def prepare_templates() -> list[Path]:
    """Make the templates that do not exist yet, by creating an empty database of each store
    (`prefect server database upgrade`; an MLflow client's first call), as `make setup` does
    once per environment. Returns those made."""
    import tempfile

    made = []
    for store in ("prefect", "mlflow"):
        target = template(store)
        if target is None or target.exists():
            continue
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            if store == "prefect":
                command = [_program("prefect"), "server", "database", "upgrade", "--yes"]
                env = _server_env(folder)
                database = folder / "prefect.db"
            else:
                database = folder / "mlflow.db"
                command = [sys.executable, "-c", MAKE_MLFLOW_STORE, f"sqlite:///{database}"]
                env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{database}"}
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            made.append(save_template(store, database))
    return [path for path in made if path is not None]


def start_prefect(prefect_home: Path, folder: Path, port: int | None = None) -> StackProcess:
    """Start `prefect server start` on loopback with the home's SQLite database (a new home's
    from the template: `seed_database`)."""
    port = port or free_port()
    prefect_home.mkdir(parents=True, exist_ok=True)
    seed_database("prefect", prefect_home / "prefect.db")
    command = [_program("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return _spawn("prefect", command, port, folder / "prefect.log", _server_env(prefect_home))


def start_temporary_prefect(prefect_home: Path, folder: Path) -> StackProcess:
    """Start a Prefect server for one command, as Prefect's own temporary server runs (no UI,
    no background services), but at once and in the background: it starts while the command
    imports its libraries and reads its data, where Prefect would start it only at the first
    flow run and wait for it. `stop_temporary` ends it with the command.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    env = _server_env(prefect_home)
    env.update(PREFECT_UI_ENABLED="false", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    prefect_home.mkdir(parents=True, exist_ok=True)
    seed_database("prefect", prefect_home / "prefect.db")
    return _spawn("prefect", command, port, folder / "temporary-prefect.log", env, True)


def start_mlflow(
    tracking_uri: str, artifacts: Path, folder: Path, port: int | None = None
) -> StackProcess:
    """Start the MLflow UI on loopback over the home's tracking store and artifact folder."""
    port = port or free_port()
    command = [
        _program("mlflow"),
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow's server job runner (huey consumers for its GenAI jobs, which nothing here
    # submits) is off: it started seven more processes that took the CPU from the first
    # command run after `up`
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return _spawn("mlflow", command, port, folder / "mlflow.log", env)


def start_checks(
    prefect_api: str, folder: Path, port: int | None = None, mlflow: StackProcess | None = None
) -> StackProcess:
    """Start the drift-check server on loopback, its flow runs on the stack's Prefect server;
    given the MLflow UI being started, it opens the MLflow store once the UI answers."""
    port = port or free_port()
    command = [sys.executable, "-m", "agentic_mlops.check_server", "--port", str(port)]
    if mlflow:
        command += ["--store-ready-at", mlflow.url + HEALTH["mlflow"]]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONUNBUFFERED": "1"}
    return _spawn("checks", command, port, folder / "checks.log", env)


def stop(process: StackProcess, grace: float | None = 10.0) -> bool:
    """Stop a recorded process and its children; False when it had ended already. It gets
    `grace` seconds to end after SIGTERM before SIGKILL; with `grace=None` it is only told to
    stop and ends on its own (nobody waits)."""
    if not running(process):
        return False
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except OSError:
        return False
    if grace is None:
        return True
    deadline = time.monotonic() + grace
    while running(process) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(process):
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
    return True


StartState = Literal["started", "starting", "already running", "skipped"]


class Starting(BaseModel):
    """A stack `start` has set going and `finish` waits for and records."""

    home: Path
    record: StackRecord
    outcome: dict[Role, tuple[StackProcess | None, StartState]]
    started: list[StackProcess]
    new_stores: dict[Store, Path]
    """The databases made by this start, saved as templates once their servers answer."""


def start(settings) -> Starting:
    """Start what of the stack does not run yet, all at once, without waiting for it: the
    Prefect server's address is known at once, so a command points Prefect at it and imports
    its libraries while the servers start (`finish` then waits). What started is stopped
    again if starting the rest fails. The MLflow UI is skipped when tracking is not the
    home's own store on a database (an MLflow server is its own UI)."""
    home = settings.home
    folder = stack_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    record = live_record(home)
    outcome: dict[Role, tuple[StackProcess | None, StartState]] = {}
    started: list[StackProcess] = []
    databases: dict[Store, Path] = {"prefect": settings.prefect_home / "prefect.db"}
    if settings.uses_embedded_mlflow():
        databases["mlflow"] = settings.mlflow_db
    new = {store: path for store, path in databases.items() if not path.exists()}
    try:
        if record.prefect:
            outcome["prefect"] = (record.prefect, "already running")
        else:
            record.prefect = start_prefect(settings.prefect_home, folder)
            started.append(record.prefect)
            outcome["prefect"] = (record.prefect, "started")
        tracking = settings.tracking_uri()
        if record.mlflow:
            outcome["mlflow"] = (record.mlflow, "already running")
        elif tracking.startswith("http"):
            outcome["mlflow"] = (None, "skipped")
        else:
            if settings.uses_embedded_mlflow():
                seed_database("mlflow", settings.mlflow_db, settings.artifacts_dir)
            record.mlflow = start_mlflow(tracking, settings.artifacts_dir, folder)
            started.append(record.mlflow)
            # a store whose tables exist is used by commands while its UI still starts; one
            # the UI creates (or another database) is waited for: two creators at once fail
            has_tables = settings.uses_embedded_mlflow() and settings.mlflow_db.exists()
            outcome["mlflow"] = (record.mlflow, "starting" if has_tables else "started")
        if record.checks:
            outcome["checks"] = (record.checks, "already running")
        else:
            record.checks = start_checks(record.prefect.api_url, folder, mlflow=record.mlflow)
            started.append(record.checks)
            outcome["checks"] = (record.checks, "starting")
    except BaseException:
        for process in started:
            stop(process)
        raise
    return Starting(
        home=home,
        record=record,
        outcome=outcome,
        started=started,
        new_stores={s: p for s, p in new.items() if getattr(record, s) in started},
    )


def finish(
    starting: Starting, timeout: float = 180.0
) -> dict[Role, tuple[StackProcess | None, StartState]]:
    """Wait until the Prefect server `start` started answers, and record the stack. The
    MLflow UI is waited for only when it creates the home's store (no template) or serves
    another database: commands use the store itself, so a UI over a store with its tables goes
    on starting. The check server needs the Prefect server only at its first check, so it
    loads its modules while the others start, at a lower CPU priority, and goes on after this
    returns (a drift check waits for it: `wait_for_checks`); it opens the MLflow store after
    the MLflow UI answers, as two processes creating a new store's tables at once fail.

    Raises:
        StackError: a process exited or did not answer within `timeout`; what `start` started
            is stopped again.
    """
    try:
        for process in starting.started:
            if starting.outcome[process.role][1] == "started":  # the others go on starting
                wait_ready(process, timeout)
        for process in starting.started:
            ensure_running(process)
        # empty yet: the next new home starts sooner from them
        for store, path in starting.new_stores.items():
            save_template(store, path)
    except BaseException:
        for process in starting.started:
            stop(process)
        raise
    write_record(starting.home, starting.record)
    return starting.outcome


def down(home: Path) -> list[tuple[StackProcess, bool]]:
    """Stop every recorded process and remove the record; each with whether it was running.

    Safe to run twice: the second run finds no record and stops nothing.
    """
    record = read_record(home)
    stopped = [(process, stop(process)) for process in record.processes()]
    write_record(home, StackRecord())
    return stopped


def status(home: Path) -> list[tuple[StackProcess, bool]]:
    """Every recorded process with whether it runs; the record keeps only the running ones."""
    record = read_record(home)
    seen = [(process, running(process)) for process in record.processes()]
    if any(not alive for _, alive in seen):
        write_record(home, StackRecord(**{p.role: p for p, alive in seen if alive}))
    return seen


def as_json(seen: list[tuple[StackProcess, bool]]) -> str:
    return json.dumps(
        [p.model_dump() | {"status": "running" if alive else "stale"} for p, alive in seen]
    )
