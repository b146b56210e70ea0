"""Seed 003's ``POST /flux/images`` (Ace Data Cloud's Flux Images API): one synchronous
request that makes images and answers with them, as a thin adapter on the job kinds.

- ``action: "generate"`` is a ``text_to_image`` job, ``action: "edit"`` an ``edit`` job
  (FLUX.1 Kontext; its ``image_url`` is fetched through the kinds' SSRF guard), both
  queued by GraphQL's ``createJob``: credits, limits, quotas, idempotency
  (``Idempotency-Key``) and isolation are the GraphQL surface's.
- ``model`` names a registry entry (``MODELS``); one the registry lacks is refused naming
  the seed's models this deployment serves.
- ``count`` images are one job of ``count`` images (the kinds make 1 to 4).
- ``callback_url`` is the job's ``webhook_url``, registered for seed 003's callback
  (``FLUX_IMAGES_EVENTS``): the seed's envelope, signed as every webhook, once the job
  is final.
- The request waits for the job by its events (``schema.live.follow``: the broker, and
  short reads of its own; never the request's session, closed when the handler returns),
  for at most the ``sync_wait_s`` setting; with ``Accept: application/x-ndjson`` it streams
  one JSON line per state of the job instead, then the result line. A client that leaves
  leaves the job running (it is neither cancelled nor charged twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from billing.errors import FluxgateError
from billing.service.webhooks import FLUX_IMAGES_EVENTS
from kinds.base import MAX_COUNT
from schema.live import follow
from schema.types import Generation
from server.compat.surface import Call, Refused, Surface, dumps, request_id
from server.errors import ErrorResponse
from server.rest import snake_path

NDJSON = "application/x-ndjson"
# How long a synchronous request waits for its job when the app names no sync_wait_s,
# and how often a quiet stream repeats its last line when it names no stream_keepalive_s.
DEFAULT_WAIT_S = 600.0
DEFAULT_KEEPALIVE_S = 15.0

SeedModel = Literal[
    "flux-dev", "flux-pro", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-kontext-pro",
    "flux-kontext-max",
]  # fmt: skip
# The seed's model → the job kind that runs it and its registry entry (service, version).
MODELS: dict[str, tuple[str, str, str]] = {
    "flux-dev": ("text_to_image", "flux-dev", "flux-dev"),
    "flux-pro": ("text_to_image", "flux-pro", "flux-pro"),
    "flux-pro-1.1": ("text_to_image", "flux-pro", "flux-pro-1.1"),
    "flux-pro-1.1-ultra": ("text_to_image", "flux-pro", "flux-pro-1.1-ultra"),
    "flux-kontext-pro": ("edit", "flux-kontext-pro", "flux-kontext-pro"),
    "flux-kontext-max": ("edit", "flux-kontext-max", "flux-kontext-max"),
}
KINDS = {"generate": "text_to_image", "edit": "edit"}
DEFAULT_MODEL = {"generate": "flux-dev", "edit": "flux-kontext-pro"}
# A kind's field (snake_case) → the wire field that sets it.
WIRE_FIELDS = {
    "width": "size", "height": "size", "service": "model", "version": "model",
    "image": "image_url", "image_id": "image_url", "webhook_url": "callback_url",
    "webhook_events": "callback_url",
}  # fmt: skip


def wire_field(field: str) -> str:
    snake = snake_path(field)
    return WIRE_FIELDS.get(snake, snake)


class FluxError(BaseModel):
    code: str = Field(description="e.g. bad_user_input, unauthenticated, insufficient_credits.")
    message: str = Field(description="What was wrong, naming the field.")
    field: str | None = Field(default=None, description="The request field at fault.")


class FluxImagesError(BaseModel):
    """A refusal, or a job that did not complete."""

    success: Literal[False] = False
    error: FluxError
    task_id: str | None = Field(
        default=None, description="The job, when one was accepted (24 hex characters)."
    )
    trace_id: str | None = Field(default=None, description="The request's X-Request-Id.")


class FluxImage(BaseModel):
    seed: str = Field(description="The job's seed (every image of a job shares it).")
    prompt: str
    image_url: str = Field(description="The image's URL on this server.")


class FluxImagesResult(BaseModel):
    success: Literal[True] = True
    task_id: str = Field(description="The job's id (24 hex characters): GET /v1/jobs/{id}.")
    trace_id: str | None = Field(default=None, description="The request's X-Request-Id.")
    data: list[FluxImage]


class FluxImagesBody(BaseModel):
    """The seed's request body; fields it does not name are ignored."""

    model_config = ConfigDict(extra="ignore")

    action: Literal["generate", "edit"] = Field(
        description="generate: images from the prompt; edit: the image at image_url changed "
        "as the prompt says.",
        examples=["generate"],
    )
    prompt: str = Field(
        description="The prompt (edit: the instruction).", examples=["a white siamese cat"]
    )
    size: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
        description='"WIDTHxHEIGHT" in pixels, each a multiple of 16. Default: 1024x1024 '
        "(edit: the image's size).",
        examples=["1024x1024"],
    )
    count: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, description=f"Images to make, 1 to {MAX_COUNT}."
    )
    model: SeedModel | None = Field(
        default=None,
        description="generate: flux-dev (default), flux-pro, flux-pro-1.1, "
        "flux-pro-1.1-ultra; edit: flux-kontext-pro (default), flux-kontext-max. A model "
        "this deployment does not serve is refused naming those it serves.",
        examples=["flux-pro-1.1"],
    )
    image_url: str | None = Field(
        default=None,
        max_length=4096,
        description="edit: the image to edit (fetched by the server; public addresses only). "
        "No effect on generate.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=4096,
        description='Receives one POST once the job is final: {"success": true, "task_id", '
        '"data": [...]} as the answer\'s, or {"success": false, "task_id", "error"}; '
        "signed as every Fluxgate webhook.",
    )


