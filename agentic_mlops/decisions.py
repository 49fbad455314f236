"""What the decision points read and what they record: evidence in, attributed outcome out.

The tasks and flows assemble the evidence (`tasks.reference` builds the triage's,
`tasks.canary_steps` the promotion's, the tune flow the advisor's); the agents read it through
their tools and decide; the tasks record the `Outcome` in the ledger. Both sides import this
module and the agents import the tasks, never the reverse. Evidence holds data only: what the
evidence demands is decided by the policies in `agents/`.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, Field, computed_field

Decision = TypeVar("Decision", bound=BaseModel)
POLICY = "policy"
"""The deterministic policy: as `agent_model`, as the model that answered, as who decided."""
TriageAction = Literal["none", "monitor", "retrain", "rollback", "escalate"]
"""What a drift triage may decide: the closed set its agent, policy, result and ledger share."""
TriageSeverity = Literal["none", "low", "medium", "high"]


class Distribution(BaseModel):
    """One column's values, summarised: quantiles of a number, top values of a category."""

    kind: Literal["numerical", "categorical"]
    rows: int = Field(description="Non-missing values.")
    missing: int = 0
    quantiles: dict[str, float] | None = Field(
        default=None, description="p5, p25, p50, p75 and p95 of a numerical column."
    )
    top: dict[str, float] | None = Field(
        default=None, description="Share of rows of the most frequent values (at most 8)."
    )


class ColumnDrift(BaseModel):
    """One column's drift verdict: Evidently's test for the column's kind, its score, and the
    threshold the score was judged by.

    `tasks.drift` makes it; the triage's evidence (and so the ledger), the drift check's
    result, the CLI and the MCP drift report hold it in this one shape.
    """

    drifted: bool
    test: str
    score: float
    threshold: float


class ColumnEvidence(ColumnDrift):
    """Drift verdict of one column, with both distributions when they were summarised."""

    reference: Distribution | None = None
    current: Distribution | None = None


class QualityEvidence(BaseModel):
    """Data-quality verdict of the batch."""

    passed: bool
    batch_failed: bool
    failures: list[str] = Field(default_factory=list)
    failing_row_share: float = 0.0


class SegmentScore(BaseModel):
    """The champion's metric on the labelled rows of one segment of a column."""

    segment: str = Field(description="`low <= x < high` for a number, the value for a category.")
    rows: int
    score: float | None = Field(description="None when the segment holds a single class.")


class PerformanceEvidence(BaseModel):
    """The champion's primary metric at training time and on the labelled batch, calibration,
    and the metric per segment of each feature."""

    metric: str = "roc_auc"
    reference: float
    current: float
    rows: int
    previous_champion_current: float | None = None
    previous_champion_gain_standard_error: float | None = Field(
        default=None,
        description="Standard error of (previous_champion_current - current), paired on these "
        "rows (DeLong's for ROC AUC); a gain within two of them is noise, and no rollback "
        "rests on it.",
    )
    observed_rate: float | None = None
    predicted_rate: float | None = None
    calibration_z: float | None = None
    drop_standard_error: float | None = Field(
        default=None,
        description="Standard error of (reference - current) where it is known (R² of a "
        "regressor); a drop within two of them is noise, not a performance drop.",
    )
    segments: dict[str, list[SegmentScore]] = Field(
        default_factory=dict, description="Per feature, the metric on each of its segments."
    )

    @property
    def metric_label(self) -> str:
        """The metric's name as a person reads it (ROC AUC, R², accuracy)."""
        return METRIC_LABEL.get(self.metric, self.metric)


class ServingEvidence(BaseModel):
    """What the monitor saw in live serving just before it asked for this check."""

    rows: int = Field(description="Rows the champion answered in the monitor's window.")
    alerts: list[str] = Field(
        default_factory=list,
        description="Serving metrics beyond their limit now, or worsening towards it.",
    )
    reference_roc_auc: float | None = Field(
        default=None, description="The champion's ROC AUC on its training holdout."
    )
    estimated_roc_auc: float | None = Field(
        default=None, description="ROC AUC estimated from the scores alone (CBPE), no labels."
    )
    estimate_trusted: bool = Field(
        default=False, description="Whether the scores were calibrated enough to trust it."
    )

    def estimated_drop(self) -> float | None:
        """How far the trusted label-free estimate fell below the holdout; None if untrusted."""
        if not self.estimate_trusted or None in (self.estimated_roc_auc, self.reference_roc_auc):
            return None
        return self.reference_roc_auc - self.estimated_roc_auc


