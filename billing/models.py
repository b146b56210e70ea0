"""Tables. Every SQL statement that touches them lives in ``repository.py``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Index,
    SmallInteger,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(*, nullable: bool = False) -> Any:
    """A timezone-aware timestamp column; required ones default to now."""
    if nullable:
        return Field(default=None, sa_type=DateTime(timezone=True), nullable=True)
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False)


class GenerationStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELLED}
)


def is_final(status: str) -> bool:
    return GenerationStatus(status) in FINAL_STATUSES


def snapshot(generation: Generation) -> dict[str, Any]:
    """A JSON-safe copy of a job row, as published to subscribers."""
    return generation.model_dump(mode="json")


def from_snapshot(data: dict[str, Any]) -> Generation:
    return Generation.model_validate(data)


class LedgerKind(StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    REVERSAL = "reversal"
    DEDUCT = "deduct"  # an admin's correction (issue 13)


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (
        # The cached balance may never go negative: the last line of defence behind the
        # conditional UPDATE that reserves credits.
        CheckConstraint("credits_available >= 0", name="ck_accounts_available_nonneg"),
        CheckConstraint("credits_reserved >= 0", name="ck_accounts_reserved_nonneg"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    plan: str = Field(default="free", max_length=32)
    limit_overrides: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSONB, nullable=True),
        description="Per-account limits replacing the plan's (null value: unlimited).",
    )
    is_admin: bool = Field(
        default=False,
        sa_column_kwargs={"server_default": false()},
        description="May change other accounts' plans.",
    )
    # Read with the key on every request (repository.find_key_by_hash selects the whole
    # account): refusing a banned account costs no extra query.
    banned_at: datetime | None = _ts(nullable=True)
    ban_reason: str | None = Field(default=None, max_length=500)
    webhook_secret: str = Field(max_length=128)
    webhook_secret_previous: str | None = Field(
        default=None, max_length=128, description="Still signs until the grace period ends."
    )
    webhook_secret_previous_until: datetime | None = _ts(nullable=True)
    credits_available: int = Field(
        default=0,
        sa_type=BigInteger,
        description="Cache of SUM(ledger.available_delta); spendable credits.",
    )
    credits_reserved: int = Field(
        default=0,
        sa_type=BigInteger,
        description="Cache of SUM(ledger.reserved_delta); held by unfinished jobs.",
    )
    # Quotas (issue 13, migration 0010).
    storage_bytes: int = Field(
        default=0,
        sa_type=BigInteger,
        sa_column_kwargs={"server_default": "0"},
        description="Cache of SUM(assets.bytes), kept by a trigger on assets (0010).",
    )
    low_credit_threshold: int | None = Field(
        default=None,
        sa_type=BigInteger,
        description="credits.low is sent when a debit takes the balance below it (null: off).",
    )
    low_credit_webhook_url: str | None = Field(
        default=None, sa_type=Text, description="Where credits.low goes (null: the job's URL)."
    )
    # Seed 000's profile (migration 0014): a display name and settings, each key absent
    # until set (billing.service.accounts.Profile has the defaults).
    profile: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONB, nullable=False, server_default="{}"),
        description="display_name, default_model, default_quality, email_notifications, "
        "webhook_enabled.",
    )
    created_at: datetime = _ts()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", index=True)
    name: str = Field(default="default", max_length=100)
    prefix: str = Field(max_length=32, description="First characters of the key, for display.")
    key_hash: str = Field(
        max_length=128, unique=True, description="HMAC-SHA256 of the full key (peppered)."
    )
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)


class Generation(SQLModel, table=True):
    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_generations_idempotency"),
        Index("ix_generations_account_created", "account_id", "created_at"),
        # Partial: the many jobs outside a batch cost the index nothing on insert.
        Index("ix_generations_batch", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
        CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')",
            name="ck_generations_status",
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    account_id: uuid.UUID = Field(foreign_key="accounts.id")
    api_key_id: uuid.UUID | None = Field(default=None, foreign_key="api_keys.id")
    type: str = Field(default="IMAGE", max_length=16)
    kind: str = Field(
        default="text_to_image",
        max_length=32,
        sa_column_kwargs={"server_default": "text_to_image"},
        description="The job kind (kinds/): which operation the worker runs.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONB, nullable=False, server_default="{}"),
        description="Everything the worker needs, frozen at submit (the resolved model too).",
    )
    # The summary every surface shows (and ETAs use): the model that runs and the first
    # output's size. The kind's own values live in ``params``.
    provider: str = Field(max_length=64)
    version: str = Field(max_length=64)
    quality: str = Field(max_length=16)
    prompt: str = Field(sa_type=Text)
    width: int
    height: int
    steps: int
    guidance: float
    seed: int = Field(sa_type=BigInteger)
    credit_cost: int = Field(description="Credits reserved at acceptance, captured on success.")
    status: str = Field(default=GenerationStatus.QUEUED.value, max_length=16, index=True)
    progress: int = 0
    step: int = 0
    total_steps: int = 0
    webhook_url: str | None = Field(default=None, sa_type=Text)
    webhook_events: list[str] | None = Field(
        default=None,
        sa_column=Column(JSONB, nullable=True),
        description="Events to send to webhook_url; null: the final states.",
    )
    image_key: str | None = Field(
        default=None, max_length=255, description="The first output's storage key."
    )
    outputs: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSONB, nullable=False, server_default="[]"),
        description="The outputs, in order: {id, key, width, height, format} (see assets).",
    )
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONB, nullable=False)
    )
    error: str | None = Field(default=None, sa_type=Text)
    preview: bool = Field(default=False, description="Send preview images while processing.")
    revision: int = Field(
        default=0, description="Incremented by every state change: orders events across processes."
    )
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    started_at: datetime | None = _ts(nullable=True)
    completed_at: datetime | None = _ts(nullable=True)
    # The lease of the worker running the job, renewed every few seconds (database time):
    # the sweeper retries or fails a processing job whose lease expired.
    heartbeat_at: datetime | None = _ts(nullable=True)
    # When the job last entered the queue (null: created_at): bounds its wait for a worker.
    queued_at: datetime | None = _ts(nullable=True)
    # Batches (issue 13): the batch the job belongs to, and its queue priority
    # (``Priority.rank``: 0 low, 1 normal, 2 high; see runtime/queue.py, PRIORITY_STEP_MS).
    batch_id: str | None = Field(default=None, foreign_key="batches.id", max_length=40)
    priority: int = Field(
        default=1,
        sa_type=SmallInteger,
        sa_column_kwargs={"server_default": "1"},
        description="Queue priority rank: 0 low, 1 normal, 2 high.",
    )


class Priority(StrEnum):
    """A job's or batch's place in the queue (see runtime/queue.py, PRIORITY_STEP_MS)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return {"low": 0, "normal": 1, "high": 2}[self.value]


