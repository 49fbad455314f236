"""Typed results that flows return and the CLI prints: one shape per phase."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agentic_mlops.decisions import ColumnDrift, TriageAction, TriageSeverity


class TrainingResult(BaseModel):
    """What a training run produced and where it was registered."""

    model_name: str = Field(description="Registered model name.")
    version: int = Field(description="Model version registered by this run.")
    aliases: list[str] = Field(description="Aliases this version holds after the run.")
    run_id: str = Field(description="MLflow run id.")
    experiment_id: str = Field(description="MLflow experiment id.")
    metrics: dict[str, float] = Field(description="Holdout metrics.")
    data_source: str = Field(description="Where the training data came from.")
    dataset_digest: str = Field(description="MLflow dataset digest of the training rows.")
    rows: int = Field(description="Rows used for training and holdout together.")


class QualitySummary(BaseModel):
    """The data-quality verdict as the CLI prints it."""

    passed: bool
    batch_failed: bool = False
    failures: list[str] = Field(default_factory=list)
    failing_rows: int = 0


class DecisionSummary(BaseModel):
    """The triage decision that stood."""

    action: TriageAction
    severity: TriageSeverity
    confidence: float
    drifted_features: list[str]
    rationale: str
    agent_model: str = Field(default="policy", description="The model that answered.")
    decided_by: str = Field(
        default="policy",
        description="Where the decision that stands comes from: the answering model, "
        "`policy` or `guardrail`.",
    )
    model_action: TriageAction | None = Field(
        default=None, description="The model's own answer before any guardrail."
    )
    policy_action: TriageAction | None = Field(
        default=None, description="What the policy decides on the same evidence."
    )
    overridden_by: str | None = None


class PerformanceSummary(BaseModel):
    """The champion's score on the batch's labels beside its training-time figure."""

    metric: str = "roc_auc"
    reference: float = Field(description="On the training holdout.")
    current: float = Field(description="On this batch's labels.")
    rows: int


class DriftCheckResult(BaseModel):
    """What one drift check found, decided and did."""

    model_name: str
    model_version: int | None = Field(default=None, description="The champion checked against.")
    adopted: bool = Field(
        default=False, description="The champion was trained outside agentic-mlops and adopted."
    )
    batch_id: str
    quality: QualitySummary
    dataset_drift: bool
    drift_share: float
    columns: dict[str, ColumnDrift]
    skipped_columns: dict[str, str] = Field(default_factory=dict)
    prediction_drift: bool | None = None
    sequential_alarm: bool = False
    decision: DecisionSummary
    actions_taken: list[str] = Field(default_factory=list)
    ledger_id: str | None = None
    quarantined: str | None = None
    report_path: str | None = None
    report_link: str | None = Field(
        default=None, description="Markdown link to the Evidently report logged to MLflow."
    )
    performance: PerformanceSummary | None = None
    retrained_version: int | None = None

    def cli_json(self) -> dict:
        """The documented `drift-check --json` object."""
        return {
            "quality": {"passed": self.quality.passed, "failures": self.quality.failures},
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "columns": {
                name: column.model_dump(include={"drifted", "test", "score"})
                for name, column in self.columns.items()
            },
            "decision": self.decision.model_dump(
                include={
                    "action",
                    "severity",
                    "confidence",
                    "drifted_features",
                    "rationale",
                    "decided_by",
                    "model_action",
                    "policy_action",
                    "overridden_by",
                }
            ),
        }


class AdoptionResult(BaseModel):
    """What adopting a registered model stored, and whether it became the champion."""

    model_name: str = Field(description="Registered model name.")
    version: int = Field(description="The adopted version.")
    task: str = Field(description="binary, multiclass or regression.")
    score: str = Field(description="What the model's score is (probability, label, prediction).")
    metrics: dict[str, float] = Field(description="Metrics on the adoption table's labels.")
    feature_importance: dict[str, float] = Field(
        description="Permutation importance (drop of the primary metric), most important first."
    )
    rows: int = Field(description="Rows of the adoption table.")
    reference_dir: str = Field(description="Where the reference is stored under home.")
    champion: int = Field(description="The champion after adoption.")
    became_champion: bool = Field(description="Whether this adoption set the champion alias.")


class LifecycleResult(BaseModel):
    """What one turn of the loop saw, decided and did."""

    model_name: str
    batch: str
    decision: str
    ledger_id: str | None
    retrained_version: int | None = None
    beat_champion: bool | None = None
    canary: str | None = None
    champion: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    followed_up: dict[str, bool] = Field(default_factory=dict)
    steps: list[str] = Field(default_factory=list)
    plot_path: str | None = None
