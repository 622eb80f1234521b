"""Schema of a hyperparameter sweep: a recipe's `sweep:` section, or a `configs/sweeps/*.yaml` file that names its
recipe. What to search (recipe keys in `--set` paths), what to optimise (metrics and cost), what it may spend, how
to search (Optuna sampler) and when to stop a trial early (pruning). Field descriptions are the documentation.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tuneloop.config.errors import AtKey
from tuneloop.config.schema import NAME_PATTERN, Section

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
LOWER_IS_BETTER = ("perplexity", "eval_loss", "loss")
KINDS = ("loguniform", "uniform", "int", "categorical", "bool")


def duration_s(text: str | float | int) -> float:
    """`90s`, `30m`, `2h`, `1d` or a number of seconds, as seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 30m, 2h or 1d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class Param(Section):
    """One searched value. Exactly one of the distribution keys: `{loguniform: [1e-5, 1e-3]}`,
    `{uniform: [0.0, 0.1]}`, `{int: [4, 64]}` (with `step`/`log`), `{categorical: [8, 16, 32]}` or
    `{bool: true}` (both values)."""

    loguniform: list[float] | None = Field(None, description="Low and high end, sampled on a log scale (> 0).")
    uniform: list[float] | None = Field(None, description="Low and high end, sampled uniformly.")
    int_: list[int] | None = Field(None, alias="int", description="Low and high end (both included) of an integer.")
    step: float | None = Field(None, gt=0, description="`int`/`uniform`: spacing of the values (e.g. 8).")
    log: bool = Field(False, description="`int`: sample on a log scale.")
    categorical: list[Any] | None = Field(None, description="The values to choose from (numbers, strings, ...).")
    bool_: Literal[True] | None = Field(None, alias="bool", description="`true`: search both `true` and `false`.")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_distribution(self) -> Param:
        kinds = [k for k in KINDS if self.values(k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of loguniform, uniform, int, categorical, bool "
                "(e.g. {loguniform: [1e-5, 1e-3]} or {categorical: [8, 16, 32]})"
            )
        kind = kinds[0]
        if kind in ("loguniform", "uniform", "int"):
            values = self.values(kind)
            if len(values) != 2:
                raise AtKey(kind, f"{kind} takes [low, high]; got {len(values)} value(s)")
            low, high = values
            if not (math.isfinite(low) and math.isfinite(high)):
                raise AtKey(kind, "the ends of a range must be finite numbers")
            if low > high or (low == high and kind != "int"):
                raise AtKey(kind, f"empty range [{low}, {high}]: low must be below high")
            if (kind == "loguniform" or (kind == "int" and self.log)) and low <= 0:
                raise AtKey(kind, f"a log range needs low > 0 (got {low}); a log scale has no zero")
        if kind == "categorical" and not self.categorical:
            raise AtKey("categorical", "no values to choose from")
        if self.step is not None and kind not in ("int", "uniform"):
            raise AtKey("step", "`step` applies to int and uniform ranges")
        if self.log and kind != "int":
            raise AtKey("log", "`log` applies to int ranges (use loguniform for floats)")
        return self

    def values(self, kind: str) -> Any:
        return getattr(self, {"int": "int_", "bool": "bool_"}.get(kind, kind))

    def kind(self) -> str:
        return next(k for k in KINDS if self.values(k) is not None)

    def ends(self) -> list[Any]:
        """Values that must each make a valid recipe: both ends of a range, every choice."""
        kind = self.kind()
        if kind == "bool":
            return [True, False]
        if kind == "categorical":
            return list(self.categorical or [])
        return list(self.values(kind))

    def grid(self, points: int = 3) -> list[Any]:
        """Values a grid search tries: every choice, or `points` evenly (log-)spaced values of a range."""
        kind = self.kind()
        if kind in ("bool", "categorical"):
            return self.ends()
        low, high = self.values(kind)
        if kind == "int":
            step = int(self.step or 1)
            values = list(range(int(low), int(high) + 1, step))
            if len(values) <= points:
                return values
            return sorted({values[round(i * (len(values) - 1) / (points - 1))] for i in range(points)})
        if kind == "loguniform":
            return [float(f"{low * (high / low) ** (i / (points - 1)):.3g}") for i in range(points)]
        return [low + (high - low) * i / (points - 1) for i in range(points)]


class Objective(Section):
    """One thing the sweep optimises: an evaluation metric, or the trial's cost."""

    metric: str | None = Field(
        None,
        description="An evaluation metric of the recipe's suite, `task/metric` or just `metric` when one task has "
        "it (e.g. `synopsis/rougeL`).",
    )
    cost: Literal["money", "device_hours"] | None = Field(
        None, description="The trial's cost (training and evaluation) in money from the price table, or device-hours."
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: `minimize` for cost, perplexity and losses; `maximize` for other metrics."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Objective:
        if (self.metric is None) == (self.cost is None):
            raise ValueError("an objective is either `metric: NAME` or `cost: money|device_hours`")
        if self.cost and self.direction == "maximize":
            raise AtKey("direction", "cost is minimised; drop `direction` or use a metric")
        if self.direction is None:
            lower = self.cost is not None or (self.metric or "").split("/")[-1] in LOWER_IS_BETTER
            self.direction = "minimize" if lower else "maximize"
        return self

    def label(self) -> str:
        return self.metric or f"cost:{self.cost}"


class Budget(Section):
    """What the sweep may spend; it stops at the first limit reached. A trial whose predicted cost would overrun
    what is left is not started, and a running trial is stopped when it would."""

    money: float | None = Field(None, gt=0, description="Money, in the price table's currency (training + evaluation).")
    device_hours: float | None = Field(None, gt=0, description="Device-hours (devices × wall hours).")
    trials: int | None = Field(None, gt=0, description="Trials started (finished, pruned and failed ones count).")
    wall_time: str | None = Field(None, description="Wall-clock time of this sweep invocation: `90m`, `2h`, ...")

    @field_validator("wall_time")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_s(value)
        return value

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if all(v is None for v in (self.money, self.device_hours, self.trials, self.wall_time)):
            raise ValueError("a budget needs at least one of money, device_hours, trials, wall_time")
        return self


class Pruning(Section):
    """Stop unpromising trials early. Every `every_steps` optimizer steps a trial answers `rows` prompts of the
    objective's task and reports the metric. With one objective Optuna's pruner decides; with quality and cost
    tuneloop's rule does: a trial stops when, at the same step, it is dominated by `min_dominating` trials that
    scored at least as well and cost no more."""

    every_steps: int = Field(gt=0, description="Report an intermediate evaluation every N optimizer steps.")
    rows: int = Field(16, gt=0, description="Prompts of the objective's task answered at each report.")
    rule: Literal["auto", "pareto", "hyperband", "successive_halving", "median", "none"] = Field(
        "auto",
        description="`auto`: `pareto` with several objectives, `hyperband` with one. `pareto` is tuneloop's "
        "dominance rule (works with several objectives); the others are Optuna's pruners (one objective only).",
    )
    warmup_steps: int = Field(0, ge=0, description="No pruning before this step.")
    min_dominating: int = Field(
        2,
        gt=0,
        description="`pareto`: how many trials must dominate a trial at the same step to stop it. Two by default: "
        "intermediate scores on a few prompts are noisy, and on the recorded grids (docs/sweeps.md) stopping on "
        "one dominating trial pruned the eventual best often enough to lose 8 points of median quality.",
    )


class Best(Section):
    """How `tuneloop sweep best` picks one trial from the Pareto front."""

    max_cost: float | None = Field(
        None, gt=0, description="Only trials that cost at most this (money, or device-hours for a device_hours cost)."
    )
    within: float | None = Field(
        None,
        ge=0,
        description="The cheapest trial whose quality is within this many metric points of the best (instead of "
        "the best quality).",
    )


SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random", "grid")


class Sweep(Section):
    """A hyperparameter sweep over a recipe: `tuneloop sweep RECIPE`."""

    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Sweep (and Optuna study) name; defaults to the recipe's name."
    )
    recipe: str | None = Field(
        None, description="Sweep files only (`configs/sweeps/*.yaml`): the recipe to sweep, relative to the file."
    )
    space: dict[str, Param] = Field(
        default_factory=dict,
        description="Searched keys in the dotted paths of `--set` (`stages.sft.args.learning_rate`) and their "
        "distributions. Empty: the default space of the first stage's method (docs/sweeps.md).",
    )
    objectives: list[Objective] = Field(
        min_length=1,
        description="What to optimise: metrics of the recipe's evaluation and, for a quality-vs-cost sweep, "
        "`{cost: money}`. Several objectives give a Pareto front.",
    )
    budget: Budget = Field(description="Hard limits: money, device-hours, trials, wall time.")
    sampler: Literal["auto", "tpe", "nsga2", "gp", "random", "grid"] = Field(
        "auto",
        description="Optuna sampler: `auto` is TPE for one objective and for quality vs cost; `nsga2`, `gp` "
        "(Gaussian process), `random` and `grid` (every combination; ranges as `grid_points` values) as "
        "alternatives and baselines.",
    )
    grid_points: int = Field(3, ge=2, description="`grid`: values tried per continuous range.")
    startup_trials: int = Field(4, ge=0, description="Random trials before the sampler models the space.")
    pruning: Pruning | None = Field(None, description="Early stopping of unpromising trials; omit for none.")
    best: Best = Field(default_factory=Best, description="How one trial is picked from the Pareto front.")
    seed: int = Field(0, description="Seed of the sampler.")

    @field_validator("space")
    @classmethod
    def _paths(cls, value: dict[str, Param]) -> dict[str, Param]:
        for path in value:
            if not re.match(r"^[A-Za-z_][\w-]*(\.[\w-]+)+$", path) and "." not in path:
                raise AtKey(path, f"{path!r} is not a dotted recipe key (e.g. stages.sft.args.learning_rate)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Sweep:
        labels = [o.label() for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise AtKey("objectives", "an objective is listed twice")
        if sum(o.cost is not None for o in self.objectives) > 1:
            raise AtKey("objectives", "one cost objective is enough (money or device_hours)")
        if not any(o.metric for o in self.objectives):
            raise AtKey("objectives", "a sweep needs at least one metric objective besides cost")
        optuna_rule = self.pruning is not None and self.pruning.rule in ("hyperband", "successive_halving", "median")
        if optuna_rule and len(self.objectives) > 1:
            raise AtKey(
                ("pruning", "rule"),
                f"Optuna's {self.pruning.rule} pruner works with one objective only; use `rule: pareto` (or "
                "auto) for a sweep with several",
            )
        return self

    def metric_objectives(self) -> list[Objective]:
        return [o for o in self.objectives if o.metric]

    def cost_objective(self) -> Objective | None:
        return next((o for o in self.objectives if o.cost), None)

    def pruning_rule(self) -> str:
        if self.pruning is None:
            return "none"
        if self.pruning.rule != "auto":
            return self.pruning.rule
        return "pareto" if len(self.objectives) > 1 else "hyperband"

    def sampler_name(self) -> str:
        return "tpe" if self.sampler == "auto" else self.sampler
