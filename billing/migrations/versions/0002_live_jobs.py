"""live jobs: a per-row revision for ordering events, and the preview option

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "generations", sa.Column("revision", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "generations",
        sa.Column("preview", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.alter_column("generations", "revision", server_default=None)
    op.alter_column("generations", "preview", server_default=None)


def downgrade() -> None:
    op.drop_column("generations", "preview")
    op.drop_column("generations", "revision")
