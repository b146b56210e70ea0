"""GraphQL output types. They are not table models: each has a ``from_model``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
from redis.exceptions import RedisError
from strawberry.scalars import JSON

from billing import models, repository
from billing.catalog import DEFAULT_POOL, pool_of
from billing.errors import BadUserInput
from billing.plans import PlanLimits
from billing.pricing import Quote
from billing.service.accounts import Profile as ProfileModel
from billing.service.generations import Page
from billing.service.webhooks import Delivery
from runtime.storage import Storage
from schema.scalars import UtcDateTime


@strawberry.enum(description="What a generation produces.")
class GenerationType(Enum):
    IMAGE = "IMAGE"


@strawberry.type(description="An image or file (vectorize: SVG, EPS) a job made.")
class ImageOutput:
    id: strawberry.ID = strawberry.field(description="Pass as imageId to edit it further.")
    url: str
    width: int
    height: int
    format: str = strawberry.field(
        description="png | jpeg | webp; svg | eps (vectorize). Also the file's extension."
    )
    expires_at: UtcDateTime | None = strawberry.field(
        default=None, description="When retention deletes it (null: kept forever)."
    )


def _expiry(value: Any) -> UtcDateTime | None:
    return UtcDateTime(datetime.fromisoformat(value)) if isinstance(value, str) else None


@strawberry.type(description="An image a job was given.")
class ImageInput:
    role: str = strawberry.field(description="image | mask")
    url: str
    width: int
    height: int


@strawberry.type(description="One job of any kind and, once completed, its images.")
class Generation:
    id: strawberry.ID
    kind: str = strawberry.field(
        description="The job kind: text_to_image, image_to_image, edit, inpaint, outpaint…"
    )
    status: str = strawberry.field(
        description="queued | processing | completed | failed | cancelled"
    )
    type: GenerationType
    provider: str = strawberry.field(description="The provider/service, e.g. flux-pro.")
    service: str = strawberry.field(description="Same as provider (generateImage's name).")
    version: str
    quality: str
    prompt: str
    url: str | None = strawberry.field(description="The (first) image; null until completed.")
    outputs: list[ImageOutput] = strawberry.field(
        description="Every image the job made, in order; empty until completed."
    )
    width: int
    height: int
    seed: int
    metadata: JSON
    credit_cost: int = strawberry.field(description="Credits this job costs.")
    webhook_url: str | None
    progress: int = strawberry.field(description="0..100")
    step: int
    total_steps: int
    duration: float | None = strawberry.field(description="Seconds spent rendering.")
    preview: str | None = strawberry.field(
        description="While processing with preview: a small PNG data URL of the current latents."
    )
    error: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    completed_at: UtcDateTime | None
    # Queue position and ETA come from Redis: known already (``live``), or estimated once,
    # on first use, by ``_estimate`` — a client that does not select them costs no Redis.
    known_position: strawberry.Private[int | None] = None
    known_eta: strawberry.Private[float | None] = None
    _estimate: strawberry.Private[
        Callable[[], Awaitable[tuple[int | None, float | None]]] | None
    ] = None
    _estimating: strawberry.Private[asyncio.Future[None] | None] = None
    # The model pool of a job not yet finished (None once it is): for model_available.
    _pool: strawberry.Private[str | None] = None
    # The presets applied to its prompt (seed 002), ids from the presets query.
    style: str | None = None
    medium: str | None = None
    filter: str | None = None
    client_id: str | None = strawberry.field(
        default=None,
        description="Read as one of a batch's items: the clientId its createBatch item was "
        "sent with (null otherwise, and on a job read alone).",
    )

    @strawberry.field(
        description="While the job is queued or running: whether a worker of its model's "
        "pool is running now (a queued job of an unavailable model waits for one up to the "
        "maximum queue wait, then fails and its credits are released). Null once the job "
        "is finished, or when it cannot be told (Redis unreachable)."
    )
    async def model_available(self, info: strawberry.Info) -> bool | None:
        if self._pool is None:
            return None
        try:
            counts = await info.context.services.queue.live_workers([self._pool])
        except (RedisError, OSError):
            return None
        return int(counts[self._pool]) > 0

    @strawberry.field(description="While queued: jobs ahead of this one (0: next).")
    async def queue_position(self) -> int | None:
        await self.estimated()
        return self.known_position

    @strawberry.field(
        description="While queued or processing: estimated seconds until done, from recently "
        "measured step times; null until measured."
    )
    async def eta_seconds(self) -> float | None:
        await self.estimated()
        return self.known_eta

    async def estimated(self) -> None:
        """Run the estimate once, however many fields (resolved concurrently) ask."""
        if self._estimate is None:
            return
        if self._estimating is None:
            self._estimating = asyncio.ensure_future(self._run_estimate(self._estimate))
        await self._estimating

    async def _run_estimate(
        self, estimate: Callable[[], Awaitable[tuple[int | None, float | None]]]
    ) -> None:
        position, eta = await estimate()
        if self.known_position is None:
            self.known_position = position
        if self.known_eta is None:
            self.known_eta = eta

    @strawberry.field(description="The images the job was given (image, mask), in order.")
    async def inputs(self, info: strawberry.Info) -> list[ImageInput]:
        if self.kind == "text_to_image":  # takes none: no query
            return []
        services = info.context.services
        async with services.store.sessions() as session:
            stored = await repository.assets_of(session, str(self.id))
        return [
            ImageInput(role=a.role, url=services.storage.url(a.key), width=a.width, height=a.height)
            for a in stored
            if a.role != models.AssetRole.OUTPUT.value
        ]

    @classmethod
    def from_model(
        cls,
        g: models.Generation,
        storage: Storage,
        live: dict[str, Any] | None = None,
        estimate: Callable[[], Awaitable[tuple[int | None, float | None]]] | None = None,
    ) -> Generation:
        live = live or {}
        done = g.status == models.GenerationStatus.COMPLETED.value and g.image_key
        duration = g.meta.get("duration")
        outputs = [
            ImageOutput(
                id=strawberry.ID(str(o["id"])),
                url=storage.url(o["key"]),
                width=int(o["width"]),
                height=int(o["height"]),
                format=str(o["format"]),
                expires_at=_expiry(o.get("expires_at")),
            )
            for o in (g.outputs if done else [])
        ]
        return cls(
            id=strawberry.ID(g.id),
            kind=g.kind,
            outputs=outputs,
            status=g.status,
            type=GenerationType(g.type),
            provider=g.provider,
            service=g.provider,
            version=g.version,
            quality=g.quality,
            prompt=g.prompt,
            url=storage.url(g.image_key) if done and g.image_key else None,
            width=g.width,
            height=g.height,
            seed=g.seed,
            metadata=JSON(dict(g.meta)),
            credit_cost=g.credit_cost,
            webhook_url=g.webhook_url,
            style=(g.params or {}).get("style"),
            medium=(g.params or {}).get("medium"),
            filter=(g.params or {}).get("filter"),
            progress=g.progress,
            step=g.step,
            total_steps=g.total_steps,
            duration=float(duration) if duration is not None else None,
            known_position=live.get("queue_position"),
            known_eta=live.get("eta_seconds"),
            _estimate=estimate,
            _pool=None if models.is_final(g.status) else pool_of(g.params),
            preview=live.get("preview"),
            error=g.error,
            created_at=UtcDateTime(g.created_at),
            started_at=UtcDateTime(g.started_at) if g.started_at else None,
            completed_at=UtcDateTime(g.completed_at) if g.completed_at else None,
        )


@strawberry.type(description="A page of the caller's generations, newest first.")
class GenerationPage:
    items: list[Generation]
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")
    has_more: bool

    @classmethod
    def from_page(cls, page: Page, storage: Storage) -> GenerationPage:
        return cls(
            items=[Generation.from_model(g, storage) for g in page.items],
            next_cursor=page.next_cursor,
            has_more=page.next_cursor is not None,
        )


@strawberry.type(description="The caller's account and credit balance.")
class Account:
    id: strawberry.ID
    email: str
    plan: str
    credits_available: int = strawberry.field(description="Spendable credits.")
    credits_reserved: int = strawberry.field(description="Credits held by unfinished jobs.")
    limits: Limits = strawberry.field(description="From the plan and any overrides.")
    webhook_secret: str = strawberry.field(
        description="Signs webhooks (X-Doitong-Signature: HMAC-SHA256 keyed with this "
        "string; webhook-signature: Standard Webhooks)."
    )
    created_at: UtcDateTime
    is_admin: bool = strawberry.field(
        default=False, description="Whether the account may use the admin operations."
    )
    profile: Profile = strawberry.field(
        description="A display name and settings (seed 000's /api/user/profile).",
    )

    @classmethod
    def from_model(cls, a: models.Account, limits: PlanLimits) -> Account:
        return cls(
            id=strawberry.ID(str(a.id)),
            email=a.email,
            plan=a.plan,
            credits_available=a.credits_available,
            credits_reserved=a.credits_reserved,
            limits=Limits(
                requests_per_minute=limits.requests_per_minute,
                concurrent_jobs=limits.concurrent_jobs,
                jobs_per_day=limits.jobs_per_day,
                max_subscriptions=limits.max_subscriptions,
                retention_days=limits.retention_days,
                storage_quota_mb=limits.storage_quota_mb,
                max_megapixels=limits.max_megapixels,
                daily=[KindQuota(kind=k, per_day=v) for k, v in sorted(limits.daily.items())],
            ),
            webhook_secret=a.webhook_secret,
            created_at=UtcDateTime(a.created_at),
            is_admin=a.is_admin,
            profile=Profile.from_model(ProfileModel.of(a)),
        )


@strawberry.type(description="An account's display name and settings (updateProfile).")
class Profile:
    display_name: str | None = strawberry.field(description="Null: none set.")
    default_model: str | None = strawberry.field(
        description="The service a seed-000 request that names no model runs (null: flux-dev)."
    )
    default_quality: str | None = strawberry.field(
        description="Kept and shown back; it changes nothing (steps decide quality)."
    )
    email_notifications: bool = strawberry.field(
        description="Kept and shown back; Fluxgate sends no email."
    )
    webhook_enabled: bool = strawberry.field(
        description="Kept and shown back; webhooks are given per request (webhookUrl)."
    )

    @classmethod
    def from_model(cls, p: ProfileModel) -> Profile:
        return cls(**dataclasses.asdict(p))


@strawberry.type(description="An account's limits; null means unlimited.")
class Limits:
    requests_per_minute: int | None
    concurrent_jobs: int | None
    jobs_per_day: int | None
    max_subscriptions: int | None = strawberry.field(
        description="GraphQL subscriptions open at once, over all connections."
    )
    # Quotas (issue 13).
    retention_days: int | None = strawberry.field(
        default=None, description="Days an image is kept; null: forever."
    )
    storage_quota_mb: int | None = None
    max_megapixels: float | None = strawberry.field(
        default=None, description="Largest image a job may make (width x height / 1e6)."
    )
    daily: list[KindQuota] = strawberry.field(
        default_factory=list, description="Jobs per UTC day per kind (a kind not listed: no quota)."
    )


@strawberry.type(description="A daily quota of one job kind.")
class KindQuota:
    kind: str
    per_day: int


@strawberry.type(description="Credits for sale through Stripe Checkout.")
class CreditPack:
    id: strawberry.ID
    name: str
    credits: int
    price: int = strawberry.field(description="In the currency's smallest unit (cents).")
    currency: str


@strawberry.type(description="A Stripe Checkout Session: send the buyer to `url`.")
class CheckoutSession:
    id: strawberry.ID
    url: str


@strawberry.type(description="An account's plan and limits, as an admin sees them.")
class AccountPlan:
    account_id: strawberry.ID
    plan: str
    limits: Limits


@strawberry.type(description="An API key (the secret itself is shown only at creation).")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="The key's first characters, to recognise it.")
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None = strawberry.field(
        description="Updated at most once a minute."
    )
    revoked_at: UtcDateTime | None

    @classmethod
    def from_model(cls, k: models.ApiKey) -> ApiKey:
        return cls(
            id=strawberry.ID(str(k.id)),
            name=k.name,
            prefix=k.prefix,
            created_at=UtcDateTime(k.created_at),
            last_used_at=UtcDateTime(k.last_used_at) if k.last_used_at else None,
            revoked_at=UtcDateTime(k.revoked_at) if k.revoked_at else None,
        )


@strawberry.type(description="A new API key and its secret, shown this once.")
class NewApiKey:
    key: ApiKey
    secret: str


@strawberry.type(description="What a request would cost, without running it.")
class PriceQuote:
    credits: int
    tier: str
    megapixels: float
    width: int
    height: int
    service: str
    version: str
    quality: str
    credits_available: int
    sufficient: bool = strawberry.field(description="Whether the balance covers it now.")
    kind: str = strawberry.field(description="The job kind priced.")
    count: int = strawberry.field(description="Images the job makes (each priced).")
    unit_credits: int = strawberry.field(description="One image's price.")
    # The model's pool's live workers, counted once (in Redis) however many fields ask.
    _pool_workers: strawberry.Private[asyncio.Future[tuple[str, int | None]] | None] = None

    @strawberry.field(
        description="Whether a worker of the model's pool is running now; null when that "
        "cannot be told (Redis unreachable). A job for an unavailable model is still "
        "accepted: it waits for a worker up to the maximum queue wait, then fails and its "
        "credits are released."
    )
    async def model_available(self, info: strawberry.Info) -> bool | None:
        _, workers = await self._workers(info)
        return None if workers is None else workers > 0

    @strawberry.field(description="Why the model cannot run now; null when it can.")
    async def unavailable_reason(self, info: strawberry.Info) -> str | None:
        pool, workers = await self._workers(info)
        if workers is None or workers > 0:
            return None
        return (
            f"No worker of the model pool {pool!r} is running: a job waits for one up to the "
            "maximum queue wait, then fails and its credits are released"
        )

    async def _workers(self, info: strawberry.Info) -> tuple[str, int | None]:
        if self._pool_workers is None:
            self._pool_workers = asyncio.ensure_future(self._count_workers(info.context.services))
        return await self._pool_workers

    async def _count_workers(self, services: Any) -> tuple[str, int | None]:
        try:
            pool = services.catalog.resolve(self.service, self.version).pool
        except BadUserInput:  # a kind that runs no registry model
            pool = DEFAULT_POOL
        try:
            counts = await services.queue.live_workers([pool])
        except (RedisError, OSError):
            return pool, None
        return pool, int(counts[pool])

    @classmethod
    def from_quote(cls, q: Quote, *, service: str, available: int) -> PriceQuote:
        return cls(
            kind=q.kind,
            count=q.count,
            unit_credits=q.unit_credits,
            credits=q.credits,
            tier=q.tier,
            megapixels=q.megapixels,
            width=q.width,
            height=q.height,
            service=service,
            version=q.version,
            quality=q.quality,
            credits_available=available,
            sufficient=available >= q.credits,
        )


@strawberry.type(description="One HTTP attempt to deliver a webhook.")
class WebhookAttempt:
    attempted_at: UtcDateTime
    success: bool
    status_code: int | None
    duration_ms: int
    response_body: str | None = strawberry.field(description="First 1 KiB of the response.")
    error: str | None

    @classmethod
    def from_model(cls, a: models.WebhookAttempt) -> WebhookAttempt:
        return cls(
            attempted_at=UtcDateTime(a.attempted_at),
            success=a.success,
            status_code=a.status_code,
            duration_ms=a.duration_ms,
            response_body=a.response_body,
            error=a.error,
        )


@strawberry.type(description="A webhook event and its delivery attempts.")
class WebhookDelivery:
    id: strawberry.ID = strawberry.field(description="The webhook-id header of every attempt.")
    generation_id: strawberry.ID
    event: str
    url: str
    status: str = strawberry.field(description="pending | delivered | failed")
    payload: JSON = strawberry.field(description="The body sent.")
    next_attempt_at: UtcDateTime | None
    created_at: UtcDateTime
    delivered_at: UtcDateTime | None
    attempts: list[WebhookAttempt]

    @classmethod
    def from_delivery(cls, d: Delivery) -> WebhookDelivery:
        e = d.event
        return cls(
            id=strawberry.ID(e.id),
            generation_id=strawberry.ID(e.generation_id),
            event=e.event,
            url=e.url,
            status=e.status,
            payload=JSON(json.loads(e.body)),
            next_attempt_at=UtcDateTime(e.next_attempt_at) if e.next_attempt_at else None,
            created_at=UtcDateTime(e.created_at),
            delivered_at=UtcDateTime(e.delivered_at) if e.delivered_at else None,
            attempts=[WebhookAttempt.from_model(a) for a in d.attempts],
        )
