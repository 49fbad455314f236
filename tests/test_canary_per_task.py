"""The canary judges each task by its own loss: Brier score, absolute error, multiclass Brier.

The models are the team's own, trained and registered by plain MLflow calls on tables the
project does not generate (scikit-learn's diabetes and wine data), adopted, then rolled out
behind the real router and model servers on loopback with labelled traffic. A better
challenger is promoted, a worse one rolled back, and the metric each decision used is named
in the evidence, the ledger and the judge's artifact. The two rollouts take two to five
minutes on two shared cores: they are in the slow suite; the judge's test on the same
regression models runs in `make test`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agentic_mlops.flows.canary import canary_rollout
from agentic_mlops.serving.router import Served, label_loss
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.canary_judge import sequential_judge
from agentic_mlops.tasks.local_rollout import LocalRollout
from agentic_mlops.tasks.metrics import (
    ABSOLUTE_ERROR_TOLERANCE_SHARE,
    CanaryTask,
    canary_metrics,
    canary_task,
)
from agentic_mlops.tasks.traffic import CustomerTraffic
from tests.conftest import artifacts_by_key
from tests.prometheus import running_prometheus
from tests.test_own_models import (
    adopt,
    diabetes_table,
    fitted_diabetes_regressor,
    register_sklearn,
    split_three,
    team,  # noqa: F401
)


def wine_table() -> pd.DataFrame:
    """Wine, three cultivars: the label is `cultivar` (0, 1, 2)."""
    data = load_wine(as_frame=True)
    return data.data.assign(cultivar=data.target)


def weak_diabetes_regressor():
    """A regressor that barely learns (one stump, shrunk): its predictions stay near the
    mean."""
    train = split_three(diabetes_table())[0]
    x = train.drop(columns=["progression"])
    model = GradientBoostingRegressor(random_state=0, n_estimators=1, max_depth=1)
    return model.fit(x, train["progression"]), x


def wine_classifier(strength: float):
    """A multiclass logistic regression; a small `strength` (C) keeps it near uniform."""
    train = split_three(wine_table())[0]
    x = train.drop(columns=["cultivar"])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=2_000))
    return model.fit(x, train["cultivar"]), x


def unseen_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the team's models were not trained on (adoption rows and the batch)."""
    _, adopted, batch = split_three(table)
    return pd.concat([adopted, batch], ignore_index=True)


@pytest.fixture
def canary_team(team: Settings, monkeypatch) -> Settings:  # noqa: F811
    data = team.home / "data"
    split_three(diabetes_table())[1].to_csv(data / "diabetes-adopt.csv", index=False)
    split_three(wine_table())[1].to_csv(data / "wine-adopt.csv", index=False)
    monkeypatch.setenv("AGENTIC_MLOPS_CANARY_POLL_SECONDS", "0.5")
    return team


def roll_out(
    settings: Settings,
    name: str,
    version: int,
    source: pd.DataFrame,
    target: str,
    prometheus: tuple[Path, pytest.MonkeyPatch] | None = None,
):
    """Serve the champion, roll `version` out at 50% with labelled traffic until decided; with
    `prometheus` (a folder, and the test's monkeypatch to set its address), the judge reads
    the router's series from a real Prometheus."""
    backend = LocalRollout(settings.for_model(name))
    url = backend.start_router()
    backend.set_baseline(registry.alias_version(name, registry.CHAMPION, settings))
    traffic = CustomerTraffic(
        url, source, target=target, rate=150.0, label_delay_seconds=0.0, seconds=300
    )
    try:
        with contextlib.ExitStack() as stack:
            if prometheus:
                folder, monkeypatch = prometheus
                target_address = {url.removeprefix("http://"): {}}
                address = stack.enter_context(running_prometheus("router", target_address, folder))
                monkeypatch.setenv("AGENTIC_MLOPS_PROMETHEUS_URL", address)
            stack.enter_context(traffic)
            state = canary_rollout(
                version=version,
                steps=[50, 100],
                step_seconds=60 if prometheus else 240,
                min_samples=60,
                approval_timeout_seconds=30,
                model_name=name,
                return_state=True,
            )
    finally:
        backend.shutdown()
    assert traffic.counts.failed == 0
    return state.result()


