"""`tuneloop serve ...`: the endpoint, its API keys and its request log (added to the main app by tuneloop.cli).

`tuneloop serve MODEL` is `tuneloop serve start MODEL`: the group routes anything that is not one of its
sub-commands to `start`, so the common case stays one word long.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneloop.cli.kit import JsonOpt, err, fail, implied_verb, needs_extra, out, print_json, say
from tuneloop.untrusted import safe, visible

app = typer.Typer(
    cls=implied_verb("start"),
    help="Serve registered models behind an OpenAI-compatible endpoint (vLLM), with API keys and a request log. "
    "`tuneloop serve MODEL` starts it; `keys` and `requests` manage it.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="API keys of the endpoint (salted hashes in the workspace database).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.callback()(needs_extra("serve", "tuneloop serve"))


@app.command("start")
def start(
    models: Annotated[
        list[str], typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, a path or a built-in.")
    ],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A configs/serve/*.yaml file.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="vllm | transformers | auto (default).")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="merged (default) | multi-lora.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Listen port (default 8000; 0 = any free).")] = None,
    follow: Annotated[
        str | None, typer.Option("--follow", help="Alias to follow, e.g. champion: swap on moves.")
    ] = None,
    poll: Annotated[float | None, typer.Option("--poll", help="Seconds between registry reads for --follow.")] = None,
    name: Annotated[list[str] | None, typer.Option("--name", help="Model name clients send (one per MODEL).")] = None,
    engine_arg: Annotated[
        list[str] | None, typer.Option("--engine-arg", "-e", help="A vLLM flag as key=value (repeatable).")
    ] = None,
    auth: Annotated[bool | None, typer.Option("--auth/--no-auth", help="Require API keys (default: yes).")] = None,
    request_log: Annotated[
        bool | None, typer.Option("--request-log/--no-request-log", help="Log requests to the workspace database.")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help="Largest request body accepted (default 8 MiB); else 413.")
    ] = None,
) -> None:
    """Serve MODEL(s) at http://HOST:PORT/v1 until Ctrl-C; exit 1 (with the engine's last log lines) if the engine
    dies."""
    from tuneloop.config.errors import RecipeError
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.config import load_serve_config
    from tuneloop.serve.endpoint import run

    overrides = {
        "engine": engine,
        "mode": mode,
        "host": host,
        "port": port,
        "follow": follow,
        "poll_interval_s": poll,
        "auth": auth,
        "request_log": request_log,
        "max_body_bytes": max_body_bytes,
    }
    try:
        cfg = load_serve_config(config, overrides, engine_arg or [])
    except RecipeError as e:
        for p in e.problems:
            err.print(visible(p), markup=False)
        raise typer.Exit(2) from None
    from tuneloop.models.refs import check_reference

    try:
        for ref in models:  # before any engine starts
            check_reference(ref, Path.cwd())
        code = run(models, cfg, name, say=say)
    except ValueError as e:  # a malformed models:/ reference
        fail(str(e), 2, e)
        return
    except TuneloopError as e:
        fail(str(e), 1, e)
        return
    except KeyboardInterrupt:
        err.print("interrupted: engine stopped")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the key (an app, a team).")],
    rpm: Annotated[
        int | None, typer.Option("--rpm", help="Requests per minute (default: the server's; 0 = none).")
    ] = None,
) -> None:
    """Create a key and print it once (store it in your secret manager; only its salted hash is kept)."""
    from tuneloop import db
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.store import create_key

    try:
        secret, key = create_key(name, rpm)
    except TuneloopError as e:
        fail(str(e), 2, e)
        return
    err.print(f"created key {key.id} ({safe(key.name)}) in {safe(db.shown_url())}; it is shown once:")
    print(secret)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Keys with their id, name, rate limit and status (never the secret)."""
    from tuneloop import db
    from tuneloop.serve.store import list_keys

    keys = list_keys()
    if as_json:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "rpm": k.rpm,
                "created_at": k.created_at.isoformat(),
                "created_by": k.created_by,
                "revoked": k.revoked_at is not None,
            }
            for k in keys
        ]
        print_json(rows)
        return
    if not keys:
        out.print(f"no API keys yet in {safe(db.shown_url())}: `tuneloop serve keys create NAME` makes one")
        return
    table = Table(title=f"API keys ({safe(db.shown_url())})")
    for col in ("id", "name", "requests/min", "created", "by", "status"):
        table.add_column(col)
    for k in keys:
        status = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        rpm = "server default" if k.rpm is None else ("unlimited" if k.rpm == 0 else str(k.rpm))
        table.add_row(f"tlk_{k.id}", safe(k.name), rpm, f"{k.created_at:%Y-%m-%d %H:%M}", safe(k.created_by), status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (tlk_<id>, <id>, or the whole key).")],
) -> None:
    """Revoke a key: running endpoints refuse it within seconds (401); its logged requests are kept."""
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.store import revoke_key

    try:
        key = revoke_key(key_id)
    except TuneloopError as e:
        fail(str(e), 1, e)
        return
    out.print(f"revoked tlk_{key.id} ({safe(key.name)})")


@app.command("requests")
def requests_log(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many (newest first).")] = 20,
    key: Annotated[str | None, typer.Option("--key", help="Only this key id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Full records as JSON lines (one per request).")] = False,
) -> None:
    """The request log: who asked what, which version answered, how fast, how many tokens."""
    from tuneloop import db
    from tuneloop.serve.store import recent

    rows = recent(limit, key.removeprefix("tlk_") if key else None)
    if as_json:
        for r in rows:
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}))
        return
    if not rows:
        out.print(f"no requests logged yet in {db.shown_url()}" + (f" for key {key}" if key else ""), markup=False)
        return
    table = Table(title=f"requests ({safe(db.shown_url())})")
    for col in ("time", "key", "model", "endpoint", "status", "latency", "tokens in/out", "prompt", "output"):
        table.add_column(col, overflow="fold")
    for r in rows:
        body = json.loads(r["request"])
        prompt = body.get("prompt") if "prompt" in body else (body.get("messages") or [{}])[-1].get("content")
        table.add_row(
            f"{r['ts']:%H:%M:%S}",
            f"tlk_{r['key_id']}" if r["key_id"] else "-",
            # the model name is what the client sent (an unknown one is logged too), prompts and outputs are theirs
            safe(f"{r['model']}/{r['version']}" if r["version"] else r["model"]),
            safe(r["endpoint"]),
            str(r["status"]),
            f"{r['latency_ms']:.0f} ms",
            f"{r['prompt_tokens']}/{r['completion_tokens']}",
            _short(prompt),
            _short(r["output"] if r["status"] == 200 else r["error"]),
        )
    out.print(table)


def _short(text: object, n: int = 60) -> str:
    """The start of a client's text, safe to print as a table cell."""
    s = "" if text is None else str(text).replace("\n", " ")
    return safe(s if len(s) <= n else s[: n - 1] + "…")
