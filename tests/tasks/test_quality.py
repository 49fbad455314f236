"""Data quality with real Great Expectations on generated churn batches."""

import json

import pytest

from agentic_mlops.tasks.batches import DataError, write_table
from agentic_mlops.tasks.churn import generate_churn
from agentic_mlops.tasks.quality import (
    build_suite,
    load_suite,
    quarantine_batch,
    save_suite,
    split_failing_rows,
    validate_data,
)


@pytest.fixture(scope="module")
def suite():
    return build_suite(generate_churn(3_000, 1), "churn-reference", "churn")


@pytest.mark.parametrize("scenario", ["none", "covariate", "concept", "gradual"])
def test_drift_is_not_a_quality_failure(suite, scenario):
    result = validate_data(generate_churn(1_500, 7, scenario), suite)
    assert result.passed and not result.batch_failed and not result.failing_rows


def test_a_broken_batch_fails_with_every_problem_named(suite):
    result = validate_data(generate_churn(1_500, 7, "quality"), suite)
    assert result.batch_failed and not result.passed
    by_kind = {(f.expectation, f.column): f.detail for f in result.failures}
    columns = by_kind[("expect_table_columns_to_match_set", None)]
    assert "missing columns: payment_method, support_calls" in columns
    assert "unexpected columns: PaymentMethod" in columns and "churn" not in columns
    assert ("expect_column_values_to_not_be_null", "monthly_charges") in by_kind
    assert "-1" in by_kind[("expect_column_values_to_be_between", "tenure_months")]
    assert "unknown_plan" in by_kind[("expect_column_values_to_be_in_set", "contract")]


def test_a_few_bad_rows_are_split_off_and_the_batch_goes_on(suite):
    frame = generate_churn(1_000, 7)
    frame.loc[[3, 10, 500], "contract"] = "free_forever"
    frame.loc[20, "tenure_months"] = -5
    result = validate_data(frame, suite, row_tolerance=0.05)
    assert not result.passed and not result.batch_failed
    assert result.failing_rows == [3, 10, 20, 500]
    clean, failing = split_failing_rows(frame, result)
    assert len(clean) == 996 and set(failing["contract"]) >= {"free_forever"}
    assert "free_forever" not in set(clean["contract"])


def test_too_many_bad_rows_fail_the_batch(suite):
    frame = generate_churn(1_000, 7)
    frame.loc[:99, "contract"] = "free_forever"
    assert validate_data(frame, suite, row_tolerance=0.05).batch_failed


def test_reference_nulls_are_tolerated_up_to_twice_their_share():
    reference = generate_churn(2_000, 1)
    reference["monthly_charges"] = reference["monthly_charges"].astype(float)
    reference.loc[reference.index % 20 == 0, "monthly_charges"] = float("nan")
    suite = build_suite(reference, "with-nulls", "churn")
    batch = generate_churn(1_000, 2)
    batch["monthly_charges"] = batch["monthly_charges"].astype(float)
    batch.loc[batch.index % 15 == 0, "monthly_charges"] = float("nan")
    result = validate_data(batch, suite)
    assert not result.batch_failed and not result.failing_rows
    batch.loc[batch.index % 3 == 0, "monthly_charges"] = float("nan")
    assert validate_data(batch, suite).batch_failed


def test_suite_round_trips_and_a_bad_suite_is_a_clear_error(suite, tmp_path):
    path = save_suite(suite, tmp_path / "expectations.json")
    assert load_suite(path) == json.loads(path.read_text())
    (tmp_path / "bad.json").write_text('{"name": "x", "expectations": [{"type": "nope"}]}')
    with pytest.raises(DataError, match="not a valid expectation suite"):
        load_suite(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(DataError, match="unreadable"):
        load_suite(tmp_path / "junk.json")
    with pytest.raises(DataError, match="no such file"):
        load_suite(tmp_path / "absent.json")


def test_quarantine_moves_the_file_keeps_its_bytes_and_is_safe_to_repeat(suite, tmp_path):
    batch = write_table(generate_churn(300, 3, "quality"), tmp_path / "in" / "b.parquet")
    content = batch.read_bytes()
    result = validate_data(generate_churn(300, 3, "quality"), suite)
    moved = quarantine_batch(batch, result, tmp_path / "q")
    assert not batch.exists() and moved.read_bytes() == content
    report = json.loads((tmp_path / "q" / "b.parquet.validation.json").read_text())
    assert report["batch_failed"] is True and report["failures"]
    assert quarantine_batch(batch, result, tmp_path / "q") == moved

    again = write_table(generate_churn(300, 4, "quality"), tmp_path / "in" / "b.parquet")
    second = quarantine_batch(again, result, tmp_path / "q")
    assert second != moved and second.exists() and moved.read_bytes() == content
