"""Alias moves with a history MLflow does not keep, and a lock so concurrent promotions decide one at a time.

History: every move is written as registered-model tags `tuneloop.history.<ns-time>.<random>` — append-only,
ordered, shared through whatever MLflow store the team uses. A move is written twice: `started` before the alias
changes and `done` after, so a process killed in between leaves a visible `started` that reading reconciles
against the alias itself (moved: done; not moved: interrupted, no change).

Lock: MLflow has no compare-and-swap on aliases, but creating a registered model is atomic in every store
(unique name), so a promotion holds `<name>.tuneloop-lock` while it re-reads the champion and moves it. A lock
older than `STALE_S` (its holder died) is broken.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.registered import LOCK_SUFFIX
from tuneloop.tracking import store

HISTORY_PREFIX = "tuneloop.history."
CHAMPION = "champion"
CHALLENGER = "challenger"
STALE_S = 600


def who() -> str:
    """The person (or CI job) behind a move: TUNELOOP_USER, else the login name, with the host."""
    user = os.environ.get("TUNELOOP_USER") or _login()
    return f"{user}@{socket.gethostname()}"


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def current(c: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, as a string (MLflow returns ints here and strings elsewhere)."""
    version = c.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def move(
    c: Any,
    name: str,
    alias: str,
    version: str | None,
    action: str,
    *,
    reason: str | None = None,
    detail: str | None = None,
    forced: bool = False,
) -> dict[str, Any]:
    """Point `alias` at `version` (None removes it), recording who, why and what the gate said."""
    event_id = secrets.token_hex(4)
    before = current(c, name, alias)
    event = {
        "id": event_id,
        "alias": alias,
        "from": before,
        "to": None if version is None else str(version),
        "action": action,
        "by": who(),
        "reason": reason,
        "detail": detail,
        "forced": forced,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _append(c, name, {**event, "state": "started"})
    if version is None:
        if before is not None:
            store.retry(lambda: c.delete_registered_model_alias(name, alias))
    else:
        store.retry(lambda: c.set_registered_model_alias(name, alias, str(version)))
    _append(c, name, {"id": event_id, "state": "done"})
    return event


def _append(c: Any, name: str, record: dict[str, Any]) -> None:
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}.{secrets.token_hex(3)}"
    store.retry(lambda: c.set_registered_model_tag(name, key, json.dumps(record, separators=(",", ":"))))


def history(c: Any, name: str) -> list[dict[str, Any]]:
    """Every alias move, oldest first; `state` is done, or interrupted (the alias never moved)."""
    model = c.get_registered_model(name)
    records = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(HISTORY_PREFIX)]
    done = {r["id"] for r in records if r.get("state") == "done"}
    events = [r for r in records if r.get("state") == "started"]
    out = []
    for i, e in enumerate(events):
        e = {k: v for k, v in e.items() if k != "state"}
        if e["id"] in done:
            e["state"] = "done"
        else:
            later = [x for x in events[i + 1 :] if x["alias"] == e["alias"]]
            now = model.aliases.get(e["alias"])
            moved = not later and (None if now is None else str(now)) == e["to"]
            e["state"] = "done" if moved else "interrupted"
        out.append(e)
    return out


def champion_stack(c: Any, name: str) -> list[str]:
    """Champions in the order they took over, replaying the history (a rollback pops the newest)."""
    stack: list[str] = []
    for e in history(c, name):
        if e["alias"] != CHAMPION or e["state"] != "done":
            continue
        if e["action"] == "rollback":
            while stack and stack[-1] != e["to"]:
                stack.pop()
        elif e["to"] is not None:
            stack.append(str(e["to"]))
    return stack


@contextlib.contextmanager
def locked(c: Any, name: str, timeout_s: float = 300) -> Iterator[None]:
    """Hold the registered model's promotion lock (a registered model named `<name>.tuneloop-lock`)."""
    lock = name + LOCK_SUFFIX
    deadline = time.monotonic() + timeout_s
    holder = f"{who()} pid {os.getpid()}"
    while True:
        try:
            tags = {"tuneloop.lock.holder": holder, "tuneloop.lock.since": str(time.time())}
            note = f"tuneloop promotion lock of {name}; held by {holder}; safe to delete if no promotion is running"
            store.retry(lambda tags=tags, note=note: c.create_registered_model(lock, tags=tags, description=note))
            break
        except Exception as e:
            if not store.already_exists(e):
                raise
            _break_if_stale(c, lock)
            if time.monotonic() > deadline:
                raise TuneloopError(
                    f"{name}: another promotion has held the lock {lock!r} for over {timeout_s:.0f} s; if none is "
                    f"running, delete that registered model and try again"
                ) from None
            time.sleep(0.2 + secrets.randbelow(300) / 1000)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            store.retry(lambda: c.delete_registered_model(lock))


def _break_if_stale(c: Any, lock: str) -> None:
    try:
        since = float(c.get_registered_model(lock).tags.get("tuneloop.lock.since", "0"))
    except Exception:
        return  # released in the meantime
    if time.time() - since > STALE_S:
        with contextlib.suppress(Exception):
            c.delete_registered_model(lock)
