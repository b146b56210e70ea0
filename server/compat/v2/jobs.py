"""Seed 000: generation, images and LoRAs — ``POST /api/generate`` (``text_to_image``),
``POST /api/img2img`` (``image_to_image``), ``POST /api/upscale/{image_id}`` (refused:
no upscaler on this deployment), ``GET /api/get/{id}`` and ``GET /api/images/{id}``
(``generation``), ``GET /api/images`` (the library's ``images``), ``DELETE
/api/images/{id}`` (``deleteImage`` of the job's outputs) and ``GET /api/loras``
(``loras``). Each runs GraphQL documents through the one schema as the caller."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from server.compat.surface import Call, FormFile, Refused, check_offset
from server.compat.v2.common import (
    ERRORS,
    GENERATION_FIELDS,
    ErrorBody,
    GenerationParams,
    SeedImage,
    default_service,
    job_input,
    not_served,
    seed_image,
    seed_status,
    status_message,
    surface,
)

__all__ = ["surface"]

MULTIPART = ("multipart/form-data",)
# The library's largest page (``images(first:)``).
MAX_PAGE = 100


# --- wire models -----------------------------------------------------------------------


class GenerateResponse(BaseModel):
    """``201 Created``: the job is queued; poll ``progress_url`` (or ``/api/get/{id}``)."""

    id: str = Field(description="The job's id (same as image_id).")
    image_id: str = Field(description="The job's id: pass it to /api/images/{id}.")
    generation_id: str = Field(description="The job's id.")
    status: str = Field(description="queued | generating | completed | failed")
    url: str | None
    thumbnail_url: str | None = Field(description="Always null here (see the library).")
    prompt: str
    seed: int = Field(description="The seed used (a random one for -1).")
    width: int
    height: int
    dimensions: str = Field(description="The size rendered: WIDTHxHEIGHT.")
    model: str
    estimated_time: int | None = Field(
        description="Seconds until done, from measured step times; null until measured."
    )
    progress_url: str
    websocket_channel: str
    is_upscaled: bool = Field(description="Always false: no upscale pass is applied.")


def _listify(value: Any) -> Any:
    """A form field sent once is a string; the seed repeats ``lora_models[]``."""
    return [value] if isinstance(value, str) else value


class Img2ImgForm(GenerationParams):
    """``/api/img2img``'s multipart form: the image and the generation parameters."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, arbitrary_types_allowed=True
    )

    image: FormFile = Field(description="The image to transform (png, jpeg, webp).")
    strength: float = Field(
        default=0.75, ge=0.0, le=1.0, description="How much to change it (0.0-1.0)."
    )
    width: int = Field(
        default=1024,
        ge=256,
        le=2048,
        description="256-2048, rounded to the nearest multiple of 16; the image is scaled to "
        "cover it and centre-cropped.",
    )
    height: int = Field(
        default=1024, ge=256, le=2048, description="256-2048, rounded to a multiple of 16."
    )
    smart_upscale: bool = Field(
        default=False,
        description="With target_width/target_height: render directly at the target size "
        "(no upscale pass on this deployment).",
    )
    lora_models: list[str] | None = Field(
        default=None,
        max_length=3,
        validation_alias=AliasChoices("lora_models", "lora_models[]"),
        description="Up to 3 LoRAs (also as repeated lora_models[] fields).",
    )
    lora_ids: list[str] | None = Field(
        default=None,
        max_length=3,
        validation_alias=AliasChoices("lora_ids", "lora_ids[]"),
        description="Same as lora_models.",
    )
    webhook_events: list[str] | None = Field(
        default=None,
        max_length=8,
        validation_alias=AliasChoices("webhook_events", "webhook_events[]"),
        description="As for /api/generate.",
    )

    _lists = field_validator("lora_models", "lora_ids", "webhook_events", mode="before")(_listify)


class UpscaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: Literal[2, 4] = Field(default=2, description="2 or 4.")
    face_enhance: bool = Field(default=False, description="GFPGAN face enhancement.")
    denoise: float = Field(default=0.5, ge=0.0, le=1.0)


