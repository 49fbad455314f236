"""What code enforces at the drift triage: its limits, its closed decision, the policy, floors
and guardrails, as pure functions of the evidence.

`policy_decision` is the deterministic rule (the default model and every fallback);
`demands_action` is the floor (evidence a `none` or `monitor` may not ignore); and
`enforce_guardrails` bounds any decision both ways. The agent in `drift_triage` only reads the
evidence through tools and proposes; what stands is decided here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, Field

from agentic_mlops.decisions import PerformanceEvidence, TriageEvidence
from agentic_mlops.decisions import TriageAction as Action
from agentic_mlops.decisions import TriageSeverity as Severity
from agentic_mlops.settings import TriageLimits

ACTIONS: tuple[str, ...] = get_args(Action)
EvidenceRef = Literal[
    "quality",
    "column_drift",
    "drift_history",
    "feature_importance",
    "performance",
    "registry",
    "serving",
]


class TriageDecision(BaseModel):
    """The triage's decision about the latest batch."""

    action: Action = Field(
        description="none: nothing to do; monitor: watch the next batches; retrain: train a "
        "new challenger on recent labelled data; rollback: move the champion alias back to "
        "the previous champion; escalate: a person must look (broken data, unclear case)."
    )
    severity: Severity = Field(description="How bad the situation is.")
    confidence: float = Field(ge=0, le=1, description="Confidence in the action, 0 to 1.")
    drifted_features: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Drifted features that matter for the model, most important first.",
    )
    rationale: str = Field(max_length=1_000, description="Two or three sentences of why.")
    evidence_used: list[EvidenceRef] = Field(
        default_factory=list, description="Which tools' results the decision rests on."
    )


ACTING = ("retrain", "rollback", "escalate")
"""Actions that do something; `none` and `monitor` only watch."""


def performance_dropped(performance: PerformanceEvidence, limits: TriageLimits) -> bool:
    """Whether the metric fell by at least the limit, and by more than its noise."""
    drop = performance.reference - performance.current
    if drop < limits.performance_drop:
        return False
    return performance.drop_standard_error is None or drop >= 2 * performance.drop_standard_error


def is_miscalibrated(performance: PerformanceEvidence, limits: TriageLimits) -> bool:
    """Whether churn happens at a clearly different rate than the champion predicts."""
    if performance.calibration_z is None or performance.observed_rate is None:
        return False
    gap = abs(performance.observed_rate - (performance.predicted_rate or 0.0))
    return abs(performance.calibration_z) >= limits.calibration_z and gap >= limits.calibration_gap


def _weights(evidence: TriageEvidence) -> dict[str, float]:
    positive = {k: max(v, 0.0) for k, v in evidence.feature_importance.items()}
    total = sum(positive.values())
    if total <= 0:
        return {name: 1.0 / max(len(evidence.columns), 1) for name in evidence.columns}
    return {name: value / total for name, value in positive.items()}


def important_alarm(evidence: TriageEvidence, limits: TriageLimits) -> list[str]:
    """The columns the CUSUM alarms on, when together they carry at least `important_drift`
    of the model's importance; else none."""
    if not evidence.sequential_alarm:
        return []
    weights = _weights(evidence)
    alarmed = [name for name in evidence.sequential_alarm_columns if name in evidence.columns]
    if sum(weights.get(name, 0.0) for name in alarmed) < limits.important_drift:
        return []
    return sorted(alarmed, key=lambda name: -weights.get(name, 0.0))


def demands_action(evidence: TriageEvidence, limits: TriageLimits) -> str | None:
    """Why the evidence demands more than `none` or `monitor`, or None: a quarantined batch,
    a performance drop beyond the limit on labelled rows, drift (or a sequential alarm) on
    important features, or a trusted label-free drop without labels."""
    if evidence.quality.batch_failed:
        return "the batch failed its quality checks and was quarantined"
    performance = evidence.performance
    if performance and performance_dropped(performance, limits):
        return (
            f"{performance.metric_label} fell by {performance.reference - performance.current:.3f}"
            f" on labelled rows (limit {limits.performance_drop:.3f}, beyond its noise)"
        )
    if performance and is_miscalibrated(performance, limits):
        return f"the champion is miscalibrated (z {performance.calibration_z:.1f})"
    weights = _weights(evidence)
    drifted = evidence.drifted()
    weighted = sum(weights.get(name, 0.0) for name in drifted)
    if drifted and (weighted >= limits.important_drift or evidence.dataset_drift):
        return f"features carrying {weighted:.0%} of the model's importance drifted"
    if alarmed := important_alarm(evidence, limits):
        return f"the sequential detector alarms on important features ({', '.join(alarmed)})"
    estimated = evidence.serving.estimated_drop() if evidence.serving else None
    if (
        not evidence.labels_available
        and estimated is not None
        and (estimated >= limits.performance_drop)
    ):
        return f"the trusted label-free estimate fell by {estimated:.3f} ROC AUC"
    return None


