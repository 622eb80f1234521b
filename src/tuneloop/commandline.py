"""Pieces every command group shares: a group whose verb may be left out (`tuneloop serve MODEL` is `serve start
MODEL`, `tuneloop sweep RECIPE` is `sweep run RECIPE`), and how a file's problems are printed before exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from tuneloop.config.errors import RecipeError


def implied_verb(verb: str) -> type[TyperGroup]:
    """A typer group class that reads `GROUP ARG ...` as `GROUP VERB ARG ...` when ARG is not one of its verbs (nor
    --help), so options may come first too: `tuneloop serve --engine transformers MODEL`."""

    class Implied(TyperGroup):
        def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
            if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
                args = [verb, *args]
            return super().parse_args(ctx, args)

    return Implied


def exit_with_problems(e: RecipeError, path: Path, err: Any) -> None:
    """Every problem as `file:line key: reason`, a count, then exit 2 (what `tuneloop validate` exits with)."""
    for p in e.problems:
        err.print(str(p), markup=False)
    err.print(f"[red]{len(e.problems)} problem(s) in {path}[/]")
    raise typer.Exit(2) from None


def load_recipe_or_exit(path: Path, overrides: list[str] | None, err: Any, section: str | None = None) -> Any:
    """The recipe, or its problems printed and exit 2; with `section`, a recipe without that section (`loop`,
    `monitor`) is an error that points to the section's documentation."""
    from tuneloop.config.loader import load_recipe

    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as e:
        exit_with_problems(e, path, err)
    if section is not None and getattr(recipe, section) is None:
        err.print(
            f"[red]error:[/] {path} has no `{section}:` section (see {SECTION_DOCS.get(section, 'docs/recipes.md')})"
        )
        raise typer.Exit(2)
    return recipe


SECTION_DOCS = {"loop": "docs/loop.md", "monitor": "docs/monitoring.md"}
