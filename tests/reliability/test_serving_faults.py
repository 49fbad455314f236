"""The router, a model server or the metrics source failing during a canary rollout, and the
flow's own process killed mid-promotion.

tests/flows/test_canary_flow.py covers MLflow unreachable during a promotion, a failed traffic
switch, canaries with errors or slower answers, and a promotion journal repaired by calling
`reconcile`. Here the serving processes themselves fail while a rollout runs under simulated
traffic: killed (down), or stopped with SIGSTOP (hung: connections are accepted and nothing
answers), once the canary has traffic or right after the champion alias moved (promotion).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.promotion import journal_path, read_journal
from agentic_mlops.tasks.rollout_protocol import ServingError
from agentic_mlops.tasks.scoring import load_scoring_model
from agentic_mlops.tasks.traffic import CustomerTraffic
from tests.conftest import running_prefect_server, subprocess_environment
from tests.flows.test_canary_flow import customer_traffic, rollout, start_serving
from tests.reliability.test_faults import closed_port


def pid_of(settings, process: str) -> int:
    """The pid of `router`, or of the model server of a version ("1", "2")."""
    record = LocalRollout(settings).record()
    return record.router.pid if process == "router" else record.servers[process].pid


def kill(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)


def resume(pid: int) -> None:
    with contextlib.suppress(OSError):  # stopped for good meanwhile
        os.killpg(pid, signal.SIGCONT)


def hang(pid: int, seconds: float) -> None:
    """Stop a process for `seconds`: it keeps its port, accepts connections, answers nothing."""
    os.killpg(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, resume, args=(pid,))
    timer.daemon = True
    timer.start()


@pytest.fixture
def resumed(serving_home):
    """Every serving process running again after the test, so that it can be stopped."""
    yield
    record = LocalRollout(serving_home).record()
    for served in [*record.servers.values(), *([record.router] if record.router else [])]:
        resume(served.pid)


def once_the_canary_has_traffic(settings, fault) -> threading.Event:
    """Run `fault` from a thread as soon as the router sends the canary a share of traffic;
    the event is set once it ran."""
    backend, fired = LocalRollout(settings), threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                state = backend.router_state()
            except ServingError:
                state = None
            if state is not None and state.canary is not None and state.weight > 0:
                fault()
                fired.set()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return fired


@pytest.fixture
def at_promotion(monkeypatch):
    """Arm a fault that runs once, inside the promotion, after the champion alias moved and
    before the traffic switches; returns the event set once it ran."""

    def arm(fault) -> threading.Event:
        move, fired = registry.promote_champion, threading.Event()

        def move_then_fail(*args, **kwargs):
            moved = move(*args, **kwargs)
            if not fired.is_set():
                fired.set()
                fault()
            return moved

        monkeypatch.setattr(registry, "promote_champion", move_then_fail)
        return fired

    return arm


def served_by_the_router(url: str, requests: int = 100) -> CustomerTraffic:
    """`requests` customers calling the router one after another, after the rollout."""
    customers = customer_traffic(url, limit=requests, seconds=60)
    customers.run()
    return customers


def assert_champion_served(settings, url: str, version: int) -> None:
    """The champion alias, and nothing else, is what the router serves, and it answers."""
    aliases = registry.model_aliases(settings.model_name, settings)
    assert aliases[registry.CHAMPION] == version, aliases
    state = LocalRollout(settings).router_state()
    assert state.baseline.version == version and state.canary is None and state.weight == 0
    after = served_by_the_router(url)
    assert after.counts.failed == 0 and after.counts.variants == {"baseline": after.counts.sent}


def assert_named_failure(state, name: str) -> None:
    assert state.is_failed() and state.name == name, (state.name, state.message)
    assert state.message and "\n" not in state.message


@pytest.mark.slow
def test_prometheus_down_as_the_metrics_source_fails_closed(serving_home, monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_PROMETHEUS_URL", f"http://127.0.0.1:{closed_port()}")
    backend, url = start_serving(serving_home)
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert result.outcome == "rolled_back" and "prometheus unavailable" in result.reason
    assert_champion_served(serving_home, url, 1)
    assert "2" not in backend.status().servers
    assert traffic.counts.failed == 0


@pytest.mark.slow
def test_a_canary_server_killed_at_a_step_is_rolled_back_unseen_by_users(serving_home):
    backend, url = start_serving(serving_home)
    fired = once_the_canary_has_traffic(serving_home, lambda: kill(pid_of(serving_home, "2")))
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert fired.is_set()
    assert result.outcome == "rolled_back" and result.steps[-1].sequential_outcome == "rollback"
    assert_champion_served(serving_home, url, 1)
    assert traffic.counts.failed == 0 and "2" not in backend.status().servers


@pytest.mark.slow
def test_a_hung_canary_server_is_rolled_back_and_its_users_answered_by_the_baseline(
    serving_home, resumed
):
    """The router waits 2 s for the canary, then the baseline answers: four customers at once,
    so that enough canary failures add up for the judge while each waits on one."""
    backend, url = start_serving(serving_home)
    fired = once_the_canary_has_traffic(serving_home, lambda: hang(pid_of(serving_home, "2"), 300))
    customers = [customer_traffic(url, rate=50) for _ in range(4)]
    with contextlib.ExitStack() as stack:
        for traffic in customers:
            stack.enter_context(traffic)
        result = rollout(min_samples=40).result()
    assert fired.is_set()
    assert result.outcome == "rolled_back", result
    judged = ledger.get_decision(result.steps[-1].ledger_id, serving_home).evidence["judge"]
    error = next(m for m in judged["metrics"] if m["name"] == "error")
    assert error["classification"] == "high" or result.steps[-1].sequential_outcome == "rollback"
    assert_champion_served(serving_home, url, 1)
    assert sum(t.counts.failed for t in customers) == 0 and "2" not in backend.status().servers


@pytest.mark.slow
def test_a_baseline_server_killed_at_a_step_is_started_again_by_the_rollback(serving_home):
    _, url = start_serving(serving_home)
    killed = pid_of(serving_home, "1")
    fired = once_the_canary_has_traffic(serving_home, lambda: kill(killed))
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert fired.is_set()
    assert result.outcome == "rolled_back", result
    assert pid_of(serving_home, "1") != killed
    assert_champion_served(serving_home, url, 1)
    # the router fails over from the canary only: the baseline's share failed until the rollback
    assert traffic.counts.failed > 0 and traffic.counts.variants.get("canary", 0) > 0


@pytest.mark.slow
def test_the_router_killed_at_a_step_fails_the_run_by_name(serving_home):
    backend, _ = start_serving(serving_home)
    fired = once_the_canary_has_traffic(serving_home, lambda: kill(pid_of(serving_home, "router")))
    state = rollout()
    assert fired.is_set()
    assert_named_failure(state, "ServingUnavailable")
    assert "the router did not answer" in state.message and "champion v1 unchanged" in state.message
    # restarted (as `agentic-mlops serve` does), the router reads its state file: the champion
    # as baseline, and the canary at its last share until a rollback or the next rollout
    url = backend.start_router()
    assert backend.router_state().baseline.version == 1
    backend.rollback()
    assert_champion_served(serving_home, url, 1)


@pytest.mark.slow
def test_the_router_killed_at_promotion_undoes_the_alias_move(serving_home, at_promotion):
    backend, url = start_serving(serving_home)
    fired = at_promotion(lambda: kill(pid_of(serving_home, "router")))
    with customer_traffic(url) as traffic:
        state = rollout()
    assert fired.is_set()
    assert_named_failure(state, "PromotionFailed")
    assert "the router did not answer" in state.message
    assert registry.alias_version("churn", registry.CHAMPION, serving_home) == 1
    assert not journal_path(serving_home).exists()
    url = backend.start_router()
    assert backend.router_state().baseline.version == 1
    backend.rollback()
    assert_champion_served(serving_home, url, 1)
    assert traffic.counts.variants.get("canary", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("when", ["step", "promotion"])
def test_a_router_hung_for_three_seconds_delays_requests_but_loses_none(
    serving_home, resumed, at_promotion, when
):
    _, url = start_serving(serving_home)

    def fault() -> None:
        hang(pid_of(serving_home, "router"), 3)

    if when == "step":
        fired = once_the_canary_has_traffic(serving_home, fault)
    else:
        fired = at_promotion(fault)
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert fired.is_set()
    assert result.outcome == "promoted", result
    assert_champion_served(serving_home, url, 2)
    assert traffic.counts.failed == 0


@pytest.mark.slow
def test_a_canary_server_killed_at_promotion_is_promoted_on_a_fresh_server(
    serving_home, at_promotion
):
    _, url = start_serving(serving_home)
    killed = []

    def fault() -> None:
        killed.append(pid_of(serving_home, "2"))
        kill(killed[0])

    fired = at_promotion(fault)
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert fired.is_set() and pid_of(serving_home, "2") != killed[0]
    assert result.outcome == "promoted" and result.champion == 2, result
    assert_champion_served(serving_home, url, 2)
    assert traffic.counts.failed == 0


def champion_of(settings) -> int | None:
    return registry.alias_version(settings.model_name, registry.CHAMPION, settings)


def read_flow_run(api: str, flow_run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()


def confidently_scored(settings) -> pd.DataFrame:
    """Customers whom both v1 and v2 score nearly right.

    Each request's Brier score is then small and nearly constant, so the sequential test shows
    the canary non-inferior after a few hundred requests per variant; on customers drawn at
    random it needed thousands (minutes of traffic, more on a loaded machine), and now and then
    did not decide within its steps at all. Rows chosen by v1's scores alone favour v1, and v2
    (trained on other rows) was then shown worse.
    """
    rows = generate_churn(5_000, 77)
    features, labels = rows.drop(columns="churn"), rows["churn"].to_numpy()
    near = np.ones(len(rows), dtype=bool)
    for version in (1, 2):
        model = load_scoring_model(f"models:/churn/{version}", settings.tracking_uri())
        near &= np.abs(model.score(features, "binary") - labels) < 0.2
    return rows[near].reset_index(drop=True)


@pytest.mark.slow
def test_the_flow_killed_mid_promotion_is_repaired_and_marked_crashed_by_the_next_run(
    serving_home, tmp_path
):
    """A real Prefect server, whose repossessor frees the killed run's promotion lock once its
    one-minute lease runs out; the test harness's server runs no services.

    Nobody answers an approval form here (approval mode `none`: a step the sequential test
    leaves open rolls back, where a person would be waited on for an hour). The first run's
    step ends as soon as the test decides (300 s only bounds it), so that it reaches the
    promotion, and the customers are ones the models score nearly right, so that it decides
    within seconds; the second run may promote or roll back.
    """
    backend, url = start_serving(serving_home)
    command = [
        str(Path(sys.executable).parent / "agentic-mlops"),
        "canary",
        "--version",
        "2",
        "--steps",
        "50,100",
        "--json",
    ]
    journal = journal_path(serving_home)
    server = tmp_path / "prefect"
    with (
        running_prefect_server(server, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1") as api,
        CustomerTraffic(
            url,
            confidently_scored(serving_home),
            rate=150.0,
            label_delay_seconds=0.0,
            limit=100_000,
            seconds=900,
        ) as traffic,
        (tmp_path / "first.log").open("wb") as first_log,
    ):
        environment = subprocess_environment(
            PREFECT_API_URL=api,
            AGENTIC_MLOPS_HOME=str(serving_home.home),
            AGENTIC_MLOPS_APPROVAL_MODE="none",
            AGENTIC_MLOPS_CANARY_POLL_SECONDS="0.5",
            AGENTIC_MLOPS_CANARY_MIN_SAMPLES="150",
            AGENTIC_MLOPS_AGENT_TRACING="false",
        )
        first = subprocess.Popen(
            [*command, "--step-seconds", "300"],
            env=environment,
            stdout=first_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 420
        while not (journal.exists() and champion_of(serving_home) == 2):
            if first.poll() is not None or time.monotonic() > deadline:
                output = (tmp_path / "first.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"the first run never moved the alias:\n{output}")
            time.sleep(0.01)
        kill(first.pid)  # the alias moved; the traffic switch, with its 1 s drain, is under way
        first.wait()
        interrupted = read_journal(serving_home)
        assert interrupted is not None and interrupted.version == 2
        assert champion_of(serving_home) == 2
        # nothing tells Prefect that a process died: its run stays Running
        assert read_flow_run(api, interrupted.flow_run_id)["state_type"] == "RUNNING"

        second = subprocess.run(
            [*command, "--step-seconds", "40"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert second.returncode == 0, second.stderr[-3000:]
        result = json.loads(second.stdout[second.stdout.index("{") :])
        killed_run = read_flow_run(api, interrupted.flow_run_id)
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()

    assert "an interrupted promotion of v2 was undone" in result["repaired"]
    assert killed_run["state_type"] == "CRASHED"
    assert "killed while promoting v2" in killed_run["state"]["message"]
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "CRASHED"]
    assert not journal.exists()
    champion = champion_of(serving_home)
    assert champion == result["champion"]
    assert (result["outcome"], champion) in {("promoted", 2), ("rolled_back", 1)}
    assert_champion_served(serving_home, url, champion)
    assert traffic.counts.failed == 0
    assert set(backend.status().servers) == {str(champion)}
