"""The drift monitor's checks: every verdict and trigger decision, so cooldowns and schedules survive restarts.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("monitor", sa.String(100), nullable=False, index=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("drift", sa.Boolean, nullable=True),
        sa.Column("embedding_auc", sa.Float, nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("monitor_checks")
