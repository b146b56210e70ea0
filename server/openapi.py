"""The OpenAPI 3.1 document of every REST surface (``GET /openapi.json``) and the docs page
rendered from it (``GET /docs``, self-hosted: no CDN, no script, no external asset).

Generated from the models that validate the requests, never written by hand:

- the compatible surfaces (``server.compat.SURFACES``): each ``Operation`` names its query,
  body and response pydantic models (``pydantic.json_schema.models_json_schema``,
  validation mode for requests, serialization mode for responses, wire names);
- ``POST /v1/<kind>`` for every registered job kind: the kind's ``KindParams`` model (the
  model ``kind.parse`` validates with, snake_case names as SPEC writes them; camelCase is
  accepted too) plus the fields every kind's request takes (``<input>_url``,
  ``<input>_id``, ``webhook_url``, ``webhook_events``, ``preview``; schema/kind_schema.py);
- ``POST /v1/text_to_image`` (seed 001): its body is the GraphQL variable ``input`` of
  ``generateImage``, validated by GraphQL coercion against ``ImageGenerationInput``; its
  JSON schema is derived from that input type of the live schema (``graphql_input_schema``),
  so the document follows the type that validates it;
- our own responses (the job document, seed 001's ``{"data": {"generateImage": ...}}``
  envelope, the health checks, the error shape): the pydantic models below, which the
  tests check real responses against.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import strawberry
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    Undefined,
)
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.templating import Jinja2Templates

import kinds
from billing.requests import MAX_URL_LEN
from kinds.base import JobKind
from schema.jobs import MAX_ID_LEN
from server.compat import SURFACES
from server.compat.surface import (
    FORMS,
    JSON,
    MULTIPART,
    URLENCODED,
    Operation,
    Surface,
    json_error,
)
from server.rest import STATUS_BY_CODE

# What the server refuses as blank (schema/jobs.py's ``sources_from``): text with no
# character but white space.
NOT_BLANK = r"\S"

__all__ = [
    "ErrorBody", "GenerationDocument", "HealthDocument", "JobDocument", "ReadyDocument",
    "TextToImageEnvelope", "build_document", "docs_page", "openapi_json",
]  # fmt: skip

REF = "#/components/schemas/{model}"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# Paths with a route of their own (their body is not a kind's parameters).
OWN_KIND_PATHS = {"text_to_image"}
INT32 = 2**31 - 1
BEARER = "bearerAuth"
API_KEY = "apiKeyHeader"


# --- Our own response and error bodies -------------------------------------------------


class _Wire(BaseModel):
    """A response body as GraphQL names its fields (camelCase), nothing more."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


Status = Literal["queued", "processing", "completed", "failed", "cancelled"]


class ErrorExtensions(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"description": "The error's code and what it concerns."},
    )

    code: str = Field(description="BAD_USER_INPUT, UNAUTHENTICATED, INSUFFICIENT_CREDITS, ...")
    field: str | None = Field(default=None, description="The offending field, as sent.")
    retryAfter: int | None = Field(  # the wire name
        default=None, description="Seconds to wait before retrying (429, 503)."
    )


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str = Field(min_length=1)
    extensions: ErrorExtensions


class ErrorBody(BaseModel):
    """Fluxgate's error shape (SPEC): every refusal of /v1, /healthz and /readyz."""

    model_config = ConfigDict(extra="forbid")

    errors: list[ErrorItem] = Field(min_length=1)


class OutputDocument(_Wire):
    id: str
    url: str = Field(description="Where to fetch the output (a signed /files URL).")
    width: int
    height: int
    format: str = Field(description="png, jpeg, webp, svg, eps, ...")


class InputDocument(_Wire):
    role: str = Field(description="The input's name: image, mask.")
    url: str
    width: int
    height: int


