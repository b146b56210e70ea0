"""Webhook delivery: its own arq worker and queue, so a slow or dead receiver never holds
up a GPU worker.

Each attempt leases the event, connects only to a public address (resolved here, then
pinned, so DNS rebinding cannot redirect it), follows no redirects, and is recorded. The
next attempt is a deferred arq job, kept in Redis, so a worker restart loses nothing; a
cron job re-enqueues events whose job was lost anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from arq import cron
from arq.worker import Retry, Worker, func
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from billing.db import Store, make_engine, make_sessionmaker
from billing.models import WebhookEventStatus
from billing.netguard import AddressPolicy, IPAddress, Refused, literal_address
from billing.packs import default_packs
from billing.service import payments, webhooks
from billing.service.webhooks import Outcome, signature
from gpu_worker import metrics, sweeper
from gpu_worker.supervisor import Supervisor
from runtime import logs
from runtime.metrics import counting
from runtime.queue import (
    APPLY_STRIPE_EVENT,
    DELIVER_WEBHOOK,
    Dispatcher,
    Keys,
    deserialize,
    new_pool,
    serialize,
)
from runtime.settings import Settings, get_settings
from runtime.storage import storage_from_settings

log = logging.getLogger(__name__)

USER_AGENT = "Fluxgate-Webhooks/1.0"
LEASE_MARGIN_S = 30
OVERDUE_AFTER = timedelta(minutes=2)
STRIPE_RETRY_S = 10


def signed_headers(
    event_id: str, body: str, secrets: list[str], now: datetime | None = None
) -> dict[str, str]:
    """Headers of one attempt. ``secrets``: the current signing secret first, then one in
    its grace period after a rotation (it signs too, so receivers can switch over)."""
    now = now or datetime.now(UTC)
    raw = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Doitong-Signature": signature(secrets[0], raw),
        # Standard Webhooks: the id is stable across retries, the timestamp is this
        # attempt's, and each secret adds a space-separated signature.
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(event_id, now, body) for s in secrets),
    }
    if len(secrets) > 1:
        headers["X-Doitong-Signature-Previous"] = signature(secrets[1], raw)
    return headers


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = literal_address(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


def _pinned_url(url: str, address: IPAddress, port: int) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))


async def send(
    url: str, body: str, headers: dict[str, str], policy: AddressPolicy, timeout_s: float
) -> Outcome:
    """One attempt. Refused addresses and redirects are final; network errors, timeouts,
    408, 429 and 5xx are worth another attempt; other 4xx are final."""
    started = time.perf_counter()

    def outcome(**kwargs: Any) -> Outcome:
        return Outcome(duration_ms=int((time.perf_counter() - started) * 1000), **kwargs)

    try:
        scheme, host, port = policy.check_url(url)
        addresses = await _resolve(host, port)
        policy.check_resolved(host, addresses)
    except Refused as exc:
        return outcome(success=False, retryable=False, error=f"refused: {exc}")
    except OSError as exc:
        return outcome(success=False, retryable=True, error=f"DNS lookup failed: {exc}")
    parts = urlsplit(url)
    request_headers = {**headers, "Host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    try:
        # One deadline for the whole exchange (httpx's timeouts are per read: a receiver
        # dripping bytes would never trip them), and at most 1 KiB of the answer is read.
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client,
            client.stream(
                "POST",
                _pinned_url(url, addresses[0], port),
                content=body.encode(),
                headers=request_headers,
                extensions=extensions,
            ) as response,
        ):
            head = b""
            async for chunk in response.aiter_raw():
                head += chunk
                if len(head) >= webhooks.MAX_RESPONSE_BODY:
                    break
    except (TimeoutError, httpx.TimeoutException):
        return outcome(success=False, retryable=True, error=f"timed out after {timeout_s:g}s")
    except httpx.HTTPError as exc:
        return outcome(success=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    code = response.status_code
    text = head[: webhooks.MAX_RESPONSE_BODY].decode("utf-8", errors="replace")
    if 200 <= code < 300:
        return outcome(success=True, retryable=False, status_code=code, response_body=text)
    if 300 <= code < 400:
        return outcome(success=False, retryable=False, status_code=code, response_body=text,
                       error="redirects are not followed")  # fmt: skip
    retryable = code in (408, 429) or code >= 500
    return outcome(
        success=False,
        retryable=retryable,
        status_code=code,
        response_body=text,
        error=None if retryable else f"the receiver answered {code}: not retried",
        retry_after=_retry_after(response.headers.get("retry-after")) if retryable else None,
    )


@dataclass
class WebhookState:
    settings: Settings
    engine: AsyncEngine
    # Its units of work dispatch their events after commit.
    store: Store
    policy: AddressPolicy


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    engine = make_engine(settings.database_url, pool_size=5, max_overflow=10)
    state = ctx["webhook_state"] = WebhookState(
        settings=settings,
        engine=engine,
        store=Store(
            make_sessionmaker(engine),
            counting(Dispatcher(ctx["redis"], settings.queue_name).dispatch),
            # Its sweeper may settle a batch's last item (a stale or overdue job): the
            # batch's seed-000 webhook lists the items' image URLs.
            storage_from_settings(settings).url,
        ),
        policy=AddressPolicy.parse(settings.webhook_allowed_hosts),
    )
    # The job sweeper runs here too, so the maximum queue wait holds (and crashed GPU
    # workers' jobs are recovered) even while no GPU worker runs.
    if settings.sweep:
        ctx["sweeper"] = asyncio.create_task(
            sweeper.sweep_periodically(
                settings.sweep_interval_s,
                lambda: sweeper.sweep(state.store, settings),
            )
        )
    # No models and no heartbeat: ready while started (Redis reached, store built).
    metrics.probe(ctx, heartbeat_max_age_s=None).loaded = True


async def shutdown(ctx: dict[str, Any]) -> None:
    metrics.probe(ctx, heartbeat_max_age_s=None).loaded = False
    task: asyncio.Task[None] | None = ctx.pop("sweeper", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state: WebhookState | None = ctx.pop("webhook_state", None)
    if state is not None:
        await state.engine.dispose()


async def deliver_webhook(ctx: dict[str, Any], event_id: str) -> str:
    state: WebhookState = ctx["webhook_state"]
    settings = state.settings
    lease = timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
    async with state.store.unit_of_work() as uow:
        claim = await webhooks.claim(uow, event_id, lease)
    if claim is None:
        return "skipped: delivered, failed or in flight"
    event = claim.event
    headers = signed_headers(event.id, event.body, claim.secrets)
    result = await send(event.url, event.body, headers, state.policy, settings.webhook_timeout_s)
    async with state.store.unit_of_work() as uow:
        updated = await webhooks.record_attempt(uow, event, result, settings.webhook_schedule)
    retrying = updated.status == WebhookEventStatus.PENDING.value
    outcome = "delivered" if result.success else "retrying" if retrying else "failed"
    metrics.delivery(outcome, result.duration_ms / 1000)
    log.info(
        "webhook %s (%s) attempt %s: %s %s",
        event.id, event.event, updated.attempts, result.status_code, result.error or "",
    )  # fmt: skip
    return updated.status


async def apply_stripe_event(ctx: dict[str, Any], event_id: str) -> str:
    """Apply a stored Stripe event (the inbox's job; at least once, applied once).

    What cannot be applied yet is retried, and so is a passing store error (the failure
    cannot even be recorded then). Any other failure is counted on the event's row with
    its error and retried after ``stripe_event_retry_s``, until
    ``stripe_event_max_attempts``: then it is a dead letter, never queued again, for an
    operator (``fluxgate stripe dead-letters``). A malformed event is one at once."""
    state: WebhookState = ctx["webhook_state"]
    settings = state.settings
    try:
        async with state.store.unit_of_work() as uow:
            outcome = await payments.apply(uow, event_id, default_packs())
    except payments.NotYet as exc:
        log.info("stripe event %s: %s; retrying", event_id, exc)
        with contextlib.suppress(SQLAlchemyError, OSError):
            async with state.store.unit_of_work() as uow:
                await payments.note_waiting(uow, event_id, str(exc))
        raise Retry(defer=STRIPE_RETRY_S) from exc
    except Exception as exc:  # any failure is recorded, never retried forever
        error = f"{type(exc).__name__}: {exc}"
        try:
            async with state.store.unit_of_work() as uow:
                dead = await payments.record_failure(
                    uow, event_id, error, max_attempts=settings.stripe_event_max_attempts
                )
        except (SQLAlchemyError, OSError) as store_error:
            log.warning("stripe event %s: store error, retrying: %s", event_id, store_error)
            raise Retry(defer=STRIPE_RETRY_S) from exc
        if dead:
            log.error("stripe event %s dead-lettered: %s", event_id, error, exc_info=exc)
            return f"dead-lettered: {error}"
        log.warning("stripe event %s failed, retrying: %s", event_id, error)
        raise Retry(defer=settings.stripe_event_retry_s) from exc
    if outcome.startswith("dead-lettered"):
        log.error("stripe event %s %s", event_id, outcome)
    return outcome


async def requeue_stripe_inbox(ctx: dict[str, Any]) -> list[str]:
    """Queue again the Stripe events stored but still neither applied nor dead-lettered
    (their job was lost, or ran out of retries while waiting on a payment)."""
    state: WebhookState = ctx["webhook_state"]
    async with state.store.unit_of_work() as uow:
        pending = await payments.unapplied(uow.session, older_than=OVERDUE_AFTER)
        payments.requeue(uow, pending)
    return pending


async def requeue_overdue(ctx: dict[str, Any]) -> list[str]:
    """Re-enqueue pending events whose delivery job was lost (e.g. Redis restarted)."""
    state: WebhookState = ctx["webhook_state"]
    async with state.store.unit_of_work() as uow:
        overdue = await webhooks.requeue_overdue(uow, older_than=OVERDUE_AFTER)
    return overdue


def build_webhook_worker(
    settings: Settings | None = None,
    *,
    handle_signals: bool = True,
    ctx: dict[str, Any] | None = None,
    **overrides: Any,
) -> Worker:
    settings = settings or get_settings()
    ctx = ctx if ctx is not None else {}
    ctx["settings"] = settings
    options: dict[str, Any] = {
        "functions": [
            # The job's own timeout covers one attempt; retries are new deferred jobs.
            func(
                deliver_webhook,
                name=DELIVER_WEBHOOK,
                timeout=settings.webhook_timeout_s + LEASE_MARGIN_S,
                max_tries=3,
            ),
            func(apply_stripe_event, name=APPLY_STRIPE_EVENT, timeout=60, max_tries=10),
        ],
        "cron_jobs": [
            cron(requeue_overdue, second=30, run_at_startup=True, unique=True),
            cron(requeue_stripe_inbox, second=45, run_at_startup=True, unique=True),
        ],
        # Read and connect timeouts, so a stalled Redis is an error (the supervisor then
        # reconnects, with backoff) rather than a poll that hangs; no retries inside arq.
        "redis_pool": new_pool(
            settings.redis_url,
            Keys(settings.queue_name).webhooks,
            timeout_s=settings.worker_redis_timeout_s,
        ),
        "queue_name": Keys(settings.queue_name).webhooks,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.webhook_concurrency,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "handle_signals": handle_signals,
        "poll_delay": settings.worker_poll_interval_s,
        # The job id on every log line while a job runs.
        "on_job_start": logs.bind_job,
        "ctx": ctx,
    }
    options.update(overrides)
    return Worker(**options)


def run(settings: Settings | None = None, *, metrics_port: int | None = None) -> None:
    """``fluxgate webhook-worker``: the delivery worker, rebuilt whenever Redis goes away
    (deliveries in flight finish first), until SIGINT or SIGTERM. ``metrics_port``
    (default ``worker_metrics_port``; 0: none): its /metrics and /readyz."""
    settings = settings or get_settings()
    ctx: dict[str, Any] = {}
    probe = metrics.probe(ctx, heartbeat_max_age_s=None)
    server = metrics.serve("webhooks", probe, settings, metrics_port)
    supervisor = Supervisor(
        lambda: build_webhook_worker(settings, handle_signals=False, ctx=ctx), "webhook-worker"
    )
    try:
        asyncio.run(supervisor.run())
    finally:
        if server is not None:
            server.close()
