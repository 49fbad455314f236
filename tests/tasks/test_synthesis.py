"""SMOTE-NC synthesis for drifted, under-covered segments: what it makes and what it fixes."""

import pandas as pd
import pytest
from sklearn.metrics import recall_score

from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.models import family_pipeline
from agentic_mlops.tasks.synthesis import Segment, find_segments, synthesize
from agentic_mlops.tasks.training import feature_columns

SEGMENT = "payment_method"
VALUE = "mailed_check"


def world(rows: int, seed: int, segment_share: float) -> pd.DataFrame:
    """Churn data in which customers paying by mailed check churn when charges exceed 85,
    unlike everyone else, and make up `segment_share` of the rows."""
    frame = generate_churn(rows, seed)
    inside = frame[SEGMENT] == VALUE
    frame.loc[inside, "churn"] = (frame.loc[inside, "monthly_charges"] > 85).astype(int)
    segment, rest = frame[inside], frame[~inside]
    wanted = int(segment_share * len(rest) / (1 - segment_share))
    segment = segment.sample(wanted, random_state=seed, replace=wanted > len(segment))
    return pd.concat([rest, segment]).sample(frac=1, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def scenario():
    return world(5_000, 1, 0.03), world(3_000, 2, 0.3), world(6_000, 3, 0.3)


def test_segments_are_the_regions_recent_data_visits_far_more(scenario):
    training, recent, _ = scenario
    shifted = recent.assign(monthly_charges=recent["monthly_charges"] * 1.4)
    segments = {
        s.feature: s for s in find_segments(training, shifted, [SEGMENT, "monthly_charges"])
    }
    assert segments[SEGMENT].value == VALUE and segments[SEGMENT].training_share < 0.05
    charges = segments["monthly_charges"]
    assert charges.kind == "above" and charges.recent_share >= 2 * charges.training_share
    # a feature that did not move has no segment, and unknown features are ignored
    assert find_segments(training, world(3_000, 4, 0.03), [SEGMENT, "nope"]) == []


def test_synthetic_rows_stay_in_their_segment_with_its_churn_rate(scenario):
    training, recent, _ = scenario
    segments = find_segments(training, recent, [SEGMENT])
    made = synthesize(training, "churn", segments, max_rows=1_000, seed=3)
    rows = made.rows
    assert 0 < len(rows) <= 1_000 and made.per_segment == {f"{SEGMENT}={VALUE}": len(rows)}
    assert (rows[SEGMENT] == VALUE).all()
    assert list(rows.columns) == list(training.columns)
    assert (rows.dtypes == training.dtypes).all()
    real = training[training[SEGMENT] == VALUE]["churn"].mean()
    assert rows["churn"].mean() == pytest.approx(real, abs=0.05)
    assert set(rows["contract"]) <= set(training["contract"])
    assert made.lineage()["method"] == "SMOTE-NC" and made.lineage()["source_digest"]
    again = synthesize(training, "churn", segments, max_rows=1_000, seed=3)
    pd.testing.assert_frame_equal(again.rows, rows)
    # the cap holds
    assert len(synthesize(training, "churn", segments, max_rows=50, seed=3).rows) <= 50


def test_synthesis_improves_recall_on_the_rare_drifted_segment(scenario):
    training, recent, test = scenario
    numeric, categorical = feature_columns(training, "churn")
    segments = find_segments(training, recent, [SEGMENT])
    made = synthesize(training, "churn", segments, max_rows=1_500, seed=1)
    inside = test[SEGMENT] == VALUE

    def recall(rows):
        model = family_pipeline("gradient_boosting", {"max_iter": 200}, numeric, categorical)
        model.fit(rows.drop(columns="churn"), rows["churn"])
        predicted = model.predict(test.drop(columns="churn"))
        return recall_score(test["churn"][inside], predicted[inside]), recall_score(
            test["churn"][~inside], predicted[~inside]
        )

    real_segment, real_rest = recall(training)
    synth_segment, synth_rest = recall(pd.concat([training, made.rows], ignore_index=True))
    assert synth_segment >= real_segment + 0.1, (real_segment, synth_segment)
    assert synth_rest >= real_rest - 0.03  # the rest of the customers do not pay for it


def test_too_few_real_rows_are_skipped_not_invented():
    frame = generate_churn(500, 9)
    frame.loc[:3, SEGMENT] = "crypto"
    segment = Segment(
        feature=SEGMENT, kind="category", value="crypto", training_share=0.008, recent_share=0.3
    )
    made = synthesize(frame, "churn", [segment], max_rows=100)
    assert made.rows.empty and "fewer than" in made.skipped["payment_method=crypto"]
