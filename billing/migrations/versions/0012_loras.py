"""the LoRA catalogue (issue 13)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 05:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "loras",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("trigger_words", JSONB(), server_default="[]", nullable=False),
        sa.Column("base_model", sa.String(length=130), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("default_scale", sa.Float(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "default_scale >= 0 AND default_scale <= 2", name="ck_loras_default_scale"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loras_category", "loras", ["category"])


def downgrade() -> None:
    op.drop_index("ix_loras_category", table_name="loras")
    op.drop_table("loras")
