"""Carrying out a drift-triage decision, and recording it: in the ledger, and as the drift
check's result and artifacts.

Each action is safe to run twice: retraining is keyed by the ledger entry (a deployment run
gets it as its idempotency key; the in-process subflow re-registers the same run's version),
rollback changes nothing when there is no previous champion left, and an escalation event
carries the ledger id so a notification can be de-duplicated. Every decision goes to the
ledger with its evidence, and its outcome is attached when the action finishes.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field

from agentic_mlops.decisions import Outcome, TriageEvidence, TriageRecord
from agentic_mlops.schemas import DecisionSummary, DriftCheckResult, PerformanceSummary
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import approval, ledger, reference, registry, reports
from agentic_mlops.tasks.batch_assessment import BatchAssessment
from agentic_mlops.tasks.quality import QualityCheck

ESCALATED_EVENT = "agentic-mlops.drift.escalated"
RETRAIN_REQUESTED_EVENT = "agentic-mlops.retrain.requested"
RETRAIN_DEPLOYMENT = "retrain/retrain"
CHALLENGER_REGISTERED_EVENT = "agentic-mlops.challenger.registered"
TEAM_PARAMETERS = ("data_path", "recent_path", "triage_ledger_id", "model_name", "target")
"""What a retrain decision offers the team's training deployment; it gets those its flow takes."""


class TeamTraining(BaseModel):
    """What the team's own training run did for a retrain decision."""

    deployment: str
    flow_run_id: str | None = None
    state: str = Field(description="The run's final state, or why it has none (NotFound, ...).")
    challenger: int | None = Field(
        default=None, description="The version the run registered as `challenger`, if it did."
    )
    summary: str


def retraining_route(settings: Settings) -> Literal["team", "recipe"]:
    """Who retrains this model: the team's own deployment when one is configured, else our
    recipe (any task, a model we trained or one adopted from elsewhere)."""
    return "team" if settings.team_retrain_deployment() else "recipe"


@task(name="record-triage", cache_policy=NO_CACHE)
def record_triage(
    outcome: Outcome,
    evidence: TriageEvidence,
    model_version: int | None,
    flow_run_id: str | None,
    settings: Settings,
) -> ledger.LedgerEntry:
    """Append the triage decision, with the evidence it saw, to the ledger."""
    evidence_json = evidence.model_dump(mode="json")
    decision = outcome.decision
    return ledger.record_agent_decision(
        "drift_triage",
        evidence_json,
        flow_run_id,
        settings,
        model_name=evidence.model_name,
        model_version=model_version,
        action=decision.action,
        severity=decision.severity,
        confidence=decision.confidence,
        rationale=decision.rationale,
        evidence=TriageRecord(
            **dict(evidence),
            used=list(decision.evidence_used),
            drifted_features=decision.drifted_features,
        ).model_dump(mode="json"),
        agent_model=outcome.agent_model,
        overridden_by=outcome.overridden_by,
        attribution=outcome.attribution.model_dump(mode="json") if outcome.attribution else None,
    )


def drift_check_result(
    batch_id: str,
    ref: reference.Reference,
    quality: QualityCheck,
    assessed: BatchAssessment,
    outcome: Outcome,
    ledger_id: str,
    settings: Settings,
) -> DriftCheckResult:
    """What the drift check found and decided, as the flow returns it and the CLI prints it;
    what it did is added as it acts."""
    drift, observation, performance = assessed.drift, assessed.observation, assessed.performance
    decision, planned, name = outcome.decision, assessed.report, settings.model_name
    return DriftCheckResult(
        model_name=name,
        model_version=ref.version,
        adopted=ref.card.adopted,
        batch_id=batch_id,
        quality=quality.summary,
        dataset_drift=drift.dataset_drift,
        drift_share=drift.drift_share,
        columns=drift.verdicts(),
        skipped_columns=drift.skipped,
        prediction_drift=drift.prediction.drifted if drift.prediction else None,
        sequential_alarm=bool(observation and observation.sequential_alarm),
        decision=DecisionSummary(
            **decision.model_dump(exclude={"evidence_used"}),
            agent_model=outcome.agent_model,
            overridden_by=outcome.overridden_by,
            decided_by=outcome.attribution.decided_by,
            model_action=outcome.attribution.model_action,
            policy_action=outcome.attribution.policy_action,
        ),
        ledger_id=ledger_id,
        quarantined=quality.quarantined,
        report_path=planned.html if planned else None,
        report_link=reports.planned_file_link(
            name, ref.version, planned.html, reports.DRIFT_REPORTS, "Evidently report", settings
        )
        if planned
        else None,
        performance=PerformanceSummary(
            metric=performance.metric,
            reference=performance.reference,
            current=performance.current,
            rows=performance.rows,
        )
        if performance
        else None,
    )


