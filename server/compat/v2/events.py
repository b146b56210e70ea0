"""Seed 000's real-time events over Socket.IO (``/socket.io/``), on the same ASGI app.

A client connects with its API key — ``io(url, {auth: {token: key}})`` as the seed shows;
also ``auth: {apiKey|api_key|"X-API-Key": key}``, an ``X-API-Key`` or ``Authorization:
Bearer`` header, or ``?token=`` — and is refused (``connect_error`` with ``{message,
data: {code}}``) without a valid key. It then ``emit('subscribe', {channel})`` to follow one of
its own jobs (``generation_<image_id>``) or batches (``batch_<id>``, the batch_id itself),
and ``emit('unsubscribe', {channel})`` to stop. The acknowledgement (the emit's callback)
is ``{"ok": true, "channel"}``, or ``{"ok": false, "channel", "error", "code"}`` for a
channel that is not the caller's (NOT_FOUND: another account's id is never shown), a
malformed one, or the plan's subscription limit (RATE_LIMITED); a refusal is also emitted
as an ``error`` event with the same body.

A channel is GraphQL's ``generationUpdated`` / ``batchUpdated`` subscription run as the
caller, so a channel follows the job by the event stream (runtime/events.py), counts
against the plan's open subscriptions, and ends when the key is revoked. Events (the
seed's names and fields; a late subscriber first gets what already happened):

- ``generation_started`` ``{image_id, message}``;
- ``generation_progress`` ``{image_id, progress, current_step, total_steps, phase,
  message}``; phase ``queued`` (with ``queue_position``) before it starts, then
  ``generating``;
- ``generation_complete`` ``{image_id, url, thumbnail_url, seed, time, status}``;
- ``generation_failed`` ``{image_id, error, status}`` (Fluxgate's addition: the seed
  names no failure event; a cancelled job is failed too);
- ``batch_started`` ``{batch_id, total, message}``, once an item runs;
- ``job_completed`` ``{batch_id, job_id, image_id, url, seed, generation_time, status}``,
  per item (``job_id``: the item's client id, or its image_id);
- ``job_failed`` (the same, with ``error_message``; Fluxgate's addition);
- ``batch_progress`` ``{batch_id, progress, total, completed, failed, processing,
  queued}`` (Fluxgate's addition);
- ``batch_completed``: the batch's status as ``GET /api/batch/{batch_id}`` answers it.

A channel ends after its final event; a disconnect ends all of the client's channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import socketio
from starlette.routing import Mount

from billing.errors import ErrorCode, Forbidden, Unauthenticated
from schema.context import Context, Services, key_from_params
from server.compat.v2.batches import (
    BATCH_FIELDS,
    client_ids,
    internal_id,
    job_entry,
    public_id,
    status_body,
)
from server.compat.v2.common import seed_status, status_message
from server.compat.v2.jobs import THUMBNAIL

__all__ = ["PATH", "Events", "mount"]

log = logging.getLogger(__name__)

PATH = "socket.io"
GENERATION_FIELDS = """id status progress step totalSteps seed url duration error
  queuePosition outputs { id url }"""
FOLLOW_GENERATION = f"""subscription Follow($id: ID!) {{
  generationUpdated(id: $id) {{ {GENERATION_FIELDS} }} }}"""
FOLLOW_BATCH = (
    f"subscription FollowBatch($id: ID!) {{ batchUpdated(id: $id) {{ {BATCH_FIELDS} }} }}"
)
MAX_CHANNELS = 32  # per connection (the plan's subscription limit applies as well)
MAX_CHANNEL_LEN = 128
# The errors that end the connection: its key no longer works.
KEY_ERRORS = {ErrorCode.UNAUTHENTICATED.value, ErrorCode.FORBIDDEN.value}


@dataclass
class Connection:
    context: Context
    schema: Any  # the app's GraphQL schema (strawberry)
    channels: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Channels whose subscription is starting (a second subscribe to one is answered ok).
    starting: set[str] = field(default_factory=set)


class Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _key(environ: Mapping[str, Any], auth: Any) -> str | None:
    """The API key: the connect payload (the seed's ``auth: {token}``), then the
    handshake's headers (X-API-Key, Authorization: Bearer)."""
    if isinstance(auth, dict):
        token = auth.get("token")
        if isinstance(token, str) and token.strip():
            return token.strip()
        chosen = key_from_params(auth)
        if chosen:
            return chosen.strip()
    header = environ.get("HTTP_X_API_KEY")
    if isinstance(header, str) and header.strip():
        return header.strip()
    scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # Never the query string: keys do not travel in URLs (access and proxy logs keep them).
    return None


def _channel(data: Any) -> str:
    raw = data.get("channel") if isinstance(data, dict) else data
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_CHANNEL_LEN:
        raise Refusal(
            ErrorCode.BAD_USER_INPUT.value,
            "Send {channel: 'generation_<image_id>'} or {channel: 'batch_<id>'}",
        )
    return raw.strip()


class Events:
    """The Socket.IO server of one app: its connections and the channels they follow."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
        self.connections: dict[str, Connection] = {}
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on("subscribe", self.subscribe)
        self.sio.on("unsubscribe", self.unsubscribe)

    def asgi(self) -> socketio.ASGIApp:
        return socketio.ASGIApp(self.sio, socketio_path=PATH)

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        app = environ["asgi.scope"]["app"]
        services: Services = app.state.services
        context = Context(services=services, api_key=_key(environ, auth), websocket=True)
        try:
            await context.caller()
        except (Unauthenticated, Forbidden) as exc:
            # Sent as connect_error {message, data: {code}} (socket.io-client: err.message,
            # err.data.code).
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code.value}
            ) from None
        self.connections[sid] = Connection(context, app.state.schema)

    async def disconnect(self, sid: str, *reason: Any) -> None:
        connection = self.connections.pop(sid, None)
        if connection is None:
            return
        tasks = list(connection.channels.values())
        connection.channels.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        channel: str | None = None
        try:
            channel = _channel(data)
            connection = self.connections.get(sid)
            if connection is None:
                raise Refusal(ErrorCode.UNAUTHENTICATED.value, "Not connected")
            if channel in connection.channels or channel in connection.starting:
                return {"ok": True, "channel": channel}
            if len(connection.channels) + len(connection.starting) >= MAX_CHANNELS:
                raise Refusal(
                    ErrorCode.RATE_LIMITED.value,
                    f"At most {MAX_CHANNELS} channels per connection; unsubscribe from one",
                )
            stream, follow = self._stream(connection, channel)
            connection.starting.add(channel)
            try:
                first = await _next(stream)  # the current state, or why it is refused
            finally:
                connection.starting.discard(channel)
            if first is None:
                raise Refusal(ErrorCode.NOT_FOUND.value, f"Nothing to follow on {channel!r}")
            if self.connections.get(sid) is not connection:  # the client left meanwhile
                await stream.aclose()
                return {"ok": False, "channel": channel, "error": "Disconnected", "code": "GONE"}
            task = asyncio.create_task(
                self._guarded(sid, channel, follow(connection, sid, channel, stream, first))
            )
            connection.channels[channel] = task
            task.add_done_callback(lambda _t: self._forget(sid, channel, task))
            return {"ok": True, "channel": channel}
        except Refusal as refusal:
            body = {
                "ok": False,
                "channel": channel,
                "error": refusal.message,
                "code": refusal.code,
            }
            await self.sio.emit("error", body, to=sid)
            if refusal.code in KEY_ERRORS:
                await self.sio.disconnect(sid)
            return body

    async def unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            channel = _channel(data)
        except Refusal as refusal:
            return {"ok": False, "channel": None, "error": refusal.message, "code": refusal.code}
        connection = self.connections.get(sid)
        task = connection.channels.pop(channel, None) if connection else None
        if task is not None:
            task.cancel()
        return {"ok": True, "channel": channel}

    async def _guarded(self, sid: str, channel: str, follow: Awaitable[None]) -> None:
        """A channel's task: an unexpected failure ends the channel with an error event
        (logged), never the connection's other channels."""
        try:
            await follow
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Socket.IO channel %s failed", channel)
            body = {
                "ok": False,
                "channel": channel,
                "error": "The channel ended by an internal error; subscribe again",
                "code": ErrorCode.INTERNAL_SERVER_ERROR.value,
            }
            with contextlib.suppress(Exception):
                await self.sio.emit("error", body, to=sid)

    def _forget(self, sid: str, channel: str, task: asyncio.Task[None]) -> None:
        connection = self.connections.get(sid)
        if connection is not None and connection.channels.get(channel) is task:
            del connection.channels[channel]

    def _stream(self, connection: Connection, channel: str) -> tuple[Any, Any]:
        """The GraphQL subscription behind a channel, and how its states become events."""
        if channel.startswith("generation_"):
            document, variable, follow = (
                FOLLOW_GENERATION,
                channel.removeprefix("generation_"),
                self._follow_generation,
            )
        elif channel.startswith("batch_"):
            document, variable, follow = (
                FOLLOW_BATCH,
                internal_id(channel),
                self._follow_batch,
            )
        else:
            raise Refusal(
                ErrorCode.BAD_USER_INPUT.value,
                f"Unknown channel {channel!r}: use generation_<image_id> or batch_<id>",
            )
        if not variable:
            raise Refusal(ErrorCode.BAD_USER_INPUT.value, f"Channel {channel!r} names no id")
        return _results(connection, document, {"id": variable}), follow

    async def _emit(self, sid: str, event: str, data: Mapping[str, Any]) -> None:
        await self.sio.emit(event, dict(data), to=sid)

    async def _follow_generation(
        self,
        connection: Connection,
        sid: str,
        channel: str,
        stream: AsyncGenerator[dict[str, Any], None],
        first: dict[str, Any],
    ) -> None:
        started = False
        shown: tuple[Any, ...] | None = None
        state: dict[str, Any] | None = first
        try:
            while state is not None:
                g = state["generationUpdated"]
                image_id, status = g["id"], g["status"]
                if status == "queued":
                    now: tuple[Any, ...] = ("queued", g.get("queuePosition"))
                    if now != shown:
                        position = g.get("queuePosition")
                        await self._emit(sid, "generation_progress", {
                            "image_id": image_id, "progress": 0, "current_step": 0,
                            "total_steps": g["totalSteps"], "phase": "queued",
                            "queue_position": position,
                            "message": "В очереди" + (  # noqa: RUF001 (the seed's Russian)
                                f" (позиция {position + 1})" if position is not None else ""
                            ) + "...",
                        })  # fmt: skip
                    shown = now
                elif status in {"processing", "completed"} and not started:
                    started = True
                    await self._emit(
                        sid, "generation_started",
                        {"image_id": image_id, "message": "Генерация началась"},
                    )  # fmt: skip
                if status == "processing":
                    now = ("processing", g["step"], g["progress"])
                    if now != shown and g["step"] > 0:
                        step, total = g["step"], g["totalSteps"]
                        await self._emit(sid, "generation_progress", {
                            "image_id": image_id, "progress": g["progress"],
                            "current_step": step, "total_steps": total,
                            "phase": "generating",
                            "message": f"Генерация изображения (Шаг {step}/{total})...",
                        })  # fmt: skip
                    shown = now
                elif status == "completed":
                    outputs = g.get("outputs") or []
                    thumbnail = await _thumbnail(connection, outputs[0]["id"]) if outputs else None
                    await self._emit(sid, "generation_complete", {
                        "image_id": image_id,
                        "url": outputs[0]["url"] if outputs else g.get("url"),
                        "thumbnail_url": thumbnail, "seed": g["seed"],
                        "time": g.get("duration"), "status": "completed",
                    })  # fmt: skip
                    return
                elif status in {"failed", "cancelled"}:
                    await self._emit(sid, "generation_failed", {
                        "image_id": image_id, "error": status_message(g),
                        "status": seed_status(status),
                    })  # fmt: skip
                    return
                state = await _next(stream)
        except Refusal as refusal:
            await self._ended(sid, channel, refusal)
        finally:
            await stream.aclose()

    async def _follow_batch(
        self,
        connection: Connection,
        sid: str,
        channel: str,
        stream: AsyncGenerator[dict[str, Any], None],
        first: dict[str, Any],
    ) -> None:
        started = False
        finals: set[str] = set()
        progress: tuple[Any, ...] | None = None
        state: dict[str, Any] | None = first
        try:
            while state is not None:
                batch = state["batchUpdated"]
                batch_id = public_id(str(batch["id"]))
                items = batch["items"]
                if not started and any(i["status"] != "queued" for i in items):
                    started = True
                    await self._emit(sid, "batch_started", {
                        "batch_id": batch_id, "total": batch["total"],
                        "message": "Batch processing started",
                    })  # fmt: skip
                ids = client_ids(batch)
                for position, item in enumerate(items, start=1):
                    status = item["status"]
                    if status not in {"completed", "failed", "cancelled"} or item["id"] in finals:
                        continue
                    finals.add(item["id"])
                    entry = job_entry(item, position, ids[position - 1])
                    event = "job_completed" if status == "completed" else "job_failed"
                    await self._emit(sid, event, {
                        "batch_id": batch_id, "job_id": entry["id"], **entry,
                        "completed": batch["completed"], "failed": batch["failed"],
                        "total": batch["total"],
                    })  # fmt: skip
                now = (batch["completed"], batch["failed"], batch["processing"], batch["queued"],
                       round(float(batch["progress"]) * 100))  # fmt: skip
                if now != progress:
                    progress = now
                    await self._emit(sid, "batch_progress", {
                        "batch_id": batch_id, "progress": now[4], "total": batch["total"],
                        "completed": batch["completed"], "failed": batch["failed"],
                        "cancelled": batch["cancelled"], "processing": batch["processing"],
                        "queued": batch["queued"],
                    })  # fmt: skip
                if len(finals) == len(items):
                    await self._emit(sid, "batch_completed", status_body(batch))
                    return
                state = await _next(stream)
        except Refusal as refusal:
            await self._ended(sid, channel, refusal)
        finally:
            await stream.aclose()

    async def _ended(self, sid: str, channel: str, refusal: Refusal) -> None:
        """A channel ended by an error (its key revoked, its account banned...)."""
        body = {"ok": False, "channel": channel, "error": refusal.message, "code": refusal.code}
        await self.sio.emit("error", body, to=sid)
        if refusal.code in KEY_ERRORS:
            await self.sio.disconnect(sid)


async def _thumbnail(connection: Connection, image_id: str) -> str | None:
    """The library thumbnail of a job's image (as GET /api/images/{id} shows it), or None
    (a vector output, or the image already deleted)."""
    result = await connection.schema.execute(
        THUMBNAIL, variable_values={"id": image_id}, context_value=connection.context
    )
    image = (result.data or {}).get("image") if not result.errors else None
    return image.get("thumbnailUrl") if isinstance(image, dict) else None


async def _next(stream: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any] | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _results(
    connection: Connection, document: str, variables: dict[str, Any]
) -> AsyncGenerator[dict[str, Any], None]:
    """A GraphQL subscription's ``data``, one state at a time; ``Refusal`` on its error."""
    source = await connection.schema.subscribe(
        document, variable_values=variables, context_value=connection.context
    )
    try:
        if not hasattr(source, "__aiter__"):
            source = _single(source)
        async for result in source:
            errors = getattr(result, "errors", None)
            if errors:
                extensions = errors[0].extensions or {}
                raise Refusal(
                    str(extensions.get("code", ErrorCode.INTERNAL_SERVER_ERROR.value)),
                    errors[0].message,
                )
            yield result.data or {}
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _single(result: Any) -> AsyncGenerator[Any, None]:
    yield result


def mount() -> Mount:
    """The Socket.IO endpoint, for the app's routes: ``/socket.io/``."""
    return Mount(f"/{PATH}", app=Events().asgi())
