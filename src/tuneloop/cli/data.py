"""`tuneloop data inspect|prepare` (added to the main app by tuneloop.cli; heavy imports stay inside the verbs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli.kit import SetOpt, fail, load_recipe_or_exit, need, out, say_err
from tuneloop.untrusted import safe, visible

app = typer.Typer(
    help="Look at data before training on it (`inspect`) and run a recipe's `data.prepare` steps (`prepare`).",
    no_args_is_help=True,
)
DEFAULT_TOKENIZER = "smollm2-135m-instruct"
SFT_MAX_LENGTH = 1024  # TRL SFTConfig's default max_length


def _is_recipe(target: str) -> bool:
    from tuneloop.config.yamlsource import parse

    path = Path(target)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        raw = parse(path.read_text())
    except Exception:  # not YAML: treat it as a data file and let the loader say what is wrong
        return False
    return isinstance(raw, dict) and "stages" in raw


def _recipe_target(path: Path, set_: list[str] | None, raw: bool):
    from tuneloop.data.inspect import Target

    recipe = load_recipe_or_exit(path, set_)
    if recipe.data is None:
        fail(f"{path}: the recipe has no top-level `data:` section to inspect")
    stage = recipe.stages[0]
    max_length = stage.args.get("max_length", SFT_MAX_LENGTH)
    data = recipe.data.model_copy(update={"prepare": []}) if raw else recipe.data
    return recipe, Target(data, path.parent, recipe.base_model.name, max_length, train_split=data.train_split)


@app.command("inspect")
def inspect_(
    target: Annotated[
        str,
        typer.Argument(
            help="A recipe (its data, after its prepare steps), a data file or "
            "directory, a built-in dataset or a hub id."
        ),
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where report.html/json go.")] = None,
    task: Annotated[str | None, typer.Option(help="Task of a built-in dataset (default: its first).")] = None,
    columns: Annotated[
        list[str] | None, typer.Option("--column", help="Text column to analyse (repeatable; default: prompt fields).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Column whose value balance to show (classification).")] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help=f"Model whose tokenizer counts tokens (default {DEFAULT_TOKENIZER}; a recipe "
            "uses its base model). `none` counts words."
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            help=f"Length that would be truncated (default: the recipe stage's max_length, else {SFT_MAX_LENGTH})."
        ),
    ] = None,
    threshold: Annotated[float, typer.Option(help="Jaccard threshold for near duplicates.")] = 0.8,
    raw: Annotated[bool, typer.Option("--raw", help="A recipe's source as it is, without its prepare steps.")] = False,
    max_rows: Annotated[
        int | None,
        typer.Option(
            "--max-rows", min=1, help="Inspect a seeded random sample of at most this many rows per split (quicker)."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Rows, lengths, truncation, duplicates, train/eval overlap, languages, labels and format problems per split,
    in the terminal and as report.html (plots) and report.json."""
    need("data", "tuneloop data inspect")
    from tuneloop.data.inspect import inspect
    from tuneloop.data.report import print_report, write_report
    from tuneloop.data.sources import raw_splits
    from tuneloop.errors import TuneloopError

    prepared_record = None
    if _is_recipe(target):
        recipe, spec = _recipe_target(Path(target), set_, raw)
        name = recipe.name
    else:
        spec, name = _source_target(target, task)
    if tokenizer is not None:
        spec.tokenizer = None if tokenizer == "none" else tokenizer
    if max_length is not None:
        spec.max_length = max_length
    spec.columns = columns or None
    spec.label, spec.threshold = label, threshold
    try:
        if spec.data.prepare:
            from tuneloop.data.prepare import prepare

            done = prepare(spec.data, spec.base_dir, say=say_err)
            splits = done.splits
            prepared_record = {"fingerprint": done.fingerprint, "steps": done.steps}
        else:
            splits = raw_splits(spec.data, spec.base_dir)
        if max_rows is not None:  # a sample, not the first rows: files are often sorted by source or by label
            sampled = {k: len(v) for k, v in splits.items() if len(v) > max_rows}
            splits = {k: v.shuffle(seed=0).select(range(max_rows)) if k in sampled else v for k, v in splits.items()}
        report = inspect(spec, splits, say=say_err)
        if max_rows is not None:
            report["sampled_from"] = sampled
    except TuneloopError as e:
        fail(str(e), cause=e)
    if prepared_record:
        report["prepared"] = prepared_record
    print_report(report, out)
    out_dir = output or Path.cwd() / "data-reports" / name
    paths = write_report(report, out_dir)
    out.print(f"report: {paths['html']}  (numbers: {paths['json']})", markup=False)


def _source_target(target: str, task: str | None):
    """A data file or directory, a built-in dataset (its first task unless --task) or a hub id, as an inspection
    target with the default tokenizer; and the report's folder name."""
    from tuneloop.config.schema import Data
    from tuneloop.data import builtin
    from tuneloop.data.inspect import Target
    from tuneloop.data.sources import source_kind

    kind = source_kind(target, Path())
    if kind == "builtin" and task is None:
        task = next(iter(builtin.info(target)["tasks"]))
        say_err(f"built-in dataset {target}: task {task} (choose with --task)")
    try:
        data = Data(source=target, task=task)
    except ValueError as e:
        fail(f"{target}: {e}")
    if kind == "files" and not any(p.exists() for p in _files(data)):
        fail(f"{target}: no such file or directory (or a hub id this machine cannot reach)")
    name = Path(target).stem if kind == "files" else target.replace("/", "--")
    return Target(data, Path(), DEFAULT_TOKENIZER, SFT_MAX_LENGTH), name


def _files(data) -> list[Path]:
    from tuneloop.data.sources import local_splits

    return list(local_splits(data.source, Path()).values())


@app.command("prepare")
def prepare_(
    recipe: Annotated[Path, typer.Argument(help="Recipe whose `data.prepare` steps to run.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the prepared dataset here (datasets.load_from_disk reads it)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every step.")] = False,
    set_: SetOpt = None,
) -> None:
    """Run the preparation steps alone: per-step counts, the fingerprint, and the dataset on disk."""
    from datasets import DatasetDict

    from tuneloop.data.prepare import describe, prepare
    from tuneloop.errors import TuneloopError

    loaded = load_recipe_or_exit(recipe, set_)
    sections = [("data", loaded.data)] + [(f"stages.{s.name}.data", s.data) for s in loaded.stages if s.data]
    sections = [(where, d) for where, d in sections if d is not None and d.prepare]
    if not sections:
        fail(f"{recipe}: no `prepare:` steps in the recipe's data sections", 2)
    results = []
    for where, data in sections:
        try:
            done = prepare(data, recipe.parent, say=say_err, use_cache=not no_cache)
        except TuneloopError as e:
            fail(f"{where}: {e}", cause=e)
        dest = (output or Path.cwd() / "prepared" / loaded.name) / (where if len(sections) > 1 else "")
        DatasetDict(done.splits).save_to_disk(str(dest))
        out.print(f"[bold]{safe(where)}[/] fingerprint {done.fingerprint}")
        for r in done.steps:
            out.print(visible(f"  {r['index'] + 1}. {describe(r)}"), markup=False)
        out.print(
            visible(f"  wrote {dest}: " + ", ".join(f"{s} {len(ds)}" for s, ds in done.splits.items())), markup=False
        )
        results.append({"section": where, "fingerprint": done.fingerprint, "steps": done.steps, "path": str(dest)})
        (dest / "prepare.json").write_text(json.dumps(results[-1], indent=2) + "\n")
