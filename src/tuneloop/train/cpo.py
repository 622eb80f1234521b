"""CPO (contrastive preference optimisation: a reference-free DPO-style loss plus an SFT term) with
`trl.experimental.cpo`. Experimental in TRL: it may change or disappear in any release, so a stage opts in
with `experimental: true`."""

from __future__ import annotations

import os

from tuneloop.config.schema import Stage
from tuneloop.rundir import StageSummary
from tuneloop.train.preference import train_with
from tuneloop.train.stage import StageContext


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the recipe opted in; the stage prints its own note
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    ctx.notes.append("cpo comes from trl.experimental: TRL may change or remove it in any release")
    ctx.say("[yellow]note:[/] cpo is experimental in TRL (trl.experimental.cpo)")
    return train_with(CPOTrainer, CPOConfig, stage, ctx)
