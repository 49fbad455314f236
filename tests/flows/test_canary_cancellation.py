"""A canary cancelled mid-rollout as a user does it (or whose process dies), and a retrain
with nothing serving.

The interrupted canary is the `canary-rollout/canary` deployment of prefect.yaml, run by a
real process worker: `prefect flow-run cancel` makes the worker stop the run's process and
then run the flow's `on_cancellation` hook (a process killed outright: `on_crashed`), which
must leave every user on the champion and no challenger server behind. (A flow called in
this process is not interrupted by a cancel: only a worker or runner delivers it.)
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import DeploymentSort
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from agentic_mlops.flows.retrain import retrain
from agentic_mlops.tasks import ledger, registry, rollout, rollout_protocol
from agentic_mlops.tasks.local_rollout import LocalRollout, alive
from tests.conftest import artifacts_by_key, triage_record
from tests.flows.test_canary_flow import (  # noqa: F401
    customer_traffic,
    serving_home,
    start_serving,
    two_versions,
)

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(*args: str, env: dict) -> str:
    done = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for(condition, seconds: float, what: str, pause: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(pause)
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


def canary_has_traffic(backend: LocalRollout) -> bool:
    try:
        state = backend.router_state()
    except rollout_protocol.ServingError:
        return False
    return state.canary is not None and state.canary.version == 2 and state.weight > 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cancelled", "crashed"])
def test_a_canary_interrupted_mid_rollout_leaves_all_traffic_on_the_champion(
    serving_home,  # noqa: F811
    tmp_path,
    how,
):
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "AGENTIC_MLOPS_HOME": str(serving_home.home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_HOME", None)
    backend, url = start_serving(serving_home)
    worker, worker_log = None, tmp_path / "worker.log"
    try:
        prefect_cli(
            "work-pool", "create", "local-process", "--type", "process", "--overwrite", env=env
        )
        prefect_cli("--no-prompt", "deploy", "--name", "canary", env=env)
        with customer_traffic(url, rate=60, limit=50_000, seconds=600) as traffic:
            run = run_deployment(
                "canary-rollout/canary",
                parameters={
                    "version": 2,
                    "steps": [5, 50, 100],
                    "step_seconds": 600,
                    "min_samples": 5_000,
                },
                timeout=0,
            )
            with worker_log.open("wb") as log:
                worker = subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", "local-process", "--limit", "1"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_for(lambda: canary_has_traffic(backend), 300, "the canary got no traffic")
            challenger = backend.record().servers["2"].pid
            with get_client(sync_client=True) as client:
                running = client.read_flow_run(run.id)
            assert running.state.is_running()
            if how == "cancelled":  # as a user does
                prefect_cli("flow-run", "cancel", str(run.id), env=env)
            else:  # the run's process dies (its own process group, as the worker starts it)
                os.killpg(int(running.infrastructure_pid.rsplit(":", 1)[-1]), signal.SIGKILL)

            def final_state():
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(run.id).state
                return state if state is not None and state.is_final() else None

            state = wait_for(final_state, 180, f"the {how} run did not end")
            wait_for(  # a cancel's hook runs before the state is set, a crash's after it;
                # the worker first imports the flow to find its hooks (half a minute here)
                lambda: "ledger entries told" in worker_log.read_text(errors="replace"),
                150,
                "the hook did not finish",
            )
            time.sleep(1.0)  # requests sent after the hook are served by the champion alone
            sent_after = traffic.counts.variants.get("canary", 0)
            time.sleep(2.0)
        log_text = worker_log.read_text(errors="replace")
        assert state.is_cancelled() if how == "cancelled" else state.is_crashed(), state
        assert f"the run was {how}: canary v2 at 5% removed; all traffic on v1" in log_text
        assert "ledger entries told: none (no decision yet)" in log_text
        router = backend.router_state()
        assert router.baseline.version == 1 and router.canary is None and router.weight == 0
        assert traffic.counts.variants.get("canary", 0) == sent_after
        assert traffic.counts.failed == 0
        assert not alive(challenger)
        assert set(backend.record().servers) == {"1"}
        assert registry.model_aliases("churn", serving_home) == {"champion": 1, "challenger": 2}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments(sort=DeploymentSort.NAME_ASC, limit=200):
                client.delete_deployment(deployment.id)
            # the killed run's lease on the promotion lock would hold later tests up
            with contextlib.suppress(Exception):  # never created, or already gone
                client.delete_global_concurrency_limit_by_name("agentic-mlops-promote-churn")


@pytest.mark.slow
def test_a_retrain_with_nothing_serving_registers_the_challenger_and_starts_no_canary(
    serving_home,  # noqa: F811
):
    triage = ledger.record_decision(
        ledger.LedgerEntry(
            id="triage-with-nothing-serving",
            created_at=ledger.now(),
            decision_point="drift_triage",
            model_name="churn",
            model_version=1,
            inputs_digest="x",
            action="retrain",
            evidence=triage_record(used=["column_drift"], drifted_features=[]),
            agent_model="policy",
        ),
        serving_home,
    )
    result = retrain(
        generate_rows=3_000,
        seed=2,
        scenario="concept",
        max_trials=2,
        time_budget_seconds=60,
        triage_ledger_id=triage.id,
        hand_over="subflow",
    )
    assert result.comparison.beats_champion
    assert registry.model_aliases("churn", serving_home) == {"champion": 1, "challenger": 3}
    assert result.hand_over == (
        "none: no canary ran, nothing is serving: no router is running (start one with "
        "`agentic-mlops serve`); v3 is the challenger"
    )
    assert rollout.serving_status(serving_home) == []
    artifact = artifacts_by_key("churn-retrain-search")[0]["data"]
    assert f"Hand-over: {result.hand_over}" in artifact
    assert ledger.get_decision(triage.id, serving_home).outcome["hand_over"] == result.hand_over
    assert ledger.get_decision(result.ledger_id, serving_home).outcome["hand_over"] == (
        result.hand_over
    )
    assert not ledger.list_decisions(
        "churn", decision_point="canary_promotion", settings=serving_home
    )


@pytest.mark.slow
def test_a_lifecycle_retrain_with_nothing_serving_starts_no_canary(serving_home):  # noqa: F811
    from agentic_mlops.flows.lifecycle import lifecycle
    from tests.flows.test_lifecycle_flow import window

    result = lifecycle(
        batch_path=window(serving_home, "gradual", 32),
        retrain_max_trials=2,
        retrain_time_budget_seconds=60,
        require_improvement=False,
    )
    assert result.decision == "retrain" and result.retrained_version == 3
    assert result.canary is None
    assert result.aliases == {"champion": 1, "challenger": 3}
    assert any(s.startswith("no canary: nothing is serving") for s in result.steps), result.steps
    assert ledger.get_decision(result.ledger_id, serving_home).outcome["canary"] == "not started"
    assert rollout.serving_status(serving_home) == []
