"""the image library: names, descriptions, favorites, thumbnails, search indexes (issue 13)

Every output asset is an image of its account's library. Assets gain what the owner sets
(name, description, favorite), a thumbnail key, and copies of their job's summary (kind,
model, prompt, presets) so the library reads one table through its own partial indexes.
Existing outputs are filled in from their jobs; they have no thumbnail (null).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 05:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept in step with billing.models.LIBRARY_SEARCH (a migration must not import models,
# which move on).
SEARCH = (
    "setweight(to_tsvector('simple'::regconfig, prompt), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, (name)::text), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, description), 'C')"
)
OUTPUTS = sa.text("role = 'output'")
BTREE = {
    "ix_assets_lib_created": ["account_id", "created_at", "id"],
    "ix_assets_lib_name": ["account_id", "name", "id"],
    "ix_assets_lib_bytes": ["account_id", "bytes", "id"],
    "ix_assets_lib_favorite": ["account_id", "favorite", "created_at", "id"],
    "ix_assets_lib_kind": ["account_id", "kind", "created_at"],
    "ix_assets_lib_size": ["account_id", "width", "height"],
}
PRESETS = ("preset_style", "preset_medium", "preset_filter")
TRIGRAM = ("prompt", "name", "description")


def upgrade() -> None:
    # Trusted since PostgreSQL 13: the database owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.add_column(
        "assets", sa.Column("name", sa.String(length=200), server_default="", nullable=False)
    )
    op.add_column("assets", sa.Column("description", sa.Text(), server_default="", nullable=False))
    op.add_column(
        "assets", sa.Column("favorite", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("assets", sa.Column("thumbnail_key", sa.String(length=255), nullable=True))
    op.add_column("assets", sa.Column("kind", sa.String(length=32), nullable=True))
    op.add_column("assets", sa.Column("provider", sa.String(length=64), nullable=True))
    op.add_column("assets", sa.Column("version", sa.String(length=64), nullable=True))
    op.add_column("assets", sa.Column("prompt", sa.Text(), server_default="", nullable=False))
    for preset in ("style", "medium", "filter"):
        op.add_column("assets", sa.Column(f"preset_{preset}", sa.String(length=64), nullable=True))
    op.execute(
        """
        UPDATE assets a SET kind = g.kind, provider = g.provider, version = g.version,
            prompt = g.prompt,
            preset_style = left(g.params->>'style', 64),
            preset_medium = left(g.params->>'medium', 64),
            preset_filter = left(g.params->>'filter', 64)
        FROM generations g
        WHERE g.id = a.generation_id AND a.role = 'output'
        """
    )
    op.add_column(
        "assets",
        sa.Column("search", TSVECTOR(), sa.Computed(SEARCH, persisted=True), nullable=True),
    )
    for name, columns in BTREE.items():
        op.create_index(name, "assets", columns, postgresql_where=OUTPUTS)
    for column in PRESETS:  # most images have none: only those that do are indexed
        op.create_index(
            f"ix_assets_lib_{column}",
            "assets",
            ["account_id", column],
            postgresql_where=sa.text(f"role = 'output' AND {column} IS NOT NULL"),
        )
    op.create_index(
        "ix_assets_lib_search",
        "assets",
        ["search"],
        postgresql_using="gin",
        postgresql_where=OUTPUTS,
    )
    for column in TRIGRAM:
        op.create_index(
            f"ix_assets_lib_trgm_{column}",
            "assets",
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
            postgresql_where=OUTPUTS,
        )


def downgrade() -> None:
    for column in TRIGRAM:
        op.drop_index(f"ix_assets_lib_trgm_{column}", table_name="assets")
    op.drop_index("ix_assets_lib_search", table_name="assets")
    for column in PRESETS:
        op.drop_index(f"ix_assets_lib_{column}", table_name="assets")
    for name in BTREE:
        op.drop_index(name, table_name="assets")
    for column in (
        "search",
        "preset_filter",
        "preset_medium",
        "preset_style",
        "prompt",
        "version",
        "provider",
        "kind",
        "thumbnail_key",
        "favorite",
        "description",
        "name",
    ):
        op.drop_column("assets", column)
    # pg_trgm stays: other tables may use it, and dropping an extension is an operator's
    # decision, not a schema downgrade's.
