"""Decisions and their outcomes over time: a table and a picture, from the ledger.

Every agent decision is a point on its decision point's lane, labelled with its action and
coloured by what later happened: green when the outcome proved it right (the retrained model
beat the champion, the canary was promoted and held, the rollback went through), red when it
did not (a challenger that lost, a canary rolled back, a promotion that did not hold), grey
while the outcome is unknown. A lifecycle turn publishes both with the steps it took
(`publish_turn`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from agentic_mlops.decisions import METRIC_LABEL
from agentic_mlops.schemas import LifecycleResult
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry, reports

LANES = ("drift_triage", "tuning_advisor", "canary_promotion")
GOOD, BAD, UNKNOWN = "#2e7d32", "#c62828", "#9e9e9e"


def verdict(entry: ledger.LedgerEntry) -> str | None:
    """`good`, `bad` or None (not known yet) for a decision, from its recorded outcome."""
    outcome = entry.outcome or {}
    if entry.decision_point == "canary_promotion" and outcome.get("carried_out") == "rolled_back":
        return "good"  # a rollback on live evidence kept users on the better model
    if "held" in outcome:
        return "good" if outcome["held"] else "bad"
    if "canary" in outcome:
        return "good" if outcome["canary"] == "promoted" else "bad"
    if "beat_champion" in outcome:
        return "good" if outcome["beat_champion"] else "bad"
    if "aliases_after" in outcome:
        return "good"
    return None  # a person's rejection is their decision (its own entry), not a verdict


def summary(entry: ledger.LedgerEntry) -> str:
    """One line of what a decision's outcome was."""
    outcome = entry.outcome or {}
    parts = []
    if "challenger_version" in outcome:
        parts.append(f"v{outcome['challenger_version']}")
    metric = outcome.get("holdout_metric", "roc_auc")
    if outcome.get(f"challenger_holdout_{metric}") is not None:
        champion = outcome.get(f"champion_holdout_{metric}")
        parts.append(
            f"holdout {METRIC_LABEL.get(metric, metric)} "
            f"{outcome[f'challenger_holdout_{metric}']:.3f}"
            + (f" vs {champion:.3f}" if champion is not None else "")
        )
    for key in ("canary", "carried_out", "human", "held", "note"):
        if key in outcome:
            parts.append(f"{key}: {outcome[key]}")
    return "; ".join(parts)


def decision_rows(settings: Settings, limit: int = 200) -> list[dict[str, str | float | None]]:
    """The ledger as table rows, oldest first."""
    entries = ledger.list_decisions(settings.model_name, limit=limit, settings=settings)
    return [
        {
            "time (UTC)": entry.created_at[5:19].replace("T", " "),
            "decision point": entry.decision_point,
            "action": entry.action,
            "outcome": {"good": "right", "bad": "wrong", None: "pending"}[verdict(entry)],
            "what happened": summary(entry),
            "decided by": entry.agent_model,
            "confidence": None if entry.confidence is None else round(entry.confidence, 2),
            "version": entry.model_version,
            "guardrail": (entry.overridden_by or "")[:80],
        }
        for entry in reversed(entries)
    ]


def plot_decisions(path: Path, settings: Settings, limit: int = 200) -> Path:
    """Draw every decision on its lane over time, coloured by outcome; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    entries = list(
        reversed(ledger.list_decisions(settings.model_name, limit=limit, settings=settings))
    )
    figure, axes = plt.subplots(figsize=(10, 3.6), dpi=110)
    lanes = {name: index for index, name in enumerate(LANES)}
    for entry in entries:
        lane = lanes.setdefault(entry.decision_point, len(lanes))
        when = dt.datetime.fromisoformat(entry.created_at)
        color = {"good": GOOD, "bad": BAD, None: UNKNOWN}[verdict(entry)]
        axes.scatter(when, lane, s=140, color=color, edgecolor="black", zorder=3)
        axes.annotate(
            entry.action,
            (when, lane),
            xytext=(0, 10),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes.set_yticks(list(lanes.values()), [name.replace("_", " ") for name in lanes])
    axes.set_ylim(-0.7, len(lanes) - 0.3)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(f"{settings.model_name}: decisions and their outcomes")
    axes.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black", label=label)
            for c, label in ((GOOD, "proved right"), (BAD, "proved wrong"), (UNKNOWN, "pending"))
        ],
        loc="upper left",
        fontsize=8,
        framealpha=0.9,
    )
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def publish_turn(result: LifecycleResult, action: str, settings: Settings) -> LifecycleResult:
    """The turn's aliases after it acted, the ledger table and decisions plot, and the turn's
    steps as a keyed markdown artifact that links to them and to the drift check's."""
    name = settings.model_name
    key = reports.artifact_key
    aliases = registry.model_aliases(name, settings)
    create_table_artifact(
        key=key(name, "decisions-and-outcomes"),
        table=decision_rows(settings),
        description="Every decision, who made it, and what happened after",
    )
    plot_path = plot_decisions(settings.reports_dir / name / "lifecycle.png", settings)
    result = result.model_copy(
        update={
            "aliases": aliases,
            "champion": aliases.get(registry.CHAMPION),
            "plot_path": str(plot_path),
        }
    )
    plot = reports.logged_file_link(
        name, result.champion, result.plot_path, "lifecycle", "decisions plot", settings
    )
    create_markdown_artifact(
        key=key(name, "lifecycle"),
        markdown=f"# Lifecycle turn on `{result.batch}`\n\n"
        + "\n".join(f"1. {step}" for step in result.steps)
        + f"\n\nAliases: {result.aliases}  \nDecisions and outcomes: {plot} · "
        + reports.artifact_link(key(name, "decisions-and-outcomes"), "ledger table")
        + f"  \nDrift check: {reports.artifact_link(key(name, 'drift-triage'))}\n",
        description=f"{name}: {action}",
    )
    return result
