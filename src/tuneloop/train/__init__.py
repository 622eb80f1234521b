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
from typing import Any

from tuneloop.config.loader import resolved_yaml
from tuneloop.config.schema import Recipe, Stage
from tuneloop.errors import TuneloopError
from tuneloop.train import runs


def _sft(stage: Stage, ctx) -> dict[str, Any]:
    from tuneloop.train import sft

    return sft.train(stage, ctx)


METHODS: dict[str, Callable[..., dict[str, Any]]] = {"sft": _sft}


@dataclass
class RunResult:
    run_dir: Path
    stages: list[dict[str, Any]]
    model_dir: Path
    wall_s: float
    evaluation: dict[str, Any] | None = None  # results.json of the evaluation step, when the recipe has one
    cost: dict[str, Any] | None = None  # {"training", "evaluation", "total"}: see tuneloop.cost


def _init_distributed():
    """Join the launcher's process group (or none). Without a GPU, ask accelerate for CPU state explicitly:
    otherwise `accelerate launch --multi_gpu` on CPU leaves each rank training alone (DESIGN.md, Facts)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def quiet_libraries() -> None:
    """Our progress bar and summary replace the per-step bars of datasets and transformers."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


def preflight(recipe: Recipe, smoke: bool) -> None:
    """Refuse, before anything is loaded, what this machine cannot run (a smoke run substitutes instead)."""
    import torch

    from tuneloop.train.stage import needs_cuda_optimizer

    if smoke or torch.cuda.is_available():
        return
    for stage in recipe.stages:
        if stage.peft and stage.peft.type == "qlora":
            raise TuneloopError(
                f"stages.{stage.name}.peft: QLoRA loads the base model in 4 bits with bitsandbytes, which needs a "
                "CUDA GPU; on this machine use `peft: {type: lora}`, or check the path with --smoke"
            )
        optim = str(stage.args.get("optim", ""))
        if needs_cuda_optimizer(optim):
            raise TuneloopError(
                f"stages.{stage.name}.args.optim: {optim} is a bitsandbytes optimizer, which needs a CUDA GPU; "
                "use adamw_torch here, or check the path with --smoke"
            )


def train_recipe(
    recipe: Recipe,
    recipe_path: Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    run_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> RunResult:
    """Run every stage of `recipe` in order; each stage starts from the model the previous one produced."""
    from accelerate.utils import broadcast_object_list

    from tuneloop.cost import account, recipe_price, total
    from tuneloop.models.loading import resolve, tiny_copy
    from tuneloop.train.stage import StageContext

    preflight(recipe, smoke)
    price = recipe_price(recipe.cost, recipe_path.parent)  # a bad device or price table fails before training
    quiet_libraries()
    state = _init_distributed()
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
    with state.main_process_first():
        source = resolve(recipe.base_model, recipe_dir, log=say if main and say else (lambda _m: None))
        if smoke:
            source = tiny_copy(source, recipe.base_model, run_dir / "smoke-base", recipe.seed)
    results = []
    for i, stage in enumerate(recipe.stages):
        ctx = StageContext(recipe, recipe_dir, run_dir, source, smoke, resume, main)
        done_file = ctx.stage_dir(stage) / "stage.json"
        if resume and done_file.exists():
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
                "smoke": smoke,
                "wall_s": wall,
                "model_dir": str(result.model_dir),
                "stages": results,
                "cost": result.cost,
            },
        )
    state.wait_for_everyone()
    return result


def _merged(adapter_dir: Path, out: Path, state) -> str:
    """Fold a LoRA adapter into its base so the next stage trains a plain model."""
    if state.is_main_process and not (out / "config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))
        model.merge_and_unload().save_pretrained(str(out))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out))
    state.wait_for_everyone()
    return str(out)
