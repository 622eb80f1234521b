"""Evaluate models on a suite: the entry point behind `tuneloop eval` and the evaluation step of `tuneloop run`.

A suite comes from a suite file (`configs/eval/*.yaml`) or from a recipe's `evaluation:` section; in the latter
case tasks without their own `data` use the recipe's, so evaluation prompts are formatted exactly as training's.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config.evaluation import EvalTask, GateRule
from tuneloop.config.lifecycle import Cost
from tuneloop.config.loader import find_suite
from tuneloop.config.schema import Data
from tuneloop.config.yamlsource import load_located
from tuneloop.cost import recipe_price
from tuneloop.errors import TuneloopError, UsageError
from tuneloop.eval.gate import apply_gate
from tuneloop.eval.runner import ModelSpec, compare, evaluate_model, write_results
from tuneloop.eval.tasks import load_task
from tuneloop.models.loading import quiet_libraries
from tuneloop.recipes import load_recipe, load_suite


@dataclass
class Suite:
    name: str
    path: str | None
    tasks: list[EvalTask]
    default_data: Data | None
    base_dir: Path
    resamples: int = 1000
    backend: str = "transformers"
    gate: list[GateRule] | None = None
    baseline: str | None = None
    cost: Cost | None = None  # a recipe's pricing; suites alone use the detected device
    smoke: bool = False  # prepared data is built from the first rows only, as in the smoke run's training


SMOKE_EVAL_ROWS = 4
SMOKE_NEW_TOKENS = 8


def from_recipe(recipe: Any, recipe_path: Path, *, smoke: bool = False, base_dir: Path | None = None) -> Suite:
    """A recipe's `evaluation:` section as a suite; smoke runs shrink every task to a few rows and tokens."""
    ev = recipe.evaluation
    if ev is None:
        raise TuneloopError(f"{recipe_path}: the recipe has no `evaluation:` section")
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
    return Suite(
        recipe.name,
        str(recipe_path),
        tasks,
        recipe.data,
        base_dir or recipe_path.parent,
        100 if smoke else ev.resamples,
        ev.backend,
        ev.gate,
        ev.baseline,
        recipe.cost,
        smoke,
    )


def load(entry: str, near: Path | None = None) -> Suite:
    """A suite file (path or name under configs/eval/) or a recipe with an `evaluation:` section."""

    path = find_suite(entry, near or Path.cwd())
    if path is None:
        raise UsageError(f"no suite {entry!r}: give a suite file, a name under configs/eval/, or a recipe")
    raw, _ = load_located(path)
    if isinstance(raw, dict) and "stages" in raw:
        return from_recipe(load_recipe(path), path)
    suite = load_suite(path)
    return Suite(suite.name, str(path), suite.tasks, None, path.parent, suite.resamples)


def run_suite(
    suite: Suite,
    models: list[ModelSpec],
    out_dir: Path,
    *,
    backend: str | None = None,
    max_rows: int | None = None,
    gate: list[GateRule] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate each model on every task, compare later models with the first, gate the last, write reports."""

    quiet_libraries()
    price = recipe_price(suite.cost or Cost(), suite.base_dir)
    tasks = []
    for t in suite.tasks:
        if max_rows:
            t = t.model_copy(update={"max_rows": min(t.max_rows or max_rows, max_rows)})
        rows = load_task(t, suite.default_data, suite.base_dir, suite.smoke)
        most = max(map(len, rows.references), default=1) if rows.kind != "preference" else 1
        several = f", up to {most} references a row" if most > 1 else ""
        if several and rows.kind == "perplexity":
            several += " (perplexity scores the first)"
        say(f"task {t.name} ({rows.kind}): {len(rows.prompts)} rows of {rows.data['source']} {t.split}{several}")
        tasks.append(rows)
    runs = []
    with progress_bars() as progress:
        for spec in models:
            runs.append(
                evaluate_model(
                    spec,
                    tasks,
                    backend=backend or suite.backend,
                    base_dir=suite.base_dir,
                    resamples=suite.resamples,
                    say=say,
                    progress=progress,
                    price=None if spec.endpoint else price,
                )
            )
    comparisons = [c for run in runs[1:] for c in compare(runs[0], run, suite.resamples)]
    models_json = [r.entry for r in runs]
    verdict = apply_gate(gate, models_json, comparisons, runs[-1].entry["label"]) if gate else None
    info = {"name": suite.name, "path": suite.path, "tasks": [t.model_dump(mode="json") for t in suite.tasks]}
    return write_results(out_dir, info, runs, comparisons, verdict)


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich bar per (model, task) on a terminal; one line per task elsewhere (CI logs stay readable)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not sys.stdout.isatty():

        def plain(desc: str, total: int) -> Callable[[int], None]:
            print(f"{desc}: {total} rows", flush=True)
            return lambda _n: None

        yield plain
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(),
    )
    with bars:

        def live(desc: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(desc, total=total)
            return lambda n: bars.advance(task, n)

        yield live
