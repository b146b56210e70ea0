"""The Starlette application: explicit routes, and a lifespan that builds every shared
resource (nothing connects at import time)."""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

import kinds
from billing.catalog import Catalog
from billing.db import Store, make_engine, make_sessionmaker
from billing.errors import ErrorCode
from billing.netguard import AddressPolicy
from billing.packs import default_packs
from billing.plans import default_plan_book
from billing.pricing import PriceTable
from billing.requests import Limits
from billing.service import payments
from billing.stripe_client import StripeGateway
from billing.text import unstorable
from runtime import queue
from runtime.events import Broker
from runtime.metrics import counting
from runtime.settings import Settings, get_settings
from runtime.storage import media_type, storage_from_settings
from schema import Hardening, build_schema
from schema.context import InputLimits, Payments, Services
from schema.limiter import RequestLimiter
from schema.watch import SubscriptionWatch
from server import admin_pages, dashboard, jobs_rest, library_pages, openapi, rest
from server.compat import SURFACES
from server.compat.v2 import events as socketio_events
from server.errors import EXCEPTION_HANDLERS, error_response, surface_error
from server.graphql import GraphQLApp
from server.metrics import Telemetry, metrics_endpoint, readiness_endpoint, request_id_header
from server.middleware import BodySizeLimit, RateLimitHeaders, RequestEnd, Scoped

log = logging.getLogger(__name__)


