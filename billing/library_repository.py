"""Every SQL statement of the image library (issue 13): an account's output assets.

A repository file of its own, beside ``repository.py``: the library's queries are built
from a filter (many optional conditions), and keeping them together keeps the index
design in one place. Every query names ``role = 'output'`` literally, the predicate of
the library's partial indexes (``billing.models.LIBRARY_INDEXES``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Asset, Generation

_AS = Asset.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_G = Generation.__table__.c  # type: ignore[attr-defined]

# The sort keys, each ending in the id (a stable order: ties broken by id).
SORT_COLUMNS: dict[str, tuple[Any, ...]] = {
    "date": (_AS.created_at, _AS.id),
    "name": (_AS.name, _AS.id),
    "size": (_AS.bytes, _AS.id),
    "favorite": (_AS.favorite, _AS.created_at, _AS.id),
}

# Full-text weights of each searchable field (see billing.models.LIBRARY_SEARCH).
SEARCH_WEIGHTS = {"prompt": "A", "name": "B", "description": "C"}
_TEXT_COLUMNS = {"prompt": _AS.prompt, "name": _AS.name, "description": _AS.description}
# pg_trgm indexes a pattern only from three characters on.
TRIGRAM_MIN = 3


@dataclass(frozen=True, slots=True)
class LibraryFilter:
    """The conditions of a library query; None: no condition."""

    statuses: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    exclude_kinds: tuple[str, ...] | None = None
    provider: str | None = None
    version: str | None = None
    width: int | None = None
    height: int | None = None
    long_side: tuple[int, int | None] | None = None  # inclusive min, inclusive max
    favorite: bool | None = None
    style: str | None = None
    medium: str | None = None
    preset_filter: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    words: tuple[str, ...] = ()  # every word must match
    search_fields: tuple[str, ...] = ("prompt", "name", "description")


def _escape_like(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _word_matches(word: str, fields: Sequence[str]) -> ColumnElement[bool]:
    """A word, as a word or word prefix (full text, any length) or inside a word (trigram,
    from three characters): the two kinds of index each answer half of it."""
    weights = "".join(SEARCH_WEIGHTS[f] for f in fields)
    # The word holds letters, digits and underscores only (service.library.words), so the
    # quoting below cannot be escaped; it is still sent as a bound parameter.
    query = func.to_tsquery("simple", f"'{word}':*{weights}")
    found: list[ColumnElement[bool]] = [_AS.search.op("@@")(query)]
    if len(word) >= TRIGRAM_MIN:
        pattern = f"%{_escape_like(word)}%"
        found += [_TEXT_COLUMNS[f].ilike(pattern, escape="\\") for f in fields]
    return or_(*found)


def _conditions(account_id: uuid.UUID, f: LibraryFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [_AS.account_id == account_id, _AS.role == "output"]
    if f.statuses is not None:
        where.append(exists().where(_G.id == _AS.generation_id, _G.status.in_(f.statuses)))
    if f.kinds is not None:
        where.append(_AS.kind.in_(f.kinds))
    if f.exclude_kinds is not None:
        where.append(or_(_AS.kind.is_(None), _AS.kind.not_in(f.exclude_kinds)))
    for column, value in (
        (_AS.provider, f.provider),
        (_AS.version, f.version),
        (_AS.width, f.width),
        (_AS.height, f.height),
        (_AS.favorite, f.favorite),
        (_AS.preset_style, f.style),
        (_AS.preset_medium, f.medium),
        (_AS.preset_filter, f.preset_filter),
    ):
        if value is not None:
            where.append(column == value)
    if f.long_side is not None:
        side = func.greatest(_AS.width, _AS.height)
        low, high = f.long_side
        where.append(side >= low)
        if high is not None:
            where.append(side <= high)
    if f.created_from is not None:
        where.append(_AS.created_at >= f.created_from)
    if f.created_to is not None:
        where.append(_AS.created_at < f.created_to)
    where += [_word_matches(w, f.search_fields) for w in f.words]
    return where


def page_query(
    account_id: uuid.UUID,
    f: LibraryFilter,
    *,
    sort: str,
    descending: bool,
    after: Sequence[Any] | None,
    limit: int,
) -> Any:
    """The SELECT of one page (exposed for the benchmark's EXPLAIN)."""
    columns = SORT_COLUMNS[sort]
    where = _conditions(account_id, f)
    if after is not None:
        key, values = tuple_(*columns), tuple_(*after)
        where.append(key < values if descending else key > values)
    order = [c.desc() if descending else c.asc() for c in columns]
    return select(Asset).where(and_(*where)).order_by(*order).limit(limit)


def count_query(account_id: uuid.UUID, f: LibraryFilter) -> Any:
    return select(func.count()).select_from(Asset).where(and_(*_conditions(account_id, f)))


async def list_images(
    session: AsyncSession,
    account_id: uuid.UUID,
    f: LibraryFilter,
    *,
    sort: str,
    descending: bool,
    after: Sequence[Any] | None,
    limit: int,
) -> Sequence[Asset]:
    query = page_query(account_id, f, sort=sort, descending=descending, after=after, limit=limit)
    result = await session.execute(query)
    return result.scalars().all()


async def count_images(session: AsyncSession, account_id: uuid.UUID, f: LibraryFilter) -> int:
    return int(await session.scalar(count_query(account_id, f)) or 0)


async def get_image(
    session: AsyncSession, account_id: uuid.UUID, image_id: uuid.UUID
) -> Asset | None:
    result = await session.execute(
        select(Asset).where(_AS.id == image_id, _AS.account_id == account_id, _AS.role == "output")
    )
    return result.scalars().first()


async def update_image(
    session: AsyncSession, account_id: uuid.UUID, image_id: uuid.UUID, values: dict[str, Any]
) -> Asset | None:
    result = await session.execute(
        update(Asset)
        .where(_AS.id == image_id, _AS.account_id == account_id, _AS.role == "output")
        .values(**values)
        .returning(Asset),
        execution_options={"synchronize_session": False},
    )
    return result.scalars().first()


async def delete_image(
    session: AsyncSession, account_id: uuid.UUID, image_id: uuid.UUID
) -> tuple[str, str | None] | None:
    """Delete the row; its storage keys (file, thumbnail), or None if it was not there."""
    result = await session.execute(
        delete(Asset)
        .where(_AS.id == image_id, _AS.account_id == account_id, _AS.role == "output")
        .returning(_AS.key, _AS.thumbnail_key)
    )
    row = result.first()
    return None if row is None else (row[0], row[1])
