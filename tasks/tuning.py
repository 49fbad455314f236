"""Hyperparameter and model-family search with Ray Tune, every trial tracked in MLflow.

A `SearchSpace` names the families to try, a range per hyperparameter, a trial and time
budget and the search algorithm (random sampling or Optuna's TPE). `run_search` runs it on
the local Ray runtime (`tune_num_cpus` CPUs) or, when `RAY_ADDRESS` is set, on that cluster;
the ASHA scheduler ends trials that trail their peers after the first steps. A search fits the
task of its data (`TuningData.task`): families that cannot fit it are left out, and trials are
ranked by the task's validation metric (ROC AUC, accuracy or R²). Each trial is an MLflow
child run of the search's parent run, with its parameters and its validation metric at every
step; the driver logs them (`tasks/search_runs.py`), so workers need no access to
the tracking store.

With the same seed a search samples the same configurations wherever it runs; with one trial
at a time (`max_concurrent_trials=1`) ASHA also stops the same trials, so the best
configuration does not depend on the cluster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, Field, FiniteFloat, model_validator

from agentic_mlops.decisions import METRIC_LABEL
from agentic_mlops.settings import Settings
from agentic_mlops.tasks.models import (
    PARAMETER_BOUNDS,
    STEPS,
    TASK_FAMILIES,
    ModelFamily,
    TuningData,
    family_params,
    ray_trial,
)
from agentic_mlops.tasks.search_runs import TrialRuns

SCORE = "score"
"""What each trial reports its task's validation metric as, and the search maximises."""

Algorithm = Literal["random", "optuna"]


class ParameterRange(BaseModel):
    """The values one hyperparameter is sampled from; `log` samples on a log scale."""

    low: FiniteFloat = Field(description="Lowest value; NaN or infinite ends cannot be sampled.")
    high: FiniteFloat
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ParameterRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


DEFAULT_RANGES: dict[str, dict[str, ParameterRange]] = {
    "gradient_boosting": {
        "learning_rate": ParameterRange(low=0.02, high=0.3, log=True),
        "max_iter": ParameterRange(low=50, high=300),
        "max_leaf_nodes": ParameterRange(low=8, high=64, log=True),
        "min_samples_leaf": ParameterRange(low=5, high=100, log=True),
        "l2_regularization": ParameterRange(low=0.0, high=2.0),
    },
    "random_forest": {
        "n_estimators": ParameterRange(low=50, high=300),
        "max_depth": ParameterRange(low=4, high=20),
        "min_samples_leaf": ParameterRange(low=1, high=50, log=True),
        "max_features": ParameterRange(low=0.2, high=0.9),
    },
    "logistic_regression": {
        "C": ParameterRange(low=0.001, high=100.0, log=True),
        "max_iter": ParameterRange(low=100, high=1_000),
    },
}
"""Where a search looks when nothing is known yet: the middle of each parameter's bounds."""


class SearchSpace(BaseModel):
    """What a search tries: families, a range per hyperparameter, budget and algorithm.

    A family given without some parameter searches it over `DEFAULT_RANGES`. Ranges must lie
    within the parameter's bounds (`models.PARAMETER_BOUNDS`) and integer parameters need
    a range that holds an integer.
    """

    families: dict[ModelFamily, dict[str, ParameterRange]] = Field(
        min_length=1, description="Model families to try, each with its parameter ranges."
    )
    max_trials: int = Field(ge=1, description="Most trials (configurations) to run.")
    time_budget_seconds: float = Field(
        gt=0,
        description="Wall-clock budget of the search; spent before any trial finished, the "
        "search runs on until one does (at most 5 minutes more).",
    )
    algorithm: Algorithm = Field(default="optuna", description="random or optuna (TPE).")

    @model_validator(mode="after")
    def _within_bounds(self) -> SearchSpace:
        problems = []
        for family, ranges in self.families.items():
            bounds = PARAMETER_BOUNDS[family]
            for name, span in ranges.items():
                if name not in bounds:
                    problems.append(f"{family} has no parameter {name!r}")
                    continue
                bound = bounds[name]
                if span.low < bound.low or span.high > bound.high:
                    problems.append(
                        f"{family}.{name} range [{span.low}, {span.high}] leaves its bounds "
                        f"[{bound.low}, {bound.high}]"
                    )
                if bound.integer and int(span.high) < span.low:
                    problems.append(f"{family}.{name} range holds no integer")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def ranges(self, family: str) -> dict[str, ParameterRange]:
        """Every parameter's range for a family: the given ones, the defaults for the rest."""
        return {**DEFAULT_RANGES[family], **self.families.get(family, {})}


