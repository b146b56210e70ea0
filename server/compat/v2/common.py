"""What every seed-000 module shares: the surface, its error body
``{"error", "details", "code", "request_id"}``, the seed's generation parameters (used by
``/api/generate``, ``/api/img2img`` and each item of ``/api/batch/generate``) made into
a Fluxgate job input, and the seed's image object made from a ``Generation``.

Ids: the seed shows integers; Fluxgate's are strings (a job's: 24 hex characters; accounts
and keys: UUIDs), returned as strings (clients treat them as opaque). A job's id is both
the seed's ``image_id`` and ``generation_id``: ``/api/images/{image_id}`` and
``/api/get/{image_id}`` take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from billing.service.accounts import Profile
from billing.service.webhooks import SEED000_DEFAULT_EVENTS, seed000_error_message
from billing.service.webhooks import seed000_status as seed_status
from kinds.flux import DIMENSION_STEP
from kinds.text_to_image import keeps_aspect
from server.compat.surface import Call, Refused, Surface, request_id
from server.errors import ErrorResponse

__all__ = [
    "DEFAULT_MODEL",
    "ERRORS",
    "GENERATION_FIELDS",
    "MODELS",
    "NOT_SERVED",
    "ErrorBody",
    "GenerationParams",
    "SeedImage",
    "default_service",
    "error",
    "job_input",
    "not_served",
    "output_size",
    "seed_image",
    "seed_model",
    "seed_status",
    "status_message",
    "surface",
]

# Short texts of the seed's "error" field, by HTTP status.
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
NOT_SERVED = "NOT_IMPLEMENTED"


class ErrorBody(BaseModel):
    """The seed's error format (every 4xx/5xx of ``/api/...``)."""

    error: str = Field(description="A short description of the error (the HTTP reason).")
    details: str = Field(description="What is wrong, naming the offending field.")
    code: str = Field(
        description="Fluxgate's error code: BAD_USER_INPUT, UNAUTHENTICATED, "
        "INSUFFICIENT_CREDITS, NOT_FOUND, RATE_LIMITED, NOT_IMPLEMENTED, ..."
    )
    request_id: str | None = Field(description="This request's id (also in X-Request-Id).")
    field: str | None = Field(default=None, description="The offending field, if one.")
    retry_after: int | None = Field(
        default=None, description="For 429/503: seconds to wait (also in Retry-After)."
    )


# The error statuses every authenticated endpoint may answer, for ``responses=``:
# ``responses={201: Model, **ERRORS}``.
ERRORS: dict[int, type[BaseModel] | None] = {
    s: ErrorBody for s in (400, 401, 402, 403, 404, 429, 503)
}


def error(request: Request, refused: Refused) -> Response:
    body: dict[str, Any] = {
        "error": TITLES.get(refused.status, "Error"),
        "details": refused.message,
        "code": refused.code,
        "request_id": request_id(request),
    }
    if refused.field is not None:
        body["field"] = refused.field
    if refused.retry_after is not None:
        body["retry_after"] = refused.retry_after
    return ErrorResponse(body, status_code=refused.status, headers=refused.headers())


surface = Surface(
    "seed-000 REST v2",
    error=error,
    description="Seed 000's REST API v2 (`/api/...`, key in X-API-Key).",
    prefixes=("/api/",),
)


def not_served(what: str) -> Refused:
    """A feature this deployment does not serve (upscaling, face enhancement): HTTP 501,
    nothing charged."""
    return Refused(
        501,
        NOT_SERVED,
        f"{what} is not served on this deployment (no super-resolution model is "
        "installed); nothing was charged",
    )


# The seed's model names and the Fluxgate services (billing catalogue providers) that run
# them: the same names.
MODELS: dict[str, str] = {"flux-dev": "flux-dev", "flux-schnell": "flux-schnell"}
SeedModel = Literal["flux-dev", "flux-schnell"]
# What a request that names no model runs, unless the caller's profile says otherwise.
DEFAULT_MODEL: SeedModel = "flux-dev"


def seed_model(service: str | None) -> str:
    """The seed's name of a service kept as a profile's default model (flux-dev when it
    is none of the seed's)."""
    names = {v: k for k, v in MODELS.items()}
    return names.get(service or "", DEFAULT_MODEL)


async def default_service(call: Call) -> str:
    """The service of the caller's request that names no model: their profile's default
    model (PUT /api/user/profile), else flux-dev's."""
    caller = await call.context.caller()
    return MODELS[seed_model(Profile.of(caller.account).default_model)]


