"""Every verb of the CLI through typer's runner, `--help` included, and the start-up cost of the command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()


def _verbs(group: TyperGroup, path: list[str]) -> list[list[str]]:
    """`path` and every command under it, walked from the real app: a new group or verb cannot be left out."""
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            found += _verbs(command, [*path, name])
        else:
            found.append([*path, name])
    return found


VERBS = _verbs(typer.main.get_command(app), [])


def test_the_walk_finds_every_command_group():
    groups = {tuple(v) for v in VERBS if len(v) == 1}
    expected = {"data", "feedback", "sweep", "monitor", "loop", "registry", "serve", "models"}
    assert {(g,) for g in expected} <= groups
    assert ["feedback", "raters", "add"] in VERBS and ["serve", "keys", "revoke"] in VERBS


@pytest.mark.parametrize("argv", VERBS)
def test_every_verb_has_help(argv):
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from tuneloop.cli import app; from typer.testing import CliRunner; "
        "CliRunner().invoke(app, ['--help']); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_list_names_the_builtin_model():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "smollm2-135m-instruct" in result.output


def test_models_pull_unknown_name_is_a_clear_error():
    result = runner.invoke(app, ["models", "pull", "gpt-17"])
    assert result.exit_code == 2
    assert "unknown built-in model 'gpt-17'" in result.output


def test_validate_ok_for_shipped_recipe():
    result = runner.invoke(app, ["validate", "recipes/quickstart.yaml"])
    assert result.exit_code == 0 and "ok recipes/quickstart.yaml" in result.output


def test_train_bad_recipe_exits_2_before_loading_anything(write):
    path = write("r.yaml", "name: Bad Name\n")
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "name: string should match pattern" in result.output


def test_runtime_error_is_one_line_without_traceback(write, tiny_model):
    path = write(
        "r.yaml",
        f"""
name: x
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 4}}
stages:
  - name: sft
    method: sft
    args: {{max_length: 8, max_steps: 1}}
""",
    )
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 1
    assert "no training rows left after truncation at max_length=8" in result.output
    assert "Traceback" not in result.output
