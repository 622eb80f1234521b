"""API keys and the request log of `tuneloop serve`.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_keys" not in existing:  # databases from before migrations already have these tables
        op.create_table(
            "api_keys",
            sa.Column("id", sa.String(16), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("salt", sa.String(64), nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("rpm", sa.Integer, nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("created_by", sa.String(200), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        )
    if "requests" not in existing:
        op.create_table(
            "requests",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(64), nullable=False),
            sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
            sa.Column("key_id", sa.String(16), nullable=True),
            sa.Column("endpoint", sa.String(64), nullable=False),
            sa.Column("model", sa.String(200), nullable=True),
            sa.Column("version", sa.String(64), nullable=True),
            sa.Column("stream", sa.Boolean, nullable=False),
            sa.Column("status", sa.Integer, nullable=False),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("ttft_ms", sa.Float, nullable=True),
            sa.Column("prompt_tokens", sa.Integer, nullable=True),
            sa.Column("completion_tokens", sa.Integer, nullable=True),
            sa.Column("usage_source", sa.String(16), nullable=True),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("output", sa.Text, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
        )
        for column in ("request_id", "ts", "key_id", "model"):
            op.create_index(f"ix_requests_{column}", "requests", [column])
