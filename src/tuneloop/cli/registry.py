"""`tuneloop registry ...`: thin verbs over tuneloop.registry, added to the main app by tuneloop.cli (errors follow
the CLI's `--debug`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli.kit import JsonOpt, fail, out, print_json, say, say_err
from tuneloop.rundir import RESULTS
from tuneloop.untrusted import safe

app = typer.Typer(
    help="The model registry (MLflow): versions, lineage, `@champion`/`@challenger`, promotion through the gate.",
    no_args_is_help=True,
)


RefArg = Annotated[str, typer.Argument(help="NAME/VERSION, NAME@VERSION or NAME@ALIAS (models:/ prefix optional).")]


def _registry(call):
    """Run a registry verb with user errors as one line (exit 1), bad references as exit 2."""
    from tuneloop.errors import TuneloopError

    try:
        return call()
    except ValueError as e:
        fail(str(e), 2, e)
    except TuneloopError as e:
        fail(str(e), 1, e)


@app.command("list")
def registry_list(as_json: JsonOpt = False) -> None:
    """Registered models with their champion, challenger and latest version."""
    from tuneloop.registry.views import models, models_table
    from tuneloop.tracking import store

    if not store.exists():  # nothing registered yet, and a look creates no store
        if as_json:
            print_json([])
        else:
            out.print("no registered models yet: a recipe with `registry:` registers one")
            out.print(f"store: {safe(store.registry_uri())}")
        return
    if as_json:
        _registry(lambda: print_json(models(store.client())))
        return
    table = _registry(lambda: models_table(store.client()))
    out.print(table if table.row_count else "no registered models yet: a recipe with `registry:` registers one")
    out.print(f"store: {safe(store.registry_uri())}")


@app.command("show")
def registry_show(
    ref: Annotated[str, typer.Argument(help="NAME (all versions) or NAME/VERSION, NAME@ALIAS (one version).")],
    as_json: JsonOpt = False,
) -> None:
    """A registered model's versions (aliases, key metrics with 95% CIs, gate, cost, parent) and alias history,
    or one version in full."""
    from tuneloop.models.registered import get_version, registered_model
    from tuneloop.models.uri import parse_model_uri
    from tuneloop.registry import aliases
    from tuneloop.registry.views import history_table, version_record, version_table, versions_table
    from tuneloop.tracking import store

    def show() -> None:
        uri = parse_model_uri(ref, need_version=False)
        c = store.client()
        if uri.version or uri.alias:
            mv = get_version(uri)
            if as_json:
                print_json(version_record(mv))
            else:
                out.print(version_table(c, mv))
            return
        registered_model(c, uri.name)  # a clear error for an unknown name
        if as_json:
            versions = sorted(c.search_model_versions(f"name='{uri.name}'"), key=lambda v: -int(v.version))
            history = aliases.history(c, uri.name)
            print_json({"name": uri.name, "versions": [version_record(v) for v in versions], "history": history})
            return
        out.print(versions_table(c, uri.name))
        out.print(history_table(c, uri.name))

    _registry(show)


@app.command("lineage")
def registry_lineage(ref: RefArg, as_json: JsonOpt = False) -> None:
    """The chain from a version back through its parent versions to the base model, with data fingerprints,
    recipe, code commit, gate, metrics and cost at every step."""
    from tuneloop.models.uri import parse_model_uri
    from tuneloop.registry.lineage import chain, tree
    from tuneloop.registry.views import version_record

    if as_json:
        _registry(lambda: print_json([version_record(mv) for mv in chain(parse_model_uri(ref))]))
        return
    _registry(lambda: out.print(tree(parse_model_uri(ref))))


@app.command("history")
def registry_history(
    name: Annotated[str, typer.Argument(help="Registered model name.")], as_json: JsonOpt = False
) -> None:
    """Every alias move (register, promote, forced promote, rollback) with who, why and the gate's verdict."""
    from tuneloop.registry import aliases
    from tuneloop.registry.views import history_table
    from tuneloop.tracking import store

    if as_json:
        _registry(lambda: print_json(aliases.history(store.client(), name)))
        return
    _registry(lambda: out.print(history_table(store.client(), name)))


@app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Option("--version", help="Version to promote to @champion.")],
    force: Annotated[bool, typer.Option("--force", help="Skip the gate (needs --reason; recorded).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why: recorded in the alias history.")] = None,
    suite: Annotated[
        str | None, typer.Option("--suite", help="Judge on this suite or recipe instead of the version's recipe.")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="transformers | vllm for any evaluation.")] = None,
) -> None:
    """Move `@champion` to VERSION if it passes its recipe's gate against the current champion (same suite, paired
    bootstrap; cached evaluations reused). Exit 3 when the gate refuses it."""
    from tuneloop.registry.promotion import promote

    def run() -> None:
        from tuneloop.eval import suite as evsuite

        chosen = evsuite.load(suite) if suite else None
        rules = chosen.gate if chosen and chosen.gate else None  # a suite file has no gate: the version's recipe
        decision = promote(
            name, version, suite=chosen, rules=rules, force=force, reason=reason, backend=backend, say=say
        )
        _print_decision(decision)
        if not decision.promoted and "already the champion" not in decision.reason:
            raise typer.Exit(3)

    _registry(run)


def _print_decision(decision) -> None:
    if decision.gate is not None and decision.report is not None:
        from tuneloop.eval.summary import print_summary

        print_summary(json.loads((decision.report / RESULTS).read_text()), out)
    if decision.promoted:
        was = f" (was version {decision.previous})" if decision.previous else ""
        out.print(
            f"[green]@champion → models:/{safe(decision.name)}/{safe(decision.version)}[/]{safe(was)}: "
            + safe(decision.reason)
        )
    else:
        why = decision.reason.removeprefix("not promoted: ")
        out.print(f"[yellow]models:/{safe(decision.name)}/{safe(decision.version)} not promoted[/]: {safe(why)}")
    if decision.report:
        out.print(f"report: {decision.report / 'report.html'}", markup=False)


@app.command("rollback")
def registry_rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why: recorded in the alias history.")] = None,
) -> None:
    """Move `@champion` back to the previous champion (from the alias history)."""
    from tuneloop.registry.promotion import rollback

    _registry(lambda: _print_decision(rollback(name, reason)))


@app.command("pull")
def registry_pull(ref: RefArg) -> None:
    """Download a registered version into the workspace cache (verified against its recorded hash) and print
    the directory, which transformers and peft load."""
    from tuneloop.models.registered import materialize

    _registry(lambda: print(materialize(ref, say=say_err)))


@app.command("register")
def registry_register(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (training done; eval/ if evaluated).")],
) -> None:
    """Register a run trained elsewhere (`accelerate launch ... -m tuneloop.train`, then `tuneloop eval --suite RECIPE
    -m BASE -m RUN_DIR --output RUN_DIR/eval`) under its recipe's `registry.name`. Idempotent: a run registered
    before gets its existing version."""
    from tuneloop.registry.register import register_existing_run

    def run() -> None:
        reg = register_existing_run(run_dir, say=say)
        again = "" if reg.created else " (already registered: same version)"
        out.print(f"[bold]registered[/] {safe(reg.uri)}{again}")

    _registry(run)