class StatusResponse(BaseModel):
    """``/api/get/{id}``: the short status."""

    id: str
    status: str = Field(description="queued | generating | completed | failed")
    url: str | None = Field(description="The image, once completed.")
    message: str
    progress: int = Field(description="0..100")


class ImagesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1, le=100_000, description="From 1.")
    per_page: int = Field(default=20, ge=1, le=100, description="1-100.")
    status: Literal["queued", "generating", "completed", "failed"] | None = Field(
        default=None,
        description="The library holds finished images only: completed lists them all, "
        "the other statuses none.",
    )
    is_upscaled: bool | None = Field(
        default=None, description="No image is upscaled on this deployment."
    )
    sort: Literal["date_desc", "date_asc"] = "date_desc"


class ListImage(BaseModel):
    id: str = Field(description="The job's id (its image_id), as /api/images/{id} takes.")
    image_id: str
    generation_id: str
    library_id: str = Field(description="The library image's id (seed 002 / GraphQL).")
    status: str
    prompt: str
    url: str
    thumbnail_url: str | None
    width: int
    height: int
    dimensions: str
    model: str | None
    kind: str | None
    format: str
    size_bytes: int
    is_upscaled: bool
    created_at: str


class ImagesPage(BaseModel):
    images: list[ListImage]
    total: int
    page: int
    current_page: int
    per_page: int
    pages: int
    total_pages: int


class LorasQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(default=None, max_length=64, description="One category.")


class SeedLora(BaseModel):
    id: str
    name: str
    description: str
    trigger_words: list[str]
    example_prompt: str | None = Field(description="Its trigger words, as a prompt start.")
    thumbnail_url: str | None = Field(description="Always null: no previews are stored.")
    is_active: bool
    is_public: bool
    created_at: str
    category: str
    weight_recommended: float = Field(description="Its default scale.")
    base_model: str


class LorasResponse(BaseModel):
    loras: list[SeedLora]


# --- GraphQL ---------------------------------------------------------------------------

CREATE = f"""mutation SeedCreate($kind: String!, $input: JSON!, $image: Upload) {{
  createJob(kind: $kind, input: $input, image: $image) {{ {GENERATION_FIELDS} }}
}}"""
GENERATION = f"query SeedImage($id: ID!) {{ generation(id: $id) {{ {GENERATION_FIELDS} }} }}"
THUMBNAIL = "query SeedThumbnail($id: ID!) { image(id: $id) { id thumbnailUrl } }"
OUTPUTS = "query SeedOutputs($id: ID!) { generation(id: $id) { id status outputs { id } } }"
IMAGES = """query SeedImages($filter: ImageFilter, $sort: ImageSort, $first: Int!,
  $after: String) {
  images(filter: $filter, sort: $sort, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id url thumbnailUrl generationId kind provider prompt width height
      bytes mime createdAt } }
  }
}"""
CURSORS = """query SeedSkip($filter: ImageFilter, $sort: ImageSort, $first: Int!,
  $after: String) {
  images(filter: $filter, sort: $sort, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
  }
}"""
LORAS = """query SeedLoras($category: String) { loras(category: $category) {
  loras { id name category description triggerWords baseModel defaultScale enabled
    createdAt }
} }"""


def _accepted(generation: dict[str, Any]) -> dict[str, Any]:
    image = seed_image(generation)
    eta = generation.get("etaSeconds")
    job_id = generation["id"]
    return {
        "id": job_id,
        "image_id": job_id,
        "generation_id": job_id,
        "status": image["status"],
        "url": image["url"],
        "thumbnail_url": None,
        "prompt": image["prompt"],
        "seed": image["seed"],
        "width": image["width"],
        "height": image["height"],
        "dimensions": image["dimensions"],
        "model": generation["provider"],
        "estimated_time": round(eta) if isinstance(eta, int | float) else None,
        "progress_url": f"/api/images/{job_id}",
        "websocket_channel": f"generation_{job_id}",
        "is_upscaled": False,
    }


