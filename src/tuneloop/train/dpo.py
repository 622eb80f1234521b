"""Direct Preference Optimization with TRL's DPOTrainer: pairs of a preferred and a dispreferred answer, no
reward model. `args.loss_type` picks TRL's variants (sigmoid, ipo, hinge, robust, apo_zero, ...; a list mixes
them with `loss_weights`); `args.precompute_ref_log_probs` scores the reference once up front (full fine-tuning
without a second model in memory during training)."""

from __future__ import annotations

from tuneloop.config.schema import Stage
from tuneloop.rundir import StageSummary
from tuneloop.train.preference import train_with
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    from trl import DPOConfig, DPOTrainer

    return train_with(DPOTrainer, DPOConfig, stage, ctx, reference=True)
