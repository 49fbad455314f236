"""The one settings object: every path, URI and limit, read from `AGENTIC_MLOPS_*` variables.

Everything the embedded defaults write lives under `home` (default `./.mlops/`): MLflow's
SQLite database and artifacts, Prefect's home and database, data batches, reports and
quarantine. Pointing at real servers is a matter of the standard variables each tool reads:
`MLFLOW_TRACKING_URI` for MLflow and `PREFECT_API_URL` for Prefect.

The limits come in sections (`settings.canary`, `settings.triage`, ...), and a section is what
its part of the code receives: the triage policy gets `settings.triage`, the promotion policy
`settings.canary`. A section's field is read from `AGENTIC_MLOPS_<SECTION>__<FIELD>`
(`AGENTIC_MLOPS_CANARY__STEPS`) or from its older flat name (`AGENTIC_MLOPS_CANARY_STEPS`, see
`FLAT_NAMES`); the nested name wins when both are set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "AGENTIC_MLOPS_"


class Section(BaseModel):
    """One section of the settings; `FLAT_PREFIX` is how its fields' flat names begin
    (`canary` for `AGENTIC_MLOPS_CANARY_STEPS`), `UNPREFIXED` the fields whose flat name is
    the field's own."""

    FLAT_PREFIX: ClassVar[str] = ""
    UNPREFIXED: ClassVar[tuple[str, ...]] = ()


class DecisionLimits(Section):
    """What code enforces at a decision point; `RULE` says it in words to the model."""

    RULE: ClassVar[str] = ""
    FALLBACK_ACTIONS: ClassVar[tuple[str, ...]] = ()
    """What the guardrails fall back to when they refuse a decision (a section with
    `allowed_actions` must allow them)."""

    @field_validator("allowed_actions", mode="after", check_fields=False)
    @classmethod
    def _keep_the_fallbacks(cls, actions: tuple[str, ...]) -> tuple[str, ...]:
        """A decision the guardrails refuse is replaced by a safe one; that one must be allowed,
        or a refused decision would have nowhere to go."""
        missing = [a for a in cls.FALLBACK_ACTIONS if a not in actions]
        if missing:
            raise ValueError(
                f"must include {', '.join(missing)}: the guardrails fall back to "
                f"{'it' if len(missing) == 1 else 'them'} when they refuse a decision"
            )
        return actions


class AgentSettings(Section):
    """The model behind the agents and the bounds of one agent run."""

    FLAT_PREFIX: ClassVar[str] = "agent"

    model: str = Field(
        default="policy",
        description="Model behind the agents: `policy` (deterministic, no LLM) or any "
        "pydantic-ai model string such as `openai:gpt-4o`.",
    )
    mode: Literal["policy", "shadow", "llm"] | None = Field(
        default=None,
        description="policy: the policy decides, no model is asked; shadow: the model decides "
        "beside the policy on every case, the policy's decision acts, and their agreement is "
        "recorded; llm: the model's guarded decision acts. Empty: policy when agent_model is "
        "`policy`, else llm.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key for the agents' model provider, passed to the provider only "
        "(else the provider's own variable, e.g. OPENAI_API_KEY).",
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the agents' model (Ollama, vLLM, llama.cpp), "
        "e.g. http://127.0.0.1:11434/v1; a bare model name or `openai:` then uses chat "
        "completions (`openai-chat:`).",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature of the agents' model."
    )
    seed: int | None = Field(
        default=None, description="Sampling seed of the agents' model, where it supports one."
    )
    request_limit: int = Field(
        default=8, ge=2, le=100, description="Most model requests one agent run may make."
    )
    tool_calls_limit: int = Field(
        default=24, ge=1, le=500, description="Most tool calls one agent run may make."
    )
    timeout_seconds: float = Field(
        default=60.0, gt=0, description="Wall-clock limit of one agent run; then the policy."
    )
    tracing: bool = Field(
        default=True, description="Trace agent runs to MLflow (mlflow.pydantic_ai autolog)."
    )


