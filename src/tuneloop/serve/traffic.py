"""Served traffic as data: the prompts users sent and the answers they got, read back from the request log that
`tuneloop serve` writes. Feedback campaigns sample their prompts here (and the feedback loop and drift monitor
will), so what raters judge is what the endpoint was actually asked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from tuneloop.config.when import parse_when
from tuneloop.eval.backends import Prompt
from tuneloop.serve.store import requests, served_feedback
from tuneloop.serve.store import requests as table

ENDPOINTS = {"chat": "chat.completions", "completions": "completions"}  # as the gateway logs them


@dataclass
class Logged:
    """One successful request: the prompt as the model saw it, and what it answered."""

    id: int
    request_id: str
    ts: datetime
    endpoint: str
    model: str | None
    version: str | None
    prompt: Prompt
    output: str


def prompt_of(endpoint: str, body: dict[str, Any]) -> Prompt | None:
    """The prompt of a logged request body: chat turns up to the last user turn, or a completion's text.
    None for what cannot be replayed as one prompt (token-id prompts, batches, a dialogue not ending with
    the user, images)."""
    if endpoint == ENDPOINTS["chat"]:
        turns = []
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # OpenAI content parts: text only
                if any(isinstance(p, dict) and p.get("type") != "text" for p in content):
                    return None
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str) or m.get("role") not in ("system", "user", "assistant"):
                return None
            turns.append({"role": m["role"], "content": content})
        return turns if turns and turns[-1]["role"] == "user" else None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) and prompt else None


def read(
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    endpoints: list[str] | None = None,
) -> tuple[list[Logged], dict[str, int]]:
    """Successful requests (status 200, an output) in the window, oldest first, and how many rows were passed
    over and why (shown to the user, so an empty campaign explains itself)."""
    from tuneloop import db

    paths = [ENDPOINTS[e] for e in endpoints or list(ENDPOINTS)]
    q = select(table).where(table.c.endpoint.in_(paths)).order_by(table.c.id)
    if model:
        q = q.where(table.c.model == model)
    if since:
        q = q.where(table.c.ts >= parse_when(since))
    if until:
        q = q.where(table.c.ts <= parse_when(until))
    out: list[Logged] = []
    skipped = {"failed": 0, "no output": 0, "not replayable": 0}
    with db.engine().connect() as conn:
        for r in conn.execute(q).mappings():
            if r["status"] != 200 or r["error"]:
                skipped["failed"] += 1
                continue
            if not r["output"]:
                skipped["no output"] += 1
                continue
            try:
                prompt = prompt_of(r["endpoint"], json.loads(r["request"]))
            except (ValueError, AttributeError):
                prompt = None
            if prompt is None:
                skipped["not replayable"] += 1
                continue
            ts = r["ts"] if r["ts"].tzinfo else r["ts"].replace(tzinfo=UTC)  # SQLite drops the zone
            out.append(
                Logged(r["id"], r["request_id"], ts, r["endpoint"], r["model"], r["version"], prompt, r["output"])
            )
    return out, {k: v for k, v in skipped.items() if v}


def feedback_counts(model: str | None = None, since: datetime | None = None) -> dict[str, int]:
    """Thumbs up and down that applications sent (`POST /v1/feedback`) about requests served since `since` (the
    request's time, not the rating's), by `model` or by any: {"up": n, "down": n}. The online quality signal."""
    from tuneloop import db

    served = select(requests.c.id).where(requests.c.request_id == served_feedback.c.request_id)
    if model:
        served = served.where(requests.c.model == model)
    if since:
        # stored as UTC (SQLite keeps no zone); a naive time is UTC, as in parse_when
        served = served.where(requests.c.ts >= (since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)))
    # a semi-join: a request id a client reused is still one rating per rater, not one per logged row
    q = select(served_feedback.c.rating, func.count()).where(served.exists()).group_by(served_feedback.c.rating)
    counts = {"up": 0, "down": 0}
    with db.engine().connect() as conn:
        for rating, n in conn.execute(q):
            counts[rating] = n
    return counts
