"""`tuneloop sweep` end to end on the tiny model: real trials (training, evaluation, intermediate scores), the study
in the workspace's SQLite, trials as child runs of the sweep's MLflow run, `status`, `best --register` (lineage
names the sweep) and `report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

pytestmark = pytest.mark.slow

RECIPE = """
# tuneloop sweep tiny.yaml --set sweep.budget.trials=2
name: tiny
base_model: {model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16, eval_split: null}}
stages:
  - name: sft
    method: sft
    args: {{learning_rate: 1.0e-3, max_steps: 4, per_device_train_batch_size: 2, max_length: 256, logging_steps: 1,
           save_strategy: "no"}}
evaluation:
  tasks:
    - {{name: synopsis, split: test, max_rows: 4, metrics: [rougeL], generation: {{max_new_tokens: 8}}}}
  baseline: base
  gate: [{{metric: rougeL, max_drop: 100}}]
registry: {{name: tiny}}
sweep:
  space:
    stages.sft.args.learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}}
    stages.sft.args.per_device_train_batch_size: {{categorical: [1, 2]}}
  objectives: [{{metric: synopsis/rougeL}}, {{cost: money}}]
  budget: {{trials: 3, money: 1.0}}
  pruning: {{every_steps: 2, rows: 2}}
"""


def test_sweep_runs_trials_reports_and_registers_the_best(write, tiny_model, workspace):
    path = write("tiny.yaml", RECIPE.format(model=tiny_model))
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 0, result.output
    assert "trial 0" in result.output and "Pareto front" in result.output and "report:" in result.output

    status = runner.invoke(app, ["sweep", "status", "tiny", "--json"])
    assert status.exit_code == 0, status.output
    trials = json.loads(status.output)["trials"]
    started = [t for t in trials if t["outcome"] != "not started"]
    assert len(started) == 3
    for t in started:
        assert t["cost"]["money"] > 0 and t["progress"], t  # priced, and reported scores at steps 2 and 4
        assert [p[0] for p in t["progress"]][:1] == [2]
    done = [t for t in started if t["outcome"] == "complete"]
    assert done and all("synopsis/rougeL" in t["values"] for t in done)

    from tuneloop.tracking import store

    client = store.client()
    sweep_runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`tuneloop.kind` = 'sweep'"
    )
    assert len(sweep_runs) == 1 and sweep_runs[0].info.status == "FINISHED"
    children = client.search_runs(
        [sweep_runs[0].info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_runs[0].info.run_id}'"
    )
    assert len([c for c in children if c.data.tags.get("tuneloop.kind") == "run"]) == 3

    best = runner.invoke(app, ["sweep", "best", "tiny", "--register"])
    assert best.exit_code == 0, best.output
    assert "registered models:/tiny/1" in best.output
    version = client.get_model_version("tiny", "1")
    assert version.tags["tuneloop.sweep"] == "tiny"
    assert version.tags["tuneloop.sweep_trial"] in {str(t["number"]) for t in done}
    assert "challenger" in client.get_registered_model("tiny").aliases
    # the version keeps the recipe's gate (for `registry promote`) with the trial's values; the trial's own recipe
    # (no registry, baseline or gate) stays beside it
    chosen = next(t for t in done if str(t["number"]) == version.tags["tuneloop.sweep_trial"])
    recorded = (Path(chosen["run_dir"]) / "recipe.yaml").read_text()
    assert "max_drop: 100" in recorded and "registry:" in recorded
    assert "registry:" not in (Path(chosen["run_dir"]) / "recipe.trial.yaml").read_text()

    report = runner.invoke(app, ["sweep", "report", "tiny"])
    assert report.exit_code == 0, report.output
    folder = workspace / "sweeps" / "tiny" / "report"
    assert (folder / "report.html").is_file() and (folder / "pareto.png").is_file()

    again = runner.invoke(app, ["sweep", str(path)])  # resumed: the trial budget is already spent, nothing reruns
    assert again.exit_code == 0, again.output
    words = " ".join(again.output.split())
    assert "resuming sweep tiny: 3 trial(s) ran already" in words
    assert "the trial budget (3) is used" in words


def test_sweep_status_of_an_unknown_sweep_lists_the_known_ones():
    result = CliRunner().invoke(app, ["sweep", "status", "nope"])
    assert result.exit_code == 2 and "no sweep named 'nope'" in result.output
