"""money and sessions: bigint money columns, Stripe event attempts, revocable dashboard sessions (hardening, issue 9)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


MONEY = ("credits", "amount", "refunded_amount", "credits_reversed", "reversal_shortfall")


def upgrade() -> None:
    # Money columns as bigint, like the ledger: a pack or amount beyond int4 must not make
    # an event impossible to apply.
    for column in MONEY:
        op.alter_column(
            "payments", column, type_=sa.BigInteger(), existing_type=sa.Integer(),
            existing_nullable=False,
        )  # fmt: skip
    op.add_column(
        "stripe_events",
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("stripe_events", sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_dashboard_sessions_account_id"), "dashboard_sessions", ["account_id"])
    op.create_index(op.f("ix_dashboard_sessions_api_key_id"), "dashboard_sessions", ["api_key_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dashboard_sessions_api_key_id"), table_name="dashboard_sessions")
    op.drop_index(op.f("ix_dashboard_sessions_account_id"), table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_column("stripe_events", "dead_at")
    op.drop_column("stripe_events", "attempts")
    # Back to int4: fails (and changes nothing) if a stored value no longer fits.
    for column in MONEY:
        op.alter_column(
            "payments", column, type_=sa.Integer(), existing_type=sa.BigInteger(),
            existing_nullable=False,
        )  # fmt: skip
