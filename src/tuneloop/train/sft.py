"""Supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer.

Order: resolve model → load data → build trainer → train → save → report (shared steps live in stage.py).
"""

from __future__ import annotations

from tuneloop.config.schema import Stage
from tuneloop.eval.callback import build as generation_metrics
from tuneloop.models.loading import load_model, load_tokenizer
from tuneloop.rundir import StageSummary
from tuneloop.train.stage import StageContext, finish, lora_config, report_dropped, stage_data, trl_args


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import SFTConfig, SFTTrainer

    recipe = ctx.recipe
    tokenizer = load_tokenizer(ctx.model_source, recipe.base_model, ctx.recipe_dir)
    data = stage_data(stage, ctx)
    config = trl_args(SFTConfig, stage, ctx, has_eval=data.eval is not None)
    model = load_model(ctx.model_source, recipe.base_model, qlora=stage.peft)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=lora_config(stage.peft, ctx),
    )
    report_dropped(trainer, data, config, stage, ctx)
    during = generation_metrics(trainer, recipe, tokenizer, ctx.recipe_dir, ctx.smoke)
    return finish(trainer, stage, ctx, data, tokenizer, callbacks=[during] if during else [])