def action_to_take(
    proposed: str, result: DriftCheckResult, entry: ledger.LedgerEntry, settings: Settings
) -> str:
    """The decided action once people have had their say: with approval mode `all`, a
    retrain or rollback nobody approved escalates. Why is added to the result."""
    action = proposed
    if action in ("retrain", "rollback"):
        go, why = approval.ask_before_acting(
            entry,
            triage_markdown(result, settings),
            settings.canary.approval_timeout_seconds,
            settings,
        )
        if not go:
            result.actions_taken.append(f"{action} not approved ({why})")
            action = "escalate"
    return action


def deployment_exists(name: str) -> bool:
    """Whether a Prefect deployment of that `flow/deployment` name is registered."""
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except (ObjectNotFound, ValueError):
        return False
    return True


def start_retraining(
    retrain_flow: Any, parameters: dict[str, Any], ledger_id: str, settings: Settings
) -> dict[str, Any]:
    """Retrain: through the `retrain` deployment when one is registered, else as a subflow.

    The deployment run is keyed by the ledger entry, so a retried drift check does not start
    a second retraining. The `agentic-mlops.retrain.requested` event it emits says the run
    is already started (`agentic-mlops.retrain.started: yes`), so the retrain deployment's
    trigger, which answers requests from elsewhere, does not start another. The retrain flow
    itself attaches the outcome (challenger version, holdout comparison with the champion)
    to the ledger entry named in its parameters.
    """
    deployed = deployment_exists(RETRAIN_DEPLOYMENT)
    emit_event(
        event=RETRAIN_REQUESTED_EVENT,
        resource={
            "prefect.resource.id": f"agentic-mlops.model.{settings.model_name}",
            "agentic-mlops.retrain.started": "yes",
        },
        payload={
            "ledger_id": ledger_id,
            "parameters": parameters,
            "how": "deployment" if deployed else "subflow",
        },
    )
    if deployed:
        run = run_deployment(
            RETRAIN_DEPLOYMENT,
            parameters=parameters,
            idempotency_key=f"retrain-{ledger_id}",
            timeout=0,
        )
        ledger.record_outcome(ledger_id, {"retrain_flow_run": str(run.id)}, settings)
        link = reports.prefect_link("flow-run", run.id, f"flow run {run.name}")
        return {"how": "deployment", "flow_run_id": str(run.id), "summary": link}
    state = retrain_flow(**parameters, return_state=True)
    if state.is_failed():
        ledger.record_outcome(ledger_id, {"retrain_failed": state.message}, settings)
        return {"how": "subflow", "summary": f"failed: {state.message}"}
    retrained = state.result()
    trained = retrained.training
    return {
        "how": "subflow",
        "version": trained.version,
        "summary": f"{trained.model_name} v{trained.version} registered as challenger "
        f"({retrained.best_family}, {retrained.comparison.summary()}); {retrained.hand_over}",
    }


