"""One CLI for users: every command's `--help` is walked and held to the same conventions, so a new command cannot
drift from the others (option names, `--json` where it lists or reports, `-h`, no `<bool>` after flags)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from tuneloop import __version__
from tuneloop.cli import app

# the verbs that list or report something a script may want to read
REPORTS = {"list", "show", "status", "history", "lineage", "best", "requests", "check", "validate"}
# one name per idea: the left-hand spellings were each used somewhere once
RENAMED = {"--out": "--output", "--last": "--limit", "-v": "--version (root) or nothing"}


def _commands() -> list[tuple[list[str], object]]:
    root = typer.main.get_command(app)
    ctx = root.make_context("tuneloop", [], resilient_parsing=True)

    def walk(group, path):  # type: ignore[no-untyped-def]
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            yield [*path, name], cmd
            if hasattr(cmd, "list_commands"):
                yield from walk(cmd, [*path, name])

    return list(walk(root, []))


COMMANDS = _commands()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), prog_name="tuneloop")


def test_the_walk_finds_every_group_and_verb():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "run", "eval", "registry promote", "serve keys create", "feedback raters list"} <= names
    assert len(names) > 40


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_follows_the_conventions(path, cmd):
    shown = invoke(*path, "-h")
    assert shown.exit_code == 0, shown.output
    assert "Usage: tuneloop " + " ".join(path) in " ".join(shown.output.split())
    assert "<bool>" not in shown.output  # a flag takes no value
    assert cmd.help, "every command says what it does"
    opts = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts + p.secondary_opts}
    assert not opts & RENAMED.keys(), {o: RENAMED[o] for o in opts & RENAMED.keys()}
    if path[-1] in REPORTS and not hasattr(cmd, "list_commands"):
        assert "--json" in opts, f"`tuneloop {' '.join(path)}` reports something: it takes --json"
    for p in cmd.params:  # a recipe is `recipe` wherever it is the positional argument
        if p.param_type_name == "argument" and "recipe" in (getattr(p, "help", "") or "").lower():
            assert p.name in ("recipe", "recipes", "target"), p.name


def test_no_two_commands_share_their_help():
    helps = [(cmd.help or "").strip() for _, cmd in COMMANDS]
    assert len(helps) == len(set(helps))


def test_version_and_short_help():
    assert invoke("--version").output.strip() == f"tuneloop {__version__}"
    assert invoke("-V").output.strip() == f"tuneloop {__version__}"
    root = invoke("-h")
    assert root.exit_code == 0 and "Exit codes: 0 ok, 1 failure, 2 usage" in " ".join(root.output.split())


def test_debug_is_accepted_anywhere_and_shows_the_cause():
    plain = invoke("eval", "--suite", "eval/no-such-suite", "-m", "x")
    assert plain.exit_code == 2 and "error: no suite 'eval/no-such-suite'" in plain.output
    for args in (
        ["--debug", "eval", "--suite", "eval/no-such-suite", "-m", "x"],
        ["eval", "--suite", "eval/no-such-suite", "--debug", "-m", "x"],
    ):
        debug = invoke(*args)
        assert type(debug.exception).__name__ == "UsageError", debug.output
    # the next command without --debug (in the same process, as under pytest) prints one line again
    assert invoke("eval", "--suite", "eval/no-such-suite", "-m", "x").exit_code == 2


def test_empty_lists_say_so_and_json_stays_json():
    assert "no requests logged yet" in invoke("serve", "requests").output
    for group in (
        ["feedback", "list"],
        ["feedback", "raters", "list"],
        ["registry", "list"],
        ["serve", "keys", "list"],
    ):
        shown = invoke(*group)
        assert shown.exit_code == 0 and "no " in shown.output.lower(), (group, shown.output)
        assert json.loads(invoke(*group, "--json").output) == []
