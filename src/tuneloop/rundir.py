"""A run directory: its layout and file names, and the typed summaries it holds.

<workspace>/runs/<recipe name>/<YYYYmmdd-HHMMSS>[-smoke][-N]/
    recipe.yaml            the recipe as it ran (defaults merged, overrides applied)
    recipe.previous.yaml   the recipe it started with, when `--resume` went on with a changed one
    stages/<stage>/        TRL output_dir: checkpoint-N/, model/ (final weights or adapter), stage.json
    smoke-base/            the tiny random copy of the base model a `--smoke` run trains
    summary.json           written when training ends; `finished: false` while evaluation/registration follow
    tracking.json          the MLflow run id (and W&B run) this directory is recorded as
    eval/                  results.json, per-example files, report.md, report.html

Training writes it, and evaluation, registration, sweeps, loops and model references read it: every one of them
goes through `RunDir`, and reads `StageSummary`/`RunSummary` attributes rather than dict keys, so a renamed field
fails (AttributeError, and in a type checker) instead of reading None.
It sits on the floor of the layers (it imports only the workspace) because model references, below training,
resolve a run directory to its model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneloop import workspace

SUMMARY = "summary.json"
STAGE = "stage.json"
RESULTS = "results.json"
RECIPE = "recipe.yaml"
TRACKING = "tracking.json"


class _Record(BaseModel):
    # Files written by older (or newer) versions keep keys this version does not know: they are read and written
    # back unchanged.
    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        """As JSON: the fields that were given (a reward model's stage has `pairwise_accuracy`, others do not)."""
        return self.model_dump(mode="json", exclude_unset=True)


class StageSummary(_Record):
    """What one training stage did (stages/<stage>/stage.json), as `tuneloop run` prints it and MLflow records it."""

    stage: str
    method: str
    model_dir: str
    steps: int = 0
    resumed_from: str | None = None
    reused_from: str | None = None  # `--from STAGE`: the stage directory of the run it was taken from
    loss_first: float | None = None
    loss_last: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    train_tokens: int = 0
    train_runtime_s: float = 0.0
    tokens_per_s: float | None = None
    tokens_per_s_after_first_step: float | None = None
    wall_s: float | None = None
    world_size: int = 1
    distributed: dict[str, Any] | None = None  # tuneloop.train.launch.running(): engine, ZeRO stage, offload, ...
    model_memory_bytes: int | None = None
    rank_weight_checksums: list[str | None] = []
    ranks_in_sync: bool | None = None
    notes: list[str] = []
    cost: dict[str, Any] | None = None  # tuneloop.cost.account()
    parameters: dict[str, int] | None = None  # {"total", "trainable"}
    data_fingerprints: dict[str, Any] | None = None
    data_prepare: dict[str, Any] | None = None
    # method figures
    pairwise_accuracy: dict[str, Any] | None = None  # reward models: held-out pairs ranked right, with its CI
    reference_model: str | None = None  # DPO/KTO/ORPO: what the frozen reference is
    rewards: list[dict[str, Any]] | None = None  # GRPO/RLOO: each reward and its weight
    zero_std_share_mean: float | None = None  # GRPO/RLOO: share of groups whose rewards all tied
    zero_std_share_last: float | None = None
    distillation: dict[str, Any] | None = None


class RunSummary(_Record):
    """The run as training left it (summary.json); evaluation adds its cost, registration marks it finished."""

    recipe: str
    model_dir: str
    stages: list[StageSummary] = []
    recipe_path: str | None = None
    smoke: bool = False
    wall_s: float = 0.0
    base_model: dict[str, Any] = {}  # tuneloop.models.loading.provenance() of what the first stage started from
    cost: dict[str, Any] = {}  # {"training", "evaluation", "total"}: see tuneloop.cost
    finished: bool = True  # summaries of older runs carry no `finished` key: they finished

    def stage(self, name: str) -> StageSummary:
        return next(s for s in self.stages if s.stage == name)


@dataclass(frozen=True)
class RunDir:
    """One run's directory. Creating the object touches nothing on disk."""

    path: Path

    @classmethod
    def new(cls, recipe_name: str, smoke: bool) -> RunDir:
        """A fresh, unused directory name under the workspace's runs/ (not created yet)."""
        stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if smoke else "")
        base = workspace.runs_dir() / recipe_name
        run, n = base / stamp, 1
        while run.exists():
            n += 1
            run = base / f"{stamp}-{n}"
        return cls(run)

    @classmethod
    def of_recipe(cls, recipe_name: str, smoke: bool) -> list[RunDir]:
        """This recipe's runs of that kind (smoke or not), newest first."""
        base = workspace.runs_dir() / recipe_name
        if not base.is_dir():
            return []
        found = (d for d in base.iterdir() if d.is_dir() and ("-smoke" in d.name) == smoke)
        return [cls(d) for d in sorted(found, reverse=True)]

    @classmethod
    def latest_unfinished(cls, recipe_name: str, smoke: bool) -> RunDir | None:
        """The newest run of this recipe that did not finish (crashed, killed or pre-empted)."""
        return next((run for run in cls.of_recipe(recipe_name, smoke) if not run.finished), None)

    @classmethod
    def holding(cls, path: Path) -> RunDir | None:
        """`path` as a run directory, when it is one whose training finished (it has a summary.json)."""
        run = cls(path)
        return run if path.is_dir() and run.summary_file.is_file() else None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def previous_recipe_file(self) -> Path:
        return self.path / "recipe.previous.yaml"

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def tracking_file(self) -> Path:
        return self.path / TRACKING

    @property
    def smoke_base(self) -> Path:
        return self.path / "smoke-base"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def results_file(self) -> Path:
        return self.eval_dir / RESULTS

    def stage_dir(self, stage: str) -> Path:
        return self.path / "stages" / stage

    def stage_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / STAGE

    def summary(self) -> RunSummary | None:
        """summary.json, or None while training has not finished."""
        return RunSummary.model_validate_json(self.summary_file.read_text()) if self.summary_file.is_file() else None

    def write_summary(self, summary: RunSummary) -> None:
        write_json(self.summary_file, summary.dump())

    def stage_summary(self, stage: str) -> StageSummary | None:
        """stages/<stage>/stage.json, or None while that stage has not finished."""
        path = self.stage_file(stage)
        return StageSummary.model_validate_json(path.read_text()) if path.is_file() else None

    def write_stage(self, summary: StageSummary) -> Path:
        path = self.stage_file(summary.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, summary.dump())
        return path

    def results(self) -> dict[str, Any] | None:
        """The evaluation's results.json (its schema belongs to tuneloop.eval), or None without one."""
        return json.loads(self.results_file.read_text()) if self.results_file.is_file() else None

    @property
    def finished(self) -> bool:
        """Training, evaluation and registration all done; a summary.json that cannot be read is not finished."""
        try:
            summary = self.summary()
        except ValueError:
            return False
        return summary is not None and summary.finished

    def mark_finished(self) -> None:
        summary = self.summary()
        assert summary is not None, f"{self.path}: no summary.json to mark finished"
        summary.finished = True
        self.write_summary(summary)


def last_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a half-written one is skipped."""
    if not stage_dir.is_dir():
        return None
    done = [d for d in stage_dir.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(done, key=lambda d: int(d.name.split("-")[-1]), default=None)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves a half-written file that looks finished."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
