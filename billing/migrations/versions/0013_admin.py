"""administration: bans, audit log (issue 13)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 05:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("accounts", sa.Column("ban_reason", sa.String(length=500), nullable=True))
    op.create_table(
        "admin_audit_log",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("actor_account_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_account_id", sa.Uuid(), nullable=True),
        sa.Column("details", JSONB(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["actor_account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["target_account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_admin_audit_log_created", "admin_audit_log", ["created_at"])
    op.create_index(
        op.f("ix_admin_audit_log_target_account_id"), "admin_audit_log", ["target_account_id"]
    )
    # Append-only like the ledger: what an admin did cannot be rewritten, not even by SQL.
    op.execute(
        """
        CREATE FUNCTION admin_audit_log_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'admin_audit_log is append-only';
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER admin_audit_log_append_only
        BEFORE UPDATE OR DELETE ON admin_audit_log
        FOR EACH ROW EXECUTE FUNCTION admin_audit_log_append_only()
        """
    )
    op.execute(
        """
        CREATE TRIGGER admin_audit_log_no_truncate
        BEFORE TRUNCATE ON admin_audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_log_append_only()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS admin_audit_log_no_truncate ON admin_audit_log")
    op.execute("DROP TRIGGER IF EXISTS admin_audit_log_append_only ON admin_audit_log")
    op.execute("DROP FUNCTION IF EXISTS admin_audit_log_append_only()")
    op.drop_index(op.f("ix_admin_audit_log_target_account_id"), table_name="admin_audit_log")
    op.drop_index("ix_admin_audit_log_created", table_name="admin_audit_log")
    op.drop_table("admin_audit_log")
    op.drop_column("accounts", "ban_reason")
    op.drop_column("accounts", "banned_at")
