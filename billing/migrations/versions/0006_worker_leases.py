"""worker leases: per-job heartbeats and queue deadlines (hardening, issue 9)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both nullable: rows from before the upgrade fall back to updated_at / created_at.
    op.add_column("generations", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.add_column("generations", sa.Column("queued_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("generations", "queued_at")
    op.drop_column("generations", "heartbeat_at")
