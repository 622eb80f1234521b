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


def test_uv_gets_the_package_sources_pip_is_configured_with(tmp_path):
    """`make install` hands pip's configuration to uv (scripts/pip_to_uv.py); a key it drops would make uv resolve
    against other indexes than pip, or ignore a constraint."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nextra-index-url = file:///srv/a/simple file:///srv/b/simple\nconstraint = /etc/c.txt\n"
        "[install]\nfind-links = /srv/wheels\n"
    )
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": "https://mirror.example/simple"}
    env.pop("PIP_FIND_LINKS", None)
    done = subprocess.run(
        [sys.executable, "scripts/pip_to_uv.py"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    flags = done.stdout.split()
    assert flags[:2] == ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version on any index
    pairs = list(zip(flags[2::2], flags[3::2], strict=True))
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert ("--extra-index-url", "file:///srv/a/simple") in pairs and (
        "--extra-index-url",
        "file:///srv/b/simple",
    ) in pairs
    assert ("--constraints", "/etc/c.txt") in pairs and ("--find-links", "/srv/wheels") in pairs