SeedFormat = Literal["png", "jpeg", "webp"]


class GenerationParams(BaseModel):
    """The seed's generation parameters (``/api/generate``; each batch item's ``params``
    with its ``prompt``). Unknown fields are refused, so a typo is not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Lengths are the kind's (FLUXGATE_MAX_PROMPT_CHARS): one limit on every surface.
    prompt: str = Field(min_length=1, description="What to draw.")
    negative_prompt: str = Field(default="", description="What to avoid (true CFG); empty: none.")
    # The seed documents 512-2048 in steps of 64, yet its own examples send 1920x1080
    # and 256x256: any size within Fluxgate's limits is taken, rounded to FLUX's grid.
    width: int = Field(
        default=1024, ge=256, le=2048,
        description="256-2048; rounded to the nearest multiple of 16 (the size rendered is "
        "the answer's dimensions).",
    )  # fmt: skip
    height: int = Field(
        default=1024, ge=256, le=2048,
        description="256-2048; rounded to the nearest multiple of 16.",
    )  # fmt: skip
    # Omitted: the model's own defaults from the registry (deploy/models.example.toml:
    # flux-dev 28 steps, guidance 3.5; flux-schnell 4 steps, guidance 0). The seed's
    # table says 30 and 7.5 for every model, which would run flux-schnell at 7.5 times
    # its steps (README).
    steps: int | None = Field(
        default=None, ge=1, le=100, description="Denoising steps; omitted: the model's default."
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=20.0,
        description="Prompt adherence (FLUX's distilled guidance, taken as is; flux-schnell "
        "ignores it); omitted: the model's default.",
    )
    seed: int = Field(default=-1, ge=-1, le=2**31 - 1, description="-1: random.")
    lora_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="One LoRA (see /api/loras)."
    )
    lora_ids: list[str] | None = Field(
        default=None, max_length=3, description="Up to 3 LoRAs (see /api/loras)."
    )
    lora_models: list[str] | None = Field(
        default=None, max_length=3, description="Same as lora_ids (img2img's name)."
    )
    format: SeedFormat = Field(default="png", description="png | jpeg | webp.")
    model: SeedModel | None = Field(
        default=None,
        description="flux-dev | flux-schnell; omitted: the profile's default_model "
        "(flux-dev unless changed with PUT /api/user/profile).",
    )
    smart_upscale: bool = Field(
        default=True,
        description="With a target larger than width x height and of its aspect ratio: "
        "the image is made at width x height, then enlarged to the target and redrawn "
        "there by FLUX (img2img at strength 0.35, the kind's target_width/target_height), "
        "one job priced as a generation at the target size. No super-resolution network "
        "runs on this deployment. Any other target is rendered directly.",
    )
    target_width: int | None = Field(
        default=None, ge=256, le=4096,
        description="With smart_upscale: the final width (default: width, or scaled "
        "like target_height); rounded to a multiple of 16.",
    )  # fmt: skip
    target_height: int | None = Field(
        default=None, ge=256, le=4096,
        description="With smart_upscale: the final height (default: height, or scaled "
        "like target_width); rounded to a multiple of 16.",
    )  # fmt: skip
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Where to POST this job's events."
    )
    webhook_events: list[str] | None = Field(
        default=None,
        max_length=8,
        description="generation.started | generation.progress | generation.complete | "
        "generation.failed (default with a webhook_url: generation.complete and "
        "generation.failed); the webhook body is seed 000's.",
    )

    def lora_list(self) -> list[str]:
        """Every LoRA named, in order, once."""
        names = [*(self.lora_ids or []), *(self.lora_models or [])]
        if self.lora_id is not None:
            names.insert(0, self.lora_id)
        return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def _on_grid(value: float) -> int:
    """``value`` rounded to the nearest multiple of FLUX's size step (16)."""
    return max(DIMENSION_STEP, round(value / DIMENSION_STEP) * DIMENSION_STEP)


def output_size(params: GenerationParams) -> tuple[int, int]:
    """The size the job renders at, on FLUX's grid: with smart_upscale, the target (a
    missing target side keeps the aspect ratio); otherwise width x height."""
    width, height = params.width, params.height
    tw, th = (params.target_width, params.target_height) if params.smart_upscale else (None, None)
    if tw is not None and th is None:
        th = round(height * tw / width)
    elif th is not None and tw is None:
        tw = round(width * th / height)
    return _on_grid(tw or width), _on_grid(th or height)