class TriageLimits(DecisionLimits):
    """What the drift triage may do and the thresholds its guardrails hold it to."""

    FLAT_PREFIX: ClassVar[str] = "triage"
    FALLBACK_ACTIONS: ClassVar[tuple[str, ...]] = ("escalate",)
    RULE: ClassVar[str] = (
        "retrain needs labelled rows and a batch that passed quality; rollback needs a "
        "previous champion that scores at least as well on the labelled rows at hand; retrain "
        "or rollback below min_confidence goes to a person; none or monitor is raised to the "
        "policy's action (or escalate) when the batch was quarantined, the metric fell by "
        "performance_drop or more, the champion is miscalibrated (calibration_z and "
        "calibration_gap), drifted features (or the CUSUM's alarm) carry important_drift of "
        "the importance, or a trusted label-free estimate fell by performance_drop."
    )

    allowed_actions: tuple[Literal["none", "monitor", "retrain", "rollback", "escalate"], ...] = (
        Field(
            default=("none", "monitor", "retrain", "rollback", "escalate"),
            description="Actions the drift triage may take; others are replaced by the policy.",
        )
    )
    important_drift: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of feature importance on drifted features that warrants retraining.",
    )
    performance_drop: float = Field(
        default=0.03, ge=0, le=1, description="ROC AUC drop on labelled data that warrants action."
    )
    calibration_z: float = Field(
        default=4.0,
        gt=0,
        description="|z| of the move in observed vs predicted churn since training "
        "that counts as a performance problem (with the gap below).",
    )
    calibration_gap: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Smallest gap between observed and predicted churn rate that matters.",
    )
    min_confidence: float = Field(
        default=0.6, ge=0, le=1, description="Below it, a retrain or rollback goes to a person."
    )


class DriftSettings(Section):
    """How a batch is compared with its reference, and Evidently's report of it."""

    FLAT_PREFIX: ClassVar[str] = "drift"

    share_threshold: float = Field(
        default=0.5, gt=0, le=1, description="Share of drifted columns that is dataset drift."
    )
    num_threshold: float = Field(
        default=0.1,
        gt=0,
        description="Normed Wasserstein distance at which a numerical "
        "column drifted (Evidently's default).",
    )
    cat_threshold: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Jensen-Shannon distance at which a categorical "
        "column drifted (Evidently's default).",
    )
    threads: int = Field(
        default=2, ge=1, le=64, description="Threads that test columns in parallel."
    )
    report_rows: int = Field(
        default=10_000, ge=100, description="Most batch rows in Evidently's HTML report."
    )
    report_mode: Literal["after", "inline", "off"] = Field(
        default="after",
        description="Evidently's HTML report of a drift check: `after` renders it in a process "
        "of its own once the decision is made (the check does not wait), `inline` before the "
        "check returns, `off` not at all.",
    )


class SequentialSettings(Section):
    """The CUSUM that adds up small drifts over batches, per column."""

    FLAT_PREFIX: ClassVar[str] = "sequential"

    k: float = Field(
        default=0.5, ge=0, description="CUSUM allowance per batch, in standard deviations."
    )
    h: float = Field(
        default=8.0,
        gt=0,
        description="CUSUM alarm limit; 8 gives a false alarm about every "
        "19,000 drift-free batches per column.",
    )
    min_effect: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of a column's drift threshold its effect "
        "must reach before its evidence adds up.",
    )


class QualitySettings(Section):
    """The data-quality gate of a batch."""

    FLAT_PREFIX: ClassVar[str] = "quality"

    row_tolerance: float = Field(
        default=0.05, ge=0, le=1, description="Share of failing rows above which a batch fails."
    )


