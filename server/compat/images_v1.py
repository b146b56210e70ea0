"""Seed 002's images API, ``/api/v1/images`` (Bearer key), on the image library and the
``text_to_image`` kind.

- ``GET /api/v1/images``: the library (``images``) with the seed's search, filters, sort
  and ``per_page``, in a Laravel-style page (``data``, ``links``, ``meta``; ``page`` is the
  1-based page number);
- ``GET /api/v1/images/{id}``: one image (``image``);
- ``POST /api/v1/images`` (form-encoded): ``description`` is the prompt of a
  ``generateImage`` job (service flux-pro) of the chosen ``resolution`` with the
  ``style``/``medium``/``filter`` presets; the request waits for the job, then names the
  image (``updateImage``: ``name`` and ``description``) and answers it, 201;
- ``PUT``/``PATCH /api/v1/images/{id}``: ``name`` and ``favorite`` (``updateImage``);
- ``DELETE /api/v1/images/{id}``: ``deleteImage``.

Ids are Fluxgate's UUID strings (the seed's are integers; clients treat them as opaque).
Errors are ``{"message", "code", "errors": {field: [message]}}`` (Laravel's shape, with
Fluxgate's error code added; ``errors`` only when one field is at fault).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing.service.library import DESCRIPTION_MAX, NAME_MAX, SEARCH_MAX
from server.compat.surface import URLENCODED, Call, Refused, Surface, check_offset
from server.errors import ErrorResponse

__all__ = ["surface"]

# The seed has no model parameter: a stored image is a text_to_image job of this service.
SERVICE = "flux-pro"
# How long POST waits for its job before answering 202 (the job goes on; its image is in
# the list once done, without the name).
STORE_WAIT_S = 300.0
PATH = "/api/v1/images"

Resolution = Literal["256x256", "512x512", "1024x1024"]
Style = Literal[
    "3d_render", "abstract", "anime", "art_deco", "cartoon", "digital_art", "illustration",
    "origami", "pixel_art", "photography", "pop_art", "retro", "sketch", "vaporwave",
]  # fmt: skip
Medium = Literal[
    "acrylic", "canvas", "chalk", "charcoal", "crayon", "glass", "ink", "pastel", "pencil",
    "spray_paint", "watercolor",
]  # fmt: skip
Filter = Literal["grayscale", "sepia", "invert"]


class PerPage(IntEnum):
    """The seed's page sizes."""

    TEN = 10
    TWENTY_FIVE = 25
    FIFTY = 50
    HUNDRED = 100


# --- errors --------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every 4xx/5xx of ``/api/v1/images``."""

    message: str = Field(description="What is wrong, naming the offending field.")
    code: str = Field(
        description="Fluxgate's error code: BAD_USER_INPUT, UNAUTHENTICATED, "
        "INSUFFICIENT_CREDITS, NOT_FOUND, RATE_LIMITED, GENERATION_FAILED, ..."
    )
    errors: dict[str, list[str]] | None = Field(
        default=None, description="The offending field and its message (bad input only)."
    )
    retry_after: int | None = Field(
        default=None, description="For 429/503: seconds to wait (also in Retry-After)."
    )


def error(request: Request, refused: Refused) -> Response:
    body: dict[str, Any] = {"message": refused.message, "code": refused.code}
    if refused.field is not None:
        body["errors"] = {refused.field: [refused.message]}
    if refused.retry_after is not None:
        body["retry_after"] = refused.retry_after
    return ErrorResponse(body, status_code=refused.status, headers=refused.headers())


# GraphQL's input fields as this surface names them (generateImage's prompt is the
# seed's description, its width and height the seed's resolution).
RENAMED = {"prompt": "description", "width": "resolution", "height": "resolution"}


def rename_field(field: str) -> str:
    name = field.removeprefix("input.").removeprefix("filter.")
    return RENAMED.get(name, name)


surface = Surface(
    "images_v1",
    error=error,
    rename_field=rename_field,
    description="Seed 002's images API: the library, and images generated from a description.",
    prefixes=("/api/v1/images",),
)
ERRORS: dict[int, type[BaseModel] | None] = {
    s: ErrorBody for s in (400, 401, 403, 404, 415, 429, 503)
}


# --- wire models ---------------------------------------------------------------------


