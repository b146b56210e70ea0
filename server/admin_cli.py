"""``fluxgate admin`` — administration from the operator's shell (issue 13): the same
service functions as the GraphQL admin fields and the dashboard's admin pages, recorded in
the audit log as ``cli:<user>``."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer

from runtime.settings import get_settings

admin_app = typer.Typer(help="Administration: accounts, credits, bans, statistics, audit log.")
T = TypeVar("T")
Account = Annotated[str, typer.Option(help="Account id or email")]
Reason = Annotated[str, typer.Option(help="Why (recorded in the audit log)")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def cli_actor() -> Any:
    from billing.service.admin import Actor

    return Actor(label=f"cli:{getpass.getuser()}")


def _run(fn: Callable[[Any], Awaitable[T]]) -> T:
    """``fn(uow)`` in one transaction; its events (a ban's: end the account's open
    subscriptions, take its cancelled jobs off the queue) are dispatched after commit, as
    the API does. Redis is connected to only then: its outage holds nothing back (open
    subscriptions then end at the API's next recheck)."""
    from billing.db import Event, Store, make_engine, make_sessionmaker
    from billing.errors import FluxgateError
    from runtime import queue
    from runtime.storage import storage_from_settings

    settings = get_settings()

    async def announce(events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            pool = await queue.connect(settings.redis_url, settings.queue_name)
        except Exception:
            typer.echo("warning: Redis unreachable; events not announced", err=True)
            return
        try:
            await queue.Dispatcher(pool, settings.queue_name).dispatch(events)
        finally:
            await pool.aclose(close_connection_pool=True)

    async def main() -> T:
        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            # A ban cancels the account's jobs: one may be a batch's last (its webhook
            # names the items' image URLs).
            urls = storage_from_settings(settings).url
            async with Store(make_sessionmaker(engine), announce, urls).unit_of_work() as uow:
                return await fn(uow)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except FluxgateError as exc:
        raise _fail(exc.message) from None


async def _find(uow: Any, account: str) -> uuid.UUID:
    from billing.service import accounts

    found = await accounts.find_account(uow.session, account)
    return found.id


def _row(a: Any) -> dict[str, Any]:
    return {
        "id": str(a.id), "email": a.email, "plan": a.plan, "is_admin": a.is_admin,
        "banned": a.banned_at is not None, "ban_reason": a.ban_reason,
        "credits_available": a.credits_available, "credits_reserved": a.credits_reserved,
        "limit_overrides": a.limit_overrides, "created_at": a.created_at.isoformat(),
    }  # fmt: skip


@admin_app.command("accounts")
def accounts_search(
    query: Annotated[str | None, typer.Option(help="Part of the email, or an id prefix")] = None,
    plan: Annotated[str | None, typer.Option(help="Only this plan")] = None,
    banned: Annotated[bool | None, typer.Option("--banned/--not-banned")] = None,
    first: int = 50,
    offset: int = 0,
) -> None:
    """Search accounts; prints JSON ({total, items})."""
    from billing.service import admin

    async def search(uow: Any) -> dict[str, Any]:
        page = await admin.search_accounts(
            uow.session, query=query, plan=plan, banned=banned, first=first, offset=offset
        )
        return {"total": page.total, "items": [_row(a) for a in page.items]}

    typer.echo(json.dumps(_run(search)))


def _credits(account: str, amount: int, reason: str, reference: str | None, deduct: bool) -> None:
    from billing.service import admin

    async def move(uow: Any) -> dict[str, Any]:
        fn = admin.deduct_credits if deduct else admin.grant_credits
        change = await fn(
            uow, cli_actor(), await _find(uow, account), amount, reason, reference=reference
        )
        return {"applied": change.applied, "available": change.balance.available,
                "reserved": change.balance.reserved}  # fmt: skip

    typer.echo(json.dumps(_run(move)))


@admin_app.command("grant")
def grant(
    account: Account,
    amount: Annotated[int, typer.Option(help="Credits to add")],
    reason: Reason,
    reference: Annotated[str | None, typer.Option(help="A repeated one adds nothing")] = None,
) -> None:
    """Grant credits (a ledger entry), recorded in the audit log."""
    _credits(account, amount, reason, reference, deduct=False)


@admin_app.command("deduct")
def deduct(
    account: Account,
    amount: Annotated[int, typer.Option(help="Credits to take")],
    reason: Reason,
    reference: Annotated[str | None, typer.Option(help="A repeated one takes nothing")] = None,
) -> None:
    """Deduct credits (a ledger entry); refused if fewer are available."""
    _credits(account, amount, reason, reference, deduct=True)


@admin_app.command("ban")
def ban(account: Account, reason: Reason) -> None:
    """Ban an account: its keys are refused (403 FORBIDDEN), its open subscriptions end,
    its queued and running jobs are cancelled and their credits released."""
    from billing.service import admin

    async def act(uow: Any) -> dict[str, Any]:
        result = await admin.ban(uow, cli_actor(), await _find(uow, account), reason)
        return {"banned": str(result.account.id), "cancelled": result.cancelled}

    typer.echo(json.dumps(_run(act)))


@admin_app.command("unban")
def unban(account: Account, reason: Reason) -> None:
    """Lift a ban."""
    from billing.service import admin

    async def act(uow: Any) -> dict[str, Any]:
        found = await admin.unban(uow, cli_actor(), await _find(uow, account), reason)
        return {"unbanned": str(found.id)}

    typer.echo(json.dumps(_run(act)))


@admin_app.command("stats")
def stats() -> None:
    """System statistics from the database (JSON; queue depths: the GraphQL field)."""
    import dataclasses

    from billing.service import admin

    async def read(uow: Any) -> dict[str, Any]:
        return dataclasses.asdict(await admin.statistics(uow.session))

    typer.echo(json.dumps(_run(read), default=str))


@admin_app.command("audit")
def audit(
    account: Annotated[str | None, typer.Option(help="Only actions on this account")] = None,
    action: Annotated[str | None, typer.Option(help="grant | deduct | set_plan | ...")] = None,
    first: int = 50,
) -> None:
    """The audit log, newest first (JSON lines)."""
    from billing.service import admin

    async def read(uow: Any) -> list[dict[str, Any]]:
        target = await _find(uow, account) if account else None
        page = await admin.audit_log(
            uow.session, target_account_id=target, action=action, first=first
        )
        return [
            {"id": e.id, "at": e.created_at.isoformat(), "actor": e.actor, "action": e.action,
             "target": str(e.target_account_id) if e.target_account_id else None,
             "details": e.details}
            for e in page.items
        ]  # fmt: skip

    for line in _run(read):
        typer.echo(json.dumps(line))
