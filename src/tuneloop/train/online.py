"""What `grpo` and `rloo` share: the policy samples several answers per prompt, the recipe's rewards score them,
and answers better than their group's average are reinforced. No value model (TRL 1.x removed PPO's).

Rewards come from the recipe (`rewards:`): built-ins (tuneloop.rewards), `package.module:function`, or reward
models (a `reward` stage's output, a directory, a hub id, `models:/NAME@ALIAS`), summed with their weights.
A group whose answers all get the same reward has zero standard deviation and teaches nothing; the run logs the
share of such groups (`frac_reward_zero_std`) and warns when it stays above 0.8, the usual cause of a loss stuck
at zero.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from tuneloop.config.schema import Reward, Stage
from tuneloop.data.sources import effective_format
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import load_model, load_reward_model, load_tokenizer, resolve
from tuneloop.recipes.checks import reward_reference
from tuneloop.rewards import build_builtin
from tuneloop.rundir import StageSummary
from tuneloop.train.stage import StageContext, finish, lora_config, stage_data, trl_args

ZERO_STD_WARN = 0.8


class ZeroStdWatch(TrainerCallback):
    """Collects TRL's `frac_reward_zero_std` and warns once when the last few logs all sit above the limit."""

    def __init__(self, ctx: StageContext, window: int = 3):
        self.ctx = ctx
        self.window = window
        self.values: list[float] = []
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("frac_reward_zero_std")
        if value is None:
            return
        self.values.append(float(value))
        recent = self.values[-self.window :]
        if not self.warned and len(recent) == self.window and min(recent) > ZERO_STD_WARN:
            self.warned = True
            note = (
                f"{min(recent):.0%}+ of prompt groups got identical rewards for {self.window} logs in a row: "
                "those groups have no advantage and the loss stays near zero. Raise temperature or "
                "num_generations, or use a denser reward"
            )
            self.ctx.notes.append(note)
            self.ctx.say(f"[yellow]warning:[/] {note}")

    def record(self, summary: StageSummary) -> None:
        if self.values:
            summary.zero_std_share_mean = sum(self.values) / len(self.values)
            summary.zero_std_share_last = self.values[-1]


def reward_functions(stage: Stage, ctx: StageContext) -> tuple[list[Any], list[float]]:
    """The stage's rewards as TRL reward functions (callables or sequence-classifier models) and their weights."""

    fmt = effective_format(ctx.recipe.stage_data(stage))
    funcs: list[Any] = []
    for i, reward in enumerate(stage.rewards):
        where = f"stages.{stage.name}.rewards[{i}]"
        if reward.builtin:
            funcs.append(build_builtin(reward.builtin, reward_reference(reward, fmt), reward.max_chars))
        elif reward.function:
            funcs.append(_import_function(reward.function, where))
        else:
            funcs.append(_reward_model(reward, ctx))
    return funcs, [r.weight for r in stage.rewards]


def _import_function(ref: str, where: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise TuneloopError(f"{where}.function: cannot import {ref}: {e}") from e
    if not callable(fn):
        raise TuneloopError(f"{where}.function: {ref} is not callable")
    return fn


def _reward_model(reward: Reward, ctx: StageContext) -> Any:
    source = resolve(ctx.recipe.base_model.model_copy(update={"name": reward.model}), ctx.recipe_dir, log=ctx.say)
    ctx.say(f"reward model: {reward.model}")
    return load_reward_model(source)


def train_online(trainer_cls: type, config_cls: type, stage: Stage, ctx: StageContext) -> StageSummary:
    recipe = ctx.recipe
    tokenizer = load_tokenizer(ctx.model_source, recipe.base_model, ctx.recipe_dir)
    data = stage_data(stage, ctx)
    funcs, weights = reward_functions(stage, ctx)
    config = trl_args(config_cls, stage, ctx, has_eval=False, extra={"reward_weights": weights})
    ctx.say(
        f"rewards: {', '.join(f'{r.label()}×{r.weight:g}' for r in stage.rewards)}; "
        f"{config.num_generations} samples per prompt, up to {config.max_completion_length} tokens each"
        + (" (vLLM)" if config.use_vllm else " (transformers generate)")
    )
    model = load_model(ctx.model_source, recipe.base_model, qlora=stage.peft)
    trainer = trainer_cls(
        model=model,
        reward_funcs=funcs,
        args=config,
        train_dataset=data.train,
        processing_class=tokenizer,
        peft_config=lora_config(stage.peft, ctx),
    )
    watch = ZeroStdWatch(ctx)
    trainer.add_callback(watch)
    summary = finish(trainer, stage, ctx, data, tokenizer)
    watch.record(summary)
    summary.rewards = [{"reward": r.label(), "weight": r.weight} for r in stage.rewards]
    return summary
