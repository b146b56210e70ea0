"""The dashboard's admin pages (/dashboard/admin, issue 13): accounts (search, detail with
grant, deduct, plan and ban forms), statistics and the audit log. Admin accounts only
(403 for other signed-in accounts); every form carries the CSRF token, like the rest of
the dashboard. Handlers call ``billing/service/admin.py``, as the GraphQL fields do."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from billing.errors import BadUserInput, FluxgateError
from billing.service import accounts, ledger
from billing.service import admin as service
from server import dashboard
from server.dashboard import HOME, guarded
from server.errors import error_response

ADMIN = f"{HOME}/admin"
PER_PAGE = 25
MAX_PAGE = 10**6

AdminPage = Callable[[Request, accounts.Caller], Awaitable[Response]]
AdminForm = Callable[[Request, accounts.Caller, dict[str, Any]], Awaitable[Response]]


def _forbidden() -> Response:
    return error_response(403, "FORBIDDEN", "Only an admin account may see this page")


def admin_page(handler: AdminPage) -> Callable[[Request], Awaitable[Response]]:
    @dashboard.signed_in
    async def page(request: Request, caller: accounts.Caller) -> Response:
        if not caller.account.is_admin:
            return _forbidden()
        return await handler(request, caller)

    return page


def admin_form(handler: AdminForm) -> Callable[[Request], Awaitable[Response]]:
    @dashboard.posted
    async def action(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
        if not caller.account.is_admin:
            return _forbidden()
        return await handler(request, caller, form)

    return action


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1").strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_PAGE)):
        return max(1, min(int(raw), MAX_PAGE))
    return 1


def _account_id(request: Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        return None


@admin_page
async def accounts_page(request: Request, caller: accounts.Caller) -> Response:
    params = request.query_params
    query = params.get("q", "").strip()[: service.MAX_QUERY] or None
    plan = params.get("plan") or None
    banned = {"yes": True, "no": False}.get(params.get("banned", ""))
    page = _page_number(request)
    services = dashboard._services(request)
    if plan is not None and plan not in services.plans.names:
        plan = None
    async with services.sessions() as session:
        found = await service.search_accounts(
            session, query=query, plan=plan, banned=banned, first=PER_PAGE,
            offset=(page - 1) * PER_PAGE,
        )  # fmt: skip
    pages = max(1, -(-found.total // PER_PAGE))
    kept = {
        k: v for k, v in {"q": query, "plan": plan, "banned": params.get("banned")}.items() if v
    }
    return dashboard._render(
        request, "admin_accounts.html", caller, page="admin", found=found, pages=pages,
        number=page, query=query or "", plan=plan or "", banned=params.get("banned", ""),
        plans=services.plans.names, link=lambda n: f"{ADMIN}?{urlencode({**kept, 'page': n})}",
    )  # fmt: skip


@admin_page
async def account_page(request: Request, caller: accounts.Caller) -> Response:
    account_id = _account_id(request)
    services = dashboard._services(request)
    if account_id is None:
        return dashboard._not_found("Account")
    async with services.sessions() as session:
        try:
            account = await accounts.get_account(session, account_id)
        except FluxgateError:
            return dashboard._not_found("Account")
        balance = await ledger.balance(session, account.id)
        history = await service.audit_log(session, target_account_id=account.id, first=20)
    return dashboard._render(
        request, "admin_account.html", caller, page="admin", target=account, balance=balance,
        history=history, plans=services.plans.names,
        limits=dataclasses.asdict(services.plans.limits(account.plan, account.limit_overrides)),
        overrides=json.dumps(account.limit_overrides or {}),
    )  # fmt: skip


def _back(request: Request, message: str) -> Response:
    request.session["flash"] = message
    return RedirectResponse(f"{ADMIN}/accounts/{request.path_params['id']}", status_code=303)


async def _act(
    request: Request, act: Callable[[], Awaitable[str]], *, missing: str = "No such account."
) -> Response:
    """Run one admin action; its outcome (or its error's message) is the next page's
    notice."""
    if _account_id(request) is None:
        return dashboard._not_found("Account")
    try:
        message = await act()
    except FluxgateError as exc:
        message = missing if exc.code.value == "NOT_FOUND" else exc.message
    return _back(request, message)


def _amount(form: dict[str, Any]) -> int:
    raw = str(form.get("amount", "")).strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise BadUserInput("amount", "amount must be a positive number of credits")
    return int(raw)


@admin_form
async def credits_action(
    request: Request, caller: accounts.Caller, form: dict[str, Any]
) -> Response:
    services = dashboard._services(request)

    async def act() -> str:
        account_id = _account_id(request)
        assert account_id is not None
        deduct = form.get("action") == "deduct"
        amount = _amount(form)
        move = service.deduct_credits if deduct else service.grant_credits
        async with services.store.unit_of_work() as uow:
            change = await move(
                uow, service.Actor.of(caller.account), account_id, amount,
                str(form.get("reason", "")),
            )  # fmt: skip
        verb = "Deducted" if deduct else "Granted"
        return f"{verb} {amount} credits; available: {change.balance.available}."

    return await _act(request, act)


@admin_form
async def plan_action(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    services = dashboard._services(request)

    async def act() -> str:
        account_id = _account_id(request)
        assert account_id is not None
        raw = str(form.get("overrides", "")).strip() or "{}"
        try:
            overrides = json.loads(raw)
        except ValueError:
            raise BadUserInput("overrides", "overrides must be a JSON object") from None
        if not isinstance(overrides, dict):
            raise BadUserInput("overrides", "overrides must be a JSON object")
        async with services.store.unit_of_work() as uow:
            account = await service.set_plan(
                uow, service.Actor.of(caller.account), account_id,
                plan=str(form.get("plan", "")) or None, overrides=overrides, plans=services.plans,
            )  # fmt: skip
        return f"Plan: {account.plan}; overrides: {json.dumps(account.limit_overrides or {})}."

    return await _act(request, act)


@admin_form
async def ban_action(request: Request, caller: accounts.Caller, form: dict[str, Any]) -> Response:
    services = dashboard._services(request)

    async def act() -> str:
        account_id = _account_id(request)
        assert account_id is not None
        reason = str(form.get("reason", ""))
        actor = service.Actor.of(caller.account)
        # After commit, the events end the account's open subscriptions and take its
        # cancelled jobs off the queue.
        async with services.store.unit_of_work() as uow:
            if form.get("action") == "unban":
                await service.unban(uow, actor, account_id, reason)
                return "Account unbanned."
            result = await service.ban(uow, actor, account_id, reason)
        return f"Account banned; {len(result.cancelled)} job(s) cancelled and released."

    return await _act(request, act)


@admin_page
async def statistics_page(request: Request, caller: accounts.Caller) -> Response:
    services = dashboard._services(request)
    async with services.sessions() as session:
        stats = await service.statistics(session)
    pools = services.catalog.pools
    try:
        depths: dict[str, int] | None = await services.queue.depths(pools)
    except (RedisError, OSError):
        depths = None
    return dashboard._render(
        request, "admin_statistics.html", caller, page="admin", stats=stats, pools=pools,
        depths=depths,
    )  # fmt: skip


@admin_page
async def audit_page(request: Request, caller: accounts.Caller) -> Response:
    page = _page_number(request)
    async with dashboard._services(request).sessions() as session:
        log = await service.audit_log(session, first=PER_PAGE, offset=(page - 1) * PER_PAGE)
    pages = max(1, -(-log.total // PER_PAGE))
    return dashboard._render(
        request, "admin_audit.html", caller, page="admin", log=log, number=page, pages=pages
    )


routes: list[BaseRoute] = [
    Route(ADMIN, guarded(accounts_page), methods=["GET"]),
    Route(f"{ADMIN}/accounts/{{id}}", guarded(account_page), methods=["GET"]),
    Route(f"{ADMIN}/accounts/{{id}}/credits", guarded(credits_action), methods=["POST"]),
    Route(f"{ADMIN}/accounts/{{id}}/plan", guarded(plan_action), methods=["POST"]),
    Route(f"{ADMIN}/accounts/{{id}}/ban", guarded(ban_action), methods=["POST"]),
    Route(f"{ADMIN}/statistics", guarded(statistics_page), methods=["GET"]),
    Route(f"{ADMIN}/audit", guarded(audit_page), methods=["GET"]),
]
