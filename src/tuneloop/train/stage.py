"""What every training method shares: TRL config with tuneloop's defaults, LoRA config, the train/evaluate/save
sequence with resume, rank consistency checks and the stage summary. Method modules call these.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.config.schema import ONLINE_METHODS, Peft, Recipe, Stage
from tuneloop.data import load_data
from tuneloop.data.sources import effective_format, split_source
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import memory_footprint, param_count
from tuneloop.models.references import TRAINING_RECORD, training_record
from tuneloop.rundir import RunDir, StageSummary, last_checkpoint, write_json
from tuneloop.train.launch import Request, requested, running, verify
from tuneloop.train.progress import RichProgress, StepClock, console

SMOKE_ROWS = 16
SMOKE_STEPS = 2


@dataclass
class StageContext:
    """Everything a method module needs besides its stage: where to write, what to start from, how to behave."""

    recipe: Recipe
    recipe_dir: Path
    run_dir: Path
    model_source: str
    smoke: bool = False
    resume: bool = False
    is_main: bool = True
    notes: list[str] = field(default_factory=list)
    tracker: Any = None  # tuneloop.tracking.RunTracker (a disabled one on other ranks)
    model_name: str = ""  # what the stage starts from, for messages (the base model's name, or `previous`)
    callbacks: Any = None  # f(stage) -> extra TrainerCallbacks (a sweep's intermediate evaluations and guards)

    def __post_init__(self) -> None:
        self.model_name = self.model_name or self.recipe.base_model.name

    def stage_dir(self, stage: Stage) -> Path:
        return RunDir(self.run_dir).stage_dir(stage.name)

    def say(self, message: str) -> None:
        if self.is_main:
            console.print(message, highlight=False)


def trl_args(
    config_cls: type, stage: Stage, ctx: StageContext, has_eval: bool, extra: dict[str, Any] | None = None
) -> Any:
    """The stage's TRL config: the recipe's `args` over tuneloop's defaults for this machine; `extra` is what
    the method derives from the stage itself (GRPO's reward weights)."""
    import torch

    cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {
        "seed": ctx.recipe.seed,
        "report_to": "none",
        "logging_steps": 10,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        # TRL defaults bf16 on, which CPU runs must not use; gradient checkpointing only pays off on GPU memory.
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "gradient_checkpointing": cuda,
        "use_cpu": not cuda,
    }
    if has_eval:
        defaults["per_device_eval_batch_size"] = stage.args.get("per_device_train_batch_size", 8)
    if stage.method in ONLINE_METHODS:
        defaults["num_generations"] = 4  # TRL's 8 makes every step eight generations per prompt on a CPU
    if stage.method in (*ONLINE_METHODS, "distill"):
        # the trainer cannot count inputs of generated batches (a warning every step); TRL logs `num_tokens`
        defaults["include_num_input_tokens_seen"] = "no"
    args = {**defaults, **stage.args, **(extra or {}), "output_dir": str(ctx.stage_dir(stage))}
    if not cuda and (args.get("bf16") or args.get("fp16")):
        kind = "bf16" if args.get("bf16") else "fp16"
        note = f"{kind} mixed precision needs a GPU; training in float32 on this CPU instead"
        ctx.notes.append(note)
        ctx.say(f"[yellow]note:[/] {note}")
        args.update(bf16=False, fp16=False)
    if ctx.smoke:
        args.update(
            max_steps=SMOKE_STEPS,
            logging_steps=1,
            save_steps=SMOKE_STEPS,
            eval_strategy="no",
            per_device_train_batch_size=2,
            per_device_eval_batch_size=2,
            gradient_accumulation_steps=1,
        )
        if args.get("max_length"):
            args["max_length"] = min(args["max_length"], 128)
        if stage.method in ONLINE_METHODS:
            args.update(num_generations=2, max_completion_length=min(args.get("max_completion_length") or 16, 16))
            args.pop("generation_batch_size", None)
            args.pop("steps_per_generation", None)
        if stage.method == "distill":
            args["max_completion_length"] = min(args.get("max_completion_length") or 16, 16)
    try:
        return config_cls(**args)
    except (ValueError, TypeError) as e:
        raise TuneloopError(f"stages.{stage.name}.args: {config_cls.__name__} rejected the arguments: {e}") from e


def track_data(ctx: StageContext, stage: Stage, data: Any) -> None:
    """Each split the stage trains or validates on, as a dataset input whose digest is its fingerprint."""
    if ctx.tracker is None:
        return

    spec = ctx.recipe.stage_data(stage)
    for role, ds, split in (("training", data.train, spec.train_split), ("validation", data.eval, data.eval_split)):
        if ds is None or split is None:
            continue
        name = f"{spec.source if isinstance(spec.source, str) else 'files'}" + (f"/{spec.task}" if spec.task else "")
        source = split_source(spec, split, ctx.recipe_dir)
        ctx.tracker.log_dataset(ds, f"{name}:{split}", data.fingerprints[split], source, f"{stage.name}/{role}")
    if data.prepare:
        import json

        ctx.tracker.set_tags({f"tuneloop.data.{stage.name}.prepare": data.prepare["fingerprint"]})
        ctx.tracker.log_text(json.dumps(data.prepare, indent=2), f"data/{stage.name}-prepare.json")


def lora_config(peft: Peft | None, ctx: StageContext, task_type: str = "CAUSAL_LM"):
    """PEFT's LoRA config from the recipe; a reward model (`SEQ_CLS`) also trains its new score head in full."""
    if peft is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules=peft.target_modules,
        modules_to_save=peft.modules_to_save or (["score"] if task_type == "SEQ_CLS" else None),
        use_rslora=peft.use_rslora,
        task_type=task_type,
    )