class JobRefused(Refused):
    """A refusal about an accepted job: names it."""

    def __init__(
        self, status: int, code: str, message: str, task_id: str, retry_after: int | None = None
    ) -> None:
        super().__init__(status, code, message, retry_after=retry_after)
        self.task_id = task_id


def error(request: Request, refused: Refused) -> Response:
    """``{"success": false, "error": {"code", "message", "field"}, "trace_id"}``."""
    detail: dict[str, Any] = {"code": refused.code.lower(), "message": refused.message}
    if refused.field is not None:
        detail["field"] = refused.field
    body: dict[str, Any] = {"success": False, "error": detail}
    if isinstance(refused, JobRefused):
        body["task_id"] = refused.task_id
    body["trace_id"] = request_id(request)
    return ErrorResponse(body, status_code=refused.status, headers=refused.headers())


surface = Surface(
    "flux_images",
    error=error,
    rename_field=wire_field,
    description="Seed 003: Ace Data Cloud's Flux Images API.",
    prefixes=("/flux/",),
)

CREATE_JOB = """
mutation FluxImages($kind: String!, $input: JSON!) {
  createJob(kind: $kind, input: $input) { id }
}"""
CANCEL = "mutation FluxImagesCancel($id: ID!) { cancelGeneration(id: $id) { id } }"

DESCRIPTION = f"""Makes images and answers with them once the job is done (at most the
server's sync_wait_s; then 504 with the job's task_id: the job goes on). With `Accept:
{NDJSON}` the answer streams one JSON object per line: `{{"type": "queued",
"queue_position", "eta_seconds"}}` while queued, `{{"type": "started"}}` then
`{{"type": "progress", "progress", "step", "total_steps", "eta_seconds"}}` while it runs
(each with `task_id` and `status`), and last `{{"type": "result", ...}}` with the JSON
answer's fields (success, data or error). A line is repeated after the server's
stream_keepalive_s (15 s by default) without news, so a long wait in the queue is not
cut by an idle timeout. Leaving early does not cancel the job."""


