"""Accepting a job of any kind: the one path every surface takes (the GraphQL mutations,
the REST endpoints). Parse the kind's parameters, resolve its image inputs (an upload,
an ``<input>_url`` fetched through the SSRF guard, or an ``<input>_id`` naming an earlier
output of the same account), plan and price, store the inputs, then reserve the credits
and queue the job in one transaction. Nothing here knows any kind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kinds
from billing.errors import BadUserInput, NotFound
from billing.images import InputImage, check_same_size, decode_image
from billing.models import Generation, Lora
from billing.requests import validate_webhook
from billing.service import generations, loras
from billing.service.generations import JobSpec, NewAsset
from kinds import lora
from kinds.base import ImageInfo, JobKind, KindParams, Plan, PlanContext
from runtime.fetch import fetch_image
from schema.context import Context

MAX_ID_LEN = 64


@dataclass(frozen=True, slots=True)
class Upload:
    """A file sent with the request (multipart)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FromUrl:
    url: str


@dataclass(frozen=True, slots=True)
class FromImage:
    """An earlier output of the same account: an output's id, or a job's id (its first)."""

    image_id: str


Source = Upload | FromUrl | FromImage


@dataclass(frozen=True, slots=True)
class Delivery:
    """What every kind's request may add: where and what to announce, previews."""

    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    preview: bool = False
    # How the surface names the two webhook fields in errors.
    fields: tuple[str, str] = ("webhook_url", "webhook_events")


def sources_from(values: Mapping[str, Any], kind: JobKind) -> dict[str, Source]:
    """The image inputs named in a JSON or form body: ``<input>_url`` / ``<input>Url`` and
    ``<input>_id`` / ``<input>Id`` for each input the kind takes. Two ways of sending one
    input are refused."""
    found: dict[str, Source] = {}
    for spec in kind.inputs:
        for suffix, make in (("url", FromUrl), ("id", FromImage)):
            for name in (f"{spec.name}_{suffix}", f"{spec.name}{suffix.capitalize()}"):
                value = values.get(name)
                if value is None:
                    continue
                if not isinstance(value, str) or not value.strip():
                    raise BadUserInput(name, f"{name} must be a non-empty string")
                if spec.name in found:
                    raise BadUserInput(name, f"send {spec.name} one way only")
                found[spec.name] = make(value.strip())
    return found


