"""Canary rollouts end to end on loopback: real model servers, the router, simulated traffic."""

import shutil
import threading
import time

import pytest

from agentic_mlops.flows.canary import canary_rollout
from agentic_mlops.flows.train import train
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, promotion, registry
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.traffic import CustomerTraffic
from agentic_mlops.tasks.training import Hyperparameters
from tests.conftest import champion_recipe, trained_home


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, mlflow_template, trained_champion):
    """A home with champion v1 (`champion_recipe`) and a challenger v2 trained the same way on
    four times the rows, trained once per module. v2's Brier score on the customers' rows is
    0.142 against v1's 0.150: the sequential test shows it non-inferior after a few hundred
    canary requests. Two equally good versions needed from 350 to 4,300 of them (10 to 65 s) as
    the estimate of their gap wandered around 0, and on a loaded machine the step could end
    first."""
    better = dict(champion_recipe(), generate_rows=12_000, seed=2)
    return trained_home(tmp_path_factory, mlflow_template, "canary", better, start=trained_champion)


@pytest.fixture
def serving_home(two_versions, tmp_path, monkeypatch):
    root = tmp_path / "home"
    shutil.copytree(two_versions, root, ignore=shutil.ignore_patterns("serving"))
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(root))
    monkeypatch.setenv("AGENTIC_MLOPS_CANARY_POLL_SECONDS", "0.5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    backend = LocalRollout(settings)
    yield settings
    backend.shutdown()


def customer_traffic(
    url: str, rate: float = 150.0, limit: int = 20_000, seconds: float = 120
) -> CustomerTraffic:
    """Customers calling the router, each label sent back at once: bounded in count and time,
    stopped by the test."""
    return CustomerTraffic(
        url,
        generate_churn(5_000, 77),
        rate=rate,
        label_delay_seconds=0.0,
        limit=limit,
        seconds=seconds,
    )


def start_serving(settings, canary_faults=None):
    backend = LocalRollout(settings)
    url = backend.start_router()
    backend.set_baseline(1)
    if canary_faults:
        backend.serve_version(2, **canary_faults)
    return backend, url


def rollout(**extra):
    params = dict(
        version=2, steps=[50, 100], step_seconds=40, min_samples=150, approval_timeout_seconds=30
    )
    return canary_rollout(**{**params, **extra}, return_state=True)


UNTIL_DECIDED = dict(step_seconds=300)
"""A step ends as soon as the sequential test decides; 300 s only bounds it. With the usual 40 s
the step could end first on a loaded machine, too few requests sent to show non-inferiority,
and a good challenger was held, sent to a person and rolled back."""


def test_a_good_challenger_is_promoted_and_traffic_follows_the_alias(serving_home):
    backend, url = start_serving(serving_home)
    with customer_traffic(url, rate=300.0, limit=100_000, seconds=600) as traffic:
        state = rollout(**UNTIL_DECIDED)
    result = state.result()
    assert result.outcome == "promoted", result
    assert registry.model_aliases("churn", serving_home)["champion"] == 2
    router = backend.router_state()
    assert router.baseline.version == 2 and router.canary is None and router.weight == 0
    assert traffic.counts.failed == 0 and traffic.counts.variants.get("canary", 0) > 0
    decisions = ledger.list_decisions(
        "churn", decision_point="canary_promotion", settings=serving_home
    )
    assert decisions and {d.action for d in decisions} <= {"increase_traffic", "promote", "hold"}


def test_a_canary_with_errors_is_rolled_back_without_users_seeing_them(serving_home):
    backend, url = start_serving(serving_home, {"fault_error_rate": 0.25})
    with customer_traffic(url) as traffic:
        state = rollout()
    result = state.result()
    assert result.outcome == "rolled_back", result
    assert registry.model_aliases("churn", serving_home)["champion"] == 1
    router = backend.router_state()
    assert router.baseline.version == 1 and router.canary is None
    assert traffic.counts.failed == 0
    assert "2" not in backend.status().servers


@pytest.mark.slow
def test_a_slightly_slower_canary_waits_for_a_person_who_approves_it(serving_home):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.flow_runs import resume_flow_run

    backend, url = start_serving(serving_home, {"fault_latency_ms": 12})
    answered = {}

    def answer_the_form():
        deadline = time.monotonic() + 450
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and not answered:
                for run in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20):
                    if run.state and run.state.is_paused() and run.name not in answered:
                        resume_flow_run(
                            run.id, run_input={"decision": "approve", "comment": "latency is fine"}
                        )
                        answered[run.name] = run.id
                time.sleep(0.5)

    person = threading.Thread(target=answer_the_form, daemon=True)
    person.start()
    with customer_traffic(url, limit=100_000, seconds=600) as traffic:
        state = rollout(steps=[50, 100], **UNTIL_DECIDED)
    person.join(timeout=5)
    result = state.result()
    assert answered, "the flow never paused for approval"
    assert result.steps[0].judge_verdict == "marginal" and result.steps[0].action == "promote"
    assert result.outcome == "promoted" and traffic.counts.failed == 0
    entry = ledger.get_decision(result.steps[0].ledger_id, serving_home)
    assert entry.action == "ask_human"
    assert entry.outcome["human"] == "approve"
    person = ledger.get_decision(entry.outcome["human_decision_id"], serving_home)
    assert (person.agent_model, person.action, person.rationale) == (
        "person",
        "approve",
        "latency is fine",
    )


