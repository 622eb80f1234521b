"""The workspace database: API keys and the request log of `tuneloop serve` (the feedback store joins them).

SQLite in the workspace by default (WAL, so the gateway appends while a user reads the log); any SQLAlchemy URL in
`TUNELOOP_DATABASE_URL` (for example `postgresql+psycopg://...`) lets several gateways and the feedback app share
one. Tables are only ever created, never dropped or rewritten, so upgrading tuneloop cannot lose stored rows.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine

from tuneloop import workspace

metadata = MetaData()
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def url() -> str:
    """The database URL this process uses (read on every call, like the workspace itself)."""
    return os.environ.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{workspace.home() / 'tuneloop.db'}"


def shown_url() -> str:
    """The URL without a password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url()).render_as_string(hide_password=True)


def engine() -> Engine:
    """One engine per URL and process, with the tables created on first contact."""
    target = url()
    with _lock:
        if target in _engines:
            return _engines[target]
        if target.startswith("sqlite:///"):
            workspace.home().mkdir(parents=True, exist_ok=True)
        eng = create_engine(target, pool_pre_ping=True)
        if eng.dialect.name == "sqlite":
            event.listen(eng, "connect", _sqlite_pragmas)
        # the tables of every package that stores rows (importing registers them on `metadata`)
        from tuneloop.serve import store  # noqa: F401

        metadata.create_all(eng)
        _engines[target] = eng
        return eng


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cur = connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the gateway's writer
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