class ImageResource(BaseModel):
    """An image of the caller's library."""

    id: str = Field(description="The image's id (a UUID string; the seed shows integers).")
    object: Literal["image"] = "image"
    name: str | None = Field(description="Its name (null until named).")
    description: str | None = Field(description="Its description (the store's prompt).")
    prompt: str = Field(description="The prompt it was made from, presets applied.")
    resolution: str = Field(description="WIDTHxHEIGHT")
    width: int
    height: int
    style: Style | str | None = Field(description="The style preset it was made with.")
    medium: Medium | str | None = Field(description="The medium preset it was made with.")
    filter: Filter | str | None = Field(description="The filter preset it was made with.")
    favorite: bool
    url: str = Field(description="The image file.")
    thumbnail_url: str | None = Field(description="A WebP of ~256 px, if one exists.")
    generation_id: str | None = Field(description="The job that made it.")
    created_at: str = Field(description="ISO-8601 UTC.")


class ImageData(BaseModel):
    data: ImageResource


class PageLinks(BaseModel):
    first: str
    last: str
    prev: str | None
    next: str | None


class MetaLink(BaseModel):
    url: str | None
    label: str
    active: bool


class PageMeta(BaseModel):
    current_page: int
    from_: int | None = Field(alias="from", description="The first item's 1-based position.")
    last_page: int
    links: list[MetaLink]
    path: str
    per_page: int
    to: int | None
    total: int

    model_config = ConfigDict(populate_by_name=True)


class ImagePage(BaseModel):
    data: list[ImageResource]
    links: PageLinks
    meta: PageMeta


class Deleted(BaseModel):
    id: str
    object: Literal["image"] = "image"
    deleted: Literal[True] = True
    message: str


class Pending(BaseModel):
    """POST's answer when its job is not done within the wait: the job goes on."""

    message: str
    generation_id: str = Field(description="The job, still queued or processing.")


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    search: str | None = Field(default=None, max_length=SEARCH_MAX, description="Search query.")
    search_by: Literal["name"] = Field(default="name", description="Search by: name.")
    resolution: Resolution | None = Field(default=None, description="Filter by resolution.")
    style: Style | None = Field(default=None, description="Filter by style preset.")
    medium: Medium | None = Field(default=None, description="Filter by medium preset.")
    filter: Filter | None = Field(default=None, description="Filter by filter preset.")
    favorite: bool | None = Field(default=None, description="Filter by favourite.")
    sort_by: Literal["id", "name"] = Field(default="id", description="id (date created) or name.")
    sort: Literal["desc", "asc"] = Field(default="desc", description="Direction.")
    per_page: PerPage = Field(default=PerPage.TWENTY_FIVE, description="Results per page.")
    page: int = Field(default=1, ge=1, le=1_000_000, description="Page number (1-based).")


class StoreBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Name and description are stored after the (paid) job: checked here as the library
    # checks them, so one it would refuse costs nothing.
    name: str = Field(
        min_length=1, max_length=NAME_MAX, pattern=r"^[^\x00]*$", description="Image name."
    )
    description: str = Field(
        min_length=1,
        max_length=DESCRIPTION_MAX,
        pattern=r"^[^\x00]*$",
        description="Description of the image for the AI (the prompt).",
    )
    # Required by the seed's table, but its own example omits it: defaulted so that the
    # example runs as written.
    resolution: Resolution = Field(
        default="1024x1024", description="256x256, 512x512 or 1024x1024 (default 1024x1024)."
    )
    style: Style | None = Field(default=None, description="Style preset.")
    medium: Medium | None = Field(default=None, description="Medium preset.")
    filter: Filter | None = Field(default=None, description="Filter preset.")


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, description="Image name.")
    favorite: bool | None = Field(default=None, description="Whether it is a favourite.")


# --- GraphQL -------------------------------------------------------------------------

IMAGE_FIELDS = """
    id url thumbnailUrl name description favorite generationId prompt style medium filter
    width height createdAt
"""
LIST = f"""
query Images($filter: ImageFilter, $search: ImageSearch, $sort: ImageSort, $first: Int!,
             $after: String) {{
  images(filter: $filter, search: $search, sort: $sort, first: $first, after: $after) {{
    totalCount
    edges {{ node {{ {IMAGE_FIELDS} }} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}"""
