"""`tuneloop feedback create|list|status|close|export` and `tuneloop feedback raters add|list|disable`
(added to the main app by tuneloop.cli; heavy imports stay inside the verbs)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneloop.cli.kit import JsonOpt, err, fail, needs_extra, out, print_json, say
from tuneloop.untrusted import safe, visible

app = typer.Typer(
    help="Human feedback: campaigns of model answers, raters, agreement and rankings, exports to TRL datasets.",
    no_args_is_help=True,
)
raters_app = typer.Typer(help="Rater accounts of the feedback app (argon2-hashed passwords).", no_args_is_help=True)
app.add_typer(raters_app, name="raters")
app.callback()(needs_extra("feedback", "tuneloop feedback"))

CampaignArg = Annotated[str, typer.Argument(help="Campaign name, as `tuneloop feedback list` shows it.")]


def _guard(fn):
    """Turn tuneloop's own errors into `error: ...` and exit 1 (exit 2 for invalid campaign files)."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from tuneloop.config.errors import RecipeError
        from tuneloop.errors import TuneloopError

        try:
            return fn(*args, **kwargs)
        except RecipeError as e:
            for p in e.problems:
                err.print(visible(p), markup=False)
            err.print(f"[red]{len(e.problems)} problem(s) in the campaign[/]")
            raise typer.Exit(2) from None
        except TuneloopError as e:
            fail(str(e), 1, e)

    return run


@app.command("validate")
@_guard
def validate(path: Annotated[Path, typer.Argument(help="Campaign YAML file.")], as_json: JsonOpt = False) -> None:
    """Check a campaign file without generating anything (exit 2 on problems, each as `file:line key: reason`)."""
    from tuneloop.config.errors import RecipeError
    from tuneloop.recipes import load_campaign

    try:
        c = load_campaign(path)
    except RecipeError as e:
        if not as_json:
            raise
        print_json({"file": str(path), "ok": False, "problems": [p.as_dict() for p in e.problems]})
        raise typer.Exit(2) from None
    if as_json:
        print_json({"file": str(path), "ok": True, "problems": []})
        return
    out.print(f"[green]ok[/] {safe(path)}: campaign {safe(c.name)}, {len(c.models)} models, overlap {c.overlap}")


@app.command("create")
@_guard
def create(path: Annotated[Path, typer.Argument(help="Campaign YAML file (configs/feedback/*.yaml).")]) -> None:
    """Generate every model's answers ahead of time, add gold items, and store the campaign."""
    from tuneloop import db
    from tuneloop.feedback import campaigns
    from tuneloop.recipes import load_campaign

    c = load_campaign(path)
    campaigns.create(c, path, say=say)
    out.print(f"stored in {db.shown_url()}; raters: `tuneloop feedback raters add NAME`")


@app.command("list")
@_guard
def list_(as_json: JsonOpt = False) -> None:
    """Campaigns in the feedback store."""
    from tuneloop.feedback import store

    campaigns = store.list_campaigns()
    if as_json:
        print_json(campaigns)
        return
    if not campaigns:
        out.print("no campaigns yet: `tuneloop feedback create configs/feedback/FILE.yaml` makes one")
    for c in campaigns:
        out.print(f"{safe(c['name'])}  {c['status']}  created {c['created_at']:%Y-%m-%d %H:%M}")