async def _create(call: Call, kind: str, values: dict[str, Any], image: Any = None) -> Any:
    data = await call.run(CREATE, {"kind": kind, "input": values, "image": image})
    generation = data.get("createJob")
    if generation is None:  # pragma: no cover - createJob returns the job or refuses
        raise Refused(500, "INTERNAL_SERVER_ERROR", "The job was not created")
    return generation


async def _job(call: Call, job_id: str) -> dict[str, Any]:
    """The caller's job (NOT_FOUND for another account's), with its image's thumbnail
    once completed (NOT_FOUND if the image was deleted from the library)."""
    generation: dict[str, Any] = (await call.run(GENERATION, {"id": job_id}))["generation"]
    outputs = generation["outputs"]
    if generation["status"] == "completed" and outputs:
        try:
            image = (await call.run(THUMBNAIL, {"id": outputs[0]["id"]}))["image"]
        except Refused as refused:
            if refused.status == 404:
                raise Refused.not_found("Image not found (it was deleted)") from None
            raise
        generation = {**generation, "thumbnailUrl": image["thumbnailUrl"]}
    return generation


# --- endpoints -------------------------------------------------------------------------


@surface.endpoint(
    "POST",
    "/api/generate",
    summary="Generate an image from a prompt (job kind text_to_image)",
    body=GenerationParams,
    responses={201: GenerateResponse, **ERRORS, 415: ErrorBody},
)
async def generate(call: Call) -> dict[str, Any]:
    values = job_input(call.body, await default_service(call), upscale=True)
    return _accepted(await _create(call, "text_to_image", values))


@surface.endpoint(
    "POST",
    "/api/img2img",
    summary="Transform an uploaded image (job kind image_to_image)",
    body=Img2ImgForm,
    media=MULTIPART,
    responses={201: GenerateResponse, **ERRORS, 415: ErrorBody},
)
async def img2img(call: Call) -> dict[str, Any]:
    form: Img2ImgForm = call.body
    values = job_input(form, await default_service(call))
    values["strength"] = form.strength
    return _accepted(await _create(call, "image_to_image", values, form.image))


@surface.endpoint(
    "POST",
    "/api/upscale/{image_id}",
    summary="Upscale an image: not served on this deployment (501)",
    body=UpscaleBody,
    responses={201: None, **ERRORS, 415: ErrorBody, 501: ErrorBody},
    description="Refused with 501 NOT_IMPLEMENTED after the image id is checked (another "
    "account's id is 404): no super-resolution or face-enhancement model is installed. "
    "Nothing is charged.",
)
async def upscale(call: Call) -> dict[str, Any]:
    await _job(call, call.path["image_id"])
    body: UpscaleBody = call.body
    raise not_served("Face enhancement" if body.face_enhance else "Upscaling")


@surface.endpoint(
    "GET",
    "/api/get/{image_id}",
    summary="An image's generation status",
    responses={200: StatusResponse, **ERRORS},
)
async def get_status(call: Call) -> dict[str, Any]:
    generation = await _job(call, call.path["image_id"])
    image = seed_image(generation)
    return {
        "id": generation["id"],
        "status": seed_status(generation["status"]),
        "url": image["url"],
        "message": status_message(generation),
        "progress": generation["progress"],
    }


@surface.endpoint(
    "GET",
    "/api/images/{image_id}",
    summary="One image (a job): its status, URL, seed and timing",
    responses={200: SeedImage, **ERRORS},
)
async def get_image(call: Call) -> dict[str, Any]:
    return seed_image(await _job(call, call.path["image_id"]))