def stage_data(stage: Stage, ctx: StageContext):
    """Load, prepare and format the stage's rows for its method, say what was loaded, and track it."""

    data = load_data(
        ctx.recipe.stage_data(stage),
        ctx.recipe_dir,
        limit=SMOKE_ROWS if ctx.smoke else None,
        smoke=ctx.smoke,
        say=ctx.say,
        method=stage.method,
    )
    ctx.say(
        f"data: {data.description}: {len(data.train)} train rows"
        + (f", {len(data.eval)} eval rows" if data.eval is not None else "")
        + f"  fingerprints {data.fingerprints}"
    )
    track_data(ctx, stage, data)
    return data


def describe_model(trainer: Any, stage: Stage, ctx: StageContext) -> tuple[int, int]:
    """Print what trains; returns (trainable, total) parameters."""

    trainable, total = param_count(trainer.model)
    kind = {None: "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA, 4-bit NF4 base"}[stage.peft and stage.peft.type]
    ctx.say(
        f"model: {ctx.model_name}{' (tiny random, --smoke)' if ctx.smoke else ''}: "
        f"{total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable"
        f" ({kind}, {stage.method}), {memory_footprint(trainer.model) / 2**20:.1f} MiB in memory"
    )
    return trainable, total


def finish(
    trainer: Any,
    stage: Stage,
    ctx: StageContext,
    data: Any,
    tokenizer: Any,
    callbacks: list[Any] | None = None,
    generates: bool = True,
) -> StageSummary:
    """Train and save (`fit`), then record how the model must be evaluated and where its data came from.
    `generates=False` (reward models) writes no generation record: such a model scores, it does not answer."""

    trainable, total = describe_model(trainer, stage, ctx)
    summary = fit(trainer, stage, ctx, callbacks=callbacks)
    if ctx.is_main and generates:
        fmt = effective_format(ctx.recipe.stage_data(stage))
        record = training_record(tokenizer, fmt, ctx.recipe.base_model.name, ctx.recipe.name, stage.name)
        write_json(Path(summary.model_dir) / TRAINING_RECORD, record)
    summary.data_fingerprints = data.fingerprints
    if data.prepare:
        summary.data_prepare = data.prepare
    summary.parameters = {"total": total, "trainable": trainable}
    return summary


def fit(trainer: Any, stage: Stage, ctx: StageContext, callbacks: list[Any] | None = None) -> StageSummary:
    """Evaluate, train (resuming from the newest complete checkpoint if asked), evaluate, save, summarise."""
    from accelerate.utils import gather_object

    callbacks = [*(callbacks or []), *(ctx.callbacks(stage) if ctx.callbacks else [])]
    mode, clock = _add_callbacks(trainer, stage, ctx, callbacks)
    stage_dir = ctx.stage_dir(stage)
    checkpoint = last_checkpoint(stage_dir) if ctx.resume else None
    has_eval = trainer.eval_dataset is not None
    # The "before" evaluation must run inside train(): calling trainer.evaluate() first marks the model as
    # prepared, and train() then skips the DDP wrapper, so ranks silently stop synchronising gradients
    # (transformers 5.19 + accelerate 1.15; caught by the rank checksums below). eval_on_start runs after wrapping.
    trainer.args.eval_on_start = has_eval and checkpoint is None
    if trainer.args.eval_on_start:
        ctx.say(f"evaluating {stage.name} before training on {len(trainer.eval_dataset)} rows")
    if checkpoint is not None:
        ctx.say(f"Checkpoint detected, resuming training at {checkpoint}")
    start = _checkpoint_progress(checkpoint)  # before train(): rotation may delete it
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_wall = time.perf_counter() - started
    eval_after = trainer.evaluate().get("eval_loss") if has_eval else None
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    model_dir = stage_dir / "model"
    trainer.save_model(str(model_dir))
    checksums = gather_object([weights_checksum(trainer.model)])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens, runtime = _throughput(trainer.state, result, train_wall, start, checkpoint is not None, callbacks)
    summary = StageSummary(
        stage=stage.name,
        method=stage.method,
        steps=trainer.state.global_step,
        resumed_from=str(checkpoint) if checkpoint else None,
        loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
        eval_loss_before=evals[0] if evals and has_eval else None,
        eval_loss_after=eval_after,
        train_tokens=tokens,
        train_runtime_s=runtime,
        tokens_per_s=tokens / runtime if runtime else None,
        tokens_per_s_after_first_step=clock.steady_tokens_per_s(),
        world_size=trainer.args.world_size,
        distributed=mode.mode,
        model_memory_bytes=memory_footprint(trainer.model),
        rank_weight_checksums=checksums,
        ranks_in_sync=None if None in checksums else len(set(checksums)) == 1,
        model_dir=str(model_dir),
        notes=ctx.notes,
    )
    if summary.ranks_in_sync is False:
        raise RuntimeError(f"ranks ended with different weights ({checksums}); distributed training is broken")
    return summary


