"""`tuneloop init` and `tuneloop configs list | path`: the shipped configs and recipes, for a project outside a clone.

tuneloop ships its launcher profiles, price table, evaluation suites, model defaults and example recipes inside the
package (tuneloop.shipped). Recipes find them without copying (`defaults: [models/smollm2-135m]`, `suite:
eval/synopsis`); what users edit (a price table, a launcher profile, a recipe) they copy with `init`, and a project's
own `configs/` then wins over the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from tuneloop import shipped
from tuneloop.cli.kit import JsonOpt, fail, out, print_json

app = typer.Typer(help="The configs tuneloop ships: launcher profiles, price table, suites, model defaults.")


def _first_comment(path: Path) -> str:
    """A config's own description: the first sentence of its leading comment (every shipped YAML has one)."""
    if path.suffix == ".json":  # DeepSpeed configs: JSON has no comments, so say what it sets
        zero = json.loads(path.read_text()).get("zero_optimization", {})
        offload = [k.removeprefix("offload_") for k in ("offload_optimizer", "offload_param") if k in zero]
        return f"DeepSpeed ZeRO stage {zero.get('stage')}" + (f", {' and '.join(offload)} offloaded" if offload else "")
    if path.suffix not in (".yaml", ".yml"):
        return ""
    words: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or (words and not line.strip("# ")):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    return text.split(". ")[0].removesuffix(".")


def init(
    directory: Annotated[Path, typer.Argument(help="Where the project goes (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that already exist.")] = False,
) -> None:
    """Start a project: copy the shipped configs/ and recipes/ into DIRECTORY and create its .tuneloop workspace.

    Existing files are kept unless --force. Commands run anywhere below DIRECTORY then use its workspace."""
    directory = directory.expanduser().resolve()
    written, kept = [], []
    for kind in ("configs", "recipes"):
        source = shipped.root() / kind
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            target = directory / kind / file.relative_to(source)
            if target.exists() and not force:
                kept.append(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            written.append(target)
    (directory / ".tuneloop").mkdir(parents=True, exist_ok=True)
    out.print(f"workspace {directory / '.tuneloop'}")
    out.print(f"copied {len(written)} files into {directory}/configs and {directory}/recipes", end="")
    out.print(f"; kept {len(kept)} that exist (--force overwrites them)" if kept else "")
    where = "" if directory == Path.cwd().resolve() else f"cd {directory} && "
    out.print(f"next: {where}tuneloop run recipes/quickstart.yaml --smoke")


@app.command("list")
def configs_list(as_json: JsonOpt = False) -> None:
    """Every shipped config, by the name recipes and commands use for it."""
    root = shipped.configs()
    rows = [
        {"name": str(p.relative_to(root).with_suffix("")), "path": str(p), "about": _first_comment(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("name", "about", box=None, pad_edge=False)
    for row in rows:
        table.add_row(row["name"], row["about"])
    out.print(table)
    out.print(f"in {root}")


@app.command("path")
def configs_path(
    name: Annotated[
        str | None, typer.Argument(help="A config name (`accelerate/zero3`, `cost/prices`); none: the directory.")
    ] = None,
) -> None:
    """Print a config's path: the project's own (a configs/ here or above) if it has one, else the shipped one.

    For launchers from any directory: `accelerate launch --config_file $(tuneloop configs path accelerate/zero3)
    -m tuneloop.train recipe.yaml`."""
    if name is None:
        print(shipped.configs())
        return
    from tuneloop.config.loader import find_default
    from tuneloop.config.trainer_fields import closest

    found = find_default(name, Path.cwd()) or find_default(f"{name}.json", Path.cwd())
    if found is None:
        names = sorted(str(p.relative_to(shipped.configs()).with_suffix("")) for p in shipped.configs().rglob("*.*"))
        close = closest(name, names)
        hint = f"; did you mean {close}?" if close else "; `tuneloop configs list` shows them all"
        fail(f"no config {name!r}{hint}", 2)
    print(found.resolve())
