"""A retraining's steps, in the order the `retrain` flow (`flows/retrain.py`) runs them.

What asked for it (the triage decision, a recent production batch) is read first. The task
the retraining fits is the one asked for, else the champion's (its model card), else what the
target's values say. The window is split into holdout, fit and validation rows, all real; the
advisor's proposal gets the run's own caps and goes to the ledger; synthetic rows, when asked
for, join the fit rows only (SMOTE-NC per label: binary labels only). After the search, the
best configuration is refit on every non-holdout row and compared with the champion on the
same holdout by the task's metric (ROC AUC, accuracy or R²), then registered as `challenger`.
The search's MLflow run is closed either way (`closed_on_failure`), and the challenger is
handed to the canary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import BaseModel, ValidationError
from sklearn.metrics import brier_score_loss, mean_absolute_error
from sklearn.model_selection import train_test_split

from agentic_mlops.decisions import (
    METRIC_LABEL,
    TASK_METRIC,
    AdvisorEvidence,
    Outcome,
    PastRun,
    SegmentCoverage,
    Task,
    TriageContext,
    TriageRecord,
    task_metric,
)
from agentic_mlops.schemas import TrainingResult
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry, reports, rollout
from agentic_mlops.tasks.batches import DataError, read_data, write_table
from agentic_mlops.tasks.drift_actions import deployment_exists
from agentic_mlops.tasks.metrics import LATENCY_REGRESSION_MS
from agentic_mlops.tasks.models import (
    TuningData,
    family_pipeline,
    pipeline_labels,
    pipeline_scores,
    row_latency_ms,
    task_labels,
)
from agentic_mlops.tasks.publishing import publish_model
from agentic_mlops.tasks.reference import ModelCard, score_with, scoring_model, stored_card
from agentic_mlops.tasks.search_runs import finish_search_run, past_runs
from agentic_mlops.tasks.synthesis import Segment, Synthesis, find_segments
from agentic_mlops.tasks.synthesis import synthesize as synthesize_rows
from agentic_mlops.tasks.training import (
    Split,
    evaluate_model,
    feature_columns,
    split_data,
)
from agentic_mlops.tasks.tuning import SearchResult

CANARY_DEPLOYMENT = "canary-rollout/canary"
CANARY_REQUESTED_EVENT = "agentic-mlops.canary.requested"
HandOver = Literal["auto", "deployment", "event", "subflow", "none"]
NOT_BETTER = "none: the challenger did not beat the champion on the holdout"
TASK_LOSS = {"binary": "brier_score", "regression": "mae"}
"""The loss a holdout comparison shows beside the task's metric (none for multiclass, whose
models are compared on predicted labels)."""


class HoldoutComparison(BaseModel):
    """Challenger and champion on the same holdout rows, by the task's metric (higher is
    better) and, where the task has one, a loss (lower is better)."""

    rows: int
    metric: str = "roc_auc"
    challenger_score: float
    champion_version: int | None
    champion_score: float | None = None
    loss_metric: str | None = None
    challenger_loss: float | None = None
    champion_loss: float | None = None

    @property
    def beats_champion(self) -> bool:
        return self.champion_score is None or self.challenger_score >= self.champion_score

    def summary(self) -> str:
        """ "holdout R² 0.412 vs champion v1 0.398" (or "vs no champion")."""
        champion = (
            f"champion v{self.champion_version} {self.champion_score:.3f}"
            if self.champion_score is not None
            else "no champion"
        )
        label = METRIC_LABEL.get(self.metric, self.metric)
        return f"holdout {label} {self.challenger_score:.3f} vs {champion}"


@dataclass(frozen=True)
class SearchRows:
    """One retraining's rows: the holdout split, the fit and validation rows the search uses
    (always real), the drifted segments the fit rows barely cover, and the synthetic rows
    added to the fit rows for some of them (none until `add_synthetic_rows`)."""

    frame: pd.DataFrame
    source: str
    target: str
    seed: int
    test_size: float
    split: Split
    x_fit: pd.DataFrame
    x_val: pd.DataFrame
    y_fit: pd.Series
    y_val: pd.Series
    segments: list[Segment]
    synthesis: Synthesis | None = None
    task: Task = "binary"

    @property
    def fit_rows(self) -> pd.DataFrame:
        return self.x_fit.assign(**{self.target: self.y_fit})

    @property
    def synthetic(self) -> pd.DataFrame:
        return self.synthesis.rows if self.synthesis is not None else self.fit_rows.iloc[:0]

    def tuning_data(self, latency_limit_ms: float | None = None) -> TuningData:
        """The search's rows: the fit rows with the synthetic ones, and the validation rows;
        and the one-row scoring time its best trial should stay within."""
        numeric, categorical = feature_columns(self.frame, self.target)
        synthetic = self.synthetic
        return TuningData(
            x_fit=pd.concat([self.x_fit, synthetic.drop(columns=[self.target])], ignore_index=True),
            y_fit=task_labels(
                pd.concat([self.y_fit, synthetic[self.target]], ignore_index=True), self.task
            ),
            x_val=self.x_val,
            y_val=self.y_val,
            numeric=numeric,
            categorical=categorical,
            seed=self.seed,
            task=self.task,
            latency_limit_ms=latency_limit_ms,
        )

    def training_rows(self) -> pd.DataFrame:
        """The refit's rows: every non-holdout row, with the synthetic ones."""
        split = self.split
        return pd.concat(
            [split.x_train.assign(**{self.target: split.y_train}), self.synthetic],
            ignore_index=True,
        )


