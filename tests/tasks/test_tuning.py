"""The Ray Tune search: real Ray runtime (local and a `ray start --head` cluster), real MLflow."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from sklearn.model_selection import train_test_split

from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.models import STEPS, TuningData, family_pipeline
from agentic_mlops.tasks.search_runs import finish_search_run, past_runs, start_search_run
from agentic_mlops.tasks.training import feature_columns
from agentic_mlops.tasks.tuning import (
    ParameterRange,
    SearchResult,
    SearchSpace,
    run_search,
)


def make_data() -> TuningData:
    frame = generate_churn(2_000, 5)
    numeric, categorical = feature_columns(frame, "churn")
    x_fit, x_val, y_fit, y_val = train_test_split(
        frame.drop(columns="churn"),
        frame["churn"],
        test_size=0.3,
        random_state=5,
        stratify=frame["churn"],
    )
    return TuningData(x_fit, y_fit, x_val, y_val, numeric, categorical, seed=5)


@pytest.fixture(scope="module")
def data() -> TuningData:
    return make_data()


def search_in_this_process() -> None:
    """Run the cluster test's search and print its result (the test starts it as a driver)."""
    from agentic_mlops.settings import Settings

    space = small_space(trials=3, algorithm="random")
    result = run_search(make_data(), space, Settings(), max_concurrent_trials=1)
    print("RESULT " + result.model_dump_json())


def small_space(trials=4, algorithm="optuna", families=None) -> SearchSpace:
    families = families or {
        "gradient_boosting": {"max_iter": ParameterRange(low=16, high=40)},
        "random_forest": {"n_estimators": ParameterRange(low=16, high=40)},
        "logistic_regression": {},
    }
    return SearchSpace(
        families=families, max_trials=trials, time_budget_seconds=120, algorithm=algorithm
    )


@pytest.mark.parametrize(
    "families, message",
    [
        ({"gradient_boosting": {"learning_rate": {"low": 0.5, "high": 0.1}}}, "above high"),
        ({"gradient_boosting": {"learning_rate": {"low": 0.1, "high": 5.0}}}, "leaves its bounds"),
        ({"random_forest": {"learning_rate": {"low": 0.1, "high": 0.2}}}, "no parameter"),
        ({"logistic_regression": {"C": {"low": 0.0, "high": 1.0, "log": True}}}, "log-scale"),
        ({"random_forest": {"max_depth": {"low": 3.2, "high": 3.7}}}, "holds no integer"),
        ({"xgboost": {}}, "xgboost"),
        ({}, "at least 1"),
    ],
)
def test_invalid_search_spaces_are_rejected(families, message):
    with pytest.raises(ValidationError, match=message):
        SearchSpace(families=families, max_trials=4, time_budget_seconds=10)


def test_family_pipelines_refuse_unknown_parameters():
    with pytest.raises(ValueError, match="no parameter"):
        family_pipeline("logistic_regression", {"n_estimators": 3}, ["a"], [])


def test_trials_are_child_runs_with_metrics_per_step(home, data):
    space = small_space(trials=5)
    parent, experiment = start_search_run(space, home, "search-test")
    result = run_search(data, space, home, parent_run_id=parent, experiment_id=experiment)
    finish_search_run(parent, {"best": result.best_score}, home)

    client = MlflowClient(home.tracking_uri())
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(children) == len(result.trials) == 5
    by_id = {run.info.run_id: run for run in children}
    for trial in result.trials:
        run = by_id[trial.run_id]
        assert run.data.params["family"] == trial.family
        history = client.get_metric_history(trial.run_id, "roc_auc")
        assert [m.step for m in history] == list(range(1, trial.steps + 1))
        assert history[-1].value == pytest.approx(trial.score)
        assert run.data.tags["agentic_mlops.stopped_early"] == str(trial.steps < STEPS).lower()
        assert run.info.status == "FINISHED"
    best = max((t for t in result.trials if t.steps == STEPS), key=lambda t: t.score)
    assert (result.best_family, result.best_score) == (best.family, best.score)
    assert result.best_run_id == best.run_id
    parent_run = client.get_run(parent)
    assert parent_run.data.metrics["best"] == pytest.approx(result.best_score)
    assert parent_run.data.params["families"] == (
        "gradient_boosting,logistic_regression,random_forest"
    )
    # the trials are this model's history for the next advisor
    history = past_runs(home)
    assert sum(run["kind"] == "tuning-trial" for run in history) == 5


