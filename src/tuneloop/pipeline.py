"""Run one recipe in order: prepare data → train stages → evaluate baseline and trained model → gate →
register → promote (serving follows the champion alias)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config.schema import Recipe
from tuneloop.cost import total
from tuneloop.data.sources import split_source
from tuneloop.errors import RunStopped
from tuneloop.eval.runner import ModelSpec
from tuneloop.eval.suite import from_recipe, run_suite
from tuneloop.models.registered import registered_from
from tuneloop.registry import register
from tuneloop.registry.promotion import Decision, promote, remember_result
from tuneloop.registry.register import Registration
from tuneloop.rundir import RunDir, RunSummary, StageSummary
from tuneloop.tracking import RunTracker, cost_metrics, evaluation_metrics
from tuneloop.train import Trained, train_recipe


@dataclass
class RunResult:
    """A whole run: what training produced, then the evaluation, the cost, the registered version and the promotion
    decision, each when the recipe asks for it."""

    training: Trained
    evaluation: dict[str, Any] | None = None  # results.json (its schema is tuneloop.eval.runner's)
    registration: Registration | None = None
    promotion: Decision | None = None
    tracking: str | None = None  # where the MLflow run is

    @property
    def run_dir(self) -> RunDir:
        return self.training.run_dir

    @property
    def summary(self) -> RunSummary:
        return self.training.summary

    @property
    def stages(self) -> list[StageSummary]:
        return self.summary.stages

    @property
    def model_dir(self) -> Path:
        return self.training.model_dir

    @property
    def cost(self) -> dict[str, Any]:
        """{"training", "evaluation", "total"}: see tuneloop.cost."""
        return self.summary.cost


def run(
    recipe: Recipe,
    recipe_path: Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    run_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    evaluate: bool = True,
    from_stage: str | None = None,
    callbacks: Callable[[Any], list[Any]] | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> RunResult:
    """The whole recipe: training stages, then (main process only) evaluation, gate, registration and promotion,
    all tracked in one MLflow run that ends FINISHED, or FAILED with the error (and then registers nothing).

    `tuneloop train` (and `accelerate launch -m tuneloop.train`) pass evaluate=False: on a cluster every rank
    trains, and the suite runs afterwards with `tuneloop eval --suite RECIPE -m BASE -m RUN_DIR`.

    A sweep's trial passes `callbacks` (intermediate evaluations, budget guard) and `parent_run_id` (its MLflow run
    is a child of the sweep's). A `RunStopped` from a callback (pruned, out of budget) ends the run KILLED. A loop
    round passes `tags` (its round and campaign), which registration copies into the version's lineage.
    """
    if say is None:  # called as a library (scripts, notebooks): messages carry rich markup, so render it
        from rich.console import Console

        say = Console(highlight=False, soft_wrap=True).print
    main = _is_main()
    kind = "run" if evaluate else "train"
    tracker = RunTracker(recipe.tracking, recipe.tracking.experiment or recipe.name, kind, say)
    if not main:
        tracker = RunTracker.disabled()
    tracker.parent_run_id = parent_run_id
    tracker.extra_tags = dict(tags or {})
    tracker.preflight()
    follows = evaluate and (recipe.evaluation is not None or recipe.registry is not None)
    try:
        trained = train_recipe(
            recipe,
            recipe_path,
            smoke=smoke,
            resume=resume,
            run_dir=run_dir,
            say=say,
            tracker=tracker,
            finished=not follows,
            from_stage=from_stage,
            callbacks=callbacks,
        )
        result = RunResult(trained)
        if follows and main:
            _after_training(recipe, recipe_path, result, tracker, smoke=smoke, resume=resume, say=say)
    except (KeyboardInterrupt, RunStopped) as e:
        tracker.finish("KILLED", e)
        raise
    except BaseException as e:
        tracker.finish("FAILED", e)
        raise
    tracker.finish("FINISHED")
    result.tracking = tracker.where()
    return result


def _after_training(
    recipe: Recipe, recipe_path: Path, result: RunResult, tracker: Any, *, smoke: bool, resume: bool, say: Callable
) -> None:
    """Evaluate and gate, register, try to promote; then mark the run finished (so --resume leaves it alone)."""
    run = result.run_dir
    if recipe.evaluation is not None:
        result.evaluation = evaluate_run(recipe, recipe_path, result, smoke=smoke, resume=resume, say=say)
        _record_cost(result)
        tracker.log_metrics(evaluation_metrics(result.evaluation))
        gate = result.evaluation.get("gate")
        tracker.set_tags({"tuneloop.gate": "none" if not gate else "passed" if gate["passed"] else "failed"})
        tracker.log_artifact(run.eval_dir, "eval")
        tracker.log_metrics(cost_metrics(result.cost))
        _log_eval_inputs(tracker, recipe, recipe_path, result.evaluation)
    if recipe.registry is not None:
        result.registration = register.register_run(run.path, recipe, tracker, smoke=smoke, say=say)
        if recipe.registry.promote == "auto":
            result.promotion = _auto_promote(recipe, recipe_path, result, smoke, say)
    result.summary.finished = True
    run.write_summary(result.summary)
    tracker.log_artifact(run.summary_file)


def _log_eval_inputs(tracker: Any, recipe: Recipe, recipe_path: Path, results: dict[str, Any]) -> None:
    """The rows each evaluation task scored, as dataset inputs (digest = fingerprint of the formatted rows)."""

    entry = (results.get("models") or [{}])[-1]
    by_name = {t.name: t for t in recipe.evaluation.tasks} if recipe.evaluation else {}
    for task, body in (entry.get("tasks") or {}).items():
        data, spec = body.get("data") or {}, by_name.get(task)
        source_spec = (spec.data if spec and spec.data else None) or recipe.data
        if not data.get("fingerprint") or source_spec is None:
            continue
        source = split_source(source_spec, data["split"], recipe_path.parent)
        name = f"{data['source']}" + (f"/{data['task']}" if data.get("task") else "") + f":{data['split']}"
        tracker.log_dataset_ref(name, data["fingerprint"], source, f"evaluation/{task}", data.get("rows"))


def _auto_promote(recipe: Recipe, recipe_path: Path, result: RunResult, smoke: bool, say: Callable) -> Any:
    """Champion if the run passed its own gate and (when there is a champion) the gate against it."""

    reg = result.registration
    assert reg is not None
    gate = (result.evaluation or {}).get("gate")
    own = "none" if not gate else "passed" if gate["passed"] else "failed"
    suite = from_recipe(recipe, recipe_path, smoke=smoke) if recipe.evaluation is not None else None
    return promote(
        reg.name, reg.version, suite=suite, rules=recipe.promotion_gate() if suite else [], own_gate=own, say=say
    )


def _record_cost(result: RunResult) -> None:
    """Add the evaluation's cost to the run summary, next to training's, and the total."""
    training = result.summary.cost.get("training") or {}
    evaluation = total([m.get("cost") for m in (result.evaluation or {}).get("models", [])])
    result.summary.cost = {"training": training, "evaluation": evaluation, "total": total([training, evaluation])}
    result.run_dir.write_summary(result.summary)


def gate_failure(evaluation: dict[str, Any] | None) -> str | None:
    """Why the gate failed (every failed rule with both values and the CI), or None when it passed or is absent."""
    gate = (evaluation or {}).get("gate")
    if not gate or gate["passed"]:
        return None
    failed = [r for r in gate["rules"] if not r["passed"]]
    lines = "\n".join(f"  {r['rule']}: {r['detail']}" for r in failed)
    return f"gate failed ({len(failed)} of {len(gate['rules'])} rules):\n{lines}"


def evaluate_run(
    recipe: Recipe, recipe_path: Path, result: RunResult, *, smoke: bool, resume: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    """Baseline and trained model on the recipe's suite, written to <run>/eval (kept on --resume)."""

    ev = recipe.evaluation
    assert ev is not None
    out_dir = result.run_dir.eval_dir
    done = result.run_dir.results()
    if resume and done is not None:
        say(f"evaluation already finished in {out_dir}; keeping it")
        return done
    suite = from_recipe(recipe, recipe_path, smoke=smoke)
    tasks = suite.tasks
    models = []
    if ev.baseline is not None:
        baseline = _baseline_ref(recipe, result, ev.baseline)
        label = ev.baseline.removeprefix("stage:") if ev.baseline.startswith("stage:") else ev.baseline
        models.append(ModelSpec(label, baseline))
    models.append(ModelSpec("fine-tuned", str(result.model_dir)))
    say(f"[bold]evaluating[/] {' and '.join(m.label for m in models)} on {len(tasks)} task(s)")
    results = run_suite(suite, models, out_dir, gate=ev.gate or None, say=say)
    _remember_registered(results, out_dir, suite)
    return results