@surface.endpoint(
    "DELETE",
    "/api/images/{image_id}",
    summary="Delete an image (every output of the job) from the library",
    responses={204: None, **ERRORS, 409: ErrorBody},
)
async def delete_image(call: Call) -> Response:
    generation = (await call.run(OUTPUTS, {"id": call.path["image_id"]}))["generation"]
    outputs = [o["id"] for o in generation["outputs"]]
    if not outputs:
        if generation["status"] in {"queued", "processing"}:
            raise Refused(
                409, "CONFLICT", "The image is still being generated: delete it once done"
            )
        raise Refused.not_found("Image not found (it was deleted, or never made)")
    fields = " ".join(f"d{i}: deleteImage(id: $o{i})" for i in range(len(outputs)))
    params = ", ".join(f"$o{i}: ID!" for i in range(len(outputs)))
    await call.run(
        f"mutation SeedDelete({params}) {{ {fields} }}",
        {f"o{i}": output for i, output in enumerate(outputs)},
    )
    return Response(status_code=204)


def _list_image(node: dict[str, Any]) -> dict[str, Any]:
    job_id = node.get("generationId") or node["id"]
    return {
        "id": job_id,
        "image_id": job_id,
        "generation_id": job_id,
        "library_id": node["id"],
        "status": "completed",
        "prompt": node["prompt"],
        "url": node["url"],
        "thumbnail_url": node.get("thumbnailUrl"),
        "width": node["width"],
        "height": node["height"],
        "dimensions": f"{node['width']}x{node['height']}",
        "model": node.get("provider"),
        "kind": node.get("kind"),
        "format": str(node["mime"]).removeprefix("image/").split("+")[0],
        "size_bytes": node["bytes"],
        "is_upscaled": False,
        "created_at": node["createdAt"],
    }


@surface.endpoint(
    "GET",
    "/api/images",
    summary="The caller's images, a page at a time (the library)",
    query=ImagesQuery,
    responses={200: ImagesPage, **ERRORS},
    description="Lists the library: finished images. Pages past the first 100 images are "
    "reached by walking the library's cursor (one query per 100 images skipped).",
)
async def list_images(call: Call) -> dict[str, Any]:
    query: ImagesQuery = call.query
    image_filter: dict[str, Any] = {}
    if query.status is not None:
        image_filter["status"] = ["processing" if query.status == "generating" else query.status]
    if query.is_upscaled is not None:
        image_filter["upscaled"] = query.is_upscaled
    variables: dict[str, Any] = {
        "filter": image_filter or None,
        "sort": {"by": "DATE", "direction": "ASC" if query.sort == "date_asc" else "DESC"},
        "after": None,
    }
    check_offset(query.page, query.per_page)
    skip = (query.page - 1) * query.per_page
    first = query.per_page
    if skip + first <= MAX_PAGE:
        first, keep_from = skip + first, skip
        skip = 0
    else:
        keep_from = 0
    more = True
    while skip > 0 and more:
        step = min(MAX_PAGE, skip)
        info = (await call.run(CURSORS, {**variables, "first": step}))["images"]["pageInfo"]
        variables["after"] = info["endCursor"]
        more = info["hasNextPage"]
        skip -= step
    page = (await call.run(IMAGES, {**variables, "first": first}))["images"]
    nodes = [e["node"] for e in page["edges"]][keep_from:] if more else []
    total = page["totalCount"]
    pages = max(1, -(-total // query.per_page))
    return {
        "images": [_list_image(n) for n in nodes],
        "total": total,
        "page": query.page,
        "current_page": query.page,
        "per_page": query.per_page,
        "pages": pages,
        "total_pages": pages,
    }


@surface.endpoint(
    "GET",
    "/api/loras",
    summary="The LoRA styles a generation may apply",
    query=LorasQuery,
    responses={200: LorasResponse, **ERRORS},
)
async def list_loras(call: Call) -> dict[str, Any]:
    data = await call.run(LORAS, {"category": call.query.category})
    return {
        "loras": [
            {
                "id": lora["id"],
                "name": lora["name"],
                "description": lora["description"],
                "trigger_words": lora["triggerWords"],
                "example_prompt": ", ".join(lora["triggerWords"]) or None,
                "thumbnail_url": None,
                "is_active": lora["enabled"],
                "is_public": True,
                "created_at": lora["createdAt"],
                "category": lora["category"],
                "weight_recommended": lora["defaultScale"],
                "base_model": lora["baseModel"],
            }
            for lora in data["loras"]["loras"]
        ]
    }