@pytest.mark.slow
def test_a_budget_spent_before_any_trial_finished_waits_for_the_first(home, data):
    # Ray's workers take longer to start than this whole budget: the search runs on until one
    # trial has run every step, then stops (it once ended empty-handed on a loaded machine)
    space = small_space(trials=6, families={"logistic_regression": {}})
    space.time_budget_seconds = 0.2
    result = run_search(data, space, home, max_concurrent_trials=1)
    finished = [t for t in result.trials if t.steps == STEPS and t.score is not None]
    assert finished and result.best_score == max(t.score for t in finished)
    assert len(result.trials) < 6, "the budget, spent, still ends the search"


def test_asha_stops_trailing_trials_and_fifo_does_not(home, data):
    space = small_space(trials=6, algorithm="random")
    asha = run_search(data, space, home, early_stopping=True)
    fifo = run_search(data, space, home, early_stopping=False)
    assert all(t.steps == STEPS for t in fifo.trials)
    assert asha.stopped_early >= 1
    # the same seed samples the same configurations with or without early stopping
    key = lambda r: sorted(str(sorted(t.params.items())) for t in r.trials)  # noqa: E731
    assert key(asha) == key(fifo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ray_head(port: int, env: dict[str, str]) -> Iterator[None]:
    """A `ray start --head` cluster of its own, stopped with its process group on leaving.

    `ray stop` would do, but it kills every Ray process on the machine (it matches them by
    name): the local runtime of a test on the other xdist worker, or of anyone else's run, with
    it. `--block` keeps `ray start` in the foreground, and the cluster's processes in its group.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit
    log_path = temp_dir / "head.log"
    with log_path.open("wb") as log:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in log_path.read_bytes():
            output = log_path.read_text(errors="replace")[-2000:]
            assert head.poll() is None, f"ray start --head ended:\n{output}"
            assert time.monotonic() < deadline, f"ray start --head did not start:\n{output}"
            time.sleep(0.5)
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        with suppress(ProcessLookupError):  # any of its processes still running
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_address_is_honoured_and_results_match_local(home, data):
    import ray

    space = small_space(trials=3, algorithm="random")
    ray.shutdown()
    local = run_search(data, space, home, max_concurrent_trials=1)
    ray.shutdown()

    port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    with ray_head(port, env):
        driver = subprocess.run(
            [
                sys.executable,
                "-c",
                "from tests.tasks.test_tuning import search_in_this_process as run; run()",
            ],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "AGENTIC_MLOPS_HOME": str(home.home)},
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert driver.returncode == 0, driver.stderr[-3000:]
    line = next(x for x in driver.stdout.splitlines() if x.startswith("RESULT "))
    remote = SearchResult.model_validate_json(line.removeprefix("RESULT "))
    assert remote.cluster == f"127.0.0.1:{port}" and local.cluster == "local"
    summary = lambda r: [(t.family, t.params, round(t.score, 10), t.steps) for t in r.trials]  # noqa: E731
    assert sorted(summary(remote), key=str) == sorted(summary(local), key=str)
    assert (remote.best_family, remote.best_params) == (local.best_family, local.best_params)


def summary(family: str, score: float, latency_ms: float | None, steps: int = STEPS):
    from agentic_mlops.tasks.tuning import TrialSummary

    return TrialSummary(
        trial_id=f"{family}-{score}",
        family=family,
        params={},
        score=score,
        steps=steps,
        stopped_early=steps < STEPS,
        seconds=1.0,
        status="finished",
        latency_ms=latency_ms,
    )


def test_the_best_trial_is_one_the_canary_would_not_hold_for_its_latency():
    """A forest that scores a row in 12 ms beside a 3 ms champion would make the canary ask a
    person (its soft latency limit is 5 ms): the best trial within 8 ms is chosen instead,
    and the forest is named as passed over."""
    from agentic_mlops.tasks.tuning import _best_trial

    forest = summary("random_forest", 0.891, 12.2)
    boosting = summary("gradient_boosting", 0.887, 3.1)
    unfinished = summary("logistic_regression", 0.95, 1.0, steps=3)
    trials = [forest, boosting, unfinished]
    assert _best_trial(trials, 10.0) == (forest, [])
    assert _best_trial(trials, 10.0, latency_limit_ms=8.0) == (boosting, [forest])
    # when every finished trial is too slow, the best of them all the same: the canary judges
    assert _best_trial([forest], 10.0, latency_limit_ms=8.0) == (forest, [])
    # a slower trial that scores worse is not "passed over"
    slow_and_worse = summary("random_forest", 0.80, 20.0)
    assert _best_trial([boosting, slow_and_worse], 10.0, 8.0) == (boosting, [])
