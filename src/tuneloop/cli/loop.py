"""`tuneloop loop`: run a feedback round (`tuneloop loop RECIPE`), and read the rounds (`status`, `history`).
Heavy imports happen inside the verbs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneloop.cli.kit import JsonOpt, fail, implied_verb, load_recipe_or_exit, need, out, print_json, say
from tuneloop.untrusted import safe, visible

app = typer.Typer(
    cls=implied_verb("run"),  # `tuneloop loop RECIPE` is `tuneloop loop run RECIPE`
    help="Feedback rounds: `tuneloop loop RECIPE` samples served traffic into a feedback campaign, waits for votes, "
    "retrains the champion on them, gates and promotes; `status` and `history` show the rounds.",
    no_args_is_help=True,
)
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a recipe key (`loop.votes.min=50`).")]
STATUS_STYLE = {"done": "green", "running": "cyan", "waiting": "yellow", "stopped": "red"}


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe with a `loop:` section.")],
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return at once when votes are still missing (run again later).")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Run the loop's open round, or start the next one, as far as it goes: campaign → votes → export → retrain →
    evaluate → gate → register → promote. A round interrupted at any step continues from that step."""
    need("feedback", "tuneloop loop")
    from tuneloop.errors import TuneloopError
    from tuneloop.loop.round import run_round

    loaded = load_recipe_or_exit(recipe, set_, "loop")
    try:
        rnd = run_round(loaded, recipe, overrides=set_, wait=not no_wait, say=say)
    except TuneloopError as e:
        fail(str(e), 1, e)
    _print_round(rnd)
    if rnd["status"] == "stopped":
        raise typer.Exit(4)


def _print_round(rnd: dict[str, Any]) -> None:
    s = rnd["state"]
    style = STATUS_STYLE.get(rnd["status"], "")
    out.print(f"round {rnd['number']}: [{style}]{safe(rnd['status'])}[/] (next step: {safe(rnd['step'])})")
    for key in ("campaign", "votes", "agreement", "rows", "version", "decision", "reason", "run_dir"):
        if s.get(key) not in (None, ""):
            value = f"{s[key]:.3f}" if isinstance(s[key], float) else s[key]
            out.print(visible(f"  {key}: {value}"), markup=False)  # a reason may quote a rater or a tag
    for d in s.get("deltas") or []:
        ci = f" (95% CI {d['ci'][0]:+.2f} … {d['ci'][1]:+.2f}, p {d['p_value']:.3g})" if d.get("ci") else ""
        out.print(visible(f"  {d['task']}/{d['metric']}: {d['b']} − {d['a']} = {d['diff']:+.2f}{ci}"), markup=False)
    total = (s.get("cost") or {}).get("total") or {}
    if total.get("money") is not None:
        parts = ", ".join(f"{k} {v.get('money', 0):.4g}" for k, v in s["cost"].items() if k != "total" and v)
        out.print(visible(f"  cost: {total['money']:.4g} {total.get('currency') or ''} ({parts})"), markup=False)


def _name(target: str, overrides: list[str] | None) -> str:
    """A loop's name from its recipe file, or the name itself."""
    path = Path(target)
    if path.is_file():
        from tuneloop.loop.round import loop_name

        return loop_name(load_recipe_or_exit(path, overrides, "loop"))
    return target


@app.command("status")
def status(
    target: Annotated[str, typer.Argument(help="The loop's recipe, or its name.")],
    as_json: JsonOpt = False,
    set_: SetOpt = None,
) -> None:
    """The loop's newest round: its step, votes, data, version and decision."""
    from tuneloop.loop import store

    rounds = store.history(_name(target, set_))
    if not rounds:
        out.print(f"no rounds yet for loop {safe(target)}: run `tuneloop loop RECIPE`")
        return
    if as_json:
        print_json(rounds[0])
    else:
        _print_round(rounds[0])


@app.command("history")
def history(
    target: Annotated[str, typer.Argument(help="The loop's recipe, or its name.")],
    as_json: JsonOpt = False,
    set_: SetOpt = None,
) -> None:
    """Every round of the loop, newest first, and the champion's alias history."""
    from tuneloop.loop import store

    name = _name(target, set_)
    rounds = store.history(name)
    if as_json:
        print_json(rounds)
        return
    if not rounds:
        out.print(f"no rounds yet for loop {safe(name)}")
        return
    table = Table(title=f"loop {safe(name)}", title_justify="left")
    for c in ("round", "started", "status", "step", "campaign", "votes", "rows", "version", "decision"):
        table.add_column(c)
    for r in rounds:
        s = r["state"]
        style = STATUS_STYLE.get(r["status"], "")
        table.add_row(
            str(r["number"]),
            r["started_at"].strftime("%Y-%m-%d %H:%M"),
            f"[{style}]{safe(r['status'])}[/]",
            safe(r["step"]),
            safe(s.get("campaign", "")),
            safe(s.get("votes", "")),
            safe(s.get("rows", "")),
            safe(s.get("version") or ""),
            safe(s.get("decision", "")),
        )
    out.print(table)
    from contextlib import suppress

    with suppress(Exception):  # the alias history needs the registry; rounds are shown either way
        from tuneloop.registry import aliases
        from tuneloop.tracking import store as tracking

        moves = [h for h in aliases.history(tracking.client(), rounds[0]["model"]) if h.get("alias") == "champion"]
        if moves:
            out.print("champion: " + " → ".join(safe(h.get("to")) for h in moves))
