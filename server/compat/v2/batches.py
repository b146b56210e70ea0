"""Seed 000's batches: ``POST /api/batch/generate``, ``POST /api/batch/img2img``,
``GET /api/batch/{batch_id}`` and ``DELETE /api/batch/{batch_id}`` — GraphQL's
``createBatch``, ``batch`` and ``cancelBatch`` in the seed's envelope. Each item is the
seed's generation parameters (``common.GenerationParams``) made into a ``text_to_image``
(or, for img2img, an ``image_to_image``) job; pricing, credits (all items reserved in one
transaction, or none), limits and isolation are createBatch's.

Ids: a batch's id is ``batch_<Fluxgate batch id>`` (the seed's ``batch_...`` form; its
Socket.IO channel is the same string), an item's ``image_id`` is its job's id. The seed's
per-item client ids (``batch[].id``) are the items' ``clientId``, so ``GET`` and the
webhook answer them again; an item without one is named by its ``image_id``. The
request's Idempotency-Key is the batch's ``clientBatchId``: the same key with the same
body returns the first batch (charged once), with another body (other item ids
included) it is 422 IDEMPOTENCY_KEY_REUSED.

A ``webhook_url`` is registered with seed 000's event name (``webhookEvents:
["batch.complete"]``): once every item is final it receives seed 000's body, ``{"event":
"batch.complete", "timestamp", "data", "signature"}``, ``data`` shaped like ``GET``'s
answer (``billing.service.batch_progress.seed000_payload``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from billing.service.batch_progress import SEED000_BATCH_COMPLETE, SEED000_BATCH_PREFIX
from billing.service.batch_progress import seed000_batch_status as batch_status
from billing.service.batches import MAX_CLIENT_ID, MAX_ITEMS
from billing.service.webhooks import seed000_error_message
from billing.text import unstorable
from server.compat.surface import Call, FormFile, Refused
from server.compat.v2.common import (
    ERRORS,
    GenerationParams,
    default_service,
    job_input,
    seed_status,
    surface,
)
from server.compat.v2.jobs import Img2ImgForm
from server.errors import BadBody, decode_json

__all__ = [
    "BATCH_FIELDS",
    "CREATED_STATUS",
    "batch_status",
    "client_ids",
    "job_entry",
    "public_id",
    "surface",
]

P = TypeVar("P", bound=GenerationParams)
PREFIX = SEED000_BATCH_PREFIX
# The seed's "Успешный ответ (202 Accepted)" heading says 202, but every client the seed
# ships (BatchProcessor in Python, JavaScript and PHP, and the three SDKs) tests
# ``status == 201`` and fails otherwise: 201, so they run as written.
CREATED_STATUS = 201

BATCH_FIELDS = """
  id clientBatchId status total queued processing completed failed cancelled progress
  createdAt completedAt
  items { id clientId status prompt seed url progress step totalSteps duration error
          startedAt completedAt etaSeconds queuePosition }
"""
CREATE = f"""mutation CreateBatch($input: CreateBatchInput!, $images: [Upload!]) {{
  createBatch(input: $input, images: $images) {{ {BATCH_FIELDS} }} }}"""
GET = f"query Batch($id: ID!) {{ batch(id: $id) {{ {BATCH_FIELDS} }} }}"
CANCEL = f"mutation CancelBatch($id: ID!) {{ cancelBatch(id: $id) {{ {BATCH_FIELDS} }} }}"


# ---- wire models -------------------------------------------------------------------


class BatchItem(BaseModel):
    """One generation of a batch: its prompt, its parameters (in ``params`` or beside the
    prompt, as the seed's two examples send them) and an optional client id."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CLIENT_ID,
        description="Your id for this item, answered back in `jobs[].id` (default: its "
        "image_id), in GET's answer and in the webhook.",
    )

    @field_validator("id")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and unstorable(value):
            raise ValueError("text must not contain NUL characters or lone surrogates")
        return value

    prompt: str = Field(min_length=1, description="What to draw (as /api/generate's prompt).")
    params: dict[str, Any] | None = Field(
        default=None,
        description="/api/generate's parameters but prompt: width, height, steps, "
        "guidance_scale, seed, model, format, negative_prompt, lora_id/lora_ids, "
        "smart_upscale, target_width, target_height. They may also be sent beside the "
        "prompt; those in params win. webhook_url is the batch's, not an item's.",
    )


class BatchGenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: list[BatchItem] = Field(
        min_length=1, max_length=MAX_ITEMS, description="1 to 10 generations."
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Receives seed 000's signed `batch.complete` body (`event`, "
        "`timestamp`, `data` as GET's answer, `signature`) once every item is final.",
    )
    parallel: bool = Field(
        default=False,
        description="No effect: the items are queued at once and run as workers free up.",
    )
    priority: Literal["low", "normal", "high"] = Field(
        default="normal", description="The batch's place in the queue."
    )


class BatchImg2ImgBody(BaseModel):
    """multipart/form-data: ``images[]`` and ``prompts[]`` repeated, ``shared_params`` a
    JSON object. One job per prompt: with one image every prompt transforms it, otherwise
    prompt i transforms image i."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    images: list[FormFile] = Field(
        alias="images[]", min_length=1, max_length=MAX_ITEMS, description="The images."
    )
    prompts: list[str] = Field(
        alias="prompts[]",
        min_length=1,
        max_length=MAX_ITEMS,
        description="One prompt per job (as many as images, or any number with one image).",
    )
    shared_params: str | None = Field(
        default=None,
        max_length=20000,
        description="A JSON object of /api/img2img's parameters for every job: strength, "
        "width, height, steps, guidance_scale, seed, model, format, lora_models, "
        "smart_upscale with target_width/target_height...",
    )
    webhook_url: str | None = Field(default=None, max_length=2048)
    priority: Literal["low", "normal", "high"] = "normal"

    @field_validator("images", "prompts", mode="before")
    @classmethod
    def _repeated(cls, value: Any) -> Any:
        """A form field sent once arrives as one value, not a list."""
        return value if isinstance(value, list) else [value]


class BatchJob(BaseModel):
    id: str = Field(description="Your item id, or its image_id.")
    image_id: str = Field(description="The job's id (/api/images/{image_id}).")
    status: str = Field(description="queued | generating | completed | failed")
    position: int = Field(description="The item's place in the batch, from 1.")
    url: str | None = None
    seed: int | None = None
    progress: int = 0
    generation_time: float | None = None
    error_message: str | None = None


class BatchCounts(BaseModel):
    batch_id: str = Field(description="batch_<id>; also its Socket.IO channel.")
    status: str = Field(description="processing | completed | failed | cancelled")
    total: int
    queued: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    jobs: list[BatchJob]
    status_url: str
    websocket_channel: str


class BatchCreated(BatchCounts):
    total_jobs: int = Field(description="Same as total.")
    estimated_time: int | None = Field(
        description="Seconds until the last item is done, from measured step times; "
        "null until measured."
    )


class BatchStatus(BatchCounts):
    progress: int = Field(description="0..100, the items together.")
    started_at: str | None
    completed_at: str | None
    total_time: float | None = Field(description="Seconds from the first start to the end.")


class BatchCancelled(BaseModel):
    batch_id: str
    cancelled: int = Field(description="Items now cancelled (their credits released).")
    completed: int = Field(description="Items that had finished: kept as they are.")
    message: str


# ---- shared with events.py ---------------------------------------------------------


def public_id(batch_id: str) -> str:
    return f"{PREFIX}{batch_id}"


def internal_id(value: str) -> str:
    return value.removeprefix(PREFIX)


def client_ids(batch: Mapping[str, Any]) -> list[str | None]:
    """The items' client ids (their ``clientId``; None for an item sent without one)."""
    return [item.get("clientId") for item in batch.get("items") or []]