def _domain(family: str, name: str, span: ParameterRange) -> Any:
    from ray import tune

    bound = PARAMETER_BOUNDS[family][name]
    if bound.integer:
        low, high = int(max(round(span.low), bound.low)), int(round(span.high))
        if low >= high:
            return low
        return tune.lograndint(low, high + 1) if span.log else tune.randint(low, high + 1)
    if span.low == span.high:
        return span.low
    return tune.loguniform(span.low, span.high) if span.log else tune.uniform(span.low, span.high)


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's flat search space: `family` plus a `family.parameter` key per parameter."""
    from ray import tune

    flat: dict[str, Any] = {"family": tune.choice(sorted(space.families))}
    for family in sorted(space.families):
        for name, span in space.ranges(family).items():
            flat[f"{family}.{name}"] = _domain(family, name, span)
    return flat


class TrialSummary(BaseModel):
    """One finished trial."""

    trial_id: str
    family: str
    params: dict[str, Any]
    score: float | None = Field(description="Validation metric at its last step.")
    steps: int
    stopped_early: bool
    seconds: float
    status: str
    run_id: str | None = None
    latency_ms: float | None = Field(
        default=None, description="One-row scoring time of the fitted model (finished trials)."
    )


class SearchResult(BaseModel):
    """What a search found and what it cost."""

    best_family: str
    best_params: dict[str, Any]
    metric: str = Field(default="roc_auc", description="The validation metric trials ran by.")
    best_score: float
    best_run_id: str | None
    trials: list[TrialSummary]
    seconds: float
    cluster: str = Field(description="`local` or the Ray cluster address the search ran on.")
    algorithm: str
    early_stopping: bool
    time_to_target_seconds: float | None = Field(
        default=None, description="When a reported score first reached the target, if set."
    )
    latency_limit_ms: float | None = Field(
        default=None,
        description="One-row scoring time the best trial had to stay within, when a champion "
        "set one (its own plus half the canary's soft latency limit).",
    )
    passed_over: list[str] = Field(
        default_factory=list,
        description="Better-scoring trials left out for serving slower than the limit.",
    )

    @property
    def stopped_early(self) -> int:
        return sum(t.stopped_early for t in self.trials)


def fitting_space(space: SearchSpace, task: str) -> SearchSpace:
    """The space without the families that cannot fit the task.

    Raises:
        ValueError: none of its families can.
    """
    kept = {f: r for f, r in space.families.items() if f in TASK_FAMILIES[task]}
    if not kept:
        raise ValueError(
            f"no family of the search ({', '.join(sorted(space.families))}) can fit a {task} "
            f"model; choose among {', '.join(TASK_FAMILIES[task])}"
        )
    if len(kept) == len(space.families):
        return space
    _log("left out of the %s search: %s", task, ", ".join(sorted(set(space.families) - set(kept))))
    return space.model_copy(update={"families": kept})


def _trial_params(config: dict[str, Any]) -> dict[str, Any]:
    family, params = family_params(config)
    bounds = PARAMETER_BOUNDS[family]
    return {k: int(round(v)) if bounds[k].integer else float(v) for k, v in params.items()}


def _log(message: str, *args: Any) -> None:
    try:
        get_run_logger().info(message, *args)
    except MissingContextError:
        print(message % args, flush=True)


