"""The feedback store: raters, campaigns, items with their pre-generated responses, assignments and votes (the
queue that hands items out and takes votes is `feedback.queue`).

Tables live in the workspace database (tuneloop.db: SQLite by default, PostgreSQL through TUNELOOP_DATABASE_URL);
their schema is migration 0002. Three rules keep the votes trustworthy:

- a rater is shown an item at most once per task (an assignment row, unique per item, rater and task), and an
  item leaves every queue once it has `overlap` votes;
- a vote is tied to its assignment, so to the logged-in rater who was shown it, and stored once: the
  idempotency key (and the assignment) are unique, so a double click or a retried request returns the vote
  already stored;
- nothing is updated in place except a campaign's status and a rater's `disabled_at`.

Rater passwords are argon2id hashes (argon2-cffi): unlike API keys they are chosen by people, so guessable.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from tuneloop.db import metadata
from tuneloop.errors import TuneloopError

ROLES = ("rater", "admin")
TASKS = ("pairwise", "rating", "rewrite")
PAIRWISE_CHOICES = ("left", "right", "tie", "both_bad")
TS = DateTime(timezone=True)

raters = Table(
    "feedback_raters",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("disabled_at", TS, nullable=True),
)
campaigns = Table(
    "feedback_campaigns",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("spec", Text, nullable=False),  # the validated campaign as JSON
    Column("guidelines", Text, nullable=False),
    Column("guidelines_sha", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # open | closed
    Column("created_at", TS, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("closed_at", TS, nullable=True),
)
items = Table(
    "feedback_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", String(100), ForeignKey("feedback_campaigns.name"), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # queue order (gold items are shuffled in)
    Column("prompt", Text, nullable=False),  # JSON: chat messages or plain text
    Column("reference", Text, nullable=True),
    Column("source", Text, nullable=False),  # JSON: data source, split, row (lineage back to the prompt)
    Column("gold", Boolean, nullable=False),
    UniqueConstraint("campaign", "position", name="uq_feedback_items_position"),
)
responses = Table(
    "feedback_responses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("feedback_items.id"), nullable=False, index=True),
    Column("model", String(200), nullable=False),  # the campaign's label for the model
    Column("model_ref", String(500), nullable=False),
    Column("model_version", String(100), nullable=True),  # weights hash or registry version
    Column("text", Text, nullable=False),
    Column("tokens", Integer, nullable=True),
    Column("correct", Boolean, nullable=True),  # gold items: the answer a reliable rater prefers
    UniqueConstraint("item_id", "model", name="uq_feedback_responses_model"),
)
assignments = Table(
    "feedback_assignments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("feedback_items.id"), nullable=False),
    Column("rater", String(100), ForeignKey("feedback_raters.name"), nullable=False, index=True),
    Column("task", String(16), nullable=False),
    Column("left_id", Integer, ForeignKey("feedback_responses.id"), nullable=False),
    Column("right_id", Integer, ForeignKey("feedback_responses.id"), nullable=True),  # pairwise only
    Column("swapped", Boolean, nullable=False),  # left is not the first model in campaign order
    Column("shown_at", TS, nullable=False),
    UniqueConstraint("item_id", "rater", "task", name="uq_feedback_assignments_once"),
)
votes = Table(
    "feedback_votes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(64), nullable=False, unique=True),
    Column("assignment_id", Integer, ForeignKey("feedback_assignments.id"), nullable=False, unique=True),
    Column("campaign", String(100), nullable=False, index=True),
    Column("item_id", Integer, nullable=False),
    Column("rater", String(100), nullable=False),
    Column("task", String(16), nullable=False),
    Column("value", Text, nullable=False),  # JSON: {"choice", "winner"} | {"ratings": {...}} | {"rewrite"}
    Column("comment", Text, nullable=True),
    Column("guidelines_sha", String(16), nullable=False),
    Column("shown_at", TS, nullable=False),
    Column("submitted_at", TS, nullable=False),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _retry_locked(fn):
    """SQLite in WAL mode refuses a read transaction's upgrade to a write when another writer went first
    (SQLITE_BUSY without waiting); the whole transaction is then safe to run again, so it is, with a short backoff.
    PostgreSQL never gets here (its row locks wait)."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        for attempt in range(60):
            try:
                return fn(*args, **kwargs)
            except OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(min(0.005 * 2**attempt, 0.2) * (0.5 + random.random()))
        return fn(*args, **kwargs)

    return run