@app.command("status")
@_guard
def status(
    name: CampaignArg,
    as_json: Annotated[bool, typer.Option("--json", help="Everything as JSON.")] = False,
) -> None:
    """Progress, agreement (Krippendorff's alpha, Cohen's kappa), Bradley–Terry ranking with CIs, position bias
    and raters' reliability on gold items."""
    from tuneloop.feedback import campaigns

    rep = campaigns.report(name)
    if as_json:
        print(json.dumps(_clean(rep), allow_nan=False))
        return
    out.print(f"[bold]{safe(name)}[/]: {rep['items']} items ({rep['gold_items']} gold), {rep['overlap']} raters each")
    for task, t in rep["tasks"].items():
        out.print(f"  {safe(task)}: {t['votes']} votes, {t['complete_items']} items complete")
    if rep["raters"]:
        out.print("  votes per rater: " + ", ".join(f"{safe(r)} {n}" for r, n in sorted(rep["raters"].items())))
    for key, a in rep.get("agreement", {}).items():
        observed = f", observed {a['observed']:.0%}" if a.get("observed") is not None else ""
        note = f" — {safe(a['note'])}" if a.get("note") else ""
        out.print(f"  agreement ({safe(key)}): Krippendorff's alpha {_ci(a)}{observed}{note}")
    if "position_bias" in rep:
        out.print(f"  P(left answer wins): {_ci(rep['position_bias'])}")
    if rep.get("ranking"):
        table = Table("rank", "model", "score [95% CI]", "wins", "losses", "ties", title="Bradley–Terry ranking")
        for r in rep["ranking"]:
            ci = f"{r['score']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}]"
            table.add_row(str(r["rank"]), safe(r["name"]), ci, str(r["wins"]), str(r["losses"]), str(r["ties"]))
        out.print(table)
    for rater, g in sorted(rep["raters_gold"].items()):
        flag = " [red]flagged[/]" if g["flagged"] else ""
        out.print(f"  gold {safe(rater)}: {g['correct']}/{g['gold_items']} {_ci(g['accuracy'])}{flag}")


def _ci(e: dict) -> str:
    if e["value"] is None or (isinstance(e["value"], float) and math.isnan(e["value"])):
        return "n/a"
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] (n={e['n']})"


def _clean(value):
    """NaN (an undefined statistic) becomes null, so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)


@app.command("serve")
@_guard
def serve(
    name: CampaignArg,
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (0.0.0.0 for the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the rater app.")] = 7860,
) -> None:
    """The rater app (Gradio): raters log in with their accounts and judge one item at a time; admins also see
    progress, agreement, the ranking and flagged raters."""
    from tuneloop.feedback import app as rater_app
    from tuneloop.feedback import store

    store.campaign(name)  # a clear error before the server starts
    out.print(
        f"rater app for {name} at http://{host}:{port} (accounts: tuneloop feedback raters add NAME)", markup=False
    )
    rater_app.serve(name, host, port)


@app.command("close")
@_guard
def close(name: CampaignArg) -> None:
    """Stop taking votes (stored votes stay)."""
    from tuneloop.feedback import store

    store.close_campaign(name)
    out.print(f"campaign {safe(name)} closed")


@app.command("export")
@_guard
def export(
    name: CampaignArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="dpo, kto, reward or sft.")],
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (train.jsonl, dataset/).")],
    include_flagged: Annotated[
        bool, typer.Option("--include-flagged", help="Keep votes of raters flagged on gold items.")
    ] = False,
) -> None:
    """Votes as a TRL dataset with provenance; use the directory as a recipe's `data: {source: DIR}`."""
    from tuneloop.feedback.export import export as run_export

    m = run_export(name, fmt, out_dir, include_flagged or None)
    excluded = f"; excluded flagged raters: {', '.join(m['excluded_raters'])}" if m["excluded_raters"] else ""
    done = f"{m['rows']} {fmt} rows from {m['votes_used']} votes → {out_dir} (fingerprint {m['fingerprint']})"
    out.print(visible(done + excluded), markup=False)


@raters_app.command("add")
@_guard
def raters_add(
    name: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option("--role", help="rater or admin.")] = "rater",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (scripts, CI).")
    ] = False,
) -> None:
    """Create an account; the password is asked for (or read from stdin) and stored only as an argon2 hash."""
    from tuneloop.feedback import store

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    store.add_rater(name, password, role)
    out.print(f"rater {safe(name)} added ({safe(role)})")


@raters_app.command("list")
@_guard
def raters_list(as_json: JsonOpt = False) -> None:
    """Rater accounts, their role, and whether they may still log in."""
    from tuneloop.feedback import store

    raters = store.list_raters()
    if as_json:
        print_json(raters)
        return
    if not raters:
        out.print("no raters yet: `tuneloop feedback raters add NAME` creates one")
    for r in raters:
        state = f"disabled {r['disabled_at']:%Y-%m-%d}" if r["disabled_at"] else "active"
        out.print(f"{safe(r['name'])}  {safe(r['role'])}  {state}")


@raters_app.command("disable")
@_guard
def raters_disable(name: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Stop a rater from logging in; their votes stay."""
    from tuneloop.feedback import store

    store.disable_rater(name)
    out.print(f"rater {safe(name)} disabled")
