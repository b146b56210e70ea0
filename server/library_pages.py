"""The dashboard's image library (/dashboard/library, issue 13): a grid of thumbnails with
filters, search, sorting and pages, and per image a favourite toggle, rename and delete.
Forms only (the dashboard runs no script); every form carries the CSRF token. Handlers
call ``billing/service/library.py``, as the GraphQL fields do."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from billing.errors import BadUserInput, FluxgateError, NotFound
from billing.service import accounts, library
from server import dashboard
from server.dashboard import HOME, SHOWN_TYPES, guarded

LIBRARY = f"{HOME}/library"
PER_PAGE = 24
# The query parameters the page keeps across its links and forms.
PARAMS = ("q", "by", "kind", "favorite", "resolution", "upscaled", "sort", "dir")


def _state(request: Request) -> dict[str, str]:
    return {p: request.query_params.get(p, "").strip()[:200] for p in PARAMS}


def _query(caller: accounts.Caller, s: dict[str, str], after: str | None) -> library.ImageQuery:
    def choice(
        name: str, values: type[library.SortBy] | type[library.SearchBy], default: Any
    ) -> Any:
        raw = s[name] or default
        try:
            return values(raw)
        except ValueError:
            raise BadUserInput(name, f"unknown {name} {raw!r}") from None

    flag = {"": None, "yes": True, "no": False}
    if s["favorite"] not in flag or s["upscaled"] not in flag:
        raise BadUserInput("favorite", "favorite and upscaled are yes, no or empty")
    return library.query(
        caller.account.id,
        filter=library.ImageFilter(
            kinds=[s["kind"]] if s["kind"] else None,
            resolution=s["resolution"] or None,
            favorite=flag[s["favorite"]],
            upscaled=flag[s["upscaled"]],
        ),
        search=s["q"] or None,
        search_by=choice("by", library.SearchBy, "all"),
        sort=choice("sort", library.SortBy, "date"),
        descending=(s["dir"] or "desc") != "asc",
        first=PER_PAGE,
        after=after,
    )


@dashboard.signed_in
async def library_page(request: Request, caller: accounts.Caller) -> Response:
    services = dashboard._services(request)
    state = _state(request)
    after = request.query_params.get("after") or None
    try:
        q = _query(caller, state, after)
        async with services.sessions() as session:
            page = await library.list_images(session, q)
            total = await library.count_images(session, q)
    except BadUserInput as exc:
        return dashboard._render(
            request, "library.html", caller, status_code=400, page="library", images=[],
            total=0, error=exc.message, state=state, next_url=None, first_url=None,
            here=LIBRARY,
        )  # fmt: skip
    keep = {k: v for k, v in state.items() if v}
    here = f"{LIBRARY}?{urlencode({**keep, **({'after': after} if after else {})})}"
    images = [
        {"id": str(a.id), "name": a.name, "prompt": a.prompt, "favorite": a.favorite,
         "kind": a.kind, "width": a.width, "height": a.height, "bytes": a.bytes,
         "url": services.storage.url(a.key),
         "thumb": services.storage.url(a.thumbnail_key) if a.thumbnail_key else (
             services.storage.url(a.key) if a.mime in SHOWN_TYPES else None),
         "format": a.key.rpartition(".")[2].upper(), "created_at": a.created_at}
        for a in page.items
    ]  # fmt: skip
    next_url = (
        f"{LIBRARY}?{urlencode({**keep, 'after': page.cursors[-1]})}" if page.has_next else None
    )
    first_url = f"{LIBRARY}?{urlencode(keep)}" if after else None
    return dashboard._render(
        request, "library.html", caller, page="library", images=images, total=total,
        error=None, state=state, next_url=next_url, first_url=first_url, here=here,
    )  # fmt: skip


def _back(form: dict[str, Any]) -> str:
    """Where a form returns: the library page it was posted from (never elsewhere)."""
    back = str(form.get("back", ""))
    if back == LIBRARY or (back.startswith(f"{LIBRARY}?") and "\\" not in back):
        return back
    return LIBRARY


async def _change(
    request: Request, caller: accounts.Caller, form: dict[str, Any], **values: Any
) -> Response:
    services = dashboard._services(request)
    image_id = request.path_params["id"]
    try:
        async with services.store.unit_of_work() as uow:
            if values.pop("delete", False):
                await library.delete(uow, caller.account.id, image_id, services.storage)
                request.session["flash"] = "Image deleted."
            else:
                await library.update(uow, caller.account.id, image_id, **values)
    except NotFound:
        return dashboard._not_found("Image")
    except FluxgateError as exc:
        request.session["flash"] = exc.message
    return RedirectResponse(_back(form), status_code=303)


@dashboard.posted
async def favorite(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    return await _change(request, caller, form, favorite=form.get("favorite") == "1")


@dashboard.posted
async def rename(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    return await _change(request, caller, form, name=str(form.get("name", "")))


@dashboard.posted
async def delete(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    return await _change(request, caller, form, delete=True)


routes: list[BaseRoute] = [
    Route(LIBRARY, guarded(library_page), methods=["GET"]),
    Route(f"{LIBRARY}/{{id}}/favorite", guarded(favorite), methods=["POST"]),
    Route(f"{LIBRARY}/{{id}}/rename", guarded(rename), methods=["POST"]),
    Route(f"{LIBRARY}/{{id}}/delete", guarded(delete), methods=["POST"]),
]