async def files(request: Request) -> Response:
    services: Services = request.app.state.services
    key = request.path_params["key"]
    # A NUL would make the filesystem call raise; no such file can exist anyway.
    path = None if unstorable(key) else services.storage.local_path(key)
    if path is None:
        return error_response(404, ErrorCode.NOT_FOUND.value, "File not found")
    # Keys are unguessable job ids and files never change once written. The type comes
    # from our own table, never a guess; a stored SVG opened on its own runs nothing
    # (it is ours, made by a kind, but the origin is the dashboard's).
    return FileResponse(
        path,
        media_type=media_type(key),
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def stripe_webhook(request: Request) -> JSONResponse:
    """Verify, store once, acknowledge; a job applies it (billing/service/payments.py).
    A bad or future-dated signature, or a signed body that is not a storable JSON event,
    is a 400 in the JSON error shape."""
    services: Services = request.app.state.services
    try:
        event = payments.verify(
            await request.body(),
            request.headers.get("stripe-signature"),
            services.payments.webhook_secrets,
        )
    except (payments.InvalidSignature, payments.InvalidPayload) as exc:
        return rest.error_response(400, exc.code.value, exc.message, field=exc.field)
    async with services.store.unit_of_work() as uow:
        new = await payments.receive(uow, event)
    return JSONResponse({"received": True, "duplicate": not new})


async def health(request: Request) -> JSONResponse:
    """Liveness: the process serves requests. Whether the database and Redis answer is
    readiness (``/readyz``): an outage of either makes the API refuse work with 503 and
    recover by itself, so it must not get the process restarted."""
    return JSONResponse({"status": "ok"})


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # Starlette re-raises after this answer and the server drops the connection: say so,
    # so the client opens a new one for its next request instead of failing on this one.
    # Answered outside the Telemetry middleware, which cannot add its header.
    headers = {"Connection": "close", **request_id_header(request.scope)}
    own = surface_error(request.url.path)
    if own is not None:
        return own(request, 500, "INTERNAL_SERVER_ERROR", "Internal server error", headers, None)
    return error_response(500, "INTERNAL_SERVER_ERROR", "Internal server error", headers=headers)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        pool = await queue.connect(
            settings.redis_url, settings.queue_name, timeout_s=settings.redis_timeout_s
        )
        broker = Broker(pool, queue.Keys(settings.queue_name).events)
        await broker.start()
        dispatcher = queue.Dispatcher(pool, settings.queue_name)
        prices = PriceTable.load(settings.prices)
        unpriced = sorted(set(kinds.names()) - prices.kinds)
        if unpriced:
            raise RuntimeError(f"{settings.prices} has no [kind_surcharge] row for {unpriced}")
        storage = storage_from_settings(settings)
        app.state.services = Services(
            store=Store(make_sessionmaker(engine), counting(dispatcher.dispatch), storage.url),
            catalog=Catalog.load(settings.models),
            prices=prices,
            limits=Limits(
                min_side=settings.min_side,
                max_side=settings.max_side,
                max_prompt_chars=settings.max_prompt_chars,
            ),
            storage=storage,
            inputs=InputLimits(
                max_bytes=settings.max_input_bytes,
                max_megapixels=settings.max_input_megapixels,
                fetch_timeout_s=settings.input_fetch_timeout_s,
            ),
            queue=queue.QueueInspector(pool, settings.queue_name),
            broker=broker,
            pepper=settings.secret_key.get_secret_value().encode(),
            policy=AddressPolicy.parse(settings.webhook_allowed_hosts),
            webhook_grace=timedelta(seconds=settings.webhook_secret_grace_s),
            plans=default_plan_book(),
            limiter=RequestLimiter(pool, settings.queue_name),
            packs=default_packs(),
            payments=Payments(
                gateway=StripeGateway(
                    settings.stripe_api_key.get_secret_value(), settings.stripe_api_base
                )
                if settings.stripe_api_key
                else None,
                webhook_secrets=settings.stripe_webhook_secrets,
                success_url=settings.checkout_success_url
                or f"{settings.public_base}/dashboard?checkout=success",
                cancel_url=settings.checkout_cancel_url
                or f"{settings.public_base}/dashboard?checkout=cancelled",
            ),
        )
        # The subscriptions' safety net: one sweep per process (schema/watch.py).
        watch = SubscriptionWatch(
            broker, app.state.services.sessions, settings.subscription_recheck_s
        )
        await watch.start()
        app.state.watch = watch
        # What start-up built (the schema, the mappers, the catalogue) lives as long as the
        # process: out of the garbage collector's sight, so its collections only walk
        # what requests allocate.
        gc.freeze()
        try:
            yield
        finally:
            await watch.stop()
            await broker.stop()
            await pool.aclose(close_connection_pool=True)
            await engine.dispose()

    schema = build_schema(
        Hardening(
            introspection=settings.graphql_introspection,
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_tokens=settings.graphql_max_tokens,
        )
    )
    graphql = GraphQLApp(
        schema,
        # Image inputs by the GraphQL multipart request spec. Cross-site requests cannot
        # abuse it: a multipart POST must carry the API key in a header (server/graphql.py),
        # which no browser sends cross-origin without a CORS preflight this API refuses.
        multipart_uploads_enabled=True,
        keep_alive=True,
        keep_alive_interval=settings.ws_keepalive_s,
        # Subscriptions are capped per account (the plan's max_subscriptions), across
        # connections and processes; strawberry's per-connection cap answers without a code.
        max_subscriptions_per_connection=None,
    )
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/v1/text_to_image", rest.text_to_image, methods=["POST"]),
        Route("/v1/text_to_image/{id}", rest.get_text_to_image, methods=["GET"]),
        Route("/v1/text_to_image/{id}/cancel", rest.cancel_text_to_image, methods=["POST"]),
        Route("/v1/jobs/{id}", jobs_rest.get_job, methods=["GET"]),
        Route("/v1/jobs/{id}/cancel", jobs_rest.cancel_job, methods=["POST"]),
        # Every other job kind (kinds/): image_to_image, edit, inpaint, outpaint...
        Route("/v1/{kind}", jobs_rest.submit_job, methods=["POST"]),
        # The compatible surfaces of seeds 000, 002, 003 and 004 (server/compat/).
        *(route for surface in SURFACES for route in surface.routes),
        # Seed 000's real-time events: a Socket.IO server at /socket.io/.
        socketio_events.mount(),
        Route("/files/{key:path}", files, methods=["GET", "HEAD"]),
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/readyz", readiness_endpoint(settings), methods=["GET"]),
        # The OpenAPI 3.1 document of every REST surface, and its docs page (server/openapi.py).
        Route(openapi.OPENAPI_PATH, openapi.openapi_json, methods=["GET"]),
        Route(openapi.DOCS_PATH, openapi.docs_page, methods=["GET"]),
        Route("/metrics", metrics_endpoint(settings), methods=["GET"]),
        *dashboard.routes,
        *admin_pages.routes,
        *library_pages.routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={**EXCEPTION_HANDLERS, Exception: internal_error},
        middleware=[
            Middleware(Telemetry),  # outermost: ids and counts every request
            Middleware(
                BodySizeLimit,
                max_bytes=settings.max_body_bytes,
                max_upload_bytes=settings.max_upload_body_bytes,
            ),
            Middleware(RateLimitHeaders),
            Middleware(
                Scoped,
                prefix=dashboard.HOME,
                middleware=SessionMiddleware,
                # Its own key, derived: the API-key pepper is never a cookie-signing key.
                secret_key=hmac.new(
                    settings.secret_key.get_secret_value().encode(),
                    b"dashboard-session",
                    hashlib.sha256,
                ).hexdigest(),
                session_cookie="fluxgate_dashboard",
                path="/dashboard",
                same_site="strict",
                https_only=settings.public_url.startswith("https://"),
                max_age=8 * 3600,
            ),
            Middleware(RequestEnd),
        ],
    )
    app.state.schema = schema
    app.state.settings = settings
    return app
