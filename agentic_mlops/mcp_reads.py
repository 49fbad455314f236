"""What the MCP server's read tools answer: the registry, runs, drift, canary, ledger and flows.

Each function here is one read tool. Its docstring is the tool's description (the assistant
reads it), its annotated arguments are the tool's input schema and its return model the
output schema. Every function reads the settings in force when it is called, changes nothing,
and raises `ToolFailure` (a code the caller can branch on, a message and a hint) for anything
the caller can fix: an unknown model, version, run, decision or flow run, or a bad time filter.
MLflow is read through `tasks.registry`'s client and the decision ledger through
`tasks.ledger`; Prefect through its API client.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from agentic_mlops.decisions import ColumnDrift, TriageRecord
from agentic_mlops.settings import Settings, load_settings
from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.canary_steps import CanaryStep
from agentic_mlops.tasks.reports import mlflow_run_link

DecisionPoint = Literal["drift_triage", "canary_promotion", "tuning_advisor"]
DecisionAction = Literal[
    "none",
    "monitor",
    "retrain",
    "rollback",
    "escalate",
    "promote",
    "increase_traffic",
    "hold",
    "ask_human",
    "search",
    "search+synthesize",
]
FlowRunStateType = Literal[
    "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLING", "CANCELLED"
]
MAX_FLOW_RUNS_READ = 200
"""Runs read to find those of one model (the most the Prefect API answers at once): Prefect
filters runs by flow, not by parameter, so one model's are found among the newest 200."""
ModelName = Annotated[
    str | None,
    Field(description="Registered model name; empty means the configured model (settings)."),
]
TimeFilter = Annotated[
    str | None,
    Field(
        description="ISO 8601 date or time (2026-05-01, 2026-05-01T12:00:00Z; no zone means "
        "UTC) or a duration back from now: 30m, 24h, 7d, 2w."
    ),
]
TEXT_ARTIFACTS = (".json", ".txt", ".md", ".yaml", ".yml", ".csv", "MLmodel")
MAX_TEXT_BYTES = 256_000
_DURATION = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ToolFailure(Exception):
    """A tool call that cannot be answered as asked: what went wrong and what to do instead."""

    def __init__(self, code: str, message: str, hint: str = "", **data: Any):
        super().__init__(message)
        self.code, self.message, self.hint, self.data = code, message, hint, data

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint, **self.data}


def iso_from_millis(millis: int | None) -> str | None:
    if millis is None:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="seconds")


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment else None


