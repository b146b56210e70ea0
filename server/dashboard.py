"""The billing dashboard (/dashboard): server-rendered pages (Jinja2, no build step, no
CDN) over the same services as the API.

Sign-in takes an API key once and opens a server-side session
(``billing/service/web_sessions.py``); the cookie (signed, HttpOnly, SameSite=Strict,
Secure under https, scoped to /dashboard) carries only its id and the CSRF token. Every
request checks the session is live and its key still valid: signing out, or revoking the
key, ends it, for every copy of the cookie. Every state-changing form carries the CSRF
token, and every page forbids framing and anything not served by the app (CSP).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from billing.errors import Conflict, FluxgateError, Forbidden
from billing.service import (
    accounts,
    batches,
    generations,
    ledger,
    loras,
    payments,
    quotas,
    reports,
    web_sessions,
    webhooks,
)
from billing.service.batch_progress import BatchView
from schema.context import Services
from server import rest
from server.auth import api_key_from

log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
HOME = "/dashboard"
# Ids in dashboard URLs are short; anything longer (or with a NUL) names nothing.
MAX_ID_LENGTH = 255
MAX_PAGE = 10**9
# What a job page shows inline (<img>, SVG included: an <img> runs no script in it); any
# other output (EPS) is a download link.
SHOWN_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/svg+xml"})


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return str(token)


async def _form(request: Request) -> dict[str, Any] | Response:
    """The posted form, or a 403 when its CSRF token is missing or wrong."""
    form = dict(await request.form())
    sent = str(form.get("csrf_token", ""))
    expected = request.session.get("csrf", "")
    if not sent or not expected or not hmac.compare_digest(sent, str(expected)):
        return rest.error_response(403, "FORBIDDEN", "Missing or invalid CSRF token")
    return form


async def _caller(request: Request) -> accounts.Caller | None:
    session_id = request.session.get("sid")
    if not isinstance(session_id, str) or not session_id:
        return None
    async with _services(request).sessions() as session:
        caller = await web_sessions.resume(session, session_id)
    if caller is None:
        request.session.clear()
    return caller


def _not_found(what: str) -> Response:
    return rest.error_response(404, "NOT_FOUND", f"{what} not found")


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


Endpoint = Callable[[Request], Awaitable[Response]]
SignedIn = Callable[[Request, accounts.Caller], Awaitable[Response]]
Posted = Callable[[Request, accounts.Caller, dict[str, Any]], Awaitable[Response]]


def signed_in(handler: SignedIn) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in account; others are sent to sign in."""

    async def page(request: Request) -> Response:
        caller = await _caller(request)
        if caller is None:
            return _to_login()
        return await handler(request, caller)

    return page


def posted(handler: Posted) -> Callable[[Request], Awaitable[Response]]:
    """A state-changing form of a signed-in account, with its CSRF token checked."""

    async def action(request: Request) -> Response:
        caller = await _caller(request)
        if caller is None:
            return _to_login()
        form = await _form(request)
        if isinstance(form, Response):
            return form
        return await handler(request, caller, form)

    return action


