"""What the preference methods share: pairs (`reward`, `dpo`, `orpo`, `cpo`) or unpaired rows (`kto`) in, a
trained model out. Each method module names its TRL trainer and what it builds differently."""

from __future__ import annotations

from typing import Any

from tuneloop.config.schema import Stage
from tuneloop.data.sources import effective_format
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import load_model, load_reference, load_tokenizer
from tuneloop.rundir import StageSummary
from tuneloop.train.stage import StageContext, finish, lora_config, report_dropped, stage_data, trl_args


def train_with(
    trainer_cls: type,
    config_cls: type,
    stage: Stage,
    ctx: StageContext,
    *,
    reference: bool = False,
    reward_head: bool = False,
    after: Any = None,
) -> StageSummary:
    """Build the trainer the common way: tokenizer, data, config, model (and reference model), then train.

    `reference`: the trainer takes a `ref_model`. None (the default) lets TRL use the model the stage starts
    from: with a LoRA adapter the same weights with the adapter switched off, else a frozen copy it loads."""
    recipe = ctx.recipe
    tokenizer = load_tokenizer(ctx.model_source, recipe.base_model, ctx.recipe_dir)
    if not getattr(tokenizer, "chat_template", None) and _chat_rows(ctx, stage):
        raise TuneloopError(
            f"stages.{stage.name}: the tokenizer of {ctx.model_name} has no chat template but the rows are chat "
            "turns; set `base_model.chat_template` or use `format: {style: plain}`"
        )
    data = stage_data(stage, ctx)
    config = trl_args(config_cls, stage, ctx, has_eval=data.eval is not None)
    model = load_model(ctx.model_source, recipe.base_model, qlora=stage.peft, reward_head=reward_head)
    kwargs: dict[str, Any] = {}
    described = None
    if reference:
        kwargs["ref_model"] = None
        if stage.ref_model:
            described = stage.ref_model
            kwargs["ref_model"] = load_reference(stage.ref_model, ctx.recipe_dir, recipe.base_model, log=ctx.say)
        elif stage.peft:
            described = "start model, adapter disabled"
        elif config.precompute_ref_log_probs:
            described = "start model, log-probs precomputed"
        else:
            described = "start model, frozen copy"
        ctx.say(f"reference model: {described}")
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=lora_config(stage.peft, ctx, task_type="SEQ_CLS" if reward_head else "CAUSAL_LM"),
        **kwargs,
    )
    report_dropped(trainer, data, config, stage, ctx)
    summary = finish(trainer, stage, ctx, data, tokenizer, generates=not reward_head)
    if after is not None:
        after(trainer, stage, ctx, summary)
    if described:
        summary.reference_model = described
    return summary


def _chat_rows(ctx: StageContext, stage: Stage) -> bool:

    fmt = effective_format(ctx.recipe.stage_data(stage))
    return fmt is not None and fmt.style == "chat"