class JobDocument(_Wire):
    """A job of any kind (SPEC "Job kinds"): ids are UUID strings."""

    id: str
    kind: str
    status: Status
    progress: int = Field(description="0..100")
    credit_cost: int
    url: str | None = Field(description="The first output's URL once completed.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    service: str
    version: str
    prompt: str
    width: int
    height: int
    seed: int
    queue_position: int | None
    eta_seconds: float | None
    outputs: list[OutputDocument]
    inputs: list[InputDocument]


class GenerationDocument(_Wire):
    """A text-to-image generation as seed 001 shows it."""

    id: str
    status: Status
    service: str
    provider: str
    version: str
    quality: str
    prompt: str
    url: str | None
    width: int
    height: int
    seed: int
    webhook_url: str | None
    credit_cost: int
    metadata: dict[str, Any]
    progress: int
    step: int
    total_steps: int
    duration: float | None
    error: str | None
    queue_position: int | None
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class GenerationData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generateImage: GenerationDocument  # the wire name


class TextToImageEnvelope(BaseModel):
    """Seed 001's envelope: ``{"data": {"generateImage": {...}}}``."""

    model_config = ConfigDict(extra="forbid")

    data: GenerationData


class CancelData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cancelGeneration: GenerationDocument  # the wire name


class CancelEnvelope(BaseModel):
    """A cancel's envelope (``POST /v1/text_to_image/{id}/cancel``): ``{"data":
    {"cancelGeneration": {...}}}``."""

    model_config = ConfigDict(extra="forbid")

    data: CancelData


class HealthDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]


class ReadyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ready"]
    checks: dict[str, str] = Field(description='{"database": "ok", "redis": "ok"}')


# --- The GraphQL input of seed 001's REST body ------------------------------------------