class PromotionLimits(DecisionLimits):
    """The canary's steps and what the promotion agent may do at each."""

    FLAT_PREFIX: ClassVar[str] = "canary"
    FALLBACK_ACTIONS: ClassVar[tuple[str, ...]] = ("hold", "rollback", "ask_human")
    RULE: ClassVar[str] = (
        "Full traffic (promote, or increase_traffic where next_weight is None) needs a passing "
        "analysis with every critical metric passing, the sequential test's outcome `promote`, "
        "and at least min_confidence; without the sequential test it holds (then asks a "
        "person); harm shown by the sequential test or a failed analysis on real data means "
        "rollback; increase_traffic needs a passing analysis; a rollback below min_confidence "
        "goes to a person."
    )

    allowed_actions: tuple[
        Literal["promote", "increase_traffic", "hold", "rollback", "ask_human"], ...
    ] = Field(
        default=("promote", "increase_traffic", "hold", "rollback", "ask_human"),
        description="Actions the canary-promotion agent may take.",
    )
    min_confidence: float = Field(
        default=0.7, ge=0, le=1, description="Below it, a promote or rollback goes to a person."
    )
    steps: list[int] = Field(
        default=[5, 25, 50, 100], description="Canary traffic percentages, in order."
    )
    step_seconds: float = Field(default=60.0, gt=0, description="Longest analysis of one step.")
    min_samples: int = Field(
        default=200, ge=10, description="Requests per variant before a step can be judged."
    )
    approval_timeout_seconds: int = Field(
        default=3600, ge=1, description="How long a person has to answer; then rollback."
    )
    poll_seconds: float = Field(
        default=2.0, gt=0, description="How often a step re-reads metrics and the approval."
    )


class ServingSettings(Section):
    """Where versions are served, and the router's request log."""

    FLAT_PREFIX: ClassVar[str] = "serving"

    backend: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where versions are served and traffic is split: local (the router and "
        "model servers as processes on loopback) or kubernetes (stable and canary Deployments, "
        "an HTTPRoute's weights or the pods' share).",
    )
    log_enabled: bool = Field(
        default=True, description="The router logs every answered row and label it receives."
    )
    standby: bool = Field(
        default=True,
        description="The local backend keeps one model server started ahead, its libraries "
        "imported, so that serving a new version (a canary) takes about a second instead of "
        "a new process's start (9 s on the 2-core machine); it costs one idle process "
        "(about 350 MB).",
    )
    log_dir: Path | None = Field(
        default=None, description="Folder of the router's log; empty: home/serving/<model>/log."
    )
    log_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1_024, description="Size at which a log file is rotated."
    )
    log_files: int = Field(
        default=8, ge=1, le=10_000, description="Files kept per log (rows, labels); oldest go."
    )
    log_flush_seconds: float = Field(
        default=1.0, gt=0, description="How often the router writes its buffered log lines."
    )


class KubernetesSettings(Section):
    """The kubernetes serving backend."""

    FLAT_PREFIX: ClassVar[str] = "kubernetes"

    context: str | None = Field(
        default=None,
        description="Kubeconfig context of the kubernetes backend (KUBECONFIG, ~/.kube/config); "
        "empty: the current one, or the pod's service account inside a cluster.",
    )
    namespace: str = Field(
        default="default", description="Namespace of the model's Deployments and Services."
    )
    image: str = Field(
        default="agentic-mlops-model-server:0.1.0",
        description="Model-server image the pods run (deployments/kubernetes/Dockerfile).",
    )
    tracking_uri: str = Field(
        default="http://mlflow:5000",
        description="MLflow tracking URI as the pods reach it (not the one of this machine).",
    )
    replicas: int = Field(
        default=2, ge=1, description="Pods of the stable track (without a Gateway: of both)."
    )
    gateway: str | None = Field(
        default=None,
        description="Gateway whose HTTPRoute splits the traffic by weight; empty: the split "
        "follows the pods behind one Service.",
    )
    public_url: str | None = Field(
        default=None, description="Where clients reach the model (the Gateway's address)."
    )
    ready_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait for a Deployment's pods to be ready."
    )
    poll_seconds: float = Field(
        default=2.0, gt=0, description="Pause between two reads of a Deployment's status."
    )


