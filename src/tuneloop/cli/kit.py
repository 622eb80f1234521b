"""What every command shares: the two consoles, the one error path with its exit codes, the options that mean the
same everywhere, a group whose verb may be left out (`tuneloop serve MODEL` is `serve start MODEL`), and how a
file's problems are printed before exit 2.

Exit codes: 0 ok, 1 failure, 2 usage or validation error, 3 a gate refused, 4 a loop round stopped."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from tuneloop import extras
from tuneloop.config.errors import RecipeError
from tuneloop.errors import UsageError
from tuneloop.untrusted import safe, visible

HELP = {"help_option_names": ["-h", "--help"]}


class Root(TyperGroup):
    """The `tuneloop` group: `--debug` may stand anywhere before `--` (`tuneloop loop status X --debug` as well as
    `tuneloop --debug loop status X`), since users add it to the command that just failed."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        end = args.index("--") if "--" in args else len(args)
        # set on every invocation: tests and `python -m tuneloop.train` run several in one process
        state["debug"] = "--debug" in args[:end]
        if state["debug"]:
            args = [a for a in args[:end] if a != "--debug"] + args[end:]
        return super().parse_args(ctx, args)


def no_flag_types() -> None:
    """typer's help prints `<bool>` after every flag (`--json <bool>`), which reads as if it took a value; show
    flags bare, as click and argparse do. The `--help` conventions test fails if typer changes this."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def implied_verb(verb: str) -> type[TyperGroup]:
    """A typer group class that reads `GROUP ARG ...` as `GROUP VERB ARG ...` when ARG is not one of its verbs (nor
    --help), so options may come first too: `tuneloop serve --engine transformers MODEL`."""

    class Implied(TyperGroup):
        def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
            if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
                args = [verb, *args]
            return super().parse_args(ctx, args)

    return Implied


out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
state = {"debug": False}


def say(message: object) -> None:
    """A progress line on stdout (a `say=` callback): never markup, control characters written out, since such
    lines quote model, campaign and data names."""
    out.print(visible(message), markup=False)


def say_err(message: object) -> None:
    """`say` on stderr, for commands whose stdout is data (`--json`)."""
    err.print(visible(message), markup=False)


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: `stages.sft.args.learning_rate=1e-4` (repeatable)."),
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (for scripts and CI).")]


def print_json(value: Any) -> None:
    """Plain JSON on stdout (dates as ISO strings): never wrapped or styled, so `| jq` always works."""
    print(json.dumps(value, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def fail(message: str, code: int = 1, cause: BaseException | None = None) -> None:
    """One line on stderr and exit `code` (2 whatever `code` says when the cause is a UsageError); with `--debug`,
    the cause's traceback instead."""
    if state["debug"] and cause is not None:
        raise cause
    if isinstance(cause, UsageError):
        code = 2
    # messages are text (`tuneloop[serve]` is not a style) and may quote a client's or a file's words
    err.print(f"[red]error:[/] {safe(message)}")
    raise typer.Exit(code)


def need(extra: str, job: str) -> None:
    """Stop in one line (exit 2) when `extra` is not installed: `tuneloop sweep needs the 'sweep' extra: ...`."""
    try:
        extras.need(extra, job)
    except extras.MissingExtra as e:
        fail(str(e), 2, e)


def needs_extra(extra: str, job: str) -> Callable[[], None]:
    """A group's callback: every verb of the group needs `extra`, checked before the verb parses or imports
    anything. `--help` still works without it (typer runs a group's callback before the verb reads `--help`)."""

    def check() -> None:
        if not {"-h", "--help"} & set(sys.argv[1:]):
            need(extra, job)

    check.__doc__ = None  # the group's own help stays its help
    return check


def is_main_rank() -> bool:
    """Under `accelerate launch`, only rank 0 prints the run's tables."""
    return os.environ.get("RANK", "0") == "0"


def exit_with_problems(e: RecipeError, path: Path) -> None:
    """Every problem as `file:line key: reason`, a count, then exit 2 (what `tuneloop validate` exits with)."""
    for p in e.problems:
        err.print(visible(p), markup=False)
    err.print(f"[red]{len(e.problems)} problem(s) in {path}[/]")
    raise typer.Exit(2) from None


def load_recipe_or_exit(path: Path, overrides: list[str] | None, section: str | None = None) -> Any:
    """The recipe, or its problems printed and exit 2; with `section`, a recipe without that section (`loop`,
    `monitor`) is an error that points to the section's documentation."""
    from tuneloop.recipes import load_recipe

    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as e:
        exit_with_problems(e, path)
    if section is not None and getattr(recipe, section) is None:
        err.print(
            f"[red]error:[/] {path} has no `{section}:` section (see {SECTION_DOCS.get(section, 'docs/recipes.md')})"
        )
        raise typer.Exit(2)
    return recipe


SECTION_DOCS = {"loop": "docs/loop.md", "monitor": "docs/monitoring.md"}
