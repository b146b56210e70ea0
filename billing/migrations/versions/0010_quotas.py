"""presets, retention and storage quotas, usage quotas, low-credit alerts (issue 13)

Accounts gain ``storage_bytes`` (the sum of their assets' bytes, kept by triggers on
``assets`` so every path that adds or removes an asset — a job's inputs and outputs, the
retention sweeper, the library's delete — moves it in the same transaction, and a submit
reads it with the plan in the statement that locks the account), a low-credit threshold
and the URL its ``credits.low`` webhook goes to. Assets gain ``expires_at`` (retention).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 05:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Statement-level with transition tables: a batch of inserts or deletes (the sweeper
# removes up to a few hundred rows at once) updates each account once, in id order.
_TRIGGERS = (
    """
    CREATE FUNCTION assets_storage_added() RETURNS trigger AS $$
    BEGIN
        UPDATE accounts SET storage_bytes = accounts.storage_bytes + s.total
        FROM (SELECT account_id, sum(bytes) AS total FROM new_rows
              GROUP BY account_id ORDER BY account_id) s
        WHERE accounts.id = s.account_id;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION assets_storage_removed() RETURNS trigger AS $$
    BEGIN
        UPDATE accounts SET storage_bytes = greatest(0, accounts.storage_bytes - s.total)
        FROM (SELECT account_id, sum(bytes) AS total FROM old_rows
              GROUP BY account_id ORDER BY account_id) s
        WHERE accounts.id = s.account_id;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION assets_storage_changed() RETURNS trigger AS $$
    BEGIN
        UPDATE accounts SET storage_bytes = greatest(0, storage_bytes - OLD.bytes)
        WHERE id = OLD.account_id;
        UPDATE accounts SET storage_bytes = storage_bytes + NEW.bytes
        WHERE id = NEW.account_id;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER assets_storage_insert AFTER INSERT ON assets
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION assets_storage_added()
    """,
    """
    CREATE TRIGGER assets_storage_delete AFTER DELETE ON assets
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION assets_storage_removed()
    """,
    """
    CREATE TRIGGER assets_storage_update AFTER UPDATE OF bytes, account_id ON assets
        FOR EACH ROW WHEN (OLD.bytes IS DISTINCT FROM NEW.bytes
                           OR OLD.account_id IS DISTINCT FROM NEW.account_id)
        EXECUTE FUNCTION assets_storage_changed()
    """,
)


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("storage_bytes", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("accounts", sa.Column("low_credit_threshold", sa.BigInteger(), nullable=True))
    op.add_column("accounts", sa.Column("low_credit_webhook_url", sa.Text(), nullable=True))
    op.add_column("assets", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_assets_expires_at", "assets", ["expires_at"])
    op.execute(
        """
        UPDATE accounts SET storage_bytes = s.total
        FROM (SELECT account_id, sum(bytes) AS total FROM assets GROUP BY account_id) s
        WHERE accounts.id = s.account_id
        """
    )
    for statement in _TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    for statement in (
        "DROP TRIGGER IF EXISTS assets_storage_update ON assets",
        "DROP TRIGGER IF EXISTS assets_storage_delete ON assets",
        "DROP TRIGGER IF EXISTS assets_storage_insert ON assets",
        "DROP FUNCTION IF EXISTS assets_storage_changed()",
        "DROP FUNCTION IF EXISTS assets_storage_removed()",
        "DROP FUNCTION IF EXISTS assets_storage_added()",
    ):
        op.execute(statement)
    op.drop_index("ix_assets_expires_at", table_name="assets")
    op.drop_column("assets", "expires_at")
    op.drop_column("accounts", "low_credit_webhook_url")
    op.drop_column("accounts", "low_credit_threshold")
    op.drop_column("accounts", "storage_bytes")
