"""Write docs/recipes.md and docs/recipe.schema.json from the recipe schema (run after changing the schema)."""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.reference import json_schema, markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"

if __name__ == "__main__":
    (DOCS / "recipes.md").write_text(markdown())
    (DOCS / "recipe.schema.json").write_text(json_schema())
    print(f"wrote {DOCS / 'recipes.md'} and {DOCS / 'recipe.schema.json'}")
