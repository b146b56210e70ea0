"""``fluxgate images`` — an account's image library from the operator's shell (issue 13):
the same service functions as GraphQL ``images`` and ``deleteImage``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from runtime.settings import get_settings

images_app = typer.Typer(help="Accounts' image libraries: list, search, delete.")
T = TypeVar("T")
Account = Annotated[str, typer.Option(help="Account id or email")]


def _run(fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """``fn(uow, storage)`` in one transaction (no events: the library emits none)."""
    from billing.db import make_engine, make_sessionmaker, unit_of_work_without_dispatch
    from billing.errors import FluxgateError
    from runtime.storage import storage_from_settings

    settings = get_settings()

    async def main() -> T:
        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with unit_of_work_without_dispatch(make_sessionmaker(engine)) as uow:
                return await fn(uow, storage_from_settings(settings))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except FluxgateError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=1) from None


def _row(a: Any, storage: Any) -> dict[str, Any]:
    return {
        "id": str(a.id), "generation_id": a.generation_id, "name": a.name,
        "favorite": a.favorite, "kind": a.kind, "prompt": a.prompt, "width": a.width,
        "height": a.height, "bytes": a.bytes, "url": storage.url(a.key),
        "thumbnail_url": storage.url(a.thumbnail_key) if a.thumbnail_key else None,
        "created_at": a.created_at.isoformat(),
    }  # fmt: skip


@images_app.command("list")
def images_list(
    account: Account,
    search: Annotated[str | None, typer.Option(help="Words to find")] = None,
    search_by: Annotated[str, typer.Option(help="all | prompt | name | description")] = "all",
    kind: Annotated[str | None, typer.Option(help="Only this job kind")] = None,
    favorite: Annotated[bool | None, typer.Option("--favorite/--not-favorite")] = None,
    sort: Annotated[str, typer.Option(help="date | name | size | favorite")] = "date",
    asc: Annotated[bool, typer.Option("--asc", help="Ascending (default descending)")] = False,
    first: Annotated[int, typer.Option(help="Page size, 1..100")] = 25,
    after: Annotated[str | None, typer.Option(help="The `next` cursor of a page")] = None,
) -> None:
    """One JSON object per image, then {"total": N, "next": CURSOR|null}."""
    from billing.errors import BadUserInput
    from billing.service import accounts, library

    async def run(uow: Any, storage: Any) -> list[dict[str, Any]]:
        owner = await accounts.find_account(uow.session, account)
        try:
            by, order = library.SearchBy(search_by), library.SortBy(sort)
        except ValueError as exc:
            raise BadUserInput("sort", str(exc)) from None
        q = library.query(
            owner.id,
            filter=library.ImageFilter(kinds=[kind] if kind else None, favorite=favorite),
            search=search, search_by=by, sort=order, descending=not asc, first=first,
            after=after,
        )  # fmt: skip
        page = await library.list_images(uow.session, q)
        rows = [_row(a, storage) for a in page.items]
        total = await library.count_images(uow.session, q)
        return [*rows, {"total": total, "next": page.cursors[-1] if page.has_next else None}]

    for row in _run(run):
        typer.echo(json.dumps(row))


@images_app.command("delete")
def images_delete(account: Account, image_id: str) -> None:
    """Delete an image: its files leave storage; its job and the ledger stay."""
    from billing.service import accounts, library

    async def run(uow: Any, storage: Any) -> None:
        owner = await accounts.find_account(uow.session, account)
        await library.delete(uow, owner.id, image_id, storage)

    _run(run)
    typer.echo(f"deleted {image_id}")
