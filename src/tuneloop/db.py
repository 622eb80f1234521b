"""The workspace database: API keys and the request log of `tuneloop serve`, and the feedback store.

SQLite in the workspace by default (WAL, so the gateway appends while a user reads the log); any SQLAlchemy URL in
`TUNELOOP_DATABASE_URL` (for example `postgresql+psycopg://...`) lets several gateways and the feedback app share
one. The schema is Alembic's (src/tuneloop/migrations), applied on first contact under a lock; revisions only
create, never drop or rewrite, so upgrading tuneloop cannot lose stored rows.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine

from tuneloop import extras, workspace

metadata = MetaData()
VERSION_TABLE = "tuneloop_schema_version"
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
        if target.startswith("postgresql"):
            extras.need("postgres", "a postgresql:// TUNELOOP_DATABASE_URL")
        if target.startswith("sqlite:///"):
            workspace.home().mkdir(parents=True, exist_ok=True)
        eng = create_engine(target, pool_pre_ping=True)
        if eng.dialect.name == "sqlite":
            event.listen(eng, "connect", _sqlite_pragmas)
        # the schema comes from the migrations; each store declares its own tables on `metadata` for its queries,
        # so this floor never imports the packages above it
        migrate(eng)
        _engines[target] = eng
        return eng


def migrate(eng: Engine) -> None:
    """Bring the schema to the newest revision; concurrent processes take turns (a file lock for SQLite, an
    advisory lock for PostgreSQL), and the second finds nothing left to do."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "tuneloop:migrations")
    with _migration_lock(eng), eng.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(74612970)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _migration_lock(eng: Engine) -> Iterator[None]:
    database = eng.url.database if eng.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cur = connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the gateway's writer
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
