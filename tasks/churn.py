"""A seeded customer-churn table with a known ground truth and named drift scenarios.

The label comes from a logistic function of the features (`churn_probability`), so every
scenario's effect on the label is known exactly: `covariate` moves the inputs and keeps the
function, `concept` keeps the inputs and changes the function, `quality` breaks the data,
`gradual` grows a covariate-and-concept shift over a sequence of batches.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd

Scenario = Literal["none", "covariate", "concept", "quality", "gradual"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)

NUMERIC_FEATURES = (
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_calls",
    "num_products",
    "senior_citizen",
)
CATEGORICAL_FEATURES = (
    "contract",
    "payment_method",
    "internet_service",
    "paperless_billing",
)
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
TARGET = "churn"

CONTRACTS = ("month_to_month", "one_year", "two_year")
PAYMENT_METHODS = ("electronic_check", "mailed_check", "bank_transfer", "credit_card")
INTERNET_SERVICES = ("dsl", "fiber_optic", "none")

PRICE_RISE = 0.25
"""Relative rise of monthly charges at full covariate drift."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def churn_probability(frame: pd.DataFrame, concept_shift: float = 0.0) -> np.ndarray:
    """The ground-truth churn probability of each customer.

    Args:
        frame: Customers with every column of `FEATURES`.
        concept_shift: 0 for the reference relationship, 1 for the fully changed one, in
            which customers are far more sensitive to price, support calls now keep
            customers (a better support team) and contracts bind less.

    Returns:
        One probability per row.
    """
    price_weight = 0.025 + 0.06 * concept_shift
    support_weight = 0.35 * (1.0 - 2.0 * concept_shift)
    contract_weight = 1.3 * (1.0 - 0.7 * concept_shift)
    logit = (
        -1.6
        + contract_weight * (frame["contract"] == "month_to_month")
        - 0.6 * (frame["contract"] == "two_year")
        - 0.045 * frame["tenure_months"]
        + price_weight * (frame["monthly_charges"] - 70.0)
        + support_weight * frame["support_calls"]
        + 0.5 * (frame["internet_service"] == "fiber_optic")
        + 0.45 * (frame["payment_method"] == "electronic_check")
        + 0.25 * (frame["paperless_billing"] == "yes")
        + 0.3 * frame["senior_citizen"]
        - 0.15 * frame["num_products"]
    )
    return _sigmoid(logit.to_numpy(dtype=float))


def _customers(n_rows: int, rng: np.random.Generator, price_rise: float) -> pd.DataFrame:
    contract = rng.choice(CONTRACTS, size=n_rows, p=[0.55, 0.25, 0.20])
    tenure_scale = np.select(
        [contract == "month_to_month", contract == "one_year"], [14.0, 30.0], default=45.0
    )
    tenure = np.clip(rng.exponential(tenure_scale), 0, 72).round().astype(int)
    internet = rng.choice(INTERNET_SERVICES, size=n_rows, p=[0.35, 0.45, 0.20])
    base_charge = np.select(
        [internet == "fiber_optic", internet == "dsl"], [80.0, 55.0], default=25.0
    )
    monthly = np.clip(base_charge + rng.normal(0, 12, n_rows), 18.0, 120.0)
    monthly = np.round(monthly * (1.0 + price_rise), 2)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, n_rows), 2)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_calls": rng.poisson(1.2, n_rows),
            "num_products": rng.integers(1, 6, n_rows),
            "senior_citizen": (rng.random(n_rows) < 0.16).astype(int),
            "contract": contract,
            "payment_method": rng.choice(PAYMENT_METHODS, size=n_rows, p=[0.34, 0.23, 0.22, 0.21]),
            "internet_service": internet,
            "paperless_billing": np.where(rng.random(n_rows) < 0.6, "yes", "no"),
        }
    )


def _break_quality(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    broken = frame.copy()
    n_rows = len(broken)
    broken["monthly_charges"] = broken["monthly_charges"].astype(float)
    broken.loc[rng.random(n_rows) < 0.2, "monthly_charges"] = np.nan
    broken.loc[rng.random(n_rows) < 0.05, "tenure_months"] = -1
    broken["contract"] = broken["contract"].where(rng.random(n_rows) >= 0.05, "unknown_plan")
    return broken.rename(columns={"payment_method": "PaymentMethod"}).drop(
        columns=["support_calls"]
    )


def generate_churn(
    n_rows: int = 5_000,
    seed: int = 42,
    scenario: Scenario = "none",
    severity: float = 1.0,
) -> pd.DataFrame:
    """Generate one batch of customers with a churn label.

    Args:
        n_rows: Number of customers.
        seed: Seed of the random generator; the same seed gives the same table.
        scenario: Which drift to apply: `none`, `covariate` (a price rise), `concept` (price
            sensitivity rises, the inputs stay as they were), `quality` (nulls, out-of-range
            values, an unseen category, a renamed and a missing column) or `gradual` (a price
            rise with a growing change in behaviour, scaled by `severity`).
        severity: Strength of the drift between 0 (none) and 1 (full).

    Returns:
        A DataFrame with the feature columns and the `churn` label (0/1).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be between 0 and 1, got {severity}")
    rng = np.random.default_rng(seed)
    price_rise = PRICE_RISE * severity if scenario in ("covariate", "gradual") else 0.0
    concept_shift = severity if scenario in ("concept", "gradual") else 0.0
    frame = _customers(n_rows, rng, price_rise)
    frame[TARGET] = (rng.random(n_rows) < churn_probability(frame, concept_shift)).astype(int)
    if scenario == "quality":
        frame = _break_quality(frame, rng)
    return frame


def generate_batches(
    n_batches: int,
    rows_per_batch: int = 2_000,
    seed: int = 42,
    scenario: Scenario = "none",
) -> list[pd.DataFrame]:
    """Generate a sequence of batches; with `gradual` the drift grows from 0 to full.

    Args:
        n_batches: Number of batches.
        rows_per_batch: Customers in each batch.
        seed: Seed of the first batch; batch i uses `seed + i`.
        scenario: As in `generate_churn`; every batch but `gradual`'s has full severity.

    Returns:
        The batches in order.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches}")
    batches = []
    for index in range(n_batches):
        severity = index / max(n_batches - 1, 1) if scenario == "gradual" else 1.0
        batches.append(generate_churn(rows_per_batch, seed + index, scenario, severity))
    return batches
