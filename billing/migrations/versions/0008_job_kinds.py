"""job kinds: generations gain kind, params (frozen at submit) and outputs; an assets table
holds every input and output image (issue 10)

Existing rows become text_to_image jobs: their params are rebuilt from the columns they
already had, and each completed job's image becomes its one output asset. A legacy job's
params carry no model path (the registry was not frozen then): a worker resolves such a
job's model from its registry, the one case it does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 22:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "generations",
        sa.Column("kind", sa.String(length=32), server_default="text_to_image", nullable=False),
    )
    op.add_column("generations", sa.Column("params", JSONB(), server_default="{}", nullable=False))
    op.add_column("generations", sa.Column("outputs", JSONB(), server_default="[]", nullable=False))
    op.execute(
        """
        UPDATE generations SET params = jsonb_build_object(
            'model', jsonb_build_object('provider', provider, 'version', version),
            'prompt', prompt, 'negative_prompt', NULL, 'true_cfg_scale', 1.0,
            'steps', steps, 'guidance', guidance, 'seed', seed,
            'width', width, 'height', height, 'quality', quality,
            'format', 'png', 'output_quality', 90, 'count', 1, 'preview', preview)
        """
    )
    op.create_table(
        "assets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("generation_id", sa.String(length=40), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("mime", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('image', 'mask', 'output')", name="ck_assets_role"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_assets_account_created", "assets", ["account_id", "created_at"])
    op.create_index("ix_assets_generation", "assets", ["generation_id", "role", "position"])
    # Each completed job's image becomes its output asset (its bytes from the metadata
    # the worker recorded; the digest was never taken).
    op.execute(
        """
        INSERT INTO assets (id, account_id, generation_id, role, position, key, mime,
                            width, height, bytes, sha256, created_at)
        SELECT gen_random_uuid(), account_id, id, 'output', 0, image_key, 'image/png',
               width, height, COALESCE((metadata->>'bytes')::bigint, 0), NULL,
               COALESCE(completed_at, created_at)
        FROM generations WHERE image_key IS NOT NULL
        """
    )
    op.execute(
        """
        UPDATE generations g SET outputs = jsonb_build_array(jsonb_build_object(
            'id', a.id::text, 'key', a.key, 'width', a.width, 'height', a.height,
            'format', 'png'))
        FROM assets a WHERE a.generation_id = g.id AND a.role = 'output'
        """
    )


def downgrade() -> None:
    op.drop_index("ix_assets_generation", table_name="assets")
    op.drop_index("ix_assets_account_created", table_name="assets")
    op.drop_table("assets")
    op.drop_column("generations", "outputs")
    op.drop_column("generations", "params")
    op.drop_column("generations", "kind")