def graphql_input_schema(type_: GraphQLInputType, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of what GraphQL's input coercion accepts for ``type_`` (nullable
    unless non-null; input objects become components, their unknown fields refused)."""
    nullable = not isinstance(type_, GraphQLNonNull)
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    schema: dict[str, Any]
    if isinstance(inner, GraphQLList):
        schema = {"type": "array", "items": graphql_input_schema(inner.of_type, components)}
    elif isinstance(inner, GraphQLEnumType):
        schema = {"enum": list(inner.values)}
    elif isinstance(inner, GraphQLInputObjectType):
        if inner.name not in components:
            components[inner.name] = {}  # a placeholder against recursion
            properties: dict[str, Any] = {}
            required: list[str] = []
            for name, field in inner.fields.items():
                prop = graphql_input_schema(field.type, components)
                if field.description:
                    prop = {**prop, "description": field.description}
                if field.default_value is not Undefined:
                    prop = {**prop, "default": _plain(field.default_value)}
                elif isinstance(field.type, GraphQLNonNull):
                    required.append(name)
                properties[name] = prop
            component: dict[str, Any] = {
                "type": "object",
                "title": inner.name,
                "properties": properties,
                "additionalProperties": False,
            }
            if inner.description:
                component["description"] = inner.description
            if required:
                component["required"] = required
            components[inner.name] = component
        schema = {"$ref": REF.format(model=inner.name)}
    elif isinstance(inner, GraphQLScalarType):
        schema = _SCALARS.get(inner.name, {})
    else:  # pragma: no cover  # graphql-core has no other input types
        raise TypeError(f"no JSON schema for {inner!r}")
    if nullable:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


_SCALARS: dict[str, dict[str, Any]] = {
    "String": {"type": "string"},
    "ID": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    "Int": {"type": "integer", "minimum": -INT32 - 1, "maximum": INT32},
    "Float": {"type": "number"},
    "Boolean": {"type": "boolean"},
}


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


# --- The document -----------------------------------------------------------------------


ERROR_DESCRIPTIONS = {
    400: "Bad input (nothing is charged)",
    401: "Missing or invalid API key",
    402: "Insufficient credits",
    403: "Forbidden, or a spent quota",
    404: "Not found (or another account's)",
    409: "Conflict (the job's state does not allow it)",
    413: "Body too large",
    415: "Unsupported body media type",
    422: "Idempotency-Key reused with another body",
    429: "Rate limited (Retry-After)",
    501: "Not served on this deployment",
    503: "Service unavailable (Retry-After)",
}
REFUSALS = sorted(set(STATUS_BY_CODE.values()))


class _Builder:
    def __init__(self, graphql_schema: strawberry.Schema) -> None:
        self.graphql = graphql_schema
        self.components: dict[str, Any] = {}
        self.paths: dict[str, dict[str, Any]] = {}
        self.operation_ids: set[str] = set()

    # Pydantic models -> components; returns each model's schema (a $ref, usually).
    def models(
        self,
        models: Iterable[tuple[type[BaseModel], JsonSchemaMode]],
        *,
        by_alias: bool = True,
        namespace: str = "",
    ) -> dict[tuple[Any, JsonSchemaMode], dict[str, Any]]:
        """Components for ``models`` (and the models they use); each model's schema (a
        reference). A model named like a different one already described (two surfaces'
        ``ErrorBody``) is named ``<namespace>.<name>``."""
        unique = list(dict.fromkeys(models))
        if not unique:
            return {}
        keys, defs = models_json_schema(unique, by_alias=by_alias, ref_template=REF)
        found: dict[str, Any] = defs.get("$defs", {})
        renames: dict[str, str] = {}
        for name, schema in found.items():
            known = self.components.get(name)
            if known is None or known == schema:
                continue
            prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", namespace)
            candidate = base = f"{prefix}.{name}" if prefix else name
            n = 2
            while candidate in self.components and self.components[candidate] != schema:
                candidate, n = f"{base}{n}", n + 1
            renames[name] = candidate
        if renames:
            found = {renames.get(k, k): _renamed(v, renames) for k, v in found.items()}
            keys = {k: _renamed(v, renames) for k, v in keys.items()}
        self.components.update(found)
        return {key: dict(value) for key, value in keys.items()}

    def add(
        self,
        method: str,
        path: str,
        tag: str,
        *,
        summary: str,
        description: str = "",
        auth: str = "header",
        parameters: list[dict[str, Any]] | None = None,
        body: dict[str, dict[str, Any]] | None = None,
        responses: dict[int, dict[str, Any]],
    ) -> None:
        template, path_parameters = _path_template(path)
        operation: dict[str, Any] = {
            "tags": [tag],
            "summary": summary,
            "operationId": self._operation_id(tag, method, template),
            "parameters": [*path_parameters, *(parameters or [])],
            "responses": {str(status): value for status, value in sorted(responses.items())},
        }
        if description:
            operation["description"] = description
        if auth == "header":
            operation["security"] = [{BEARER: []}, {API_KEY: []}]
        else:
            operation["security"] = []
        if auth == "form":
            operation["x-fluxgate-auth"] = {"in": "body", "name": "user_key"}
        if body is not None:
            operation["requestBody"] = {"required": True, "content": body}
        if not operation["parameters"]:
            del operation["parameters"]
        self.paths.setdefault(template, {})[method.lower()] = operation

    def _operation_id(self, tag: str, method: str, template: str) -> str:
        words = re.sub(r"[^A-Za-z0-9]+", "_", f"{tag}_{method}_{template}").strip("_").lower()
        candidate, n = words, 2
        while candidate in self.operation_ids:
            candidate, n = f"{words}_{n}", n + 1
        self.operation_ids.add(candidate)
        return candidate


def _renamed(value: Any, renames: Mapping[str, str]) -> Any:
    """``value`` with its component references renamed."""
    if isinstance(value, dict):
        out = {k: _renamed(v, renames) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            out["$ref"] = REF.format(model=renames.get(name, name))
        return out
    if isinstance(value, list):
        return [_renamed(v, renames) for v in value]
    return value


def _path_template(path: str) -> tuple[str, list[dict[str, Any]]]:
    """An OpenAPI path from a Starlette one (``{id}``, ``{n:int}``) and its parameters."""
    parameters: list[dict[str, Any]] = []

    def replace(match: re.Match[str]) -> str:
        name, _, converter = match.group(1).partition(":")
        schema: dict[str, Any] = {"type": "integer"} if converter == "int" else {"type": "string"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return re.sub(r"{([^}]+)}", replace, path), parameters


def _json(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": dict(schema)}}


def _response(
    description: str, schema: Mapping[str, Any] | None, media: str = JSON
) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media: {"schema": dict(schema)}}}


def _errors(schema: Mapping[str, Any] | None, statuses: Iterable[int]) -> dict[int, dict[str, Any]]:
    return {s: _response(ERROR_DESCRIPTIONS.get(s, "Refused"), schema) for s in statuses}


def _refusals(auth: str, has_body: bool) -> list[int]:
    statuses = set(REFUSALS)
    if auth == "none":
        statuses.discard(401)
    if has_body:
        statuses |= {413, 415}
    return sorted(statuses)


def _ours(builder: _Builder) -> None:
    """/v1 (seed 001's shim and the job kinds), /healthz, /readyz, /openapi.json."""
    refs = builder.models(
        [
            (ErrorBody, "serialization"),
            (JobDocument, "serialization"),
            (TextToImageEnvelope, "serialization"),
            (HealthDocument, "serialization"),
            (ReadyDocument, "serialization"),
            (CancelEnvelope, "serialization"),
        ]
    )
    error = refs[(ErrorBody, "serialization")]
    job = refs[(JobDocument, "serialization")]
    envelope = refs[(TextToImageEnvelope, "serialization")]

    # Seed 001: the body is generateImage's `input` (GraphQL coercion validates it).
    input_type = builder.graphql._schema.get_type("ImageGenerationInput")
    assert isinstance(input_type, GraphQLInputObjectType)
    t2i = graphql_input_schema(GraphQLNonNull(input_type), builder.components)
    builder.add(
        "POST", "/v1/text_to_image", "v1",
        summary="Generate an image from text (seed 001 REST)",
        description=(
            "The body is `generateImage`'s `input` (GraphQL `ImageGenerationInput`, "
            "camelCase names); the answer is the GraphQL envelope. Send an "
            "`Idempotency-Key` header to make a retry safe."
        ),
        body=_json(t2i),
        responses={200: _response("The accepted generation", envelope),
                   **_errors(error, _refusals("header", True))},
    )  # fmt: skip
    cancelled = refs[(CancelEnvelope, "serialization")]
    for method, path, summary, answer in (
        ("GET", "/v1/text_to_image/{id}", "A generation, polled (seed 001 REST)", envelope),
        ("POST", "/v1/text_to_image/{id}/cancel", "Cancel a generation (seed 001 REST)", cancelled),
    ):
        builder.add(
            method, path, "v1", summary=summary,
            responses={200: _response("The generation", answer),
                       **_errors(error, _refusals("header", False))},
        )  # fmt: skip
    for kind in kinds.all_kinds():
        if kind.name in OWN_KIND_PATHS:
            continue
        _kind(builder, kind, job, error)
    for method, path, summary in (
        ("GET", "/v1/jobs/{id}", "A job of any kind"),
        ("POST", "/v1/jobs/{id}/cancel", "Cancel a job of any kind"),
    ):
        builder.add(
            method, path, "v1", summary=summary,
            responses={200: _response("The job", job),
                       **_errors(error, _refusals("header", False))},
        )  # fmt: skip
    builder.add(
        "GET", "/healthz", "service", summary="Liveness", auth="none",
        responses={200: _response("The process serves requests",
                                  refs[(HealthDocument, "serialization")])},
    )  # fmt: skip
    builder.add(
        "GET", "/readyz", "service", summary="Readiness (database and Redis)", auth="none",
        responses={200: _response("Ready", refs[(ReadyDocument, "serialization")]),
                   503: _response("Not ready (Retry-After)", error)},
    )  # fmt: skip
    builder.add(
        "GET", OPENAPI_PATH, "service", summary="This OpenAPI document", auth="none",
        responses={200: _response("OpenAPI 3.1", {"type": "object"})},
    )  # fmt: skip


def _kind(
    builder: _Builder, kind: JobKind, job: Mapping[str, Any], error: Mapping[str, Any]
) -> None:
    """``POST /v1/<kind>``: the kind's parameters (snake_case) and every kind's extras."""
    params = builder.models([(kind.Params, "validation")], by_alias=False)[
        (kind.Params, "validation")
    ]
    name = params["$ref"].rsplit("/", 1)[1]
    base = builder.components[name]
    extras: dict[str, Any] = {}
    for spec in kind.inputs:
        what = spec.description or f"The {spec.name} image"
        extras[f"{spec.name}_url"] = {
            "type": "string", "minLength": 1, "maxLength": MAX_URL_LEN, "pattern": NOT_BLANK,
            "description": f"{what}: an http(s) URL to fetch (SSRF-guarded).",
        }  # fmt: skip
        extras[f"{spec.name}_id"] = {
            "type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": NOT_BLANK,
            "description": f"{what}: the id of an earlier output (or job) of yours.",
        }  # fmt: skip
    extras["webhook_url"] = {
        "type": "string", "minLength": 1, "maxLength": MAX_URL_LEN, "pattern": NOT_BLANK,
        "description": "Where to POST the job's events (a public http(s) URL).",
    }  # fmt: skip
    extras["webhook_events"] = {
        "type": "array", "items": {"type": "string"},
        "description": "started, progress, completed, failed, cancelled (default: "
        "completed, failed, cancelled); as a form field: comma-separated or repeated.",
    }  # fmt: skip
    extras["preview"] = {"type": "boolean", "default": False,
                         "description": "Send small previews with progress events."}  # fmt: skip

    def body(files: bool) -> dict[str, Any]:
        schema: dict[str, Any] = copy.deepcopy(base)
        schema["title"] = f"{kind.name} request"
        schema["properties"] = {**schema.get("properties", {}), **copy.deepcopy(extras)}
        alternatives: list[dict[str, Any]] = []
        for spec in kind.inputs:
            ways = [f"{spec.name}_url", f"{spec.name}_id"]
            if files:
                schema["properties"][spec.name] = {
                    "type": "string", "format": "binary",
                    "description": spec.description or f"The {spec.name} image file.",
                }  # fmt: skip
                ways.insert(0, spec.name)
            if spec.required:
                alternatives.append({"anyOf": [{"required": [way]} for way in ways]})
        if alternatives:
            schema["allOf"] = alternatives
        return schema

    component = f"{name}Request"
    builder.components[component] = body(files=False)
    builder.components[f"{component}Form"] = body(files=True)
    takes = ", ".join(
        f"`{s.name}` ({'required' if s.required else 'optional'}: a file, `{s.name}_url` or "
        f"`{s.name}_id`)"
        for s in kind.inputs
    )
    builder.add(
        "POST", f"/v1/{kind.name}", "v1",
        summary=f"Queue a job of kind {kind.name} ({kind.title})",
        description=(
            "Parameters in snake_case (camelCase is accepted too); as JSON or "
            "multipart/form-data. " + (f"Images: {takes}. " if takes else "")
            + "Send an `Idempotency-Key` header to make a retry safe."
        ),
        body={
            JSON: {"schema": {"$ref": REF.format(model=component)}},
            MULTIPART: {"schema": {"$ref": REF.format(model=f"{component}Form")}},
        },
        responses={202: _response("The accepted job", job),
                   **_errors(error, _refusals("header", True))},
    )  # fmt: skip


def _surface(builder: _Builder, surface: Surface, error: Mapping[str, Any]) -> None:
    """A compatible surface's operations, its models described together."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for operation in surface.operations:
        if operation.query is not None:
            models.append((operation.query, "validation"))
        if operation.body is not None:
            models.append((operation.body, "validation"))
        models += [(m, "serialization") for m in operation.responses.values() if m is not None]
    refs = builder.models(models, namespace=surface.name)
    for operation in surface.operations:
        _surface_operation(
            builder, surface.name, operation, refs, surface.error is json_error, error
        )


def _surface_operation(
    builder: _Builder,
    tag: str,
    operation: Operation,
    refs: Mapping[tuple[Any, JsonSchemaMode], Mapping[str, Any]],
    ours: bool,
    error: Mapping[str, Any],
) -> None:

    parameters: list[dict[str, Any]] = []
    if operation.query is not None:
        query = _resolve(builder, refs[(operation.query, "validation")])
        required = set(query.get("required", ()))
        for name, prop in query.get("properties", {}).items():
            parameter: dict[str, Any] = {
                "name": name, "in": "query", "required": name in required, "schema": prop,
            }  # fmt: skip
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)

    body: dict[str, dict[str, Any]] | None = None
    if operation.body is not None:
        schema = refs[(operation.body, "validation")]
        if operation.auth == "form":
            schema = _with_key(builder, schema)
        media = list(operation.media)
        if set(media) & set(FORMS):
            media += [m for m in (MULTIPART, URLENCODED) if m not in media]
        body = {m: {"schema": dict(schema)} for m in media}

    responses: dict[int, dict[str, Any]] = {}
    declared_error: Mapping[str, Any] | None = None
    first_2xx = min((s for s in operation.responses if 200 <= s < 300), default=None)
    for status, model in sorted(operation.responses.items()):
        schema_ = refs[(model, "serialization")] if model is not None else None
        if status >= 400 and schema_ is not None and declared_error is None:
            declared_error = schema_
        response = _response(
            ERROR_DESCRIPTIONS.get(status, "OK" if status < 400 else "Refused"), schema_
        )
        if status == first_2xx and operation.streams:
            content = response.setdefault("content", {})
            for media_type in operation.streams:
                content[media_type] = {"schema": {"type": "string"}}
        responses[status] = response
    # Every refusal of a surface goes through its one error format: the declared error
    # model (or Fluxgate's shape for a surface that keeps it) describes them all.
    refusal = declared_error if declared_error is not None else (error if ours else None)
    for status in _refusals(operation.auth, operation.body is not None):
        if status not in responses:
            shape = error if status == 413 else refusal
            responses[status] = _response(ERROR_DESCRIPTIONS.get(status, "Refused"), shape)
    builder.add(
        operation.method, operation.path, tag,
        summary=operation.summary, description=operation.description, auth=operation.auth,
        parameters=parameters, body=body, responses=responses,
    )  # fmt: skip


def _resolve(builder: _Builder, schema: Mapping[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return dict(builder.components[ref.rsplit("/", 1)[1]])
    return dict(schema)


def _with_key(builder: _Builder, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A form-authenticated body names its key field; add it if the model does not."""
    resolved = _resolve(builder, schema)
    if "user_key" in resolved.get("properties", {}):
        return dict(schema)
    name = f"{resolved.get('title', 'Body')}WithKey"
    extended = copy.deepcopy(resolved)
    extended["properties"] = {
        "user_key": {"type": "string", "description": "Your API key."},
        **extended.get("properties", {}),
    }
    extended["required"] = ["user_key", *extended.get("required", [])]
    builder.components[name] = extended
    return {"$ref": REF.format(model=name)}


def build_document(graphql_schema: strawberry.Schema) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every REST surface."""
    builder = _Builder(graphql_schema)
    _ours(builder)
    error = {"$ref": REF.format(model="ErrorBody")}
    tags = [
        {"name": "v1", "description": "Fluxgate's own REST: seed 001's text_to_image shim "
         "and every job kind (SPEC \"Job kinds\")."},
        {"name": "service", "description": "Health, readiness and this document."},
    ]  # fmt: skip
    for surface in SURFACES:
        tags.append({"name": surface.name, "description": surface.description or surface.name})
        _surface(builder, surface, error)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fluxgate",
            "version": "1",
            "description": (
                "Self-hosted FLUX image generation. Every REST surface below is a thin "
                "adapter on the one GraphQL schema (POST /graphql): the same kinds, "
                "credits, limits and errors. Authenticate with `Authorization: Bearer "
                "<key>` or `X-API-Key: <key>`; the task API (seed 004) takes the key in the "
                "form field `user_key` instead (OpenAPI has no body security scheme: "
                "those operations say so with `x-fluxgate-auth`). Ids are opaque strings "
                "(UUIDs)."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": tags,
        "paths": builder.paths,
        "components": {
            "schemas": dict(sorted(builder.components.items())),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <API key>",
                },
                API_KEY: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "X-API-Key: <API key>",
                },
            },
        },
    }


def document_of(request: Request) -> dict[str, Any]:
    """The app's document, built on its first request (the routes and models are fixed
    once the app is made)."""
    state = request.app.state
    document: dict[str, Any] | None = getattr(state, "openapi_document", None)
    if document is None:
        document = state.openapi_document = build_document(state.schema)
    return document


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document_of(request))


templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.trim_blocks = templates.env.lstrip_blocks = True  # a compact page


async def docs_page(request: Request) -> Response:
    document = document_of(request)
    operations: dict[str, list[dict[str, Any]]] = {t["name"]: [] for t in document["tags"]}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operations.setdefault(operation["tags"][0], []).append(
                {"method": method.upper(), "path": path, **operation}
            )
    html = templates.get_template("api_docs.html").render(
        document=document,
        operations=operations,
        schema_name=_schema_name,
        describe=_describe,
        constraints=_constraints,
        openapi_path=OPENAPI_PATH,
    )
    return HTMLResponse(html)


def _schema_name(schema: Mapping[str, Any] | None) -> str | None:
    ref = (schema or {}).get("$ref")
    return ref.rsplit("/", 1)[1] if isinstance(ref, str) else None


def _describe(schema: Mapping[str, Any] | None) -> str:
    """A short human reading of a schema: its type, or the component it names."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_describe(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_describe(schema.get('items'))}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return str(kind)


CONSTRAINTS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "multipleOf",
    "format",
)


def _constraints(schema: Mapping[str, Any] | None) -> str:
    """A schema's constraints (and its alternatives'), e.g. ``minimum=1 maximum=100``."""
    found: list[str] = []
    for part in [schema or {}, *(schema or {}).get("anyOf", [])]:
        found += [f"{key}={json.dumps(part[key])}" for key in CONSTRAINTS if key in part]
    return " ".join(found)