@surface.endpoint(
    "POST",
    "/flux/images",
    summary="Generate or edit images (FLUX), synchronously or streamed as NDJSON",
    body=FluxImagesBody,
    responses={
        200: FluxImagesResult,
        400: FluxImagesError,
        401: FluxImagesError,
        402: FluxImagesError,
        403: FluxImagesError,
        409: FluxImagesError,
        422: FluxImagesError,
        429: FluxImagesError,
        500: FluxImagesError,
        503: FluxImagesError,
        504: FluxImagesError,
    },
    streams=(NDJSON,),
    description=DESCRIPTION,
)
async def flux_images(call: Call) -> Response | dict[str, Any]:
    body: FluxImagesBody = call.body
    model = body.model or DEFAULT_MODEL[body.action]
    kind, service, version = MODELS[model]
    served = served_models(call)
    if kind != KINDS[body.action]:
        raise Refused.bad_input(
            f"model {model} cannot {body.action}; for action {body.action} use "
            f"{' or '.join(served[body.action]) or 'none: this server serves none'}",
            "model",
        )
    job_input: dict[str, Any] = {"prompt": body.prompt, "service": service, "version": version}
    if body.size is not None:
        width, _, height = body.size.partition("x")
        job_input.update(width=int(width), height=int(height))
    if body.count is not None:
        job_input["count"] = body.count
    if body.action == "edit" and body.image_url is not None:
        job_input["image_url"] = body.image_url
    if body.callback_url is not None:
        # The seed's callback envelope on the job's final event (billing/service/webhooks).
        job_input.update(webhook_url=body.callback_url, webhook_events=list(FLUX_IMAGES_EVENTS))
    try:
        data = await call.run(CREATE_JOB, {"kind": kind, "input": job_input})
    except Refused as refused:
        if refused.field == "model":
            refused.message = (
                f"model {model} is not served here ({refused.message}); served for "
                f"action {body.action}: {', '.join(served[body.action]) or 'none'}"
            )
        raise
    job_id = str(data["createJob"]["id"])
    states = await following(call, job_id)
    trace = request_id(call.request)
    settings = getattr(call.request.app.state, "settings", None)
    if NDJSON in call.request.headers.get("accept", "").lower():
        # Each line as it comes: no buffering by a proxy in front (nginx reads this).
        keepalive = float(getattr(settings, "stream_keepalive_s", DEFAULT_KEEPALIVE_S))
        return StreamingResponse(
            stream(states, job_id, trace, keepalive),
            media_type=NDJSON,
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
        )
    wait_s = float(getattr(settings, "sync_wait_s", DEFAULT_WAIT_S))
    try:
        async with asyncio.timeout(wait_s):
            final = await last(states)
    except TimeoutError:
        raise JobRefused(
            504, "timeout",
            f"The job {job_id} is not done after {wait_s:g} s; it goes on (and is charged "
            f"when it completes): follow it at GET /v1/jobs/{job_id} or by its callback_url",
            job_id,
        ) from None  # fmt: skip
    finally:
        await states.aclose()
    return result(final, job_id, trace)


def served_models(call: Call) -> dict[str, list[str]]:
    """The seed's models this deployment's registry serves, by action."""
    entries = {(e.provider, e.version) for e in call.context.services.catalog.entries}
    served: dict[str, list[str]] = {action: [] for action in KINDS}
    for name, (kind, service, version) in MODELS.items():
        if (service, version) in entries:
            served["generate" if kind == KINDS["generate"] else "edit"].append(name)
    return served


def refusal(exc: FluxgateError) -> Refused:
    return Refused.from_graphql({"message": exc.message, "extensions": exc.extensions})


