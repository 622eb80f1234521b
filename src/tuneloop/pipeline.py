"""Run one recipe in order: prepare data → train stages → (evaluate → gate → register, added by later work)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneloop.config.schema import Recipe
from tuneloop.train import RunResult, train_recipe


def run(
    recipe: Recipe,
    recipe_path: Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    run_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> RunResult:
    """The whole recipe. Today that is its training stages; evaluation and registration slot in after them."""
    return train_recipe(recipe, recipe_path, smoke=smoke, resume=resume, run_dir=run_dir, say=say)
