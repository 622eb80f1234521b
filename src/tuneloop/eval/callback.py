"""Generation metrics while training: every N steps, answer a few evaluation prompts with the model being trained
and log ROUGE/BLEU next to the loss, so a run whose loss falls but whose answers do not improve shows it early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.config.schema import Recipe
from tuneloop.eval.tasks import TaskRows, load_task


class GenerationMetrics(TrainerCallback):
    """Logs `gen_<metric>` (point estimates, no CI: the subset is small by design) on the main process."""

    def __init__(self, rows: TaskRows, tokenizer: Any, every_steps: int):
        self.rows = rows
        self.tokenizer = tokenizer
        self.every = every_steps
        self.trainer: Any = None
        self.pause_s = 0.0  # time spent generating, which the stage's throughput leaves out

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or not state.is_world_process_zero or self.trainer is None:
            return
        import time

        from tuneloop.eval import metrics as M
        from tuneloop.eval.backends import TransformersBackend

        started = time.perf_counter()
        was_training = model.training
        cache = model.config.use_cache
        model.config.use_cache = True
        try:
            backend = TransformersBackend("training model", self.tokenizer, model)
            answers = backend.generate(self.rows.prompts, self.rows.task.generation)
        finally:
            model.config.use_cache = cache
            model.train(was_training)
        names = [m for m in self.rows.metrics if m in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")]
        values = M.generation_metrics(
            [a.text for a in answers], self.rows.references, names or ["rougeL"], resamples=100
        )
        self.pause_s += time.perf_counter() - started
        self.trainer.log({f"gen_{k}": round(v.value, 3) for k, v in values.items()})


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