def input_names(kind: JobKind) -> set[str]:
    """Every body field that names an image input of ``kind``."""
    return {
        f"{spec.name}{suffix}"
        for spec in kind.inputs
        for suffix in ("", "_url", "Url", "_id", "Id")
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    kind: JobKind
    params: KindParams
    images: dict[str, InputImage]
    plan: Plan


async def prepare(
    ctx: Context, kind_name: str, raw: Mapping[str, Any], sources: Mapping[str, Source]
) -> Prepared:
    """A request planned and priced: its parameters validated, its images loaded."""
    caller = await ctx.caller()
    services = ctx.services
    kind = kinds.get(kind_name)
    taken = {spec.name for spec in kind.inputs}
    for name in sources:
        if name not in taken:
            raise BadUserInput(name, f"{kind.name} takes no {name}")
    params = kind.parse(raw)
    lora_ids = lora.requested(params)
    found: dict[str, Lora] = {}
    if lora_ids:
        # One query, and none for the (usual) request without LoRAs; read now so a
        # disabled LoRA is refused at once, not after a cache's lifetime.
        async with ctx.read() as session:
            found = await loras.lookup(session, lora_ids)
    if sources:
        # Loading images is slow (a fetch, a decode): the request's database connection
        # is not held meanwhile; the job's transaction takes another.
        await ctx.close()
    images: dict[str, InputImage] = {}
    for spec in kind.inputs:
        source = sources.get(spec.name)
        if source is None:
            if spec.required:
                raise BadUserInput(
                    spec.name,
                    f"{spec.name} is required: send a file, {spec.name}_url or {spec.name}_id",
                )
            continue
        images[spec.name] = await _load(ctx, caller.account.id, spec.name, source)
    if "image" in images and "mask" in images:
        check_same_size(images["image"], images["mask"])
    plan = kind.plan(
        params,
        {name: ImageInfo(i.width, i.height) for name, i in images.items()},
        PlanContext(
            catalog=services.catalog, prices=services.prices, limits=services.limits, loras=found
        ),
    )
    return Prepared(kind=kind, params=params, images=images, plan=plan)


async def submit(
    ctx: Context,
    kind_name: str,
    raw: Mapping[str, Any],
    sources: Mapping[str, Source],
    delivery: Delivery,
) -> Generation:
    """Accept a job of any kind: reserve its price and queue it (INSUFFICIENT_CREDITS,
    the plan's caps and idempotency as for every job)."""
    caller = await ctx.caller()
    services = ctx.services
    job, stored = await plan_job(ctx, kind_name, raw, sources, delivery)
    try:
        async with ctx.transaction() as uow:
            generation = await generations.submit(
                uow,
                account_id=caller.account.id,
                api_key_id=caller.api_key_id,
                request=job,
                idempotency_key=ctx.idempotency_key,
                plans=services.plans,
                limits=await ctx.limits(),
            )
            replay = await _is_replay(uow.session, generation, stored)
    except BaseException:
        await discard(ctx, stored)
        raise
    if replay:
        # An idempotent retry got the first job back: its inputs are the first request's.
        await discard(ctx, stored)
    return generation


async def plan_job(
    ctx: Context,
    kind_name: str,
    raw: Mapping[str, Any],
    sources: Mapping[str, Source],
    delivery: Delivery,
) -> tuple[JobSpec, list[NewAsset]]:
    """A request made a priced job, ready to accept, and its image inputs stored (the
    caller ``discard``s them if the job is not accepted)."""
    services = ctx.services
    prepared = await prepare(ctx, kind_name, raw, sources)
    kind, params, images, plan = prepared.kind, prepared.params, prepared.images, prepared.plan
    webhook_url, webhook_events = validate_webhook(
        delivery.webhook_url, delivery.webhook_events, services.policy, fields=delivery.fields
    )
    fingerprint = {
        "kind": kind.name,
        "params": params.model_dump(mode="json"),
        "inputs": {name: image.sha256 for name, image in sorted(images.items())},
        "webhook_url": webhook_url,
        "webhook_events": webhook_events,
        "preview": delivery.preview,
    }
    request_hash = hashlib.sha256(
        json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    stored = [await _store(ctx, name, image) for name, image in images.items()]
    job = plan.job(
        kind.name,
        request_hash=request_hash,
        inputs=tuple(stored),
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        preview=delivery.preview,
    )
    return job, stored


async def _is_replay(session: Any, generation: Generation, stored: list[NewAsset]) -> bool:
    if not stored:
        return False
    keys = {a.key for a in await generations.assets(session, generation)}
    return not any(a.key in keys for a in stored)


async def _load(ctx: Context, account_id: Any, name: str, source: Source) -> InputImage:
    services = ctx.services
    limits = services.inputs
    if isinstance(source, Upload):
        data, field = source.data, name
    elif isinstance(source, FromUrl):
        field = f"{name}_url"
        data = await fetch_image(
            source.url,
            services.policy,
            field=field,
            timeout_s=limits.fetch_timeout_s,
            max_bytes=limits.max_bytes,
        )
    else:
        field = f"{name}_id"
        if len(source.image_id) > MAX_ID_LEN:
            raise BadUserInput(field, f"{field} is not an image id")
        async with ctx.read() as session:
            asset = await generations.source_image(session, account_id, source.image_id, field)
        try:
            data = await services.storage.get(asset.key)
        except FileNotFoundError:
            # The row outlived its file (deleted from the store by hand, or lost).
            raise NotFound("Image", field) from None
    # Decoding is CPU work (a second or two for the largest images): off the event loop.
    return await asyncio.to_thread(
        decode_image,
        data,
        field=field,
        role="mask" if name == "mask" else "image",
        max_bytes=limits.max_bytes,
        max_megapixels=limits.max_megapixels,
    )


async def _store(ctx: Context, name: str, image: InputImage) -> NewAsset:
    key = f"inputs/{secrets.token_hex(16)}.png"
    await ctx.services.storage.put(key, image.data, image.mime)
    return NewAsset(
        role=name,
        key=key,
        mime=image.mime,
        width=image.width,
        height=image.height,
        bytes=image.bytes,
        sha256=image.sha256,
    )


async def discard(ctx: Context, stored: list[NewAsset]) -> None:
    for asset in stored:
        await ctx.services.storage.delete(asset.key)
