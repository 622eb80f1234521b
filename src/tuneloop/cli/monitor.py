"""`tuneloop monitor`: check served traffic against the champion's training data and decide whether to retrain
(`tuneloop monitor RECIPE --once` for cron, Airflow or a Kubernetes CronJob; `--watch` as a service), and show the
checks (`history`). Heavy imports happen inside the verbs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneloop.cli.kit import (
    JsonOpt,
    err,
    fail,
    implied_verb,
    load_recipe_or_exit,
    need,
    needs_extra,
    out,
    print_json,
    say,
    say_err,
)
from tuneloop.untrusted import safe

app = typer.Typer(
    cls=implied_verb("check"),  # `tuneloop monitor RECIPE` is `tuneloop monitor check RECIPE`
    help="Drift and quality monitoring of served traffic: `tuneloop monitor RECIPE --once|--watch` runs checks "
    "from the recipe's `monitor:` section; `history` lists them.",
    no_args_is_help=True,
)
app.callback()(needs_extra("monitor", "tuneloop monitor"))
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a recipe key (`monitor.window.since=2h`).")
]
DECISION_STYLE = {"fired": "bold red", "held": "yellow", "none": "green", "no traffic": "dim"}


@app.command("check")
def check(
    recipe: Annotated[Path, typer.Argument(help="A recipe with a `monitor:` section.")],
    once: Annotated[bool, typer.Option("--once", help="One check, then exit (the default; for cron jobs).")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Check every `monitor.interval` until stopped.")] = False,
    interval: Annotated[str | None, typer.Option("--interval", help="--watch: time between checks (`5m`).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each check's report as JSON.")] = False,
    no_round: Annotated[
        bool, typer.Option("--no-round", help="Only check: do not start or continue the recipe's `loop:` round.")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Compare the traffic window with the reference, weigh the triggers (drift, new votes, thumbs-down share,
    schedule), apply the cooldown and record the decision with a report.html. When a trigger fires and the recipe
    has a `loop:` section, a feedback round starts; while one is open, every check moves it on as far as it can
    go without waiting (so `--once` from cron drives the whole loop)."""
    from tuneloop.config.sweep import duration_s
    from tuneloop.errors import TuneloopError
    from tuneloop.monitor.check import run_check

    if once and watch:
        fail("--once and --watch exclude each other", 2)
    loaded = load_recipe_or_exit(recipe, set_, "monitor")
    if loaded.loop is not None and not no_round:
        need("feedback", f"{recipe}'s `loop:` round (--no-round only checks)")
    try:
        pause = duration_s(interval or loaded.monitor.interval)
    except ValueError as e:
        fail(f"--interval: {e}", 2, e)
    tell = say_err if as_json else say
    while True:
        try:
            report = run_check(loaded, recipe, say=tell)
        except TuneloopError as e:
            if not watch:
                fail(str(e), 1, e)
            err.print(f"[red]error:[/] {safe(e)}")
            report = None
        if report is not None:
            if as_json:
                # ASCII only: the report quotes client prompts (most_unlike_reference), and a raw C1 byte would reach
                # the terminal (JSON escapes C0 characters, not those)
                report_json = json.dumps({k: v for k, v in report.items() if k != "plots_data"}, default=str)
                out.print_json(report_json, ensure_ascii=True)
            else:
                _print(report)
            if loaded.loop is not None and not no_round:
                _drive_round(loaded, recipe, set_, fired=report["decision"] == "fired", say=tell, watch=watch)
        if not watch:
            return
        try:
            time.sleep(pause)
        except KeyboardInterrupt:
            return


def _drive_round(recipe: Any, path: Path, overrides: list[str] | None, *, fired: bool, say: Any, watch: bool) -> None:
    """Start a round when a trigger fired, or move the open one on (never waiting for votes here)."""
    from tuneloop.errors import TuneloopError
    from tuneloop.loop import store as rounds
    from tuneloop.loop.round import loop_name, run_round

    latest = rounds.history(loop_name(recipe))[:1]
    if not fired and not (latest and latest[0]["status"] in ("running", "waiting")):
        return
    try:
        rnd = run_round(recipe, path, overrides=overrides, wait=False, say=say)
    except TuneloopError as e:
        if not watch:
            fail(f"the feedback round: {e}", 1, e)
        err.print(f"[red]error:[/] the feedback round: {safe(e)}")
        return
    say(f"round {rnd['number']}: {rnd['status']} (next step {rnd['step']})")


def _print(report: dict[str, Any]) -> None:
    style = DECISION_STYLE.get(report["decision"], "")
    reasons = "".join(f"\n  - {safe(r)}" for r in report["reasons"])  # they quote descriptor and rater names
    out.print(f"[{style}]decision: {safe(report['decision'])}[/]" + reasons)
    if report.get("held_until"):
        out.print(f"  held by the cooldown until {safe(report['held_until'])}")
    if report["embedding"]:
        e = report["embedding"]
        table = Table(title=f"drift: {len(report['descriptors'])} descriptors and the embeddings", title_justify="left")
        for c in ("test", "reference", "window", "p-value", "drift"):
            table.add_column(c)
        table.add_row("embedding ROC-AUC", "", f"{e['roc_auc']:.3f}", f"{e['p_value']:.2g}", _yes(e["drift"]))
        for d in report["descriptors"]:
            if "skipped" in d:
                table.add_row(safe(d["descriptor"]), "", "", "", f"skipped: {safe(d['skipped'])}")
            else:
                table.add_row(
                    safe(d["descriptor"]),
                    _short(d["reference"]),
                    _short(d["window"]),
                    f"{d['p_value']:.2g}",
                    _yes(d["drift"]),
                )
        out.print(table)
    out.print(f"report: {report['path']}/report.html", markup=False)


def _yes(flag: bool) -> str:
    return "[red]yes[/]" if flag else "no"


def _short(value: Any) -> str:
    """A descriptor's value as a safe table cell (a dict's keys are what traffic held, e.g. its languages)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return safe(", ".join(f"{k} {v}" for k, v in list(value.items())[:3]))
    return safe(value)


@app.command("history")
def history(
    recipe: Annotated[Path, typer.Argument(help="The monitor's recipe.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest checks shown.")] = 20,
    as_json: JsonOpt = False,
    set_: SetOpt = None,
) -> None:
    """The monitor's checks, newest first: window size, embedding AUC, decision and why."""
    from tuneloop.monitor import store
    from tuneloop.monitor.check import monitor_name

    loaded = load_recipe_or_exit(recipe, set_, "monitor")
    rows = store.history(monitor_name(loaded), limit=limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(
            f"no checks yet for monitor {monitor_name(loaded)}: run `tuneloop monitor {recipe} --once`", markup=False
        )
        return
    table = Table(title=f"monitor {safe(monitor_name(loaded))}", title_justify="left")
    for c in ("#", "checked", "requests", "ROC-AUC", "drift", "decision", "why"):
        table.add_column(c)
    for r in rows:
        auc = "" if r["embedding_auc"] is None else f"{r['embedding_auc']:.3f}"
        drift = "" if r["drift"] is None else ("yes" if r["drift"] else "no")
        style = DECISION_STYLE.get(r["decision"], "")
        table.add_row(
            str(r["id"]),
            r["ts"].strftime("%Y-%m-%d %H:%M"),
            str(r["requests"]),
            auc,
            drift,
            f"[{style}]{safe(r['decision'])}[/]",
            safe("; ".join(r["reasons"])),
        )
    out.print(table)
