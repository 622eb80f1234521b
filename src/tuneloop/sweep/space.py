"""Search spaces and samplers: a trial's values come from Optuna, become `--set` overrides of the recipe, and so
run through the same validation and code as any hand-written override.

Default spaces follow what practitioners tune first, per method. LoRA trains a few new weights from zero and takes
a learning rate about ten times that of full fine-tuning (the LoRA paper's and TRL's defaults: 2e-4 vs 2e-5).
"""

from __future__ import annotations

from typing import Any

import yaml

from tuneloop.config.schema import Recipe
from tuneloop.config.sweep import Param, Sweep

# learning-rate ranges, centred on the usual default of each method (full fine-tuning; LoRA is ten times higher)
FULL_LR = {
    "sft": (2e-6, 2e-4),
    "dpo": (5e-8, 5e-6),
    "kto": (5e-8, 5e-6),
    "reward": (1e-6, 1e-4),
    "grpo": (1e-7, 1e-5),
    "rloo": (1e-7, 1e-5),
    "distill": (2e-6, 2e-4),
    "orpo": (1e-6, 1e-4),
    "cpo": (1e-6, 1e-4),
}
LORA_FACTOR = 10


def default_space(recipe: Recipe) -> dict[str, Param]:
    """The default space of the first stage: learning rate (log scale, LoRA ten times higher), warm-up, and for
    LoRA the rank; DPO/KTO add beta. Documented in docs/sweeps.md; a sweep's own `space` replaces it."""
    stage = recipe.stages[0]
    low, high = FULL_LR.get(stage.method, (2e-6, 2e-4))
    if stage.peft is not None:
        low, high = low * LORA_FACTOR, high * LORA_FACTOR
    prefix = f"stages.{stage.name}"
    space = {
        f"{prefix}.args.learning_rate": Param(loguniform=[low, high]),
        f"{prefix}.args.warmup_steps": Param(uniform=[0.0, 0.1]),  # below 1: a share of the steps
    }
    if stage.peft is not None:
        space[f"{prefix}.peft.r"] = Param(categorical=[8, 16, 32, 64])
    if stage.method in ("dpo", "kto"):
        space[f"{prefix}.args.beta"] = Param(loguniform=[0.01, 0.5])
    return space


def override(key: str, value: Any) -> str:
    """A `--set` override for one value (YAML flow style, so lists and strings survive)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def distributions(space: dict[str, Param]) -> dict[str, Any]:
    """Optuna distributions of the space (also what `study.add_trial` and the replay use)."""
    import optuna.distributions as D

    out: dict[str, Any] = {}
    for key, p in space.items():
        kind = p.kind()
        if kind == "loguniform":
            out[key] = D.FloatDistribution(*p.values(kind), log=True)
        elif kind == "uniform":
            out[key] = D.FloatDistribution(*p.values(kind), step=p.step)
        elif kind == "int":
            out[key] = D.IntDistribution(*p.values(kind), log=p.log, step=int(p.step or 1))
        else:
            out[key] = D.CategoricalDistribution(p.ends())
    return out


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's values, one per key of the space."""
    import optuna.distributions as D

    values: dict[str, Any] = {}
    for key, dist in distributions(space).items():
        if isinstance(dist, D.FloatDistribution):
            values[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, D.IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            values[key] = trial.suggest_categorical(key, dist.choices)
    return values


def grid(space: dict[str, Param], points: int) -> dict[str, list[Any]]:
    """The grid a `grid` sampler walks: every choice, `points` values of each range."""
    return {key: p.grid(points) for key, p in space.items()}


def make_sampler(sweep: Sweep, space: dict[str, Param]) -> Any:
    """The Optuna sampler the sweep asked for. TPE handles one objective and quality vs cost alike, and learns from
    failed trials through their constraint (set by the trial loop, as CARBS does); NSGA-II, GP, random and grid are
    there as alternatives and baselines (docs/sweeps.md compares them)."""
    import optuna

    name = sweep.sampler_name()
    seed = sweep.seed
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.startup_trials, multivariate=True)
    if name == "nsga2":
        population = max(4, min(50, sweep.startup_trials * 2))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sweep.startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(grid(space, sweep.grid_points), seed=seed)


def grid_size(space: dict[str, Param], points: int) -> int:
    n = 1
    for values in grid(space, points).values():
        n *= len(values)
    return n
