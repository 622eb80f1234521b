"""The `tuneloop` command: the only face of the package. One module per command group, over one small kit
(`kit`: consoles, `fail()` with its exit codes, shared options); domain packages expose functions and typed results
and never import the CLI. Heavy imports happen inside the verbs, so `tuneloop --help` starts without torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tuneloop import __version__, extras, workspace
from tuneloop.cli import (
    data,
    evaluation,
    feedback,
    kit,
    loop,
    models,
    monitor,
    project,
    registry,
    serve,
    sweep,
    training,
)

kit.no_flag_types()
app = typer.Typer(
    cls=kit.Root,
    context_settings=kit.HELP,
    help="Fine-tune, evaluate, register, serve and retrain language models from one recipe.\n\n"
    "Exit codes: 0 ok, 1 failure, 2 usage or validation error, 3 a gate refused, 4 a loop round stopped.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.command()(project.init)
app.add_typer(models.app, name="models")
app.add_typer(project.app, name="configs")
for _name, _group in (
    ("registry", registry),
    ("serve", serve),
    ("data", data),
    ("feedback", feedback),
    ("sweep", sweep),
    ("monitor", monitor),
    ("loop", loop),
):
    app.add_typer(_group.app, name=_name)
app.command()(training.validate)
app.command()(training.train)
app.command()(training.run)
app.command("eval")(evaluation.eval_)


def _version(shown: bool) -> None:
    if shown:
        kit.out.print(f"tuneloop {__version__}")
        raise typer.Exit()


# commands that never write to a workspace: no note about creating one
STATELESS = {"validate", "init", "configs", "models"}


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks (anywhere on the command line).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    del debug, version  # declared for `--help`: kit.Root takes `--debug` from anywhere before parsing; -V is eager
    explicit = bool(os.environ.get("TUNELOOP_HOME"))  # a workspace named on purpose needs no note
    if (
        ctx.invoked_subcommand not in STATELESS
        and not explicit
        and not {"-h", "--help"} & set(sys.argv)
        and workspace.is_new()
    ):
        kit.err.print(
            f"note: no {workspace.DIRNAME} workspace in {Path.cwd()} or above; this command uses {workspace.home()} "
            "(`tuneloop init DIR` starts a project, TUNELOOP_HOME names a workspace)",
            markup=False,
        )


def main() -> None:
    try:
        app(prog_name="tuneloop")
    except extras.MissingExtra as e:  # raised below the command's own check (a postgresql:// URL, a prepare step)
        if kit.state["debug"]:
            raise
        kit.err.print(f"[red]error:[/] {escape(str(e))}")
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