def parse_time(value: str | None, argument: str) -> str | None:
    """A time filter as the ledger writes times (UTC ISO 8601, seconds), or None.

    Raises:
        ToolFailure: `bad_time_filter` when the value is neither a date, a time nor a duration.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    duration = _DURATION.match(text.lower())
    if duration:
        delta = dt.timedelta(**{_UNITS[duration[2]]: int(duration[1])})
        return iso(dt.datetime.now(dt.UTC) - delta)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ToolFailure(
            "bad_time_filter",
            f"{argument}={value!r} is neither an ISO 8601 date or time nor a duration",
            "use 2026-05-01, 2026-05-01T12:00:00Z, or a duration back from now: 30m, 24h, 7d",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return iso(moment)


def _mlflow_error_code(error: Exception) -> str | None:
    return getattr(error, "error_code", None)


def registered_model(name: str | None, settings: Settings) -> Any:
    """The MLflow registered model of that name (the configured one when empty).

    Raises:
        ToolFailure: `unknown_model`, naming the models that exist.
    """
    from mlflow.exceptions import MlflowException

    from agentic_mlops.tasks import registry

    name = name or settings.model_name
    client = registry.client(settings)
    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if _mlflow_error_code(error) != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = [model.name for model in client.search_registered_models(max_results=100)]
    raise ToolFailure(
        "unknown_model",
        f"no registered model named {name!r}",
        f"registered models: {', '.join(names)}; call list_models"
        if names
        else "no model is registered yet: train one with `agentic-mlops train`",
    )


def _versions(name: str, settings: Settings) -> list[Any]:
    from agentic_mlops.tasks import registry

    if "'" in name:
        raise ToolFailure(
            "bad_argument", f"model name {name!r} contains a quote", "call list_models"
        )
    found = registry.client(settings).search_model_versions(f"name='{name}'", max_results=1_000)
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def known_version(name: str, version: int, settings: Settings) -> Any:
    """The model version, or `unknown_version` naming the versions that exist."""
    versions = _versions(name, settings)
    for candidate in versions:
        if int(candidate.version) == version:
            return candidate
    existing = ", ".join(str(v.version) for v in reversed(versions)) or "none"
    raise ToolFailure(
        "unknown_version",
        f"{name} has no version {version}",
        f"versions of {name}: {existing}; call model_versions",
    )


class ModelSummary(BaseModel):
    """One registered model and where its aliases point."""

    name: str
    description: str | None = None
    aliases: dict[str, int] = Field(description="alias -> version, e.g. champion, challenger.")
    latest_version: int | None = None
    version_count: int
    updated_at: str | None = None


class ModelList(BaseModel):
    """Every registered model."""

    models: list[ModelSummary]
    configured_model: str = Field(description="The model the agents and flows manage.")


class VersionSummary(BaseModel):
    """One model version with its aliases and the holdout metrics of the run that trained it."""

    version: int
    aliases: list[str]
    status: str
    created_at: str | None
    run_id: str | None
    description: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)


class VersionList(BaseModel):
    """Versions of one model, newest first."""

    model_name: str
    aliases: dict[str, int]
    versions: list[VersionSummary]


def list_models() -> ModelList:
    """List every model in the MLflow registry with its aliases (`champion` serves users,
    `challenger` is the newest candidate, `previous-champion` is where a rollback goes,
    `rolled-back` the version last rolled back), its latest version and how many it has."""
    from agentic_mlops.tasks import registry

    settings = load_settings()
    client = registry.client(settings)
    models = []
    for model in client.search_registered_models(max_results=100):
        versions = _versions(model.name, settings)
        models.append(
            ModelSummary(
                name=model.name,
                description=model.description or None,
                aliases={alias: int(v) for alias, v in sorted(model.aliases.items())},
                latest_version=int(versions[0].version) if versions else None,
                version_count=len(versions),
                updated_at=iso_from_millis(model.last_updated_timestamp),
            )
        )
    return ModelList(models=models, configured_model=settings.model_name)


def model_versions(
    model_name: ModelName = None,
    version: Annotated[
        int | None, Field(ge=1, description="One version only; empty lists the newest.")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=100, description="Most versions to list.")] = 20,
) -> VersionList:
    """List a model's versions, newest first, each with its aliases, status, creation time,
    MLflow run id, the run's holdout metrics (roc_auc, accuracy, log_loss, ...) and its
    training parameters. Give `version` to see one version only."""
    from agentic_mlops.tasks import registry

    settings = load_settings()
    model = registered_model(model_name, settings)
    if version is not None:
        versions = [known_version(model.name, version, settings)]
    else:
        versions = _versions(model.name, settings)[:limit]
    aliases = {alias: int(v) for alias, v in sorted(model.aliases.items())}
    client = registry.client(settings)
    summaries = []
    for found in versions:
        run = client.get_run(found.run_id) if found.run_id else None
        summaries.append(
            VersionSummary(
                version=int(found.version),
                aliases=[a for a, v in aliases.items() if v == int(found.version)],
                status=str(found.status),
                created_at=iso_from_millis(found.creation_timestamp),
                run_id=found.run_id,
                description=found.description or None,
                metrics=dict(run.data.metrics) if run else {},
                params=dict(run.data.params) if run else {},
            )
        )
    return VersionList(model_name=model.name, aliases=aliases, versions=summaries)


class RunSummary(BaseModel):
    """One MLflow run of the experiment."""

    run_id: str
    run_name: str | None
    status: str
    started_at: str | None
    ended_at: str | None
    model_name: str | None = None
    registered_version: int | None = Field(
        default=None, description="The model version registered from this run, if any."
    )
    metrics: dict[str, float]
    params: dict[str, str]
    link: str = Field(description="Where a person finds the run in the MLflow UI.")


class RunList(BaseModel):
    """Recent runs, newest first."""

    experiment: str
    runs: list[RunSummary]


def recent_runs(
    model_name: ModelName = None,
    limit: Annotated[int, Field(ge=1, le=100, description="Most runs to list.")] = 10,
) -> RunList:
    """List the most recent MLflow training runs of a model, newest first: status, start and
    end, metrics, parameters, the model version each registered, and a link for a person.
    Call run_artifacts with a run id to see what a run stored."""
    from agentic_mlops.tasks import registry

    settings = load_settings()
    model = registered_model(model_name, settings)
    client = registry.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return RunList(experiment=settings.experiment_name, runs=[])
    by_run = {v.run_id: int(v.version) for v in _versions(model.name, settings)}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`agentic_mlops.model_name` = '{model.name}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return RunList(
        experiment=settings.experiment_name,
        runs=[
            RunSummary(
                run_id=run.info.run_id,
                run_name=run.info.run_name,
                status=run.info.status,
                started_at=iso_from_millis(run.info.start_time),
                ended_at=iso_from_millis(run.info.end_time),
                model_name=run.data.tags.get("agentic_mlops.model_name"),
                registered_version=by_run.get(run.info.run_id),
                metrics=dict(run.data.metrics),
                params=dict(run.data.params),
                link=mlflow_run_link(run.info.run_id, run.info.experiment_id, settings),
            )
            for run in runs
        ],
    )


class ArtifactEntry(BaseModel):
    """One file or folder a run stored."""

    path: str
    is_dir: bool
    size: int | None = None


class ArtifactListing(BaseModel):
    """A folder of a run's artifacts, or the text of one small text artifact."""

    run_id: str
    path: str
    artifacts: list[ArtifactEntry] = Field(default_factory=list)
    content: str | None = Field(
        default=None, description="The file's text, for a JSON, text or YAML file up to 256 KB."
    )


