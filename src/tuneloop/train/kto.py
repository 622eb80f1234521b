"""Kahneman-Tversky Optimization with TRL's KTOTrainer: single answers marked desirable or not (a rater's thumbs),
no pairs needed. `args.desirable_weight` / `undesirable_weight` rebalance uneven labels; `args.loss_type` is
`kto` or `apo_zero_unpaired`."""

from __future__ import annotations

from tuneloop.config.schema import Stage
from tuneloop.rundir import StageSummary
from tuneloop.train.preference import train_with
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import KTOConfig, KTOTrainer

    return train_with(KTOTrainer, KTOConfig, stage, ctx, reference=True)
