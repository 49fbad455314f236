"""The serving processes on loopback: the router's readiness, `serving status|stop`, and the
hook that puts traffic back on the champion after an interrupted canary."""

import json
import os
import signal
import time

import httpx
import pytest
from typer.testing import CliRunner

from agentic_mlops.cli import app
from agentic_mlops.serving.router import Backend
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import local_rollout, promotion, rollout
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout, runs_ours
from tests.flows.test_canary_flow import serving_home, start_serving, two_versions  # noqa: F401

runner = CliRunner()


def waiting(standby, seconds: float = 120) -> dict:
    """The standby's `/healthz` answer once it listens (it imports first)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = httpx.get(f"{standby.url}/healthz", timeout=5)
            assert answer.status_code == 503
            return answer.json()
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the standby never listened"
            time.sleep(0.2)


def customer() -> dict:
    return generate_churn(1, 5).drop(columns="churn").to_dict("records")[0]


def test_the_router_is_not_ready_until_a_model_serves(home):
    backend = LocalRollout(home)
    try:
        url = backend.start_router()  # waits for /livez: the router has no model yet
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 503
        assert answer.json()["status"] == "not ready" and "no baseline" in answer.json()["reason"]
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
        assert httpx.post(f"{url}/predict", json={}, timeout=5).status_code == 503
        assert rollout.why_no_canary(home) == (
            "nothing is serving: the router runs but serves no model (no baseline)"
        )
        backend._router(
            "POST", "/admin/state", {"baseline": Backend(url="http://127.0.0.1:9").model_dump()}
        )
        ready = httpx.get(f"{url}/healthz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        assert backend.start_router() == url  # the running router is found, not started again
    finally:
        backend.shutdown()
    assert "no router is running" in rollout.why_no_canary(home)


def test_a_warm_standby_serves_the_next_version_and_another_takes_its_place(
    serving_home,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("AGENTIC_MLOPS_SERVING_STANDBY", "true")
    settings = Settings()
    backend = LocalRollout(settings)
    url = backend.start_router()
    first = backend.record().standby
    assert first is not None and runs_ours(first)

    backend.set_baseline(1)
    served = backend.record().servers["1"]
    assert served.pid == first.pid, "v1 is served by the standby started with the router"
    second = backend.record().standby
    assert second is not None and second.pid != first.pid and runs_ours(second)

    backend.deploy(2, fault_latency_ms=30)
    canary = backend.record().servers["2"]
    assert canary.pid == second.pid
    backend.set_weight(1.0)
    answer = httpx.post(f"{url}/predict", json=customer(), timeout=30).json()
    assert answer["version"] == "2" and 0 <= answer["predictions"][0] <= 1
    metrics = httpx.get(f"{canary.url}/metrics", timeout=10).text
    assert 'model_latency_seconds_bucket{le="0.025"} 0.0' in metrics, "its fault was loaded"

    roles = {(p.role, p.version) for p in backend.processes()}
    assert roles == {("router", None), ("model server", 1), ("model server", 2), ("standby", None)}
    third = backend.record().standby
    assert waiting(third)["status"] == "standby"
    refused = httpx.post(f"{third.url}/admin/load", json={"task": "binary"}, timeout=30)
    assert refused.status_code == 400 and "model_uri" in refused.json()["error"]
    backend.shutdown()
    assert not any(runs_ours(p) for p in (first, second, third, backend.record().router or first))


def test_a_standby_that_cannot_serve_is_stopped_and_a_server_started_instead(
    serving_home,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("AGENTIC_MLOPS_SERVING_STANDBY", "true")
    backend = LocalRollout(Settings())
    backend.start_router()
    standby = backend.record().standby
    os.kill(standby.pid, signal.SIGKILL)
    backend.set_baseline(1)
    served = backend.record().servers["1"]
    assert served.pid != standby.pid and runs_ours(served)
    assert "model-v1.log" in served.log, "a server of its own, started for v1"
    assert runs_ours(backend.record().standby), "and a new standby waits"

    monkeypatch.setenv("AGENTIC_MLOPS_SERVING_STANDBY", "false")
    quiet = LocalRollout(Settings())
    quiet.shutdown()
    quiet.start_router()
    assert quiet.record().standby is None, "no standby when the setting is off"


@pytest.mark.slow
def test_serving_status_lists_and_stop_stops_every_process_twice_safely(serving_home):  # noqa: F811
    backend, _ = start_serving(serving_home)
    backend.deploy(2)
    backend.set_weight(0.25)
    listed = runner.invoke(app, ["serving", "status", "--json"])
    assert listed.exit_code == 0, listed.output
    processes = {(p["role"], p["version"]): p for p in json.loads(listed.output)}
    assert set(processes) == {("router", None), ("model server", 1), ("model server", 2)} | (
        {("standby", None)} if serving_home.serving.standby else set()
    )
    assert {p["status"] for p in processes.values()} == {"alive"}
    assert processes[("model server", 1)]["variant"] == "baseline"
    assert processes[("model server", 1)]["weight"] == pytest.approx(0.75)
    assert processes[("model server", 2)]["variant"] == "canary"
    assert processes[("model server", 2)]["weight"] == pytest.approx(0.25)
    assert processes[("router", None)]["weight"] == pytest.approx(0.25)

    killed = processes[("model server", 2)]["pid"]
    os.killpg(killed, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while local_rollout.alive(killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    table = runner.invoke(app, ["serving", "status"])
    assert table.exit_code == 0 and "stale" in table.output and "alive" in table.output

    pids = [p["pid"] for p in processes.values()]
    stopped = runner.invoke(app, ["serving", "stop"])
    assert stopped.exit_code == 0, stopped.output
    standby = 1 if serving_home.serving.standby else 0
    assert stopped.output.count(": stopped") == 2 + standby and "already gone" in stopped.output
    assert not any(local_rollout.alive(pid) for pid in pids)
    assert not (serving_home.serving_dir / "router.json").exists()
    again = runner.invoke(app, ["serving", "stop"])
    assert again.exit_code == 0 and "nothing was serving" in again.output
    empty = runner.invoke(app, ["serving", "status", "--json"])
    assert json.loads(empty.output) == []


def test_a_stale_record_whose_pid_was_reused_is_not_stopped(serving_home):  # noqa: F811
    backend = LocalRollout(serving_home)
    record = backend.record()
    record.servers["7"] = local_rollout.ServedProcess(pid=os.getpid(), port=9, version=7, log="x")
    backend._save(record)
    assert not runs_ours(record.servers["7"])
    assert [p.status for p in rollout.serving_status(serving_home)] == ["stale"]
    rollout.stop_serving(serving_home)  # this test's own pid: still running afterwards
    assert rollout.serving_status(serving_home) == []


@pytest.mark.slow
def test_putting_traffic_back_on_the_champion_is_safe_with_nothing_serving_and_twice(
    serving_home,  # noqa: F811
):
    assert promotion.restore_champion_traffic(serving_home) == "nothing was serving a canary"
    backend, url = start_serving(serving_home)
    backend.deploy(2)
    backend.set_weight(0.5)
    challenger = backend.record().servers["2"].pid
    done = promotion.restore_champion_traffic(serving_home)
    assert "canary v2 at 50% removed" in done and "all traffic on v1" in done
    state = backend.router_state()
    assert state.baseline.version == 1 and state.canary is None and state.weight == 0
    assert not local_rollout.alive(challenger) and set(backend.record().servers) == {"1"}
    assert promotion.restore_champion_traffic(serving_home) == "all traffic on v1"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
