"""One rating per request on an endpoint without keys, as there is one per request and key with keys.

The unique constraint on (request_id, key_id) does not hold where key_id is NULL (NULLs are distinct in SQL), so two
first ratings of one request sent at once by an endpoint without keys could both be stored. This keeps the newest
rating of each such request (a later rating replaces an earlier one, as `rate_request` does) and adds a partial
unique index on request_id where key_id is NULL, which SQLite and PostgreSQL both enforce.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ANONYMOUS = sa.text("key_id IS NULL")


def upgrade() -> None:
    op.execute(
        "DELETE FROM served_feedback WHERE key_id IS NULL AND id NOT IN "
        "(SELECT MAX(id) FROM served_feedback WHERE key_id IS NULL GROUP BY request_id)"
    )
    op.create_index(
        "uq_served_feedback_anonymous",
        "served_feedback",
        ["request_id"],
        unique=True,
        sqlite_where=ANONYMOUS,
        postgresql_where=ANONYMOUS,
    )


def downgrade() -> None:
    op.drop_index("uq_served_feedback_anonymous", table_name="served_feedback")
