"""Monitor checks in the workspace database (tuneloop.db, or the shared PostgreSQL): the record cooldowns and
schedules are computed from, and what `tuneloop monitor history` shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, String, Table, Text, insert, select

from tuneloop.db import metadata

DECISIONS = ("fired", "held", "none", "no traffic")

checks = Table(
    "monitor_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("monitor", String(100), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("requests", Integer, nullable=False),  # requests in the window
    Column("drift", Boolean, nullable=True),  # None: too little traffic to judge
    Column("embedding_auc", Float, nullable=True),
    Column("decision", String(16), nullable=False),  # fired | held (cooldown) | none | no traffic
    Column("reasons", Text, nullable=False),  # JSON list: the triggers that were met
    Column("report", Text, nullable=True),  # the check's report directory
)


def record(
    monitor: str,
    ts: datetime,
    requests: int,
    drift: bool | None,
    auc: float | None,
    decision: str,
    reasons: list[str],
    report: str | None,
) -> int:
    from tuneloop import db

    assert decision in DECISIONS, decision
    with db.engine().begin() as conn:
        row = conn.execute(
            insert(checks).values(
                monitor=monitor,
                ts=ts,
                requests=requests,
                drift=drift,
                embedding_auc=auc,
                decision=decision,
                reasons=json.dumps(reasons),
                report=report,
            )
        )
        return int(row.inserted_primary_key[0])


def history(monitor: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The monitor's checks, newest first."""
    from tuneloop import db

    q = select(checks).where(checks.c.monitor == monitor).order_by(checks.c.id.desc())
    if limit:
        q = q.limit(limit)
    with db.engine().connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        r["reasons"] = json.loads(r["reasons"])
        r["ts"] = r["ts"] if r["ts"].tzinfo else r["ts"].replace(tzinfo=UTC)  # SQLite drops the zone
    return rows


def last_fired(monitor: str) -> datetime | None:
    """When a trigger last fired (cooldowns, schedules and new-vote counts start there)."""
    from tuneloop import db

    q = select(checks.c.ts).where(checks.c.monitor == monitor, checks.c.decision == "fired")
    q = q.order_by(checks.c.id.desc()).limit(1)
    with db.engine().connect() as conn:
        ts = conn.execute(q).scalar()
    return None if ts is None else ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def first_check(monitor: str) -> datetime | None:
    from tuneloop import db

    q = select(checks.c.ts).where(checks.c.monitor == monitor).order_by(checks.c.id).limit(1)
    with db.engine().connect() as conn:
        ts = conn.execute(q).scalar()
    return None if ts is None else ts if ts.tzinfo else ts.replace(tzinfo=UTC)
