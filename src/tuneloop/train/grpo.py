"""Group Relative Policy Optimization with TRL's GRPOTrainer: advantages relative to the other samples of the
same prompt, no value model. `args.loss_type` (dapo by default in TRL 1.x, grpo, dr_grpo, bnpo, ...), `beta`
(KL to the start model; 0 by default), `num_generations`, `max_completion_length`, `use_vllm` (GPU)."""

from __future__ import annotations

from tuneloop.config.schema import Stage
from tuneloop.rundir import StageSummary
from tuneloop.train.online import train_online
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import GRPOConfig, GRPOTrainer

    return train_online(GRPOTrainer, GRPOConfig, stage, ctx)