def job_input(
    params: GenerationParams, default_service: str, *, upscale: bool = False
) -> dict[str, Any]:
    """The ``text_to_image`` / ``image_to_image`` input (createJob's ``input``, a batch
    item's ``input``) for the seed's parameters; ``default_service`` runs it when they name
    no model. ``upscale`` (text_to_image): a smart-upscale target larger than the size, of
    its aspect ratio, is the kind's ``target_width``/``target_height`` (made at the size,
    then enlarged and redrawn at the target); otherwise the job renders at the output
    size. The kind validates the rest
    (limits, LoRAs, webhook URL, the account's maximum size)."""
    width, height = output_size(params)
    made = _on_grid(params.width), _on_grid(params.height)
    values: dict[str, Any] = {
        "service": MODELS[params.model] if params.model else default_service,
        "prompt": params.prompt,
        "width": width,
        "height": height,
        "seed": params.seed,
        "format": params.format,
    }
    larger = (width, height) != made and width >= made[0] and height >= made[1]
    if upscale and larger and keeps_aspect(made, (width, height)):
        values.update(width=made[0], height=made[1], target_width=width, target_height=height)
    if params.steps is not None:
        values["steps"] = params.steps
    if params.guidance_scale is not None:
        values["guidance"] = params.guidance_scale
    if params.negative_prompt.strip():
        values["negative_prompt"] = params.negative_prompt
        # The seed's negative prompt means true classifier-free guidance.
        values["true_cfg_scale"] = 4.0
    loras = params.lora_list()
    if loras:
        values["loras"] = [{"id": name} for name in loras]
    if params.webhook_url is not None:
        values["webhook_url"] = params.webhook_url
        # Seed 000's event names make the job's webhooks seed 000's body
        # (billing/service/webhooks.py); they are checked there.
        values["webhook_events"] = list(params.webhook_events or SEED000_DEFAULT_EVENTS)
    elif params.webhook_events is not None:
        values["webhook_events"] = params.webhook_events
    return values


# The Generation fields ``seed_image`` reads.
GENERATION_FIELDS = """
  id kind status provider prompt url width height seed progress duration error
  createdAt startedAt completedAt etaSeconds queuePosition
  outputs { id url width height format }
"""


def status_message(generation: Mapping[str, Any]) -> str:
    status = generation["status"]
    failure = seed000_error_message(status, generation.get("error"))
    if failure is not None:
        return failure
    if status == "completed":
        return "Image generated successfully"
    if status == "processing":
        return f"Generating: {generation.get('progress', 0)}%"
    return "Queued"


class SeedImage(BaseModel):
    """The seed's image object: one job (its first output once completed)."""

    id: str = Field(description="The job's id (also its image_id and generation_id).")
    image_id: str
    generation_id: str
    status: str = Field(description="queued | generating | completed | failed")
    prompt: str
    url: str | None = Field(description="The image, once completed.")
    thumbnail_url: str | None = Field(description="A WebP of ~256 px, once completed.")
    width: int
    height: int
    dimensions: str = Field(description="WIDTHxHEIGHT")
    seed: int
    model: str | None = Field(description="The service that ran it.")
    kind: str = Field(description="Fluxgate's job kind (text_to_image, image_to_image).")
    progress: int = Field(description="0..100")
    generation_time: float | None = Field(description="Seconds spent rendering.")
    error_message: str | None
    is_upscaled: bool = Field(description="Always false: no upscaling on this deployment.")
    created_at: str
    completed_at: str | None


def seed_image(generation: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Generation`` (with GENERATION_FIELDS) as the seed's image object."""
    status = generation["status"]
    outputs = generation.get("outputs") or []
    first = outputs[0] if outputs else None
    width = int(first["width"]) if first else int(generation["width"])
    height = int(first["height"]) if first else int(generation["height"])
    error_message = seed000_error_message(status, generation.get("error"))
    return {
        "id": generation["id"],
        "image_id": generation["id"],
        "generation_id": generation["id"],
        "status": seed_status(status),
        "prompt": generation["prompt"],
        "url": first["url"] if first else generation.get("url"),
        "thumbnail_url": generation.get("thumbnailUrl"),
        "width": width,
        "height": height,
        "dimensions": f"{width}x{height}",
        "seed": generation["seed"],
        "model": generation.get("provider"),
        "kind": generation["kind"],
        "progress": generation.get("progress", 0),
        "generation_time": generation.get("duration"),
        "error_message": error_message,
        "is_upscaled": False,
        "created_at": generation["createdAt"],
        "completed_at": generation.get("completedAt"),
    }
