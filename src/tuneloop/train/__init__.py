"""Training: one module per method, each a thin adapter over one TRL trainer; this runs a recipe's stages.

The same code runs in one process (`tuneloop train`) and under `accelerate launch -m tuneloop.train` or
`torchrun -m tuneloop.train`, where every rank executes it and the trainers synchronise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import trainer_fields
from tuneloop.config.loader import resolved_dict, resolved_yaml
from tuneloop.config.schema import ModelRef, Recipe, Stage
from tuneloop.cost import account, recipe_price, total
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import merge_adapter, provenance, quiet_libraries, resolve, tiny_copy
from tuneloop.rundir import RunDir, RunSummary, StageSummary
from tuneloop.tracking import RunTracker, cost_metrics, flatten, log_environment, stage_metrics
from tuneloop.train import launch, runs
from tuneloop.train.launch import Request

if TYPE_CHECKING:  # stage.py imports transformers; it is imported when the first stage runs
    from tuneloop.train.stage import StageContext


def _method(name: str) -> Callable[..., StageSummary]:
    """The method module's `train`, imported when a stage runs (each pulls in its TRL trainer)."""

    def run(stage: Stage, ctx) -> StageSummary:
        import importlib

        return importlib.import_module(f"tuneloop.train.{name}").train(stage, ctx)

    return run


# one module per method in trainer_fields.CONFIG_CLASSES (the methods a recipe may name)
METHODS: dict[str, Callable[..., StageSummary]] = {name: _method(name) for name in trainer_fields.methods()}


@dataclass
class Trained:
    """What `train_recipe` produced: the run directory and its summary (written on the main process, returned on
    every rank). Evaluation, registration and promotion follow in tuneloop.pipeline."""

    run_dir: RunDir
    summary: RunSummary

    @property
    def stages(self) -> list[StageSummary]:
        return self.summary.stages

    @property
    def model_dir(self) -> Path:
        return Path(self.summary.model_dir)


def _init_distributed(request: Request):
    """Join the launcher's process group (or none) and check that every process the launcher started is in it.

    Without a GPU, ask accelerate for CPU state explicitly: otherwise `accelerate launch --multi_gpu` on CPU leaves
    each rank training alone (DESIGN.md, Facts). DeepSpeed's ops are compiled on first use; they are cached inside
    the virtual environment, so one `make install` pays for them once, not every fresh home directory. Naming
    DeepSpeed's CPU accelerator when there is no GPU says what its autodetection would pick, without its warning
    on every run."""
    import os
    import sys

    import torch
    from accelerate import PartialState

    if sys.prefix != sys.base_prefix:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    state = PartialState(cpu=not torch.cuda.is_available())
    launch.check_world(request, state.num_processes)
    return state


def preflight(recipe: Recipe, smoke: bool) -> Request:
    """Refuse, before anything is loaded, what this machine or this launch cannot run as asked; returns the
    launcher's request, which training checks against what runs (tuneloop.train.launch)."""
    import torch

    request = launch.requested()
    launch.pin_deepspeed_config()
    launch.refuse_impossible(request, torch.cuda.is_available())
    if smoke or torch.cuda.is_available():
        return request
    for stage in recipe.stages:
        if stage.args.get("use_vllm"):
            raise TuneloopError(
                f"stages.{stage.name}.args.use_vllm: generating with vLLM inside training needs a CUDA GPU; on this "
                "machine drop `use_vllm` (transformers generates instead), or check the path with --smoke"
            )
    return request


