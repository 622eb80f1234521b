"""When to stop a trial early.

One objective: Optuna's own pruners (Hyperband by default) on `trial.report`. Quality and cost: Optuna refuses to
prune multi-objective studies, so tuneloop compares trials at equal fidelity — the same optimizer step — where a
trial is stopped when at least `min_dominating` other trials reached that step with a score at least as good and
a spend no higher (one of them strictly better). A cheap trial that is behind is kept: it may be on the front.
"""

from __future__ import annotations

from typing import Any

from tuneloop.config.sweep import Pruning


def optuna_pruner(rule: str, pruning: Pruning | None, max_steps: int | None) -> Any:
    """The Optuna pruner for a one-objective sweep (NopPruner for `pareto`/`none`, which tuneloop handles)."""
    import optuna

    if pruning is None or rule in ("pareto", "none"):
        return optuna.pruners.NopPruner()
    every = pruning.every_steps
    if rule == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=pruning.warmup_steps)
    if rule == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(every, pruning.warmup_steps or every))
    return optuna.pruners.HyperbandPruner(
        min_resource=max(every, pruning.warmup_steps or every), max_resource=max_steps or "auto"
    )


def progress_at(trial: Any, step: int) -> tuple[float, float] | None:
    """(value, spend) a trial reported at `step`, from its `progress` records [step, value, money, device_hours]."""
    for record in trial.user_attrs.get("progress") or []:
        if record[0] == step and record[1] is not None:
            return float(record[1]), float(record[2])
    return None


def dominated(
    value: float, spent: float, step: int, others: list[Any], maximize: bool, min_dominating: int
) -> list[int]:
    """Numbers of the trials that dominate (value, spent) at `step`: at least as good and no more expensive, one
    strictly. Stop the trial when there are at least `min_dominating` of them."""
    found = []
    for t in others:
        seen = progress_at(t, step)
        if seen is None:
            continue
        v, c = seen
        better_or_equal = v >= value if maximize else v <= value
        strictly = (v > value if maximize else v < value) or c < spent
        if better_or_equal and c <= spent and strictly:
            found.append(t.number)
    return found if len(found) >= min_dominating else []