async def following(call: Call, job_id: str) -> AsyncGenerator[Generation, None]:
    """The job's states from now on (its current one first), by its events. Started
    here, so a subscription refused (the account's max_subscriptions) refuses the
    request: the job is then cancelled, its credits released."""
    context = call.context
    caller = await context.caller()
    # The request's own session (its authentication's, if no transaction took it over)
    # goes back now: the follow reads in short sessions of its own.
    await context.close()
    # An async generator (declared as an iterator): closed here, its slot released.
    states = cast(AsyncGenerator[Generation, None], follow(context, caller, job_id))
    try:
        first = await anext(states)
    except FluxgateError as exc:
        await states.aclose()
        refused = refusal(exc)
        message = refused.message
        with contextlib.suppress(Refused):
            await call.run(CANCEL, {"id": job_id})
            message += "; the job was cancelled and its credits released"
        raise JobRefused(
            refused.status, refused.code, message, job_id, refused.retry_after
        ) from None

    async def chained() -> AsyncGenerator[Generation, None]:
        try:
            yield first
            async for state in states:
                yield state
        except FluxgateError as exc:  # the key revoked, the account banned meanwhile
            raise refusal(exc) from None
        finally:
            await states.aclose()

    return chained()


async def last(states: AsyncIterator[Generation]) -> Generation:
    final: Generation | None = None
    async for state in states:
        final = state
    assert final is not None
    return final


def result(job: Generation, job_id: str, trace: str | None) -> dict[str, Any]:
    """The answer for a finished job; a refusal when it failed or was cancelled."""
    if job.status != "completed":
        status, code = (409, "cancelled") if job.status == "cancelled" else (500, "failed")
        raise JobRefused(status, code, f"The job {job.status}: {job.error or 'no reason'}", job_id)
    images = [
        FluxImage(seed=str(job.seed), prompt=job.prompt, image_url=output.url)
        for output in job.outputs
    ]
    return FluxImagesResult(task_id=job_id, trace_id=trace, data=images).model_dump(mode="json")


# The tasks following the jobs of open streams (a reference keeps each alive).
_FOLLOWING: set[asyncio.Task[None]] = set()


async def stream(
    states: AsyncGenerator[Generation, None],
    job_id: str,
    trace: str | None,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
) -> AsyncIterator[str]:
    """One line per state of the job, then the result line; after ``keepalive_s`` without
    a new state (a job waiting its turn) the last line again, so that a proxy's idle
    timeout does not cut a long wait.

    The job is followed in a task of its own: when the client leaves, starlette cancels
    this stream in an anyio cancel scope, which would cancel every await of the follow's
    clean-up too (its subscription slot would stay taken until it expires); the task is
    cancelled once, plainly, and cleans up."""
    queue: asyncio.Queue[Generation | Refused | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for job in states:
                queue.put_nowait(job)
        except Refused as refused:
            queue.put_nowait(refused)
        finally:
            await states.aclose()
            queue.put_nowait(None)

    task = asyncio.create_task(pump(), name=f"flux-images-{job_id}")
    _FOLLOWING.add(task)
    task.add_done_callback(_FOLLOWING.discard)
    started = False
    line: dict[str, Any] = {}
    try:
        while True:
            quiet = keepalive_s if line and line["type"] != "result" else None
            try:
                job = await asyncio.wait_for(queue.get(), quiet)
            except TimeoutError:
                # Nothing new: the same state again ("started" is said once).
                line["type"] = "progress" if line["type"] == "started" else line["type"]
                yield dumps(line) + "\n"
                continue
            if job is None:
                break
            if isinstance(job, Refused):
                yield dumps({"type": "result", **failure(job, trace, job_id)}) + "\n"
                continue
            line = {"task_id": job_id, "status": job.status}
            if job.status == "queued":
                line.update(
                    type="queued", queue_position=job.known_position, eta_seconds=job.known_eta
                )
            elif job.status == "processing":
                line.update(
                    type="progress" if started else "started",
                    progress=job.progress,
                    step=job.step,
                    total_steps=job.total_steps,
                    eta_seconds=job.known_eta,
                )
                started = True
            else:
                try:
                    line = {"type": "result", **result(job, job_id, trace)}
                except JobRefused as refused:
                    line = {"type": "result", **failure(refused, trace)}
            yield dumps(line) + "\n"
    finally:
        task.cancel()


def failure(refused: Refused, trace: str | None, job_id: str | None = None) -> dict[str, Any]:
    detail = {"code": refused.code.lower(), "message": refused.message}
    task_id = refused.task_id if isinstance(refused, JobRefused) else job_id
    return {"success": False, "error": detail, "task_id": task_id, "trace_id": trace}
