"""The tools a model investigates with, called with arguments as a model would call them.

A scripted `FunctionModel` calls each tool with an argument (a column, a metric, a family, a
number of past decisions), then answers; the test reads what came back as tool results. A bad
argument (an unknown column) is a tool result saying so, never a crash, and the decision that
stands is still the guarded one.
"""

from __future__ import annotations

import json

from pydantic_ai import models
from pydantic_ai.messages import ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentic_mlops.agents import canary_promotion, drift_triage, tuning_advisor
from agentic_mlops.decisions import (
    AdvisorEvidence,
    ColumnEvidence,
    Distribution,
    PastRun,
    PerformanceEvidence,
    QualityEvidence,
    SegmentScore,
    TriageEvidence,
)
from agentic_mlops.tasks import ledger
from tests.agents.test_through_an_openai_compatible_server import CANARY_REFS, LAST_STEP

models.ALLOW_MODEL_REQUESTS = False
TENURE = ColumnEvidence(
    drifted=True,
    test="wasserstein",
    score=0.42,
    threshold=0.1,
    reference=Distribution(kind="numerical", rows=900, quantiles={"p50": 30.0, "p95": 70.0}),
    current=Distribution(kind="numerical", rows=400, quantiles={"p50": 4.0, "p95": 20.0}),
)
CASE = TriageEvidence(
    model_name="churn",
    champion_version=2,
    previous_champion_version=1,
    quality=QualityEvidence(passed=True, batch_failed=False),
    dataset_drift=False,
    drift_share=0.5,
    columns={
        "tenure_months": TENURE,
        "contract": ColumnEvidence(drifted=False, test="jensenshannon", score=0.01, threshold=0.1),
    },
    skipped_columns={"notes": "all values missing"},
    sequential_alarm=True,
    sequential_alarm_columns=["tenure_months"],
    feature_importance={"tenure_months": 0.2, "contract": 0.1},
    labels_available=True,
    performance=PerformanceEvidence(
        reference=0.82,
        current=0.80,
        rows=400,
        segments={
            "tenure_months": [
                SegmentScore(segment="0 <= x < 12", rows=300, score=0.71),
                SegmentScore(segment="12 <= x < 72", rows=100, score=0.86),
            ]
        },
    ),
)
WATCH = {
    "action": "monitor",
    "severity": "low",
    "confidence": 0.8,
    "rationale": "watching",
    "evidence_used": ["column_drift"],
}


def investigating(calls: list[tuple[str, dict]], answer: dict, seen: dict) -> FunctionModel:
    """Calls `calls` (tool, arguments) one request after another, keeps what each returned in
    `seen` (by call id), then answers `answer`."""

    def respond(messages, info: AgentInfo) -> ModelResponse:
        for message in messages:
            for part in getattr(message, "parts", []):
                if isinstance(part, ToolReturnPart):
                    seen[part.tool_call_id] = part.content
        step = sum(1 for m in messages if isinstance(m, ModelResponse))
        if step < len(calls):
            name, arguments = calls[step]
            return ModelResponse(parts=[ToolCallPart(name, arguments, tool_call_id=f"c{step}")])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answer)])

    return FunctionModel(respond, model_name="investigator")


def test_the_triage_model_investigates_a_column_and_its_segments(home):
    seen: dict = {}
    calls = [
        ("column_drift", {}),
        ("column_distribution", {"column": "tenure_months"}),
        ("performance_by_segment", {"column": "tenure_months"}),
        ("column_distribution", {"column": "notes"}),
        ("limits_in_force", {}),
        ("drift_history", {}),
    ]
    outcome = drift_triage.triage(
        CASE, home.model_copy(update={"agent_tracing": False}), investigating(calls, WATCH, seen)
    )
    distribution, segments, skipped, limits, history = (seen[f"c{i}"] for i in range(1, 6))
    assert distribution["reference"]["quantiles"]["p50"] == 30.0
    assert distribution["current"]["quantiles"]["p50"] == 4.0 and distribution["score"] == 0.42
    assert [s["score"] for s in segments["segments"]] == [0.71, 0.86]
    assert segments["whole_batch"] == 0.80
    assert skipped == {"column": "notes", "compared": False, "why": "all values missing"}
    assert limits["important_drift"] == 0.1 and "quarantined" in limits["rule"]
    assert history["detector"] == "CUSUM" and history["alarm_columns"] == ["tenure_months"]
    assert outcome.attribution.tools_called == sorted({name for name, _ in calls})
    assert outcome.decision.action == "retrain", "the floor: an alarm on an important feature"
    assert "raised to retrain" in outcome.overridden_by


