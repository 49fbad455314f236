"""What the MCP server's act tools do: the caller proposes, the flows and their agents decide.

An act never changes the registry or the traffic itself. It starts the same Prefect flow a
schedule would (the drift check, or the canary rollout), with the same agents, guardrails and
approval gates, and reports the decision that stood next to what was proposed. A retrain or a
rollback is proposed to the drift-triage agent through a drift check of a labelled batch: the
agent decides from the evidence alone (it never sees the proposal), and the drift check
retrains through `start_retraining` or rolls back only if that is what it decided. A
promotion is a canary rollout of the version: the promotion agent, the statistical judge and
the approval form decide it. An adoption runs the `adopt` flow: it stores a reference for a model
registered elsewhere and makes it champion only when the model has none. The flow runs are
tagged `mcp` and `mcp:<proposal>`.

Flows run in this process, in a small thread pool, on a flow run created first so that its id
is known at once; an act waits up to `wait_seconds` for the decision and otherwise returns the
run id to follow with `flow_run`. A canary rollout goes through the `canary` deployment when one
is registered, so that a worker, not this process, carries it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitTimeout
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agentic_mlops.mcp_reads import ModelName, ToolFailure, known_version, registered_model
from agentic_mlops.settings import Settings, load_settings

Proposal = Literal["drift_check", "retrain", "rollback", "canary", "promote", "adopt"]
CANARY_DEPLOYMENT = "canary-rollout/canary"
REFUSED_INPUT = {"InvalidData", "NoReference", "InvalidParameters", "NoChallenger"}
act_runs = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mcp-act")
"""Flow runs started by acts; joined when the process exits, so a rollout is not cut short."""

BatchPath = Annotated[
    str,
    Field(
        description="A CSV or Parquet batch under the agentic-mlops home directory, absolute "
        "or relative to it (e.g. incoming/latest.parquet)."
    ),
]
Target = Annotated[
    str | None,
    Field(
        description="Label column; a retrain or rollback needs labels. Empty: the label "
        "column on the model's card (churn for the configured model)."
    ),
]
DriftWait = Annotated[
    float,
    Field(
        ge=0,
        le=900,
        description="Seconds to wait for the decision; 0 returns the run id at once.",
    ),
]
CanaryWait = Annotated[
    float,
    Field(
        ge=0,
        le=900,
        description="Seconds to wait for the outcome; a rollout usually takes minutes, so 0 "
        "(return the run id at once, follow with canary_status) is the default.",
    ),
]


class ActDecision(BaseModel):
    """The decision that stood, as the agent and its guardrails left it."""

    action: str = Field(description="What the system decided (retrain, rollback, promote, ...).")
    confidence: float | None = None
    rationale: str
    decided_by: str = Field(description="`policy` or the LLM that decided.")
    guardrail: str | None = Field(
        default=None, description="Why a guardrail replaced the model's decision, if it did."
    )
    ledger_id: str | None = Field(default=None, description="The decision in the ledger.")


class ActResult(BaseModel):
    """What an act started, and what the system decided."""

    proposed: Proposal
    flow_run_id: str
    flow_run_name: str
    state: str = Field(description="State of the flow run when this answer was written.")
    finished: bool
    decision: ActDecision | None = Field(
        default=None, description="None while the run has not decided yet: see flow_run."
    )
    accepted: bool | None = Field(
        default=None,
        description="Whether the decision that stood is what was proposed; None when nothing "
        "specific was proposed or the run has not finished.",
    )
    actions_taken: list[str] = Field(default_factory=list)
    summary: str


def file_under_home(path: str, settings: Settings, argument: str) -> Path:
    """A batch file inside the home directory (a failed batch is moved to quarantine, so an
    act may not point at files elsewhere).

    Raises:
        ToolFailure: `path_outside_home` or `unknown_batch`.
    """
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = settings.home / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(settings.home):
        raise ToolFailure(
            "path_outside_home",
            f"{argument}={path!r} is outside the agentic-mlops home {settings.home}",
            "copy the batch under the home directory, e.g. incoming/",
        )
    if not resolved.is_file():
        raise ToolFailure(
            "unknown_batch",
            f"{argument}={path!r}: no such file under {settings.home}",
            "batches usually live in incoming/ under the home directory",
        )
    return resolved


def start_flow(flow: Any, parameters: dict[str, Any], proposal: Proposal) -> tuple[Any, Future]:
    """Create the flow run (so its id is known now) and run it in the act thread pool."""
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from agentic_mlops.mcp_reads import prefect_client

    with prefect_client() as client:
        run = client.create_flow_run(
            flow, parameters=parameters, tags=["mcp", f"mcp:{proposal}"], state=Pending()
        )
    return run, act_runs.submit(run_flow, flow, flow_run=run, return_type="state")


def finished_state(future: Future, wait_seconds: float) -> Any:
    try:
        return future.result(timeout=wait_seconds)
    except WaitTimeout:
        return None


def failure_of(state: Any, run: Any) -> ToolFailure:
    """A failed flow run as an error: the input it refused (bad batch, bad steps, nothing to
    roll out) under its state's name, anything else as `flow_failed` with the first line of
    its message (the whole of it, with any traceback, stays in the run's logs)."""
    if state.name in REFUSED_INPUT:
        code = "".join(f"_{c.lower()}" if c.isupper() else c for c in state.name).lstrip("_")
        return ToolFailure(
            code,
            state.message or state.name,
            "fix the argument named in the message and try again",
            flow_run_id=str(run.id),
        )
    first_line = (state.message or state.name).splitlines()[0][:300]
    return ToolFailure(
        "flow_failed",
        f"flow run {run.name} failed: {first_line}",
        "call flow_run for its tasks' states; the run's logs in Prefect have the details",
        flow_run_id=str(run.id),
    )


def running(proposal: Proposal, run: Any, state_name: str, follow: str) -> ActResult:
    return ActResult(
        proposed=proposal,
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        state=state_name,
        finished=False,
        summary=f"flow run {run.name} started; the system decides as it goes: {follow}",
    )


def model_target(name: str, settings: Settings) -> str:
    """The label column on the champion's card; the settings' target without one."""
    from agentic_mlops.tasks import registry
    from agentic_mlops.tasks.reference import stored_card

    champion = registry.alias_version(name, registry.CHAMPION, settings)
    card = stored_card(name, champion, settings) if champion is not None else None
    return card.target if card is not None else settings.target


def drift_act(
    proposal: Proposal,
    batch_path: str,
    reference_path: str | None,
    target: str | None,
    act: bool,
    wait_seconds: float,
    model_name: str | None = None,
) -> ActResult:
    """Run the drift-check flow on a batch of a model; the triage agent decides, the flow acts
    on it."""
    from agentic_mlops.flows.drift import drift_check

    settings = load_settings()
    name = registered_model(model_name, settings).name
    parameters = {
        "current_path": str(file_under_home(batch_path, settings, "batch_path")),
        "reference_path": str(file_under_home(reference_path, settings, "reference_path"))
        if reference_path
        else None,
        "target": target or model_target(name, settings),
        "act": act,
        "model_name": name,
    }
    run, future = start_flow(drift_check, parameters, proposal)
    state = finished_state(future, wait_seconds)
    if state is None:
        return running(proposal, run, "Running", f"call flow_run with {run.id}")
    if state.is_failed():
        raise failure_of(state, run)
    result = state.result()
    decided = result.decision
    return ActResult(
        proposed=proposal,
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        state=state.name,
        finished=True,
        decision=ActDecision(
            action=decided.action,
            confidence=decided.confidence,
            rationale=decided.rationale,
            decided_by=decided.agent_model,
            guardrail=decided.overridden_by,
            ledger_id=result.ledger_id,
        ),
        accepted=None if proposal == "drift_check" else decided.action == proposal,
        actions_taken=result.actions_taken,
        summary=f"{result.batch_id}: quality {'passed' if result.quality.passed else 'failed'}, "
        f"drift share {result.drift_share:.2f}; decided {decided.action}"
        + (f" (proposed {proposal})" if proposal != "drift_check" else "")
        + (f"; did {'; '.join(result.actions_taken)}" if result.actions_taken else ""),
    )


def run_drift_check(
    batch_path: BatchPath,
    reference_path: Annotated[
        str | None,
        Field(description="Reference data under home; empty: the champion's stored reference."),
    ] = None,
    target: Target = None,
    act: Annotated[
        bool,
        Field(
            description="Carry out the decision (retrain, rollback, escalate) as a schedule does."
        ),
    ] = True,
    wait_seconds: DriftWait = 300,
    model_name: ModelName = None,
) -> ActResult:
    """Run a drift check on a batch exactly as the hourly schedule does: quality checks (a
    broken batch is quarantined), drift against the champion's reference, the drift-triage
    agent's decision within its guardrails, and (with act) the action it decided. Returns the
    flow run id and the decision."""
    return drift_act(
        "drift_check", batch_path, reference_path, target, act, wait_seconds, model_name
    )


def request_retrain(
    batch_path: BatchPath,
    target: Target = None,
    wait_seconds: DriftWait = 300,
    model_name: ModelName = None,
) -> ActResult:
    """Propose retraining on a labelled batch. The system decides: the batch goes through a
    drift check and the drift-triage agent, which retrains (a new challenger, never a new
    champion) only if the evidence and guardrails allow it: labels present, quality passed,
    drift on important features or a performance drop, enough confidence. Whatever it decides
    is carried out, as on a schedule (an escalation reaches a person). Returns the run id, the
    decision and whether it accepted the proposal."""
    return drift_act("retrain", batch_path, None, target, True, wait_seconds, model_name)


def request_rollback(
    batch_path: BatchPath,
    target: Target = None,
    wait_seconds: DriftWait = 300,
    model_name: ModelName = None,
) -> ActResult:
    """Propose rolling the champion back to the previous champion, with a labelled batch as
    the evidence. The system decides: the drift-triage agent rolls back only when a previous
    champion exists and does better than the champion on the batch's labels, with enough
    confidence. Whatever it decides is carried out, as on a schedule (an escalation reaches a
    person). Returns the run id, the decision and whether it accepted the proposal."""
    return drift_act("rollback", batch_path, None, target, True, wait_seconds, model_name)


def canary_act(proposal: Proposal, parameters: dict[str, Any], wait_seconds: float) -> ActResult:
    """Run the canary rollout; the judge, the promotion agent and a person decide."""
    from prefect.deployments import run_deployment

    from agentic_mlops.flows.canary import canary_rollout
    from agentic_mlops.tasks.drift_actions import deployment_exists

    follow = "call canary_status (a Paused run waits for a person's approval in Prefect)"
    if deployment_exists(CANARY_DEPLOYMENT):
        run = run_deployment(
            CANARY_DEPLOYMENT,
            parameters=parameters,
            tags=["mcp", f"mcp:{proposal}"],
            timeout=0,
        )
        return running(proposal, run, run.state.name if run.state else "Scheduled", follow)
    run, future = start_flow(canary_rollout, parameters, proposal)
    state = finished_state(future, wait_seconds)
    if state is None:
        return running(proposal, run, "Running", follow)
    if state.is_failed():
        raise failure_of(state, run)
    result = state.result()
    if result is None:
        return ActResult(
            proposed=proposal,
            flow_run_id=str(run.id),
            flow_run_name=run.name,
            state=state.name,
            finished=True,
            accepted=False,
            summary=state.message or state.name,
        )
    last = result.steps[-1] if result.steps else None
    entry = ledger_entry(last.ledger_id) if last else None
    action = "promote" if result.outcome == "promoted" else "rollback"
    return ActResult(
        proposed=proposal,
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        state=state.name,
        finished=True,
        decision=ActDecision(
            action=action,
            confidence=entry.confidence if entry else None,
            rationale=result.reason,
            decided_by=last.decided_by if last else "canary-rollout",
            guardrail=entry.overridden_by if entry else None,
            ledger_id=last.ledger_id if last else None,
        ),
        accepted=action == "promote",
        actions_taken=[f"{s.weight:.0%}: {s.judge_verdict} -> {s.action}" for s in result.steps],
        summary=f"v{result.version} {result.outcome.replace('_', ' ')}: {result.reason}; "
        f"champion is v{result.champion}",
    )


def ledger_entry(ledger_id: str) -> Any:
    from agentic_mlops.tasks import ledger

    return ledger.get_decision(ledger_id, load_settings())


def start_canary(
    version: Annotated[
        int | None, Field(ge=1, description="Version to roll out; empty: the challenger.")
    ] = None,
    steps: Annotated[
        list[int] | None,
        Field(description="Traffic percentages in order, ending at 100; empty: settings."),
    ] = None,
    step_seconds: Annotated[
        float | None, Field(gt=0, le=3_600, description="Longest analysis of one step.")
    ] = None,
    wait_seconds: CanaryWait = 0,
    model_name: ModelName = None,
) -> ActResult:
    """Start a canary rollout of a model version behind the model's local router: its share of
    traffic rises step by step, a statistical judge compares it with the champion at each
    step, and the promotion agent decides (promote, more traffic, hold, roll back, or ask a
    person through an approval form, whose silence means rollback). Returns the flow run id;
    follow it with canary_status."""
    settings = load_settings()
    model = registered_model(model_name, settings)
    if version is not None:
        known_version(model.name, version, settings)
    given = {
        "version": version,
        "steps": steps,
        "step_seconds": step_seconds,
        "model_name": model.name,
    }
    return canary_act("canary", {k: v for k, v in given.items() if v is not None}, wait_seconds)


def request_promotion(
    version: Annotated[int, Field(ge=1, description="The version proposed as champion.")],
    wait_seconds: CanaryWait = 0,
    model_name: ModelName = None,
) -> ActResult:
    """Propose a model version as the new champion. The system decides: a version becomes
    champion only through a canary rollout with the configured steps, judged statistically,
    decided by the promotion agent within its guardrails and, when the evidence is marginal,
    approved by a person. Returns the flow run id; follow it with canary_status."""
    from agentic_mlops.tasks import registry

    settings = load_settings()
    model = registered_model(model_name, settings)
    known_version(model.name, version, settings)
    if registry.alias_version(model.name, registry.CHAMPION, settings) == version:
        raise ToolFailure(
            "already_champion",
            f"{model.name} v{version} is already the champion",
            "call model_versions to see the other versions",
        )
    return canary_act("promote", {"version": version, "model_name": model.name}, wait_seconds)


def adopt_model(
    model_name: Annotated[str, Field(description="The registered model's name in MLflow.")],
    data_path: Annotated[
        str,
        Field(
            description="A labelled CSV or Parquet table under the agentic-mlops home (rows "
            "the model was not trained on): the reference and the holdout."
        ),
    ],
    target: Annotated[str, Field(description="Label column of the table.")],
    version: Annotated[
        int | None, Field(ge=1, description="Version to adopt; empty: champion, else newest.")
    ] = None,
    task: Annotated[
        Literal["auto", "binary", "multiclass", "regression"],
        Field(description="The model's task; auto: what the model and its outputs show."),
    ] = "auto",
    wait_seconds: DriftWait = 300,
) -> ActResult:
    """Adopt a model trained and registered outside agentic-mlops so that drift checks,
    serving and canaries can guard it: the adopt flow scores it on the labelled table, stores
    its reference (drift profile with its scores, expectation suite, model card with metrics
    and permutation importance) in the version's MLflow run, and makes the version champion
    only if the model has no champion yet. An unknown model or version, a table without the
    target or the model's input columns, or a task that does not match the model is refused
    with nothing written. Returns the flow run id and what was stored."""
    from agentic_mlops.flows.adopt import adopt

    settings = load_settings()
    registered_model(model_name, settings)
    if version is not None:
        known_version(model_name, version, settings)
    parameters = {
        "model_name": model_name,
        "data_path": str(file_under_home(data_path, settings, "data_path")),
        "target": target,
        "version": version,
        "task": task,
    }
    run, future = start_flow(adopt, parameters, "adopt")
    state = finished_state(future, wait_seconds)
    if state is None:
        return running("adopt", run, "Running", f"call flow_run with {run.id}")
    if state.is_failed():
        raise failure_of(state, run)
    result = state.result()
    crowned = "now champion" if result.became_champion else f"champion stays v{result.champion}"
    metric = next(iter(result.metrics.items()), ("rows", result.rows))
    return ActResult(
        proposed="adopt",
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        state=state.name,
        finished=True,
        decision=ActDecision(
            action="adopt",
            rationale=f"reference stored for {result.model_name} v{result.version} "
            f"({result.task}, score: {result.score}); {crowned}",
            decided_by="adopt flow",
        ),
        accepted=True,
        actions_taken=[f"reference stored in {result.reference_dir}"]
        + (["champion alias set"] if result.became_champion else []),
        summary=f"{result.model_name} v{result.version} adopted as a {result.task} model on "
        f"{result.rows} rows ({metric[0]} {metric[1]:.4f}); {crowned}",
    )
