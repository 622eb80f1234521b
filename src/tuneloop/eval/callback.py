"""Generation metrics while training: every N steps, answer a few evaluation prompts with the model being trained
and log ROUGE/BLEU next to the loss, so a run whose loss falls but whose answers do not improve shows it early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.config.schema import Recipe
from tuneloop.eval.backends import TransformersBackend
from tuneloop.eval.tasks import TaskRows, load_task


class GenerationMetrics(TrainerCallback):
    """Logs `gen_<metric>` (point estimates, no CI: the subset is small by design) on the main process; under
    ZeRO-3 every rank helps gather the sharded weights and the main process generates and scores."""

    def __init__(self, rows: TaskRows, tokenizer: Any, every_steps: int):
        self.rows = rows
        self.tokenizer = tokenizer
        self.every = every_steps
        self.trainer: Any = None
        self.pause_s = 0.0  # time spent generating, which the stage's throughput leaves out

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or self.trainer is None:
            return
        # ZeRO-3 shards the weights: every rank takes part in gathering them (a collective), then rank 0 generates
        # with the whole model and its hooks removed; a rank 0 that generated alone from shards would wait forever
        sharded = any(hasattr(p, "ds_id") for p in model.parameters())
        if not (sharded or state.is_world_process_zero):
            return
        import time

        started = time.perf_counter()
        if sharded:
            from trl.models.utils import unwrap_model_for_generation

            with unwrap_model_for_generation(self.trainer.model_wrapped, self.trainer.accelerator) as whole:
                if state.is_world_process_zero:
                    self._generate(whole, alone=True)
        else:
            self._generate(model)
        self.pause_s += time.perf_counter() - started

    def _generate(self, model, alone: bool = False) -> None:
        from tuneloop.eval import metrics as M

        was_training = model.training
        cache = model.config.use_cache
        model.config.use_cache = True
        try:
            backend = TransformersBackend("training model", self.tokenizer, model, alone=alone)
            answers = backend.generate(self.rows.prompts, self.rows.task.generation)
        finally:
            model.config.use_cache = cache
            model.train(was_training)
        names = [m for m in self.rows.metrics if m in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")]
        values = M.generation_metrics(
            [a.text for a in answers], self.rows.references, names or ["rougeL"], resamples=100
        )
        # Trainer.log clears the step's should_log/evaluate/save flags: the main process would then skip the step's
        # own logging, whose loss gather is a collective the other ranks enter (a hang or a collective mismatch)
        control = self.trainer.control
        flags = (control.should_log, control.should_evaluate, control.should_save)
        self.trainer.log({f"gen_{k}": round(v.value, 3) for k, v in values.items()})
        control.should_log, control.should_evaluate, control.should_save = flags


def build(trainer: Any, recipe: Recipe, tokenizer: Any, base_dir: Path, smoke: bool) -> GenerationMetrics | None:
    """The callback when the recipe's `evaluation.during_training` asks for it (added after the step clock by
    `stage.fit`, so the pause for generating is not counted as training time)."""
    ev = recipe.evaluation
    if ev is None or ev.during_training is None:
        return None
    during = ev.during_training
    tasks = [t for t in ev.tasks if (t.name == during.task if during.task else True)]
    rows = None
    for task in tasks:
        candidate = load_task(
            task.model_copy(update={"max_rows": 4 if smoke else during.rows}), recipe.data, base_dir, smoke
        )
        if candidate.kind == "generation":
            rows = candidate
            break
    if rows is None:
        return None
    callback = GenerationMetrics(rows, tokenizer, 1 if smoke else during.every_steps)
    callback.trainer = trainer
    return callback