@dataclass
class _TrialRecord:
    run_id: str | None
    started: float
    last: dict[str, Any] = field(default_factory=dict)


class TrialTracker:
    """Logs each trial as an MLflow child run of the search's parent run (none without a
    parent run), shows progress, and notes when a reported score first reached `target`.

    Ray Tune calls it through `_ray_callback`; it runs on the driver, so workers need no
    access to the tracking store.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_id: str | None,
        parent_run_id: str | None,
        model_name: str,
        max_trials: int,
        target: float | None,
        metric: str = "roc_auc",
    ) -> None:
        self.runs = (
            TrialRuns(tracking_uri, experiment_id, parent_run_id, model_name, metric)
            if tracking_uri and parent_run_id
            else None
        )
        self.metric = metric
        self.max_trials = max_trials
        self.target = target
        self.records: dict[str, _TrialRecord] = {}
        self.started = time.perf_counter()
        self.reached_target: float | None = None
        self.best = float("-inf")
        self.finished = 0

    def start(self, trial: Any) -> None:
        """Open the trial's child run, with its family and parameters."""
        run_id = None
        family, _ = family_params(trial.config)
        if self.runs is not None:
            run_id = self.runs.open(
                trial.trial_id,
                f"trial-{len(self.records) + 1:03d}-{family}",
                {"family": family, **_trial_params(trial.config)},
            )
        self.records[trial.trial_id] = _TrialRecord(run_id, time.perf_counter())

    def report(self, trial: Any, result: dict[str, Any]) -> None:
        """Log one step's validation score and elapsed seconds."""
        record = self.records.get(trial.trial_id)
        if record is None:
            return
        record.last = result
        score = float(result[SCORE])
        if self.target is not None and score >= self.target and self.reached_target is None:
            self.reached_target = time.perf_counter() - self.started
        if self.runs is not None and record.run_id is not None:
            step = int(result["training_iteration"])
            self.runs.log_step(record.run_id, score, float(result["elapsed_seconds"]), step)

    def finish(self, trial: Any, status: str) -> None:
        """Close the trial's run (steps taken, whether ASHA stopped it) and say how it did."""
        record = self.records.get(trial.trial_id)
        if record is None:
            return
        steps = int(record.last.get("training_iteration", 0))
        score = record.last.get(SCORE)
        self.finished += 1
        if score is not None:
            self.best = max(self.best, float(score))
        if self.runs is not None and record.run_id is not None:
            self.runs.close(record.run_id, steps, steps < STEPS, status)
        _log(
            "trial %d/%d %s: %s %s after %d/%d steps%s%s (best so far %.4f)",
            self.finished,
            self.max_trials,
            family_params(trial.config)[0],
            METRIC_LABEL.get(self.metric, self.metric),
            f"{score:.4f}" if score is not None else "n/a",
            steps,
            STEPS,
            ", stopped early" if status == "FINISHED" and steps < STEPS else "",
            f", {record.last['latency_ms']:.1f} ms a row" if "latency_ms" in record.last else "",
            self.best if self.best > float("-inf") else float("nan"),
        )