@dataclass(frozen=True)
class Challenger:
    """The refit best configuration as registered, and how it did against the champion."""

    training: TrainingResult
    comparison: HoldoutComparison
    synthetic_rows: int


def triage_context(ledger_id: str | None, settings: Settings) -> TriageContext | None:
    """The triage decision that asked for this retraining, as the advisor reads it."""
    if not ledger_id:
        return None
    entry = ledger.get_decision(ledger_id, settings)
    if entry is None:
        raise DataError(f"no decision {ledger_id!r} in the ledger")
    if entry.decision_point != "drift_triage":
        raise DataError(f"decision {ledger_id!r} is a {entry.decision_point}, not a drift triage")
    try:
        evidence = TriageRecord.model_validate(entry.evidence)
    except ValidationError as error:
        raise DataError(
            f"decision {ledger_id!r} holds no triage evidence: {error.errors()[0]['msg']}"
        ) from error
    return TriageContext(
        action=entry.action,
        severity=entry.severity,
        drifted_features=evidence.drifted_features,
        performance_dropped="performance" in evidence.used and entry.action == "retrain",
        rationale=entry.rationale,
    )


def champion_card(settings: Settings) -> ModelCard | None:
    """The champion's model card (ours or adopted), read once: the target and the task a
    retraining fits unless told otherwise. None without a champion or a card."""
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    return stored_card(settings.model_name, champion, settings) if champion else None


def read_request(
    triage_ledger_id: str | None, recent_path: str | None, settings: Settings
) -> tuple[TriageContext | None, pd.DataFrame | None]:
    """What asked for the retraining and the recent batch it answers.

    Raises:
        DataError, OSError: no such decision, or an unreadable batch.
    """
    triage = triage_context(triage_ledger_id, settings)
    return triage, read_data(recent_path) if recent_path else None


def split_window(
    loaded: tuple[pd.DataFrame, str],
    target: str,
    test_size: float,
    validation_size: float,
    seed: int,
    triage: TriageContext | None,
    recent: pd.DataFrame | None,
    task: Task = "binary",
) -> SearchRows:
    """Split off the holdout (stratified by the label for a classifier), split the rest into
    fit and validation rows, and find the drifted features' segments the fit rows barely
    cover (binary labels only: synthesis interpolates per label).

    Raises:
        DataError: the target does not suit the task.
    """
    frame, source = loaded
    split = split_data(frame, target, test_size, seed, task)
    x_fit, x_val, y_fit, y_val = train_test_split(
        split.x_train,
        split.y_train,
        test_size=validation_size,
        random_state=seed,
        stratify=None if task == "regression" else split.y_train,
    )
    rows = SearchRows(
        frame,
        source,
        target,
        seed,
        test_size,
        split,
        x_fit,
        x_val,
        y_fit,
        y_val,
        segments=[],
        task=task,
    )
    if recent is None or not triage or not triage.drifted_features or task != "binary":
        return rows
    return replace(rows, segments=find_segments(rows.fit_rows, recent, triage.drifted_features))


