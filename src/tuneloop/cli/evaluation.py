"""`tuneloop eval`: score models on a suite (or compare two finished evaluations), tracked as an MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli.kit import err, fail, out
from tuneloop.config.errors import RecipeError
from tuneloop.rundir import RunDir


def eval_(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to evaluate: built-in name, local checkpoint or adapter, hub id, or a run directory. "
            "Repeat to compare: later models are compared with the first (paired bootstrap). With --endpoint: "
            "the served model name (default: the first it lists).",
        ),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option("--suite", help="Suite file, a name under configs/eval/ (`eval/synopsis`), or a recipe."),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for results and reports.")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="transformers | vllm (default: the suite's, else transformers).")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Evaluate an OpenAI-compatible server at this URL instead.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="OPENAI_API_KEY",
            help="Key for --endpoint (a `tuneloop serve` key: `tuneloop serve keys create`). Default: $OPENAI_API_KEY.",
            show_envvar=False,
        ),
    ] = None,
    max_rows: Annotated[int | None, typer.Option("--max-rows", help="Cap every task at N rows.")] = None,
    compare_: Annotated[
        list[Path] | None,
        typer.Option("--compare", help="Compare two finished evaluations: --compare DIR_A --compare DIR_B."),
    ] = None,
) -> None:
    """Score models on a suite: BLEU/chrF/ROUGE/similarity, classification metrics, perplexity, all with 95% CIs.

    Writes results.json, report.md and report.html. With several models (or --compare DIR_A --compare DIR_B) it
    reports each difference with its CI and a paired bootstrap p-value.
    """
    from tuneloop.errors import TuneloopError

    try:
        if compare_:
            _compare(compare_, output)
            return
        if not suite:
            fail("give --suite (a suite file, a name under configs/eval/, or a recipe)", 2)
        _evaluate(model or [], suite, output, backend, endpoint, max_rows, api_key)
    except RecipeError as e:
        for p in e.problems:
            err.print(str(p), markup=False)
        raise typer.Exit(2) from None
    except TuneloopError as e:
        fail(str(e), 1, e)


def _evaluate(models: list[str], suite_ref: str, output, backend, endpoint, max_rows, api_key=None) -> None:
    import time

    from tuneloop import workspace
    from tuneloop.eval import suite as evsuite
    from tuneloop.eval.runner import ModelSpec
    from tuneloop.eval.summary import print_summary

    if backend not in (None, "transformers", "vllm"):
        fail(f"--backend must be transformers or vllm, not {backend!r}", 2)
    if not models and not endpoint:
        fail("give --model (or --endpoint URL)", 2)
    loaded = evsuite.load(suite_ref)
    if not endpoint:  # before a tracking run opens or any data loads
        from tuneloop.models.refs import check_reference

        for m in models:
            check_reference(m, Path.cwd())
    if endpoint:  # reached, and its key accepted, before a tracking run opens
        from tuneloop.eval.backends import EndpointBackend

        for m in models or [None]:
            EndpointBackend(endpoint, m, api_key)
        specs = [ModelSpec(m, m, endpoint, api_key) for m in models] or [
            ModelSpec("served", "served", endpoint, api_key)
        ]
    else:
        specs = [ModelSpec(_label(m, models), m) for m in models]
    out_dir = output or workspace.home() / "evals" / loaded.name / time.strftime("%Y%m%d-%H%M%S")
    # a recipe's gate judges the last model against the first when there are two to compare
    gate = loaded.gate if len(specs) > 1 and loaded.gate else None
    tracker = _eval_tracker(loaded, out_dir, models, backend, endpoint, max_rows)
    try:
        results = evsuite.run_suite(
            loaded, specs, out_dir, backend=backend, max_rows=max_rows, gate=gate, say=out.print
        )
    except BaseException as e:
        tracker.finish("FAILED", e)
        raise
    from tuneloop.tracking import evaluation_metrics

    tracker.log_metrics(evaluation_metrics(results))
    tracker.log_artifact(out_dir, "eval")
    tracker.finish("FINISHED")
    print_summary(results, out)
    out.print(f"results: {out_dir / 'results.json'}\nreport:  {out_dir / 'report.html'}")
    from tuneloop.pipeline import gate_failure

    failure = gate_failure(results)
    if failure:
        fail(failure, 3)


def _eval_tracker(suite, out_dir: Path, models: list[str], backend, endpoint, max_rows):
    """`tuneloop eval` is tracked as its own MLflow run in the suite's experiment (a recipe's, for a recipe)."""
    import time

    from tuneloop.tracking import RunTracker

    tracker = RunTracker(None, suite.name, "eval", out.print)
    tracker.preflight()
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = {"tuneloop.suite": suite.name, "tuneloop.suite_path": str(suite.path)}
    tracker.begin(out_dir, f"eval/{time.strftime('%Y%m%d-%H%M%S')}", tags)
    params = {
        "models": json.dumps(models),
        "backend": backend or suite.backend,
        "endpoint": endpoint,
        "max_rows": max_rows,
        "suite": suite.name,
    }
    tracker.log_params({k: v for k, v in params.items() if v is not None})
    return tracker


def _label(ref: str, refs: list[str]) -> str:
    """Short, unique labels for tables: the last path part (`recipe/run` for a run directory), or the whole
    reference when that is ambiguous."""
    if ref.startswith("models:/"):
        return ref.removeprefix("models:/")
    path = Path(ref.rstrip("/"))
    short = path.name or ref
    if RunDir.holding(path) is not None:
        short = "/".join(path.parts[-2:])
    elif path.name == "model":
        short = "/".join(path.parts[-4:])
    others = [Path(r.rstrip("/")).name for r in refs if r != ref]
    return ref if short in others else short


def _compare(dirs: list[Path], output: Path | None) -> None:
    from tuneloop.eval.runner import compare, load_run, write_results
    from tuneloop.eval.summary import print_summary

    if len(dirs) != 2:
        fail("--compare takes two evaluation directories: --compare A --compare B", 2)
    a, b = load_run(dirs[0]), load_run(dirs[1])
    if a.entry["label"] == b.entry["label"]:
        b.entry["label"] += " (B)"
    comparisons = compare(a, b, 1000)
    out_dir = output or dirs[1] / "compare"
    suite = {"name": f"{dirs[0]} vs {dirs[1]}", "path": None, "tasks": []}
    results = write_results(out_dir, suite, [a, b], comparisons, None)
    print_summary(results, out)
    out.print(f"report: {out_dir / 'report.html'}")
