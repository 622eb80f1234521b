"""Recipes, suites and campaigns, loaded and checked completely: the schema (`tuneloop.config`) and then what only
the layers above it can tell — files and data sources exist, columns fit the method, models and prices resolve.

Every command and package that runs a recipe loads it here. `tuneloop.config` stays the floor: it imports nothing of
tuneloop but its own errors, so these checks, which need `data`, `models` and `cost`, sit one layer up.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.evaluation import EvalSuite
from tuneloop.config.feedback import Campaign
from tuneloop.config.loader import parse_campaign, parse_recipe, parse_suite
from tuneloop.config.schema import Recipe
from tuneloop.recipes.checks import check_campaign, check_recipe, check_tasks
from tuneloop.recipes.checks import recipe_notes as recipe_notes


def load_recipe(path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None) -> Recipe:
    """Load, merge, override and validate a recipe; raise RecipeError listing every problem found.

    `base_dir` is where relative paths in the recipe are looked up (default: the recipe's folder); a recipe
    recorded elsewhere (a run directory, a registered version) is read against its original folder."""
    return parse_recipe(path, overrides, base_dir, check=check_recipe)


def load_suite(path: str | Path) -> EvalSuite:
    """Load and validate an evaluation suite file (`configs/eval/*.yaml`); RecipeError lists every problem."""
    return parse_suite(path, check=lambda suite, folder: check_tasks(suite.tasks, None, folder, ("tasks",)))


def load_campaign(path: str | Path) -> Campaign:
    """Load and validate a feedback campaign (`configs/feedback/*.yaml`, or a recipe's `feedback:` section);
    RecipeError lists every problem with its file and line, as for recipes."""
    return parse_campaign(path, check=check_campaign, recipe_check=check_recipe)
