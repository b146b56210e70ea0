"""batches: the items' client ids and the webhook's event name

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 16:10:00.000000

The REST v2 surface used to carry the seed's per-item client ids inside the batch's
client_batch_id, as ``{"v2": <Idempotency-Key or a random nonce>, "ids": [...]}``. They
now have a column of their own (``item_client_ids``) and client_batch_id is the key alone:
such a row's "v2" value becomes its client_batch_id and its "ids" move to the new column.

Where the same key (or an id sent through GraphQL) was used more than once by an account
(a key reused with other item ids made another batch then), the oldest row keeps it and
the later rows lose it (client_batch_id NULL): the unique constraint allows one. A retry,
after the upgrade, of a batch created with client ids before it is refused as
IDEMPOTENCY_KEY_REUSED: its stored fingerprint did not include the ids.

The downgrade puts back the old form only for rows with client ids: a seed-000 batch sent
with an Idempotency-Key and no item ids keeps the bare key, which the old adapter (looking
for ``{"v2": key, "ids": []}``) no longer finds, so a retry after a downgrade makes a new
batch.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREFIX = '{"v2":'


def upgrade() -> None:
    op.add_column("batches", sa.Column("item_client_ids", JSONB(), nullable=True))
    op.add_column("batches", sa.Column("webhook_events", JSONB(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, account_id, client_batch_id, jsonb_array_length(item_ids) AS items"
            " FROM batches WHERE starts_with(client_batch_id, :prefix)"
            " ORDER BY created_at, id"
        ),
        {"prefix": _PREFIX},
    ).all()
    for row in rows:
        try:
            doc = json.loads(row.client_batch_id)
        except ValueError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("v2"), str) or not doc["v2"]:
            continue
        key: str | None = doc["v2"]
        taken = connection.execute(
            sa.text("SELECT 1 FROM batches WHERE account_id = :account AND client_batch_id = :key"),
            {"account": row.account_id, "key": key},
        ).first()
        if taken is not None:
            key = None
        ids = doc.get("ids")
        moved = (
            [i if isinstance(i, str) else None for i in ids]
            if isinstance(ids, list) and len(ids) == row.items and any(ids)
            else None
        )
        connection.execute(
            sa.text(
                "UPDATE batches SET client_batch_id = :key,"
                " item_client_ids = CAST(:ids AS jsonb) WHERE id = :id"
            ),
            {"key": key, "ids": None if moved is None else json.dumps(moved), "id": row.id},
        )


def downgrade() -> None:
    # Back into the old form, so the old REST v2 adapter answers the ids again.
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, client_batch_id, item_client_ids::text AS ids FROM batches"
            " WHERE jsonb_typeof(item_client_ids) = 'array'"
        )
    ).all()
    for row in rows:
        value = json.dumps(
            {"v2": row.client_batch_id or f"migrated-{row.id}", "ids": json.loads(row.ids)},
            separators=(",", ":"),
        )
        connection.execute(
            sa.text("UPDATE batches SET client_batch_id = :value WHERE id = :id"),
            {"value": value if len(value) <= 255 else None, "id": row.id},
        )
    op.drop_column("batches", "webhook_events")
    op.drop_column("batches", "item_client_ids")