def _add_callbacks(trainer: Any, stage: Stage, ctx: StageContext, callbacks: list[Any]) -> tuple[ModeCheck, StepClock]:
    """The mode check first (nothing else runs before the engine is known to be right), progress, the step clock,
    the caller's callbacks after the clock (their pauses are not training time), then the tracker's curves."""
    from transformers import PrinterCallback

    mode = ModeCheck(trainer, requested())
    trainer.add_callback(mode)
    trainer.remove_callback(PrinterCallback)  # RichProgress reports instead of raw dicts
    trainer.add_callback(RichProgress(stage.name))
    clock = StepClock()
    trainer.add_callback(clock)
    for callback in callbacks:
        trainer.add_callback(callback)
    curves = ctx.tracker.callback(stage.name) if ctx.tracker is not None else None
    if curves is not None:
        trainer.add_callback(curves)
    return mode, clock


def _throughput(
    state: Any, result: Any, train_wall: float, start: tuple[int, int], resumed: bool, callbacks: list[Any]
) -> tuple[int, float]:
    """(tokens, seconds) of this process's training only: a resumed run started at the checkpoint's token count,
    and train_runtime includes evaluations run inside train() (eval_on_start, eval_strategy) and callbacks'
    pauses (a sweep's intermediate evaluations)."""
    start_step, start_tokens = start
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - start_tokens
    if tokens <= 0:  # GRPO/RLOO: prompt + completion tokens, as TRL counts them in its logs
        counted = [e["num_tokens"] for e in state.log_history if "num_tokens" in e and e["step"] > start_step]
        tokens = int(max(counted)) if counted else 0
    end = next((i for i, e in enumerate(state.log_history) if "train_runtime" in e), len(state.log_history))
    in_train_eval = sum(
        e.get("eval_runtime", 0.0)
        for e in state.log_history[:end]
        if "eval_loss" in e and (e["step"] > start_step or not resumed)
    )
    in_train_eval += sum(getattr(cb, "pause_s", 0.0) for cb in callbacks)
    return tokens, max(result.metrics.get("train_runtime", train_wall) - in_train_eval, 1e-9)


class ModeCheck(TrainerCallback):
    """Verifies the running mode at the start of training, on every rank (each stops with the same error)."""

    def __init__(self, trainer: Any, request: Request):
        self.trainer = trainer
        self.request = request
        self.mode: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.mode = running(self.trainer)
        verify(self.request, self.mode)


def _checkpoint_progress(checkpoint: Path | None) -> tuple[int, int]:
    """(global step, tokens seen) saved in a checkpoint; (0, 0) for a fresh start."""
    if checkpoint is None:
        return 0, 0
    import json

    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(saved.get("global_step", 0)), int(saved.get("num_input_tokens_seen", 0) or 0)


def weights_checksum(model: Any) -> str | None:
    """Hash of every trainable parameter, to prove that all ranks of a distributed run hold the same model.

    Under ZeRO-3 each rank holds a shard: the parameters are gathered one at a time (every rank must call this,
    it is a collective) so the hash covers the whole model without holding it all at once. None under FSDP."""
    from contextlib import nullcontext

    params = sorted(model.named_parameters())
    if any(type(p).__name__ == "DTensor" for _, p in params):
        return None
    gather = None
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters
    h = hashlib.sha256()
    for name, param in params:
        if not param.requires_grad:
            continue
        with gather([param], modifier_rank=None) if gather else nullcontext():
            h.update(name.encode())
            h.update(param.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def report_dropped(trainer: Any, data: Any, config: Any, stage: Stage, ctx: StageContext) -> None:
    """TRL drops rows that do not fit `max_length` (SFT: whose completion was cut off entirely; reward models:
    longer pairs); say so instead of hiding it."""
    for role, before, after in (
        ("train", data.train, trainer.train_dataset),
        ("eval", data.eval, trainer.eval_dataset),
    ):
        if before is None or after is None or len(after) == len(before):
            continue
        lost = len(before) - len(after)
        note = (
            f"{lost} of {len(before)} {role} rows lost their whole completion to truncation at "
            f"max_length={config.max_length} and were dropped; raise max_length to keep them"
            if stage.method == "sft"
            else f"{lost} of {len(before)} {role} rows did not fit max_length={config.max_length} and were dropped "
            f"by TRL's {stage.method} preprocessing; raise max_length to keep them"
        )
        ctx.notes.append(note)
        ctx.say(f"[yellow]warning:[/] {note}")
    if len(trainer.train_dataset) == 0:
        raise TuneloopError(
            f"stages.{stage.name}: no training rows left after truncation at max_length={config.max_length}"
        )
    if trainer.eval_dataset is not None and len(trainer.eval_dataset) == 0:
        trainer.eval_dataset = None
