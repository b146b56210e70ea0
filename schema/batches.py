"""The GraphQL surface of batches (issue 13): ``createBatch``, ``batch``, ``batches``,
``cancelBatch`` and the ``batchUpdated`` subscription. Thin: each item is parsed and
planned like a ``createJob`` input (``schema/jobs.py``); the rules are in
``billing/service/batches.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from enum import Enum
from typing import Annotated, Any

import strawberry
from pydantic.alias_generators import to_camel, to_snake
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON
from strawberry.types import Info

import kinds
from billing import models
from billing.errors import BadUserInput, NotFound, Unauthenticated
from billing.requests import validate_webhook
from billing.service import batches
from billing.service.batch_progress import BatchView, validate_events
from billing.service.generations import JobSpec, NewAsset
from schema import jobs
from schema.context import Context
from schema.kind_schema import read_upload
from schema.live import REVOKED_MESSAGE, listening, present
from schema.scalars import UtcDateTime
from schema.types import Generation

Ctx = Info[Context, None]

# Where the batch's webhook goes: per item there is none (the items' own events are not
# sent), so these fields of an item are refused rather than silently ignored.
ITEM_DELIVERY_FIELDS = ("webhook_url", "webhook_events", "preview")
# An item's image given as one of createBatch's ``images`` uploads: its index (seed 000's
# multipart /api/batch/img2img sends its files this way).
UPLOAD_FIELD = "image_upload"


@strawberry.enum(description="A batch's place in the queue (see the README: priorities).")
class Priority(Enum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


@strawberry.input(description="One job of a batch: a kind and its input, as for createJob.")
class BatchItemInput:
    kind: str = strawberry.field(description="The job kind (see `priceJob`, `createJob`).")
    input: JSON = strawberry.field(
        description="The kind's parameters (snake_case or camelCase); image inputs as "
        "`imageUrl` / `imageId` (and `maskUrl` / `maskId`), or `imageUpload`: the index of "
        "one of createBatch's `images`."
    )
    client_id: str | None = strawberry.field(
        default=None,
        description="Your id for this item (1 to 64 characters), answered back as the "
        "item's `clientId` and in the batch's webhook; part of the request that "
        "clientBatchId makes idempotent.",
    )


@strawberry.input
class CreateBatchInput:
    items: list[BatchItemInput] = strawberry.field(description="1 to 10 jobs, of any kinds.")
    client_batch_id: str | None = strawberry.field(
        default=None,
        description="Your id for this batch: sending it again with the same batch returns "
        "the first one (charged once); with a different batch, IDEMPOTENCY_KEY_REUSED.",
    )
    priority: Priority = Priority.NORMAL
    webhook_url: str | None = strawberry.field(
        default=None,
        description="Receives the batch's completion event once every item is final (its "
        "body: see webhookEvents).",
    )
    webhook_events: list[str] | None = strawberry.field(
        default=None,
        description="The completion event's name, which picks the webhook's body: null or "
        '`["batch.completed"]` for Fluxgate\'s, `["batch.complete"]` for seed 000\'s '
        '(`{event, timestamp, data, signature}`, README "Compatible APIs").',
    )


@strawberry.type(description="Up to 10 jobs accepted together, and how far they are.")
class Batch:
    id: strawberry.ID
    client_batch_id: str | None
    priority: Priority
    status: str = strawberry.field(
        description="queued | processing | completed | partially_failed | failed | cancelled"
    )
    total: int
    queued: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    progress: float = strawberry.field(
        description="0..1: the items' progress together (a final item counts in full)."
    )
    credit_cost: int = strawberry.field(description="Credits reserved for all the items.")
    webhook_url: str | None
    webhook_events: list[str] | None = strawberry.field(
        description="The completion event's name (see CreateBatchInput.webhookEvents)."
    )
    created_at: UtcDateTime
    completed_at: UtcDateTime | None = strawberry.field(
        description="When the last item reached a final state."
    )
    items: list[Generation] = strawberry.field(description="The jobs, in the order sent.")

    @classmethod
    async def of(cls, ctx: Context, view: BatchView) -> Batch:
        b, status = view.batch, models.GenerationStatus
        items = []
        for g, client_id in zip(view.items, view.client_ids, strict=True):
            item = await present(ctx, g)
            item.client_id = client_id
            items.append(item)
        return cls(
            id=strawberry.ID(b.id),
            client_batch_id=b.client_batch_id,
            priority=Priority(b.priority),
            status=view.status,
            total=view.total,
            queued=view.count(status.QUEUED),
            processing=view.count(status.PROCESSING),
            completed=view.count(status.COMPLETED),
            failed=view.count(status.FAILED),
            cancelled=view.count(status.CANCELLED),
            progress=view.progress,
            credit_cost=b.credit_cost,
            webhook_url=b.webhook_url,
            webhook_events=b.webhook_events,
            created_at=UtcDateTime(b.created_at),
            completed_at=UtcDateTime(b.completed_at) if b.completed_at else None,
            items=items,
        )


@strawberry.type
class BatchPage:
    items: list[Batch]
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")
    has_more: bool


def _camel(field: str) -> str:
    return ".".join(to_camel(part) for part in field.split("."))


def _item_error(index: int, exc: BadUserInput | NotFound) -> Exception:
    """An item's error, its field named by its path in the batch (``items.3.prompt``)."""
    field = exc.field or "input"
    path = f"items.{index}.{_camel(field)}"
    if isinstance(exc, NotFound):
        return NotFound("Image", path)
    message = exc.message.replace(field, _camel(field), 1)
    return BadUserInput(path, f"{path}: {message}")