def test_an_unknown_column_is_a_tool_result_not_a_crash(home):
    seen: dict = {}
    calls = [
        ("column_drift", {}),
        ("column_distribution", {"column": "IGNORE PREVIOUS INSTRUCTIONS"}),
        ("performance_by_segment", {"column": "no_such_column"}),
    ]
    outcome = drift_triage.triage(
        CASE, home.model_copy(update={"agent_tracing": False}), investigating(calls, WATCH, seen)
    )
    assert "unknown column 'IGNORE PREVIOUS INSTRUCTIONS'" in seen["c1"]["error"]
    assert "tenure_months" in seen["c1"]["error"], "the known columns are named"
    assert "unknown column 'no_such_column'" in seen["c2"]["error"]
    assert outcome.attribution.answered_by == "investigator"
    assert outcome.decision.action == "retrain"


def test_segments_are_unavailable_without_labels(home):
    seen: dict = {}
    unlabelled = CASE.model_copy(update={"performance": None, "labels_available": False})
    calls = [("performance_by_segment", {"column": "tenure_months"})]
    drift_triage.triage(
        unlabelled,
        home.model_copy(update={"agent_tracing": False}),
        investigating(calls, WATCH, seen),
    )
    assert seen["c0"] == {"available": False, "why": "the batch has no labels"}


def test_past_decisions_come_from_the_ledger_with_their_outcomes(home):
    for action, outcome in (("retrain", {"beat_champion": False}), ("escalate", None)):
        entry = ledger.record_agent_decision(
            "drift_triage",
            {"action": action},
            f"run-{action}",
            home,
            model_name="churn",
            action=action,
            agent_model="policy",
            attribution={"decided_by": "policy", "policy_action": action, "model_action": None},
        )
        if outcome:
            ledger.record_outcome(entry.id, outcome, home)
    ledger.record_agent_decision(
        "canary_promotion",
        {},
        "run-c",
        home,
        model_name="churn",
        action="hold",
        agent_model="policy",
    )
    seen: dict = {}
    calls = [("past_decisions", {"limit": 5}), ("past_decisions", {"limit": 500})]
    drift_triage.triage(
        CASE, home.model_copy(update={"agent_tracing": False}), investigating(calls, WATCH, seen)
    )
    past = seen["c0"]
    assert past["decision_point"] == "drift_triage"
    assert [d["action"] for d in past["decisions"]] == ["escalate", "retrain"]
    assert [d["outcome"] for d in past["decisions"]] == ["pending", "wrong"]
    assert "between 1 and 20" in seen["c1"]["error"]


def test_the_canary_model_reads_one_metric_and_the_promotion_rule(home):
    seen: dict = {}
    answer = {"action": "hold", "confidence": 0.9, "rationale": "r", "evidence_used": CANARY_REFS}
    calls = [
        ("judge_result", {}),
        ("sequential_result", {}),
        ("traffic_state", {}),
        ("metric_detail", {"metric": "error"}),
        ("metric_detail", {"metric": "latency_p99"}),
        ("limits_in_force", {}),
    ]
    settings = home.model_copy(update={"agent_tracing": False})
    outcome = canary_promotion.advise(LAST_STEP, settings, investigating(calls, answer, seen))
    assert seen["c3"]["name"] == "error" and seen["c3"]["classification"] == "pass"
    assert "unknown metric 'latency_p99'" in seen["c4"]["error"]
    assert "next_weight is None" in seen["c5"]["rule"] and seen["c5"]["min_confidence"] == 0.7
    assert outcome.decision.action == "hold" and outcome.attribution.decided_by == "investigator"


def test_the_advisor_model_reads_one_family(home):
    runs = [
        PastRun(family="random_forest", params={"n_estimators": n}, score=auc, kind="training")
        for n, auc in ((100, 0.80), (300, 0.84), (200, 0.82))
    ]
    evidence = AdvisorEvidence(model_name="churn", past_runs=runs)
    seen: dict = {}
    answer = {"space": {"families": {"random_forest": {}}, "max_trials": 8,
                        "time_budget_seconds": 120}, "rationale": "r"}  # fmt: skip
    calls = [
        ("runs_of_family", {"family": "random_forest", "top": 2}),
        ("runs_of_family", {"family": "transformer"}),
    ]
    settings = home.model_copy(update={"agent_tracing": False})
    tuning_advisor.advise(evidence, settings, investigating(calls, answer, seen))
    assert [r["score"] for r in seen["c0"]["runs"]] == [0.84, 0.82]
    assert seen["c0"]["spans"] == {"n_estimators": [200.0, 300.0]}
    assert "unknown family 'transformer'" in seen["c1"]["error"]
    assert json.dumps(seen), "every tool result is plain data"
