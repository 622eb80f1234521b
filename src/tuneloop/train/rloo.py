"""REINFORCE Leave-One-Out with TRL's RLOOTrainer: each sample's baseline is the mean reward of the other samples
of its prompt. Same rewards and data as `grpo`; `args.beta` is the KL penalty to the start model (0.05)."""

from __future__ import annotations

from tuneloop.config.schema import Stage
from tuneloop.rundir import StageSummary
from tuneloop.train.online import train_online
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import RLOOConfig, RLOOTrainer

    return train_online(RLOOTrainer, RLOOConfig, stage, ctx)
