"""``fluxgate`` — the operator CLI (typer)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from runtime.settings import get_settings
from server.admin_cli import admin_app
from server.library_cli import images_app

app = typer.Typer(help="Fluxgate: self-hosted, credit-metered FLUX image generation.")
db_app = typer.Typer(help="Database migrations.")
account_app = typer.Typer(help="Accounts.")
credits_app = typer.Typer(help="Credits.")
key_app = typer.Typer(help="API keys.")
models_app = typer.Typer(help="Model directories.")
dev_app = typer.Typer(help="Development helpers (used by `make run`).")
stripe_app = typer.Typer(help="Stripe events that could not be applied (dead letters).")
for sub, name in [
    (db_app, "db"), (account_app, "account"), (credits_app, "credits"),
    (key_app, "key"), (models_app, "models"), (dev_app, "dev"), (stripe_app, "stripe"),
]:  # fmt: skip
    app.add_typer(sub, name=name)
app.add_typer(admin_app, name="admin")
app.add_typer(images_app, name="images")


@app.callback()
def _check_settings() -> None:
    """Every command reads the settings: a bad one is said plainly, before anything runs
    (not as a traceback from wherever it is first read)."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            (f"FLUXGATE_{str(e['loc'][0]).upper()}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors()
        )
        raise _fail(f"invalid settings: {problems}") from None


T = TypeVar("T")


def _logging() -> None:
    from runtime import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)


