"""The `tuneloop` command. Each verb is a thin call into a package; heavy imports happen inside the verbs,
so `tuneloop --help` and `tuneloop validate` start without importing torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuneloop.config.errors import RecipeError

app = typer.Typer(
    help="Fine-tune, evaluate, register, serve and retrain language models from one recipe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
models_app = typer.Typer(help="Base models: the built-in SmolLM2, local checkpoints, hub ids.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: `stages.sft.args.learning_rate=1e-4` (repeatable)."),
]
SmokeOpt = Annotated[
    bool, typer.Option("--smoke", help="Whole path on a tiny random model of the same architecture, few rows, 2 steps.")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the newest unfinished run of this recipe from its last checkpoint.")
]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Write the run here instead of the workspace.")]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    _state["debug"] = debug


def _fail(message: str, code: int = 1, cause: BaseException | None = None) -> None:
    if _state["debug"] and cause is not None:
        raise cause
    err.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _load(path: Path, overrides: list[str] | None):
    from tuneloop.config.loader import load_recipe

    try:
        return load_recipe(path, overrides)
    except RecipeError as e:
        for p in e.problems:
            err.print(str(p), markup=False)
        err.print(f"[red]{len(e.problems)} problem(s) in {path}[/]")
        raise typer.Exit(2) from None


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files to check.")],
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable results for CI.")] = False,
) -> None:
    """Check recipes completely (schema, files, data columns, trainer args) without loading a model.

    Exit code 2 when any recipe has a problem; every problem is listed as `file:line key.path: reason`.
    """
    from tuneloop.config.loader import load_recipe

    results = []
    for path in recipes:
        try:
            load_recipe(path, set_)
            results.append({"recipe": str(path), "ok": True, "problems": []})
        except RecipeError as e:
            results.append({"recipe": str(path), "ok": False, "problems": [p.as_dict() for p in e.problems]})
            if not as_json:
                for p in e.problems:
                    err.print(str(p), markup=False)
        else:
            if not as_json:
                out.print(f"[green]ok[/] {path}")
    if as_json:
        print(json.dumps(results, indent=2))
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)


def _train(recipe_path: Path, set_, smoke: bool, resume: bool, run_dir: Path | None, verb: str) -> None:
    recipe = _load(recipe_path, set_)
    from tuneloop.config.loader import resolved_yaml
    from tuneloop.errors import TuneloopError
    from tuneloop.train.progress import console, summary_table

    main = _is_main_rank()
    if main:
        console.rule(f"tuneloop {verb} {recipe_path}" + ("  (smoke)" if smoke else ""))
        console.print(resolved_yaml(recipe), markup=False, highlight=False)
    try:
        from tuneloop import pipeline

        result = pipeline.run(
            recipe,
            recipe_path,
            smoke=smoke,
            resume=resume,
            run_dir=run_dir,
            say=lambda m: console.print(m, highlight=False),
        )
    except TuneloopError as e:
        _fail(str(e), 1, e)
        return
    except ImportError as e:
        _fail(f"a package this recipe needs is missing: {e} (GPU machines: pip install 'tuneloop[gpu]')", 1, e)
        return
    if not main:
        return
    for s in result.stages:
        rows = [
            ("steps", str(s["steps"])),
            ("train loss", f"{_f(s['loss_first'])} → {_f(s['loss_last'])}"),
            ("eval loss", f"{_f(s['eval_loss_before'])} → {_f(s['eval_loss_after'])}")
            if s.get("eval_loss_after") is not None
            else ("eval loss", "no eval split"),
            (
                "tokens/s",
                f"{_f(s['tokens_per_s'])} ({s['train_tokens']} non-padding tokens; "
                f"{_f(s.get('tokens_per_s_after_first_step'))} after the first step)",
            ),
            ("train time", f"{s['train_runtime_s']:.1f} s"),
            (
                "processes",
                f"{s['world_size']}" + ("" if s["world_size"] == 1 else f" ({_sync_words(s['ranks_in_sync'])})"),
            ),
            ("model", s["model_dir"]),
        ]
        rows += [("note", n) for n in s.get("notes", [])]
        console.print(summary_table(f"stage {s['stage']} ({s['method']})", rows))
    console.print(f"run finished in {result.wall_s:.1f} s: {result.run_dir}")


def _sync_words(in_sync: bool | None) -> str:
    if in_sync is None:
        return "parameters sharded across ranks; replica check not applicable"
    return "weights identical on all ranks" if in_sync else "WEIGHTS DIFFER BETWEEN RANKS"


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _is_main_rank() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: ResumeOpt = False,
    run_dir: RunDirOpt = None,
) -> None:
    """Run the recipe's training stages in this process (or on every rank under `accelerate launch`)."""
    _train(recipe, set_, smoke, resume, run_dir, "train")


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: ResumeOpt = False,
    run_dir: RunDirOpt = None,
) -> None:
    """Run the whole recipe: prepare data, train every stage (evaluation and registration come next)."""
    _train(recipe, set_, smoke, resume, run_dir, "run")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Built-in model name, e.g. smollm2-135m-instruct.")],
    force: Annotated[bool, typer.Option("--force", help="Convert again even if present.")] = False,
) -> None:
    """Download and convert a built-in model into the workspace cache (a no-op when it is already there)."""
    from tuneloop.models import builtin

    if name not in builtin.BUILTIN_MODELS:
        _fail(f"unknown built-in model {name!r}; available: {', '.join(builtin.BUILTIN_MODELS)}", 2)
    builtin.pull(name, force=force, log=out.print)


@models_app.command("list")
def models_list() -> None:
    """Built-in models and whether they are in the workspace."""
    from tuneloop.models import builtin

    for name, spec in builtin.BUILTIN_MODELS.items():
        where = builtin.path(name) if builtin.is_pulled(name) else "not pulled (tuneloop models pull " + name + ")"
        out.print(f"{name}  {spec.description}\n    {where}")


def main() -> None:
    app(prog_name="tuneloop")


if __name__ == "__main__":
    sys.exit(main())