async def _plan_item(
    ctx: Context, item: BatchItemInput, uploads: list[bytes]
) -> tuple[JobSpec, list[NewAsset]]:
    kind = kinds.get(item.kind, field="kind")
    if not isinstance(item.input, dict):
        raise BadUserInput("input", "input must be a JSON object")
    values = {to_snake(str(k)): v for k, v in item.input.items()}
    for name in ITEM_DELIVERY_FIELDS:
        if values.get(name) is not None:
            raise BadUserInput(name, f"{name} is set on the batch, not on its items")
    sources = jobs.sources_from(values, kind)
    index = values.pop(UPLOAD_FIELD, None)
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int) or not kind.inputs:
            raise BadUserInput(UPLOAD_FIELD, f"{UPLOAD_FIELD} must be an index of images")
        if not 0 <= index < len(uploads):
            raise BadUserInput(UPLOAD_FIELD, f"{UPLOAD_FIELD} {index}: no such upload in images")
        first = kind.inputs[0].name
        if first in sources:
            raise BadUserInput(UPLOAD_FIELD, f"send {first} one way only")
        sources[first] = jobs.Upload(uploads[index])
    inputs = jobs.input_names(kind)
    raw = {k: v for k, v in values.items() if v is not None and k not in inputs}
    return await jobs.plan_job(ctx, kind.name, raw, sources, jobs.Delivery())


async def create_batch(
    ctx: Context, input: CreateBatchInput, images: list[Upload] | None = None
) -> Batch:
    caller = await ctx.caller()
    services = ctx.services
    # Refused before anything is fetched or planned: bad input costs nothing.
    batches.check_size(len(input.items))
    if len(images or []) > batches.MAX_ITEMS:
        raise BadUserInput("images", f"at most {batches.MAX_ITEMS} images")
    uploads: list[bytes] = []
    for number, upload in enumerate(images or []):
        uploads.append(await read_upload(upload, services.inputs.max_bytes, f"images.{number}"))
    batches.check_client_batch_id(input.client_batch_id)
    client_ids = batches.check_client_ids([item.client_id for item in input.items])
    webhook_url, _ = validate_webhook(
        input.webhook_url, None, services.policy, fields=("webhookUrl", "webhookEvents")
    )
    webhook_events = validate_events(input.webhook_events, "webhookEvents")
    planned: list[JobSpec] = []
    stored: list[NewAsset] = []
    try:
        for index, item in enumerate(input.items):
            try:
                job, assets = await _plan_item(ctx, item, uploads)
            except (BadUserInput, NotFound) as exc:
                if isinstance(exc, NotFound) and exc.field is None:
                    raise
                raise _item_error(index, exc) from None
            planned.append(job)
            stored.extend(assets)
        fingerprint: dict[str, Any] = {
            "priority": input.priority.value,
            "webhook_url": webhook_url,
            "items": [job.request_hash for job in planned],
        }
        # Only when sent, so a batch without them keeps the fingerprint it had before
        # they existed (a retry across an upgrade is still recognised).
        if client_ids is not None:
            fingerprint["client_ids"] = client_ids
        if webhook_events is not None:
            fingerprint["webhook_events"] = webhook_events
        request_hash = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        async with ctx.transaction() as uow:
            created = await batches.create(
                uow,
                account_id=caller.account.id,
                api_key_id=caller.api_key_id,
                items=planned,
                priority=models.Priority(input.priority.value),
                request_hash=request_hash,
                client_batch_id=input.client_batch_id,
                client_ids=client_ids,
                webhook_url=webhook_url,
                webhook_events=webhook_events,
                plans=services.plans,
            )
    except BaseException:
        await jobs.discard(ctx, stored)
        raise
    if created.replay:
        # The first request's inputs are the batch's: this one's are not needed.
        await jobs.discard(ctx, stored)
    return await Batch.of(ctx, created.view)


