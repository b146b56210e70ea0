"""REST for every job kind: ``POST /v1/<kind>`` (JSON, or multipart/form-data with the
files ``image`` and ``mask``), ``GET /v1/jobs/{id}`` and ``POST /v1/jobs/{id}/cancel``.

Like the seed-001 shim (server/rest.py), each request executes a GraphQL document through
the same schema — ``createJob`` for a submit — so authentication, rate limits, validation
and error codes are the GraphQL surface's, and only the envelope differs: a job document
(SPEC "Job kinds") with 202 for an accepted job, ``{"errors": [...]}`` with the code's
HTTP status for a refusal."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import kinds
from billing.errors import ErrorCode
from schema.context import Context
from server.errors import BadBody, decode_json, error_response
from server.rest import authenticated, execute, snake_path

JOB_FIELDS = """
    id kind status progress creditCost url error createdAt startedAt completedAt
    service version prompt width height seed queuePosition etaSeconds
    outputs { id url width height format }
    inputs { role url width height }
"""
CREATE_JOB = f"""
mutation CreateJob($kind: String!, $input: JSON!, $image: Upload, $mask: Upload) {{
  job: createJob(kind: $kind, input: $input, image: $image, mask: $mask) {{ {JOB_FIELDS} }}
}}"""
GET_JOB = f"""query Job($id: ID!) {{ job: generation(id: $id) {{ {JOB_FIELDS} }} }}"""
CANCEL_JOB = (
    f"""mutation Cancel($id: ID!) {{ job: cancelGeneration(id: $id) {{ {JOB_FIELDS} }} }}"""
)
# Form fields that carry lists: comma-separated or repeated.
LIST_FIELDS = {"webhook_events", "webhookEvents"}
FILES = ("image", "mask")


async def submit_job(request: Request) -> Response:
    kind = request.path_params["kind"]
    if kinds.registry.find(kind) is None:
        return error_response(404, ErrorCode.NOT_FOUND.value, f"No endpoint /v1/{kind}")
    context = await authenticated(request)
    if isinstance(context, Response):
        return context
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json":
        try:
            body = decode_json(await request.body())
        except BadBody as exc:
            return error_response(400, ErrorCode.BAD_USER_INPUT.value, exc.message, field="body")
        if not isinstance(body, dict):
            return error_response(
                400, ErrorCode.BAD_USER_INPUT.value, "The body must be a JSON object", field="body"
            )
    elif media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=len(FILES), max_fields=100)
        except Exception:  # starlette's MultiPartException and malformed bodies
            return error_response(
                400, ErrorCode.BAD_USER_INPUT.value, "The multipart body is malformed",
                field="body",
            )  # fmt: skip
        try:
            return await _submit_form(request, context, kind, form)
        finally:
            await form.close()  # the uploads' temporary files
    else:
        return error_response(
            415,
            ErrorCode.BAD_USER_INPUT.value,
            "Send the request as application/json or multipart/form-data",
            field="Content-Type",
        )
    return await _create(request, context, kind, body, {})


async def _submit_form(request: Request, context: Context, kind: str, form: FormData) -> Response:
    body, files, problem = _from_form(form)
    if problem is not None:
        return problem
    # A file the kind does not take is refused by createJob (jobs.prepare).
    return await _create(request, context, kind, body, files)


async def _create(
    request: Request, context: Context, kind: str, body: dict[str, Any],
    files: dict[str, UploadFile],
) -> Response:  # fmt: skip
    variables: dict[str, Any] = {"kind": kind, "input": body, **files}
    return await execute(
        request, context, CREATE_JOB, variables, envelope=_job, status=202,
        rename_field=snake_path,
    )  # fmt: skip


def _from_form(form: FormData) -> tuple[dict[str, Any], dict[str, UploadFile], Response | None]:
    body: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in FILES or name in files:
                problem = error_response(
                    400, ErrorCode.BAD_USER_INPUT.value,
                    f"unexpected file field {name!r}; files: {', '.join(FILES)}", field=name,
                )  # fmt: skip
                return body, files, problem
            files[name] = value
        elif name in LIST_FIELDS:
            body.setdefault(name, []).extend(v.strip() for v in value.split(",") if v.strip())
        elif name in body:
            problem = error_response(
                400, ErrorCode.BAD_USER_INPUT.value, f"{name} is given twice", field=name
            )
            return body, files, problem
        else:
            body[name] = value
    return body, files, None


def _job(data: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = data["job"]
    return job


async def get_job(request: Request) -> Response:
    context = await authenticated(request)
    if isinstance(context, Response):
        return context
    return await execute(
        request, context, GET_JOB, {"id": request.path_params["id"]}, envelope=_job
    )


async def cancel_job(request: Request) -> Response:
    context = await authenticated(request)
    if isinstance(context, Response):
        return context
    return await execute(
        request, context, CANCEL_JOB, {"id": request.path_params["id"]}, envelope=_job
    )


__all__ = ["JSONResponse", "cancel_job", "get_job", "submit_job"]
