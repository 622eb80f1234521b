"""The real executor: each trial is one recipe run (`pipeline.run`) with the trial's values as `--set` overrides,
tracked as a child of the sweep's MLflow run. While the last stage trains, a callback answers a few prompts of the
objective's task every `pruning.every_steps` steps and reports the score with the spend so far; it also keeps the
spend current (so a killed worker's trial is still paid for) and stops the trial when the budget would overrun.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.config.schema import Recipe, Stage
from tuneloop.cost import recipe_price
from tuneloop.errors import RunStopped, TuneloopError
from tuneloop.eval import metrics as M
from tuneloop.eval.backends import TransformersBackend
from tuneloop.eval.tasks import load_task
from tuneloop.recipes import load_recipe
from tuneloop.sweep.engine import Outcome, TrialContext, TrialFailed
from tuneloop.sweep.space import override
from tuneloop.sweep.spec import SweepSpec, _metrics, trial_overrides
from tuneloop.train.stage import SMOKE_STEPS

SPEND_EVERY_S = 5.0


class NaNLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial is failed, not trained on to the end."""


class TrialMonitor(TrainerCallback):
    """Keeps the trial's spend current, fails it on a NaN loss, and (with pruning) reports intermediate scores."""

    def __init__(self, ctx: TrialContext, clock: Any, rows: Any = None, metric: str | None = None, every: int = 0):
        self.ctx, self.clock, self.rows, self.metric, self.every = ctx, clock, rows, metric, every
        self.last_spend = 0.0
        self.pause_s = 0.0  # generation time, left out of the stage's throughput (stage.fit reads it)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise NaNLoss(f"NaN loss at step {state.global_step} (loss={loss})")

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if self.rows is not None and self.every and step % self.every == 0:
            self.ctx.report(step, self._score(model, processing_class), self.clock())
        elif time.perf_counter() - self.last_spend > SPEND_EVERY_S:
            self.last_spend = time.perf_counter()
            self.ctx.spend(self.clock())

    def _score(self, model: Any, tokenizer: Any) -> float:

        started = time.perf_counter()
        was_training, cache = model.training, model.config.use_cache
        model.config.use_cache = True
        try:
            answers = TransformersBackend("trial", tokenizer, model).generate(
                self.rows.prompts, self.rows.task.generation
            )
        finally:
            model.config.use_cache = cache
            model.train(was_training)
        values = M.generation_metrics([a.text for a in answers], self.rows.references, [self.metric], resamples=100)
        self.pause_s += time.perf_counter() - started
        return float(values[self.metric].value)