def train_recipe(
    recipe: Recipe,
    recipe_path: Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    run_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    tracker: RunTracker | None = None,
    finished: bool = True,
    from_stage: str | None = None,
    callbacks: Callable[[Stage], list[Any]] | None = None,
) -> Trained:
    """Run every stage of `recipe` in order; each stage starts from the model the previous one produced.

    Refuse what cannot run here → join the launcher's processes → open the run directory (new, or the one to
    resume) → start tracking → resolve the base model → train, reuse or skip each stage → write summary.json.

    `tracker` (main process only) begins as soon as the run directory is known and receives the recipe,
    parameters, environment, datasets, curves and per-stage figures. `finished=False` leaves the run open for
    `--resume` after training (the pipeline's evaluation and registration follow and close it). `from_stage`
    starts a new run at that stage, reusing the outputs of the stages before it from the newest run that finished
    them with the same settings (`tuneloop run --from STAGE`). `callbacks(stage)` adds TrainerCallbacks to a
    stage (a sweep's intermediate evaluations and budget guard)."""
    request = preflight(recipe, smoke)
    reused = _reusable(recipe, from_stage, smoke, say)
    price = recipe_price(recipe.cost, recipe_path.parent)  # a bad device or price table fails before training
    quiet_libraries()
    state = _init_distributed(request)
    started = time.perf_counter()
    main = state.is_main_process
    run = _open_run_dir(recipe, run_dir, resume, smoke, state, say)
    tracker = tracker if tracker is not None and main else RunTracker.disabled()
    if main:
        begin_tracking(tracker, recipe, recipe_path, run.path, smoke)
    log = say if main and say else (lambda _m: None)
    with state.main_process_first():
        source = resolve(recipe.base_model, recipe_path.parent, log=log)
        base = provenance(recipe.base_model, source) if main else {}
        if smoke:
            source = tiny_copy(source, recipe.base_model, run.smoke_base, recipe.seed)
            base["smoke_copy"] = source
    steps = _Stages(recipe, recipe_path.parent, run, smoke, resume, state, tracker, say, callbacks, price)
    stages = steps.train_all(source, reused)
    summary = RunSummary(
        recipe=recipe.name,
        recipe_path=str(recipe_path.resolve()),
        smoke=smoke,
        wall_s=time.perf_counter() - started,
        model_dir=stages[-1].model_dir,
        base_model=base,
        stages=stages,
        cost={"training": total([s.cost for s in stages])},
        finished=finished,
    )
    if main:
        run.write_summary(summary)
        tracker.log_metrics(cost_metrics(summary.cost))
    state.wait_for_everyone()
    return Trained(run, summary)


def _reusable(
    recipe: Recipe, from_stage: str | None, smoke: bool, say: Callable[[str], None] | None
) -> dict[str, StageSummary]:
    """`--from STAGE`: the summaries of the stages before it, from the newest run that finished them alike."""
    if not from_stage:
        return {}
    reused_run, reused = runs.reusable_stages(recipe, from_stage, smoke)
    if say:
        say(f"--from {from_stage}: reusing {', '.join(reused)} from {reused_run.path}")
    return reused


def _open_run_dir(
    recipe: Recipe, run_dir: Path | None, resume: bool, smoke: bool, state: Any, say: Callable[[str], None] | None
) -> RunDir:
    """The run directory every rank writes into: the one given, the newest unfinished one (`--resume`), or a new
    one; rank 0 chooses and the others take its choice. It records the recipe as it runs (keeping the one a
    resumed run started with, when they differ)."""
    from accelerate.utils import broadcast_object_list

    main = state.is_main_process
    run = RunDir(run_dir) if run_dir is not None else None
    if run is None:
        found = RunDir.latest_unfinished(recipe.name, smoke) if resume else None
        run = found or RunDir.new(recipe.name, smoke)
        if resume and found is None and main and say:
            say(f"--resume: no unfinished run of {recipe.name}; starting a new one")
    if state.num_processes > 1:
        run = RunDir(Path(broadcast_object_list([str(run.path)])[0]))
    if main:
        run.path.mkdir(parents=True, exist_ok=True)
        text = resolved_yaml(recipe)
        if run.recipe_file.exists() and run.recipe_file.read_text() != text:
            run.recipe_file.replace(run.previous_recipe_file)
            if say:
                say(
                    f"[yellow]warning:[/] the recipe differs from the one {run.name} started with; "
                    f"resuming with the new one (the old one is kept as {run.previous_recipe_file.name})"
                )
        run.recipe_file.write_text(text)
    return run