class TuneLimits(DecisionLimits):
    """The searches a retraining runs and the budgets the tuning advisor's proposals stay in.

    A default above its ceiling is lowered to it, and a floor above its default to that, so
    that the fields are the limits in force.
    """

    FLAT_PREFIX: ClassVar[str] = "tune"
    UNPREFIXED: ClassVar[tuple[str, ...]] = ("synthesis_enabled", "synthesis_max_share")
    RULE: ClassVar[str] = (
        "A proposal above max_trials_ceiling or time_budget_ceiling_seconds, or naming a "
        "segment not offered, is replaced by the policy's; fewer than min_trials or less than "
        "min_time_budget_seconds is raised to them; every range must lie inside its "
        "parameter's bounds; when synthesis_enabled, synthesis is switched on for every "
        "under-covered segment."
    )

    num_cpus: int = Field(
        default=2, ge=1, le=1_024, description="CPUs of the local Ray runtime a search starts."
    )
    max_trials: int = Field(
        default=12, ge=1, description="Trials of a search unless the advisor proposes fewer."
    )
    max_trials_ceiling: int = Field(
        default=64, ge=1, description="Most trials any search may run, whatever the advisor says."
    )
    min_trials: int = Field(
        default=4,
        ge=1,
        description="Fewest trials an advisor may propose (at most max_trials); fewer "
        "are raised to it.",
    )
    min_time_budget_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Shortest search an advisor may propose (at most the default budget); "
        "shorter is raised to it.",
    )
    time_budget_seconds: float = Field(
        default=120.0, gt=0, description="Default wall-clock budget of a search."
    )
    time_budget_ceiling_seconds: float = Field(
        default=1_800.0, gt=0, description="Longest search any advisor may ask for."
    )
    search_algorithm: Literal["random", "optuna"] = Field(
        default="optuna", description="Ray Tune search algorithm: random sampling or Optuna TPE."
    )
    grace_steps: int = Field(
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

    @model_validator(mode="after")
    def _within_ceilings(self) -> TuneLimits:
        self.max_trials = min(self.max_trials, self.max_trials_ceiling)
        self.min_trials = min(self.min_trials, self.max_trials)
        self.time_budget_seconds = min(self.time_budget_seconds, self.time_budget_ceiling_seconds)
        self.min_time_budget_seconds = min(self.min_time_budget_seconds, self.time_budget_seconds)
        return self


class McpSettings(Section):
    """The MCP server, and the extra MCP servers the agents mount."""

    FLAT_PREFIX: ClassVar[str] = "mcp"

    token: SecretStr | None = Field(
        default=None, description="Bearer token the MCP server's HTTP transport requires."
    )
    act_enabled: bool = Field(
        default=False,
        description="Expose the MCP act tools (drift check, retrain, canary, promote, rollback).",
    )
    host: str = Field(default="127.0.0.1", description="Address the MCP HTTP transport binds.")
    port: int = Field(default=8765, ge=1, le=65_535, description="Port of the MCP HTTP transport.")
    servers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra MCP servers the agents mount as toolsets (JSON list of "
        "{name, command, args, url, read_only}); read-only unless told otherwise.",
    )


class MlflowSettings(Section):
    """Where MLflow is, and how its transient failures are retried."""

    FLAT_PREFIX: ClassVar[str] = "mlflow"

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; else MLFLOW_TRACKING_URI, else SQLite in home.",
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a failed MLflow call, with backoff."
    )
    retry_delay_seconds: float = Field(
        default=1.0, ge=0, description="First backoff delay between MLflow retries (doubles)."
    )