def advisor_evidence(
    rows: SearchRows, triage: TriageContext | None, settings: Settings
) -> AdvisorEvidence:
    """What the tuning advisor sees: past runs, the triage decision, the segments' coverage."""
    metric = TASK_METRIC[rows.task]
    return AdvisorEvidence(
        model_name=settings.model_name,
        task=rows.task,
        metric=metric,
        past_runs=[PastRun(**run) for run in past_runs(settings, metric)],
        triage=triage,
        segments=[
            SegmentCoverage(
                name=s.name, training_share=s.training_share, recent_share=s.recent_share
            )
            for s in rows.segments
        ],
    )


@task(name="advise-search", cache_policy=NO_CACHE)
def advise_search(
    advisor: Callable[[AdvisorEvidence, Settings], Outcome],
    evidence: AdvisorEvidence,
    settings: Settings,
    max_trials: int | None,
    time_budget_seconds: float | None,
    synthesize: bool | None,
) -> Outcome:
    """The advisor's guarded proposal, with the run's own caps and synthesis switch applied.

    `advisor` is the tuning advisor's `advise` (agents sit above tasks, so the flow hands
    it in)."""
    outcome = advisor(evidence, settings)
    proposal = outcome.decision
    space = proposal.space.model_copy(
        update={
            "max_trials": min(proposal.space.max_trials, max_trials or 10**9),
            "time_budget_seconds": min(
                proposal.space.time_budget_seconds, time_budget_seconds or float("inf")
            ),
        }
    )
    update: dict[str, Any] = {"space": space}
    if synthesize is False:
        update |= {"synthesize": False, "segments": []}
    elif synthesize and evidence.segments:
        update |= {"synthesize": True, "segments": [s.name for s in evidence.segments]}
    capped = outcome.model_copy(update={"decision": proposal.model_copy(update=update)})
    get_run_logger().info("advisor (%s): %s", capped.agent_model, capped.decision.rationale)
    return capped


def record_advice(
    outcome: Outcome, evidence: AdvisorEvidence, settings: Settings
) -> ledger.LedgerEntry:
    """Append the advisor's proposal, with the evidence it saw, to the ledger."""
    evidence_json = evidence.model_dump(mode="json")
    proposal = outcome.decision
    return ledger.record_agent_decision(
        "tuning_advisor",
        evidence_json,
        flow_run.get_id(),
        settings,
        model_name=settings.model_name,
        action="search+synthesize" if proposal.synthesize else "search",
        rationale=proposal.rationale,
        evidence={
            "proposal": proposal.model_dump(mode="json"),
            "past_runs": len(evidence.past_runs),
            "triage": evidence_json["triage"],
            "segments": evidence_json["segments"],
        },
        agent_model=outcome.agent_model,
        overridden_by=outcome.overridden_by,
        attribution=outcome.attribution.model_dump(mode="json") if outcome.attribution else None,
    )


def add_synthetic_rows(rows: SearchRows, proposal: Any, settings: Settings) -> SearchRows:
    """SMOTE-NC rows for the segments the proposal names, when it asks for them, capped at
    `synthesis_max_share` of the fit rows."""
    if not proposal.synthesize:
        return rows
    fit_rows = rows.fit_rows
    synthesis = synthesize_rows(
        fit_rows,
        rows.target,
        [s for s in rows.segments if s.name in proposal.segments],
        max_rows=int(settings.tune.synthesis_max_share * len(fit_rows)),
        seed=rows.seed,
    )
    get_run_logger().info("synthesised %s (skipped: %s)", synthesis.per_segment, synthesis.skipped)
    return replace(rows, synthesis=synthesis)


LATENCY_MARGIN_MS = LATENCY_REGRESSION_MS / 2
"""How much slower than the champion a challenger may score a row, in CPU time. Half the
canary's soft limit: served, a gap grows (a forest at 8.7 ms of CPU beside a 4.0 ms champion
made the canary's latency analysis marginal), and the canary's own test judges the rest."""


