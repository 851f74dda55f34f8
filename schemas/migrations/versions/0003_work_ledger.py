"""work ledger: leased work items

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("pieces_encoded", "pieces_reused", "pieces_removed"):
            batch_op.add_column(sa.Column(column, sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "work_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.String(length=64), nullable=False),
        sa.Column("collection", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("claim_limit", sa.Integer(), nullable=True),
        sa.Column("lost_leases", sa.Integer(), nullable=False),
        sa.Column("solo_losses", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "kind", "item_key", name="uq_work_items_job_kind_key"),
    )
    op.create_index(
        "ix_work_items_queue_state", "work_items", ["queue", "state", "claim_limit", "id"]
    )
    op.create_index("ix_work_items_job_state", "work_items", ["job_id", "state"])
    op.create_index("ix_work_items_state_lease", "work_items", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_table("work_items")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("pieces_encoded", "pieces_reused", "pieces_removed"):
            batch_op.drop_column(column)