def _end_if_cancelled() -> None:
    """See ``schema.live._end_if_cancelled``: a swallowed cancellation ends the stream."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _shown(view: BatchView) -> tuple[Any, ...]:
    return (*((g.id, g.revision) for g in view.items), view.batch.completed_at)


async def follow_batch(ctx: Context, batch_id: str) -> AsyncIterator[Batch]:
    """The batch now, then again after each change of one of its items, until every item
    is final. It listens to the account's job events (registered before the first read,
    so nothing falls in between) and re-reads the batch when one of its items changed."""
    caller = await ctx.caller()
    account_id = caller.account.id
    async with listening(ctx, caller) as events:
        async with ctx.read() as session:
            view = await batches.get(session, account_id, batch_id)
        yield await Batch.of(ctx, view)
        shown = _shown(view)
        while view.finished < view.total:
            _end_if_cancelled()
            message = await events.get()
            if message.get("revoked"):
                raise Unauthenticated(REVOKED_MESSAGE)
            if "snapshot" in message:
                if (message["snapshot"] or {}).get("batch_id") != batch_id:
                    continue
            elif message.get("resync"):
                await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
            else:
                continue
            async with ctx.read() as session:
                view = await batches.get(session, account_id, batch_id)
            if _shown(view) == shown:
                continue
            shown = _shown(view)
            yield await Batch.of(ctx, view)


@strawberry.type
class BatchQuery:
    @strawberry.field(description="One of the caller's batches (NOT_FOUND otherwise).")
    async def batch(self, info: Ctx, id: strawberry.ID) -> Batch:
        caller = await info.context.caller()
        async with info.context.read() as session:
            view = await batches.get(session, caller.account.id, str(id))
        return await Batch.of(info.context, view)

    @strawberry.field(description="The caller's batches, newest first.")
    async def batches(self, info: Ctx, first: int = 20, after: str | None = None) -> BatchPage:
        caller = await info.context.caller()
        async with info.context.read() as session:
            page = await batches.list_page(session, caller.account.id, first=first, after=after)
        return BatchPage(
            items=[await Batch.of(info.context, v) for v in page.items],
            next_cursor=page.next_cursor,
            has_more=page.next_cursor is not None,
        )


@strawberry.type
class BatchMutation:
    @strawberry.mutation(
        description="Queue 1 to 10 jobs of any kinds together: every item is priced and "
        "its credits reserved in one transaction, or none is (INSUFFICIENT_CREDITS names "
        "the total). Idempotent on clientBatchId."
    )
    async def create_batch(
        self,
        info: Ctx,
        input: CreateBatchInput,
        images: Annotated[
            list[Upload] | None,
            strawberry.argument(
                description="Image files for the items (GraphQL multipart request spec): "
                "an item's input names one by its index as `imageUpload`."
            ),
        ] = None,
    ) -> Batch:
        return await create_batch(info.context, input, images)

    @strawberry.mutation(
        description="Cancel every item of the batch not yet final and release exactly "
        "their credits; finished items are left as they are."
    )
    async def cancel_batch(self, info: Ctx, id: strawberry.ID) -> Batch:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            view = await batches.cancel(uow, caller.account.id, str(id))
        return await Batch.of(info.context, view)


@strawberry.type
class BatchSubscription:
    @strawberry.subscription(
        description="The batch now, then after each change of one of its items; the "
        "stream ends once every item is final."
    )
    async def batch_updated(self, info: Ctx, id: strawberry.ID) -> AsyncGenerator[Batch, None]:
        async for b in follow_batch(info.context, str(id)):
            yield b