@task(name="time-the-champion", cache_policy=NO_CACHE)
def champion_latency_limit(rows: SearchRows, settings: Settings) -> float | None:
    """The one-row scoring time a challenger should stay within: the champion's own, timed
    here as a model server scores a request, plus half the canary's soft latency limit
    (`LATENCY_MARGIN_MS`). None without a champion, or one that cannot score these rows."""
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    if champion is None:
        return None
    try:
        model = scoring_model(settings.model_name, champion, settings)
        own = row_latency_ms(lambda row: model.score(row, rows.task), rows.x_val)
    except DataError as error:
        get_run_logger().info("champion v%s not timed: %s", champion, error)
        return None
    get_run_logger().info("champion v%s scores a row in %.1f ms", champion, own)
    return own + LATENCY_MARGIN_MS


def search_run_name(settings: Settings, triage_ledger_id: str | None) -> str:
    """The search run's default name: "retrain <model> after <ledger id>"."""
    after = f" after {triage_ledger_id}" if triage_ledger_id else ""
    return f"retrain {settings.model_name}{after}"


def _loss(task: Task, labels: np.ndarray, scores: np.ndarray | None) -> float | None:
    if scores is None or task not in TASK_LOSS:
        return None
    if task == "regression":
        return float(mean_absolute_error(labels, scores))
    return float(brier_score_loss(labels, scores))


@task(name="compare-on-holdout", cache_policy=NO_CACHE)
def compare_on_holdout(
    challenger_scores: np.ndarray,
    x_test: pd.DataFrame,
    y_test: pd.Series,
    settings: Settings,
    task: Task = "binary",
    challenger_labels: pd.Series | None = None,
) -> HoldoutComparison:
    """The challenger's and the current champion's metric for the task (and its loss) on
    one holdout; the champion is scored as any MLflow model is (`tasks/scoring.py`).

    Args:
        challenger_labels: The holdout's labels as they meet the challenger's scores
            (multiclass: coded by its classes); None: `y_test` as it is.
    """
    y = y_test.to_numpy()
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    champion_scores = champion_y = None
    if champion:
        champion_scores = score_with(settings.model_name, champion, x_test, settings, task)
        champion_y = y
        if champion_scores is not None and task == "multiclass":
            model = scoring_model(settings.model_name, champion, settings)
            champion_y = model.coded(y_test, task).to_numpy()
    return HoldoutComparison(
        rows=len(y),
        metric=TASK_METRIC[task],
        challenger_score=task_metric(
            task, y if challenger_labels is None else challenger_labels, challenger_scores
        ),
        champion_version=champion,
        champion_score=(
            task_metric(task, champion_y, champion_scores) if champion_scores is not None else None
        ),
        loss_metric=TASK_LOSS.get(task),
        challenger_loss=_loss(task, y, challenger_scores),
        champion_loss=_loss(task, y, champion_scores),
    )


def keep_synthetic_rows(rows: SearchRows, settings: Settings) -> list[tuple] | None:
    """Write the synthetic rows under the data folder, named by their digest, and return them
    as the extra dataset the training run logs (with their lineage); None without any."""
    synthesis = rows.synthesis
    if synthesis is None or not len(synthesis.rows):
        return None
    kept = write_table(
        synthesis.rows,
        settings.data_dir / "synthetic" / f"{settings.model_name}-{synthesis.digest()}.parquet",
    )
    return [("synthetic", synthesis.rows, {**synthesis.lineage(), "source": str(kept)})]


