"""Feedback rounds of `tuneloop loop` and the lock that lets one round per registered model run at a time.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "loop_rounds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("loop", sa.String(100), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.UniqueConstraint("loop", "number"),
    )
    op.create_table(
        "loop_locks",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("acquired_at", ts, nullable=False),
        sa.Column("heartbeat_at", ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loop_locks")
    op.drop_table("loop_rounds")
