"""The workspace is found as git finds a repository; base models live in one user-level cache; `tuneloop init` and
`tuneloop configs` give a project outside a clone what the clone has."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop import shipped, workspace
from tuneloop.cli import app


@pytest.fixture
def nowhere(tmp_path, monkeypatch) -> Path:
    """A directory with no workspace in it or above, and no TUNELOOP_HOME."""
    monkeypatch.delenv("TUNELOOP_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert workspace.find() is None, "a .tuneloop above the test's tmp directory"
    return tmp_path


def test_the_nearest_workspace_above_is_found_and_tuneloop_home_wins(nowhere, monkeypatch):
    assert workspace.home() == nowhere / ".tuneloop" and workspace.is_new()
    (nowhere / ".tuneloop").mkdir()
    deep = nowhere / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert workspace.home() == nowhere / ".tuneloop" and not workspace.is_new()
    assert workspace.runs_dir() == nowhere / ".tuneloop" / "runs"
    monkeypatch.setenv("TUNELOOP_HOME", str(nowhere / "elsewhere"))
    assert workspace.home() == nowhere / "elsewhere"


def test_models_live_in_one_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNELOOP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert workspace.models_dir() == tmp_path / "xdg" / "tuneloop" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert workspace.models_dir() == tmp_path / "home" / ".cache" / "tuneloop" / "models"
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "mine"))
    assert workspace.models_dir() == tmp_path / "mine" / "models"
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "ws"))  # a workspace does not move the cache
    assert workspace.models_dir() == tmp_path / "mine" / "models"


def test_a_command_says_where_it_will_create_a_workspace_and_a_subdirectory_uses_the_projects(nowhere, monkeypatch):
    runner = CliRunner()
    first = runner.invoke(app, ["registry", "list"])
    assert first.exit_code == 0, first.output
    assert f"no .tuneloop workspace in {nowhere} or above" in first.stderr
    assert "tuneloop init" in first.stderr
    assert not (nowhere / ".tuneloop").exists()  # a look creates nothing
    (nowhere / ".tuneloop").mkdir()
    quiet = runner.invoke(app, ["registry", "list"])  # the workspace exists now
    assert "no .tuneloop workspace" not in quiet.stderr
    sub = nowhere / "src" / "deeper"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    again = runner.invoke(app, ["registry", "list"])
    assert "no .tuneloop workspace" not in again.stderr
    assert f"{nowhere}/.tuneloop/mlflow.db" in again.stdout  # the same store, not a new one in deeper/
    assert not (sub / ".tuneloop").exists()


def test_init_copies_configs_and_recipes_and_keeps_edits(nowhere):
    runner = CliRunner()
    made = runner.invoke(app, ["init", "proj"])
    assert made.exit_code == 0, made.output
    project = nowhere / "proj"
    shipped_files = sorted(p.relative_to(shipped.root()) for p in shipped.root().rglob("*") if p.is_file())
    copied = sorted(p.relative_to(project) for p in project.rglob("*") if p.is_file())
    assert copied == [p for p in shipped_files if p.parts[0] in ("configs", "recipes")]
    assert (project / ".tuneloop").is_dir()
    assert "next: cd" in made.stdout and "tuneloop run recipes/quickstart.yaml --smoke" in made.stdout
    prices = project / "configs" / "cost" / "prices.yaml"
    prices.write_text("# mine\n")
    again = runner.invoke(app, ["init", "proj"])
    assert prices.read_text() == "# mine\n" and "copied 0 files" in again.stdout
    assert f"kept {len(copied)} that exist" in again.stdout
    runner.invoke(app, ["init", "proj", "--force"])
    assert prices.read_text() == (shipped.configs() / "cost" / "prices.yaml").read_text()


def test_configs_path_prefers_the_projects_own_and_suggests_names(nowhere, monkeypatch):
    runner = CliRunner()
    shipped_profile = runner.invoke(app, ["configs", "path", "accelerate/zero3"])
    assert Path(shipped_profile.stdout.strip()) == shipped.configs() / "accelerate" / "zero3.yaml"
    deepspeed = runner.invoke(app, ["configs", "path", "deepspeed/zero3"])
    assert Path(deepspeed.stdout.strip()) == shipped.configs() / "deepspeed" / "zero3.json"
    runner.invoke(app, ["init", "."])
    (nowhere / "sub").mkdir()
    monkeypatch.chdir(nowhere / "sub")
    own = runner.invoke(app, ["configs", "path", "accelerate/zero3"])
    assert Path(own.stdout.strip()) == nowhere / "configs" / "accelerate" / "zero3.yaml"
    wrong = runner.invoke(app, ["configs", "path", "acelerate/zero3"])
    assert wrong.exit_code == 2 and "did you mean accelerate/zero3" in wrong.stderr
    listed = runner.invoke(app, ["configs", "list", "--json"])
    assert "DeepSpeed ZeRO stage 3, optimizer and param offloaded" in listed.stdout


def test_recipes_anywhere_use_the_shipped_defaults_and_suites(nowhere):
    (nowhere / "r.yaml").write_text(
        "name: r\ndefaults: [models/smollm2-135m]\n"
        "data: {source: debian-descriptions, task: synopsis}\n"
        "stages: [{name: sft, method: sft}]\nevaluation: {suite: eval/synopsis}\n"
    )
    done = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert done.exit_code == 0, done.output


def test_looking_at_an_empty_registry_creates_no_store(nowhere, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["registry", "list"])
    assert result.exit_code == 0 and "no registered models yet" in result.output
    result = runner.invoke(app, ["registry", "list", "--json"])
    assert result.exit_code == 0 and result.stdout.strip().endswith("[]")
    assert not (nowhere / ".tuneloop").exists()  # no workspace, no mlflow.db made by a look
