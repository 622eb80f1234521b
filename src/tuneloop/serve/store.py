"""API keys, the request log and the ratings applications send about served answers, in the workspace database
(tuneloop.db).

Keys are random 32-byte secrets, so a salted SHA-256 is the right hash (slow password hashes protect guessable
secrets; these are not guessable, and a request cannot wait 50 ms for scrypt). The key id is part of the key
(`tlk_<id>_<secret>`), so a request is checked with one lookup and a constant-time compare. Only the salt and the
digest are stored: a lost key is revoked and replaced, never recovered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from tuneloop.db import metadata
from tuneloop.errors import TuneloopError
from tuneloop.registry.aliases import who

PREFIX = "tlk"

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("salt", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("rpm", Integer, nullable=True),  # requests per minute; None: the server's default; 0: unlimited
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

requests = Table(
    "requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("key_id", String(16), nullable=True, index=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(200), nullable=True, index=True),
    Column("version", String(64), nullable=True),  # the registered version that answered
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),  # time to the first streamed chunk
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("usage_source", String(16), nullable=True),  # engine (its usage block) | gateway (counted afterwards)
    Column("request", Text, nullable=False),  # the request body as JSON (prompt or messages, parameters)
    Column("output", Text, nullable=True),  # the generated text (first choice)
    Column("error", Text, nullable=True),
)

ANONYMOUS_ONLY = {f"{d}_where": text("key_id IS NULL") for d in ("sqlite", "postgresql")}
served_feedback = Table(
    "served_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),  # the rated request; indexed by the unique constraint
    Column("key_id", String(16), nullable=True),  # who rated it; None on an endpoint without keys
    Column("rating", String(8), nullable=False),  # up | down
    Column("comment", Text, nullable=True),
    Column("ts", DateTime(timezone=True), nullable=False),  # of the (latest) rating
    UniqueConstraint("request_id", "key_id", name="uq_served_feedback_rating"),
    # NULLs are distinct to the constraint above: one rating per request on an endpoint without keys (0006)
    Index("uq_served_feedback_anonymous", "request_id", unique=True, **ANONYMOUS_ONLY),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


@dataclass
class Key:
    id: str
    name: str
    rpm: int | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


def create_key(name: str, rpm: int | None = None) -> tuple[str, Key]:
    """A new key; the secret is returned once and never stored."""
    from tuneloop import db

    if not name.strip():
        raise TuneloopError("a key needs a name (who or what uses it), for the request log and revocation")
    if rpm is not None and rpm < 0:
        raise TuneloopError(f"--rpm must be >= 0 (0 = unlimited), not {rpm}")
    key_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    row = {
        "id": key_id,
        "name": name,
        "salt": salt,
        "digest": _digest(salt, secret),
        "rpm": rpm,
        "created_at": _now(),
        "created_by": who(),
        "revoked_at": None,
    }
    with db.engine().begin() as conn:
        conn.execute(insert(api_keys).values(**row))
    return f"{PREFIX}_{key_id}_{secret}", _key(row)


def list_keys() -> list[Key]:
    from tuneloop import db

    with db.engine().connect() as conn:
        rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
    return [_key(r) for r in rows]


def revoke_key(key_id: str) -> Key:
    """Revoke by id (the `tlk_<id>_` part, or the whole key); gateways stop accepting it within seconds."""
    from tuneloop import db

    if key_id.count("_") >= 2:
        key_id = parse_key(key_id)[0]  # the whole key
    key_id = key_id.removeprefix(f"{PREFIX}_")
    with db.engine().begin() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            known = ", ".join(k["id"] for k in conn.execute(select(api_keys.c.id)).mappings()) or "none"
            raise TuneloopError(f"no API key with id {key_id!r} in {db.shown_url()} (ids: {known})")
        if row["revoked_at"] is None:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=_now()))
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    return _key(row)


def _key(row: Any) -> Key:
    return Key(row["id"], row["name"], row["rpm"], row["created_at"], row["created_by"], row["revoked_at"])


def parse_key(text: str) -> tuple[str, str]:
    """(id, secret) of `tlk_<id>_<secret>`; ValueError for anything else."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise ValueError("not a tuneloop API key")
    return parts[1], parts[2]


class KeyRing:
    """The active keys, re-read every `refresh_s` so a revocation or a new key takes effect on running gateways."""

    def __init__(self, refresh_s: float = 2.0):
        self.refresh_s = refresh_s
        self._rows: dict[str, dict[str, Any]] = {}
        self._loaded = 0.0
        self.reload()

    def reload(self) -> None:
        from tuneloop import db

        with db.engine().connect() as conn:
            rows = conn.execute(select(api_keys)).mappings().all()
        self._rows = {r["id"]: dict(r) for r in rows}
        self._loaded = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._loaded > self.refresh_s

    def active(self) -> int:
        return sum(1 for r in self._rows.values() if r["revoked_at"] is None)

    def check(self, presented: str) -> tuple[dict[str, Any] | None, str]:
        """(key row, "") for a valid key, else (None, why)."""
        try:
            key_id, secret = parse_key(presented)
        except ValueError:
            return None, "Incorrect API key provided (tuneloop keys look like tlk_<id>_<secret>)."
        row = self._rows.get(key_id)
        if row is None or not hmac.compare_digest(row["digest"], _digest(row["salt"], secret)):
            return None, f"Incorrect API key provided: tlk_{key_id}_****."
        if row["revoked_at"] is not None:
            return None, f"API key tlk_{key_id}_**** ({row['name']}) was revoked."
        return row, ""