def _render(
    request: Request,
    template: str,
    caller: accounts.Caller | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    flash = request.session.pop("flash", None)
    nonce = secrets.token_urlsafe(16)
    response = templates.TemplateResponse(
        request,
        template,
        {"account": caller.account if caller else None, "csrf_token": csrf_token(request),
         "flash": flash, "csp_nonce": nonce, **context},
        status_code=status_code,
    )  # fmt: skip
    response.headers["Content-Security-Policy"] = _csp(request, nonce)
    return response


def _csp(request: Request, style_nonce: str | None = None) -> str:
    """Only the app's own resources; the one inline stylesheet by its per-response nonce;
    no scripts at all; images also from the storage's public base (it may be a CDN);
    forms may go on to Stripe Checkout (https); never inside a frame."""
    images = " ".join(dict.fromkeys(["'self'", _origin(_services(request).storage.url("x"))]))
    style = f"'nonce-{style_nonce}'" if style_nonce else "'none'"
    return (
        f"default-src 'self'; img-src {images}; style-src {style}; script-src 'none'; "
        "object-src 'none'; base-uri 'none'; form-action 'self' https:; "
        "frame-ancestors 'none'"
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "'self'"


def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Endpoint:
    """Headers every dashboard response carries, pages, redirects and errors alike."""

    async def respond(request: Request) -> Response:
        response = await endpoint(request)
        response.headers.setdefault("Content-Security-Policy", _csp(request))
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        # Pages show balances, keys and secrets: never from a cache.
        response.headers["Cache-Control"] = "no-store"
        return response

    return respond


def _to_login() -> Response:
    return RedirectResponse(f"{HOME}/login", status_code=303)


async def login_page(request: Request) -> Response:
    if await _caller(request) is not None:
        return RedirectResponse(HOME, status_code=303)
    return _render(request, "login.html", None)


async def login(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = _services(request)
    try:
        async with services.sessions() as session:
            caller = await accounts.authenticate(
                session, str(form.get("api_key", "")).strip() or api_key_from(request),
                services.pepper,
            )  # fmt: skip
    except Forbidden as exc:  # a banned account (issue 13)
        return _render(request, "login.html", None, status_code=403, error=exc.message + ".")
    except FluxgateError:
        return _render(
            request, "login.html", None, status_code=401, error="That API key is not valid."
        )
    async with services.sessions() as session:
        session_id = await web_sessions.open_session(session, caller)
        await session.commit()
    request.session.clear()  # a fresh cookie (and CSRF token) on sign-in
    request.session["sid"] = session_id
    return RedirectResponse(HOME, status_code=303)


async def logout(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    session_id = request.session.get("sid")
    if isinstance(session_id, str):
        # Ended on the server: a copy of the cookie stops working too.
        async with _services(request).sessions() as session:
            await web_sessions.close(session, session_id)
            await session.commit()
    request.session.clear()
    return _to_login()


@signed_in
async def overview(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    async with services.sessions() as session:
        account = await accounts.get_account(session, caller.account.id)
        balance = await ledger.balance(session, account.id)
        usage = await reports.usage(session, account.id)
        recent = await generations.list_page(session, account.id, first=12, after=None, status=None)
    return _render(
        request, "overview.html", caller, page="overview", balance=balance, usage=usage,
        limits=services.plans.limits(account.plan, account.limit_overrides),
        generations=[
            {"id": g.id, "status": g.status, "credit_cost": g.credit_cost, "prompt": g.prompt,
             "url": services.storage.url(g.image_key) if g.image_key else None}
            for g in recent.items
        ],
    )  # fmt: skip


@signed_in
async def ledger_page(request: Request, caller: accounts.Caller) -> Response:
    raw = request.query_params.get("page", "1").strip()
    # Anything not a page number shows the first page, a page past the end the last one.
    # Digits are counted before converting: a huge number never reaches the database.
    page = 1
    if raw.isascii() and raw.isdigit():
        page = MAX_PAGE if len(raw) > len(str(MAX_PAGE)) else min(int(raw), MAX_PAGE)
    async with _services(request).sessions() as session:
        history = await reports.ledger_history(session, caller.account.id, page=page)
        if history.page > history.pages:
            history = await reports.ledger_history(session, caller.account.id, page=history.pages)
    return _render(request, "ledger.html", caller, page="ledger", history=history)


@signed_in
async def job_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    job_id = request.path_params["id"]
    if not _valid_id(job_id):
        return _not_found("Generation")
    try:
        async with services.sessions() as session:
            job = await generations.get(session, caller.account.id, job_id)
            stored = await generations.assets(session, job)
    except FluxgateError:
        return _not_found("Generation")
    images = [
        {"role": a.role, "url": services.storage.url(a.key), "width": a.width,
         "height": a.height, "mime": a.mime, "shown": a.mime in SHOWN_TYPES,
         "format": a.key.rpartition(".")[2].upper()}
        for a in stored
    ]  # fmt: skip
    inputs = [i for i in images if i["role"] != "output"]
    outputs = [i for i in images if i["role"] == "output"] if job.status == "completed" else []
    return _render(
        request, "job.html", caller, page="ledger", job=job, inputs=inputs, outputs=outputs
    )


@signed_in
async def payment_page(request: Request, caller: accounts.Caller) -> Response:
    payment_id = request.path_params["id"]
    if not _valid_id(payment_id):
        return _not_found("Payment")
    async with _services(request).sessions() as session:
        try:
            payment = await payments.get_payment(session, caller.account.id, payment_id)
        except FluxgateError:
            return _not_found("Payment")
    return _render(request, "payment.html", caller, page="ledger", payment=payment)


def _billing(
    request: Request, caller: accounts.Caller, *, status_code: int = 200, error: str | None = None
) -> Response:
    services = _services(request)
    return _render(
        request, "billing.html", caller, status_code=status_code, page="billing", error=error,
        purchases=services.payments.gateway is not None, packs=services.packs.packs,
        # One nonce per rendered form: submitting it twice is one Checkout Session.
        nonce=secrets.token_hex(12),
    )  # fmt: skip


@signed_in
async def billing_page(request: Request, caller: accounts.Caller) -> Response:
    return _billing(request, caller)


@posted
async def checkout(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    services = _services(request)
    stripe = services.payments
    try:
        session = await payments.create_checkout(
            stripe.gateway,
            services.packs,
            account_id=caller.account.id,
            pack_id=str(form.get("pack_id", "")),
            success_url=stripe.success_url,
            cancel_url=stripe.cancel_url,
            nonce=str(form.get("nonce", "")),
        )
    except FluxgateError as exc:
        return _billing(
            request,
            caller,
            status_code=rest.STATUS_BY_CODE.get(exc.code.value, 400),
            error=exc.message,
        )
    return RedirectResponse(session.url, status_code=303)


async def _keys(request: Request, caller: accounts.Caller, new_secret: str | None) -> Response:
    async with _services(request).sessions() as session:
        keys = await accounts.list_keys(session, caller.account.id)
    return _render(request, "keys.html", caller, page="keys", keys=keys, new_secret=new_secret)


@signed_in
async def keys_page(request: Request, caller: accounts.Caller) -> Response:
    return await _keys(request, caller, None)


@posted
async def create_key(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    name = str(form.get("name", "default")).strip()[:100] or "default"
    if not name.isprintable():
        request.session["flash"] = "A key name must be printable text."
        return RedirectResponse(f"{HOME}/keys", status_code=303)
    services = _services(request)
    async with services.sessions() as session:
        new = await accounts.create_key(session, caller.account.id, services.pepper, name=name)
        await session.commit()
    # Shown once, in this response only (never stored, never in the cookie).
    return await _keys(request, caller, new.secret)


@posted
async def revoke_key(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    try:
        key_id = uuid.UUID(request.path_params["key_id"])
        services = _services(request)
        # After commit its event ends the subscriptions opened with the key, on every API
        # process.
        async with services.store.unit_of_work() as uow:
            await accounts.revoke_key(uow, key_id, account_id=caller.account.id)
    except Conflict as exc:
        request.session["flash"] = exc.message
    except (ValueError, FluxgateError):
        request.session["flash"] = "No such key."
    else:
        request.session["flash"] = "Key revoked."
    return RedirectResponse(f"{HOME}/keys", status_code=303)


@signed_in
async def webhooks_page(request: Request, caller: accounts.Caller) -> Response:
    async with _services(request).sessions() as session:
        account = await accounts.get_account(session, caller.account.id)
        deliveries = await webhooks.list_deliveries(
            session, account.id, generation_id=None, first=20
        )
    return _render(request, "webhooks.html", caller, page="webhooks", deliveries=deliveries,
                   account=account)  # fmt: skip


@posted
async def rotate_secret(
    request: Request, caller: accounts.Caller, form: dict[str, Any]
) -> Response:
    services = _services(request)
    async with services.store.unit_of_work() as uow:
        await webhooks.rotate_secret(uow, caller.account.id, services.webhook_grace)
    grace_hours = services.webhook_grace / timedelta(hours=1)
    request.session["flash"] = (
        f"Secret rotated; the old one keeps signing for {grace_hours:g} hours."
    )
    return RedirectResponse(f"{HOME}/webhooks", status_code=303)


def _batch_items(services: Services, view: BatchView) -> list[dict[str, Any]]:
    """Each item with its first output's image (a completed one), for the batch pages."""
    shown = []
    for g in view.items:
        first = g.outputs[0] if g.status == "completed" and g.outputs else None
        url = services.storage.url(first["key"]) if first else None
        shown.append({"job": g, "image": url})
    return shown


@signed_in
async def batches_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    after = request.query_params.get("after") or None
    try:
        async with services.sessions() as session:
            page = await batches.list_page(session, caller.account.id, first=20, after=after)
    except FluxgateError:  # a cursor not ours: the first page
        async with services.sessions() as session:
            page = await batches.list_page(session, caller.account.id, first=20, after=None)
    rows = [{"view": v, "items": _batch_items(services, v)} for v in page.items]
    return _render(request, "batches.html", caller, page="batches", rows=rows,
                   next_cursor=page.next_cursor)  # fmt: skip


@signed_in
async def batch_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    batch_id = request.path_params["id"]
    if not _valid_id(batch_id):
        return _not_found("Batch")
    try:
        async with services.sessions() as session:
            view = await batches.get(session, caller.account.id, batch_id)
    except FluxgateError:
        return _not_found("Batch")
    return _render(request, "batch.html", caller, page="batches", view=view,
                   items=_batch_items(services, view))  # fmt: skip


@posted
async def cancel_batch(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    batch_id = request.path_params["id"]
    try:
        async with _services(request).store.unit_of_work() as uow:
            await batches.cancel(uow, caller.account.id, batch_id)
    except FluxgateError:
        request.session["flash"] = "No such batch."
        return RedirectResponse(f"{HOME}/batches", status_code=303)
    request.session["flash"] = "Batch cancelled: unfinished items released."
    return RedirectResponse(f"{HOME}/batches/{batch_id}", status_code=303)


@signed_in
async def usage_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    limits = services.plans.limits(caller.account.plan, caller.account.limit_overrides)
    async with services.sessions() as session:
        usage = await quotas.usage(session, caller.account.id, limits)
        threshold, url, available = await quotas.low_credit_settings(session, caller.account.id)
    return _render(request, "usage.html", caller, page="usage", usage=usage, limits=limits,
                   threshold=threshold, threshold_url=url, available=available)  # fmt: skip


@posted
async def set_threshold(
    request: Request, caller: accounts.Caller, form: dict[str, Any]
) -> Response:
    raw = str(form.get("threshold", "")).strip()
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        request.session["flash"] = "The threshold is a whole number of credits (empty: off)."
        return RedirectResponse(f"{HOME}/usage", status_code=303)
    services = _services(request)
    try:
        async with services.store.unit_of_work() as uow:
            _threshold, url, _ = await quotas.low_credit_settings(uow.session, caller.account.id)
            await quotas.set_low_credit_threshold(
                uow.session, caller.account.id, int(raw) if raw else None, url
            )
    except FluxgateError as exc:
        request.session["flash"] = exc.message
    else:
        request.session["flash"] = (
            f"Low-credit alert below {int(raw)} credits." if raw else "Low-credit alert off."
        )
    return RedirectResponse(f"{HOME}/usage", status_code=303)


@signed_in
async def loras_page(request: Request, caller: accounts.Caller) -> Response:
    """The LoRA styles jobs may apply, by category (admins also see the disabled ones)."""
    admin = caller.account.is_admin
    async with _services(request).sessions() as session:
        every = await loras.list_loras(session, include_disabled=admin)
    category = request.query_params.get("category") or None
    shown = [x for x in every if category is None or x.category == category]
    return _render(request, "loras.html", caller, page="loras", loras=shown,
                   categories=loras.categories(every), category=category)  # fmt: skip


routes: list[BaseRoute] = [
    Route(HOME, guarded(overview), methods=["GET"]),
    Route(f"{HOME}/login", guarded(login_page), methods=["GET"]),
    Route(f"{HOME}/login", guarded(login), methods=["POST"]),
    Route(f"{HOME}/logout", guarded(logout), methods=["POST"]),
    Route(f"{HOME}/ledger", guarded(ledger_page), methods=["GET"]),
    Route(f"{HOME}/jobs/{{id}}", guarded(job_page), methods=["GET"]),
    Route(f"{HOME}/payments/{{id}}", guarded(payment_page), methods=["GET"]),
    Route(f"{HOME}/billing", guarded(billing_page), methods=["GET"]),
    Route(f"{HOME}/billing/checkout", guarded(checkout), methods=["POST"]),
    Route(f"{HOME}/keys", guarded(keys_page), methods=["GET"]),
    Route(f"{HOME}/keys", guarded(create_key), methods=["POST"]),
    Route(f"{HOME}/keys/{{key_id}}/revoke", guarded(revoke_key), methods=["POST"]),
    Route(f"{HOME}/webhooks", guarded(webhooks_page), methods=["GET"]),
    Route(f"{HOME}/webhooks/rotate", guarded(rotate_secret), methods=["POST"]),
    Route(f"{HOME}/usage", guarded(usage_page), methods=["GET"]),
    Route(f"{HOME}/loras", guarded(loras_page), methods=["GET"]),
    Route(f"{HOME}/batches", guarded(batches_page), methods=["GET"]),
    Route(f"{HOME}/batches/{{id}}", guarded(batch_page), methods=["GET"]),
    Route(f"{HOME}/batches/{{id}}/cancel", guarded(cancel_batch), methods=["POST"]),
    Route(f"{HOME}/usage/threshold", guarded(set_threshold), methods=["POST"]),
]