@dataclass
class _Stages:
    """The stage loop of one run: what each stage starts from, and whether it trains, is reused or is skipped."""

    recipe: Recipe
    recipe_dir: Path
    run: RunDir
    smoke: bool
    resume: bool
    state: Any  # accelerate's PartialState
    tracker: Any
    say: Callable[[str], None] | None
    callbacks: Callable[[Stage], list[Any]] | None
    price: Any

    def train_all(self, base_source: str, reused: dict[str, StageSummary]) -> list[StageSummary]:
        from tuneloop.train.stage import StageContext

        done: list[StageSummary] = []
        source = base_source
        for i, stage in enumerate(self.recipe.stages):
            source, name = self.start_of(stage, i, base_source, source, done)
            ctx = StageContext(
                self.recipe,
                self.recipe_dir,
                self.run.path,
                source,
                self.smoke,
                self.resume,
                self.state.is_main_process,
                tracker=self.tracker,
                model_name=name,
                callbacks=self.callbacks,
            )
            summary = self.one(stage, i, ctx, reused.get(stage.name))
            done.append(summary)
            source = summary.model_dir
            if stage.peft and i + 1 < len(self.recipe.stages):
                source = _merged(Path(summary.model_dir), ctx.stage_dir(stage) / "merged", self.state)
        return done

    def start_of(
        self, stage: Stage, i: int, base_source: str, previous: str, done: list[StageSummary]
    ) -> tuple[str, str]:
        """Where a stage starts: `base: previous` (default after the first stage), `base_model`, or a model of its
        own (a smoke run swaps that for a tiny random copy too). Returns (source, name for messages)."""
        base = stage.base or ("base_model" if i == 0 else "previous")
        if base == "previous":
            return previous, f"stage {done[-1].stage}" if done else "previous"
        if base == "base_model":
            return base_source, self.recipe.base_model.name
        ref = ModelRef(name=base)
        log = self.say if self.state.is_main_process and self.say else (lambda _m: None)
        with self.state.main_process_first():
            source = resolve(ref, self.recipe_dir, log=log)
            if self.smoke:
                source = tiny_copy(source, ref, self.run.path / f"smoke-{stage.name}", 0)
        return source, base

    def one(self, stage: Stage, i: int, ctx: StageContext, reused: StageSummary | None) -> StageSummary:
        """Reuse (`--from`), skip (finished before `--resume`) or train one stage, and record it."""
        main = self.state.is_main_process
        finished_before = self.run.stage_summary(stage.name)
        if reused is not None and finished_before is None:
            summary = reused.model_copy(update={"reused_from": str(Path(reused.model_dir).parent)})
            ctx.say(f"stage {stage.name}: reusing {summary.model_dir}")
        elif self.resume and finished_before is not None:
            summary = finished_before
            ctx.say(f"stage {stage.name} already finished in {self.run.path}; skipping")
        else:
            ctx.say(f"[bold]stage {i + 1}/{len(self.recipe.stages)}: {stage.name}[/] ({stage.method})")
            stage_started = time.perf_counter()
            summary = METHODS[stage.method](stage, ctx)
            summary.wall_s = time.perf_counter() - stage_started
            summary.cost = account(
                self.price,
                summary.wall_s,
                summary.world_size,
                summary.train_tokens,
                (summary.parameters or {}).get("total"),
                "training",
                busy_s=summary.train_runtime_s,
            )
        if main:
            if summary is not finished_before:
                self.run.write_stage(summary)
            self.tracker.log_metrics(stage_metrics(summary))
            self.tracker.log_artifact(self.run.stage_file(stage.name), f"stages/{stage.name}")
            self.tracker.stage_run(self.run.path, stage, summary)
        return summary


def begin_tracking(tracker: RunTracker, recipe: Recipe, recipe_path: Path, run_dir: Path, smoke: bool) -> None:
    """The run's MLflow/W&B record (new, or reopened from `tracking.json`): resolved recipe as params and
    artifact, code, packages, hardware. Also what `tuneloop registry register RUN_DIR` opens the run with."""
    if not (tracker.enabled or tracker.settings.wandb is not None):
        return
    data = resolved_dict(recipe)
    tags = {
        "tuneloop.recipe": recipe.name,
        "tuneloop.recipe_path": str(recipe_path.resolve()),
        "tuneloop.recipe_sha256": recipe_sha256(recipe),
        "tuneloop.smoke": str(smoke).lower(),
        "tuneloop.base_model": recipe.base_model.name,
    }
    if recipe.description:
        tags["mlflow.note.content"] = recipe.description
    tracker.begin(run_dir, f"{recipe.name}/{run_dir.name}", tags, data)
    tracker.log_params(flatten(data))
    tracker.log_artifact(RunDir(run_dir).recipe_file)
    log_environment(tracker, recipe_path.parent)


def recipe_sha256(recipe: Recipe) -> str:
    """Hash of the recipe as it ran (defaults merged, overrides applied): equal hashes, equal recipes."""
    import hashlib

    return hashlib.sha256(resolved_yaml(recipe).encode()).hexdigest()


def _merged(adapter_dir: Path, out: Path, state) -> str:
    """Fold a LoRA adapter into its base so the next stage trains a plain model."""
    if state.is_main_process:
        merge_adapter(adapter_dir, out)
    state.wait_for_everyone()
    return str(out)
