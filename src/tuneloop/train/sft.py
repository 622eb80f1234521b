"""Supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer.

Order: resolve model → load data → build trainer → train → save → report (shared steps live in stage.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.config.schema import Stage
from tuneloop.data import load_data
from tuneloop.data.sources import effective_format
from tuneloop.errors import TuneloopError
from tuneloop.eval.callback import build as generation_metrics
from tuneloop.eval.models import TRAINING_RECORD, training_record
from tuneloop.models.loading import load_model, load_tokenizer, param_count
from tuneloop.train.runs import write_json
from tuneloop.train.stage import SMOKE_ROWS, StageContext, fit, lora_config, track_data, trl_args


def train(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    recipe = ctx.recipe
    tokenizer = load_tokenizer(ctx.model_source, recipe.base_model, ctx.recipe_dir)
    data = load_data(
        recipe.stage_data(stage), ctx.recipe_dir, limit=SMOKE_ROWS if ctx.smoke else None, smoke=ctx.smoke, say=ctx.say
    )
    ctx.say(
        f"data: {data.description}: {len(data.train)} train rows"
        + (f", {len(data.eval)} eval rows" if data.eval is not None else "")
        + f"  fingerprints {data.fingerprints}"
    )
    track_data(ctx, stage, data)
    config = trl_args(SFTConfig, stage, ctx, has_eval=data.eval is not None)
    # a smoke run trains a QLoRA stage's adapter in full precision: 4-bit loading needs CUDA
    model = load_model(ctx.model_source, recipe.base_model, qlora=None if ctx.smoke else stage.peft)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=lora_config(stage.peft, ctx),
    )
    _report_dropped(trainer, data, config, stage, ctx)
    during = generation_metrics(trainer, recipe, tokenizer, ctx.recipe_dir, ctx.smoke)
    trainable, total = param_count(trainer.model)
    ctx.say(
        f"model: {recipe.base_model.name}{' (tiny random, --smoke)' if ctx.smoke else ''}: "
        f"{total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable"
        f" ({'LoRA' if stage.peft else 'full fine-tuning'})"
    )
    summary = fit(trainer, stage, ctx, callbacks=[during] if during else [])
    if ctx.is_main:
        record = training_record(
            tokenizer, effective_format(recipe.stage_data(stage)), recipe.base_model.name, recipe.name, stage.name
        )
        write_json(Path(summary["model_dir"]) / TRAINING_RECORD, record)
    summary["data_fingerprints"] = data.fingerprints
    if data.prepare:
        summary["data_prepare"] = data.prepare
    summary["parameters"] = {"total": total, "trainable": trainable}
    return summary


def _report_dropped(trainer: Any, data: Any, config: Any, stage: Stage, ctx: StageContext) -> None:
    """TRL drops rows whose completion was cut off entirely by `max_length`; say so instead of hiding it."""
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
        )
        ctx.notes.append(note)
        ctx.say(f"[yellow]warning:[/] {note}")
    if len(trainer.train_dataset) == 0:
        raise TuneloopError(
            f"stages.{stage.name}: no training rows left after truncation at max_length={config.max_length}"
        )
    if trainer.eval_dataset is not None and len(trainer.eval_dataset) == 0:
        trainer.eval_dataset = None
