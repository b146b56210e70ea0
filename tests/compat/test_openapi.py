"""The OpenAPI 3.1 document (``GET /openapi.json``) and its docs page (``GET /docs``):
a valid document that lists every REST route of the app, request bodies generated from
the models that validate them, response schemas that real responses match, and a docs
page with no external asset."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from openapi_spec_validator import validate
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Route

import kinds
from runtime.settings import Settings
from server import admin_pages, dashboard, library_pages
from server.app import create_app
from server.compat import SURFACES
from server.openapi import (
    ErrorBody,
    HealthDocument,
    JobDocument,
    ReadyDocument,
    TextToImageEnvelope,
)
from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, balance, create_account

# Routes that are not REST operations: GraphQL (its own schema), HTML pages, signed file
# downloads, Prometheus metrics, Stripe's webhook and the docs page itself; mounted apps
# (seed 000's Socket.IO at /socket.io/) and WebSocket routes are not Routes.
NOT_REST = {"/graphql", "/files/{key:path}", "/metrics", "/webhooks/stripe", "/docs"}
# Seed 001's REST example (its documented curl body), as test_seed_examples sends it.
SEED_001_BODY = {
    "service": "flux-pro",
    "prompt": "A futuristic city with flying cars and neon lights",
    "width": 512,
    "height": 512,
    "version": "flux-pro",
    "webhookUrl": "https://your-webhook.com/callback",
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def fetch_document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) of one component, its
    references resolved within the document."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def conforms(document: dict[str, Any], component: str, value: Any) -> None:
    errors = sorted(validator(document, component).iter_errors(value), key=str)
    assert not errors, f"{component}: {errors[0].message} at {list(errors[0].absolute_path)}"


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def rest_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, OpenAPI path) the app routes as REST, ``/v1/{kind}`` as one path
    per registered kind."""
    pages = {id(r) for r in (*dashboard.routes, *admin_pages.routes, *library_pages.routes)}
    found: set[tuple[str, str]] = set()
    for route in create_app(settings).routes:
        if not isinstance(route, Route) or id(route) in pages or route.path in NOT_REST:
            continue
        paths = [route.path]
        if route.path == "/v1/{kind}":
            paths = [f"/v1/{name}" for name in kinds.names()]
        for path in paths:
            template = re.sub(r"{([^}:]+)(:[^}]+)?}", r"{\1}", path)
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, template))
    return found


async def test_document_is_valid_openapi_31(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on any violation of OpenAPI 3.1
    ids = [
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids))
    # Served as built: the same document twice (built once per process).
    assert await fetch_document(client) == document


async def test_every_rest_route_is_documented(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    document = await fetch_document(client)
    assert operations(document) == rest_routes(settings)
    # Grouped by surface: one tag per compatible surface, each with its operations.
    tags = {t["name"] for t in document["tags"]}
    for surface in SURFACES:
        assert surface.name in tags
        for operation in surface.operations:
            template = re.sub(r"{([^}:]+)(:[^}]+)?}", r"{\1}", operation.path)
            documented = document["paths"][template][operation.method.lower()]
            assert documented["tags"] == [surface.name]
            assert documented["summary"] == operation.summary


async def test_security_schemes_and_error_shape(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>",
    }  # fmt: skip
    assert schemes["apiKeyHeader"]["in"] == "header"
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    public_ops = {("get", p) for p in ("/healthz", "/readyz", "/openapi.json")} | {
        (op.method.lower(), op.path)
        for surface in SURFACES
        for op in surface.operations
        if op.auth == "none"
    }
    for path, item in document["paths"].items():
        for method, op in item.items():
            public = (method, path) in public_ops
            if op.get("x-fluxgate-auth"):  # seed 004: the key is a form field
                assert op["security"] == []
                body = op["requestBody"]["content"]
                schema = next(iter(body.values()))["schema"]
                name = schema["$ref"].rsplit("/", 1)[1]
                assert "user_key" in document["components"]["schemas"][name]["properties"]
            elif public:
                assert op["security"] == [], path
            else:
                assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}], path
            if not public:
                assert "401" in op["responses"] or "400" in op["responses"], (method, path)
            if path.startswith("/v1/"):
                for status in ("400", "401", "402", "404", "429"):
                    assert op["responses"][status]["content"]["application/json"]["schema"] == (
                        error_ref
                    ), (method, path, status)


