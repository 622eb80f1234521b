"""`tuneloop models pull | list`: the built-in base models in the user-level model cache."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneloop.cli.kit import JsonOpt, fail, out, print_json

app = typer.Typer(help="Base models: the built-in SmolLM2, local checkpoints, hub ids.", no_args_is_help=True)


@app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Built-in model name, e.g. smollm2-135m-instruct.")],
    force: Annotated[bool, typer.Option("--force", help="Convert again even if present.")] = False,
) -> None:
    """Download and convert a built-in model into the user-level model cache (a no-op when it is already there)."""
    from tuneloop.models import builtin

    if name not in builtin.BUILTIN_MODELS:
        fail(f"unknown built-in model {name!r}; available: {', '.join(builtin.BUILTIN_MODELS)}", 2)
    builtin.pull(name, force=force, log=out.print)


@app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Built-in models and whether they are in the model cache."""
    from tuneloop.models import builtin

    if as_json:
        print_json(
            [
                {
                    "name": name,
                    "description": spec.description,
                    "pulled": builtin.is_pulled(name),
                    "path": str(builtin.path(name)),
                }
                for name, spec in builtin.BUILTIN_MODELS.items()
            ]
        )
        return
    for name, spec in builtin.BUILTIN_MODELS.items():
        where = builtin.path(name) if builtin.is_pulled(name) else "not pulled (tuneloop models pull " + name + ")"
        out.print(f"{name}  {spec.description}\n    {where}")
