"""Training curves as they happen: every `Trainer.log` call (loss, learning rate, grad norm, eval loss, the
`gen_*` metrics of in-training evaluation) goes to the tracker under `train/<stage>/`, at its optimizer step."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

SKIP = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


class Curves(TrainerCallback):
    def __init__(self, tracker: Any, stage: str) -> None:
        self.tracker = tracker
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = {f"train/{self.stage}/{k}": v for k, v in logs.items() if k not in SKIP}
        self.tracker.log_metrics(values, step=state.global_step)


def curves_callback(tracker: Any, stage: str) -> Curves:
    return Curves(tracker, stage)