async def test_kind_bodies_are_the_kinds_models(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    components = document["components"]["schemas"]
    for kind in kinds.all_kinds():
        if kind.name == "text_to_image":  # seed 001's route (below)
            continue
        body = document["paths"][f"/v1/{kind.name}"]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}
        model = kind.Params.model_json_schema(
            by_alias=False, ref_template="#/components/schemas/{model}"
        )
        json_body = components[body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        form_body = components[body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
        extras = {"webhook_url", "webhook_events", "preview"}
        extras |= {f"{s.name}_{w}" for s in kind.inputs for w in ("url", "id")}
        assert set(json_body["properties"]) == set(model["properties"]) | extras
        assert set(form_body["properties"]) == set(json_body["properties"]) | {
            s.name for s in kind.inputs
        }
        assert json_body.get("required", []) == model.get("required", [])
        assert json_body["additionalProperties"] is False
        for name, prop in model["properties"].items():
            assert json_body["properties"][name] == prop, (kind.name, name)
        # A required image: a file (multipart), <name>_url or <name>_id.
        for spec in kind.inputs:
            if spec.required:
                ways = [{"required": [f"{spec.name}_{way}"]} for way in ("url", "id")]
                assert {"anyOf": ways} in json_body["allOf"]


async def test_text_to_image_body_is_the_graphql_input(
    client: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Seed 001's REST body is generateImage's `input`: the document derives it from the
    live ImageGenerationInput, and what the document refuses, GraphQL refuses."""
    document = await fetch_document(client)
    op = document["paths"]["/v1/text_to_image"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImageGenerationInput"
    }
    component = document["components"]["schemas"]["ImageGenerationInput"]
    introspected = await client.post(
        "/graphql",
        json={"query": '{ __type(name: "ImageGenerationInput") { inputFields { name '
              "type { kind name ofType { kind name } } } } }"},
        headers=account.bearer,
    )  # fmt: skip
    fields = introspected.json()["data"]["__type"]["inputFields"]
    assert list(component["properties"]) == [f["name"] for f in fields]
    required = [
        f["name"] for f in fields if f["type"]["kind"] == "NON_NULL" and f["name"] != "preview"
    ]
    assert component["required"] == required == ["service", "prompt"]
    assert component["additionalProperties"] is False

    conforms(document, "ImageGenerationInput", SEED_001_BODY)
    for bad in (
        {**SEED_001_BODY, "unknownField": 1},
        {**SEED_001_BODY, "width": "512"},
        {**SEED_001_BODY, "width": 2**31},
        {"prompt": "no service"},
    ):
        assert list(validator(document, "ImageGenerationInput").iter_errors(bad)), bad
        refused = await client.post("/v1/text_to_image", json=bad, headers=account.bearer)
        assert refused.status_code == 400, (bad, refused.text)
        conforms(document, "ErrorBody", refused.json())
    after = await balance(sessions, account.id)
    assert after.reserved == 0  # nothing was accepted, nothing held


async def test_real_responses_match_their_schemas(
    client: httpx.AsyncClient,
    worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """The seed-001 envelope, the job document, the error shape and the health checks,
    as the running API answers them, against the document's schemas and the models."""
    account = await create_account(sessions, settings, credits=1000)
    document = await fetch_document(client)

    accepted = await client.post("/v1/text_to_image", json=SEED_001_BODY, headers=account.bearer)
    assert accepted.status_code == 200, accepted.text
    conforms(document, "TextToImageEnvelope", accepted.json())
    generation = TextToImageEnvelope.model_validate(accepted.json()).data.generateImage
    for _ in range(600):  # bounded: 60 s at most
        polled = await client.get(f"/v1/text_to_image/{generation.id}", headers=account.bearer)
        assert polled.status_code == 200, polled.text
        conforms(document, "TextToImageEnvelope", polled.json())
        current = TextToImageEnvelope.model_validate(polled.json()).data.generateImage
        if current.status == "completed":
            break
        assert current.status in ("queued", "processing")
        await _tick()
    else:
        raise AssertionError("the generation did not complete")

    # Seed 001's cancel answers cancelGeneration's envelope (one accepted just now is
    # still queued or running; if it already finished, a refusal in the error shape).
    live = await client.post("/v1/text_to_image", json=SEED_001_BODY, headers=account.bearer)
    live_id = TextToImageEnvelope.model_validate(live.json()).data.generateImage.id
    stopped = await client.post(f"/v1/text_to_image/{live_id}/cancel", headers=account.bearer)
    if stopped.status_code == 200:
        conforms(document, "CancelEnvelope", stopped.json())
        assert stopped.json()["data"]["cancelGeneration"]["status"] == "cancelled"
    else:
        assert stopped.status_code == 409, stopped.text
        conforms(document, "ErrorBody", stopped.json())

    # A job of another kind from that output (its id), as JSON, then cancelled.
    job = await client.post(
        "/v1/image_to_image",
        json={"prompt": "the same city at night", "image_id": generation.id, "strength": 0.5},
        headers=account.bearer,
    )
    assert job.status_code == 202, job.text
    conforms(document, "JobDocument", job.json())
    job_id = JobDocument.model_validate(job.json()).id
    got = await client.get(f"/v1/jobs/{job_id}", headers=account.bearer)
    assert got.status_code == 200
    conforms(document, "JobDocument", got.json())
    # The multipart variant: the image as a file, the other fields as form fields.
    png = io.BytesIO()
    Image.new("RGB", (256, 256), "teal").save(png, format="PNG")
    form = {"prompt": "a teal square at dusk", "strength": "0.6"}
    conforms(document, "ImageToImageParamsRequest", {**form, "strength": 0.6, "image_id": "x"})
    uploaded = await client.post(
        "/v1/image_to_image",
        data=form,
        files={"image": ("square.png", png.getvalue(), "image/png")},
        headers=account.bearer,
    )
    assert uploaded.status_code == 202, uploaded.text
    conforms(document, "JobDocument", uploaded.json())
    assert (await _final_job(client, account, uploaded.json()["id"]))["status"] == "completed"

    cancelled = await client.post(f"/v1/jobs/{job_id}/cancel", headers=account.bearer)
    if cancelled.status_code == 200:
        conforms(document, "JobDocument", cancelled.json())
    else:  # it finished first: a refusal in the error shape
        assert cancelled.status_code == 409, cancelled.text
        conforms(document, "ErrorBody", cancelled.json())
    final = await _final_job(client, account, job_id)
    conforms(document, "JobDocument", final)
    if final["status"] == "completed":
        assert final["outputs"] and final["inputs"]

    # Refusals: a bad key, an unknown id, bad input.
    for response in (
        await client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer nope"}),
        await client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=account.bearer),
        await client.post("/v1/image_to_image", json={"prompt": ""}, headers=account.bearer),
    ):
        assert response.status_code in (400, 401, 404), response.text
        conforms(document, "ErrorBody", response.json())
        ErrorBody.model_validate(response.json())

    health = await client.get("/healthz")
    conforms(document, "HealthDocument", health.json())
    HealthDocument.model_validate(health.json())
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    conforms(document, "ReadyDocument", ready.json())
    ReadyDocument.model_validate(ready.json())


async def _tick() -> None:
    await asyncio.sleep(0.1)  # a poll's interval, in a bounded loop on the job's state


async def _final_job(
    client: httpx.AsyncClient, account: TestAccount, job_id: str
) -> dict[str, Any]:
    for _ in range(600):  # bounded: 60 s at most
        response = await client.get(f"/v1/jobs/{job_id}", headers=account.bearer)
        job: dict[str, Any] = response.json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        await _tick()
    raise AssertionError(f"job {job_id} did not finish")


async def test_docs_page_is_self_hosted(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Every operation, every schema, every security scheme is on the page.
    for path, item in document["paths"].items():
        for op in item.values():
            assert f'id="{op["operationId"]}"' in html, path
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in html, name
    for name in document["components"]["securitySchemes"]:
        assert name in html
    # No external asset: no script, no stylesheet link, no image, no frame, no import,
    # and every link stays on this origin (a fragment or a path).
    lowered = html.lower()
    for tag in ("<script", "<link", "<img", "<iframe", "@import", "url("):
        assert tag not in lowered, tag
    assert "src=" not in lowered
    for target in re.findall(r'href="([^"]*)"', html):
        assert target.startswith(("#", "/")) and not target.startswith("//"), target
    assert 'href="/openapi.json"' in html


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
async def test_document_and_page_are_public(client: httpx.AsyncClient, path: str) -> None:
    """Like /healthz: no key needed (the document describes, it reveals nothing)."""
    response = await client.get(path)
    assert response.status_code == 200
    if path == "/openapi.json":
        assert json.loads(response.text)["info"]["title"] == "Fluxgate"
