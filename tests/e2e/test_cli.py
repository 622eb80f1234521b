"""Every verb of the CLI through typer's runner, `--help` included, and the start-up cost of the command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()


VERBS = [[], ["validate"], ["train"], ["run"], ["eval"], ["models"], ["models", "pull"], ["models", "list"]]
VERBS += [["registry"]] + [["registry", v] for v in ("list", "show", "lineage", "history", "promote", "rollback")]
VERBS += [["registry", "pull"], ["registry", "register"]]
VERBS += [["serve"], ["serve", "start"], ["serve", "keys"], ["serve", "requests"]]
VERBS += [["serve", "keys", v] for v in ("create", "list", "revoke")]


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
