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


def test_test_durations_sum_each_file_and_name_only_existing_files(tmp_path):
    """scripts/test_durations.py turns a JUnit report into tests/durations.json, which orders `make test`."""
    import subprocess
    import sys

    repo = DOCS.parent
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.test_a" name="test_x" time="1.25"/>'
        '<testcase classname="tests.unit.test_a.TestGroup" name="test_y" time="2.0"/>'
        '<testcase classname="tests.integration.test_b" name="test_z[p]" time="9.5"/>'
        "</testsuite></testsuites>"
    )
    done = subprocess.run(
        [sys.executable, "scripts/test_durations.py", str(junit)], cwd=repo, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert list(json.loads(done.stdout).items()) == [
        ("tests/integration/test_b.py", 9.5),
        ("tests/unit/test_a.py", 3.2),
    ]
    stale = [name for name in json.loads((repo / "tests/durations.json").read_text()) if not (repo / name).is_file()]
    assert not stale, f"tests/durations.json names removed files {stale}: refresh it (scripts/test_durations.py)"