def announce_challenger(
    model_name: str,
    version: int,
    triage_ledger_id: str | None = None,
    tracking_uri: str | None = None,
    how: str = "announced by the team's flow",
) -> dict[str, Any]:
    """Say that a team's own training registered a version as `challenger`, by a Prefect event.

    Called by the team's flow once it has moved the alias. The `canary` deployment's trigger
    (`prefect.yaml`) starts a canary rollout of that version of that model on the event. A run
    started by a retrain decision of ours (it was given a `triage_ledger_id`) is canaried by
    that decision's turn when the run ends (`run_team_training`), so its event is labelled
    `agentic-mlops.canary.handled: yes` and the trigger lets it pass: one canary per version.
    The version is tagged as announced in the registry (`tracking_uri`, default: MLflow's
    current one, the team's), so the monitor does not announce it again.

    Returns:
        The event's payload.
    """
    payload = {
        "model_name": model_name,
        "version": int(version),
        "triage_ledger_id": triage_ledger_id or "",
    }
    emit_event(
        event=CHALLENGER_REGISTERED_EVENT,
        resource={
            "prefect.resource.id": f"agentic-mlops.model.{model_name}",
            "agentic-mlops.canary.handled": "yes" if triage_ledger_id else "no",
        },
        payload=payload,
    )
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).set_model_version_tag(
            model_name, str(version), registry.ANNOUNCED_TAG, how
        )
    except MlflowException as error:  # the event starts the canary; the tag only dedupes
        logging.getLogger(__name__).warning(
            "%s v%s announced, but not tagged as announced: %s", model_name, version, error
        )
    return payload


def announce_unseen_challenger(settings: Settings) -> int | None:
    """A `challenger` alias moved in MLflow by code that did not announce it: announce it now
    and return its version, once.

    MLflow's registry emits no event of its own, so the monitor looks on every run. A version
    is unseen when it is the challenger, not the champion, carries no `ANNOUNCED_TAG` (our own
    registrations and `announce_challenger` set it) and no canary of it is in the ledger. A
    registry that cannot be read leaves it for the next run (logged): None.
    """
    from mlflow.exceptions import MlflowException

    name = settings.model_name
    try:
        challenger = registry.alias_version(name, registry.CHALLENGER, settings)
        champion = registry.alias_version(name, registry.CHAMPION, settings)
        if challenger is None or challenger == champion:
            return None
        if registry.announced(name, challenger, settings):
            return None
    except MlflowException as error:
        logging.getLogger(__name__).warning("challenger of %s not looked at: %s", name, error)
        return None
    canaried = ledger.list_decisions(name, decision_point="canary_promotion", settings=settings)
    if any(entry.model_version == challenger for entry in canaried):
        registry.mark_announced(name, challenger, "canaried before", settings)
        return None
    announce_challenger(name, challenger, None, settings.tracking_uri(), "seen by the monitor")
    return challenger


def run_team_training(
    parameters: dict[str, Any], ledger_id: str, settings: Settings
) -> TeamTraining:
    """Run the team's own training deployment for a retrain decision and wait for it.

    The run gets those of `TEAM_PARAMETERS` that its flow declares (Prefect refuses any
    other), is keyed by the ledger entry so a retried decision does not start a second one,
    and is waited for up to `retrain_deployment_timeout_seconds`. The version it registered
    as `challenger` (the alias moved during the run, to a version that is not the champion)
    is what the canary then takes over; the run, its state and that version go to the ledger
    entry's outcome.
    """
    deployment = settings.team_retrain_deployment()
    name = settings.model_name
    before = registry.alias_version(name, registry.CHALLENGER, settings)
    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name(deployment)
    except (ObjectNotFound, ValueError):
        summary = f"the team's training deployment {deployment!r} is not registered"
        ledger.record_outcome(
            ledger_id, {"retrain_deployment": deployment, "retrain_failed": summary}, settings
        )
        return TeamTraining(deployment=deployment, state="NotFound", summary=summary)
    declared = set((found.parameter_openapi_schema or {}).get("properties", {}))
    run = run_deployment(
        deployment,
        parameters={k: v for k, v in parameters.items() if k in declared and k in TEAM_PARAMETERS},
        idempotency_key=f"team-retrain-{name}-{ledger_id}",
        timeout=settings.retrain.deployment_timeout_seconds,
        poll_interval=1,
    )
    state = run.state
    after = registry.alias_version(name, registry.CHALLENGER, settings)
    champion = registry.alias_version(name, registry.CHAMPION, settings)
    finished = state is not None and state.is_completed()
    challenger = after if finished and after not in (None, before, champion) else None
    link = reports.prefect_link("flow-run", run.id, f"flow run {run.name}")
    ran = f"{deployment} ({link})"
    if challenger is not None:
        summary = f"{ran} registered {name} v{challenger} as challenger"
    elif finished:
        summary = f"{ran} completed without a new challenger of {name}"
    elif state is not None and not state.is_final():
        waited = settings.retrain.deployment_timeout_seconds
        summary = f"{ran} still {state.name} after {waited:.0f} s; not waited for"
    else:
        ended = f"{state.name}: {state.message}" if state else "without a state"
        summary = f"{ran} ended {ended}"
    ledger.record_outcome(
        ledger_id,
        {
            "retrain_deployment": deployment,
            "retrain_flow_run": str(run.id),
            "retrain_state": state.name if state else None,
            "challenger_version": challenger,
        },
        settings,
    )
    return TeamTraining(
        deployment=deployment,
        flow_run_id=str(run.id),
        state=state.name if state else "Unknown",
        challenger=challenger,
        summary=summary,
    )


