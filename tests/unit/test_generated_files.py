"""Generated files stay in step with their sources: the recipe reference, the JSON Schema, the TRL snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.config import trainer_fields
from tuneloop.config.reference import json_schema, markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_recipe_reference_is_current():
    assert (DOCS / "recipes.md").read_text() == markdown(), "run: python scripts/gen_recipe_docs.py"


def test_recipe_json_schema_is_current():
    assert (DOCS / "recipe.schema.json").read_text() == json_schema(), "run: python scripts/gen_recipe_docs.py"


def test_trainer_field_snapshot_matches_installed_trl():
    committed = json.loads(trainer_fields.SNAPSHOT.read_text())
    assert committed == json.loads(json.dumps(trainer_fields.snapshot())), "run: python scripts/gen_trainer_fields.py"


def test_reference_documents_every_schema_key():
    text = markdown()
    for key in ("base_model", "max_train_rows", "target_modules", "eval_split", "chat_template", "completion"):
        assert f"| `{key}` |" in text