def _ray_callback(tracker: TrialTracker) -> Any:
    """A Ray Tune callback that hands each trial's start, results and end to `tracker`."""
    from ray.tune import Callback

    class TrackTrials(Callback):
        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            tracker.start(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            tracker.report(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            tracker.finish(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            tracker.finish(trial, "FAILED")

    return TrackTrials()


def ray_address() -> str | None:
    """The Ray cluster to run on: `RAY_ADDRESS`, or None for a local runtime."""
    return os.environ.get("RAY_ADDRESS") or None


def ensure_ray(settings: Settings) -> str:
    """Connect to the cluster in `RAY_ADDRESS` or start a local runtime; say which.

    A runtime already started in this process is reused.
    """
    import ray

    address = ray_address()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner on the terminal
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=None if address else settings.tune.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return address or "local"


def warm_up(settings: Settings) -> str:
    """Start Ray and import Ray Tune and Optuna ahead of a search (`ensure_ray`); a process
    that knows a search will come, as the demo does, pays for them while it waits anyway.
    Call it from the main thread: Ray's processes end with the thread that started them."""
    import ray.tune.search.optuna  # noqa: F401
    from ray import tune  # noqa: F401

    return ensure_ray(settings)


def _search_algorithm(space: SearchSpace, seed: int, max_concurrent_trials: int | None) -> Any:
    """Optuna's TPE or random sampling, seeded, so a search samples the same configurations
    wherever it runs."""
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    if space.algorithm == "optuna":
        return OptunaSearch(metric=SCORE, mode="max", seed=seed)
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent_trials or 0)


def _scheduler(early_stopping: bool, settings: Settings) -> Any:
    """ASHA, which ends trials that trail their peers after `tune_grace_steps`; or none."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not early_stopping:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=STEPS,
        grace_period=settings.tune.grace_steps,
        reduction_factor=3,
    )


BUDGET_GRACE_SECONDS = 300.0
"""How long past its budget a search may run while no trial has run every step."""


def _budget(seconds: float) -> Any:
    """A Ray Tune stopper that ends the search once `seconds` have passed and some trial has
    run every step. A budget spent on Ray's workers starting (a loaded 2-core machine once
    took the demo's whole 30 s before the first trial reported) would end the search with
    nothing to register; it then runs on until a trial finishes, for up to
    `BUDGET_GRACE_SECONDS` more."""
    from ray.tune import Stopper

    class Budget(Stopper):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.finished = False

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.finished = self.finished or result.get("training_iteration", 0) >= STEPS
            return False

        def stop_all(self) -> bool:
            spent = time.monotonic() - self.started
            return spent >= seconds + (0 if self.finished else BUDGET_GRACE_SECONDS)

    return Budget()


def _tuner(
    data: TuningData,
    space: SearchSpace,
    settings: Settings,
    search_alg: Any,
    scheduler: Any,
    tracker: TrialTracker,
    max_concurrent_trials: int | None,
) -> Any:
    """Ray Tune's `Tuner` over the space: one CPU per trial, the budget's trials and seconds
    (`_budget`), results under home's `ray_results`."""
    from ray import tune

    storage = settings.home / "ray_results"
    storage.mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(ray_trial, data=data), {"cpu": 1}),
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=space.max_trials,
            max_concurrent_trials=max_concurrent_trials if space.algorithm == "optuna" else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{settings.model_name}-search-{int(time.time() * 1000)}",
            storage_path=str(storage),
            callbacks=[_ray_callback(tracker)],
            stop=_budget(space.time_budget_seconds),
            verbose=0,
        ),
    )


def _trial_summaries(grid: Any, tracker: TrialTracker) -> list[TrialSummary]:
    """Every trial the search started, with its MLflow run when it has one."""
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        if "family" not in config:
            continue
        trial_id = metrics.get("trial_id", "")
        record = tracker.records.get(trial_id)
        steps = int(metrics.get("training_iteration", 0))
        trials.append(
            TrialSummary(
                trial_id=trial_id,
                family=config["family"],
                params=_trial_params(config),
                score=metrics.get(SCORE),
                steps=steps,
                stopped_early=0 < steps < STEPS,
                seconds=float(metrics.get("elapsed_seconds", 0.0)),
                status="error" if result.error else "finished",
                run_id=record.run_id if record else None,
                latency_ms=metrics.get("latency_ms"),
            )
        )
    return trials