def retrain_for(
    result: DriftCheckResult,
    parameters: dict[str, Any],
    ledger_id: str,
    retrain_flow: Any,
    hand_over: Any,
    settings: Settings,
) -> None:
    """Retrain for a retrain decision, by `retraining_route`: the team's own deployment, whose
    new challenger is then handed over to the canary, or our `retrain_flow`. What happened
    is added to the result and the ledger entry's outcome."""
    if retraining_route(settings) == "team":
        team = run_team_training(parameters, ledger_id, settings)
        result.retrained_version = team.challenger
        result.actions_taken.append(f"retrain: {team.summary}")
        if team.challenger is not None:
            handed, _ = hand_over("auto", team.challenger, settings, ledger_id)
            ledger.record_outcome(ledger_id, {"hand_over": handed}, settings)
            result.actions_taken.append(f"canary: {handed}")
        return
    trained = start_retraining(retrain_flow, parameters, ledger_id, settings)
    result.retrained_version = trained.get("version")
    result.actions_taken.append(
        f"retrain: {trained['how']} -> {trained.get('summary', '')}".strip()
    )


def roll_back(model_name: str, ledger_id: str, settings: Settings) -> str:
    """Move `champion` back to the previous champion; record what moved."""
    move = registry.rollback_champion(model_name, settings)
    ledger.record_outcome(
        ledger_id, {"aliases_before": move.before, "aliases_after": move.after}, settings
    )
    if not move.changed:
        return "rollback: no previous champion, nothing moved"
    return (
        f"rollback: champion v{move.before[registry.CHAMPION]} -> v{move.after[registry.CHAMPION]}"
    )


def escalate(model_name: str, batch_id: str, decision: DecisionSummary, ledger_id: str) -> str:
    """Emit the escalation event that an automation routes to a person."""
    emit_event(
        event=ESCALATED_EVENT,
        resource={
            "prefect.resource.id": f"agentic-mlops.model.{model_name}",
            "prefect.resource.name": model_name,
        },
        payload={
            "ledger_id": ledger_id,
            "batch_id": batch_id,
            "severity": decision.severity,
            "confidence": decision.confidence,
            "rationale": decision.rationale,
            "drifted_features": decision.drifted_features,
        },
    )
    return f"escalate: emitted {ESCALATED_EVENT}"


