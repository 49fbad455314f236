"""The local stack as a user runs it: `up`, a drift check that runs its flow on the stack's
Prefect server, `down` (twice); and records whose process has ended. Real processes only."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

from agentic_mlops import stack
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.batches import write_table
from agentic_mlops.tasks.churn import generate_churn

PROGRAM = str(Path(sys.executable).parent / "agentic-mlops")


def run(home: Path, *args: str, timeout: float = 300, **settings) -> subprocess.CompletedProcess:
    """The command line in a new process whose environment names only `home` (and the
    settings given)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "AGENTIC_MLOPS_"))
    }
    env["AGENTIC_MLOPS_HOME"] = str(home)
    env.update({f"AGENTIC_MLOPS_{k.upper()}": v for k, v in settings.items()})
    return subprocess.run(
        [PROGRAM, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


async def flow_run_name(api_url: str, flow_run_id: str) -> tuple[str, str]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        flow_run = await client.read_flow_run(UUID(flow_run_id))
        flow = await client.read_flow(flow_run.flow_id)
    return flow.name, flow_run.state.type.value


def test_up_serves_every_command_until_down(tmp_path):
    home = tmp_path / "home"
    reference = write_table(generate_churn(1_500, 1), tmp_path / "ref.parquet")
    current = write_table(generate_churn(1_500, 2, "covariate"), tmp_path / "cur.parquet")
    try:
        started = run(home, "up")
        assert started.returncode == 0, started.stderr
        assert "a drift check waits for it" in started.stdout, "the check server goes on loading"
        record = stack.live_record(home)
        assert record.prefect and record.mlflow and record.checks
        check = ["drift-check", "--reference", str(reference), "--current", str(current)]
        served = run(home, *check, "--no-act", "--json")  # at once: it waits for the checks
        assert served.returncode == 0, served.stderr
        assert f"its check server at {record.checks.url} runs this check" in served.stderr
        for process in record.processes():
            assert stack.answers(process.url + stack.HEALTH[process.role])
        again = run(home, "up")
        assert again.stdout.count("already running") == 3
        assert stack.read_record(home).prefect.pid == record.prefect.pid

        here = run(home, *check, "--no-act", "--json", drift_report_mode="off")
        assert here.returncode == 0, here.stderr
        assert "Checking in this process instead: the command's settings differ" in here.stderr
        assert f"Using the local stack: Prefect at {record.prefect.api_url}" in here.stderr
        assert json.loads(served.stdout)["columns"] == json.loads(here.stdout)["columns"]
        entries = ledger.list_decisions(settings=Settings(home=home))
        assert len(entries) == 2
        for entry in entries:
            name, state = asyncio.run(flow_run_name(record.prefect.api_url, entry.flow_run_id))
            assert (name, state) == ("drift-check", "COMPLETED")

        status = json.loads(run(home, "status", "--json").stdout)
        assert {p["role"]: p["status"] for p in status} == {
            "prefect": "running",
            "mlflow": "running",
            "checks": "running",
        }
    finally:
        stopped = run(home, "down")
    assert stopped.returncode == 0 and stopped.stdout.count(": stopped") == 3
    assert not any(stack.running(p) for p in record.processes())
    assert not stack.record_path(home).exists()
    twice = run(home, "down")
    assert twice.returncode == 0 and "not running" in twice.stdout


@pytest.mark.slow
def test_without_the_stack_a_command_says_it_starts_a_temporary_server(tmp_path):
    home = tmp_path / "home"
    current = write_table(generate_churn(500, 2), tmp_path / "cur.parquet")
    checked = run(home, "drift-check", "--current", str(current), "--json")
    assert checked.returncode == 2 and "No local stack" in checked.stderr
    assert "no champion" in checked.stderr

    reference = write_table(generate_churn(1_500, 1), tmp_path / "ref.parquet")
    check = ["drift-check", "--reference", str(reference), "--current", str(current)]
    checked = run(home, *check, "--no-act", "--json", drift_report_mode="off")
    assert checked.returncode == 0, checked.stderr
    assert "No local stack: starting a temporary Prefect server" in checked.stderr
    [entry] = ledger.list_decisions(settings=Settings(home=home))
    assert entry.flow_run_id and json.loads(checked.stdout)["decision"]["action"] == entry.action
    assert (home / "stack" / "temporary-prefect.log").exists()
    assert not stack.live_record(home).processes(), "a temporary server is not the stack"


def test_a_temporary_server_ends_with_the_command_that_started_it(tmp_path):
    """However the command ends (here: killed), its temporary Prefect server goes with it."""
    starter = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from agentic_mlops import stack\n"
        "home = Path(sys.argv[1])\n"
        "server = stack.start_temporary_prefect(home / 'prefect', home / 'stack')\n"
        "stack.wait_ready(server, 120)\n"
        "print(server.model_dump_json(), flush=True)\n"
        "time.sleep(600)\n"
    )
    command = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        server = stack.StackProcess.model_validate_json(command.stdout.readline())
        assert stack.answers(server.url + stack.HEALTH["prefect"])
    finally:
        command.kill()
        command.wait()
    deadline = time.monotonic() + 30
    while stack.running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stack.running(server)


@pytest.fixture
def ended_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def record(home: Path, pid: int) -> None:
    stack.write_record(
        home,
        stack.StackRecord(
            prefect=stack.StackProcess(
                role="prefect",
                pid=pid,
                port=1,
                url="http://127.0.0.1:1",
                log=str(home / "stack" / "prefect.log"),
                started_at="2026-11-29T00:00:00+00:00",
            )
        ),
    )


def test_a_stale_record_is_ignored_reported_and_removed(tmp_path, ended_pid):
    home = tmp_path / "home"
    record(home, ended_pid)
    assert stack.prefect_api_url(home) is None
    status = run(home, "status")
    assert status.returncode == 0 and "not running (stale record removed)" in status.stdout
    assert not stack.record_path(home).exists()
    record(home, ended_pid)
    stopped = run(home, "down")
    assert "already gone (stale record removed)" in stopped.stdout
    assert not stack.record_path(home).exists()


def test_a_pid_taken_by_another_program_is_not_our_server(tmp_path):
    home = tmp_path / "home"
    other = subprocess.Popen(["sleep", "30"])
    try:
        record(home, other.pid)
        assert stack.prefect_api_url(home) is None
        assert run(home, "down").returncode == 0
        assert other.poll() is None, "down must not stop a process that is not ours"
    finally:
        other.kill()
        other.wait()


def test_a_process_read_as_it_starts_shows_its_command_line():
    # the kernel shows a process's new name before its command line while it runs exec:
    # reading at that moment once took a stranger's program for our server
    for _ in range(20):
        started = subprocess.Popen(["sleep", "30"])
        try:
            assert stack.command_line(started.pid) == b"sleep\x0030\x00"
        finally:
            started.kill()
            started.wait()


@pytest.mark.slow
def test_the_demo_starts_the_stack_it_runs_on_and_leaves_it_up(tmp_path):
    home = tmp_path / "home"
    try:
        shown = run(home, "demo", "--no-bad-model", timeout=900)
        assert shown.returncode == 0, shown.stderr[-3000:]
        record = stack.live_record(home)
        assert record.prefect and record.mlflow and record.checks, "left up"
        assert f"prefect: started at {record.prefect.url}" in shown.stdout
        assert f"Using the local stack: Prefect at {record.prefect.api_url}" in shown.stderr
        entries = ledger.list_decisions(settings=Settings(home=home))
        assert {e.action for e in entries} >= {"retrain"}
        for entry in entries:  # the flows ran on the stack's server, whose UI shows them
            _, state = asyncio.run(flow_run_name(record.prefect.api_url, entry.flow_run_id))
            assert state == "COMPLETED"
    finally:
        run(home, "down")


@pytest.mark.slow
def test_a_new_home_starts_its_servers_from_the_migrated_templates(tmp_path, monkeypatch):
    import sqlite3
    from contextlib import closing

    monkeypatch.setenv(stack.TEMPLATES_VARIABLE, str(tmp_path / "templates"))
    made = stack.prepare_templates()
    assert made == [stack.template("prefect"), stack.template("mlflow")]
    revisions = {}
    for store, path in zip(("prefect", "mlflow"), made, strict=True):
        with closing(sqlite3.connect(path)) as db, db:
            (revisions[store],) = db.execute("select version_num from alembic_version").fetchone()
            db.execute("create table made_by_the_template (x)")
        assert not Path(f"{path}-wal").exists(), "a template is one file"
    assert stack.prepare_templates() == [], "made once"

    home = tmp_path / "home"
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(home))
    settings = Settings()
    assert stack.seed_database("prefect", settings.prefect_home / "prefect.db")
    assert not stack.seed_database("prefect", settings.prefect_home / "prefect.db"), (
        "a home's own database stays"
    )
    try:
        starting = stack.start(settings)  # returns at once: a command imports meanwhile
        assert not stack.read_record(home).processes(), "recorded only once it answers"
        started = stack.finish(starting, timeout=180)
        assert stack.prefect_api_url(home) == starting.record.prefect.api_url
        assert {role: how for role, (_, how) in started.items()} == dict.fromkeys(
            ("mlflow", "checks"), "starting"
        ) | {"prefect": "started"}
        assert stack.wait_for_checks(home)  # which waits for the MLflow UI before its store
    finally:
        stack.down(home)
    for store, database in (
        ("prefect", settings.prefect_home / "prefect.db"),
        ("mlflow", settings.mlflow_db),
    ):
        with closing(sqlite3.connect(database)) as db:
            assert db.execute("select version_num from alembic_version").fetchone() == (
                revisions[store],
            )
            assert db.execute("select count(*) from made_by_the_template").fetchone() == (0,)
    with closing(sqlite3.connect(settings.mlflow_db)) as db:
        location = db.execute("select artifact_location from experiments where experiment_id = 0")
        assert location.fetchone() == (f"{settings.artifacts_dir.as_uri()}/0",)

    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://x/y")
    assert stack.template("prefect") is None, "a database the user names is never seeded"