def label_metric_of_the_decision(settings: Settings, name: str, version: int) -> str:
    """The label metric named in the ledger entry and the judge's artifact of the last step."""
    entries = ledger.list_decisions(name, decision_point="canary_promotion", settings=settings)
    latest = next(e for e in entries if e.model_version == version)
    judged = latest.evidence["judge"]
    artifact = artifacts_by_key(f"{name}-canary-judge")[0]["data"]
    assert judged["label_metric"] in str(artifact)
    return judged["label_metric"]


def test_a_label_gives_the_loss_of_its_models_task():
    binary = Served("canary", 0.8)
    assert label_loss(binary, 1) == (1, pytest.approx(0.04), "brier")
    regression = Served("canary", 120.0, "regression")
    assert label_loss(regression, 150.5) == (None, pytest.approx(30.5), "absolute_error")
    wine = Served("baseline", 1.0, "multiclass", ("0", "1", "2"), (0.1, 0.7, 0.2))
    correct, brier, metric = label_loss(wine, 1)
    assert (correct, metric) == (1, "multiclass_brier")
    assert brier == pytest.approx(0.1**2 + 0.3**2 + 0.2**2)
    assert label_loss(wine, 2)[:2] == (0, pytest.approx(0.1**2 + 0.7**2 + 0.8**2))
    without_probabilities = Served("baseline", 2.0, "multiclass", ("0", "1", "2"))
    assert label_loss(without_probabilities, 2) == (1, None, "multiclass_brier")
    # classes named by text: the score is the predicted class's position in the class list
    iris = Served("baseline", 2.0, "multiclass", ("setosa", "versicolor", "virginica"))
    assert label_loss(iris, "virginica") == (1, None, "multiclass_brier")
    assert label_loss(iris, "setosa") == (0, None, "multiclass_brier")
    named = Served("baseline", 0.0, "multiclass", ("a", "b"), (0.9, 0.1))
    assert label_loss(named, "b") == (0, pytest.approx(0.9**2 + 0.9**2), "multiclass_brier")
    for served, label, message in [
        (binary, 3, "0 or 1"),
        (regression, "high", "finite number"),
        (regression, math.inf, "finite number"),
        (wine, 7, "one of the model's classes"),
        (iris, "tulip", "one of the model's classes"),
    ]:
        with pytest.raises(ValueError, match=message):
            label_loss(served, label)


def test_a_regression_canary_is_judged_by_absolute_error_with_a_tolerance_from_the_card(
    canary_team,
):
    """The judge directly, on the absolute errors two diabetes models make on unseen rows: the
    card's MAE sets the tolerance; the better model's sequence promotes, the worse one's rolls
    back, and a binary champion keeps the Brier score."""
    register_sklearn(canary_team.home, "diabetes", *fitted_diabetes_regressor())
    adopted = adopt(canary_team, "diabetes", "diabetes-adopt.csv", "progression")
    task = canary_task(canary_team.for_model("diabetes"))
    assert task.task == "regression" and task.label_metric == "absolute_error"
    assert task.label_tolerance == pytest.approx(
        ABSOLUTE_ERROR_TOLERANCE_SHARE * adopted["metrics"]["mae"]
    )
    specs = canary_metrics(60, task)
    (label,) = [s for s in specs if s.name == "absolute_error"]
    assert label.critical and not label.remove_outliers

    rows = unseen_rows(diabetes_table())
    x, y = rows.drop(columns=["progression"]), rows["progression"].to_numpy()
    good = np.abs(fitted_diabetes_regressor()[0].predict(x) - y)
    weak = np.abs(weak_diabetes_regressor()[0].predict(x) - y)
    assert weak.mean() > good.mean() + 2 * label.tolerance  # the weak model is clearly worse
    better = sequential_judge({"absolute_error": good}, {"absolute_error": weak}, [label])
    worse = sequential_judge({"absolute_error": weak}, {"absolute_error": good}, [label])
    assert better.outcome == "promote", better.reason
    assert worse.outcome == "rollback" and "absolute_error" in worse.reason
    assert better.metrics["absolute_error"].harm == pytest.approx(good.mean() - weak.mean())
    assert canary_task(canary_team.for_model("churn")) == CanaryTask()