class TriageEvidence(BaseModel):
    """Everything the triage may look at, assembled by the drift-check flow."""

    model_name: str
    champion_version: int | None = None
    previous_champion_version: int | None = None
    quality: QualityEvidence
    dataset_drift: bool
    drift_share: float
    columns: dict[str, ColumnEvidence]
    prediction_drifted: bool | None = None
    skipped_columns: dict[str, str] = Field(default_factory=dict)
    history_scores: list[float] = Field(default_factory=list)
    sequential_alarm: bool = False
    sequential_alarm_columns: list[str] = Field(
        default_factory=list, description="Columns on which the CUSUM raised its alarm."
    )
    feature_importance: dict[str, float] = Field(default_factory=dict)
    labels_available: bool = False
    performance: PerformanceEvidence | None = None
    serving: ServingEvidence | None = None

    def drifted(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]


Task = Literal["binary", "multiclass", "regression"]
"""What a model predicts: a 0/1 label, one of several classes, or a number."""
TASKS: tuple[str, ...] = get_args(Task)
TASK_METRIC: dict[str, str] = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "r2"}
"""The metric a model of each task is judged by on labelled rows (its card's primary metric,
the one a search maximises): higher is better for each, so they compare the same way."""
METRIC_LABEL = {"roc_auc": "ROC AUC", "accuracy": "accuracy", "r2": "R²"}


def task_metric(task: str, labels: Any, scores: Any) -> float:
    """The task's metric (`TASK_METRIC`) of scores against labels: ROC AUC of positive-class
    probabilities, accuracy of predicted labels, R² of predictions."""
    from sklearn.metrics import accuracy_score, r2_score, roc_auc_score

    if task == "regression":
        return float(r2_score(labels, scores))
    if task == "multiclass":
        return float(accuracy_score(labels, scores))
    return float(roc_auc_score(labels, scores))


LABEL_METRICS = {
    "binary": "brier",
    "regression": "absolute_error",
    "multiclass": "multiclass_brier",
}
"""The loss a labelled request gives a canary, by the model's task: a binary classifier's Brier
score, a regression model's absolute error, a multiclass classifier's Brier score summed over
its classes. The router records it; the canary judge compares its means."""


class TriageRecord(TriageEvidence):
    """What the ledger keeps as a drift triage's evidence: everything it could look at, which
    of it the decision rests on, and the drifted features it named."""

    used: list[str] = Field(default_factory=list, description="The tools the decision used.")
    drifted_features: list[str] = Field(default_factory=list)


Classification = Literal["pass", "high", "low", "nodata"]


class MetricVerdict(BaseModel):
    """One canary metric as the judge classified it (`tasks/canary_judge.judge`); evidence
    built by hand may leave out what it does not know."""

    name: str
    classification: Classification
    critical: bool = False
    weight: float = 1.0
    canary_n: int = Field(default=0, description="Canary values tested, after cleaning.")
    baseline_n: int = Field(default=0, description="Baseline values tested, after cleaning.")
    canary_dropped: int = Field(default=0, description="Canary values not finite or outliers.")
    baseline_dropped: int = Field(default=0, description="Baseline values not finite or outliers.")
    canary_center: float | None = Field(
        default=None, description="Median (continuous) or mean (binary)."
    )
    baseline_center: float | None = None
    effect: float | None = Field(
        default=None,
        description="Canary minus baseline: Hodges-Lehmann shift or difference in proportions.",
    )
    ci_low: float | None = Field(
        default=None, description="Confidence interval of the effect, at 1 - alpha."
    )
    ci_high: float | None = None
    p_value: float | None = None
    reason: str = ""


class JudgeResult(BaseModel):
    """The fixed analysis of one canary step: a verdict, a Kayenta-style score and its
    evidence. The judge produces it; the promotion agent, the ledger and the approval form
    read the same model."""

    verdict: Literal["pass", "marginal", "fail"]
    score: float = Field(ge=0, le=100, description="Weight of passing metrics / total * 100.")
    metrics: list[MetricVerdict] = Field(default_factory=list)
    critical_failures: list[str] = Field(default_factory=list)
    reason: str = ""

    @computed_field
    @property
    def label_metric(self) -> str | None:
        """The metric of labelled requests this analysis judged (`LABEL_METRICS`), so the
        ledger, the approval form and the artifacts name it; None without one."""
        names = set(LABEL_METRICS.values())
        return next((m.name for m in self.metrics if m.name in names), None)

    def only_missing_data(self) -> bool:
        """Whether every metric that did not pass merely lacked data."""
        failing = [m for m in self.metrics if m.classification != "pass"]
        return bool(failing) and all(m.classification == "nodata" for m in failing)


PromotionAction = Literal["promote", "increase_traffic", "hold", "rollback", "ask_human"]
"""What may happen to a canary after a step: the promotion agent's closed set of actions."""


class CanaryEvidence(BaseModel):
    """Everything the promotion agent may look at after one analysis step."""

    model_name: str
    champion_version: int | None
    challenger_version: int
    weight: float = Field(description="Share of traffic the canary has now.")
    next_weight: float | None = Field(description="The next step's share; None at the last.")
    judge: JudgeResult
    sequential_outcome: Literal["continue", "promote", "rollback"] = "continue"
    sequential_reason: str = ""
    holds: int = Field(default=0, description="How many times this step was held already.")
    max_holds: int = 2


