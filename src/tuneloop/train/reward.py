"""Pairwise reward model with TRL's RewardTrainer (Bradley-Terry loss on chosen vs rejected): the base model
with a one-output `score` head, saved as a sequence classifier. A `grpo`/`rloo` stage can use it as a reward
(`rewards: [{model: ...}]`); the stage reports its pairwise accuracy on the eval split with a bootstrap CI."""

from __future__ import annotations

from typing import Any

from tuneloop.config.schema import Stage
from tuneloop.eval.metrics import _mean_metric
from tuneloop.rundir import StageSummary
from tuneloop.train.preference import train_with
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import RewardConfig, RewardTrainer

    return train_with(RewardTrainer, RewardConfig, stage, ctx, reward_head=True, after=report_accuracy)


def report_accuracy(trainer: Any, stage: Stage, ctx: StageContext, summary: StageSummary) -> None:
    if trainer.eval_dataset is None:
        return
    acc = pairwise_accuracy(trainer)
    summary.pairwise_accuracy = acc
    ctx.say(
        f"pairwise accuracy on {acc['n']} held-out pairs: {acc['value']:.1%} "
        f"[{acc['ci_low']:.1%}, {acc['ci_high']:.1%}] (chosen scored above rejected; 50% is chance)"
    )


def pairwise_accuracy(trainer: Any, resamples: int = 1000) -> dict[str, Any]:
    """Share of eval pairs whose chosen answer scores above the rejected one (a tie counts half), with a 95%
    percentile-bootstrap CI. Every rank scores its shard; the main process gets all of them."""
    import torch
    from accelerate.utils import gather_object

    model = trainer.model
    was_training = model.training
    model.eval()
    wins: list[float] = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            batch = trainer._prepare_inputs(batch)
            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
            chosen, rejected = torch.chunk(scores.float(), 2)  # the collator stacks chosen rows, then rejected
            wins += ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).tolist()
    model.train(was_training)
    wins = gather_object(wins)
    value = _mean_metric("accuracy", wins, resamples=resamples, seed=0)
    return {"value": value.value, "ci_low": value.ci_low, "ci_high": value.ci_high, "n": len(wins)}
