"""Typed results that flows return and the CLI prints: one shape per phase."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TrainingResult(BaseModel):
    """What a training run produced and where it was registered."""

    model_name: str = Field(description="Registered model name.")
    version: int = Field(description="Model version registered by this run.")
    aliases: list[str] = Field(description="Aliases this version holds after the run.")
    run_id: str = Field(description="MLflow run id.")
    experiment_id: str = Field(description="MLflow experiment id.")
    metrics: dict[str, float] = Field(description="Holdout metrics.")
    data_source: str = Field(description="Where the training data came from.")
    dataset_digest: str = Field(description="MLflow dataset digest of the training rows.")
    rows: int = Field(description="Rows used for training and holdout together.")