def run_artifacts(
    run_id: Annotated[str, Field(description="MLflow run id, e.g. from recent_runs.")],
    path: Annotated[
        str | None,
        Field(
            description="A folder to list, or a text file to read (feature_importance.json, "
            "calibration.json, model/MLmodel). Empty: the run's top folder."
        ),
    ] = None,
) -> ArtifactListing:
    """List what an MLflow run stored (the model, its feature importance and calibration, the
    reference profile), or read one small text artifact such as `feature_importance.json`."""
    from mlflow.exceptions import MlflowException

    from agentic_mlops.tasks import registry

    settings = load_settings()
    client = registry.client(settings)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise ToolFailure(
            "unknown_run", f"no MLflow run with id {run_id!r}", "call recent_runs for run ids"
        ) from error
    folder = (path or "").strip("/")
    if ".." in Path(folder).parts:
        raise ToolFailure(
            "bad_argument",
            f"path {path!r} leaves the run's artifacts",
            "give a path as run_artifacts lists it, e.g. reference/model_card.json",
        )
    entries = client.list_artifacts(run_id, folder or None)
    if entries or not folder:
        return ArtifactListing(
            run_id=run_id,
            path=folder,
            artifacts=[
                ArtifactEntry(path=e.path, is_dir=e.is_dir, size=e.file_size) for e in entries
            ],
        )
    parent = str(Path(folder).parent) if "/" in folder else None
    match = next((e for e in client.list_artifacts(run_id, parent) if e.path == folder), None)
    if match is None:
        raise ToolFailure(
            "unknown_artifact",
            f"run {run_id} has no artifact {folder!r}",
            "call run_artifacts without a path to list what it stored",
        )
    if not folder.endswith(TEXT_ARTIFACTS) or (match.file_size or 0) > MAX_TEXT_BYTES:
        return ArtifactListing(
            run_id=run_id,
            path=folder,
            artifacts=[ArtifactEntry(path=match.path, is_dir=False, size=match.file_size)],
        )
    with tempfile.TemporaryDirectory() as scratch:
        local = client.download_artifacts(run_id, folder, scratch)
        content = Path(local).read_text(errors="replace")
    return ArtifactListing(
        run_id=run_id,
        path=folder,
        artifacts=[ArtifactEntry(path=match.path, is_dir=False, size=match.file_size)],
        content=content,
    )


