"""The feedback store: raters, campaigns, items, pre-generated responses, assignments and votes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "feedback_raters",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("disabled_at", ts, nullable=True),
    )
    op.create_table(
        "feedback_campaigns",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("guidelines", sa.Text, nullable=False),
        sa.Column("guidelines_sha", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("closed_at", ts, nullable=True),
    )
    op.create_table(
        "feedback_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign", sa.String(100), sa.ForeignKey("feedback_campaigns.name"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("reference", sa.Text, nullable=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("gold", sa.Boolean, nullable=False),
        sa.UniqueConstraint("campaign", "position", name="uq_feedback_items_position"),
    )
    op.create_index("ix_feedback_items_campaign", "feedback_items", ["campaign"])
    op.create_table(
        "feedback_responses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("feedback_items.id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_ref", sa.String(500), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=True),
        sa.Column("correct", sa.Boolean, nullable=True),
        sa.UniqueConstraint("item_id", "model", name="uq_feedback_responses_model"),
    )
    op.create_index("ix_feedback_responses_item_id", "feedback_responses", ["item_id"])
    op.create_table(
        "feedback_assignments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("feedback_items.id"), nullable=False),
        sa.Column("rater", sa.String(100), sa.ForeignKey("feedback_raters.name"), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("left_id", sa.Integer, sa.ForeignKey("feedback_responses.id"), nullable=False),
        sa.Column("right_id", sa.Integer, sa.ForeignKey("feedback_responses.id"), nullable=True),
        sa.Column("swapped", sa.Boolean, nullable=False),
        sa.Column("shown_at", ts, nullable=False),
        sa.UniqueConstraint("item_id", "rater", "task", name="uq_feedback_assignments_once"),
    )
    op.create_index("ix_feedback_assignments_rater", "feedback_assignments", ["rater"])
    op.create_table(
        "feedback_votes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("feedback_assignments.id"), nullable=False, unique=True),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("rater", sa.String(100), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("guidelines_sha", sa.String(16), nullable=False),
        sa.Column("shown_at", ts, nullable=False),
        sa.Column("submitted_at", ts, nullable=False),
    )
    op.create_index("ix_feedback_votes_campaign", "feedback_votes", ["campaign"])