def _engine():
    from tuneloop import db

    return db.engine()


# ---- raters --------------------------------------------------------------------------------------------------


def add_rater(name: str, password: str, role: str = "rater") -> None:
    from argon2 import PasswordHasher

    if role not in ROLES:
        raise TuneloopError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise TuneloopError("a rater password needs at least 8 characters")
    row = {"name": name, "password_hash": PasswordHasher().hash(password), "role": role, "created_at": _now()}
    try:
        with _engine().begin() as conn:
            conn.execute(insert(raters).values(**row))
    except IntegrityError:
        raise TuneloopError(f"rater {name!r} exists already") from None


def list_raters() -> list[dict[str, Any]]:
    """Names, roles and dates; never the password hashes."""
    query = select(raters.c.name, raters.c.role, raters.c.created_at, raters.c.disabled_at).order_by(raters.c.name)
    with _engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def disable_rater(name: str) -> None:
    with _engine().begin() as conn:
        done = conn.execute(update(raters).where(raters.c.name == name).values(disabled_at=_now())).rowcount
    if not done:
        raise TuneloopError(f"no rater {name!r}")


def check_password(name: str, password: str) -> bool:
    """True for an enabled rater with this password (what the app's `auth` asks)."""
    from argon2 import PasswordHasher
    from argon2.exceptions import VerificationError

    with _engine().connect() as conn:
        row = conn.execute(select(raters).where(raters.c.name == name)).first()
    if row is None or row.disabled_at is not None:
        return False
    try:
        return PasswordHasher().verify(row.password_hash, password)
    except VerificationError:
        return False


def role(name: str) -> str | None:
    with _engine().connect() as conn:
        row = conn.execute(select(raters.c.role, raters.c.disabled_at).where(raters.c.name == name)).first()
    return None if row is None or row.disabled_at is not None else row.role


# ---- campaigns -----------------------------------------------------------------------------------------------


def guidelines_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_campaign(spec: dict[str, Any], guidelines: str, created_by: str, rows: list[dict[str, Any]]) -> int:
    """Store a campaign with its items and responses in one transaction (all or nothing); returns the items.
    `rows`: {prompt, reference, source, gold, responses: [{model, model_ref, model_version, text, tokens, correct}]}.
    """
    name = spec["name"]
    with _engine().begin() as conn:
        if conn.execute(select(campaigns.c.name).where(campaigns.c.name == name)).first():
            raise TuneloopError(
                f"campaign {name!r} exists already; its votes are kept. Give the new one another `name`"
            )
        conn.execute(
            insert(campaigns).values(
                name=name,
                spec=json.dumps(spec),
                guidelines=guidelines,
                guidelines_sha=guidelines_sha(guidelines),
                status="open",
                created_at=_now(),
                created_by=created_by,
            )
        )
        for position, row in enumerate(rows):
            item_id = conn.execute(
                insert(items).values(
                    campaign=name,
                    position=position,
                    prompt=json.dumps(row["prompt"]),
                    reference=row.get("reference"),
                    source=json.dumps(row["source"]),
                    gold=bool(row.get("gold")),
                )
            ).inserted_primary_key[0]
            for r in row["responses"]:
                conn.execute(insert(responses).values(item_id=item_id, **r))
    return len(rows)


def campaign(name: str) -> dict[str, Any]:
    with _engine().connect() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
    if row is None:
        raise TuneloopError(f"no campaign {name!r}; `tuneloop feedback list` shows the campaigns")
    out = dict(row._mapping)
    out["spec"] = json.loads(out["spec"])
    return out