class DecisionBrief(BaseModel):
    """One decision in the ledger, without its full evidence (see decision)."""

    id: str
    created_at: str
    decision_point: str
    model_name: str
    model_version: int | None
    action: str
    severity: str | None = None
    confidence: float | None = None
    rationale: str | None = None
    decided_by: str = Field(description="`policy` or the LLM that answered.")
    guardrail: str | None = Field(
        default=None, description="Why a guardrail replaced the model's decision, if it did."
    )
    attribution: dict[str, Any] | None = Field(
        default=None,
        description="Who decided: the model that answered, its own and the policy's action, "
        "every override and why, tokens and latency (see docs/agents.md).",
    )
    outcome: dict[str, Any] | None = Field(
        default=None,
        description="What happened after: new version, aliases moved, a person's answer.",
    )
    flow_run_id: str | None = None


def brief(entry: Any) -> DecisionBrief:
    return DecisionBrief(
        id=entry.id,
        created_at=entry.created_at,
        decision_point=entry.decision_point,
        model_name=entry.model_name,
        model_version=entry.model_version,
        action=entry.action,
        severity=entry.severity,
        confidence=entry.confidence,
        rationale=entry.rationale,
        decided_by=entry.agent_model,
        guardrail=entry.overridden_by,
        attribution=entry.attribution,
        outcome=entry.outcome,
        flow_run_id=entry.flow_run_id,
    )


class DecisionList(BaseModel):
    """Decisions, newest first."""

    decisions: list[DecisionBrief]
    since: str | None = None
    until: str | None = None


def decisions(
    model_name: ModelName = None,
    action: Annotated[DecisionAction | None, Field(description="Only this action.")] = None,
    decision_point: Annotated[
        DecisionPoint | None,
        Field(description="Only this agent: drift_triage, canary_promotion or tuning_advisor."),
    ] = None,
    version: Annotated[
        int | None, Field(ge=1, description="Only decisions about this model version.")
    ] = None,
    since: TimeFilter = None,
    until: TimeFilter = None,
    limit: Annotated[int, Field(ge=1, le=500, description="Most decisions to list.")] = 20,
) -> DecisionList:
    """Read the decision ledger, newest first: every decision the drift-triage and
    canary-promotion agents made, with the action, severity, confidence, rationale, who
    decided (`policy` or an LLM), whether a guardrail replaced the model's answer, and the
    outcome. Filter by model, action, agent, model version and time. Call decision with an
    id for the evidence behind one decision."""
    settings = load_settings()
    name = registered_model(model_name, settings).name
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if start and end and start > end:
        raise ToolFailure("bad_time_filter", f"since ({start}) is after until ({end})")
    narrowed = end is not None or version is not None
    entries = ledger.list_decisions(
        name, action, decision_point, start, 5_000 if narrowed else limit, settings=settings
    )
    kept = [
        brief(e)
        for e in entries
        if (end is None or e.created_at <= end) and (version is None or e.model_version == version)
    ]
    return DecisionList(decisions=kept[:limit], since=start, until=end)


def decision(
    ledger_id: Annotated[
        str, Field(description="A decision id from decisions or an act's result.")
    ],
) -> ledger.LedgerEntry:
    """Read one decision with all the evidence the agent saw (quality, per-column drift,
    performance, the judge's per-metric results...), the guardrail and the outcome."""
    entry = ledger.get_decision(ledger_id, load_settings())
    if entry is None:
        raise ToolFailure(
            "unknown_decision", f"no decision with id {ledger_id!r}", "call decisions for ids"
        )
    return entry