def _remember_registered(results: dict[str, Any], out_dir: Path, suite: Any) -> None:
    """A baseline that is a registered version (`models:/NAME@champion`) is cached as that version's evaluation,
    so promoting against it does not evaluate it again. Never fails the run: the cache only saves time."""

    for entry in results.get("models", [])[:-1]:  # the last one is the model this run trained
        found = registered_from(entry["path"]) if entry.get("path") else None
        if found and found.get("name") and found.get("version"):
            with contextlib.suppress(Exception):
                remember_result(str(found["name"]), str(found["version"]), results, out_dir, entry["label"], suite)


def _baseline_ref(recipe: Recipe, result: RunResult, baseline: str) -> str:
    """`base` is what training started from: the smoke copy, or for a registry alias the version it resolved
    to then (the alias may have moved since). `stage:NAME` is the model an earlier stage of this run produced
    (what `sft → dpo` is judged against)."""
    if baseline.startswith("stage:"):
        name = baseline.removeprefix("stage:")
        return result.summary.stage(name).model_dir
    if baseline != "base":
        return baseline
    smoke_base = result.run_dir.smoke_base
    if (smoke_base / "config.json").exists():
        return str(smoke_base)
    started = result.summary.base_model
    if started.get("registry"):
        return f"models:/{started['registry']}"
    return recipe.base_model.name


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
