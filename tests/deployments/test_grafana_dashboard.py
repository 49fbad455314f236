"""The Grafana dashboard: it loads, and asks only for what the router and the ledger hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentic_mlops.serving.router import Router
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger

DASHBOARD = Path(__file__).resolve().parents[2] / "deployments" / "grafana" / "agentic-mlops.json"
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_series(tmp_path: Path) -> tuple[set[str], set[str]]:
    """Names of the series the router exports, and their label names."""
    router = Router(tmp_path / "router.json")
    names, labels = set(), {"le"}
    for family in router.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        for sample in family.samples:
            labels |= set(sample.labels)
    labels |= {"variant", "code"}  # router_requests_total's labels appear with its first request
    return names, labels


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression refers to."""
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\{[^}]*\}", "", expr)
    grouping = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for group in re.findall(grouping, expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    expr = re.sub(grouping, "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return names - PROMQL_KEYWORDS, labels


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def prometheus_expressions(board: dict) -> list[str]:
    expressions = [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if panel.get("datasource", {}).get("type") == "prometheus"
    ]
    expressions += [
        annotation["expr"]
        for annotation in board["annotations"]["list"]
        if annotation.get("datasource", {}).get("type") == "prometheus"
    ]
    return expressions


def test_dashboard_loads_with_unique_panels_on_the_grid():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"prometheus", "ledger", "window"} <= variables


def test_dashboard_has_the_panels_a_canary_needs():
    titles = " | ".join(panel["title"].lower() for panel in dashboard()["panels"])
    for wanted in (
        "requests per second",
        "error ratio",
        "latency p50 and p99",
        "canary weight",
        "online accuracy",
        "brier",
        "failovers",
        "agent decisions",
    ):
        assert wanted in titles


def test_every_promql_expression_uses_only_what_the_router_exports(tmp_path):
    names, labels = exported_series(tmp_path)
    expressions = prometheus_expressions(dashboard())
    assert len(expressions) >= 10
    used = set()
    for expr in expressions:
        metrics, label_names = promql_references(expr)
        assert metrics, expr
        assert metrics <= names, f"{expr} asks for {metrics - names}"
        assert label_names <= labels, f"{expr} uses labels {label_names - labels}"
        used |= metrics
    assert {
        "router_requests_total",
        "router_errors_total",
        "router_failover_total",
        "router_latency_seconds_bucket",
        "router_latency_seconds_count",
        "router_score_bucket",
        "router_feedback_total",
        "router_correct_total",
        "router_brier_sum_total",
        "router_canary_weight",
    } <= used


def test_the_reference_check_catches_a_metric_the_router_does_not_export(tmp_path):
    names, labels = exported_series(tmp_path)
    metrics, label_names = promql_references(
        'sum by (variant) (rate(router_requests_total{variant="canary", pod=~"a.*"}[5m]))'
        " / on (variant) sum by (variant) (rate(router_requets_total[$__rate_interval]))"
    )
    assert metrics - names == {"router_requets_total"}
    assert label_names - labels == {"pod"}


def ledger_query(board: dict) -> str:
    (panel,) = [p for p in board["panels"] if p.get("datasource", {}).get("uid") == "${ledger}"]
    (target,) = panel["targets"]
    assert target["queryText"] == target["rawQueryText"]
    return target["rawQueryText"]


@pytest.mark.parametrize("in_range", [True, False])
def test_the_decisions_panel_query_runs_on_the_ledger(tmp_path, in_range):
    settings = Settings(home=tmp_path / "home")
    entry = ledger.LedgerEntry(
        id="d1",
        created_at="2025-06-01T12:00:00+00:00",
        decision_point="canary_promotion",
        model_name="churn",
        model_version=2,
        inputs_digest="abc",
        action="promote",
        confidence=0.9,
        rationale="every critical metric passed",
        agent_model="policy",
    )
    ledger.record_decision(entry, settings)
    start = 1748779200 if in_range else 1748779200 + 3600  # 2025-06-01T12:00:00Z
    sql = (
        ledger_query(dashboard())
        .replace("$__from", str((start - 60) * 1000))
        .replace("$__to", str((start + 60) * 1000))
    )
    with ledger.connect(settings) as db:
        rows = [dict(row) for row in db.execute(sql)]
    if not in_range:
        assert rows == []
        return
    assert [(r["decision_point"], r["action"], r["model_version"]) for r in rows] == [
        ("canary_promotion", "promote", 2)
    ]