@pytest.mark.slow
def test_the_check_server_opens_a_new_mlflow_store_only_after_the_ui_answers(tmp_path):
    """Two processes creating a new SQLite store's tables at once fail (MLflow's migrations
    race), so `up` has the check server wait for the MLflow UI, which creates them."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    home = tmp_path / "home"
    settings = Settings(home=home)
    ui_port, checks_port = stack.free_port(), stack.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AGENTIC_"))}
    env["AGENTIC_MLOPS_HOME"] = str(home)
    command = [sys.executable, "-m", "agentic_mlops.check_server", "--port", str(checks_port)]
    command += ["--store-ready-at", f"http://127.0.0.1:{ui_port}/health"]
    checks = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    health = f"http://127.0.0.1:{checks_port}/health"
    ui = None
    try:
        time.sleep(15)  # long enough to have imported everything and be waiting
        assert checks.poll() is None, checks.stderr.read()
        assert not settings.mlflow_db.exists() and not stack.answers(health)

        class Health(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()

        ui = HTTPServer(("127.0.0.1", ui_port), Health)
        Thread(target=ui.serve_forever, daemon=True).start()
        deadline = time.monotonic() + 60
        while not stack.answers(health) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert stack.answers(health) and settings.mlflow_db.exists()
    finally:
        checks.kill()
        checks.wait()
        if ui:
            ui.shutdown()