class Batch(SQLModel, table=True):
    """Up to 10 jobs accepted together (all priced and reserved in one transaction). Its
    items are the generations whose ``batch_id`` is this id, in ``item_ids`` order."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("account_id", "client_batch_id", name="uq_batches_client_batch_id"),
        Index("ix_batches_account_created", "account_id", "created_at"),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_batches_priority"),
    )

    id: str = Field(primary_key=True, max_length=40)
    account_id: uuid.UUID = Field(foreign_key="accounts.id")
    api_key_id: uuid.UUID | None = Field(default=None, foreign_key="api_keys.id")
    client_batch_id: str | None = Field(
        default=None, max_length=255, description="The client's id: makes creation idempotent."
    )
    request_hash: str = Field(max_length=64, description="Fingerprint of the whole request.")
    priority: str = Field(default=Priority.NORMAL.value, max_length=16)
    item_ids: list[str] = Field(
        default_factory=list,
        sa_column=Column(JSONB, nullable=False, server_default="[]"),
        description="The items' generation ids, in the order they were sent.",
    )
    item_client_ids: list[str | None] | None = Field(
        default=None,
        sa_column=Column(JSONB, nullable=True),
        description="The items' client ids (createBatch's items[].clientId), aligned with "
        "item_ids; null when no item has one.",
    )
    credit_cost: int = Field(
        sa_type=BigInteger, description="Credits reserved for all items together."
    )
    webhook_url: str | None = Field(default=None, sa_type=Text)
    webhook_events: list[str] | None = Field(
        default=None,
        sa_column=Column(JSONB, nullable=True),
        description="The completion event's name, which picks its body: null or "
        "['batch.completed'] ours, ['batch.complete'] seed 000's.",
    )
    created_at: datetime = _ts()
    completed_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        nullable=True,
        description="Set once, when the last item reached a final state (batch.completed).",
    )


class AssetRole(StrEnum):
    IMAGE = "image"  # an input image
    MASK = "mask"  # an input mask (white = repaint)
    OUTPUT = "output"


# The library's search vector (a generated column) and indexes, shared with migration
# 0009. Weights let one GIN index answer seed 002's ``search_by``: A prompt, B name,
# C description. Trigram indexes find partial words inside words.
LIBRARY_SEARCH = (
    "setweight(to_tsvector('simple'::regconfig, prompt), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, (name)::text), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, description), 'C')"
)
_OUTPUTS = text("role = 'output'")
LIBRARY_INDEXES = (
    Index("ix_assets_lib_created", "account_id", "created_at", "id", postgresql_where=_OUTPUTS),
    Index("ix_assets_lib_name", "account_id", "name", "id", postgresql_where=_OUTPUTS),
    Index("ix_assets_lib_bytes", "account_id", "bytes", "id", postgresql_where=_OUTPUTS),
    Index(
        "ix_assets_lib_favorite",
        "account_id",
        "favorite",
        "created_at",
        "id",
        postgresql_where=_OUTPUTS,
    ),
    Index("ix_assets_lib_kind", "account_id", "kind", "created_at", postgresql_where=_OUTPUTS),
    Index("ix_assets_lib_size", "account_id", "width", "height", postgresql_where=_OUTPUTS),
    *(
        Index(
            f"ix_assets_lib_{column}",
            "account_id",
            column,
            postgresql_where=text(f"role = 'output' AND {column} IS NOT NULL"),
        )
        for column in ("preset_style", "preset_medium", "preset_filter")
    ),
    Index("ix_assets_lib_search", "search", postgresql_using="gin", postgresql_where=_OUTPUTS),
    *(
        Index(
            f"ix_assets_lib_trgm_{column}",
            column,
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
            postgresql_where=_OUTPUTS,
        )
        for column in ("prompt", "name", "description")
    ),
)


class Asset(SQLModel, table=True):
    """One stored image of an account: a job's input (image, mask) or output."""

    __tablename__ = "assets"
    __table_args__ = (
        Index("ix_assets_account_created", "account_id", "created_at"),
        Index("ix_assets_generation", "generation_id", "role", "position"),
        CheckConstraint("role IN ('image', 'mask', 'output')", name="ck_assets_role"),
        *LIBRARY_INDEXES,
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    account_id: uuid.UUID = Field(foreign_key="accounts.id")
    generation_id: str | None = Field(default=None, foreign_key="generations.id")
    role: str = Field(max_length=16)
    position: int = Field(default=0, description="Order among the job's assets of this role.")
    key: str = Field(max_length=255, description="The storage key.")
    mime: str = Field(max_length=64)
    width: int
    height: int
    bytes: int = Field(sa_type=BigInteger)
    sha256: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    # Retention (issue 13): created + the plan's retention_days; null = kept forever.
    expires_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True, index=True
    )
    # The image library (issue 13, migration 0009). What the owner calls an output, and
    # copies of its job's summary taken at completion: listing, filtering and searching an
    # account's images reads this one table through its own (partial, outputs-only)
    # indexes, never a join over every job.
    name: str = Field(default="", max_length=200, sa_column_kwargs={"server_default": ""})
    description: str = Field(default="", sa_type=Text, sa_column_kwargs={"server_default": ""})
    favorite: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    thumbnail_key: str | None = Field(
        default=None, max_length=255, description="A WebP of ~256 px (raster outputs only)."
    )
    kind: str | None = Field(default=None, max_length=32, description="The job's kind.")
    provider: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)
    prompt: str = Field(default="", sa_type=Text, sa_column_kwargs={"server_default": ""})
    preset_style: str | None = Field(default=None, max_length=64)
    preset_medium: str | None = Field(default=None, max_length=64)
    preset_filter: str | None = Field(default=None, max_length=64)
    search: str | None = Field(
        default=None,
        sa_column=Column(TSVECTOR, Computed(LIBRARY_SEARCH, persisted=True), nullable=True),
        description="Full-text vector: prompt (weight A), name (B), description (C).",
    )


