"""The one settings object: every path, URI and limit, read from `AGENTIC_MLOPS_*` variables.

Everything the embedded defaults write lives under `home` (default `./.mlops/`): MLflow's
SQLite database and artifacts, Prefect's home and database, data batches, reports and
quarantine. Pointing at real servers is a matter of the standard variables each tool reads:
`MLFLOW_TRACKING_URI` for MLflow and `PREFECT_API_URL` for Prefect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

FALLBACK_ACTIONS = {
    "triage_allowed_actions": ("escalate",),
    "canary_allowed_actions": ("hold", "rollback", "ask_human"),
}
"""What each agent's guardrails fall back to when they refuse a decision."""


class Settings(BaseSettings):
    """Where agentic-mlops keeps its state and which limits it works within."""

    model_config = SettingsConfigDict(env_prefix="AGENTIC_MLOPS_", extra="ignore")

    home: Path = Field(
        default=Path(".mlops"),
        description="Home directory of the embedded defaults; every local file lives below it.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; else MLFLOW_TRACKING_URI, else SQLite in home.",
    )
    experiment_name: str = Field(
        default="agentic-mlops", description="MLflow experiment that every run is logged to."
    )
    model_name: str = Field(
        default="churn", description="Registered model name in the MLflow model registry."
    )
    target: str = Field(default="churn", description="Label column of the training data.")
    agent_model: str = Field(
        default="policy",
        description="Model behind the agents: `policy` (deterministic, no LLM) or any "
        "pydantic-ai model string such as `openai:gpt-4o`.",
    )
    agent_mode: Literal["policy", "shadow", "llm"] | None = Field(
        default=None,
        description="policy: the policy decides, no model is asked; shadow: the model decides "
        "beside the policy on every case, the policy's decision acts, and their agreement is "
        "recorded; llm: the model's guarded decision acts. Empty: policy when agent_model is "
        "`policy`, else llm.",
    )
    agent_api_key: SecretStr | None = Field(
        default=None,
        description="API key for the agents' model provider, passed to the provider only "
        "(else the provider's own variable, e.g. OPENAI_API_KEY).",
    )
    agent_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the agents' model (Ollama, vLLM, llama.cpp), "
        "e.g. http://127.0.0.1:11434/v1; a bare model name or `openai:` then uses chat "
        "completions (`openai-chat:`).",
    )
    agent_temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature of the agents' model."
    )
    agent_seed: int | None = Field(
        default=None, description="Sampling seed of the agents' model, where it supports one."
    )
    agent_request_limit: int = Field(
        default=8, ge=2, le=100, description="Most model requests one agent run may make."
    )
    agent_tool_calls_limit: int = Field(
        default=24, ge=1, le=500, description="Most tool calls one agent run may make."
    )
    agent_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Wall-clock limit of one agent run; then the policy."
    )
    agent_tracing: bool = Field(
        default=True, description="Trace agent runs to MLflow (mlflow.pydantic_ai autolog)."
    )
    triage_allowed_actions: list[Literal["none", "monitor", "retrain", "rollback", "escalate"]] = (
        Field(
            default=["none", "monitor", "retrain", "rollback", "escalate"],
            description="Actions the drift triage may take; others are replaced by the policy.",
        )
    )
    triage_important_drift: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of feature importance on drifted features that warrants retraining.",
    )
    triage_performance_drop: float = Field(
        default=0.03, ge=0, le=1, description="ROC AUC drop on labelled data that warrants action."
    )
    triage_calibration_z: float = Field(
        default=4.0,
        gt=0,
        description="|z| of the move in observed vs predicted churn since training "
        "that counts as a performance problem (with the gap below).",
    )
    triage_calibration_gap: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Smallest gap between observed and predicted churn rate that matters.",
    )
    triage_min_confidence: float = Field(
        default=0.6, ge=0, le=1, description="Below it, a retrain or rollback goes to a person."
    )
    drift_share_threshold: float = Field(
        default=0.5, gt=0, le=1, description="Share of drifted columns that is dataset drift."
    )
    drift_num_threshold: float = Field(
        default=0.1,
        gt=0,
        description="Normed Wasserstein distance at which a numerical "
        "column drifted (Evidently's default).",
    )
    drift_cat_threshold: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Jensen-Shannon distance at which a categorical "
        "column drifted (Evidently's default).",
    )
    drift_threads: int = Field(
        default=2, ge=1, le=64, description="Threads that test columns in parallel."
    )
    drift_report_rows: int = Field(
        default=10_000, ge=100, description="Most batch rows in Evidently's HTML report."
    )
    drift_report_mode: Literal["after", "inline", "off"] = Field(
        default="after",
        description="Evidently's HTML report of a drift check: `after` renders it in a process "
        "of its own once the decision is made (the check does not wait), `inline` before the "
        "check returns, `off` not at all.",
    )
    sequential_k: float = Field(
        default=0.5, ge=0, description="CUSUM allowance per batch, in standard deviations."
    )
    sequential_h: float = Field(
        default=8.0,
        gt=0,
        description="CUSUM alarm limit; 8 gives a false alarm about every "
        "19,000 drift-free batches per column.",
    )
    sequential_min_effect: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of a column's drift threshold its effect "
        "must reach before its evidence adds up.",
    )
    quality_row_tolerance: float = Field(
        default=0.05, ge=0, le=1, description="Share of failing rows above which a batch fails."
    )
    canary_allowed_actions: list[
        Literal["promote", "increase_traffic", "hold", "rollback", "ask_human"]
    ] = Field(
        default=["promote", "increase_traffic", "hold", "rollback", "ask_human"],
        description="Actions the canary-promotion agent may take.",
    )
    canary_min_confidence: float = Field(
        default=0.7, ge=0, le=1, description="Below it, a promote or rollback goes to a person."
    )
    canary_steps: list[int] = Field(
        default=[5, 25, 50, 100], description="Canary traffic percentages, in order."
    )
    canary_step_seconds: float = Field(
        default=60.0, gt=0, description="Longest analysis of one step."
    )
    canary_min_samples: int = Field(
        default=200, ge=10, description="Requests per variant before a step can be judged."
    )
    canary_approval_timeout_seconds: int = Field(
        default=3600, ge=1, description="How long a person has to answer; then rollback."
    )
    canary_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often a step re-reads metrics and the approval."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Read canary metrics from this Prometheus, not the router (required by the "
        "kubernetes backend, where no router of ours sees the traffic).",
    )
    serving_backend: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where versions are served and traffic is split: local (the router and "
        "model servers as processes on loopback) or kubernetes (stable and canary Deployments, "
        "an HTTPRoute's weights or the pods' share).",
    )
    kubernetes_context: str | None = Field(
        default=None,
        description="Kubeconfig context of the kubernetes backend (KUBECONFIG, ~/.kube/config); "
        "empty: the current one, or the pod's service account inside a cluster.",
    )
    kubernetes_namespace: str = Field(
        default="default", description="Namespace of the model's Deployments and Services."
    )
    kubernetes_image: str = Field(
        default="agentic-mlops-model-server:0.1.0",
        description="Model-server image the pods run (deployments/kubernetes/Dockerfile).",
    )
    kubernetes_tracking_uri: str = Field(
        default="http://mlflow:5000",
        description="MLflow tracking URI as the pods reach it (not the one of this machine).",
    )
    kubernetes_replicas: int = Field(
        default=2, ge=1, description="Pods of the stable track (without a Gateway: of both)."
    )
    kubernetes_gateway: str | None = Field(
        default=None,
        description="Gateway whose HTTPRoute splits the traffic by weight; empty: the split "
        "follows the pods behind one Service.",
    )
    kubernetes_public_url: str | None = Field(
        default=None, description="Where clients reach the model (the Gateway's address)."
    )
    kubernetes_ready_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait for a Deployment's pods to be ready."
    )
    kubernetes_poll_seconds: float = Field(
        default=2.0, gt=0, description="Pause between two reads of a Deployment's status."
    )
    approval_mode: Literal["all", "risky", "none"] = Field(
        default="risky",
        description="Which decisions wait for a person: all (every retrain, rollback and "
        "promotion), risky (a promotion or rollback below its confidence threshold), none "
        "(nobody is asked: an unclear canary rolls back).",
    )
    tune_num_cpus: int = Field(
        default=2, ge=1, le=1_024, description="CPUs of the local Ray runtime a search starts."
    )
    tune_max_trials: int = Field(
        default=12, ge=1, description="Trials of a search unless the advisor proposes fewer."
    )
    tune_max_trials_ceiling: int = Field(
        default=64, ge=1, description="Most trials any search may run, whatever the advisor says."
    )
    tune_min_trials: int = Field(
        default=4,
        ge=1,
        description="Fewest trials an advisor may propose (at most tune_max_trials); fewer "
        "are raised to it.",
    )
    tune_min_time_budget_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Shortest search an advisor may propose (at most the default budget); "
        "shorter is raised to it.",
    )
    tune_time_budget_seconds: float = Field(
        default=120.0, gt=0, description="Default wall-clock budget of a search."
    )
    tune_time_budget_ceiling_seconds: float = Field(
        default=1_800.0, gt=0, description="Longest search any advisor may ask for."
    )
    tune_search_algorithm: Literal["random", "optuna"] = Field(
        default="optuna", description="Ray Tune search algorithm: random sampling or Optuna TPE."
    )
    tune_grace_steps: int = Field(
        default=2, ge=1, description="ASHA: steps every trial runs before it can be stopped."
    )
    synthesis_enabled: bool = Field(
        default=False,
        description="Add SMOTE-NC rows for drifted, under-represented segments to every "
        "retraining (otherwise only when the triage decision asks for it).",
    )
    synthesis_max_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Most synthetic rows, as a share of real training rows.",
    )
    mcp_token: SecretStr | None = Field(
        default=None, description="Bearer token the MCP server's HTTP transport requires."
    )
    mcp_act_enabled: bool = Field(
        default=False,
        description="Expose the MCP act tools (drift check, retrain, canary, promote, rollback).",
    )
    mcp_host: str = Field(default="127.0.0.1", description="Address the MCP HTTP transport binds.")
    mcp_port: int = Field(
        default=8765, ge=1, le=65_535, description="Port of the MCP HTTP transport."
    )
    mcp_servers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra MCP servers the agents mount as toolsets (JSON list of "
        "{name, command, args, url, read_only}); read-only unless told otherwise.",
    )
    seed: int = Field(default=42, description="Seed for data generation and model fitting.")
    mlflow_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a failed MLflow call, with backoff."
    )
    mlflow_retry_delay_seconds: float = Field(
        default=1.0, ge=0, description="First backoff delay between MLflow retries (doubles)."
    )
    serving_log_enabled: bool = Field(
        default=True, description="The router logs every answered row and label it receives."
    )
    serving_log_dir: Path | None = Field(
        default=None, description="Folder of the router's log; empty: home/serving/<model>/log."
    )
    serving_log_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1_024, description="Size at which a log file is rotated."
    )
    serving_log_files: int = Field(
        default=8, ge=1, le=10_000, description="Files kept per log (rows, labels); oldest go."
    )
    serving_log_flush_seconds: float = Field(
        default=1.0, gt=0, description="How often the router writes its buffered log lines."
    )
    monitor_window_rows: int = Field(
        default=5_000, ge=50, description="Most logged rows one monitor run looks at."
    )
    monitor_window_seconds: float = Field(
        default=300.0, gt=0, description="Window of a first run's Prometheus metrics."
    )
    monitor_min_rows: int = Field(
        default=200, ge=10, description="Fewest rows for prediction drift and estimates."
    )
    monitor_min_labels: int = Field(
        default=100, ge=10, description="Fewest labels for online accuracy and calibration."
    )
    monitor_history_points: int = Field(
        default=12, ge=3, description="Monitor runs a trend is fitted over."
    )
    monitor_trend_min_points: int = Field(
        default=6, ge=3, description="Fewest points a trend is tested on."
    )
    monitor_trend_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="One-sided p-value under which a trend is real."
    )
    monitor_trend_horizon_seconds: float = Field(
        default=3_600.0, gt=0, description="Flag a trend projected to cross its limit this soon."
    )
    monitor_max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Hard limit of the share of failed model calls."
    )
    monitor_max_latency_ms: float = Field(
        default=50.0, gt=0, description="Hard limit of the 95th percentile model-call latency."
    )
    monitor_max_roc_auc_drop: float = Field(
        default=0.05, ge=0, le=1, description="Hard limit of the ROC AUC drop from training."
    )
    monitor_max_brier_rise: float = Field(
        default=0.02, ge=0, le=1, description="Hard limit of the Brier score rise from training."
    )
    monitor_max_ece: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Calibration error beyond which a label-free estimate is not trusted.",
    )
    monitor_calibration_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="p-value under which scores are miscalibrated."
    )
    monitor_batches_kept: int = Field(
        default=48, ge=1, description="Batch files of recent rows the monitor keeps."
    )
    retrain_deployment: str | None = Field(
        default=None,
        description="The team's own training deployment (`flow/deployment`) that a `retrain` "
        "decision runs instead of our recipe, for every model without one of its own below.",
    )
    retrain_deployments: dict[str, str] = Field(
        default_factory=dict,
        description="Per model, the team's own training deployment (JSON map of registered "
        "model name to `flow/deployment`); wins over retrain_deployment.",
    )
    retrain_deployment_timeout_seconds: float = Field(
        default=3_600.0,
        gt=0,
        description="Longest wait for the team's training run before its outcome is left open.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("triage_allowed_actions", "canary_allowed_actions", mode="after")
    @classmethod
    def _keep_the_fallbacks(cls, actions: list[str], info: ValidationInfo) -> list[str]:
        """A decision the guardrails refuse is replaced by a safe one; that one must be allowed,
        or a refused decision would have nowhere to go."""
        missing = [a for a in FALLBACK_ACTIONS[info.field_name] if a not in actions]
        if missing:
            raise ValueError(
                f"must include {', '.join(missing)}: the guardrails fall back to "
                f"{'it' if len(missing) == 1 else 'them'} when they refuse a decision"
            )
        return actions

    def for_model(self, model_name: str | None) -> Settings:
        """These settings for another registered model (the same home, limits and agents);
        unchanged when no name is given."""
        if not model_name or model_name == self.model_name:
            return self
        return self.model_copy(update={"model_name": model_name})

    def team_retrain_deployment(self) -> str | None:
        """The team's training deployment for this model, if one is configured."""
        return self.retrain_deployments.get(self.model_name) or self.retrain_deployment

    @property
    def serving_dir(self) -> Path:
        """This model's serving processes, router state, promotion journal and request log."""
        return self.home / "serving" / self.model_name

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: ours, the standard variable, or local SQLite."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.mlflow_db}"

    def uses_embedded_mlflow(self) -> bool:
        return self.tracking_uri() == f"sqlite:///{self.mlflow_db}"

    def ensure_dirs(self) -> None:
        for folder in (
            self.home,
            self.artifacts_dir,
            self.prefect_home,
            self.data_dir,
            self.reports_dir,
            self.quarantine_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)


def load_settings() -> Settings:
    """Read the settings from the environment as it is now."""
    return Settings()
