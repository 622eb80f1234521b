"""A sweep as it will run: the validated `Sweep`, the recipe it searches, and the recipe's evaluation checked to
provide every objective — all before any model is loaded, every problem with its file and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneloop.config.errors import Problem, RecipeError
from tuneloop.config.evaluation import GENERATION_METRICS
from tuneloop.config.loader import find_default, load_validated
from tuneloop.config.schema import Recipe
from tuneloop.config.sweep import Param, Sweep
from tuneloop.config.yamlsource import display_path, load_located
from tuneloop.data import builtin
from tuneloop.recipes import load_recipe
from tuneloop.sweep.space import default_space, override


@dataclass
class SweepSpec:
    sweep: Sweep
    recipe: Recipe
    recipe_path: Path
    source: Path  # the file the sweep came from (a recipe, or a configs/sweeps file)
    space: dict[str, Param]  # the sweep's space, or the default space of the recipe's method

    @property
    def name(self) -> str:
        return self.sweep.name or self.recipe.name


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """A recipe with a `sweep:` section, or a sweep file naming its recipe; RecipeError lists every problem."""

    path = Path(path)
    if not path.is_file():
        found = find_default(f"sweeps/{path}", Path.cwd())
        if found is None:
            raise RecipeError(
                [Problem(str(path), None, "", "no such sweep or recipe file (nor under configs/sweeps/)")]
            )
        path = found
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raw = None  # the located loader reports it with its line
    if isinstance(raw, dict) and "stages" in raw:
        recipe = load_recipe(path, overrides)
        if recipe.sweep is None:
            raise RecipeError([Problem(display_path(path), None, "sweep", "this recipe has no `sweep:` section")])
        sweep, recipe_path, prefix = recipe.sweep, path, ("sweep",)
    else:
        sweep = load_validated(path, Sweep, "sweep", lambda s, d: [])
        if not sweep.recipe:
            raise RecipeError([Problem(display_path(path), 1, "recipe", "a sweep file names its `recipe:`")])
        recipe_path = (path.parent / sweep.recipe).resolve()
        if not recipe_path.is_file():
            recipe_path = Path(sweep.recipe).resolve()
        if not recipe_path.is_file():
            _, where = load_located(path)
            line = where.get(("recipe",), ("", None))[1]
            msg = f"no recipe {sweep.recipe!r} next to the sweep file or in the working directory"
            raise RecipeError([Problem(display_path(path), line, "recipe", msg)])
        recipe = load_recipe(recipe_path, overrides)
        prefix = ()

    space = dict(sweep.space) or default_space(recipe)
    problems = check_against_recipe(sweep, space, recipe, recipe_path, overrides or [])
    if problems:
        _, where = load_located(path)
        located = []
        for key, message in problems:
            full = (*prefix, *key)
            line = next((where[full[:n]][1] for n in range(len(full), 0, -1) if full[:n] in where), None)
            located.append(Problem(display_path(path), line, ".".join(map(str, full)), message))
        raise RecipeError(located)
    return SweepSpec(sweep, recipe, recipe_path, path, space)


def check_against_recipe(
    sweep: Sweep, space: dict[str, Param], recipe: Recipe, recipe_path: Path, overrides: list[str]
) -> list[tuple[tuple, str]]:
    """Every searched value makes a valid recipe (both ends of each range, every choice), and every metric
    objective is something the recipe's evaluation computes."""

    problems: list[tuple[tuple, str]] = []
    if not space:
        problems.append((("space",), "no space given and no default for this recipe's method; list the keys"))
    for key, param in space.items():
        for value in param.ends():
            try:
                load_recipe(recipe_path, [*overrides, *trial_overrides(recipe), override(key, value)])
            except RecipeError as e:
                for p in e.problems:
                    where = f"{p.file}:{p.line}" if p.line and p.file != "--set" else p.file
                    about = "" if p.key == key else f" ({p.key} at {where})"
                    problems.append((("space", key), f"value {value!r}: {p.message}{about}"))
                break  # one bad value is enough to show what is wrong with the key
    if recipe.evaluation is None:
        problems.append((("objectives",), "a sweep scores trials with the recipe's `evaluation:`; the recipe has none"))
        return problems
    available = _metrics(recipe)
    for i, objective in enumerate(sweep.objectives):
        if objective.metric is None:
            continue
        matches = [m for m in available if m == objective.metric or m.split("/")[-1] == objective.metric]
        if not matches:
            problems.append(
                (
                    ("objectives", i, "metric"),
                    f"{objective.metric!r} is not computed by the recipe's evaluation; "
                    f"available: {', '.join(available)}",
                )
            )
        elif len(matches) > 1:
            problems.append((("objectives", i, "metric"), f"{objective.metric!r} is ambiguous: {', '.join(matches)}"))
    if sweep.pruning is not None:
        first = sweep.metric_objectives()[0].metric or ""
        if first.split("/")[-1] not in GENERATION_METRICS or first.endswith(("similarity", "reward_score")):
            problems.append(
                (
                    ("pruning",),
                    f"intermediate evaluations score generated answers (bleu, chrf, rouge*, exact_match, "
                    f"token_f1, synopsis_rules); {first!r} is not one, so trials cannot be pruned on it",
                )
            )
    return problems


def _metrics(recipe: Recipe) -> list[str]:
    """`task/metric` for every metric the recipe's evaluation reports (built-in tasks know their kind)."""
    assert recipe.evaluation is not None
    out = []
    for task in recipe.evaluation.tasks:
        kind = task.kind or _builtin_kind(task, recipe)
        out += [f"{task.name}/{m}" for m in task.resolved_metrics(kind)]
    return out


def _builtin_kind(task, recipe: Recipe) -> str:

    data = task.data or recipe.data
    try:
        return builtin.task(str(data.source), data.task).kind if data and data.task else "generation"
    except Exception:  # not a built-in dataset: generation unless the task says otherwise
        return "generation"


def trial_overrides(recipe: Recipe) -> list[str]:
    """What every trial changes in the recipe: no registration (the chosen trial is registered by `sweep best
    --register`), no monitor or feedback loop (they watch a registered model), and no baseline or gate (the same
    baseline would be evaluated again in every trial)."""
    out = []
    if recipe.registry is not None:
        out.append("registry=null")
    out += [f"{section}=null" for section in ("monitor", "loop") if getattr(recipe, section) is not None]
    if recipe.evaluation is not None:
        out += ["evaluation.baseline=null", "evaluation.gate=[]"]
    return out
