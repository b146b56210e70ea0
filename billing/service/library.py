"""The image library (issue 13): every output of an account's jobs is an image it can
list, search, filter, sort, name, describe, favourite and delete.

Deleting an image removes its files (output and thumbnail) from storage and its row; the
job and the ledger are untouched: what was paid for stays paid for, nothing is refunded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from billing import library_repository as repo
from billing.db import UnitOfWork
from billing.errors import BadUserInput, NotFound
from billing.library_repository import LibraryFilter
from billing.models import Asset, Generation, GenerationStatus

MAX_PAGE = 100
NAME_MAX = 200
DESCRIPTION_MAX = 2000
SEARCH_MAX = 200
SEARCH_WORDS_MAX = 8
UPSCALE_KIND = "upscale"

# Named resolution buckets, by the image's long side in pixels (inclusive bounds).
RESOLUTION_BUCKETS: dict[str, tuple[int, int | None]] = {
    "small": (1, 512),
    "medium": (513, 1024),
    "large": (1025, 2048),
    "xlarge": (2049, None),
}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_WORD = re.compile(r"\w+")


class SortBy(StrEnum):
    DATE = "date"
    NAME = "name"
    SIZE = "size"  # the file's size in bytes
    FAVORITE = "favorite"  # favourites first (descending), then newest


class SearchBy(StrEnum):
    ALL = "all"
    PROMPT = "prompt"
    NAME = "name"
    DESCRIPTION = "description"


class Files(Protocol):
    """Where the images are (runtime.storage.Storage satisfies it)."""

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ImageFilter:
    """What a caller may ask for; ``query`` checks it and turns it into SQL conditions."""

    statuses: Sequence[str] | None = None
    kinds: Sequence[str] | None = None
    provider: str | None = None
    version: str | None = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None  # "WxH" or a bucket name
    favorite: bool | None = None
    style: str | None = None
    medium: str | None = None
    filter: str | None = None
    upscaled: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """A checked query, ready to run (its conditions, sort and page)."""

    account_id: uuid.UUID
    where: LibraryFilter
    sort: SortBy
    descending: bool
    first: int
    after: tuple[Any, ...] | None


@dataclass(frozen=True, slots=True)
class ImagePage:
    items: list[Asset]
    cursors: list[str]
    has_next: bool
    query: ImageQuery


def _text(value: str | None, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise BadUserInput(field, f"{field} must not contain NUL bytes")
    if len(value) > limit:
        raise BadUserInput(field, f"{field} must be at most {limit} characters")
    return value


def words(search: str) -> tuple[str, ...]:
    """The words of a search: letters, digits and underscores, lowercased."""
    return tuple(dict.fromkeys(w.lower() for w in _WORD.findall(search)))


def _filter(f: ImageFilter, search: str | None, search_by: SearchBy) -> LibraryFilter:
    statuses = None
    if f.statuses is not None:
        known = {s.value for s in GenerationStatus}
        for status in f.statuses:
            if status not in known:
                raise BadUserInput("filter.status", f"unknown status {status!r}")
        statuses = tuple(f.statuses)
    for field, value in (
        ("filter.provider", f.provider),
        ("filter.version", f.version),
        ("filter.style", f.style),
        ("filter.medium", f.medium),
        ("filter.filter", f.filter),
    ):
        _text(value, field, 64)
    kinds = tuple(f.kinds) if f.kinds is not None else None
    for kind in kinds or ():
        _text(kind, "filter.kind", 32)
    exclude = None
    if f.upscaled is True:
        kinds = (
            tuple(k for k in kinds if k == UPSCALE_KIND) if kinds is not None else (UPSCALE_KIND,)
        )
    elif f.upscaled is False:
        exclude = (UPSCALE_KIND,)
    width, height, long_side = f.width, f.height, None
    for side, size in (("filter.width", width), ("filter.height", height)):
        if size is not None and not 1 <= size <= 100_000:
            raise BadUserInput(side, f"{side} must be between 1 and 100000")
    if f.resolution is not None:
        name = f.resolution.strip().lower()
        exact = _SIZE.match(name)
        if exact is not None:
            width, height = int(exact[1]), int(exact[2])
        elif name in RESOLUTION_BUCKETS:
            long_side = RESOLUTION_BUCKETS[name]
        else:
            raise BadUserInput(
                "filter.resolution",
                "resolution is WIDTHxHEIGHT or one of " + ", ".join(RESOLUTION_BUCKETS),
            )
    if f.created_from and f.created_to and f.created_from > f.created_to:
        raise BadUserInput("filter.createdTo", "createdTo is before createdFrom")
    found: tuple[str, ...] = ()
    if search is not None:
        _text(search, "search.text", SEARCH_MAX)
        found = words(search)
        if len(found) > SEARCH_WORDS_MAX:
            raise BadUserInput("search.text", f"search at most {SEARCH_WORDS_MAX} words")
    fields = ("prompt", "name", "description") if search_by is SearchBy.ALL else (search_by.value,)
    return LibraryFilter(
        statuses=statuses,
        kinds=kinds,
        exclude_kinds=exclude,
        provider=f.provider,
        version=f.version,
        width=width,
        height=height,
        long_side=long_side,
        favorite=f.favorite,
        style=f.style,
        medium=f.medium,
        preset_filter=f.filter,
        created_from=f.created_from,
        created_to=f.created_to,
        words=found,
        search_fields=fields,
    )


# --- cursors: the sort they belong to and the last row's sort key, opaque to clients ---


def _key(asset: Asset, sort: SortBy) -> list[Any]:
    if sort is SortBy.NAME:
        return [asset.name, str(asset.id)]
    if sort is SortBy.SIZE:
        return [asset.bytes, str(asset.id)]
    if sort is SortBy.FAVORITE:
        return [asset.favorite, asset.created_at.isoformat(), str(asset.id)]
    return [asset.created_at.isoformat(), str(asset.id)]


def encode_cursor(asset: Asset, sort: SortBy, descending: bool) -> str:
    body = json.dumps([sort.value, descending, *_key(asset, sort)], separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: SortBy, descending: bool) -> tuple[Any, ...]:
    bad = BadUserInput("after", "after is not a cursor of this query (same sort) from this API")
    if len(cursor) > 1000:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, list) or data[:2] != [sort.value, descending]:
            raise bad
        *values, last = data[2:]
        key_id = uuid.UUID(last)
        if sort is SortBy.DATE:
            (created,) = values
            return (datetime.fromisoformat(created), key_id)
        if sort is SortBy.NAME:
            (name,) = values
            if not isinstance(name, str):
                raise bad
            return (name, key_id)
        if sort is SortBy.SIZE:
            (size,) = values
            if not isinstance(size, int) or isinstance(size, bool):
                raise bad
            return (size, key_id)
        favorite, created = values
        if not isinstance(favorite, bool):
            raise bad
        return (favorite, datetime.fromisoformat(created), key_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, AttributeError):
        raise bad from None


def query(
    account_id: uuid.UUID,
    *,
    filter: ImageFilter | None = None,
    search: str | None = None,
    search_by: SearchBy = SearchBy.ALL,
    sort: SortBy = SortBy.DATE,
    descending: bool = True,
    first: int = 25,
    after: str | None = None,
) -> ImageQuery:
    """Check a library query (BAD_USER_INPUT naming the field) without running it."""
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput("first", f"first must be between 1 and {MAX_PAGE}")
    return ImageQuery(
        account_id=account_id,
        where=_filter(filter or ImageFilter(), search, search_by),
        sort=sort,
        descending=descending,
        first=first,
        after=decode_cursor(after, sort, descending) if after else None,
    )


async def list_images(session: AsyncSession, q: ImageQuery) -> ImagePage:
    rows = await repo.list_images(
        session,
        q.account_id,
        q.where,
        sort=q.sort.value,
        descending=q.descending,
        after=q.after,
        limit=q.first + 1,
    )
    items = list(rows[: q.first])
    return ImagePage(
        items=items,
        cursors=[encode_cursor(a, q.sort, q.descending) for a in items],
        has_next=len(rows) > q.first,
        query=q,
    )


async def count_images(session: AsyncSession, q: ImageQuery) -> int:
    """How many images match (every page together)."""
    return await repo.count_images(session, q.account_id, q.where)


def _image_id(image_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(image_id)
    except ValueError:
        raise NotFound("Image", "id") from None


async def get(session: AsyncSession, account_id: uuid.UUID, image_id: str) -> Asset:
    """The caller's image. Another account's image is indistinguishable from a missing one."""
    found = await repo.get_image(session, account_id, _image_id(image_id))
    if found is None:
        raise NotFound("Image", "id")
    return found


async def update(
    uow: UnitOfWork,
    account_id: uuid.UUID,
    image_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    favorite: bool | None = None,
) -> Asset:
    """Rename, describe, (un)favourite. An empty name or description clears it."""
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = (_text(name, "name", NAME_MAX) or "").strip()
    if description is not None:
        values["description"] = (_text(description, "description", DESCRIPTION_MAX) or "").strip()
    if favorite is not None:
        values["favorite"] = favorite
    key = _image_id(image_id)
    if not values:
        return await get(uow.session, account_id, image_id)
    found = await repo.update_image(uow.session, account_id, key, values)
    if found is None:
        raise NotFound("Image", "id")
    return found


async def delete(uow: UnitOfWork, account_id: uuid.UUID, image_id: str, files: Files) -> None:
    """Delete the image: its row, then its files, in the same transaction.

    The files go before the commit, not after it: if the store fails, the transaction
    rolls back, the image is still listed and the caller may simply retry (deleting a
    missing file is not an error). Had the row gone first, a failed file deletion would
    leave a file reachable by URL that no query lists. The ledger is not touched."""
    keys = await repo.delete_image(uow.session, account_id, _image_id(image_id))
    if keys is None:
        raise NotFound("Image", "id")
    key, thumbnail = keys
    if thumbnail is not None:
        await files.delete(thumbnail)
    await files.delete(key)


# --- at completion -------------------------------------------------------------------


def _preset(params: dict[str, Any], name: str) -> str | None:
    """A preset frozen into a job's params: its id (a string, or an object's ``id``)."""
    value = params.get(name)
    if isinstance(value, dict):
        value = value.get("id") or value.get("name")
    return value[:64] if isinstance(value, str) and value else None


def output_fields(generation: Generation) -> dict[str, Any]:
    """What an output asset copies from its job when it is stored (the library filters
    and searches these on the asset's own indexes)."""
    params = generation.params or {}
    return {
        "kind": generation.kind,
        "provider": generation.provider,
        "version": generation.version,
        "prompt": generation.prompt or "",
        "preset_style": _preset(params, "style"),
        "preset_medium": _preset(params, "medium"),
        "preset_filter": _preset(params, "filter"),
    }
