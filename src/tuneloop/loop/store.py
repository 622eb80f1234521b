"""Rounds and locks of `tuneloop loop`, in the workspace database (SQLite, or the PostgreSQL a team shares).

A round's `state` (JSON) holds what each finished step produced (campaign name, export directory, run directory,
registered version, decision); `step` is the next step to do, so a round killed anywhere continues there. The lock
is a row per registered model: inserting it is atomic on SQLite and PostgreSQL alike, so two machines cannot both
start a round; a holder that stops heartbeating (killed) is presumed dead after STALE_S and its lock is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Integer, String, Table, Text, UniqueConstraint, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tuneloop.db import metadata
from tuneloop.errors import TuneloopError

STEPS = ("campaign", "votes", "export", "train", "done")
HEARTBEAT_S = 30.0
STALE_S = 300.0

rounds = Table(
    "loop_rounds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("loop", String(100), nullable=False),
    Column("number", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # running | waiting | stopped | done
    Column("step", String(16), nullable=False),  # the next step to do (STEPS)
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("state", Text, nullable=False),  # JSON: what the finished steps produced
    UniqueConstraint("loop", "number"),
)
locks = Table(
    "loop_locks",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite keeps no zone


def _row(r: Any) -> dict[str, Any]:
    out = dict(r)
    out["state"] = json.loads(out["state"])
    out["started_at"], out["updated_at"] = _utc(out["started_at"]), _utc(out["updated_at"])
    return out


def open_round(loop: str, model: str) -> dict[str, Any]:
    """The loop's unfinished round (running, or waiting for votes), or a new one numbered after the last."""
    from tuneloop import db

    with db.engine().begin() as conn:
        last = conn.execute(select(rounds).where(rounds.c.loop == loop).order_by(rounds.c.number.desc()).limit(1))
        found = last.mappings().first()
        if found is not None and found["status"] in ("running", "waiting"):
            return _row(found)
        number = 1 if found is None else found["number"] + 1
        now = _now()
        conn.execute(
            insert(rounds).values(
                loop=loop,
                number=number,
                model=model,
                status="running",
                step=STEPS[0],
                started_at=now,
                updated_at=now,
                state="{}",
            )
        )
    return get_round(loop, number)


def get_round(loop: str, number: int) -> dict[str, Any]:
    from tuneloop import db

    with db.engine().connect() as conn:
        found = conn.execute(select(rounds).where(rounds.c.loop == loop, rounds.c.number == number)).mappings().first()
    if found is None:
        raise TuneloopError(f"loop {loop!r} has no round {number}")
    return _row(found)


def save(rnd: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Record a step's outcome: `changes` may set status, step, and state keys (merged)."""
    from tuneloop import db

    state = {**rnd["state"], **changes.pop("state", {})}
    values = {"state": json.dumps(state, default=str), "updated_at": _now(), **changes}
    with db.engine().begin() as conn:
        conn.execute(update(rounds).where(rounds.c.id == rnd["id"]).values(**values))
    return {**rnd, **changes, "state": state, "updated_at": values["updated_at"]}


def history(loop: str) -> list[dict[str, Any]]:
    from tuneloop import db

    with db.engine().connect() as conn:
        rows = conn.execute(select(rounds).where(rounds.c.loop == loop).order_by(rounds.c.number.desc()))
        return [_row(r) for r in rows.mappings()]


def previous_start(loop: str, number: int) -> datetime | None:
    """When the last finished round before `number` started: the next round judges traffic from there on (the
    traffic of a round that stopped for want of votes is offered again)."""
    from tuneloop import db

    q = select(rounds.c.started_at).where(rounds.c.loop == loop, rounds.c.number < number, rounds.c.status == "done")
    with db.engine().connect() as conn:
        ts = conn.execute(q.order_by(rounds.c.number.desc()).limit(1)).scalar()
    return None if ts is None else _utc(ts)


@contextlib.contextmanager
def locked(model: str, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> Iterator[str]:
    """Hold the model's round lock (raises TuneloopError naming the holder when another process has it);
    heartbeats in a thread so a long training step keeps it, and releases it on exit."""
    from tuneloop import db

    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = _now()
    with db.engine().begin() as conn:
        conn.execute(
            delete(locks).where(locks.c.model == model, locks.c.heartbeat_at < now - timedelta(seconds=stale_s))
        )
    try:
        with db.engine().begin() as conn:
            conn.execute(insert(locks).values(model=model, holder=holder, acquired_at=now, heartbeat_at=now))
    except IntegrityError:
        with db.engine().connect() as conn:
            other = conn.execute(select(locks).where(locks.c.model == model)).mappings().first()
        who = (
            f"{other['holder']} since {_utc(other['acquired_at']):%Y-%m-%d %H:%M:%S} UTC"
            if other
            else "another process"
        )
        raise TuneloopError(
            f"a round of {model} is already running ({who}); one round per model runs at a time. A holder that "
            f"stopped (killed) loses the lock {stale_s:.0f} s after its last heartbeat"
        ) from None
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            with contextlib.suppress(Exception), db.engine().begin() as conn:
                conn.execute(
                    update(locks).where(locks.c.model == model, locks.c.holder == holder).values(heartbeat_at=_now())
                )

    thread = threading.Thread(target=beat, name=f"loop-lock-{model}", daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        stop.set()
        thread.join(timeout=5)
        with db.engine().begin() as conn:
            conn.execute(delete(locks).where(locks.c.model == model, locks.c.holder == holder))