def triage_markdown(result: DriftCheckResult, settings: Settings, top: int = 5) -> str:
    """The decision and the evidence that mattered, with links: for the triage artifact and
    for the approval form."""
    decision = result.decision
    drifted = sorted(
        ((n, c) for n, c in result.columns.items() if c.drifted), key=lambda item: -item[1].score
    )
    lines = [
        f"## Drift triage of `{result.batch_id}`: **{decision.action}**",
        f"{result.model_name} champion v{result.model_version}; decided by "
        f"`{decision.agent_model}`, confidence {decision.confidence:.2f}, severity "
        f"{decision.severity}.",
        "",
        f"> {decision.rationale}",
        "",
        f"Decided by `{decision.decided_by}`; the model's own decision "
        f"{decision.model_action or 'none given'}, the policy's {decision.policy_action}  ",
        f"Guardrail: {decision.overridden_by or 'none'}  ",
        f"Drift share {result.drift_share:.2f} of {len(result.columns)} columns; dataset drift "
        f"{result.dataset_drift}; sequential alarm {result.sequential_alarm}; prediction drift "
        f"{result.prediction_drift}  ",
        "Quality: "
        + ("passed" if result.quality.passed else f"{len(result.quality.failures)} failures")
        + (f"; batch moved to `{result.quarantined}`" if result.quarantined else ""),
    ]
    if result.performance:
        p = result.performance
        lines.append(
            f"Performance on the batch's labels: {p.metric} {p.current:.3f} vs "
            f"{p.reference:.3f} at training ({p.rows} rows)"
        )
    if drifted:
        lines += ["", f"Top drifted features ({len(drifted)} in all):", ""]
        lines += ["| column | test | score |", "|---|---|---|"]
        lines += [f"| {n} | {c.test} | {c.score:.4f} |" for n, c in drifted[:top]]
    links = [reports.artifact_link(reports.artifact_key(result.model_name, "drift-triage"))]
    if result.report_link:
        links.append(result.report_link)
    if result.model_version is not None:
        links.append(reports.mlflow_version_link(result.model_name, result.model_version, settings))
    lines += ["", "Evidence: " + " · ".join(links), f"Ledger entry: `{result.ledger_id}`"]
    return "\n".join(lines)


def ledger_markdown(entries: list[ledger.LedgerEntry]) -> str:
    """The latest decisions, newest first, outcome beside each: who decided, what it did."""
    from agentic_mlops.tasks.lifecycle_report import summary, verdict

    rows = "\n".join(
        f"| {e.created_at[5:16].replace('T', ' ')} | {e.decision_point} | "
        f"{'' if e.model_version is None else f'v{e.model_version}'} | **{e.action}** | "
        f"{({'good': 'right', 'bad': 'wrong'}).get(verdict(e), 'pending')} "
        f"{summary(e)[:60]} | "
        f"{'' if e.confidence is None else f'{e.confidence:.2f}'} | {e.agent_model} | "
        f"{'yes' if e.overridden_by else ''} |"
        for e in entries
    )
    return (
        "# Decision ledger\n\n| time (UTC) | decision point | model | action | outcome | "
        "confidence | decided by | guardrail |\n|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n"
    )


def publish_drift_artifacts(result: DriftCheckResult, settings: Settings) -> None:
    """Per-column table (drifted first), the triage with its evidence and links, and the
    ledger, as keyed artifacts of the flow run (called from the flow, not a task)."""
    key_prefix = reports.artifact_key(result.model_name)
    columns = sorted(result.columns.items(), key=lambda item: (not item[1].drifted, -item[1].score))
    create_table_artifact(
        key=f"{key_prefix}-drift-columns",
        table=[
            {"column": n, "drifted": c.drifted, "test": c.test, "score": round(c.score, 4)}
            for n, c in columns
        ],
        description=f"Per-column drift of batch {result.batch_id}, drifted first",
    )
    failures = "\n".join(f"- {f}" for f in result.quality.failures) or "- none"
    create_markdown_artifact(
        key=f"{key_prefix}-drift-triage",
        markdown=(
            f"# Drift check\n\n{triage_markdown(result, settings)}\n\n"
            f"Actions: {'; '.join(result.actions_taken) or 'none'}\n\n"
            f"## Quality failures\n{failures}\n"
        ),
        description=f"Triage of batch {result.batch_id}: {result.decision.action}",
    )
    entries = ledger.list_decisions(result.model_name, limit=20, settings=settings)
    create_markdown_artifact(
        key=f"{key_prefix}-decision-ledger",
        markdown=ledger_markdown(entries),
        description="The latest decisions, who made them, and their outcomes",
    )