class RequestLog:
    """Appends request records from a background thread in batches, off the request path; `close()` flushes."""

    def __init__(self, count_tokens: Callable[[dict[str, Any]], tuple[int | None, int | None]] | None = None):
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._count = count_tokens
        # request ids queued but not yet written: a rating sent right after the answer waits for its row
        self._pending: Counter[str] = Counter()
        self._settled = threading.Condition()
        self.written = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="tuneloop-request-log", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        with self._settled:
            self._pending[record["request_id"]] += 1
        self._queue.put(record)

    def wait_written(self, request_id: str, timeout: float) -> bool:
        """Until every queued record of `request_id` was written (or given up on); False after `timeout`."""
        with self._settled:
            return self._settled.wait_for(lambda: request_id not in self._pending, timeout)

    def close(self, timeout: float = 30) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        from tuneloop import db

        eng = db.engine()
        done = False
        while not done:
            batch = [self._queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get(timeout=0.05))
                except queue.Empty:
                    break
            if None in batch:
                done = True
                batch = [b for b in batch if b is not None]
            rows = [self._row(r) for r in batch]
            if not rows:
                continue
            for attempt in range(5):
                try:
                    with eng.begin() as conn:
                        conn.execute(insert(requests), rows)
                    self.written += len(rows)
                    break
                except Exception as e:  # a locked or unreachable database must not take the endpoint down
                    if attempt == 4:
                        self.failed += len(rows)
                        print(f"warning: request log: {len(rows)} record(s) not written: {e}", flush=True)
                    time.sleep(0.2 * (attempt + 1))
            with self._settled:
                self._pending -= Counter(r["request_id"] for r in rows)
                self._settled.notify_all()

    def _row(self, r: dict[str, Any]) -> dict[str, Any]:
        output, usage = _output_and_usage(r.pop("raw", b""), r["stream"], r["status"])
        prompt_tokens = completion_tokens = None
        source = None
        if usage:
            prompt_tokens, completion_tokens, source = (
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                "engine",
            )
        elif r["status"] == 200 and self._count is not None:
            try:
                prompt_tokens, completion_tokens = self._count({**r, "output": output})
                source = "gateway"
            except Exception:  # a body the chat template rejects: the row is written, its counts left empty
                source = None
        body = r.pop("body")
        r.pop("tokenizer", None)
        return {
            **r,
            "output": output if r["status"] == 200 else None,
            "error": None if r["status"] == 200 else output,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "usage_source": source,
            "request": json.dumps(body, ensure_ascii=False),
        }


def _output_and_usage(raw: bytes, stream: bool, status: int) -> tuple[str | None, dict[str, Any] | None]:
    """The first choice's text (or the error message) and the usage block, from a response or an SSE stream."""
    text = raw.decode("utf-8", errors="replace")
    if not stream or status != 200:
        try:
            data = json.loads(text)
        except ValueError:
            return text[:2000] or None, None
        if "error" in data:
            err = data["error"]
            return (err.get("message") if isinstance(err, dict) else str(err)), None
        return _choice_text(data, delta=False), data.get("usage")
    pieces: list[str] = []
    usage = None
    error = None
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if "error" in event:  # vLLM reports a failure mid-stream as a data line
            error = event["error"]
        usage = event.get("usage") or usage
        piece = _choice_text(event, delta=True)
        if piece:
            pieces.append(piece)
    out = "".join(pieces)
    if error is not None:
        out += f"\n[stream error: {error.get('message') if isinstance(error, dict) else error}]"
    return out, usage


def _choice_text(data: dict[str, Any], delta: bool) -> str | None:
    choices = data.get("choices") or []
    if not choices:
        return None
    first = choices[0]
    if "text" in first:
        return first.get("text")
    msg = first.get("delta" if delta else "message") or {}
    return msg.get("content")


def recent(limit: int = 20, key_id: str | None = None) -> list[dict[str, Any]]:
    """The newest request records, newest first."""
    from tuneloop import db

    q = select(requests).order_by(requests.c.id.desc()).limit(limit)
    if key_id:
        q = q.where(requests.c.key_id == key_id)
    with db.engine().connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def rate_request(request_id: str, key_id: str | None, rating: str, comment: str | None) -> bool:
    """Store an application's rating of a logged request; a second rating by the same key replaces the first (users
    change their mind). False when no such request was made with `key_id` (so keys cannot probe each other's ids);
    `key_id=None` is an endpoint without keys, where any logged request may be rated."""
    from tuneloop import db

    logged = select(requests.c.id).where(requests.c.request_id == request_id)
    if key_id is not None:
        logged = logged.where(requests.c.key_id == key_id)
    same_rater = served_feedback.c.key_id == key_id if key_id is not None else served_feedback.c.key_id.is_(None)
    mine = update(served_feedback).where(served_feedback.c.request_id == request_id, same_rater)
    values = {"rating": rating, "comment": comment, "ts": _now()}

    def once() -> bool:
        with db.engine().begin() as conn:
            if conn.execute(logged.limit(1)).first() is None:
                return False
            if conn.execute(mine.values(**values)).rowcount == 0:
                conn.execute(insert(served_feedback).values(request_id=request_id, key_id=key_id, **values))
        return True

    try:
        return once()
    except IntegrityError:  # the same rater's first rating was inserted concurrently: this one replaces it
        return once()