class LedgerEntry(SQLModel, table=True):
    """One credit movement. Rows are only ever inserted: corrections are new rows."""

    __tablename__ = "ledger_entries"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", index=True)
    kind: str = Field(max_length=16, description="grant | reserve | capture | release")
    available_delta: int = Field(
        sa_type=BigInteger, description="Change to spendable credits (signed)."
    )
    reserved_delta: int = Field(
        sa_type=BigInteger, description="Change to credits held by unfinished jobs (signed)."
    )
    generation_id: str | None = Field(default=None, foreign_key="generations.id", index=True)
    movement_key: str = Field(
        max_length=255,
        unique=True,
        description=(
            "Makes each movement happen at most once: reserve:<job>, settle:<job> (capture "
            "and release share it, so a job is settled once), grant:<external id>."
        ),
    )
    note: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts()


class WebhookEventStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(SQLModel, table=True):
    """One webhook message (a job event for one URL). Its id is the ``webhook-id`` header,
    stable across every attempt and redelivery; ``body`` is the exact bytes sent."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("generation_id", "event", name="uq_webhook_events_generation_event"),
        Index("ix_webhook_events_account_created", "account_id", "created_at"),
        Index("ix_webhook_events_due", "status", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    account_id: uuid.UUID = Field(foreign_key="accounts.id")
    generation_id: str = Field(foreign_key="generations.id", index=True)
    event: str = Field(max_length=32, description="started | progress.N | completed | ...")
    url: str = Field(sa_type=Text)
    body: str = Field(sa_type=Text, description="The exact JSON body; signatures cover it.")
    status: str = Field(default=WebhookEventStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0, description="Attempts in the current delivery cycle.")
    next_attempt_at: datetime | None = _ts(nullable=True)
    locked_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a webhook event, for the account owner to debug with."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    event_id: str = Field(foreign_key="webhook_events.id", index=True)
    attempted_at: datetime = _ts()
    status_code: int | None = None
    duration_ms: int = 0
    response_body: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    success: bool = False


class StripeEvent(SQLModel, table=True):
    """The inbox of verified Stripe webhook events: stored once by id, applied by a job."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True, max_length=255, description="Stripe's event id.")
    type: str = Field(max_length=100)
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    received_at: datetime = _ts()
    handled_at: datetime | None = _ts(nullable=True)
    error: str | None = Field(
        default=None, sa_type=Text, description="Why the last attempt failed (or waits)."
    )
    attempts: int = Field(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        description="Failed attempts to apply it; it is dead-lettered after the setting's max.",
    )
    dead_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        nullable=True,
        description="Set when it was given up on (a dead letter for an operator to look at).",
    )


