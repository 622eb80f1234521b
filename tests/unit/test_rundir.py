"""A run directory's layout and its typed summaries (tuneloop.rundir), without training anything."""

from __future__ import annotations

import json

import pytest

from tuneloop.rundir import RunDir, RunSummary, StageSummary


def _stage(name: str = "sft", **extra) -> StageSummary:
    return StageSummary(stage=name, method="sft", model_dir=f"/runs/x/stages/{name}/model", steps=3, **extra)


def test_summaries_round_trip_and_keep_what_this_version_does_not_know(workspace):
    run = RunDir.new("recipe", smoke=False)
    run.path.mkdir(parents=True)
    written = RunSummary(recipe="recipe", model_dir="/m", stages=[_stage()], finished=False)
    run.write_summary(written)
    on_disk = json.loads(run.summary_file.read_text())
    assert on_disk["stages"][0]["steps"] == 3
    assert "pairwise_accuracy" not in on_disk["stages"][0]  # a method's figures only where that method ran
    on_disk["written_by_a_newer_version"] = {"kept": True}
    run.summary_file.write_text(json.dumps(on_disk))
    assert not run.finished and RunDir.latest_unfinished("recipe", smoke=False) == run
    run.mark_finished()
    again = json.loads(run.summary_file.read_text())
    assert again["finished"] is True and again["written_by_a_newer_version"] == {"kept": True}
    assert run.finished and RunDir.latest_unfinished("recipe", smoke=False) is None


def test_a_summary_from_before_the_finished_key_counts_as_finished(workspace):
    run = RunDir.new("old", smoke=False)
    run.path.mkdir(parents=True)
    run.summary_file.write_text(json.dumps({"recipe": "old", "model_dir": "/m", "stages": []}))
    assert run.finished
    run.summary_file.write_text("{ half written")
    assert not run.finished  # unreadable: resumable, never mistaken for done


def test_a_renamed_field_fails_instead_of_reading_none():
    stage = _stage()
    with pytest.raises(AttributeError):
        _ = stage.loss_final  # type: ignore[attr-defined]  # the field is loss_last
    assert stage.loss_last is None


def test_new_run_names_are_unique_and_smoke_runs_are_kept_apart(workspace):
    first = RunDir.new("r", smoke=True)
    first.path.mkdir(parents=True)
    second = RunDir.new("r", smoke=True)  # the same second: a numbered sibling
    second.path.mkdir(parents=True)
    assert second.name == f"{first.name}-2" and "-smoke" in second.name
    real = RunDir.new("r", smoke=False)
    real.path.mkdir(parents=True)
    assert set(RunDir.of_recipe("r", smoke=True)) == {first, second}
    assert RunDir.of_recipe("r", smoke=False) == [real]
    assert RunDir.latest_unfinished("r", smoke=True) == second  # newest first; none has a summary yet


def test_stage_files_and_holding(workspace, tmp_path):
    run = RunDir(tmp_path / "run")
    assert RunDir.holding(run.path) is None and run.summary() is None and run.results() is None
    written = run.write_stage(_stage("dpo", reference_model="start model, frozen copy"))
    assert written == run.path / "stages" / "dpo" / "stage.json"
    assert run.stage_summary("dpo").reference_model == "start model, frozen copy"
    assert run.stage_summary("sft") is None
    run.write_summary(RunSummary(recipe="r", model_dir="/m", stages=[run.stage_summary("dpo")]))
    assert RunDir.holding(run.path) == run and run.summary().stage("dpo").steps == 3