def _with_session(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(session)`` in one committed transaction."""
    from billing.db import make_engine, make_sessionmaker

    async def main() -> T:
        engine = make_engine(get_settings().database_url, pool_size=1, max_overflow=0)
        try:
            async with make_sessionmaker(engine)() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _pepper() -> bytes:
    return get_settings().secret_key.get_secret_value().encode()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    workers: Annotated[int, typer.Option(help="API processes")] = 1,
) -> None:
    """Run the API (GraphQL, REST shim, image files) with uvicorn."""
    import os
    import shutil
    import tempfile

    import uvicorn

    from runtime import logs

    settings = get_settings()
    options: dict[str, Any] = {}
    if settings.log_format == "json":
        # uvicorn applies it in each of its processes: its own lines go through it too.
        options["log_config"] = logs.config(settings.log_format, settings.log_level)
    # Several processes behind one port: each scrape reaches one of them, so their counts
    # go to files in a directory they share (prometheus-client's multiprocess mode, read
    # by the processes uvicorn spawns) and every /metrics serves the sum. Named here, not
    # imported: this process must not import prometheus_client (it would count into it).
    own_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="fluxgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            proxy_headers=True,
            log_level=settings.log_level,
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.api_shutdown_s,
            **options,
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Serve /metrics and /readyz here (default FLUXGATE_WORKER_METRICS_PORT; 0: off)"
    ),
]


@app.command()
def worker(
    metrics_port: MetricsPort = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            help="A model pool to serve (repeatable; default: every pool in the registry)",
        ),
    ] = None,
    memory_gb: Annotated[
        float | None,
        typer.Option(
            help="Refuse to start if the pools' model directories exceed this many GB "
            "(default FLUXGATE_WORKER_MEMORY_GB; unset: no check)",
        ),
    ] = None,
) -> None:
    """Run one arq GPU worker: loads the models of its pools (default: every model in the
    registry), warms them up, then takes their jobs one at a time. It rides out Redis
    outages: reconnects with backoff, models kept loaded."""
    _logging()
    from gpu_worker.supervisor import exit_after_teardown
    from gpu_worker.worker import check_memory_budget, run, serving

    settings = get_settings()
    if memory_gb is not None:
        if memory_gb <= 0:
            raise _fail("--memory-gb must be more than 0")
        settings = settings.model_copy(update={"worker_memory_gb": memory_gb})
    try:
        pools = serving(settings, pool)
        check_memory_budget(settings, pools)
    except ValueError as exc:  # an unknown pool, or models over the budget
        raise _fail(str(exc)) from None
    run(settings, metrics_port=metrics_port, pools=pools)
    exit_after_teardown()


@app.command("webhook-worker")
def webhook_worker(metrics_port: MetricsPort = None) -> None:
    """Run a webhook delivery worker (its own queue: receivers never hold up a GPU).
    It rides out Redis outages: reconnects with backoff."""
    _logging()
    from gpu_worker.supervisor import exit_after_teardown
    from gpu_worker.webhooks import run

    run(metrics_port=metrics_port)
    exit_after_teardown()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (alembic upgrade)."""
    from billing.migrate import upgrade_sync

    upgrade_sync(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


def _account_json(account: Any, key: Any) -> dict[str, Any]:
    return {
        "account_id": str(account.id),
        "email": account.email,
        "plan": account.plan,
        "credits_available": account.credits_available,
        "api_key": key.secret,
        "api_key_id": str(key.key.id),
        "webhook_secret": account.webhook_secret,
    }


@account_app.command("create")
def account_create(
    email: Annotated[str, typer.Option(help="Owner's email")],
    plan: Annotated[str, typer.Option(help="free | starter | pro | enterprise")] = "free",
    credits: Annotated[int, typer.Option(help="Starting credits")] = 0,
    admin: Annotated[bool, typer.Option("--admin", help="May change plans via GraphQL")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Create an account and print its API key (shown once)."""
    from billing.errors import FluxgateError
    from billing.service import accounts

    async def create(session: Any) -> dict[str, Any]:
        account, key = await accounts.create_account(
            session, email=email, plan=plan, credits=credits, pepper=_pepper(), is_admin=admin
        )
        return _account_json(account, key)

    try:
        data = _with_session(create)
    except FluxgateError as exc:
        raise _fail(exc.message) from None
    if as_json:
        typer.echo(json.dumps(data))
    else:
        typer.echo(f"account {data['account_id']} ({data['email']}, plan {data['plan']})")
        typer.echo(f"credits: {data['credits_available']}")
        typer.echo(f"API key (shown once): {data['api_key']}")


async def _resolve_account(session: Any, account: str) -> Any:
    from billing.errors import NotFound
    from billing.service import accounts

    try:
        return await accounts.find_account(session, account)
    except NotFound:
        raise _fail(f"no account {account}") from None


def _limit_option(value: str | None, name: str) -> dict[str, int | None]:
    if value is None:
        return {}
    if value == "unlimited":
        return {name: None}
    if not value.isdigit():
        raise _fail(f"--{name.replace('_', '-')} takes a number or 'unlimited'")
    return {name: int(value)}


def _quota_options(megapixels: str | None, daily: list[str] | None) -> dict[str, Any]:
    """--max-megapixels and --daily KIND=N|unlimited as limit overrides."""
    found: dict[str, Any] = {}
    if megapixels is not None:
        try:
            found["max_megapixels"] = None if megapixels == "unlimited" else float(megapixels)
        except ValueError:
            raise _fail("--max-megapixels takes a number or 'unlimited'") from None
    for item in daily or []:
        kind, _, value = item.partition("=")
        if not kind or not value:
            raise _fail("--daily takes KIND=N or KIND=unlimited")
        found.setdefault("daily", {})[kind] = _limit_option(value, "daily")["daily"]
    return found


@account_app.command("set-plan")
def account_set_plan(
    account: Annotated[str, typer.Option(help="Account id or email")],
    plan: Annotated[str | None, typer.Option(help="free | starter | pro | enterprise")] = None,
    requests_per_minute: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    concurrent_jobs: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    jobs_per_day: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    max_subscriptions: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    retention_days: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    storage_quota_mb: Annotated[str | None, typer.Option(help="N or 'unlimited'")] = None,
    max_megapixels: Annotated[str | None, typer.Option(help="e.g. 4.2, or 'unlimited'")] = None,
    daily: Annotated[
        list[str] | None, typer.Option(help="KIND=N or KIND=unlimited (repeatable)")
    ] = None,
    clear_overrides: Annotated[bool, typer.Option(help="Back to the plan's limits")] = False,
) -> None:
    """Change an account's plan and per-account limit overrides."""
    from billing.db import UnitOfWork
    from billing.errors import FluxgateError
    from billing.plans import default_plan_book
    from billing.service import admin
    from server import admin_cli

    given = {
        **_limit_option(requests_per_minute, "requests_per_minute"),
        **_limit_option(concurrent_jobs, "concurrent_jobs"),
        **_limit_option(jobs_per_day, "jobs_per_day"),
        **_limit_option(max_subscriptions, "max_subscriptions"),
        **_limit_option(retention_days, "retention_days"),
        **_limit_option(storage_quota_mb, "storage_quota_mb"),
        **_quota_options(max_megapixels, daily),
    }

    async def change(session: Any) -> dict[str, Any]:
        found = await _resolve_account(session, account)
        # The limits given change (daily per kind); the other overrides stay, unless
        # --clear-overrides (then only those given are left).
        updated = await admin.set_plan(  # recorded in the admin audit log
            UnitOfWork(session),
            admin_cli.cli_actor(),
            found.id,
            plan=plan,
            overrides=given if (given or clear_overrides) else None,
            plans=default_plan_book(),
            merge=not clear_overrides,
        )
        limits = default_plan_book().limits(updated.plan, updated.limit_overrides)
        return {
            "plan": updated.plan,
            "overrides": updated.limit_overrides,
            "limits": dataclasses.asdict(limits),
        }

    try:
        typer.echo(json.dumps(_with_session(change)))
    except FluxgateError as exc:
        raise _fail(exc.message) from None


@credits_app.command("grant")
def credits_grant(
    account: Annotated[str, typer.Option(help="Account id or email")],
    amount: Annotated[int, typer.Option(help="Credits to add")],
    reference: Annotated[
        str | None,
        typer.Option(help="Unique reference; a repeated reference grants nothing more"),
    ] = None,
    note: Annotated[str | None, typer.Option(help="Why")] = None,
) -> None:
    """Add credits to an account (a ledger entry)."""
    from billing.errors import FluxgateError
    from billing.service import admin, ledger
    from server.admin_cli import cli_actor

    async def grant(session: Any) -> tuple[bool, int]:
        found = await _resolve_account(session, account)
        ref = reference or f"cli:{uuid.uuid4()}"
        done = await ledger.grant(session, found.id, amount, reference=ref, note=note)
        available = (await ledger.balance(session, found.id)).available
        if done:  # an admin action: in the audit log too, as the operator's
            await admin.record_grant(
                session, cli_actor(), found.id, amount, reference=ref, note=note,
                available_after=available,
            )  # fmt: skip
        return done, available

    try:
        granted, available = _with_session(grant)
    except FluxgateError as exc:
        raise _fail(exc.message) from None
    typer.echo(("granted" if granted else "already granted") + f"; available: {available}")


@key_app.command("create")
def key_create(
    account: Annotated[str, typer.Option(help="Account id or email")],
    name: Annotated[str, typer.Option(help="A label")] = "default",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create another API key for an account (shown once)."""
    from billing.service import accounts

    async def create(session: Any) -> dict[str, str]:
        found = await _resolve_account(session, account)
        key = await accounts.create_key(session, found.id, _pepper(), name=name)
        return {"account_id": str(found.id), "api_key": key.secret, "api_key_id": str(key.key.id)}

    data = _with_session(create)
    typer.echo(json.dumps(data) if as_json else f"{data['api_key_id']}: {data['api_key']}")


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id")],
    force: Annotated[
        bool, typer.Option("--force", help="Revoke it even if it is the account's last key")
    ] = False,
) -> None:
    """Revoke an API key; requests with it fail with 401 at once. An account's last
    active key is refused unless --force (the account is then locked out until an
    operator runs `fluxgate key create`)."""
    from billing.errors import FluxgateError
    from billing.service import accounts

    try:
        kid = uuid.UUID(key_id)
    except ValueError:
        raise _fail("key id must be a UUID (see `fluxgate key create --json`)") from None

    async def revoke() -> bool:
        from billing.db import Event, Store, make_engine, make_sessionmaker
        from runtime import queue

        settings = get_settings()
        announced = False

        async def announce(events: Sequence[Event]) -> None:
            # After commit, like the API: the broker ends the key's open subscriptions.
            # Redis is connected to only now: its outage cannot hold the revocation back.
            nonlocal announced
            try:
                pool = await queue.connect(settings.redis_url, settings.queue_name)
            except Exception:  # revoked all the same; said below
                return
            try:
                await queue.Dispatcher(pool, settings.queue_name).dispatch(events)
            finally:
                await pool.aclose(close_connection_pool=True)
            announced = True

        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with Store(make_sessionmaker(engine), announce).unit_of_work() as uow:
                await accounts.revoke_key(uow, kid, allow_last=force)
        finally:
            await engine.dispose()
        return announced

    try:
        announced = asyncio.run(revoke())
    except FluxgateError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"revoked {key_id}")
    if not announced:
        typer.echo(
            "warning: Redis unreachable; open subscriptions with this key end at their "
            "next recheck",
            err=True,
        )


@models_app.command("build-tiny")
def models_build_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline")],
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="Rebuild if present")] = False,
) -> None:
    """Build a tiny random-weight FLUX pipeline for development and tests."""
    from gpu_worker.tiny import build_tiny_flux

    if (directory / "model_index.json").exists() and not force:
        typer.echo(f"{directory} already holds a pipeline (use --force to rebuild)")
        return
    build_tiny_flux(directory, seed=seed)
    typer.echo(f"tiny FLUX pipeline written to {directory}")


@models_app.command("build-dev")
def models_build_dev(
    root: Annotated[Path, typer.Argument(help="Where deploy/models.dev.toml's models go")] = Path(
        "var/models"
    ),
) -> None:
    """Build every tiny random-weight model the development registry names (tiny-flux,
    tiny-flux-fill) under ROOT; models already there are kept."""
    from gpu_worker.tiny import build_tiny_loras, build_tiny_models

    built = build_tiny_models(root)
    # The tiny LoRA styles for tiny-flux (issue 13; README "LoRA styles").
    built += build_tiny_loras(root / "loras")
    typer.echo(f"built: {', '.join(map(str, built))}" if built else f"{root}: all present")


@dev_app.command("bootstrap")
def dev_bootstrap(
    key_file: Annotated[Path, typer.Option(help="Where the dev key is kept")] = Path(
        "var/dev-account.json"
    ),
    email: str = "dev@fluxgate.localhost",
    credits: int = 10_000,
) -> None:
    """Make sure a development account exists and print its key (for `make run`)."""
    from billing.errors import NotFound, Unauthenticated
    from billing.service import accounts

    saved: dict[str, Any] | None = None
    if key_file.exists():
        saved = json.loads(key_file.read_text())

    async def ensure(session: Any) -> dict[str, Any]:
        if saved is not None:
            try:
                await accounts.authenticate(session, saved["api_key"], _pepper())
                return saved
            except Unauthenticated:
                pass  # another database, or the key was revoked: make a new one
        try:
            account = await accounts.find_account(session, email)
        except NotFound:
            account, key = await accounts.create_account(
                session, email=email, plan="pro", credits=credits, pepper=_pepper()
            )
        else:
            key = await accounts.create_key(session, account.id, _pepper(), name="dev")
        return _account_json(account, key)

    data = _with_session(ensure)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(data, indent=2))
    key_file.chmod(0o600)
    typer.echo(json.dumps(data))


@stripe_app.command("dead-letters")
def stripe_dead_letters(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 100,
) -> None:
    """Stripe events given up on (malformed, or failing every attempt), with their errors.
    Fix the cause, then `fluxgate stripe retry EVENT_ID`."""
    from billing.service import payments

    async def load(session: Any) -> list[dict[str, Any]]:
        return [
            {"id": e.id, "type": e.type, "attempts": e.attempts, "error": e.error,
             "received_at": e.received_at.isoformat(),
             "dead_at": e.dead_at.isoformat() if e.dead_at else None}
            for e in await payments.dead_letters(session, limit=limit)
        ]  # fmt: skip

    for row in _with_session(load):
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{row['id']} {row['type']} (attempts {row['attempts']}): {row['error']}")


@stripe_app.command("retry")
def stripe_retry(event_id: Annotated[str, typer.Argument(help="A dead letter's event id")]) -> None:
    """Give a dead-lettered Stripe event a fresh set of attempts and queue it now."""
    from billing.errors import FluxgateError
    from billing.service import payments

    async def revive() -> None:
        from billing.db import Event, Store, make_engine, make_sessionmaker
        from runtime import queue

        settings = get_settings()

        async def enqueue(events: Sequence[Event]) -> None:
            # If Redis is unreachable, the inbox sweeper queues it within a few minutes.
            with contextlib.suppress(Exception):
                pool = await queue.connect(settings.redis_url, settings.queue_name)
                try:
                    await queue.Dispatcher(pool, settings.queue_name).dispatch(events)
                finally:
                    await pool.aclose(close_connection_pool=True)

        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with Store(make_sessionmaker(engine), enqueue).unit_of_work() as uow:
                await payments.revive(uow, event_id)
        finally:
            await engine.dispose()

    try:
        asyncio.run(revive())
    except FluxgateError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"queued {event_id}")


# --- LoRA styles (issue 13) ----------------------------------------------------------------
lora_app = typer.Typer(help="The LoRA catalogue (styles jobs apply with `loras`).")
app.add_typer(lora_app, name="lora")


def _lora_change(
    run: Callable[[Any, Any], Awaitable[Any]], action: str, changes: Any = None
) -> dict[str, Any]:
    """Run ``run(session, catalog)`` in one transaction, recorded in the admin audit log
    as the operator's (``cli:<user>``) ``action``; the LoRA as JSON."""
    from billing.catalog import Catalog
    from billing.errors import FluxgateError
    from billing.service import admin
    from server.admin_cli import cli_actor  # the operator, as the audit log names it

    catalog = Catalog.load(get_settings().models)

    async def change(session: Any) -> dict[str, Any]:
        lora = await run(session, catalog)
        await admin.record_lora_change(session, cli_actor(), action, lora.id, changes)
        return _lora_json(lora)

    try:
        return _with_session(change)
    except FluxgateError as exc:
        raise _fail(exc.message) from None


def _lora_json(lora: Any) -> dict[str, Any]:
    return {
        "id": lora.id, "name": lora.name, "category": lora.category,
        "base_model": lora.base_model, "path": lora.path,
        "trigger_words": list(lora.trigger_words), "default_scale": lora.default_scale,
        "enabled": lora.enabled, "description": lora.description,
    }  # fmt: skip


@lora_app.command("add")
def lora_add(
    lora_id: Annotated[str, typer.Argument(help="The id jobs name, e.g. anime-style-v2")],
    path: Annotated[Path, typer.Option(help="The .safetensors file (a path the workers see)")],
    name: Annotated[str, typer.Option(help="Display name")],
    category: Annotated[str, typer.Option(help="e.g. anime, photo, art")],
    base_model: Annotated[
        str, typer.Option(help="provider, provider/version or family:<name> (e.g. family:flux.1)")
    ],
    trigger: Annotated[
        list[str] | None, typer.Option(help="A trigger word appended to prompts (repeatable)")
    ] = None,
    scale: Annotated[float, typer.Option(help="Default scale, 0..2")] = 1.0,
    description: str = "",
    disabled: Annotated[bool, typer.Option(help="Add it disabled")] = False,
    allow_missing: Annotated[
        bool, typer.Option(help="Accept a path this machine cannot see (workers elsewhere)")
    ] = False,
) -> None:
    """Add a LoRA to the catalogue. Its weight file is never downloaded: copy it to every
    worker first."""
    from billing.service import loras

    resolved = path.expanduser().absolute()
    if not allow_missing and not resolved.is_file():
        raise _fail(f"no file at {resolved} (use --allow-missing if only the workers have it)")
    changes = loras.LoraChanges(
        name=name, category=category, base_model=base_model, path=str(resolved),
        trigger_words=trigger or [], default_scale=scale, description=description,
        enabled=not disabled,
    )  # fmt: skip
    added = _lora_change(
        lambda s, c: loras.add(s, lora_id, changes, catalog=c), "lora_add", changes
    )
    typer.echo(json.dumps(added))


@lora_app.command("list")
def lora_list(
    category: Annotated[str | None, typer.Option(help="Only this category")] = None,
) -> None:
    """Every LoRA of the catalogue, disabled ones included (one JSON object a line)."""
    from billing.service import loras

    async def load(session: Any) -> list[dict[str, Any]]:
        found = await loras.list_loras(session, category=category, include_disabled=True)
        return [_lora_json(x) for x in found]

    for row in _with_session(load):
        typer.echo(json.dumps(row))


def _lora_set(lora_id: str, enabled: bool) -> None:
    from billing.service import loras

    changes = loras.LoraChanges(enabled=enabled)
    changed = _lora_change(
        lambda s, c: loras.update(s, lora_id, changes, catalog=c), "lora_update", changes
    )
    typer.echo(json.dumps(changed))


@lora_app.command("enable")
def lora_enable(lora_id: str) -> None:
    """Offer a LoRA to users again."""
    _lora_set(lora_id, True)


@lora_app.command("disable")
def lora_disable(lora_id: str) -> None:
    """Stop offering a LoRA: new jobs are refused it; accepted jobs still run it."""
    _lora_set(lora_id, False)


@lora_app.command("remove")
def lora_remove(lora_id: str) -> None:
    """Delete a LoRA from the catalogue (its file stays; accepted jobs still run it)."""
    from billing.service import loras

    removed = _lora_change(lambda s, _c: loras.remove(s, lora_id), "lora_remove")
    typer.echo(json.dumps(removed))


if __name__ == "__main__":  # pragma: no cover
    app()
