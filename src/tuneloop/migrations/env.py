"""Run migrations on the connection tuneloop.db.migrate hands over (no engine of its own, no logging config)."""

from __future__ import annotations

from alembic import context

from tuneloop.db import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,  # not `alembic_version`: MLflow keeps its own when both share a PostgreSQL
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
