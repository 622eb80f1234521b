"""What happens to a run around training: how it is priced, where it is tracked (MLflow, W&B) and where its model
is registered.

Field descriptions are the documentation (docs/recipes.md is generated from them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneloop.config.evaluation import GateRule
from tuneloop.config.schema import NAME_PATTERN, Section


class Cost(Section):
    """How runs are priced: a device from the price table (detected by default) or an explicit price."""

    device: str = Field(
        "auto",
        description="Price-table device (`h100`, `a100-80gb`, `l4`, `cpu-2`, ...); `auto` detects the GPU by name, "
        "or the CPU instance by core count.",
    )
    price_per_hour: float | None = Field(
        None, ge=0, description="Price of one device-hour, overriding the table's (e.g. your negotiated rate)."
    )
    prices: str | None = Field(
        None, description="Another price table (default `configs/cost/prices.yaml`, which is meant to be edited)."
    )


class Wandb(Section):
    """Weights & Biases, next to MLflow. Without credentials it runs offline and says how to upload later."""

    project: str | None = Field(None, description="W&B project; defaults to the recipe name.")
    entity: str | None = Field(None, description="W&B team or user; defaults to your default entity.")
    mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="`auto` goes online when an API key is configured (`WANDB_API_KEY` or `wandb login`) and "
        "offline otherwise; `online` without a key is an error before training starts.",
    )
    tags: list[str] = Field(default_factory=list, description="Tags on the W&B run.")


class Tracking(Section):
    """Run tracking. MLflow is the system of record: `sqlite:///<workspace>/mlflow.db` unless
    `MLFLOW_TRACKING_URI` names another store (a team's MLflow server)."""

    mlflow: bool = Field(True, description="Track the run in MLflow (needed for registration).")
    experiment: str | None = Field(None, description="MLflow experiment; defaults to the recipe name.")
    wandb: Wandb | None = Field(
        None, description="Also log to Weights & Biases (`wandb: {}` for the defaults, or `wandb: true`)."
    )

    @model_validator(mode="before")
    @classmethod
    def _wandb_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("wandb") is True:
            return {**value, "wandb": {}}
        if isinstance(value, dict) and value.get("wandb") is False:
            return {**value, "wandb": None}
        return value


class Registry(Section):
    """Where `tuneloop run` registers the trained model (the MLflow Model Registry of the tracking store)."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Registered model name. A new version gets `@challenger`; `models:/NAME@champion` is the "
        "version that passed its gate against the previous champion.",
    )
    merged: bool = Field(
        False, description="Also register the adapter merged into its base (full weights, for serving)."
    )
    promote: Literal["auto", "manual"] = Field(
        "auto",
        description="`auto`: a version that passed its gate becomes champion when there is none, or when it "
        "passes the gate against the current champion (same suite, cached results reused); `manual`: it stays "
        "challenger until `tuneloop registry promote`.",
    )
    gate: list[GateRule] | None = Field(
        None,
        description="Rules a version must pass against the champion to replace it; defaults to "
        "`evaluation.gate` (which judges the trained model against its baseline).",
    )

    @model_validator(mode="after")
    def _gate_compares(self) -> Registry:
        if self.gate is not None and not self.gate:
            raise ValueError("`gate: []` would promote anything; omit `gate` to use evaluation.gate")
        return self