class MonitorSettings(Section):
    """The monitor's windows, trend tests and hard limits."""

    FLAT_PREFIX: ClassVar[str] = "monitor"

    window_rows: int = Field(
        default=5_000, ge=50, description="Most logged rows one monitor run looks at."
    )
    window_seconds: float = Field(
        default=300.0, gt=0, description="Window of a first run's Prometheus metrics."
    )
    min_rows: int = Field(
        default=200, ge=10, description="Fewest rows for prediction drift and estimates."
    )
    min_labels: int = Field(
        default=100, ge=10, description="Fewest labels for online accuracy and calibration."
    )
    history_points: int = Field(
        default=12, ge=3, description="Monitor runs a trend is fitted over."
    )
    trend_min_points: int = Field(
        default=6, ge=3, description="Fewest points a trend is tested on."
    )
    trend_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="One-sided p-value under which a trend is real."
    )
    trend_horizon_seconds: float = Field(
        default=3_600.0, gt=0, description="Flag a trend projected to cross its limit this soon."
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Hard limit of the share of failed model calls."
    )
    max_latency_ms: float = Field(
        default=50.0, gt=0, description="Hard limit of the 95th percentile model-call latency."
    )
    max_roc_auc_drop: float = Field(
        default=0.05, ge=0, le=1, description="Hard limit of the ROC AUC drop from training."
    )
    max_brier_rise: float = Field(
        default=0.02, ge=0, le=1, description="Hard limit of the Brier score rise from training."
    )
    max_mae_rise: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="Hard limit of a regression model's mean absolute error on labelled rows, "
        "as a share above its training holdout's MAE (0.2: 20% higher).",
    )
    max_ece: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Calibration error beyond which a label-free estimate is not trusted.",
    )
    calibration_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="p-value under which scores are miscalibrated."
    )
    batches_kept: int = Field(
        default=48, ge=1, description="Batch files of recent rows the monitor keeps."
    )


class RetrainSettings(Section):
    """The team's own training deployments a `retrain` decision runs."""

    FLAT_PREFIX: ClassVar[str] = "retrain"

    deployment: str | None = Field(
        default=None,
        description="The team's own training deployment (`flow/deployment`) that a `retrain` "
        "decision runs instead of our recipe, for every model without one of its own below.",
    )
    deployments: dict[str, str] = Field(
        default_factory=dict,
        description="Per model, the team's own training deployment (JSON map of registered "
        "model name to `flow/deployment`); wins over retrain_deployment.",
    )
    deployment_timeout_seconds: float = Field(
        default=3_600.0,
        gt=0,
        description="Longest wait for the team's training run before its outcome is left open.",
    )


class FlatEnvNames(EnvSettingsSource):
    """The flat variable names (`AGENTIC_MLOPS_CANARY_STEPS`), read into their sections.

    Ranked below the nested names, so `AGENTIC_MLOPS_CANARY__STEPS` wins when both are set.
    """

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for flat, (section, name) in FLAT_NAMES.items():
            variable = f"{ENV_PREFIX}{flat.upper()}"
            raw = self.env_vars.get(self._apply_case_sensitive(variable))
            if raw is None:
                continue
            field = SECTIONS[section].model_fields[name]
            try:
                value = self.prepare_field_value(flat, field, raw, False)
            except ValueError as error:
                raise SettingsError(f"{variable}: {raw!r} is not valid JSON") from error
            values.setdefault(section, {})[name] = value
        return values