@contextmanager
def prefect_client() -> Iterator[Any]:
    """Prefect's API client, or `prefect_unavailable` when the API cannot be reached."""
    import httpx
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            yield client
    except httpx.HTTPError as error:
        raise ToolFailure(
            "prefect_unavailable",
            f"the Prefect API did not answer: {error}",
            "set PREFECT_API_URL to a running server, or unset it for the local one",
        ) from error


class FlowRunSummary(BaseModel):
    """One Prefect flow run and its state."""

    id: str
    name: str
    flow_name: str | None
    state_type: str | None
    state_name: str | None
    message: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    deployment_id: str | None = None


def flow_run_summary(run: Any, flow_names: dict[Any, str]) -> FlowRunSummary:
    state = run.state
    return FlowRunSummary(
        id=str(run.id),
        name=run.name,
        flow_name=flow_names.get(run.flow_id),
        state_type=state.type.value if state else None,
        state_name=state.name if state else None,
        message=state.message if state else None,
        created_at=iso(run.created),
        started_at=iso(run.start_time),
        ended_at=iso(run.end_time),
        parameters=run.parameters,
        tags=list(run.tags),
        deployment_id=str(run.deployment_id) if run.deployment_id else None,
    )


def _flow_names(client: Any) -> dict[Any, str]:
    from prefect.client.schemas.sorting import FlowSort

    return {flow.id: flow.name for flow in client.read_flows(sort=FlowSort.NAME_ASC, limit=200)}


class FlowRunList(BaseModel):
    """Flow runs, newest first."""

    flow_runs: list[FlowRunSummary]


def flow_runs(
    flow_name: Annotated[
        str | None,
        Field(
            description="Only runs of this flow: train, drift-check, data-quality, canary-rollout."
        ),
    ] = None,
    state: Annotated[FlowRunStateType | None, Field(description="Only runs in this state.")] = None,
    limit: Annotated[int, Field(ge=1, le=200, description="Most runs to list.")] = 20,
    model_name: Annotated[
        str | None,
        Field(
            description="Only runs for this registered model (their model_name parameter; a "
            "run without one is the configured model's). Empty: runs of every model."
        ),
    ] = None,
) -> FlowRunList:
    """List Prefect flow runs (training, drift checks, data quality, canary rollouts), newest
    first, with their state (a paused canary waits for a person's approval), parameters and
    tags (`mcp` marks runs an MCP caller started), of one model or of all. Call flow_run with
    an id for its tasks and the decisions it recorded."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_client() as client:
        names = _flow_names(client)
        if flow_name is not None and flow_name not in names.values():
            raise ToolFailure(
                "unknown_flow",
                f"no flow named {flow_name!r} has run here",
                f"flows: {', '.join(sorted(names.values())) or 'none yet'}",
            )
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(state)]))
            )
            if state
            else None,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit if model_name is None else MAX_FLOW_RUNS_READ,
        )
        if model_name is not None:  # a model's runs may outlive its registration, or precede it
            configured = load_settings().model_name
            runs = [
                run
                for run in runs
                if ((run.parameters or {}).get("model_name") or configured) == model_name
            ][:limit]
        return FlowRunList(flow_runs=[flow_run_summary(run, names) for run in runs])


class TaskRunSummary(BaseModel):
    """One task of a flow run."""

    name: str
    state_name: str | None
    started_at: str | None = None
    ended_at: str | None = None


class FlowRunDetail(BaseModel):
    """One flow run, its tasks and the decisions it recorded."""

    flow_run: FlowRunSummary
    task_runs: list[TaskRunSummary]
    decisions: list[DecisionBrief] = Field(
        description="Ledger decisions this run recorded (drift triage, canary steps)."
    )


def decisions_of_run(flow_run_id: str, settings: Settings) -> list[DecisionBrief]:
    entries = ledger.list_decisions(limit=5_000, settings=settings)
    return [brief(e) for e in reversed(entries) if e.flow_run_id == flow_run_id]


def flow_run(
    flow_run_id: Annotated[str, Field(description="Prefect flow run id, e.g. from an act.")],
) -> FlowRunDetail:
    """Read one Prefect flow run: its state and message, parameters, each task's state, and
    the decisions it recorded in the ledger. Use it to follow a run an act tool started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise ToolFailure(
            "bad_argument", f"{flow_run_id!r} is not a flow run id (a UUID)", "call flow_runs"
        ) from None
    settings = load_settings()
    with prefect_client() as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise ToolFailure(
                "unknown_flow_run", f"no flow run with id {flow_run_id}", "call flow_runs"
            ) from None
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
        names = _flow_names(client)
    return FlowRunDetail(
        flow_run=flow_run_summary(run, names),
        task_runs=[
            TaskRunSummary(
                name=task.name,
                state_name=task.state.name if task.state else None,
                started_at=iso(task.start_time),
                ended_at=iso(task.end_time),
            )
            for task in tasks
        ],
        decisions=decisions_of_run(str(run_id), settings),
    )


