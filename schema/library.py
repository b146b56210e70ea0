"""The image library on GraphQL (issue 13): ``images``, ``image``, ``updateImage``,
``deleteImage``. Thin adapters over ``billing.service.library``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

import strawberry
from strawberry.types import Info

from billing import models
from billing.service import library
from runtime.storage import Storage
from schema.context import Context
from schema.scalars import UtcDateTime

Ctx = Info[Context, None]


@strawberry.enum(description="What images are sorted by; ties are broken by id.")
class ImageSortBy(Enum):
    DATE = "date"
    NAME = "name"
    SIZE = strawberry.enum_value("size", description="The file's size in bytes.")
    FAVORITE = strawberry.enum_value(
        "favorite", description="Favourites apart from the rest, then by date."
    )


@strawberry.enum
class ImageSortDirection(Enum):
    ASC = "asc"
    DESC = "desc"


@strawberry.enum(description="Which text a search looks in (seed 002's search_by).")
class ImageSearchBy(Enum):
    ALL = "all"
    PROMPT = "prompt"
    NAME = "name"
    DESCRIPTION = "description"


@strawberry.input
class ImageSort:
    by: ImageSortBy = ImageSortBy.DATE
    direction: ImageSortDirection = ImageSortDirection.DESC


@strawberry.input(
    description="Every word must be found in the chosen text: as a word or the start of "
    "one (full text, any length), or inside a word (from 3 characters). Case-insensitive."
)
class ImageSearch:
    text: str
    by: ImageSearchBy = ImageSearchBy.ALL


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@strawberry.input(description="Conditions an image must meet (all of them).")
class ImageFilter:
    status: list[str] | None = strawberry.field(
        default=None, description="Its job's status, any of (queued, ..., completed)."
    )
    kind: list[str] | None = strawberry.field(
        default=None, description="Its job's kind, any of (text_to_image, edit, ...)."
    )
    provider: str | None = None
    version: str | None = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = strawberry.field(
        default=None,
        description="WIDTHxHEIGHT, or a bucket by the long side: small (<= 512), medium "
        "(<= 1024), large (<= 2048), xlarge.",
    )
    favorite: bool | None = None
    style: str | None = strawberry.field(default=None, description="Preset style id.")
    medium: str | None = strawberry.field(default=None, description="Preset medium id.")
    filter: str | None = strawberry.field(default=None, description="Preset filter id.")
    upscaled: bool | None = strawberry.field(
        default=None, description="Made by an upscale job (true) or not (false)."
    )
    created_from: UtcDateTime | None = strawberry.field(
        default=None, description="Created at or after."
    )
    created_to: UtcDateTime | None = strawberry.field(default=None, description="Created before.")

    def to_filter(self) -> library.ImageFilter:
        return library.ImageFilter(
            statuses=self.status,
            kinds=self.kind,
            provider=self.provider,
            version=self.version,
            width=self.width,
            height=self.height,
            resolution=self.resolution,
            favorite=self.favorite,
            style=self.style,
            medium=self.medium,
            filter=self.filter,
            upscaled=self.upscaled,
            created_from=_utc(self.created_from),
            created_to=_utc(self.created_to),
        )


@strawberry.type(description="One output of the caller's jobs, in its library.")
class Image:
    id: strawberry.ID
    url: str
    thumbnail_url: str | None = strawberry.field(
        description="A WebP of ~256 px; null for non-raster outputs (SVG, EPS) and for "
        "images stored before thumbnails existed."
    )
    name: str | None
    description: str | None
    favorite: bool
    generation_id: strawberry.ID | None
    kind: str | None
    provider: str | None
    version: str | None
    prompt: str
    style: str | None
    medium: str | None
    filter: str | None
    width: int
    height: int
    bytes: int = strawberry.field(description="The file's size.")
    mime: str
    created_at: UtcDateTime

    @classmethod
    def from_model(cls, a: models.Asset, storage: Storage) -> Image:
        return cls(
            id=strawberry.ID(str(a.id)),
            url=storage.url(a.key),
            thumbnail_url=storage.url(a.thumbnail_key) if a.thumbnail_key else None,
            name=a.name or None,
            description=a.description or None,
            favorite=a.favorite,
            generation_id=strawberry.ID(a.generation_id) if a.generation_id else None,
            kind=a.kind,
            provider=a.provider,
            version=a.version,
            prompt=a.prompt,
            style=a.preset_style,
            medium=a.preset_medium,
            filter=a.preset_filter,
            width=a.width,
            height=a.height,
            bytes=a.bytes,
            mime=a.mime,
            created_at=UtcDateTime(a.created_at),
        )


@strawberry.type
class ImageEdge:
    cursor: str
    node: Image


@strawberry.type
class ImagePageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")


@strawberry.type(description="A page of images (cursor pagination, stable order).")
class ImageConnection:
    edges: list[ImageEdge]
    page_info: ImagePageInfo
    query: strawberry.Private[library.ImageQuery]

    @strawberry.field(description="Images matching the filter and search, all pages together.")
    async def total_count(self, info: Ctx) -> int:
        # Counted only when asked for: a client paging through needs it once.
        async with info.context.read() as session:
            return await library.count_images(session, self.query)

    @classmethod
    def from_page(cls, page: library.ImagePage, storage: Storage) -> ImageConnection:
        edges = [
            ImageEdge(cursor=c, node=Image.from_model(a, storage))
            for a, c in zip(page.items, page.cursors, strict=True)
        ]
        return cls(
            edges=edges,
            page_info=ImagePageInfo(
                has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None
            ),
            query=page.query,
        )


@strawberry.type
class LibraryQuery:
    @strawberry.field(
        description="The caller's images (every output of its jobs): filter, search, sort, "
        f"paginate (first: 1..{library.MAX_PAGE}, after: an edge's cursor)."
    )
    async def images(
        self,
        info: Ctx,
        filter: ImageFilter | None = None,
        search: ImageSearch | None = None,
        sort: ImageSort | None = None,
        first: int = 25,
        after: str | None = None,
    ) -> ImageConnection:
        caller = await info.context.caller()
        order = sort or ImageSort()
        q = library.query(
            caller.account.id,
            filter=filter.to_filter() if filter is not None else None,
            search=search.text if search is not None else None,
            search_by=library.SearchBy(search.by.value) if search else library.SearchBy.ALL,
            sort=library.SortBy(order.by.value),
            descending=order.direction is ImageSortDirection.DESC,
            first=first,
            after=after,
        )
        async with info.context.read() as session:
            page = await library.list_images(session, q)
        return ImageConnection.from_page(page, info.context.services.storage)

    @strawberry.field(description="One of the caller's images (NOT_FOUND otherwise).")
    async def image(self, info: Ctx, id: strawberry.ID) -> Image:
        caller = await info.context.caller()
        async with info.context.read() as session:
            found = await library.get(session, caller.account.id, str(id))
        return Image.from_model(found, info.context.services.storage)


@strawberry.type
class LibraryMutation:
    @strawberry.mutation(
        description=f"Rename, describe or (un)favourite an image. name: at most "
        f"{library.NAME_MAX} characters, description {library.DESCRIPTION_MAX}; an empty "
        "string clears it."
    )
    async def update_image(
        self,
        info: Ctx,
        id: strawberry.ID,
        name: str | None = None,
        description: str | None = None,
        favorite: bool | None = None,
    ) -> Image:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            found = await library.update(
                uow,
                caller.account.id,
                str(id),
                name=name,
                description=description,
                favorite=favorite,
            )
        return Image.from_model(found, info.context.services.storage)

    @strawberry.mutation(
        description="Delete an image: its file and thumbnail leave storage (its URL stops "
        "working) and it leaves the library. Its job and the credits paid stay as they are."
    )
    async def delete_image(self, info: Ctx, id: strawberry.ID) -> strawberry.ID:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            await library.delete(uow, caller.account.id, str(id), info.context.services.storage)
        return id