def job_entry(item: Mapping[str, Any], position: int, client_id: str | None) -> dict[str, Any]:
    status = item["status"]
    return {
        "id": client_id or item["id"],
        "image_id": item["id"],
        "status": seed_status(status),
        "position": position,
        "url": item.get("url"),
        "seed": item.get("seed"),
        "progress": item.get("progress", 0),
        "generation_time": item.get("duration"),
        "error_message": seed000_error_message(status, item.get("error")),
    }


def counts(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the seed's creation and status answers share."""
    channel = public_id(str(batch["id"]))
    ids = client_ids(batch)
    return {
        "batch_id": channel,
        "status": batch_status(batch["status"]),
        "total": batch["total"],
        "queued": batch["queued"],
        "processing": batch["processing"],
        "completed": batch["completed"],
        "failed": batch["failed"],
        "cancelled": batch["cancelled"],
        "jobs": [job_entry(item, n, ids[n - 1]) for n, item in enumerate(batch["items"], start=1)],
        "status_url": f"/api/batch/{channel}",
        "websocket_channel": channel,
    }


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def status_body(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's batch status (GET, and the Socket.IO batch_completed event)."""
    starts = [s for s in (_when(i.get("startedAt")) for i in batch["items"]) if s is not None]
    started = min(starts) if starts else None
    ended = _when(batch.get("completedAt"))
    return {
        **counts(batch),
        "progress": round(float(batch["progress"]) * 100),
        "started_at": started.isoformat().replace("+00:00", "Z") if started else None,
        "completed_at": batch.get("completedAt"),
        "total_time": round((ended - started).total_seconds(), 1) if started and ended else None,
    }


# ---- requests ------------------------------------------------------------------------


def _item_params(model: type[P], index: int, values: Mapping[str, Any]) -> P:
    """An item's parameters, validated by the one model /api/generate (or /api/img2img)
    uses."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        field = f"batch.{index}.{where}" if where else f"batch.{index}"
        raise Refused.bad_input(f"{field}: {error['msg']}", field) from None


def _job_input(
    index: int, params: GenerationParams, service: str, *, upscale: bool = False
) -> dict[str, Any]:
    try:
        return job_input(params, service, upscale=upscale)
    except Refused as refused:
        if refused.field is not None:
            field = f"batch.{index}.{refused.field}"
            refused.message = refused.message.replace(refused.field, field, 1)
            refused.field = field
        raise


async def _create(
    call: Call,
    items: list[dict[str, Any]],
    ids: Sequence[str | None],
    *,
    webhook_url: str | None,
    priority: str,
    images: list[UploadFile] | None = None,
) -> JSONResponse:
    for item, client_id in zip(items, ids, strict=True):
        item["clientId"] = client_id
    batch_input = {
        "items": items,
        "priority": priority.upper(),
        "webhookUrl": webhook_url,
        # Registered with seed 000's name, the webhook's body is seed 000's.
        "webhookEvents": [SEED000_BATCH_COMPLETE] if webhook_url is not None else None,
        # The Idempotency-Key is the batch's identity: a repeat of the same body returns
        # the first batch (charged once), another body (item ids included) is refused.
        "clientBatchId": call.context.idempotency_key,
    }
    try:
        data = await call.run(CREATE, {"input": batch_input, "images": images})
    except Refused as refused:
        raise _item_field(refused) from None
    batch = data["createBatch"]
    etas = [i["etaSeconds"] for i in batch["items"] if i.get("etaSeconds") is not None]
    body = {
        **counts(batch),
        "total_jobs": batch["total"],
        "estimated_time": math.ceil(max(etas)) if etas else None,
    }
    return JSONResponse(body, status_code=CREATED_STATUS)


def _item_field(refused: Refused) -> Refused:
    """createBatch names an item's field ``items.N.field``: the seed's is ``batch``."""
    if refused.field is not None and refused.field.startswith("items."):
        renamed = "batch." + refused.field.removeprefix("items.")
        refused.message = refused.message.replace(refused.field, renamed)
        refused.field = renamed
    elif refused.field in ("client_batch_id", "clientBatchId"):
        refused.message = refused.message.replace(refused.field, "Idempotency-Key")
        refused.field = "Idempotency-Key"
    return refused


@surface.endpoint(
    "POST",
    "/api/batch/generate",
    summary="Generate up to 10 images in one batch",
    body=BatchGenerateBody,
    responses={CREATED_STATUS: BatchCreated, **ERRORS},
    description="createBatch of text_to_image jobs: every item priced and reserved "
    "together, or none (402 names the total). 201, not the 202 of one heading of the "
    "seed: its clients test for 201.",
)
async def batch_generate(call: Call) -> JSONResponse:
    body: BatchGenerateBody = call.body
    items: list[dict[str, Any]] = []
    service = await default_service(call)
    for index, item in enumerate(body.batch):
        flat = dict(item.model_extra or {})
        values = {**flat, **(item.params or {}), "prompt": item.prompt}
        params = _item_params(GenerationParams, index, values)
        items.append(
            {"kind": "text_to_image", "input": _job_input(index, params, service, upscale=True)}
        )
    return await _create(
        call,
        items,
        [item.id for item in body.batch],
        webhook_url=body.webhook_url,
        priority=body.priority,
    )


def _shared_params(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = decode_json(raw)
    except BadBody as exc:
        raise Refused.bad_input(f"shared_params: {exc.message}", "shared_params") from None
    if not isinstance(value, dict):
        raise Refused.bad_input("shared_params must be a JSON object", "shared_params")
    return value


@surface.endpoint(
    "POST",
    "/api/batch/img2img",
    summary="Transform images in one batch (multipart)",
    body=BatchImg2ImgBody,
    media=("multipart/form-data",),
    responses={CREATED_STATUS: BatchCreated, **ERRORS},
    description="createBatch of image_to_image jobs, the images uploaded with it: one job "
    "per prompt (with one image, every prompt transforms it; otherwise prompt i "
    "transforms image i).",
)
async def batch_img2img(call: Call) -> JSONResponse:
    body: BatchImg2ImgBody = call.body
    images, prompts = body.images, body.prompts
    if len(images) != 1 and len(images) != len(prompts):
        raise Refused.bad_input(
            f"prompts[]: send one prompt per image ({len(images)} images, "
            f"{len(prompts)} prompts), or one image with several prompts",
            "prompts[]",
        )
    shared = _shared_params(body.shared_params)
    items: list[dict[str, Any]] = []
    service = await default_service(call)
    for index, prompt in enumerate(prompts):
        upload = 0 if len(images) == 1 else index
        values = {**shared, "prompt": prompt, "image": images[upload]}
        form = _item_params(Img2ImgForm, index, values)
        job = _job_input(index, form, service)
        job["strength"] = form.strength
        job["image_upload"] = upload
        items.append({"kind": "image_to_image", "input": job})
    return await _create(
        call,
        items,
        [None] * len(items),
        webhook_url=body.webhook_url,
        priority=body.priority,
        images=list(images),
    )


@surface.endpoint(
    "GET",
    "/api/batch/{batch_id}",
    summary="A batch's status and its jobs",
    responses={200: BatchStatus, **ERRORS},
)
async def batch_get(call: Call) -> dict[str, Any]:
    data = await call.run(GET, {"id": internal_id(call.path["batch_id"])})
    return status_body(data["batch"])


@surface.endpoint(
    "DELETE",
    "/api/batch/{batch_id}",
    summary="Cancel a batch's unfinished jobs",
    responses={200: BatchCancelled, **ERRORS},
    description="cancelBatch: every item not yet final is cancelled and exactly its "
    "credits are released; finished items stay as they are.",
)
async def batch_cancel(call: Call) -> dict[str, Any]:
    data = await call.run(CANCEL, {"id": internal_id(call.path["batch_id"])})
    batch = data["cancelBatch"]
    return {
        "batch_id": public_id(str(batch["id"])),
        "cancelled": batch["cancelled"],
        "completed": batch["completed"],
        "message": "Batch processing cancelled",
    }