def advances_to_full(action: str, evidence: CanaryEvidence) -> bool:
    """Whether an action would give the canary all traffic: `promote`, or `increase_traffic`
    at the last step, where the next weight is full traffic."""
    return action == "promote" or (action == "increase_traffic" and evidence.next_weight is None)


class PromotionRecord(CanaryEvidence):
    """What the ledger keeps as a canary promotion's evidence: the step's evidence, and which
    of it the decision rests on."""

    used: list[str] = Field(default_factory=list, description="The tools the decision used.")


class PastRun(BaseModel):
    """One earlier training run or tuning trial of this model."""

    family: str
    params: dict[str, float]
    score: float = Field(description="Its validation metric, the advisor evidence's `metric`.")
    seconds: float | None = None
    kind: str = Field(description="`training` (a registered fit) or `tuning-trial`.")


class TriageContext(BaseModel):
    """What the triage decision that asked for retraining said."""

    action: str
    severity: str | None = None
    drifted_features: list[str] = Field(default_factory=list)
    performance_dropped: bool = Field(
        default=False, description="The decision rests on a performance or calibration drop."
    )
    rationale: str | None = None


class SegmentCoverage(BaseModel):
    """A drifted feature's region that recent data visits far more than the training rows."""

    name: str
    training_share: float
    recent_share: float


class AdvisorEvidence(BaseModel):
    """Everything the tuning advisor may look at."""

    model_name: str
    task: Task = Field(default="binary", description="What the model predicts.")
    metric: str = Field(
        default="roc_auc",
        description="The validation metric past runs are scored by (higher is better): "
        "roc_auc (binary), accuracy (multiclass) or r2 (regression).",
    )
    past_runs: list[PastRun] = Field(default_factory=list)
    triage: TriageContext | None = None
    segments: list[SegmentCoverage] = Field(default_factory=list)


class Attribution(BaseModel):
    """Who decided, what the model itself said, what the policy would have done, and why the
    decision that stands differs from the model's."""

    configured_model: str = Field(description="The `agent_model` setting in force.")
    mode: str = Field(default="llm", description="policy, shadow or llm (`agent_mode`).")
    answered_by: str | None = Field(
        default=None,
        description="Model that gave the run's last response, as the response names it: a "
        "fallback to the policy shows as `policy`. None when the run failed.",
    )
    decided_by: str = Field(
        description="Where the decision that stands comes from: the answering model, `policy` "
        "(failed or ungrounded run, fallback, or a guardrail's replacement) or `guardrail` "
        "(a guardrail or floor changed the model's action)."
    )
    model_action: str | None = Field(
        default=None, description="The run's own answer before any guardrail; None if it failed."
    )
    model_decision: dict[str, Any] | None = None
    policy_action: str = Field(description="What the policy decides on the same evidence.")
    overridden_by: list[str] = Field(
        default_factory=list, description="Every reason the model's answer did not stand as is."
    )
    shadow_action: str | None = Field(
        default=None,
        description="In shadow mode, what the model's path would have done after guardrails.",
    )
    agreed: bool | None = Field(
        default=None,
        description="Whether the model's own action is the policy's; None when the model gave "
        "none (not asked, failed, or its provider failed over to the policy).",
    )
    tools_called: list[str] = Field(default_factory=list)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_seconds: float = 0.0
    trace_id: str | None = Field(
        default=None, description="The decision's MLflow trace (an LLM's run), when traced."
    )

    def reasons(self) -> str | None:
        return "; ".join(self.overridden_by) or None

    def markdown(self) -> str:
        """The attribution as the Prefect artifacts show it."""
        overrides = "\n".join(f"- {reason}" for reason in self.overridden_by) or "- none"
        return (
            f"Decided by **{self.decided_by}**; configured model `{self.configured_model}`, "
            f"answered by `{self.answered_by or 'nobody (the run failed)'}`.  \n"
            f"Model's own decision: {self.model_action or 'none given'}; the policy's on the "
            f"same evidence: {self.policy_action}.  \n"
            f"Tools called: {', '.join(self.tools_called) or 'none'}; {self.requests} "
            f"request(s), {self.input_tokens} input and {self.output_tokens} output tokens, "
            f"{self.latency_seconds:.2f} s."
            + (f" MLflow trace `{self.trace_id}`." if self.trace_id else "")
            + f"\n\nOverrides:\n{overrides}\n"
        )


class Outcome(BaseModel, Generic[Decision]):
    """The decision that stands, the model that answered, and why it is not the model's own."""

    decision: Decision
    agent_model: str = Field(description="The model that answered (`policy` on a fallback).")
    overridden_by: str | None = None
    attribution: Attribution | None = None