@pytest.mark.slow
def test_mlflow_unreachable_during_promotion_changes_nothing(serving_home, monkeypatch):
    from agentic_mlops.tasks.promotion import promote

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    backend, _ = start_serving(serving_home)
    backend.deploy(2)
    backend.set_weight(0.5)
    unreachable = serving_home.model_copy(
        update={"mlflow_tracking_uri": "http://127.0.0.1:9", "mlflow_retries": 0}
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises for a dead server
        promote("churn", 2, 1, unreachable)
    assert registry.alias_version("churn", "champion", serving_home) == 1
    state = backend.router_state()
    assert state.baseline.version == 1 and state.canary.version == 2 and state.weight == 0.5
    assert not (serving_home.serving_dir / "promotion.json").exists()


@pytest.mark.slow
def test_a_failed_traffic_switch_undoes_the_alias_move(serving_home, tmp_path):
    from prefect.transactions import transaction

    from agentic_mlops.tasks.rollout_protocol import ServingError

    start_serving(serving_home)
    no_router = serving_home.model_copy(update={"home": tmp_path / "elsewhere"})
    with pytest.raises(ServingError), transaction():
        registry.move_champion_alias("churn", 2, serving_home)
        promotion.switch_traffic(no_router)
    assert registry.model_aliases("churn", serving_home) == {"challenger": 2, "champion": 1}


@pytest.mark.slow
def test_a_promotion_killed_between_alias_and_traffic_is_repaired(serving_home):

    backend, _ = start_serving(serving_home)
    backend.deploy(2)
    backend.set_weight(0.25)
    before = backend.router_state()
    promotion.write_journal(
        promotion.PromotionJournal(
            model_name="churn", version=2, previous_champion=1, router_before=before
        ),
        serving_home,
    )
    registry.promote_champion("churn", 2, serving_home)  # then the process died
    repaired = promotion.reconcile("churn", serving_home)
    assert "interrupted promotion of v2" in repaired
    aliases = registry.model_aliases("churn", serving_home)
    assert aliases["champion"] == 1 and list(aliases.values()).count(1) >= 1
    assert backend.router_state().baseline.version == aliases["champion"]
    assert promotion.reconcile("churn", serving_home) is None


@pytest.mark.slow
def test_a_router_serving_the_wrong_version_follows_the_champion(serving_home):

    backend, _ = start_serving(serving_home)
    backend.set_baseline(2)
    repaired = promotion.reconcile("churn", serving_home)
    assert "now serves the champion v1" in repaired
    assert backend.router_state().baseline.version == 1


def test_unreachable_metrics_fail_closed(serving_home):
    from agentic_mlops.tasks.canary_steps import analyse_step
    from agentic_mlops.tasks.metrics import RouterMetrics

    analysis = analyse_step.fn(
        RouterMetrics("http://127.0.0.1:9", timeout=0.5), 5.0, 50, serving_home
    )
    assert analysis.metric_errors == 3 and analysis.judge.verdict == "fail"
    assert {m.classification for m in analysis.judge.metrics} == {"nodata"}
    assert analysis.sequential_outcome == "continue"


@pytest.mark.slow
def test_the_router_drops_no_request_while_weights_change_and_the_canary_is_removed(
    serving_home,
):
    backend, url = start_serving(serving_home)
    backend.deploy(2)
    weights = [0.05, 0.25, 0.5, 1.0, 0.25, 0.0, 0.5]
    with customer_traffic(url, rate=200, limit=4_000, seconds=60) as traffic:
        cycles, deadline = 0, time.monotonic() + 40
        # at least two cycles, and until enough requests crossed them on a loaded machine
        while cycles < 2 or (traffic.counts.sent <= 200 and time.monotonic() < deadline):
            for weight in weights:
                backend.set_weight(weight)
                time.sleep(0.3)
            cycles += 1
        backend.rollback()
        time.sleep(1.0)
    assert traffic.counts.sent > 200 and traffic.counts.failed == 0
    assert traffic.counts.variants.get("canary", 0) > 20
    state = backend.router_state()
    assert state.canary is None and "2" not in backend.status().servers


@pytest.mark.slow
def test_a_much_slower_canary_is_rolled_back(serving_home):
    backend, url = start_serving(serving_home, {"fault_latency_ms": 120})
    with customer_traffic(url) as traffic:
        result = rollout().result()
    assert result.outcome == "rolled_back", result
    assert registry.alias_version("churn", "champion", serving_home) == 1
    assert traffic.counts.failed == 0


@pytest.mark.slow
def test_a_less_accurate_canary_is_rolled_back_on_its_feedback(serving_home):
    worse = train(
        generate_rows=300,
        seed=9,
        scenario="concept",
        hyperparameters=Hyperparameters(max_iter=3, learning_rate=0.02),
    )
    backend, url = start_serving(serving_home)
    with customer_traffic(url) as traffic:
        result = canary_rollout(
            version=worse.version,
            steps=[50, 100],
            step_seconds=40,
            min_samples=150,
            approval_timeout_seconds=30,
            return_state=True,
        ).result()
    assert result.outcome == "rolled_back", result
    brier = [
        m
        for m in ledger.get_decision(result.steps[-1].ledger_id, serving_home).evidence["judge"][
            "metrics"
        ]
        if m["name"] == "brier"
    ]
    assert brier and (
        brier[0]["classification"] == "high" or result.steps[-1].sequential_outcome == "rollback"
    )
    assert registry.alias_version("churn", "champion", serving_home) == 1
    assert traffic.counts.failed == 0


@pytest.mark.slow
def test_an_llm_cannot_promote_by_increasing_traffic_at_the_last_step(serving_home, monkeypatch):
    """A complacent LLM answers `increase_traffic` at 0.99 whatever it reads. At the last step
    that is a promotion, so without the sequential test's non-inferiority the flow never ends
    `promoted`: it holds, then (nobody to ask in approval mode `none`) rolls back."""
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    from agentic_mlops.agents import canary_promotion, decision_runtime
    from agentic_mlops.tasks import canary_steps
    from agentic_mlops.tasks.canary_judge import JudgeResult, MetricVerdict
    from agentic_mlops.tasks.canary_steps import StepAnalysis

    def complacent(messages, info):
        if len(messages) == 1:
            return ModelResponse(
                parts=[ToolCallPart(name, {}) for name in canary_promotion.EVIDENCE_TOOLS]
            )
        answer = {
            "action": "increase_traffic",
            "confidence": 0.99,
            "rationale": "fine",
            "evidence_used": ["judge", "sequential", "traffic"],
        }
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answer)])

    llm = FunctionModel(complacent, model_name="complacent-llm")
    monkeypatch.setattr(decision_runtime, "agent_model", lambda settings: llm)
    passed = JudgeResult(
        verdict="pass",
        score=100.0,
        critical_failures=[],
        reason="every metric passed",
        metrics=[
            MetricVerdict(
                name="error",
                classification="pass",
                critical=True,
                weight=1.0,
                canary_n=300,
                baseline_n=300,
                canary_center=0.0,
                baseline_center=0.0,
                effect=0.0,
                ci_low=-0.01,
                ci_high=0.01,
                p_value=1.0,
                reason="no difference",
            )
        ],
    )
    unproven = StepAnalysis(
        judge=passed,
        sequential_outcome="continue",
        sequential_reason="non-inferiority not shown yet",
        samples={"baseline": 300, "canary": 300},
        metric_errors=0,
    )
    monkeypatch.setattr(canary_steps, "analyse_step", lambda *args: unproven)
    monkeypatch.setenv("AGENTIC_MLOPS_APPROVAL_MODE", "none")
    start_serving(serving_home)
    result = rollout(steps=[50, 100]).result()
    assert result.outcome == "rolled_back", result
    assert registry.alias_version("churn", "champion", serving_home) == 1
    assert [step.action for step in result.steps] == ["hold", "hold", "rollback"]
    assert [step.decided_by for step in result.steps] == ["guardrail"] * 3
    first = ledger.get_decision(result.steps[0].ledger_id, serving_home)
    assert first.action == "hold" and first.agent_model == "complacent-llm"
    assert first.attribution["model_action"] == "increase_traffic"
    assert first.attribution["policy_action"] == "hold"
    assert "increase_traffic to 100% needs the sequential test" in first.overridden_by