class LiveExecutor:
    """Runs trials of `spec` for real, writing each into `<sweep_dir>/trial-NNNN`."""

    def __init__(
        self,
        spec: SweepSpec,
        sweep_dir: Path,
        overrides: list[str],
        parent_run_id: str | None,
        smoke: bool = False,
        say: Any = print,
    ):
        self.spec, self.sweep_dir, self.overrides = spec, sweep_dir, overrides
        self.parent_run_id, self.smoke, self.say = parent_run_id, smoke, say
        self.task, self.metric = objective_task(spec)
        self._rows: Any = None

    def recipe(self, params_overrides: list[str]) -> Recipe:
        return load_recipe(
            self.spec.recipe_path, [*self.overrides, *trial_overrides(self.spec.recipe), *params_overrides]
        )

    def planned_examples(self, params: dict[str, Any]) -> int | None:
        """Training examples the trial will see: steps × batch × accumulation over its stages (rows × epochs when
        `max_steps` is not set and the data is capped with `max_train_rows`)."""

        try:
            recipe = self.recipe([override(k, v) for k, v in params.items()])
        except Exception:  # an invalid combination fails in the trial itself, with its message
            return None
        if self.smoke:
            return SMOKE_STEPS * 2 * len(recipe.stages)  # stage.trl_args: 2 steps of batch 2
        total = 0
        for stage in recipe.stages:
            per_step = _batch(stage)
            steps = int(stage.args.get("max_steps", -1) or -1)
            if steps <= 0:
                rows = recipe.stage_data(stage).max_train_rows
                if rows is None:
                    return None
                epochs = float(stage.args.get("num_train_epochs", 3))
                steps = math.ceil(math.ceil(rows / per_step) * epochs)
            total += steps * per_step
        return total

    def __call__(self, ctx: TrialContext) -> Outcome:
        from tuneloop import pipeline

        recipe = self.recipe(ctx.overrides())
        price = recipe_price(recipe.cost, self.spec.recipe_path.parent)
        run_dir = self.sweep_dir / f"trial-{ctx.number:04d}"
        started = time.perf_counter()
        devices = 1

        def clock() -> dict[str, float]:
            hours = devices * (time.perf_counter() - started) / 3600
            return {"money": hours * price.per_hour, "device_hours": hours}

        pruning = self.spec.sweep.pruning
        rows = self._task_rows(recipe) if pruning is not None else None
        last = recipe.stages[-1].name

        def callbacks(stage: Stage) -> list[Any]:
            if stage.name != last:
                return [TrialMonitor(ctx, clock)]
            every = (1 if self.smoke else pruning.every_steps) if pruning else 0
            return [TrialMonitor(ctx, clock, rows, self.metric, every)]

        extra = {"run_dir": str(run_dir)}
        try:
            result = pipeline.run(
                recipe,
                self.spec.recipe_path,
                smoke=self.smoke,
                run_dir=run_dir,
                say=self.say,
                callbacks=callbacks,
                parent_run_id=self.parent_run_id,
            )
        except RunStopped:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise TrialFailed(failure_reason(e), clock(), extra) from e
        spent = clock()
        extra["mlflow_run"] = result.tracking or ""
        values = objective_values(result.evaluation or {}, self.spec)
        cost = result.cost
        stages = result.stages
        trained = sum(s.steps * (2 if self.smoke else _batch(recipe.stage(s.stage))) for s in stages)
        overhead = max(0.0, spent["device_hours"] - _hours(cost.get("total")))
        train = _figures(cost.get("training"), overhead)  # loading and setup belong to training's cost per example
        return Outcome(
            values=values,
            cost=spent,
            train_cost=train,
            eval_cost=_figures(cost.get("evaluation")),
            trained_examples=trained or None,
            steps=stages[-1].steps if stages else None,
            extra=extra,
        )

    def _task_rows(self, recipe: Recipe) -> Any:
        """The objective task's first `pruning.rows` prompts, loaded once per sweep."""
        if self._rows is None:
            assert recipe.evaluation is not None and self.spec.sweep.pruning is not None
            task = next(t for t in recipe.evaluation.tasks if t.name == self.task)
            n = 4 if self.smoke else self.spec.sweep.pruning.rows
            self._rows = load_task(
                task.model_copy(update={"max_rows": n}), recipe.data, self.spec.recipe_path.parent, self.smoke
            )
        return self._rows


def objective_task(spec: SweepSpec) -> tuple[str, str]:
    """(task, metric) of the first metric objective, resolved against the recipe's evaluation."""

    wanted = spec.sweep.metric_objectives()[0].metric or ""
    full = next(m for m in _metrics(spec.recipe) if m == wanted or m.split("/")[-1] == wanted)
    task, metric = full.split("/", 1)
    return task, metric


def objective_values(results: dict[str, Any], spec: SweepSpec) -> dict[str, float]:
    """The metric objectives' values from a run's results.json (the trained model's entry)."""
    entry = (results.get("models") or [{}])[-1]
    tasks = entry.get("tasks") or {}
    out: dict[str, float] = {}
    for objective in spec.sweep.metric_objectives():
        label = objective.label()
        for task, body in tasks.items():
            for metric, mv in (body.get("metrics") or {}).items():
                if label in (f"{task}/{metric}", metric) and mv.get("value") is not None:
                    out[label] = float(mv["value"])
    return out


def failure_reason(e: BaseException) -> str:
    """Why a trial failed, in the words its report shows: out of memory, NaN loss, or the error."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    for err in chain:
        text = f"{type(err).__name__}: {err}"
        if type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower():
            return f"out of memory ({text[:300]})"
        if isinstance(err, NaNLoss):
            return str(err)
    if isinstance(e, TuneloopError):
        return str(e)[:500]
    return f"crash: {type(e).__name__}: {str(e)[:400]}"


def _batch(stage: Stage) -> int:
    a = stage.args
    return int(a.get("per_device_train_batch_size", 8)) * int(a.get("gradient_accumulation_steps", 1))


def _hours(record: dict[str, Any] | None) -> float:
    return float((record or {}).get("device_hours") or 0.0)


def _figures(record: dict[str, Any] | None, extra_hours: float = 0.0) -> dict[str, float] | None:
    if not record:
        return None
    hours = float(record["device_hours"]) + extra_hours
    per_hour = float(record["money"]) / float(record["device_hours"]) if record["device_hours"] else 0.0
    return {"money": hours * per_hour, "device_hours": hours}
