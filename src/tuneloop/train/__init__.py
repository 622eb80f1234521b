"""Training: one module per method, each a thin adapter over one TRL trainer; this runs a recipe's stages.

The same code runs in one process (`tuneloop train`) and under `accelerate launch -m tuneloop.train` or
`torchrun -m tuneloop.train`, where every rank executes it and the trainers synchronise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import trainer_fields
from tuneloop.config.loader import resolved_yaml
from tuneloop.config.schema import Recipe, Stage
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import quiet_libraries
from tuneloop.train import launch, runs
from tuneloop.train.launch import Request

if TYPE_CHECKING:
    from tuneloop.tracking import RunTracker


def _method(name: str) -> Callable[..., dict[str, Any]]:
    """The method module's `train`, imported when a stage runs (each pulls in its TRL trainer)."""

    def run(stage: Stage, ctx) -> dict[str, Any]:
        import importlib

        return importlib.import_module(f"tuneloop.train.{name}").train(stage, ctx)

    return run


# one module per method in trainer_fields.CONFIG_CLASSES (the methods a recipe may name)
METHODS: dict[str, Callable[..., dict[str, Any]]] = {name: _method(name) for name in trainer_fields.methods()}


@dataclass
class RunResult:
    run_dir: Path
    stages: list[dict[str, Any]]
    model_dir: Path
    wall_s: float
    evaluation: dict[str, Any] | None = None  # results.json of the evaluation step, when the recipe has one
    cost: dict[str, Any] | None = None  # {"training", "evaluation", "total"}: see tuneloop.cost
    registration: Any = None  # tuneloop.registry.register.Registration, when the recipe registers
    promotion: Any = None  # tuneloop.registry.promotion.Decision, when registration tried to promote
    tracking: str | None = None  # where the MLflow run is


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
) -> RunResult:
    """Run every stage of `recipe` in order; each stage starts from the model the previous one produced.

    `tracker` (main process only) begins as soon as the run directory is known and receives the recipe,
    parameters, environment, datasets, curves and per-stage figures. `finished=False` leaves the run open for
    `--resume` after training (the pipeline's evaluation and registration follow and close it). `from_stage`
    starts a new run at that stage, reusing the outputs of the stages before it from the newest run that finished
    them with the same settings (`tuneloop run --from STAGE`). `callbacks(stage)` adds TrainerCallbacks to a
    stage (a sweep's intermediate evaluations and budget guard)."""
    from accelerate.utils import broadcast_object_list

    from tuneloop.cost import account, recipe_price, total
    from tuneloop.models.loading import provenance, resolve, tiny_copy
    from tuneloop.tracking import RunTracker, cost_metrics, stage_metrics
    from tuneloop.train.stage import StageContext

    request = preflight(recipe, smoke)
    reused: dict[str, dict[str, Any]] = {}
    if from_stage:
        reused_run, reused = runs.reusable_stages(recipe, from_stage, smoke)
        if say:
            say(f"--from {from_stage}: reusing {', '.join(reused)} from {reused_run}")
    price = recipe_price(recipe.cost, recipe_path.parent)  # a bad device or price table fails before training
    quiet_libraries()
    state = _init_distributed(request)
    started = time.perf_counter()
    main = state.is_main_process
    if run_dir is None:
        found = runs.latest_unfinished(recipe.name, smoke) if resume else None
        run_dir = found or runs.new_run_dir(recipe.name, smoke)
        if resume and found is None and main and say:
            say(f"--resume: no unfinished run of {recipe.name}; starting a new one")
    run_dir = Path(broadcast_object_list([str(run_dir)])[0]) if state.num_processes > 1 else run_dir
    recipe_dir = recipe_path.parent
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        recorded = run_dir / "recipe.yaml"
        if recorded.exists() and recorded.read_text() != resolved_yaml(recipe):
            recorded.replace(run_dir / "recipe.previous.yaml")
            if say:
                say(
                    f"[yellow]warning:[/] the recipe differs from the one {run_dir.name} started with; "
                    "resuming with the new one (the old one is kept as recipe.previous.yaml)"
                )
        recorded.write_text(resolved_yaml(recipe))
    tracker = tracker if tracker is not None and main else RunTracker.disabled()
    if main:
        begin_tracking(tracker, recipe, recipe_path, run_dir, smoke)
    with state.main_process_first():
        source = resolve(recipe.base_model, recipe_dir, log=say if main and say else (lambda _m: None))
        base = provenance(recipe.base_model, source) if main else {}
        if smoke:
            source = tiny_copy(source, recipe.base_model, run_dir / "smoke-base", recipe.seed)
            base["smoke_copy"] = source
    results = []
    first = source
    for i, stage in enumerate(recipe.stages):
        source, name = _stage_start(stage, i, first, source, results, recipe, recipe_dir, smoke, run_dir, state, say)
        ctx = StageContext(
            recipe,
            recipe_dir,
            run_dir,
            source,
            smoke,
            resume,
            main,
            tracker=tracker,
            model_name=name,
            callbacks=callbacks,
        )
        done_file = ctx.stage_dir(stage) / "stage.json"
        if stage.name in reused and not done_file.exists():
            summary = {**reused[stage.name], "reused_from": str(Path(reused[stage.name]["model_dir"]).parent)}
            ctx.say(f"stage {stage.name}: reusing {summary['model_dir']}")
            if main:
                done_file.parent.mkdir(parents=True, exist_ok=True)
                runs.write_json(done_file, summary)
        elif resume and done_file.exists():
            summary = json.loads(done_file.read_text())
            ctx.say(f"stage {stage.name} already finished in {run_dir}; skipping")
        else:
            ctx.say(f"[bold]stage {i + 1}/{len(recipe.stages)}: {stage.name}[/] ({stage.method})")
            stage_started = time.perf_counter()
            summary = METHODS[stage.method](stage, ctx)
            summary["wall_s"] = time.perf_counter() - stage_started
            summary["cost"] = account(
                price,
                summary["wall_s"],
                summary["world_size"],
                summary["train_tokens"],
                summary.get("parameters", {}).get("total"),
                "training",
                busy_s=summary["train_runtime_s"],
            )
            if main:
                runs.write_json(done_file, summary)
        if main:
            tracker.log_metrics(stage_metrics(summary))
            tracker.log_artifact(done_file, f"stages/{stage.name}")
            tracker.stage_run(run_dir, stage, summary)
        results.append(summary)
        source = summary["model_dir"]
        if stage.peft and i + 1 < len(recipe.stages):
            source = _merged(Path(summary["model_dir"]), ctx.stage_dir(stage) / "merged", state)
    wall = time.perf_counter() - started
    result = RunResult(run_dir, results, Path(results[-1]["model_dir"]), wall)
    if main:
        result.cost = {"training": total([s.get("cost") for s in results])}
        runs.write_json(
            run_dir / runs.SUMMARY,
            {
                "recipe": recipe.name,
                "recipe_path": str(recipe_path.resolve()),
                "smoke": smoke,
                "wall_s": wall,
                "model_dir": str(result.model_dir),
                "base_model": base,
                "stages": results,
                "cost": result.cost,
                "finished": finished,
            },
        )
        tracker.log_metrics(cost_metrics(result.cost))
    state.wait_for_everyone()
    return result


