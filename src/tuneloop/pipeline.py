"""Run one recipe in order: prepare data → train stages → evaluate baseline and trained model → gate
(register and serve slot in after the gate)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config.schema import Recipe
from tuneloop.train import RunResult, train_recipe

SMOKE_EVAL_ROWS = 4
SMOKE_NEW_TOKENS = 8


def run(
    recipe: Recipe,
    recipe_path: Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    run_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    evaluate: bool = True,
) -> RunResult:
    """The whole recipe: its training stages, then (main process only) its evaluation and gate.

    `tuneloop train` (and `accelerate launch -m tuneloop.train`) pass evaluate=False: on a cluster every rank
    trains, and the suite runs afterwards with `tuneloop eval --suite RECIPE -m BASE -m RUN_DIR`.
    """
    result = train_recipe(recipe, recipe_path, smoke=smoke, resume=resume, run_dir=run_dir, say=say)
    if evaluate and recipe.evaluation is not None and _is_main():
        result.evaluation = evaluate_run(recipe, recipe_path, result, smoke=smoke, resume=resume, say=say or print)
        _record_cost(result)
    return result


def _record_cost(result: RunResult) -> None:
    """Add the evaluation's cost to the run summary, next to training's, and the total."""
    from tuneloop.cost import total
    from tuneloop.train import runs

    path = result.run_dir / runs.SUMMARY
    summary = json.loads(path.read_text())
    training = summary.get("cost", {}).get("training") or {}
    evaluation = total([m.get("cost") for m in (result.evaluation or {}).get("models", [])])
    summary["cost"] = {"training": training, "evaluation": evaluation, "total": total([training, evaluation])}
    runs.write_json(path, summary)
    result.cost = summary["cost"]


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
    from tuneloop.eval.runner import ModelSpec
    from tuneloop.eval.suite import Suite, run_suite

    ev = recipe.evaluation
    assert ev is not None
    out_dir = result.run_dir / "eval"
    done = out_dir / "results.json"
    if resume and done.is_file():
        say(f"evaluation already finished in {out_dir}; keeping it")
        return json.loads(done.read_text())
    tasks = ev.tasks
    if smoke:
        tasks = [
            t.model_copy(
                update={
                    "max_rows": SMOKE_EVAL_ROWS,
                    "generation": t.generation.model_copy(update={"max_new_tokens": SMOKE_NEW_TOKENS}),
                }
            )
            for t in tasks
        ]
    resamples = 100 if smoke else ev.resamples
    suite = Suite(
        recipe.name, str(recipe_path), tasks, recipe.data, recipe_path.parent, resamples, ev.backend, cost=recipe.cost
    )
    models = []
    if ev.baseline is not None:
        baseline = _baseline_ref(recipe, result, ev.baseline)
        models.append(ModelSpec("base" if ev.baseline == "base" else ev.baseline, baseline))
    models.append(ModelSpec("fine-tuned", str(result.model_dir)))
    say(f"[bold]evaluating[/] {' and '.join(m.label for m in models)} on {len(tasks)} task(s)")
    return run_suite(suite, models, out_dir, gate=ev.gate or None, say=say)


def _baseline_ref(recipe: Recipe, result: RunResult, baseline: str) -> str:
    if baseline != "base":
        return baseline
    smoke_base = result.run_dir / "smoke-base"
    return str(smoke_base) if (smoke_base / "config.json").exists() else recipe.base_model.name


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
