"""Tracking: what a run leaves in the real MLflow store (the workspace's SQLite file), failed and resumed runs,
W&B offline, and the store's first contact from several processes at once."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.tracking import evaluation_metrics, flatten, store
from tuneloop.tracking.wandb_sink import WandbRun

runner = CliRunner()


def _client():
    return store.client()


def _only_run(experiment: str):
    """The experiment's one top-level run (stages are child runs under it)."""
    c = _client()
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1, [r.info.run_id for r in top]
    return top[0]


def _run_dir(workspace: Path, recipe: str) -> Path:
    dirs = sorted((workspace / "runs" / recipe).iterdir())
    return dirs[-1]


def test_default_store_is_sqlite_in_the_workspace(workspace, monkeypatch):
    assert store.tracking_uri() == f"sqlite:///{workspace / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert store.tracking_uri() == "http://mlflow.example:5000"
    assert store.registry_uri() == "http://mlflow.example:5000"
    assert store.artifact_root() is None  # a server decides where artifacts go


def test_run_records_recipe_params_curves_datasets_results_environment_and_cost(tiny_recipe, workspace):
    path = tiny_recipe("tracked", registry=False, generation=True)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "tracked in MLflow: run" in result.output
    run = _only_run("tracked")
    c = _client()
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.sft.args.learning_rate"] == "0.001"
    assert run.data.params["evaluation.tasks.ppl.kind"] == "perplexity"
    losses = c.get_metric_history(run.info.run_id, "train/sft/loss")
    assert [m.step for m in losses] == [1, 2, 3]
    metrics = run.data.metrics
    assert metrics["eval/fine-tuned/ppl/perplexity_ci_low"] < metrics["eval/fine-tuned/ppl/perplexity"]
    assert metrics["eval/fine-tuned/ppl/perplexity"] < metrics["eval/fine-tuned/ppl/perplexity_ci_high"]
    assert "compare/fine-tuned-vs-base/ppl/perplexity/p_value" in metrics
    assert metrics["gate/passed"] == 1.0
    assert metrics["cost/total/money"] > 0 and metrics["cost/training/flops"] > 0
    assert metrics["stage/sft/steps"] == 3
    # datasets: digests are the fingerprints the run printed and stored
    run_dir = _run_dir(workspace, "tracked")
    stage = json.loads((run_dir / "stages/sft/stage.json").read_text())
    inputs = {i.dataset.digest: [t.value for t in i.tags] for i in run.inputs.dataset_inputs}
    assert inputs[stage["data_fingerprints"]["train"]] == ["sft/training"]
    assert ["sft/validation"] in inputs.values()
    results = json.loads((run_dir / "eval/results.json").read_text())
    test_fp = results["models"][-1]["tasks"]["synopsis"]["data"]["fingerprint"]
    assert inputs[test_fp][0] == "evaluation/synopsis"
    tags = run.data.tags
    assert tags["tuneloop.package.trl"] == "1.16.0"
    assert int(tags["tuneloop.hardware.cpu_cores"]) >= 1
    assert "tuneloop.package.commit" in tags  # tuneloop's own checkout
    assert tags["tuneloop.recipe_sha256"] and tags["tuneloop.gate"] == "passed"
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "eval", "environment", "stages", "summary.json"} <= artifacts
    evals = {a.path for a in c.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/results.json", "eval/report.html"} <= evals
    requirements = c.download_artifacts(run.info.run_id, "environment/requirements.txt", str(run_dir / "dl"))
    assert "mlflow==" in Path(requirements).read_text()
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    (child,) = [r for r in c.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert child.data.tags["mlflow.parentRunId"] == run.info.run_id and child.data.tags["tuneloop.stage"] == "sft"
    assert child.data.params["method"] == "sft" and child.data.params["args.learning_rate"] == "0.001"
    assert child.data.metrics["steps"] == 3 and child.info.status == "FINISHED"
    assert json.loads((run_dir / "tracking.json").read_text())["stage_runs"] == {"sft": child.info.run_id}


def test_recipe_in_a_git_checkout_records_commit_and_dirty_flag(tiny_recipe, tmp_path):
    path = tiny_recipe("gitted", registry=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", path.name], check=True)
    subprocess.run([*git, "commit", "-qm", "recipe"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path.write_text(path.read_text() + "\n# edited\n")
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    tags = _only_run("gitted").data.tags
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["tuneloop.code.dirty"] == "true"


def test_crashed_run_is_failed_with_its_error_and_registers_nothing(tiny_recipe):
    path = tiny_recipe("crashing")
    path.write_text(path.read_text().replace("max_length: 512", "max_length: 8"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1
    run = _only_run("crashing")
    assert run.info.status == "FAILED"
    assert "no training rows left after truncation" in run.data.tags["tuneloop.error"]
    c = _client()
    assert {a.path for a in c.list_artifacts(run.info.run_id)} >= {"error.txt"}
    assert c.search_registered_models() == []


def test_resume_after_a_crash_in_registration_reopens_the_run_and_registers_once(tiny_recipe, workspace, monkeypatch):
    from tuneloop.registry import register

    path = tiny_recipe("resumed")
    real = register.register_run

    def boom(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(register, "register_run", boom)
    first = runner.invoke(app, ["run", str(path)])
    assert first.exit_code != 0
    crashed = _only_run("resumed")
    assert crashed.info.status == "FAILED"
    monkeypatch.setattr(register, "register_run", real)
    second = runner.invoke(app, ["run", str(path), "--resume"])
    assert second.exit_code == 0, second.output
    assert "already finished" in second.output  # stage and evaluation are not redone
    run = _only_run("resumed")  # the same MLflow run, reopened
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    versions = _client().search_model_versions("name='resumed'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert "registered models:/resumed/1" in second.output


def test_wandb_offline_run_holds_every_metric_when_tuneloop_run_returns_even_under_load(
    tiny_recipe, workspace, monkeypatch, tmp_path
):
    """W&B's service keeps the .wandb file's last 32 KiB block in memory until it closes the run's stream, which
    `run.finish()` only asks for: on a busy machine the file held just its 7-byte header when `tuneloop run` had
    returned. Two busy processes from the moment the run finishes make that likely (4 runs in 10 of a bare script
    found the header alone); the file as it is when finishing returns is read back with W&B's own reader
    (`wandb leet inspect --json`) and must hold every metric MLflow got."""
    path = tiny_recipe("wb", registry=False, tail="tracking: {wandb: {project: tuneloop-tests}}\n")
    busy: list[subprocess.Popen] = []
    finish = WandbRun.finish
    at_return = tmp_path / "at-return.wandb"

    def finish_under_load(self: WandbRun, *args: Any) -> None:
        busy.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2))
        finish(self, *args)
        shutil.copyfile(next(self.dir.glob("run-*.wandb")), at_return)  # the file the moment finishing returns

    monkeypatch.setattr(WandbRun, "finish", finish_under_load)
    try:
        result = runner.invoke(app, ["run", str(path)])
        record = json.loads((_run_dir(workspace, "wb") / "tracking.json").read_text())
        offline = Path(record["wandb"]["dir"])
        assert result.exit_code == 0, result.output
        read = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(at_return)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert "wandb sync" in result.output
    assert record["wandb"]["mode"] == "offline" and offline.name.startswith("offline-run-")
    records = [json.loads(line) for line in read.stdout.splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    summary: dict = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]
    c = _client()
    run = _only_run("wb")
    assert {"train/sft/loss", "eval/fine-tuned/ppl/perplexity", "cost/total/money"} <= set(run.data.metrics)
    for key, value in run.data.metrics.items():  # everything MLflow got, W&B has too
        if key.startswith("train/"):
            stage = key.split("/")[1]
            points = {(m.step, m.value) for m in c.get_metric_history(run.info.run_id, key)}
            logged = {(h[f"train/{stage}/step"], h[key]) for h in history if key in h}
            assert points == logged, key
        else:
            assert summary.get(key) == value, (key, summary.get(key), value)


def test_wandb_online_without_a_key_is_refused_before_training(tiny_recipe, workspace):
    path = tiny_recipe("wbon", registry=False, tail="tracking: {wandb: {mode: online}}\n")
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 1
    assert "no W&B API key is configured" in result.output
    assert not (workspace / "runs" / "wbon").exists()


def test_tracking_off_and_registry_is_a_recipe_error(write, tiny_model):
    path = write(
        "r.yaml",
        f"""
name: x
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis}}
stages: [{{name: sft, method: sft}}]
tracking: {{mlflow: false}}
registry: {{name: x}}
""",
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "`registry` needs MLflow tracking" in result.output


def test_eval_is_tracked_as_its_own_run(tiny_recipe, tiny_model):
    path = tiny_recipe("evaltracked", registry=False)
    result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(path)])
    assert result.exit_code == 0, result.output
    run = _only_run("evaltracked")
    assert run.data.tags["tuneloop.kind"] == "eval"
    assert run.data.metrics[f"eval/{Path(tiny_model).name}/ppl/perplexity"] > 1


def test_first_contact_from_four_processes_at_once_creates_the_store_once(tmp_path):
    """Once with no template in the cache (MLflow migrates a new store, which becomes the template), once with it
    (the new store is a copy): four processes at once find or create one store and one experiment both times."""
    code = (
        "import sys; from tuneloop.tracking import store; c = store.client(); print(store.experiment_id(c, 'shared'))"
    )
    cache = tmp_path / "cache"
    for home in ("fresh", "seeded"):
        env = {**__import__("os").environ, "TUNELOOP_HOME": str(tmp_path / home), "TUNELOOP_CACHE": str(cache)}
        env.pop("MLFLOW_TRACKING_URI", None)
        procs = [
            subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1].decode()[-500:] for o in outs]
        assert len({o[0].strip() for o in outs}) == 1  # one experiment, found or created by all four
        assert len(list((cache / "mlflow").glob("empty-store-*.db"))) == 1  # kept from the first store, once
        c = sqlite3.connect(tmp_path / home / "mlflow.db")
        (default,) = c.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
        assert c.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 2  # Default and 'shared', no leftovers
        c.close()
        # MLflow's own migrations put the Default experiment's artifacts under the current directory; a copy of the
        # template puts them next to its store, as tuneloop's named experiments are
        assert (default == (tmp_path / home / "mlartifacts" / "0").as_uri()) == (home == "seeded"), default


def test_flatten_names_stages_and_tasks_by_name():
    flat = flatten({"stages": [{"name": "sft", "args": {"lr": 1}}], "gate": [{"metric": "m"}], "tags": ["a", "b"]})
    assert flat == {"stages.sft.args.lr": 1, "gate.0.metric": "m", "tags": '["a", "b"]'}


def test_evaluation_metrics_leave_out_undefined_intervals():
    results = {
        "models": [{"label": "fine-tuned", "tasks": {"t": {"metrics": {"bleu": {"value": 3.0, "ci": [None, None]}}}}}],
        "comparisons": [],
        "gate": {"passed": False, "rules": []},
    }
    got = evaluation_metrics(results)
    assert got["eval/fine-tuned/t/bleu"] == 3.0 and got["gate/passed"] == 0.0
    assert got["eval/fine-tuned/t/bleu_ci_low"] is None  # RunTracker.log_metrics drops it