def previous_champion_proven(evidence: TriageEvidence) -> bool:
    """Whether the previous champion scores at least as well as the champion on the labelled
    rows at hand: the only evidence a rollback can rest on."""
    performance = evidence.performance
    return bool(
        evidence.previous_champion_version is not None
        and performance
        and performance.previous_champion_current is not None
        and performance.previous_champion_current >= performance.current
    )


@dataclass(frozen=True)
class Drifted:
    """The drifted features, most important first, and the share of importance they carry."""

    features: list[str]
    weight: float


Rule = Callable[[TriageEvidence, TriageLimits, Drifted], TriageDecision | None]


def _decide(
    action: Action,
    severity: Severity,
    confidence: float,
    rationale: str,
    used: list[EvidenceRef],
    features: list[str],
) -> TriageDecision:
    return TriageDecision(
        action=action,
        severity=severity,
        confidence=round(min(max(confidence, 0.0), 1.0), 3),
        drifted_features=features,
        rationale=rationale,
        evidence_used=used,
    )


def quarantined_batch(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """A batch that failed its quality checks escalates: its drift is not evidence."""
    if not evidence.quality.batch_failed:
        return None
    return _decide(
        "escalate",
        "high",
        0.9,
        f"The batch failed data-quality checks ({len(evidence.quality.failures)} failed "
        "expectations) and was quarantined; drift on broken data is not evidence, and "
        "retraining on it would learn the breakage. A person must fix the data source.",
        ["quality"],
        [],
    )


def previous_champion_better(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """A previous champion that beats the champion on the same labelled batch by
    `performance_drop`, and by more than twice the gain's standard error, rolls back: on a
    small or mislabelled batch a gap of that size can be noise."""
    performance = evidence.performance
    if not (
        performance
        and performance.previous_champion_current is not None
        and evidence.previous_champion_version is not None
    ):
        return None
    gain = performance.previous_champion_current - performance.current
    noise = performance.previous_champion_gain_standard_error
    if gain < limits.performance_drop or (noise is not None and gain < 2 * noise):
        return None
    return _decide(
        "rollback",
        "high",
        0.6 + min(gain * 5, 0.35),
        f"The previous champion scores {gain:.3f} {performance.metric_label} better than "
        "the champion on the same labelled batch"
        + (f" (beyond twice its standard error, {2 * noise:.3f})" if noise is not None else "")
        + ": the champion is the problem, and the old one is proven here.",
        ["performance", "registry", "column_drift"],
        drifted.features,
    )


def performance_fell(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """A performance drop or miscalibration on labelled rows retrains (concept drift when the
    inputs are stable), or escalates when the labels are too few to retrain on."""
    performance = evidence.performance
    if performance is None:
        return None
    dropped = performance_dropped(performance, limits)
    miscalibrated = is_miscalibrated(performance, limits)
    if not (dropped or miscalibrated):
        return None
    if not evidence.labels_available:
        return _decide(
            "escalate",
            "high",
            0.8,
            f"Performance looks worse on {performance.rows} labelled rows "
            f"({performance.metric_label} "
            f"{performance.current:.3f} against {performance.reference:.3f}), but that is too "
            "few labelled rows to retrain on; a person must look.",
            ["performance", "registry"],
            drifted.features,
        )
    drop = performance.reference - performance.current
    kind = "input drift" if drifted.features else "concept drift (inputs stable, labels changed)"
    found = [f"{performance.metric_label} fell by {drop:.3f}"] if dropped else []
    if miscalibrated:
        found.append(
            f"the positive rate was {performance.observed_rate:.3f} where the champion "
            "predicted "
            f"{performance.predicted_rate:.3f} (calibration z {performance.calibration_z:.1f})"
        )
    summary = "; ".join(found)
    return _decide(
        "retrain",
        "high",
        0.7 + min(max(drop, 0.0) * 3 + 0.05 * miscalibrated, 0.25),
        f"{summary[0].upper()}{summary[1:]} on labelled data ({kind}); a model retrained "
        "on recent labelled data should recover it.",
        ["performance", "column_drift", "feature_importance"],
        drifted.features,
    )


def label_free_drop(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """Without labels, a trusted label-free estimate that fell by `performance_drop`
    escalates: retraining needs labels."""
    serving = evidence.serving
    estimated_drop = serving.estimated_drop() if serving else None
    if (
        evidence.labels_available
        or estimated_drop is None
        or estimated_drop < limits.performance_drop
    ):
        return None
    return _decide(
        "escalate",
        "high",
        0.75,
        f"Without labels, the champion's ROC AUC estimated from its scores on "
        f"{serving.rows} served rows is {serving.estimated_roc_auc:.3f}, against "
        f"{serving.reference_roc_auc:.3f} on its holdout; retraining needs labels, so a "
        "person must look (or wait for the labels).",
        ["serving", "column_drift", "registry"],
        drifted.features,
    )


def important_features_drifted(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """Drift on features carrying `important_drift` of the importance (or dataset drift)
    retrains when labels exist and escalates when they do not."""
    if not drifted.features or (
        drifted.weight < limits.important_drift and not evidence.dataset_drift
    ):
        return None
    count, weighted = len(drifted.features), drifted.weight
    if evidence.labels_available:
        return _decide(
            "retrain",
            "medium" if weighted < 0.3 else "high",
            0.65 + min(weighted, 0.3),
            f"{count} features drifted, carrying {weighted:.0%} of the model's "
            "importance; labels exist, so retrain on recent data.",
            ["column_drift", "feature_importance", "registry"],
            drifted.features,
        )
    return _decide(
        "escalate",
        "medium",
        0.7,
        f"{count} features drifted, carrying {weighted:.0%} of the model's "
        "importance, but the batch has no labels to retrain on.",
        ["column_drift", "feature_importance", "registry"],
        drifted.features,
    )


def important_features_alarmed(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """A sequential alarm on important features retrains when labels exist and escalates
    when they do not."""
    alarmed = important_alarm(evidence, limits)
    if not alarmed:
        return None
    gradual = (
        f"The sequential detector alarms on {', '.join(alarmed)}, which carry at least "
        f"{limits.important_drift:.0%} of the model's importance"
    )
    if evidence.labels_available:
        return _decide(
            "retrain",
            "medium",
            0.7,
            f"{gradual}: gradual drift on features that matter; labels exist, so retrain on "
            "recent data.",
            ["drift_history", "feature_importance", "registry"],
            drifted.features,
        )
    return _decide(
        "escalate",
        "medium",
        0.7,
        f"{gradual}, but the batch has no labels to retrain on.",
        ["drift_history", "feature_importance", "registry"],
        drifted.features,
    )


def worth_watching(
    evidence: TriageEvidence, limits: TriageLimits, drifted: Drifted
) -> TriageDecision | None:
    """Any other drift, a sequential alarm, prediction drift or a serving alert: monitor."""
    alerts = evidence.serving.alerts if evidence.serving else []
    if evidence.sequential_alarm:
        reason = "the sequential detector sees gradual drift"
    elif drifted.features or evidence.prediction_drifted:
        reason = f"{len(drifted.features)} features of low importance drifted"
    elif alerts:
        reason = f"the monitor reports {len(alerts)} serving alert(s): {alerts[0]}"
    else:
        return None
    return _decide(
        "monitor",
        "low",
        0.7,
        f"Worth watching: {reason}; not enough to act on yet.",
        ["column_drift", "drift_history", "feature_importance"] + (["serving"] if alerts else []),
        drifted.features,
    )


RULES: tuple[Rule, ...] = (
    quarantined_batch,
    previous_champion_better,
    performance_fell,
    label_free_drop,
    important_features_drifted,
    important_features_alarmed,
    worth_watching,
)
"""The policy's rules in the order they are tried; the first that decides stands."""


def policy_decision(evidence: TriageEvidence, limits: TriageLimits) -> TriageDecision:
    """The deterministic triage rule, used as the default model and as every fallback.

    In order (`RULES`): a failed batch escalates; a previous champion that does better on the
    same labelled batch rolls back; a performance drop or miscalibration retrains (concept
    drift when the inputs are stable); a trusted label-free drop without labels escalates;
    drift on important features, or a sequential alarm on them, retrains when labels exist
    and escalates when they do not; any other drift or a sequential alarm means monitor;
    otherwise nothing.
    """
    weights = _weights(evidence)
    features = sorted(evidence.drifted(), key=lambda name: -weights.get(name, 0.0))
    drifted = Drifted(features, sum(weights.get(name, 0.0) for name in features))
    for rule in RULES:
        if decision := rule(evidence, limits, drifted):
            return decision
    return _decide(
        "none",
        "none",
        0.9,
        "No column drifted, quality passed and performance holds.",
        ["quality", "column_drift", "performance"],
        [],
    )


def enforce_guardrails(
    decision: TriageDecision, evidence: TriageEvidence, limits: TriageLimits
) -> tuple[TriageDecision, str | None]:
    """Bound what any decision can do, both ways; return the decision that stands and why.

    - ceilings: an action outside the allowed set, `retrain` without labels or on a failed
      batch, and `rollback` unless the previous champion scores at least as well on the
      labelled rows at hand, are replaced by the policy's decision;
    - floors: `none` or `monitor` where the evidence demands action (see `demands_action`) is
      raised to the policy's action, or to `escalate` when that is not an acting one;
    - a `retrain` or `rollback` below the minimum confidence escalates to a person, whoever
      proposed it (the model, or the policy in its place);
    - drifted features the evidence does not show as drifted are dropped.
    """
    reasons = []
    known = set(evidence.drifted())
    if any(name not in known for name in decision.drifted_features):
        decision = decision.model_copy(
            update={"drifted_features": [n for n in decision.drifted_features if n in known]}
        )
        reasons.append("dropped features the evidence does not show as drifted")
    broken = None
    if decision.action not in limits.allowed_actions:
        broken = f"action {decision.action!r} is not allowed"
    elif decision.action == "retrain" and not evidence.labels_available:
        broken = "retrain needs labelled data"
    elif decision.action == "retrain" and evidence.quality.batch_failed:
        broken = "retrain on a batch that failed quality checks"
    elif decision.action == "rollback" and evidence.previous_champion_version is None:
        broken = "rollback needs a previous champion"
    elif decision.action == "rollback" and not previous_champion_proven(evidence):
        broken = (
            "rollback needs the previous champion to score at least as well on the labelled "
            "rows at hand"
        )
    demanded = None
    if broken:
        decision = _policy_or_escalate(evidence, limits)
        reasons.append(f"{broken}: replaced by the policy's decision")
    elif decision.action in ("none", "monitor"):
        demanded = demands_action(evidence, limits)
    if demanded:
        raised = _policy_or_escalate(evidence, limits, acting=True)
        reasons.append(f"{decision.action} ignores that {demanded}: raised to {raised.action}")
        decision = raised
    if decision.action in ("retrain", "rollback") and decision.confidence < limits.min_confidence:
        reasons.append(
            f"{decision.action} at confidence {decision.confidence:.2f} is below "
            f"{limits.min_confidence:.2f}: escalated to a person"
        )
        decision = decision.model_copy(update={"action": "escalate"})
    return decision, "; ".join(reasons) or None


def _policy_or_escalate(
    evidence: TriageEvidence, limits: TriageLimits, acting: bool = False
) -> TriageDecision:
    """The policy's decision, or `escalate` when that is not allowed (or, with `acting`, when
    it is only `none` or `monitor`)."""
    policy = policy_decision(evidence, limits)
    if policy.action not in limits.allowed_actions or (acting and policy.action not in ACTING):
        policy = policy.model_copy(update={"action": "escalate", "severity": "high"})
    return policy
