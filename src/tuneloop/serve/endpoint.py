"""The endpoint: registered models behind an OpenAI-compatible gateway, served by vLLM.

    client ──HTTP──▶ gateway (keys, 429, request log, metrics, swap) ──▶ engine: vLLM OpenAI server on 127.0.0.1
                                                                          (or `transformers serve`)

`run()` resolves the models (downloaded from the registry, adapters merged), binds the endpoint's port before the
engine starts (so a port clash fails in a second, not after the engine's minute of start-up), starts the engine,
waits for it, and serves until Ctrl-C, SIGTERM, or the engine's death (exit 1 with its last log lines).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.errors import TuneloopError
from tuneloop.models.registered import registered_model
from tuneloop.models.uri import parse_model_uri
from tuneloop.registry.aliases import current
from tuneloop.serve.config import ServeConfig
from tuneloop.serve.engine import Engine, choose_engine, resolve
from tuneloop.serve.follow import check_followable
from tuneloop.serve.gateway import Gateway
from tuneloop.serve.store import KeyRing, RequestLog
from tuneloop.tracking import store


def run(
    refs: list[str], config: ServeConfig, names: list[str] | None = None, say: Callable[[str], None] = print
) -> int:
    """Serve until stopped; the exit code (0 after a clean stop, 1 when the engine died)."""
    from tuneloop import db

    kind = choose_engine(config.engine, config.mode, say)
    keyring = None
    if config.auth:
        keyring = KeyRing()
        if keyring.active() == 0:
            raise TuneloopError(
                f"no API keys in {db.shown_url()}: create one with `tuneloop serve keys create NAME` (printed once), "
                "or serve without keys with --no-auth (anyone who reaches the port can use it)"
            )
    sock = _bind(config.host, config.port)
    try:
        deployment = _deployment(refs, config, names, say)
        for s in deployment.served:
            _say_format(s, say)
        serve_dir = workspace.home() / "serve" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
        engine = Engine(kind, deployment, config, serve_dir)
        say(f"starting the {kind} engine for {deployment.describe()}: {' '.join(engine.command())}")
        log = RequestLog(count_tokens=_token_counter()) if config.request_log else None
        try:
            engine.start()
            return asyncio.run(_serve(engine, config, keyring, log, sock, say))
        finally:
            engine.stop()
            if log is not None:
                log.close()
                if log.failed:
                    say(f"warning: {log.failed} request record(s) could not be written to {db.shown_url()}")
    finally:
        sock.close()


def _deployment(refs: list[str], config: ServeConfig, names: list[str] | None, say: Callable[[str], None]):

    pinned = None
    if config.follow:
        pinned = _alias_targets(refs, config.follow, say)
    deployment = resolve(refs, config.mode, names, pinned, say)
    if config.follow:
        check_followable(deployment, config.follow)
    return deployment


def _alias_targets(refs: list[str], alias: str, say: Callable[[str], None]) -> dict[str, str]:
    """Start on what the followed alias names now (`serve models:/q/1 --follow champion` serves the champion)."""

    c = store.client()
    out = {}
    for ref in refs:
        if not ref.startswith("models:/"):
            continue
        name = parse_model_uri(ref).name
        registered_model(c, name)  # a clear error for a name that is not registered
        version = current(c, name, alias)
        if version is None:
            say(f"{name} has no @{alias} yet: serving {ref}, and following @{alias} once it is set")
        else:
            out[name] = version
    return out


def _say_format(served: Any, say: Callable[[str], None]) -> None:
    """A model trained with a system prompt or a prompt template answers best when clients send the same."""
    fmt = (served.record or {}).get("format") or {}
    if fmt.get("system"):
        say(f"  {served.name} was trained with the system message {fmt['system']!r}: clients should send it too")
    prompt = fmt.get("prompt")
    if prompt and not re.fullmatch(r"\{\w+\}", prompt):  # a bare `{column}` is just the user's text
        say(f"  {served.name} was trained with user messages shaped {prompt!r}: clients should send them so")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it a keep-alive client waits ~40 ms per response (Nagle's
    # algorithm holding the body until the client's delayed ACK of the headers; measured, docs/benchmarks.md)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TuneloopError(
            f"cannot listen on {host}:{port}: {e.strerror} (another `tuneloop serve`? pick one with --port)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


async def _serve(
    engine: Any, config: ServeConfig, keyring: Any, log: Any, sock: socket.socket, say: Callable[[str], None]
) -> int:
    import uvicorn

    started = time.monotonic()
    await engine.wait_ready(config.startup_timeout_s, say)
    host, port = sock.getsockname()[:2]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    state_file = engine.log_dir / "serve.json"
    gateway = Gateway(config, engine, keyring, log, say, on_change=lambda g: _write_state(g, url, state_file))
    _write_state(gateway, url, state_file)
    server = uvicorn.Server(
        uvicorn.Config(
            gateway.app(),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(config.drain_timeout_s),
            backlog=2048,
        )
    )
    gateway.server = server
    say(
        f"serving {engine.deployment.describe()} at {url}/v1 ({engine.kind} engine ready in "
        f"{time.monotonic() - started:.0f} s, pid {engine.proc.pid}; log {engine.log_path})"
    )
    say(f'  openai client: OpenAI(base_url="{url}/v1", api_key=' + ("<your key>)" if keyring else '"none")'))
    notes = []
    if config.follow:
        notes.append(f"following @{config.follow} every {config.poll_interval_s:g} s")
    notes.append("request log on" if log is not None else "request log off")
    notes.append(f"metrics at {url}/metrics")
    say("  " + "; ".join(notes))
    try:
        await server.serve(sockets=[sock])
    finally:
        await gateway.stop_engines()
    if gateway.exit_code == 0:
        say("stopped")
    return gateway.exit_code


def _write_state(gateway: Any, url: str, path: Path) -> None:
    """serve.json beside the engine logs: where the endpoint is and what it serves (for operators and tests)."""
    e = gateway.engine
    state = {
        "url": url,
        "pid": os.getpid(),
        "engine": e.kind,
        "engine_pid": e.proc.pid if e.proc else None,
        "engine_url": e.url,
        "engine_log": str(e.log_path),
        "models": {s.name: {"ref": s.ref, "version": s.version, "path": str(s.path)} for s in e.deployment.served},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _token_counter() -> Callable[[dict[str, Any]], tuple[int | None, int | None]]:
    """Token counts for streams that carried no usage block, with the served model's tokenizer (in the log
    writer's thread, never on the request path)."""
    tokenizers: dict[str, Any] = {}

    def count(record: dict[str, Any]) -> tuple[int | None, int | None]:
        from transformers import AutoTokenizer

        path = record["tokenizer"]
        if path not in tokenizers:
            try:
                tokenizers[path] = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as e:  # tried once: rows keep empty counts instead of reloading each time
                print(f"warning: request log: no tokenizer at {path} to count streamed tokens: {e}", flush=True)
                tokenizers[path] = None
        tok = tokenizers[path]
        if tok is None:
            return None, None
        body = record["body"]
        if isinstance(body.get("messages"), list):
            ids = tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True)
            prompt = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        elif isinstance(body.get("prompt"), str):
            prompt = len(tok(body["prompt"])["input_ids"])
        else:
            prompt = None
        output = record.get("output")
        completion = len(tok(output, add_special_tokens=False)["input_ids"]) if output else 0
        return prompt, completion

    return count
