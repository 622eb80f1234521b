"""The rater's queue: which item a rater sees next for a task, and the vote that answers it.

Two rules keep the votes trustworthy (the tables are the store's): a rater is shown an item at most once per task
and an item leaves every queue once it has `overlap` votes — counted and inserted in one statement with the item
row locked, so concurrent raters cannot push it past its overlap; and a vote is tied to its assignment (so to the
logged-in rater who was shown it) and stored once, so a double click or a retried request returns the stored vote.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select
from sqlalchemy.exc import IntegrityError

from tuneloop.errors import TuneloopError
from tuneloop.feedback.store import (
    PAIRWISE_CHOICES,
    _engine,
    _now,
    _retry_locked,
    active_tasks,
    assignments,
    campaign,
    campaigns,
    items,
    responses,
    votes,
)


@dataclass
class Assignment:
    """One item shown to one rater for one task; `left`/`right` are what the rater sees (right: pairwise)."""

    id: int
    campaign: str
    item_id: int
    task: str
    prompt: Any
    left: str
    right: str | None
    guidelines_sha: str
    shown_at: datetime
    left_id: int = 0  # response ids: opaque to raters (never a model name), what a vote refers to
    right_id: int | None = None


@_retry_locked
def next_assignment(name: str, rater: str, task: str, seed: int | None = None) -> Assignment | None:
    """The rater's next item for `task`: the one already shown and not yet voted on, else the first item (queue
    order) the rater has not seen that still lacks `overlap` votes and is not held by enough open assignments.
    None when the rater has nothing left. Gold items are pairwise only."""
    info = campaign(name)
    spec = info["spec"]
    if info["status"] != "open":
        raise TuneloopError(f"campaign {name!r} is closed")
    if task not in active_tasks(spec):
        raise TuneloopError(f"campaign {name!r} has no {task} task; it has {', '.join(active_tasks(spec))}")
    with _engine().begin() as conn:
        open_one = conn.execute(
            select(assignments.c.id)
            .join(items, items.c.id == assignments.c.item_id)
            .outerjoin(votes, votes.c.assignment_id == assignments.c.id)
            .where(
                items.c.campaign == name,
                assignments.c.rater == rater,
                assignments.c.task == task,
                votes.c.id.is_(None),
            )
        ).first()
        if open_one is not None:
            return _load_assignment(conn, open_one.id, info)
        shown = select(assignments.c.item_id).where(assignments.c.rater == rater, assignments.c.task == task)
        # an item is taken by everyone it was shown to (voted or still open), so `overlap` raters see it
        taken = (
            select(assignments.c.item_id, func.count().label("n"))
            .where(assignments.c.task == task)
            .group_by(assignments.c.item_id)
            .subquery()
        )
        query = (
            select(items.c.id, items.c.gold)
            .outerjoin(taken, taken.c.item_id == items.c.id)
            .where(
                items.c.campaign == name,
                items.c.id.not_in(shown),
                func.coalesce(taken.c.n, 0) < spec["overlap"],
            )
            .order_by(items.c.position)
        )
        if task != "pairwise":
            query = query.where(items.c.gold.is_(False))
        for item in conn.execute(query.limit(20)).all():
            picked = _assign(conn, item.id, rater, task, spec, seed)
            if picked is not None:
                return _load_assignment(conn, picked, info)
    return None


def _assign(conn, item_id: int, rater: str, task: str, spec: dict[str, Any], seed: int | None) -> int | None:
    """Insert the assignment; None when the item filled up meanwhile or the same rater's concurrent request took
    it first."""
    rows = conn.execute(select(responses).where(responses.c.item_id == item_id).order_by(responses.c.id)).all()
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    if task == "pairwise":
        if len(rows) < 2:
            return None
        first, second = rng.sample(rows, 2) if len(rows) > 2 else (rows[0], rows[1])
        order = {r.id: i for i, r in enumerate(rows)}
        if order[first.id] > order[second.id]:
            first, second = second, first
        swapped = rng.random() < 0.5
        left, right = (second, first) if swapped else (first, second)
        values = {"left_id": left.id, "right_id": right.id, "swapped": swapped}
    else:
        values = {"left_id": rng.choice(rows).id, "right_id": None, "swapped": False}
    # Count and insert in one statement, after locking the item row (PostgreSQL; SQLite has one writer, and a
    # stale read fails the write, which _retry_locked repeats): two raters racing for the last free place of an
    # item cannot both get it, so `overlap` holds under any concurrency.
    conn.execute(select(items.c.id).where(items.c.id == item_id).with_for_update())
    taken = (
        select(func.count())
        .select_from(assignments)
        .where(assignments.c.item_id == item_id, assignments.c.task == task)
        .scalar_subquery()
    )
    row = {"item_id": item_id, "rater": rater, "task": task, "shown_at": _now(), **values}
    source = select(*(literal(v, assignments.c[k].type) for k, v in row.items())).where(taken < spec["overlap"])
    try:
        with conn.begin_nested():
            done = conn.execute(insert(assignments).from_select(list(row), source)).rowcount
    except IntegrityError:  # the same rater's concurrent request took this item first
        return None
    if not done:
        return None
    return conn.execute(
        select(assignments.c.id).where(
            assignments.c.item_id == item_id, assignments.c.rater == rater, assignments.c.task == task
        )
    ).scalar_one()


def _load_assignment(conn, assignment_id: int, info: dict[str, Any]) -> Assignment:
    a = conn.execute(select(assignments).where(assignments.c.id == assignment_id)).one()
    item = conn.execute(select(items).where(items.c.id == a.item_id)).one()
    texts = dict(
        conn.execute(
            select(responses.c.id, responses.c.text).where(responses.c.id.in_([a.left_id, a.right_id or -1]))
        ).all()
    )
    return Assignment(
        a.id,
        item.campaign,
        item.id,
        a.task,
        json.loads(item.prompt),
        texts[a.left_id],
        texts.get(a.right_id) if a.right_id else None,
        info["guidelines_sha"],
        a.shown_at,
        a.left_id,
        a.right_id,
    )


@_retry_locked
def record_vote(
    assignment_id: int, rater: str, value: dict[str, Any], idempotency_key: str, comment: str | None = None
) -> int:
    """Store the rater's vote on their assignment; the same key (or a second vote on the same assignment)
    returns the vote already stored instead of a duplicate."""
    with _engine().begin() as conn:
        a = conn.execute(
            select(assignments, items.c.campaign)
            .join(items, items.c.id == assignments.c.item_id)
            .where(assignments.c.id == assignment_id)
        ).first()
        if a is None or a.rater != rater:  # the same answer either way: a rater learns nothing of others' work
            raise TuneloopError(f"assignment {assignment_id} is not {rater}'s")
        stored = _validated(a, value)
        existing = _existing_vote(conn, idempotency_key, assignment_id)
        if existing is not None:
            return existing
        info = conn.execute(
            select(campaigns.c.guidelines_sha, campaigns.c.status).where(campaigns.c.name == a.campaign)
        ).one()
        if info.status != "open":
            raise TuneloopError(f"campaign {a.campaign!r} is closed; the vote was not stored")
        try:
            with conn.begin_nested():
                return conn.execute(
                    insert(votes).values(
                        idempotency_key=idempotency_key,
                        assignment_id=assignment_id,
                        campaign=a.campaign,
                        item_id=a.item_id,
                        rater=rater,
                        task=a.task,
                        value=json.dumps(stored),
                        comment=comment or None,
                        guidelines_sha=info.guidelines_sha,
                        shown_at=a.shown_at,
                        submitted_at=_now(),
                    )
                ).inserted_primary_key[0]
        except IntegrityError:  # a concurrent retry of the same vote won the race: return the one it stored
            return _existing_vote(conn, idempotency_key, assignment_id)


def _existing_vote(conn, idempotency_key: str, assignment_id: int) -> int | None:
    """The vote already stored under this key or for this assignment (one vote per assignment)."""
    return conn.execute(
        select(votes.c.id).where(
            (votes.c.idempotency_key == idempotency_key) | (votes.c.assignment_id == assignment_id)
        )
    ).scalar()


def _validated(a: Any, value: dict[str, Any]) -> dict[str, Any]:
    if a.task == "pairwise":
        choice = value.get("choice")
        if choice not in PAIRWISE_CHOICES:
            raise TuneloopError(f"a pairwise vote is one of {', '.join(PAIRWISE_CHOICES)}; got {choice!r}")
        winner = {"left": a.left_id, "right": a.right_id}.get(choice)
        return {"choice": choice, "winner": winner, "left": a.left_id, "right": a.right_id, "swapped": a.swapped}
    if a.task == "rating":
        ratings = value.get("ratings")
        if not isinstance(ratings, dict) or not ratings:
            raise TuneloopError("a rating vote needs `ratings`: {question: score}")
        bad = {q: s for q, s in ratings.items() if not isinstance(s, int) or not 1 <= s <= 5}
        if bad:
            raise TuneloopError(f"ratings are whole numbers from 1 to 5; got {bad}")
        return {"ratings": ratings, "response": a.left_id}
    text = value.get("rewrite")
    if not isinstance(text, str) or not text.strip():
        raise TuneloopError("a rewrite vote needs the rewritten answer (`rewrite`)")
    return {"rewrite": text.strip(), "response": a.left_id}