SKIP = """
query Skip($filter: ImageFilter, $search: ImageSearch, $sort: ImageSort, $first: Int!,
           $after: String) {
  images(filter: $filter, search: $search, sort: $sort, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
  }
}"""
GET = f"query Image($id: ID!) {{ image(id: $id) {{ {IMAGE_FIELDS} }} }}"
UPDATE = f"""
mutation Update($id: ID!, $name: String, $description: String, $favorite: Boolean) {{
  updateImage(id: $id, name: $name, description: $description, favorite: $favorite) {{
    {IMAGE_FIELDS}
  }}
}}"""
DELETE = "mutation Delete($id: ID!) { deleteImage(id: $id) }"
GENERATE = """
mutation Store($input: ImageGenerationInput!) {
  generateImage(input: $input) { id status }
}"""
FOLLOW = """
subscription Follow($id: ID!) {
  generationUpdated(id: $id) { id status error outputs { id } }
}"""


def resource(image: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": image["id"],
        "object": "image",
        "name": image["name"],
        "description": image["description"],
        "prompt": image["prompt"],
        "resolution": f"{image['width']}x{image['height']}",
        "width": image["width"],
        "height": image["height"],
        "style": image["style"],
        "medium": image["medium"],
        "filter": image["filter"],
        "favorite": image["favorite"],
        "url": image["url"],
        "thumbnail_url": image["thumbnailUrl"],
        "generation_id": image["generationId"],
        "created_at": image["createdAt"],
    }


# --- list ----------------------------------------------------------------------------


def _variables(q: ListQuery) -> dict[str, Any]:
    image_filter: dict[str, Any] = {
        "resolution": q.resolution,
        "style": q.style,
        "medium": q.medium,
        "filter": q.filter,
        "favorite": q.favorite,
    }
    return {
        "filter": {k: v for k, v in image_filter.items() if v is not None} or None,
        "search": {"text": q.search, "by": "NAME"} if q.search and q.search.strip() else None,
        "sort": {
            "by": "DATE" if q.sort_by == "id" else "NAME",
            "direction": q.sort.upper(),
        },
    }


def _page_url(request: Request, page: int) -> str:
    return str(request.url.include_query_params(page=page))


def _meta_links(request: Request, current: int, last: int) -> list[dict[str, Any]]:
    """Laravel's pagination links: previous, the pages (first two, current ±3, last two,
    "..." between), next."""
    shown = sorted(
        {p for p in (1, 2, last - 1, last) if 1 <= p <= last}
        | set(range(max(1, current - 3), min(last, current + 3) + 1))
    )
    links: list[dict[str, Any]] = [
        {
            "url": _page_url(request, current - 1) if current > 1 else None,
            "label": "&laquo; Previous",
            "active": False,
        }
    ]
    previous = 0
    for p in shown:
        if p - previous > 1:
            links.append({"url": None, "label": "...", "active": False})
        links.append({"url": _page_url(request, p), "label": str(p), "active": p == current})
        previous = p
    links.append(
        {
            "url": _page_url(request, current + 1) if current < last else None,
            "label": "Next &raquo;",
            "active": False,
        }
    )
    return links


@surface.endpoint(
    "GET",
    PATH,
    summary="List the caller's images (search, filter, sort, paginate)",
    query=ListQuery,
    responses={200: ImagePage, **ERRORS},
    description="Every output of the caller's jobs, in a Laravel page (`page`: 1-based).",
)
async def list_images(call: Call) -> dict[str, Any]:
    q: ListQuery = call.query
    variables = _variables(q)
    per_page = int(q.per_page)
    check_offset(q.page, per_page)
    skip = (q.page - 1) * per_page
    after: str | None = None
    total: int | None = None
    # Walk to the page's cursor (the library pages by cursor), at most 100 a step.
    while skip > 0:
        step = min(skip, 100)
        walked = (await call.run(SKIP, {**variables, "first": step, "after": after}))["images"]
        after = walked["pageInfo"]["endCursor"]
        skip -= step
        if not walked["pageInfo"]["hasNextPage"]:
            break
    if skip > 0 or (q.page > 1 and after is None):
        items: list[dict[str, Any]] = []  # past the last page
        total = (await call.run(LIST, {**variables, "first": 1}))["images"]["totalCount"]
    else:
        page = (await call.run(LIST, {**variables, "first": per_page, "after": after}))["images"]
        items = [resource(edge["node"]) for edge in page["edges"]]
        total = int(page["totalCount"])
    last = max(1, math.ceil(total / per_page))
    first_item = (q.page - 1) * per_page + 1
    request = call.request
    return {
        "data": items,
        "links": {
            "first": _page_url(request, 1),
            "last": _page_url(request, last),
            "prev": _page_url(request, q.page - 1) if q.page > 1 else None,
            "next": _page_url(request, q.page + 1) if q.page < last else None,
        },
        "meta": {
            "current_page": q.page,
            "from": first_item if items else None,
            "last_page": last,
            "links": _meta_links(request, q.page, last),
            "path": str(request.url.replace(query=None)),
            "per_page": per_page,
            "to": first_item + len(items) - 1 if items else None,
            "total": total,
        },
    }