def batch_of_run(flow_run_id: str | None) -> str | None:
    """The batch a drift-check run checked, from its parameters; None when Prefect is away."""
    if not flow_run_id:
        return None
    try:
        with prefect_client() as client:
            params = client.read_flow_run(UUID(flow_run_id)).parameters or {}
    except Exception:  # the report stands without the batch name
        return None
    if params.get("batch_id"):
        return params["batch_id"]
    return Path(params["current_path"]).name if params.get("current_path") else None


class ColumnReport(ColumnDrift):
    """One column's drift test against the reference, with the feature's importance."""

    column: str
    importance: float | None = Field(
        default=None, description="Permutation importance of the feature for the champion."
    )


class HistoryPoint(BaseModel):
    """One earlier batch in the drift history."""

    batch_id: str
    checked_at: str
    drift_score: float
    drift_share: float
    dataset_drift: bool
    sequential_alarm: bool


class DriftReport(BaseModel):
    """The latest drift check of a model: quality, per-column drift, decision and history."""

    model_name: str
    ledger_id: str
    checked_at: str
    batch: str | None = None
    flow_run_id: str | None = None
    champion_version: int | None = None
    quality: dict[str, Any]
    dataset_drift: bool
    drift_share: float
    prediction_drifted: bool | None = None
    sequential_alarm: bool
    columns: list[ColumnReport] = Field(description="Drifted columns first, then by score.")
    skipped_columns: dict[str, str] = Field(default_factory=dict)
    performance: dict[str, Any] | None = Field(
        default=None, description="ROC AUC and calibration on the batch's labels, if it had any."
    )
    decision: DecisionBrief
    history: list[HistoryPoint] = Field(description="Recent batches, oldest first.")
    report_path: str | None = Field(
        default=None, description="Evidently's HTML report of the batch, on the server's disk."
    )


def drift_report(
    model_name: ModelName = None,
    ledger_id: Annotated[
        str | None,
        Field(description="A drift_triage decision id; empty means the latest drift check."),
    ] = None,
) -> DriftReport:
    """Read the latest drift check of a model (or the one behind a drift_triage decision):
    data quality, each column's drift test, score and threshold with the feature's importance,
    dataset and prediction drift, the sequential (CUSUM) alarm, performance on labels, the
    triage decision and what was done, and the recent drift history."""
    settings = load_settings()
    name = registered_model(model_name, settings).name
    if ledger_id:
        entry = ledger.get_decision(ledger_id, settings)
        if entry is None or entry.decision_point != "drift_triage":
            raise ToolFailure(
                "unknown_decision",
                f"no drift_triage decision with id {ledger_id!r}",
                "call decisions with decision_point=drift_triage",
            )
    else:
        latest = ledger.list_decisions(
            name, decision_point="drift_triage", limit=1, settings=settings
        )
        if not latest:
            raise ToolFailure(
                "no_drift_check",
                f"no drift check of {name!r} is recorded yet",
                "run one: the run_drift_check tool, or `agentic-mlops drift-check --current FILE`",
            )
        entry = latest[0]
    evidence = TriageRecord.model_validate(entry.evidence)
    columns = [
        ColumnReport(
            column=column,
            importance=evidence.feature_importance.get(column),
            **result.model_dump(include=set(ColumnDrift.model_fields)),
        )
        for column, result in evidence.columns.items()
    ]
    columns.sort(key=lambda c: (not c.drifted, -c.score))
    batch = batch_of_run(entry.flow_run_id)
    report = (
        settings.reports_dir / entry.model_name / f"{Path(batch).stem}-drift.html"
        if batch
        else None
    )
    return DriftReport(
        model_name=entry.model_name,
        ledger_id=entry.id,
        checked_at=entry.created_at,
        batch=batch,
        flow_run_id=entry.flow_run_id,
        champion_version=evidence.champion_version,
        quality=evidence.quality.model_dump(),
        dataset_drift=evidence.dataset_drift,
        drift_share=evidence.drift_share,
        prediction_drifted=evidence.prediction_drifted,
        sequential_alarm=evidence.sequential_alarm,
        columns=columns,
        skipped_columns=evidence.skipped_columns,
        performance=evidence.performance.model_dump() if evidence.performance else None,
        decision=brief(entry),
        history=[
            HistoryPoint(
                checked_at=o.created_at,
                **o.model_dump(exclude={"created_at", "model_name", "detector_state"}),
            )
            for o in ledger.drift_history(entry.model_name, 10, settings=settings)
        ],
        report_path=str(report) if report and report.exists() else None,
    )


