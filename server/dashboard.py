"""The billing dashboard (/dashboard): server-rendered pages (Jinja2, no build step, no
CDN) over the same services as the API.

Sign-in takes an API key once; the session cookie (signed, HttpOnly, SameSite=Strict,
Secure under https, scoped to /dashboard) then carries the account and key ids, and every
request checks the key is still valid, so revoking it signs the session out. Every
state-changing form carries the session's CSRF token.
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

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from billing.errors import FluxgateError
from billing.service import accounts, generations, ledger, payments, reports, webhooks
from schema.context import Services
from server.auth import api_key_from

log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
HOME = "/dashboard"


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
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        return Response("Forbidden: missing or invalid CSRF token", status_code=403)
    return form


async def _caller(request: Request) -> accounts.Caller | None:
    try:
        account_id = uuid.UUID(request.session.get("account_id", ""))
        key_id = uuid.UUID(request.session.get("key_id", ""))
    except ValueError:
        return None
    async with _services(request).sessions() as session:
        caller = await accounts.resume(session, account_id, key_id)
    if caller is None:
        request.session.clear()
    return caller


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
    request: Request, template: str, caller: accounts.Caller | None, **context: Any
) -> Response:
    flash = request.session.pop("flash", None)
    response = templates.TemplateResponse(
        request,
        template,
        {"account": caller.account if caller else None, "csrf_token": csrf_token(request),
         "flash": flash, **context},
    )  # fmt: skip
    # Pages show balances, keys and secrets: never from a cache.
    response.headers["Cache-Control"] = "no-store"
    return response


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
    except FluxgateError:
        return _render(request, "login.html", None, error="That API key is not valid.")
    request.session.clear()  # a fresh session (and CSRF token) on sign-in
    request.session["account_id"] = str(caller.account.id)
    request.session["key_id"] = str(caller.api_key_id)
    return RedirectResponse(HOME, status_code=303)


async def logout(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
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
    try:
        page = int(request.query_params.get("page", "1"))
    except ValueError:
        page = 1
    async with _services(request).sessions() as session:
        history = await reports.ledger_history(session, caller.account.id, page=page)
    return _render(request, "ledger.html", caller, page="ledger", history=history)


@signed_in
async def job_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    try:
        async with services.sessions() as session:
            job = await generations.get(session, caller.account.id, request.path_params["id"])
    except FluxgateError:
        return Response("Not found", status_code=404)
    url = services.storage.url(job.image_key) if job.image_key else None
    return _render(request, "job.html", caller, page="ledger", job=job, url=url)


@signed_in
async def payment_page(request: Request, caller: accounts.Caller) -> Response:
    async with _services(request).sessions() as session:
        try:
            payment = await payments.get_payment(
                session, caller.account.id, request.path_params["id"]
            )
        except FluxgateError:
            return Response("Not found", status_code=404)
    return _render(request, "payment.html", caller, page="ledger", payment=payment)


@signed_in
async def billing_page(request: Request, caller: accounts.Caller) -> Response:
    services = _services(request)
    return _render(
        request, "billing.html", caller, page="billing",
        purchases=services.payments.gateway is not None, packs=services.packs.packs,
        nonce=secrets.token_hex(12),
    )  # fmt: skip


@posted
async def checkout(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    payments = _services(request).payments
    if payments.gateway is None:
        return RedirectResponse(f"{HOME}/billing", status_code=303)
    pack = _services(request).packs.get(str(form.get("pack_id", "")))
    session = await payments.gateway.create_checkout(
        account_id=caller.account.id,
        pack=pack,
        success_url=payments.success_url,
        cancel_url=payments.cancel_url,
        idempotency_key=f"checkout:{caller.account.id}:{pack.id}:{form['csrf_token']}:"
        f"{secrets.token_hex(8)}",
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
        async with _services(request).sessions() as session:
            await accounts.revoke_key(session, key_id, account_id=caller.account.id)
            await session.commit()
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
    from billing.db import unit_of_work

    services = _services(request)
    async with unit_of_work(services.sessions) as uow:
        await webhooks.rotate_secret(uow, caller.account.id, services.webhook_grace)
    grace_hours = services.webhook_grace / timedelta(hours=1)
    request.session["flash"] = (
        f"Secret rotated; the old one keeps signing for {grace_hours:g} hours."
    )
    return RedirectResponse(f"{HOME}/webhooks", status_code=303)


routes: list[BaseRoute] = [
    Route(HOME, overview, methods=["GET"]),
    Route(f"{HOME}/login", login_page, methods=["GET"]),
    Route(f"{HOME}/login", login, methods=["POST"]),
    Route(f"{HOME}/logout", logout, methods=["POST"]),
    Route(f"{HOME}/ledger", ledger_page, methods=["GET"]),
    Route(f"{HOME}/jobs/{{id}}", job_page, methods=["GET"]),
    Route(f"{HOME}/payments/{{id}}", payment_page, methods=["GET"]),
    Route(f"{HOME}/billing", billing_page, methods=["GET"]),
    Route(f"{HOME}/billing/checkout", checkout, methods=["POST"]),
    Route(f"{HOME}/keys", keys_page, methods=["GET"]),
    Route(f"{HOME}/keys", create_key, methods=["POST"]),
    Route(f"{HOME}/keys/{{key_id}}/revoke", revoke_key, methods=["POST"]),
    Route(f"{HOME}/webhooks", webhooks_page, methods=["GET"]),
    Route(f"{HOME}/webhooks/rotate", rotate_secret, methods=["POST"]),
]
