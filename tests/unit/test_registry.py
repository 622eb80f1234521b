"""The registry on the real MLflow store: registration with lineage and card, champion/challenger, promotion
through the gate with cached evaluations, forced promotion, rollback, history, interrupted promotions, models:/
references for training and evaluation, tampering, idempotent registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.registry import aliases
from tuneloop.tracking import store

runner = CliRunner()


def _run(*argv: str, code: int = 0):
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return result


def _model(name: str):
    return store.client().get_registered_model(name)


def _version(name: str, version: str):
    return store.client().get_model_version(name, version)


def test_first_run_becomes_champion_with_lineage_tags_and_a_model_card(tiny_recipe, workspace, tiny_model):
    path = tiny_recipe("first")
    out = _run("run", str(path)).output
    assert "registered models:/first/1" in out and "aliases @champion" in out
    assert "promoted to @champion: first champion" in out
    assert "tuneloop run" in out and "learning_rate=0" in out  # the next command to try
    assert _model("first").aliases == {"champion": 1}  # a champion is no longer a challenger
    mv = _version("first", "1")
    tags = mv.tags
    run_dir = Path(tags["tuneloop.run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert tags["tuneloop.base_model"] == str(tiny_model)
    assert (
        tags["tuneloop.base_model_sha256"] == summary["base_model"]["sha256"]
        and len(tags["tuneloop.base_model_sha256"]) == 64
    )
    assert tags["tuneloop.data.sft.train"] == summary["stages"][0]["data_fingerprints"]["train"]
    assert tags["tuneloop.gate"] == "passed" and "perplexity" in tags["tuneloop.gate.detail"]
    value, low, high = json.loads(tags["tuneloop.metrics"])["ppl/perplexity"]
    assert low < value < high
    assert json.loads(tags["tuneloop.cost"])["money"] > 0
    assert tags["tuneloop.recipe_sha256"] == _run_tags(mv)["tuneloop.recipe_sha256"]
    assert "## Evaluation" in mv.description and "Gate: **passed**" in mv.description
    local = Path(_run("registry", "pull", "first/1").output.strip().splitlines()[-1])
    assert (local / "model.safetensors").is_file() and (local / "README.md").read_text() == mv.description
    assert json.loads((local / "tuneloop-model.json").read_text())["weights_sha256"] == tags["tuneloop.weights_sha256"]
    assert (local / "eval" / "results.json").is_file() and (local / "recipe.yaml").is_file()


def _run_tags(mv):
    return store.client().get_run(mv.run_id).data.tags


def test_worse_run_is_registered_as_challenger_and_refused_with_the_gate_numbers(tiny_recipe):
    path = tiny_recipe("pair")
    _run("run", str(path))
    out = _run("run", str(path), "--set", "stages.sft.args.learning_rate=0").output
    assert "registered models:/pair/2" in out and "aliases @challenger" in out
    assert "not promoted (stays @challenger): gate failed against champion version 1" in out
    assert "diff +" in out and "95% CI" in out  # the numbers
    assert "reusing its cached evaluation" in out  # both versions were evaluated on this suite by their runs
    assert _model("pair").aliases == {"champion": 1, "challenger": 2}
    # promoting it by hand is refused the same way, with exit 3, and changes nothing
    again = _run("registry", "promote", "pair", "--version", "2", code=3).output
    assert "not promoted" in again and "allowed drop 0" in again
    assert _model("pair").aliases["champion"] == 1


def test_run_that_fails_its_own_gate_registers_but_cannot_become_champion(tiny_recipe):
    path = tiny_recipe("gated", gate="max: 1")  # perplexity <= 1: impossible
    out = _run("run", str(path), code=3).output
    assert "registered models:/gated/1" in out
    assert "failed its gate against its baseline" in out and "gate failed" in out
    assert _model("gated").aliases == {"challenger": 1}
    assert _version("gated", "1").tags["tuneloop.gate"] == "failed"


def test_force_needs_a_reason_and_rollback_returns_to_the_previous_champion(tiny_recipe, monkeypatch):
    path = tiny_recipe("forced")
    _run("run", str(path))
    _run("run", str(path), "--set", "stages.sft.args.learning_rate=0")
    out = _run("registry", "promote", "forced", "--version", "2", "--force", code=1).output
    assert "--force needs --reason" in out
    monkeypatch.setenv("TUNELOOP_USER", "alice")
    _run("registry", "promote", "forced", "--version", "2", "--force", "--reason", "hotfix for ticket 42")
    assert _model("forced").aliases["champion"] == 2
    _run("registry", "rollback", "forced", "--reason", "hotfix regressed")
    assert _model("forced").aliases["champion"] == 1
    out = _run("registry", "rollback", "forced", code=1).output
    assert "nothing to roll back to" in out
    events = [e for e in aliases.history(store.client(), "forced") if e["alias"] == "champion"]
    assert [(e["from"], e["to"], e["action"], e["forced"]) for e in events] == [
        (None, "1", "promote", False),
        ("1", "2", "promote", True),
        ("2", "1", "rollback", False),
    ]
    assert events[1]["by"].startswith("alice@") and events[1]["reason"] == "hotfix for ticket 42"
    table = runner.invoke(app, ["registry", "history", "forced"], env={"COLUMNS": "200"}).output
    assert "hotfix for ticket 42" in table and "(forced)" in table and "rollback" in table


def test_rollback_skips_deleted_versions(tiny_recipe):
    path = tiny_recipe("skips")
    for _ in range(3):
        _run("run", str(path))
    c = store.client()
    # identical runs pass `max_drop: 0` against each other: 1, 2 and 3 became champion in turn
    assert aliases.champion_stack(c, "skips") == ["1", "2", "3"]
    _run("registry", "promote", "skips", "--version", "2", "--force", "--reason", "test")
    _run("registry", "promote", "skips", "--version", "3", "--force", "--reason", "test")
    c.delete_model_version("skips", "2")
    _run("registry", "rollback", "skips")
    assert _model("skips").aliases["champion"] == 1


def test_interrupted_promotion_leaves_the_champion_and_says_so_in_the_history(tiny_recipe, monkeypatch):
    import mlflow

    path = tiny_recipe("interrupted")
    _run("run", str(path))
    _run("run", str(path), "--set", "stages.sft.args.learning_rate=0")
    real = mlflow.MlflowClient.set_registered_model_alias

    def killed(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("process killed between the history record and the alias move")
        return real(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", killed)
    runner.invoke(app, ["registry", "promote", "interrupted", "--version", "2", "--force", "--reason", "x"])
    assert _model("interrupted").aliases["champion"] == 1
    last = aliases.history(store.client(), "interrupted")[-1]
    assert (last["to"], last["state"]) == ("2", "interrupted")
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", real)
    _run("registry", "promote", "interrupted", "--version", "2", "--force", "--reason", "again")
    assert _model("interrupted").aliases["champion"] == 2
    assert aliases.champion_stack(store.client(), "interrupted") == ["1", "2"]  # the interrupted move never counted
    assert not any(m.name.endswith(".tuneloop-lock") for m in store.client().search_registered_models())


def test_promotion_lock_waits_for_its_holder_and_breaks_a_stale_one(tiny_recipe, monkeypatch):
    from tuneloop.errors import TuneloopError

    c = store.client()
    c.create_registered_model("locked")
    held = pytest.raises(TuneloopError, match="another promotion has held the lock")
    with aliases.locked(c, "locked"), held, aliases.locked(c, "locked", timeout_s=0.5):
        pytest.fail("a second holder got the lock while the first held it")
    monkeypatch.setattr(aliases, "STALE_S", 0)
    with aliases.locked(c, "locked"), aliases.locked(c, "locked", timeout_s=5):  # holder "died": broken
        holder = c.get_registered_model("locked.tuneloop-lock").tags["tuneloop.lock.holder"]
        assert f"pid {__import__('os').getpid()}" in holder
    assert not any(m.name.endswith(".tuneloop-lock") for m in c.search_registered_models())


def test_registry_uris_work_for_evaluation_and_as_a_base_model_with_lineage(tiny_recipe, tmp_path):
    _run("run", str(tiny_recipe("parent")))
    child = tiny_recipe("child", model="models:/parent@champion", lora=True, gate="max_drop: 100", merged=True)
    out = _run("run", str(child)).output
    assert "registered models:/child/1" in out
    tags = _version("child", "1").tags
    assert tags["tuneloop.parent"] == "parent/1" and tags["tuneloop.kind"] == "adapter"
    lineage = runner.invoke(app, ["registry", "lineage", "child@champion"], env={"COLUMNS": "200"}).output
    assert lineage.index("child/1") < lineage.index("trained from models:/parent/1") < lineage.index("base model")
    # the adapter names its base portably and is re-pointed at this machine's copy when materialized
    local = Path(_run("registry", "pull", "models:/child/1").output.strip().splitlines()[-1])
    record = json.loads((local / "tuneloop-model.json").read_text())
    assert record["adapter_base"] == "models:/parent/1"
    base_path = json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base_path).is_dir() and "parent" in base_path
    assert (local / "merged" / "model.safetensors").is_file()  # registry.merged: full weights beside the adapter
    result = _run("eval", "-m", "models:/parent@champion", "-m", "models:/child/1", "--suite", str(child))
    assert "parent@champion" in result.output and "child/1" in result.output


def test_registering_the_same_run_twice_returns_the_same_version(tiny_recipe, workspace):
    path = tiny_recipe("twice")
    _run("run", str(path))
    run_dir = next((workspace / "runs" / "twice").iterdir())
    out = _run("registry", "register", str(run_dir)).output
    assert "models:/twice/1 (already registered: same version)" in out
    assert len(store.client().search_model_versions("name='twice'")) == 1


def test_a_run_trained_with_tuneloop_train_is_registered_afterwards(tiny_recipe, workspace, tiny_model):
    path = tiny_recipe("later")
    _run("train", str(path))
    run_dir = next((workspace / "runs" / "later").iterdir())
    _run("eval", "--suite", str(path), "-m", str(tiny_model), "-m", str(run_dir), "--output", str(run_dir / "eval"))
    out = _run("registry", "register", str(run_dir)).output
    assert "registered models:/later/1" in out
    assert _version("later", "1").tags["tuneloop.gate"] == "passed"


def test_overwritten_artifacts_are_detected_when_materializing(tiny_recipe, workspace):
    _run("run", str(tiny_recipe("tampered")))
    weights = next((workspace / "mlartifacts").rglob("registered-model/model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = _run("registry", "pull", "tampered/1", code=1).output
    assert "weights changed after registration" in out


def test_unknown_names_and_aliases_say_what_exists(tiny_recipe):
    _run("run", str(tiny_recipe("known")))
    out = _run("registry", "show", "knwon", code=1).output
    assert "no registered model 'knwon' (did you mean known?)" in out
    out = _run("eval", "-m", "models:/known@production", "--suite", "eval/synopsis", code=1).output
    assert "known has no alias @production (aliases: @champion)" in out
    out = _run("registry", "show", "known/9", code=1).output
    assert "known has no version 9" in out


def test_list_and_show_print_versions_aliases_metrics_and_cost(tiny_recipe):
    path = tiny_recipe("shown")
    _run("run", str(path))
    _run("run", str(path), "--set", "stages.sft.args.learning_rate=0")
    wide = {"COLUMNS": "220"}
    listing = runner.invoke(app, ["registry", "list"], env=wide).output
    assert "shown" in listing and "sqlite:///" in listing
    show = runner.invoke(app, ["registry", "show", "shown"], env=wide).output
    assert "@champion" in show and "@challenger" in show and "ppl/perplexity" in show
    assert "USD" in show and "alias history" in show
    one = runner.invoke(app, ["registry", "show", "shown@champion"], env=wide).output
    assert "shown/1 @champion" in one and "passed" in one


def test_smoke_runs_register_under_a_name_of_their_own():
    out = _run("run", "recipes/quickstart.yaml", "--smoke").output
    assert "registered models:/quickstart-smoke/1" in out
    assert [m.name for m in store.client().search_registered_models()] == ["quickstart-smoke"]


@pytest.mark.parametrize("bad", ["models:/", "models:/a b/1", "models:/x@", "models:/x"])
def test_registry_reference_syntax_is_checked_by_validate(write, bad):
    path = write(
        "r.yaml",
        f"""
name: x
base_model: "{bad}"
data: {{source: debian-descriptions, task: synopsis}}
stages: [{{name: sft, method: sft}}]
""",
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "base_model:" in result.output and "write models:/" in result.output