class ServingState(BaseModel):
    """What the local canary router serves now."""

    router_url: str | None
    baseline_version: int | None
    canary_version: int | None
    canary_weight: float = Field(description="Share of requests sent to the canary, 0 to 1.")
    servers: dict[str, str] = Field(description="version -> address of its running model server.")


class CanaryStatus(BaseModel):
    """Where a model's canary rollout stands."""

    model_name: str
    aliases: dict[str, int]
    serving: ServingState | None = Field(description="None when no router runs from this home.")
    promotion_interrupted: bool = Field(
        description="A promotion journal was left behind: the next rollout repairs it."
    )
    rollout_flow_run_id: str | None = None
    rollout_state: str | None = Field(
        default=None,
        description="State of the latest rollout's flow run (Paused = a person's turn).",
    )
    steps: list[CanaryStep] = Field(description="Steps of the latest rollout, oldest first.")


def serving_state(settings: Settings) -> ServingState | None:
    from agentic_mlops.tasks.rollout import rollout_backend

    backend = rollout_backend(settings)
    if not backend.is_serving():
        return None
    status = backend.status()
    state = status.state
    return ServingState(
        router_url=status.router_url,
        baseline_version=state.baseline.version if state.baseline else None,
        canary_version=state.canary.version if state.canary else None,
        canary_weight=state.weight,
        servers=status.servers,
    )


def flow_run_state(flow_run_id: str | None) -> str | None:
    """The state name of a flow run; None when Prefect cannot say."""
    if not flow_run_id:
        return None
    try:
        with prefect_client() as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception:  # the status stands without the run's state
        return None
    return state.name if state else None


def canary_status(model_name: ModelName = None) -> CanaryStatus:
    """Read where a model's canary rollout stands: the registry's aliases, what the local
    router serves and at which canary weight, whether a promotion was interrupted, and each
    step of the latest rollout with the statistical judge's verdict per metric, the
    sequential test, the promotion agent's action, any person's answer, and what the rollout
    did."""
    settings = load_settings()
    model = registered_model(model_name, settings)
    settings = settings.for_model(model.name)
    from agentic_mlops.tasks.promotion import journal_path

    entries = ledger.list_decisions(
        model.name, decision_point="canary_promotion", limit=200, settings=settings
    )
    latest_run = entries[0].flow_run_id if entries else None
    steps = [CanaryStep.from_entry(e) for e in reversed(entries) if e.flow_run_id == latest_run]
    return CanaryStatus(
        model_name=model.name,
        aliases={alias: int(v) for alias, v in sorted(model.aliases.items())},
        serving=serving_state(settings),
        promotion_interrupted=journal_path(settings).exists(),
        rollout_flow_run_id=latest_run,
        rollout_state=flow_run_state(latest_run),
        steps=steps,
    )