class Payment(SQLModel, table=True):
    """A paid Checkout Session and what it bought; refunds are reversed against it."""

    __tablename__ = "payments"

    checkout_session_id: str = Field(primary_key=True, max_length=255)
    payment_intent: str | None = Field(default=None, max_length=255, index=True)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", index=True)
    pack: str = Field(max_length=64)
    credits: int = Field(sa_type=BigInteger, description="Credits granted for this payment.")
    amount: int = Field(
        sa_type=BigInteger, description="Amount paid, in the currency's smallest unit."
    )
    currency: str = Field(max_length=8)
    refunded_amount: int = Field(default=0, sa_type=BigInteger)
    credits_reversed: int = Field(default=0, sa_type=BigInteger)
    reversal_shortfall: int = Field(
        default=0,
        sa_type=BigInteger,
        description="Refunded credits that were already spent (not reversible).",
    )
    created_at: datetime = _ts()


class AdminAuditEntry(SQLModel, table=True):
    """One admin action (issue 13). Rows are only ever inserted (a trigger refuses UPDATE,
    DELETE and TRUNCATE): the record of who did what cannot be rewritten."""

    __tablename__ = "admin_audit_log"
    __table_args__ = (Index("ix_admin_audit_log_created", "created_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    actor_account_id: uuid.UUID | None = Field(
        default=None, foreign_key="accounts.id", description="The admin; null: the CLI."
    )
    actor: str = Field(max_length=320, description="The admin's email, or cli:<user>.")
    action: str = Field(
        max_length=64,
        description="grant | deduct | set_plan | ban | unban | lora_add | lora_update | "
        "lora_remove (billing.service.admin.Action)",
    )
    target_account_id: uuid.UUID | None = Field(default=None, foreign_key="accounts.id", index=True)
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}")
    )
    created_at: datetime = _ts()


class DashboardSession(SQLModel, table=True):
    """A signed-in dashboard session. The cookie carries only its id: signing out (or
    revoking the key it was opened with) ends it on the server, copies of the cookie
    included."""

    __tablename__ = "dashboard_sessions"

    id: str = Field(primary_key=True, max_length=64, description="Random; the cookie's value.")
    account_id: uuid.UUID = Field(foreign_key="accounts.id", index=True)
    api_key_id: uuid.UUID = Field(foreign_key="api_keys.id", index=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)


class Lora(SQLModel, table=True):
    """A LoRA style of the catalogue (issue 13). Operators manage it (``fluxgate lora``,
    the admin mutations); users list the enabled ones. A job freezes what it uses (the
    weight file's path included, ``kinds.lora``), so editing, disabling or removing a row
    never changes an accepted job."""

    __tablename__ = "loras"
    __table_args__ = (
        CheckConstraint("default_scale >= 0 AND default_scale <= 2", name="ck_loras_default_scale"),
        Index("ix_loras_category", "category"),
    )

    id: str = Field(
        primary_key=True, max_length=64, description="A slug (anime-style-v2); what jobs name."
    )
    name: str = Field(max_length=100)
    category: str = Field(max_length=64)
    description: str = Field(default="", max_length=500)
    trigger_words: list[str] = Field(
        default_factory=list,
        sa_column=Column(JSONB, nullable=False, server_default="[]"),
        description="Appended to the prompt of a job that uses it.",
    )
    base_model: str = Field(
        max_length=130,
        description="provider, provider/version, or family:<name> of the model registry.",
    )
    path: str = Field(
        sa_column=Column(Text, nullable=False),
        description="The local .safetensors file the workers load (never downloaded).",
    )
    default_scale: float = Field(default=1.0)
    enabled: bool = Field(default=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
