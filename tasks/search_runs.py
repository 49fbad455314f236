"""The MLflow side of a tuning search: its parent run, one child run per trial (its
parameters, its validation metric under its own name at every step, how it ended), and the
model's earlier runs read back for the tuning advisor. `tasks/tuning.py` runs the search;
this module writes and reads its runs, through the registry's client and experiment.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from agentic_mlops.settings import Settings
from agentic_mlops.tasks.models import PARAMETER_BOUNDS
from agentic_mlops.tasks.registry import client, ensure_experiment, prefect_run_tags

if TYPE_CHECKING:
    from agentic_mlops.tasks.tuning import SearchSpace


class TrialRuns:
    """The child runs of one search's parent run, written from the driver."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str | None,
        parent_run_id: str,
        model_name: str,
        metric: str = "roc_auc",
    ) -> None:
        self.client = MlflowClient(tracking_uri)
        self.metric = metric
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.model_name = model_name

    def open(self, trial_id: str, run_name: str, params: dict[str, Any]) -> str:
        """A trial's child run, with its family and parameters; its run id."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "agentic_mlops.model_name": self.model_name,
                "agentic_mlops.kind": "tuning-trial",
                "agentic_mlops.trial_id": trial_id,
            },
        )
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id

    def log_step(self, run_id: str, score: float, elapsed_seconds: float, step: int) -> None:
        """One step's validation score and the seconds the trial has taken."""
        stamp = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(self.metric, score, stamp, step),
                Metric("elapsed_seconds", elapsed_seconds, stamp, step),
            ],
        )

    def close(self, run_id: str, steps: int, stopped_early: bool, status: str) -> None:
        """The steps taken, whether the scheduler stopped it, and its final status."""
        self.client.log_batch(
            run_id,
            tags=[
                RunTag("agentic_mlops.steps", str(steps)),
                RunTag("agentic_mlops.stopped_early", str(stopped_early).lower()),
            ],
        )
        self.client.set_terminated(run_id, status)


def past_runs(
    settings: Settings, metric: str = "roc_auc", limit: int = 200
) -> list[dict[str, Any]]:
    """This model's earlier training runs and tuning trials scored by `metric`, newest first:
    family, hyperparameters within the family's bounds, the metric and seconds taken."""
    mlflow_client = client(settings)
    runs = mlflow_client.search_runs(
        [ensure_experiment(settings)],
        filter_string=f"tags.`agentic_mlops.model_name` = '{settings.model_name}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    found = []
    for run in runs:
        score = run.data.metrics.get(metric)
        family = run.data.params.get("family", "gradient_boosting")
        if score is None or family not in PARAMETER_BOUNDS:
            continue
        params = {}
        for name in PARAMETER_BOUNDS[family]:
            try:
                params[name] = float(run.data.params[name])
            except (KeyError, ValueError):
                continue
        kind = run.data.tags.get("agentic_mlops.kind", "training")
        if kind == "tuning-search":
            continue
        seconds = run.data.metrics.get("elapsed_seconds")
        if seconds is None and run.info.end_time and run.info.start_time:
            seconds = (run.info.end_time - run.info.start_time) / 1000
        found.append(
            {
                "family": family,
                "params": params,
                "score": float(score),
                "seconds": seconds,
                "kind": kind,
            }
        )
    return found


def start_search_run(space: SearchSpace, settings: Settings, run_name: str) -> tuple[str, str]:
    """Open the MLflow parent run a search's trials become children of: (run id, experiment)."""
    experiment_id = ensure_experiment(settings)
    mlflow_client = client(settings)
    run = mlflow_client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            "agentic_mlops.model_name": settings.model_name,
            "agentic_mlops.kind": "tuning-search",
            **prefect_run_tags(),
        },
    )
    mlflow_client.log_batch(
        run.info.run_id,
        params=[
            Param("families", ",".join(sorted(space.families))),
            Param("max_trials", str(space.max_trials)),
            Param("time_budget_seconds", str(space.time_budget_seconds)),
            Param("algorithm", space.algorithm),
        ],
    )
    mlflow_client.log_dict(run.info.run_id, space.model_dump(mode="json"), "search_space.json")
    return run.info.run_id, experiment_id


def finish_search_run(
    run_id: str, metrics: dict[str, float], settings: Settings, failed: bool = False
) -> None:
    """Record a search's summary figures on its parent run and close it."""
    mlflow_client = client(settings)
    stamp = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
    )
    mlflow_client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