@pytest.mark.slow
def test_a_diabetes_canary_promotes_a_better_regressor_and_rolls_back_a_worse_one(canary_team):
    register_sklearn(canary_team.home, "diabetes", *weak_diabetes_regressor())
    adopt(canary_team, "diabetes", "diabetes-adopt.csv", "progression")
    better = register_sklearn(canary_team.home, "diabetes", *fitted_diabetes_regressor())
    traffic = unseen_rows(diabetes_table())

    promoted = roll_out(canary_team, "diabetes", better, traffic, "progression")
    assert promoted.outcome == "promoted", promoted
    assert registry.alias_version("diabetes", registry.CHAMPION, canary_team) == better
    assert label_metric_of_the_decision(canary_team, "diabetes", better) == "absolute_error"

    # the new champion has no card of its own: the adopted one still gives the task
    worse = register_sklearn(canary_team.home, "diabetes", *weak_diabetes_regressor())
    rolled_back = roll_out(canary_team, "diabetes", worse, traffic, "progression")
    assert rolled_back.outcome == "rolled_back", rolled_back
    assert registry.alias_version("diabetes", registry.CHAMPION, canary_team) == better
    assert label_metric_of_the_decision(canary_team, "diabetes", worse) == "absolute_error"
    entries = ledger.list_decisions(
        "diabetes", decision_point="canary_promotion", settings=canary_team
    )
    judged = next(e for e in entries if e.model_version == worse).evidence["judge"]
    (error,) = [m for m in judged["metrics"] if m["name"] == "absolute_error"]
    assert error["classification"] == "high" and error["effect"] > 0


@pytest.mark.slow
def test_a_wine_canary_rolls_back_a_worse_multiclass_model_by_its_brier_score(canary_team):
    x = wine_classifier(1.0)[1]
    register_sklearn(canary_team.home, "wine", wine_classifier(1.0)[0], x)
    adopted = adopt(canary_team, "wine", "wine-adopt.csv", "cultivar")
    assert adopted["task"] == "multiclass"
    assert canary_task(canary_team.for_model("wine")).label_metric == "multiclass_brier"
    worse = register_sklearn(canary_team.home, "wine", wine_classifier(0.002)[0], x)

    rolled_back = roll_out(canary_team, "wine", worse, unseen_rows(wine_table()), "cultivar")
    assert rolled_back.outcome == "rolled_back", rolled_back
    assert registry.alias_version("wine", registry.CHAMPION, canary_team) == 1
    assert label_metric_of_the_decision(canary_team, "wine", worse) == "multiclass_brier"
    entries = ledger.list_decisions("wine", decision_point="canary_promotion", settings=canary_team)
    judged = next(e for e in entries if e.model_version == worse).evidence["judge"]
    (brier,) = [m for m in judged["metrics"] if m["name"] == "multiclass_brier"]
    assert brier["classification"] == "high" and brier["effect"] > 0.04


@pytest.mark.slow
def test_a_regression_canary_reads_its_absolute_error_from_prometheus(
    canary_team, tmp_path, monkeypatch
):
    """With `AGENTIC_MLOPS_PROMETHEUS_URL` set, a real Prometheus scraping the router gives
    the judge each interval's mean absolute error: the worse regressor is rolled back on it."""
    register_sklearn(canary_team.home, "diabetes", *fitted_diabetes_regressor())
    adopt(canary_team, "diabetes", "diabetes-adopt.csv", "progression")
    worse = register_sklearn(canary_team.home, "diabetes", *weak_diabetes_regressor())
    traffic = unseen_rows(diabetes_table())

    through = (tmp_path, monkeypatch)
    rolled_back = roll_out(canary_team, "diabetes", worse, traffic, "progression", through)
    assert rolled_back.outcome == "rolled_back", rolled_back
    assert registry.alias_version("diabetes", registry.CHAMPION, canary_team) == 1
    assert label_metric_of_the_decision(canary_team, "diabetes", worse) == "absolute_error"
    entries = ledger.list_decisions(
        "diabetes", decision_point="canary_promotion", settings=canary_team
    )
    judged = next(e for e in entries if e.model_version == worse).evidence["judge"]
    (error,) = [m for m in judged["metrics"] if m["name"] == "absolute_error"]
    assert error["classification"] == "high", error
    assert error["canary_n"] < 100, "per-interval values from Prometheus, not per request"
