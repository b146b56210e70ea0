"""batches of jobs with priority (issue 13)

A ``batches`` table; generations gain the batch they belong to and a queue priority rank
(existing jobs are normal: 1).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 05:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("client_batch_id", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("item_ids", JSONB(), server_default="[]", nullable=False),
        sa.Column("credit_cost", sa.BigInteger(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_batches_priority"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "client_batch_id", name="uq_batches_client_batch_id"),
    )
    op.create_index("ix_batches_account_created", "batches", ["account_id", "created_at"])
    op.add_column("generations", sa.Column("batch_id", sa.String(length=40), nullable=True))
    op.add_column(
        "generations",
        sa.Column("priority", sa.SmallInteger(), server_default="1", nullable=False),
    )
    op.create_foreign_key(
        "generations_batch_id_fkey", "generations", "batches", ["batch_id"], ["id"]
    )
    op.create_index(
        "ix_generations_batch",
        "generations",
        ["batch_id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_generations_batch", table_name="generations")
    op.drop_constraint("generations_batch_id_fkey", "generations", type_="foreignkey")
    op.drop_column("generations", "priority")
    op.drop_column("generations", "batch_id")
    op.drop_index("ix_batches_account_created", table_name="batches")
    op.drop_table("batches")
