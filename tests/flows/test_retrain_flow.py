"""The retrain flow end to end: advisor, synthesis, Ray Tune search, registry, hand-over."""

import math

import pytest
from mlflow import MlflowClient

from agentic_mlops.flows.retrain import retrain
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger, registry
from agentic_mlops.tasks.batches import read_table, write_table
from tests.conftest import artifacts_by_key, triage_record, use_home_copy
from tests.tasks.test_synthesis import SEGMENT, VALUE, world

QUICK = {"max_trials": 3, "time_budget_seconds": 90, "hand_over": "none"}


@pytest.fixture
def champion_v1(trained_champion):
    """The session's champion (`tests/conftest.py`), trained once for every module."""
    return trained_champion


@pytest.fixture
def champion_home(champion_v1, tmp_path, monkeypatch) -> Settings:
    return use_home_copy(champion_v1, tmp_path, monkeypatch)


def test_retraining_registers_the_best_trial_as_challenger(champion_home):
    result = retrain(
        generate_rows=3_000, seed=2, scenario="concept", **{**QUICK, "hand_over": "event"}
    )
    client = MlflowClient(champion_home.tracking_uri())
    name = champion_home.model_name

    assert result.training.version == 2
    aliases = registry.model_aliases(name, champion_home)
    assert aliases[registry.CHALLENGER] == 2 and aliases[registry.CHAMPION] == 1
    children = client.search_runs(
        [result.training.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.search_run_id}'",
    )
    trials = [r for r in children if r.data.tags.get("agentic_mlops.kind") == "tuning-trial"]
    assert len(trials) == result.trials == 3
    # the registered model is the best trial's configuration, refit; its run is a child too
    version_run = client.get_run(registry.version_run_id(name, 2, champion_home))
    assert version_run.data.tags["mlflow.parentRunId"] == result.search_run_id
    assert version_run.data.params["family"] == result.best_family
    for key, value in result.best_params.items():
        assert float(version_run.data.params[key]) == pytest.approx(float(value))
    # judged against the champion on the same holdout
    assert result.comparison.champion_version == 1
    assert result.comparison.rows == 750
    assert result.comparison.metric == "roc_auc" and result.comparison.loss_metric == "brier_score"
    assert result.comparison.challenger_score == pytest.approx(version_run.data.metrics["roc_auc"])
    # the advisor's decision and its outcome are in the ledger
    entry = ledger.get_decision(result.ledger_id, champion_home)
    assert entry.decision_point == "tuning_advisor" and entry.agent_model == "policy"
    assert entry.outcome["challenger_version"] == 2
    assert entry.outcome["holdout_metric"] == "roc_auc"
    assert entry.outcome["champion_holdout_roc_auc"] == result.comparison.champion_score
    assert artifacts_by_key("churn-retrain-search")[0]["data"].startswith("# Retraining search")
    # a reference was stored, so the challenger can be drift-checked once it is champion
    assert (registry.reference_dir(name, 2, champion_home) / "profile.json").exists()
    # it beat the champion, but nothing serves here: no canary is asked for, and it says why
    assert result.comparison.beats_champion
    assert result.hand_over.startswith("none: no canary ran, nothing is serving")


def triage_entry(settings: Settings) -> str:
    entry = ledger.LedgerEntry(
        id="triage-for-synthesis",
        created_at=ledger.now(),
        decision_point="drift_triage",
        model_name=settings.model_name,
        model_version=1,
        inputs_digest="x",
        action="retrain",
        severity="medium",
        confidence=0.8,
        rationale="payment method drifted",
        evidence=triage_record(used=["column_drift"], drifted_features=[SEGMENT]),
        agent_model="policy",
    )
    return ledger.record_decision(entry, settings).id


@pytest.mark.slow
def test_synthesis_feeds_only_the_fit_rows_and_is_logged_with_lineage(champion_home):
    window = world(3_000, 11, 0.03)
    data = write_table(window, champion_home.data_dir / "window.parquet")
    recent = write_table(world(1_000, 12, 0.3), champion_home.data_dir / "recent.parquet")
    common = dict(
        data_path=str(data), recent_path=str(recent), triage_ledger_id=triage_entry(champion_home)
    )
    with_synth = retrain(generate_rows=5_000, **common, **QUICK)
    without = retrain(generate_rows=5_000, **common, synthesize=False, **QUICK)

    assert with_synth.advisor.decision.synthesize
    assert with_synth.advisor.decision.segments == [f"{SEGMENT}={VALUE}"]
    assert with_synth.synthetic_rows > 0 and without.synthetic_rows == 0
    # evaluation data untouched: the same real holdout rows, so the champion scores the same
    holdout = math.ceil(len(window) * 0.25)
    assert with_synth.comparison.rows == without.comparison.rows == holdout
    assert with_synth.comparison.champion_score == without.comparison.champion_score

    client = MlflowClient(champion_home.tracking_uri())
    run = client.get_run(with_synth.training.run_id)
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
        for i in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "synthetic"}
    synthetic = inputs["synthetic"]
    tags = {t.key: t.value for t in synthetic.tags}
    assert tags["method"] == "SMOTE-NC" and f"{SEGMENT}={VALUE}" in tags["segments"]
    kept = read_table(tags["source"])  # the synthetic rows are kept, not only logged
    assert len(kept) == with_synth.synthetic_rows and (kept[SEGMENT] == VALUE).all()
    assert tags["source"] in synthetic.dataset.source
    assert synthetic.dataset.digest != inputs["training"].dataset.digest
    assert int(float(run.data.params["synthetic_rows"])) == with_synth.synthetic_rows
    # the triage decision that asked for the retraining learns its outcome
    asked = ledger.get_decision("triage-for-synthesis", champion_home)
    assert asked.outcome["challenger_version"] == without.training.version


def test_bad_inputs_end_in_a_named_failed_state(champion_home, tmp_path):
    missing = retrain(data_path=str(tmp_path / "nope.parquet"), **QUICK, return_state=True)
    assert missing.is_failed() and missing.name == "InvalidData"
    unknown = retrain(
        generate_rows=500, triage_ledger_id="no-such-decision", **QUICK, return_state=True
    )
    assert unknown.is_failed() and "no-such-decision" in unknown.message
    assert registry.model_aliases(champion_home.model_name, champion_home)[registry.CHALLENGER] == 1


@pytest.mark.slow
def test_a_challenger_that_does_not_beat_the_champion_is_not_handed_over(champion_home):
    # 300 rows against a champion fitted on 2,250: the small model loses on the holdout
    result = retrain(
        generate_rows=400, seed=1, max_trials=1, time_budget_seconds=60, hand_over="event"
    )
    assert not result.comparison.beats_champion
    assert result.hand_over == "none: the challenger did not beat the champion on the holdout"
    assert ledger.get_decision(result.ledger_id, champion_home).outcome["beat_champion"] is False