def publish_challenger(
    found: SearchResult, rows: SearchRows, parent_run_id: str, settings: Settings
) -> Challenger:
    """Refit the best configuration on every non-holdout row, compare it with the champion
    on the holdout, and register it as `challenger`, a child run of the search."""
    split, target = rows.split, rows.target
    numeric, categorical = feature_columns(rows.frame, target)
    train_rows = rows.training_rows()
    model = family_pipeline(
        found.best_family, found.best_params, numeric, categorical, rows.seed, task=rows.task
    ).fit(train_rows.drop(columns=[target]), task_labels(train_rows[target], rows.task))
    evaluation = evaluate_model(model, split.x_test, split.y_test, rows.seed, rows.task)
    comparison = compare_on_holdout(
        pipeline_scores(model, split.x_test, rows.task),
        split.x_test,
        split.y_test,
        settings,
        rows.task,
        pipeline_labels(model, split.y_test, rows.task),
    )
    get_run_logger().info("challenger: %s", comparison.summary())
    synthetic_rows = len(rows.synthetic)
    trained, _ = publish_model(
        model,
        rows.frame,
        split,
        target,
        {
            "family": found.best_family,
            **found.best_params,
            "seed": rows.seed,
            "test_size": rows.test_size,
            "rows": len(rows.frame),
            "synthetic_rows": synthetic_rows,
        },
        evaluation,
        rows.source,
        f"retrain-best-{found.best_family}",
        parent_run_id=parent_run_id,
        extra_datasets=keep_synthetic_rows(rows, settings),
        training_rows=train_rows,
        settings=settings,
        task=rows.task,
    )
    return Challenger(trained, comparison, synthetic_rows)


@contextmanager
def closed_on_failure(search_run_id: str, settings: Settings) -> Iterator[None]:
    """Mark the search's MLflow run FAILED when anything from the search to the registration
    fails, so no run is left RUNNING; when MLflow itself is what failed, say the run stays
    open and raise the original error."""
    try:
        yield
    except Exception:
        try:
            finish_search_run(search_run_id, {}, settings, failed=True)
        except Exception as error:
            get_run_logger().warning("search run %s left open: %s", search_run_id, error)
        raise


def close_search(
    found: SearchResult,
    challenger: Challenger,
    search_run_id: str,
    ledger_ids: list[str],
    settings: Settings,
) -> None:
    """Record the search's summary figures on its run and close it; tell the ledger entries
    (the advisor's, the triage's) what the retraining produced."""
    comparison = challenger.comparison
    metric = comparison.metric
    finish_search_run(
        search_run_id,
        {
            f"best_validation_{metric}": found.best_score,
            f"holdout_{metric}": comparison.challenger_score,
            **(
                {f"champion_holdout_{metric}": comparison.champion_score}
                if comparison.champion_score is not None
                else {}
            ),
            "trials": len(found.trials),
            "stopped_early": found.stopped_early,
            "search_seconds": found.seconds,
            "synthetic_rows": challenger.synthetic_rows,
            "challenger_version": challenger.training.version,
        },
        settings,
    )
    outcome = {
        "challenger_version": challenger.training.version,
        "holdout_metric": metric,
        f"challenger_holdout_{metric}": comparison.challenger_score,
        "champion_version": comparison.champion_version,
        f"champion_holdout_{metric}": comparison.champion_score,
        "beat_champion": comparison.beats_champion,
        "search_run_id": search_run_id,
    }
    for entry_id in ledger_ids:
        ledger.record_outcome(entry_id, outcome, settings)


def hand_over_to_canary(
    how: HandOver,
    version: int,
    settings: Settings,
    ledger_id: str,
    canary: Callable[..., State] | None = None,
) -> tuple[str, str | None]:
    """Start the canary rollout of the challenger; say how, and the flow run if one started.

    `canary` is the canary flow, which `subflow` runs in this run (flows sit above tasks, so
    the caller hands it in).
    """
    if how == "none":
        return "none: not handed over", None
    nothing_serves = rollout.why_no_canary(settings)
    if nothing_serves:  # a canary would judge no traffic, then leave its processes running
        return f"none: no canary ran, {nothing_serves}; v{version} is the challenger", None
    deployed = deployment_exists(CANARY_DEPLOYMENT)
    if how == "deployment" or (how == "auto" and deployed):
        if not deployed:
            raise DataError(f"no {CANARY_DEPLOYMENT} deployment is registered")
        run = run_deployment(
            CANARY_DEPLOYMENT,
            parameters={"version": version, "model_name": settings.model_name},
            idempotency_key=f"canary-{settings.model_name}-v{version}-{ledger_id}",
            timeout=0,
        )
        link = reports.prefect_link("flow-run", run.id, f"flow run {run.name}")
        return f"deployment {CANARY_DEPLOYMENT}: {link}", str(run.id)
    if how == "subflow":
        if canary is None:
            raise ValueError("a subflow hand-over needs the canary flow")
        state = canary(version=version, model_name=settings.model_name, return_state=True)
        outcome = state.result(raise_on_failure=False)
        return f"subflow: {getattr(outcome, 'outcome', state.name)}", None
    emit_event(
        event=CANARY_REQUESTED_EVENT,
        resource={"prefect.resource.id": f"agentic-mlops.model.{settings.model_name}"},
        payload={"version": version, "ledger_id": ledger_id, "model_name": settings.model_name},
    )
    return f"event: emitted {CANARY_REQUESTED_EVENT}", None


