"""account profile: display name and settings (seed 000's /api/user/profile, issue 14)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 16:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("profile", JSONB(), server_default="{}", nullable=False))


def downgrade() -> None:
    op.drop_column("accounts", "profile")