class Settings(BaseSettings):
    """Where agentic-mlops keeps its state and which limits it works within."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(
        default=Path(".mlops"),
        description="Home directory of the embedded defaults; every local file lives below it.",
    )
    experiment_name: str = Field(
        default="agentic-mlops", description="MLflow experiment that every run is logged to."
    )
    model_name: str = Field(
        default="churn", description="Registered model name in the MLflow model registry."
    )
    target: str = Field(default="churn", description="Label column of the training data.")
    seed: int = Field(default=42, description="Seed for data generation and model fitting.")
    approval_mode: Literal["all", "risky", "none"] = Field(
        default="risky",
        description="Which decisions wait for a person: all (every retrain, rollback and "
        "promotion), risky (a promotion or rollback below its confidence threshold), none "
        "(nobody is asked: an unclear canary rolls back).",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Read canary metrics from this Prometheus, not the router (required by the "
        "kubernetes backend, where no router of ours sees the traffic).",
    )
    agents: AgentSettings = Field(default_factory=AgentSettings)
    triage: TriageLimits = Field(default_factory=TriageLimits)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    sequential: SequentialSettings = Field(default_factory=SequentialSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    canary: PromotionLimits = Field(default_factory=PromotionLimits)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    tune: TuneLimits = Field(default_factory=TuneLimits)
    mcp: McpSettings = Field(default_factory=McpSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        flat = FlatEnvNames(settings_cls)
        return init_settings, env_settings, flat, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _flat_names_into_sections(cls, data: Any) -> Any:
        """`Settings(canary_steps=[5, 100])` sets `canary.steps`, as the flat variable does."""
        if not isinstance(data, dict):
            return data
        return into_sections(data)

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with `update` applied; flat names (`agent_tracing`) update their section."""
        if not update:
            return super().model_copy(deep=deep)
        nested = into_sections(update)
        for section in SECTIONS:
            if isinstance(nested.get(section), dict):
                nested[section] = getattr(self, section).model_copy(update=nested[section])
        return super().model_copy(update=nested, deep=deep)

    def for_model(self, model_name: str | None) -> Settings:
        """These settings for another registered model (the same home, limits and agents);
        unchanged when no name is given."""
        if not model_name or model_name == self.model_name:
            return self
        return self.model_copy(update={"model_name": model_name})

    def team_retrain_deployment(self) -> str | None:
        """The team's training deployment for this model, if one is configured."""
        return self.retrain.deployments.get(self.model_name) or self.retrain.deployment

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
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
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


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}
"""Each section of the settings by its attribute name."""

FLAT_NAMES: dict[str, tuple[str, str]] = {
    (name if name in section.UNPREFIXED else f"{section.FLAT_PREFIX}_{name}"): (attribute, name)
    for attribute, section in SECTIONS.items()
    for name in section.model_fields
}
"""Each field's flat name (`canary_steps`, as in `AGENTIC_MLOPS_CANARY_STEPS`) and where it
lives now (`("canary", "steps")`)."""


def into_sections(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every flat name moved into its section (a flat name wins over the same
    field given in the section)."""
    nested = {name: value for name, value in values.items() if name not in FLAT_NAMES}
    for flat, value in values.items():
        if flat in FLAT_NAMES:
            section, name = FLAT_NAMES[flat]
            given = nested.get(section)
            if isinstance(given, BaseModel):
                given = {field: getattr(given, field) for field in type(given).model_fields}
            nested[section] = {**(given or {}), name: value}
    return nested


def variable_names(loc: tuple[int | str, ...]) -> str:
    """The variable that sets the value at `loc`, nested and flat: `AGENTIC_MLOPS_CANARY__STEPS
    (or AGENTIC_MLOPS_CANARY_STEPS)`."""
    path = [str(part) for part in loc[:2]]
    nested = ENV_PREFIX + "__".join(path).upper()
    flat = next((f for f, where in FLAT_NAMES.items() if list(where) == path), None)
    return nested if flat is None else f"{nested} (or {ENV_PREFIX}{flat.upper()})"


def settings_problem(error: ValidationError | SettingsError) -> str:
    """What is wrong with the settings, on one line, naming the variables to change."""
    if isinstance(error, SettingsError):
        field = re.search(r'field "(\w+)"', str(error))
        if field is None:
            return f"settings: {error}"
        start = f"{ENV_PREFIX}{field.group(1)}".upper()
        given = sorted(
            name
            for name in os.environ
            if name.upper() == start or name.upper().startswith(start + "__")
        )
        if len(given) == 1:
            return f"settings: {given[0]}: not valid JSON"
        return f"settings: one of {', '.join(given) or start} is not valid JSON"
    return "settings: " + "; ".join(
        f"{variable_names(e['loc'])}: {e['msg']}" for e in error.errors()
    )


def load_settings() -> Settings:
    """Read the settings from the environment as it is now."""
    return Settings()