def hand_over(
    how: HandOver,
    challenger: Challenger,
    require_improvement: bool,
    ledger_ids: list[str],
    settings: Settings,
    canary: Callable[..., State] | None = None,
) -> str:
    """Hand the challenger to the canary unless it had to beat the champion and did not;
    tell the ledger entries (the first is the advisor's) how."""
    if require_improvement and not challenger.comparison.beats_champion:
        handed = NOT_BETTER
    else:
        version = challenger.training.version
        handed, _ = hand_over_to_canary(how, version, settings, ledger_ids[0], canary)
    get_run_logger().info("hand-over: %s", handed)
    for entry_id in ledger_ids:
        ledger.record_outcome(entry_id, {"hand_over": handed}, settings)
    return handed


def search_markdown(result: SearchResult, comparison: HoldoutComparison, synth: int) -> str:
    label = METRIC_LABEL.get(result.metric, result.metric)
    rows = "\n".join(
        f"| {t.family} | {t.score:.4f} | {t.steps} | {'yes' if t.stopped_early else ''} |"
        for t in sorted(result.trials, key=lambda t: -(t.score or 0))
        if t.score is not None
    )
    champion = (
        f"champion v{comparison.champion_version}: {comparison.champion_score:.4f}"
        if comparison.champion_score is not None
        else "no champion to compare with"
    )
    return (
        f"# Retraining search ({result.algorithm}, "
        f"{'ASHA' if result.early_stopping else 'no early stopping'}, on {result.cluster})\n\n"
        f"{len(result.trials)} trials, {result.stopped_early} stopped early, "
        f"{result.seconds:.0f} s; synthetic rows: {synth}\n\n"
        f"Best: **{result.best_family}** {result.best_params}\n\n"
        f"Holdout {label} ({comparison.rows} rows): challenger "
        f"{comparison.challenger_score:.4f}, {champion}\n\n"
        f"| family | validation {label} | steps | stopped early |\n|---|---|---|---|\n{rows}\n"
    )


def publish_search_report(
    found: SearchResult, challenger: Challenger, handed: str, advice: Outcome, settings: Settings
) -> None:
    """The search's markdown (best trial, holdout comparison, hand-over, the advisor's
    attribution) and a table of every trial, as keyed Prefect artifacts."""
    key = reports.artifact_key(settings.model_name)
    trained = challenger.training
    label = f"validation {METRIC_LABEL.get(found.metric, found.metric)}"
    create_markdown_artifact(
        key=f"{key}-retrain-search",
        markdown=search_markdown(found, challenger.comparison, challenger.synthetic_rows)
        + f"\nHand-over: {handed}\n"
        + (f"\n## Advisor\n\n{advice.attribution.markdown()}" if advice.attribution else ""),
        description=f"Search behind {trained.model_name} v{trained.version}",
    )
    create_table_artifact(
        key=f"{key}-retrain-trials",
        table=[
            {
                "family": t.family,
                label: None if t.score is None else round(t.score, 4),
                "steps": t.steps,
                "stopped early": t.stopped_early,
                "parameters": ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in t.params.items()
                    if k != "family"
                ),
            }
            for t in sorted(found.trials, key=lambda t: -(t.score or 0))
        ],
        description="Every trial of the latest retraining search",
    )