def _stage_start(
    stage: Stage,
    i: int,
    first: str,
    previous: str,
    results: list,
    recipe: Recipe,
    recipe_dir: Path,
    smoke: bool,
    run_dir: Path,
    state,
    say,
) -> tuple[str, str]:
    """Where a stage starts: `base: previous` (default after the first stage), `base_model`, or a model of its own
    (a smoke run swaps that for a tiny random copy too). Returns (source, name for messages)."""
    from tuneloop.models.loading import resolve, tiny_copy

    base = stage.base or ("base_model" if i == 0 else "previous")
    if base == "previous":
        return previous, f"stage {results[-1]['stage']}" if results else "previous"
    if base == "base_model":
        return first, recipe.base_model.name
    from tuneloop.config.schema import ModelRef

    ref = ModelRef(name=base)
    log = say if state.is_main_process and say else (lambda _m: None)
    with state.main_process_first():
        source = resolve(ref, recipe_dir, log=log)
        if smoke:
            source = tiny_copy(source, ref, run_dir / f"smoke-{stage.name}", 0)
    return source, base


def begin_tracking(tracker: RunTracker, recipe: Recipe, recipe_path: Path, run_dir: Path, smoke: bool) -> None:
    """The run's MLflow/W&B record (new, or reopened from `tracking.json`): resolved recipe as params and
    artifact, code, packages, hardware. Also what `tuneloop registry register RUN_DIR` opens the run with."""
    from tuneloop.config.loader import resolved_dict
    from tuneloop.tracking import flatten, log_environment

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
    tracker.log_artifact(run_dir / "recipe.yaml")
    log_environment(tracker, recipe_path.parent)


def recipe_sha256(recipe: Recipe) -> str:
    """Hash of the recipe as it ran (defaults merged, overrides applied): equal hashes, equal recipes."""
    import hashlib

    return hashlib.sha256(resolved_yaml(recipe).encode()).hexdigest()


def _merged(adapter_dir: Path, out: Path, state) -> str:
    """Fold a LoRA adapter into its base so the next stage trains a plain model."""
    if state.is_main_process:
        from tuneloop.models.loading import merge_adapter

        merge_adapter(adapter_dir, out)
    state.wait_for_everyone()
    return str(out)