# --- one image -----------------------------------------------------------------------


@surface.endpoint(
    "GET",
    PATH + "/{id}",
    summary="Show one of the caller's images",
    responses={200: ImageData, **ERRORS},
)
async def show_image(call: Call) -> dict[str, Any]:
    image = (await call.run(GET, {"id": call.path["id"]}))["image"]
    return {"data": resource(image)}


async def _update(call: Call) -> dict[str, Any]:
    body: UpdateBody = call.body
    variables = {"id": call.path["id"], "name": body.name, "favorite": body.favorite}
    image = (await call.run(UPDATE, variables))["updateImage"]
    return {"data": resource(image)}


for _method in ("PUT", "PATCH"):
    surface.endpoint(
        _method,
        PATH + "/{id}",
        summary="Rename an image or (un)favourite it",
        body=UpdateBody,
        media=(URLENCODED, "application/json"),
        responses={200: ImageData, **ERRORS},
    )(_update)


@surface.endpoint(
    "DELETE",
    PATH + "/{id}",
    summary="Delete an image (its file leaves storage)",
    responses={200: Deleted, **ERRORS},
)
async def delete_image(call: Call) -> dict[str, Any]:
    deleted = (await call.run(DELETE, {"id": call.path["id"]}))["deleteImage"]
    return {"id": deleted, "object": "image", "deleted": True, "message": "Image deleted."}


# --- store ---------------------------------------------------------------------------


async def _final(call: Call, generation_id: str) -> dict[str, Any] | None:
    """The job's final state (``generationUpdated``), or None if it is not final within
    ``STORE_WAIT_S``."""
    schema = call.request.app.state.schema
    stream = await schema.subscribe(
        FOLLOW, variable_values={"id": generation_id}, context_value=call.context
    )
    if not hasattr(stream, "__aiter__"):  # refused before it started
        errors = stream.errors or []
        raise Refused.from_graphql({"message": errors[0].message, **_ext(errors[0])})
    try:
        async with asyncio.timeout(STORE_WAIT_S):
            async for result in stream:
                if result.errors:
                    raise Refused.from_graphql(
                        {"message": result.errors[0].message, **_ext(result.errors[0])}
                    )
                state: dict[str, Any] = (result.data or {})["generationUpdated"]
                if state["status"] in ("completed", "failed", "cancelled"):
                    return state
    except TimeoutError:
        return None
    finally:
        await stream.aclose()
    return None


def _ext(error: Any) -> dict[str, Any]:
    return {"extensions": error.extensions} if error.extensions else {}


@surface.endpoint(
    "POST",
    PATH,
    summary="Generate an image from a description and store it in the library",
    body=StoreBody,
    media=(URLENCODED,),
    responses={201: ImageData, 202: Pending, 402: ErrorBody, 500: ErrorBody, **ERRORS},
    description="A text_to_image job (service flux-pro) of `description` at `resolution` "
    "with the presets; answered once it completes (201), or 202 with the job's id if it "
    f"is not done within {int(STORE_WAIT_S)} s. Honours Idempotency-Key.",
)
async def store_image(call: Call) -> Response | dict[str, Any]:
    body: StoreBody = call.body
    width, height = (int(side) for side in body.resolution.split("x"))
    job_input = {
        "service": SERVICE,
        "prompt": body.description,
        "width": width,
        "height": height,
        "style": body.style,
        "medium": body.medium,
        "filter": body.filter,
    }
    job = (await call.run(GENERATE, {"input": job_input}))["generateImage"]
    try:
        final = await _final(call, job["id"])
    except Refused:
        final = None  # e.g. the account's open subscriptions are at their cap: the job goes on
    if final is None:
        return JSONResponse(
            {
                "message": "The image is still being generated; it will be in the list once done.",
                "generation_id": job["id"],
            },
            status_code=202,
        )
    if final["status"] != "completed" or not final["outputs"]:
        raise Refused(
            500,
            "GENERATION_FAILED",
            f"The image could not be generated ({final['status']}): "
            f"{final.get('error') or 'no output'}; its credits were released",
        )
    variables = {
        "id": final["outputs"][0]["id"],
        "name": body.name,
        "description": body.description,
    }
    image = (await call.run(UPDATE, variables))["updateImage"]
    return JSONResponse({"data": resource(image)}, status_code=201)