def _best_trial(
    trials: list[TrialSummary], seconds: float, latency_limit_ms: float | None = None
) -> tuple[TrialSummary, list[TrialSummary]]:
    """The trial that ran every step with the best score (the faster on a tie), among those
    that serve a row within `latency_limit_ms` when any does: a challenger slower than that
    would be held by the canary for a person, or rolled back, whatever its score. Also the
    better-scoring trials passed over for their latency.

    Raises:
        RuntimeError: no trial ran every step.
    """
    scored = [t for t in trials if t.score is not None and t.steps == STEPS]
    if not scored:
        raise RuntimeError(
            f"the search finished no trial ({len(trials)} started in {seconds:.0f} s): "
            "raise the time budget or the trial count"
        )

    def rank(trial: TrialSummary) -> tuple[float, float]:
        return (trial.score, -trial.seconds)

    fast = [
        t
        for t in scored
        if latency_limit_ms is None or t.latency_ms is None or t.latency_ms <= latency_limit_ms
    ]
    best = max(fast or scored, key=rank)
    return best, [t for t in scored if t not in fast and rank(t) > rank(best)]


def run_search(
    data: TuningData,
    space: SearchSpace,
    settings: Settings,
    *,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    early_stopping: bool = True,
    max_concurrent_trials: int | None = None,
    target_score: float | None = None,
    seed: int | None = None,
) -> SearchResult:
    """Run the search and summarise its trials.

    Args:
        data: Fit and validation rows (the holdout stays out of the search), and their task.
        space: Families, ranges, budget and algorithm; families that cannot fit the task
            are left out.
        settings: Settings in force (Ray CPUs, seed, ASHA grace steps, MLflow).
        parent_run_id: MLflow run that every trial becomes a child of; None logs nothing.
        experiment_id: The parent run's experiment.
        early_stopping: ASHA when true, else every trial runs all its steps.
        max_concurrent_trials: Trials at once; default: as many as the cluster's CPUs allow.
        target_score: Record when a reported validation score first reaches it.
        seed: Seed of the search algorithm; default: settings.

    Raises:
        ValueError: no family of the space can fit the data's task.
        RuntimeError: no trial reported a result (all failed, or the budget ran out first).
    """
    space = fitting_space(space, data.task)
    seed = settings.seed if seed is None else seed
    cluster = ensure_ray(settings)
    search_alg = _search_algorithm(space, seed, max_concurrent_trials)
    scheduler = _scheduler(early_stopping, settings)
    tracker = TrialTracker(
        settings.tracking_uri() if parent_run_id else None,
        experiment_id,
        parent_run_id,
        settings.model_name,
        space.max_trials,
        target_score,
        data.metric,
    )
    tuner = _tuner(data, space, settings, search_alg, scheduler, tracker, max_concurrent_trials)
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    trials = _trial_summaries(grid, tracker)
    best, passed_over = _best_trial(trials, seconds, data.latency_limit_ms)
    return SearchResult(
        best_family=best.family,
        best_params=best.params,
        metric=data.metric,
        best_score=float(best.score),
        best_run_id=best.run_id,
        trials=trials,
        seconds=seconds,
        cluster=cluster,
        algorithm=space.algorithm,
        early_stopping=early_stopping,
        time_to_target_seconds=tracker.reached_target,
        latency_limit_ms=data.latency_limit_ms,
        passed_over=[
            f"{t.family} {t.score:.4f} ({t.latency_ms:.1f} ms a row)" for t in passed_over
        ],
    )


@task(name="tune-search", cache_policy=NO_CACHE)
def search(
    data: TuningData,
    space: SearchSpace,
    parent_run_id: str | None,
    experiment_id: str | None,
    settings: Settings,
) -> SearchResult:
    """`run_search` as a Prefect task, logging the outcome."""
    result = run_search(
        data, space, settings, parent_run_id=parent_run_id, experiment_id=experiment_id
    )
    _log(
        "search on %s: %d trials (%d stopped early) in %.0f s; best %s %s %.4f",
        result.cluster,
        len(result.trials),
        result.stopped_early,
        result.seconds,
        result.best_family,
        METRIC_LABEL.get(result.metric, result.metric),
        result.best_score,
    )
    if result.passed_over:
        _log(
            "passed over for serving a row slower than %.1f ms (the champion's time plus half "
            "the canary's soft latency limit): %s",
            result.latency_limit_ms,
            "; ".join(result.passed_over),
        )
    return result