def list_campaigns() -> list[dict[str, Any]]:
    with _engine().connect() as conn:
        rows = conn.execute(
            select(campaigns.c.name, campaigns.c.status, campaigns.c.created_at).order_by(campaigns.c.created_at)
        )
        return [dict(r._mapping) for r in rows]


def close_campaign(name: str) -> None:
    campaign(name)
    with _engine().begin() as conn:
        conn.execute(update(campaigns).where(campaigns.c.name == name).values(status="closed", closed_at=_now()))


def status(name: str) -> dict[str, Any]:
    """Counts for `feedback status` and the admin view: items, votes per task and rater, complete items."""
    spec = campaign(name)["spec"]
    overlap = spec["overlap"]
    with _engine().connect() as conn:
        n_items, n_gold = conn.execute(
            select(func.count(), func.coalesce(func.sum(items.c.gold.cast(Integer)), 0)).where(items.c.campaign == name)
        ).one()
        per_task = dict(
            conn.execute(
                select(votes.c.task, func.count()).where(votes.c.campaign == name).group_by(votes.c.task)
            ).all()
        )
        per_rater = dict(
            conn.execute(
                select(votes.c.rater, func.count()).where(votes.c.campaign == name).group_by(votes.c.rater)
            ).all()
        )
        counts = (
            select(votes.c.item_id, votes.c.task, func.count().label("n"))
            .where(votes.c.campaign == name)
            .group_by(votes.c.item_id, votes.c.task)
            .subquery()
        )
        complete = {
            task: n
            for task, n in conn.execute(
                select(counts.c.task, func.count()).where(counts.c.n >= overlap).group_by(counts.c.task)
            ).all()
        }
    tasks = active_tasks(spec)
    return {
        "campaign": name,
        "items": n_items,
        "gold_items": int(n_gold),
        "overlap": overlap,
        "tasks": {t: {"votes": per_task.get(t, 0), "complete_items": complete.get(t, 0)} for t in tasks},
        "raters": per_rater,
    }


def rater_votes(name: str, rater: str) -> int:
    """How many votes the rater has cast in the campaign (the app's progress line: one indexed count)."""
    with _engine().connect() as conn:
        return conn.execute(
            select(func.count()).select_from(votes).where(votes.c.campaign == name, votes.c.rater == rater)
        ).scalar_one()


def active_tasks(spec: dict[str, Any]) -> list[str]:
    t = spec["tasks"]
    return [
        name
        for name, on in (("pairwise", t["pairwise"]), ("rating", bool(t["rating"])), ("rewrite", t["rewrite"]))
        if on
    ]


def all_votes(name: str) -> list[dict[str, Any]]:
    """Every vote of a campaign with what statistics and exports need: the item, its gold flag, the responses."""
    with _engine().connect() as conn:
        rows = conn.execute(
            select(votes, items.c.gold).join(items, items.c.id == votes.c.item_id).where(votes.c.campaign == name)
        ).all()
    out = []
    for r in rows:
        d = dict(r._mapping)
        d["value"] = json.loads(d["value"])
        out.append(d)
    return out


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """A prompt as the rater app shows it: a chat prompt's user turns, a plain prompt as it is."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(turn["content"] for turn in prompt if turn.get("role") == "user")


def item_rows(name: str) -> dict[int, dict[str, Any]]:
    """Items with their responses, by item id."""
    with _engine().connect() as conn:
        found = {
            r.id: {**dict(r._mapping), "prompt": json.loads(r.prompt), "source": json.loads(r.source), "responses": {}}
            for r in conn.execute(select(items).where(items.c.campaign == name))
        }
        for r in conn.execute(
            select(responses).join(items, items.c.id == responses.c.item_id).where(items.c.campaign == name)
        ):
            found[r.item_id]["responses"][r.id] = dict(r._mapping)
    return found
