"""LoRA styles end to end (issue 13): the catalogue managed by admins (GraphQL, CLI) and
listed by users; text_to_image and image_to_image jobs with LoRAs run by a real arq
worker on the tiny FLUX pipeline with the tiny LoRA files: a LoRA changes the image,
scale 0 does not, a second job reuses the loaded adapter (the worker's cache stats), a job
without LoRAs afterwards equals one on a fresh pipeline; bad inputs refused at no cost;
the surcharge charged."""

from __future__ import annotations

import getpass
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from billing.catalog import Catalog
from billing.models import Account, Generation
from billing.pricing import PriceTable
from gpu_worker.pipeline import LoadedPipelines, PipelineRunner, encode_output
from gpu_worker.tiny import TINY_LORAS, build_tiny_loras
from kinds import text_to_image
from runtime.settings import Settings, get_settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql
from tests.server.kinds_support import (
    PNG,
    assert_charged,
    assert_untouched,
    download,
    gql_upload,
    price_job,
    wait_job,
)
from tests.server.test_dashboard_browser import ARTIFACTS, CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
LORA_DIR = ROOT / "var" / "models" / "loras"
START = 1000
SURCHARGE = PriceTable.load().lora_surcharge

CREATE_JOB = """mutation C($kind: String!, $input: JSON!) {
  createJob(kind: $kind, input: $input) { id creditCost status } }"""
ADD = """mutation A($id: ID!, $fields: LoraFieldsInput!) {
  addLora(id: $id, fields: $fields) { id name category triggerWords baseModel defaultScale
  enabled } }"""
UPDATE = """mutation U($id: ID!, $fields: LoraFieldsInput!) {
  updateLora(id: $id, fields: $fields) { id enabled defaultScale } }"""
REMOVE = "mutation R($id: ID!) { removeLora(id: $id) { id } }"
LIST = """query L($category: String, $all: Boolean! = false) {
  loras(category: $category, includeDisabled: $all) {
    loras { id name category triggerWords baseModel defaultScale enabled }
    categories { name count } } }"""
I2I = """mutation I($input: ImageToImageInput!, $image: Upload) {
  imageToImage(input: $input, image: $image) { id creditCost status } }"""


def lora_file(name: str) -> str:
    return str(LORA_DIR / f"{name}.safetensors")


AUDIT = """{ adminAuditLog(first: 100) { items { actor action details } } }"""


@pytest.fixture(scope="module")
def lora_settings(settings: Settings) -> Settings:
    build_tiny_loras(LORA_DIR)
    return own_queue(settings, "loras")


@pytest.fixture(scope="module")
def runner(lora_settings: Settings) -> Iterator[PipelineRunner]:
    # The worker's own runner, handed to it so the test can read its LoRA cache stats.
    r = PipelineRunner(Catalog.load(lora_settings.models), device="cpu", dtype="float32")
    yield r
    r.close()


@pytest.fixture(scope="module")
def lora_api(lora_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(lora_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def lora_worker(
    lora_settings: Settings, database: str, runner: PipelineRunner
) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(lora_settings, runner=runner) as w:
        yield w


@pytest.fixture
async def http(lora_api: str, lora_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=lora_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], lora_settings: Settings
) -> TestAccount:
    return await create_account(sessions, lora_settings, credits=START)


async def make_admin(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    admin = await create_account(sessions, settings, credits=0)
    async with sessions() as session:
        row = await session.get(Account, admin.id)
        assert row is not None
        row.is_admin = True
        await session.commit()
    return admin


@pytest.fixture(scope="module")
async def catalogue(
    sessions: async_sessionmaker[AsyncSession], lora_settings: Settings, lora_api: str
) -> dict[str, str]:
    """The LoRAs the job tests use, added by an admin on GraphQL."""
    admin = await make_admin(sessions, lora_settings)
    rows = {
        "job-a": ("tiny-style-a", "anime", "flux-dev", ["inkwash"]),
        "job-b": ("tiny-style-b", "detail", "family:flux.1", []),
        "job-c": ("tiny-style-c", "detail", "flux-dev/flux-dev", []),
        "job-off": ("tiny-style-c", "detail", "flux-dev", []),
        "job-schnell": ("tiny-style-d", "speed", "flux-schnell", []),
    }
    async with httpx.AsyncClient(base_url=lora_api, timeout=60) as client:
        for lora_id, (file, category, base, words) in rows.items():
            fields = {
                "name": lora_id.title(), "category": category, "baseModel": base,
                "path": lora_file(file), "triggerWords": words,
                "enabled": lora_id != "job-off",
            }  # fmt: skip
            body = await gql(client, ADD, {"id": lora_id, "fields": fields}, key=admin.api_key)
            assert "errors" not in body, body
    return {lora_id: row[0] for lora_id, row in rows.items()}


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


async def render(
    http: httpx.AsyncClient, account: TestAccount, values: dict[str, Any]
) -> tuple[dict[str, Any], Image.Image]:
    body = await gql(http, CREATE_JOB, {"kind": "text_to_image", "input": values},
                     key=account.api_key)  # fmt: skip
    assert "errors" not in body, body
    job = await wait_job(http, account, body["data"]["createJob"]["id"])
    assert job["status"] == "completed", job
    return job, await download(http, job["outputs"][0])


T2I = {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256, "seed": 7}


async def test_a_lora_changes_the_image_is_loaded_once_and_leaves_no_trace(
    http: httpx.AsyncClient,
    customer: TestAccount,
    catalogue: dict[str, str],
    runner: PipelineRunner,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    stats = runner.pipelines.loras.stats
    _, plain = await render(http, customer, T2I)
    loads = stats.loads
    job, styled = await render(http, customer, {**T2I, "loras": [{"id": "job-a", "scale": 1}]})
    assert stats.loads == loads + 1
    # A LoRA changes the image measurably; at scale 0 it changes nothing.
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 2
    # (job-b: it has no trigger words, which would change the prompt.)
    _, zero = await render(http, customer, {**T2I, "loras": [{"id": "job-b", "scale": 0}]})
    assert np.abs(pixels(zero) - pixels(plain)).max() <= 1
    # Same LoRA again: not loaded again (weights switched), same image as the first time.
    hits = stats.hits
    _, again = await render(http, customer, {**T2I, "loras": [{"id": "job-a"}]})
    assert stats.loads == loads + 2 and stats.hits > hits
    assert np.array_equal(pixels(again), pixels(styled))
    # Two LoRAs at once differ from one.
    _, both = await render(
        http, customer, {**T2I, "loras": [{"id": "job-a"}, {"id": "job-b", "scale": 0.7}]}
    )
    assert stats.loads == loads + 2  # job-b was loaded by the scale-0 job
    assert np.abs(pixels(both) - pixels(styled)).mean() > 1
    # Without LoRAs after them: the image a pipeline that never saw a LoRA makes.
    after_job, after = await render(http, customer, T2I)
    assert np.array_equal(pixels(after), pixels(plain))
    async with sessions() as session:
        row = await session.get(Generation, after_job["id"])
        styled_row = await session.get(Generation, job["id"])
    assert row is not None and styled_row is not None
    assert "loras" not in row.params
    fresh = LoadedPipelines("cpu", torch.float32)
    [output] = text_to_image.KIND.run(fresh, row.params, {}, lambda *_: None)
    made = Image.open(io.BytesIO(encode_output(output, "png", 90).data))
    assert np.abs(pixels(made) - pixels(after)).max() <= 1
    # The job froze the LoRA (path, scale, adapter) and its trigger word went into the prompt
    # the pipeline saw; the job's prompt column keeps the client's.
    [frozen] = styled_row.params["loras"]
    assert frozen["id"] == "job-a" and frozen["path"] == lora_file("tiny-style-a")
    assert frozen["scale"] == 1 and frozen["adapter"].startswith("lora_")
    assert styled_row.params["prompt"] == "a lighthouse, inkwash"
    assert styled_row.prompt == "a lighthouse"


async def test_the_surcharge_is_quoted_and_charged(
    http: httpx.AsyncClient,
    customer: TestAccount,
    catalogue: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert SURCHARGE > 0
    base = await price_job(http, customer, "text_to_image", {**T2I, "count": 2})
    values = {**T2I, "count": 2, "loras": [{"id": "job-a"}, {"id": "job-c", "scale": 1.5}]}
    quote = await price_job(http, customer, "text_to_image", values)
    assert quote["unitCredits"] == base["unitCredits"] + 2 * SURCHARGE
    assert quote["credits"] == 2 * quote["unitCredits"]
    body = await gql(http, CREATE_JOB, {"kind": "text_to_image", "input": values},
                     key=customer.api_key)  # fmt: skip
    assert "errors" not in body, body
    assert body["data"]["createJob"]["creditCost"] == quote["credits"]
    job = await wait_job(http, customer, body["data"]["createJob"]["id"])
    assert job["status"] == "completed" and len(job["outputs"]) == 2
    await assert_charged(sessions, customer, START, quote["credits"])


SEED_001 = """mutation G($input: ImageGenerationInput!) {
  generateImage(input: $input) { id creditCost } }"""
SEED_001_PRICE = """query P($input: ImageGenerationInput!) { price(input: $input) { credits } }"""
GENERATE = """mutation G($input: GenerateInput!) { generate(input: $input) { id creditCost } }"""


async def test_seed_001_requests_take_loras_too(
    http: httpx.AsyncClient,
    customer: TestAccount,
    catalogue: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """`generateImage`, `generate`, `price` and the REST shim take the same `loras`: frozen
    with their files, trigger words added, priced per LoRA, checked the same way."""
    plain_input = {"service": "flux-dev", "prompt": "a harbour", "width": 256, "height": 256}
    styled = {**plain_input, "loras": [{"id": "job-a", "scale": 0.7}]}
    base = await gql(http, SEED_001_PRICE, {"input": plain_input}, key=customer.api_key)
    quote = await gql(http, SEED_001_PRICE, {"input": styled}, key=customer.api_key)
    assert quote["data"]["price"]["credits"] == base["data"]["price"]["credits"] + SURCHARGE
    body = await gql(http, SEED_001, {"input": styled}, key=customer.api_key)
    assert "errors" not in body, body
    accepted = body["data"]["generateImage"]
    assert accepted["creditCost"] == quote["data"]["price"]["credits"]
    job = await wait_job(http, customer, accepted["id"])
    assert job["status"] == "completed", job
    async with sessions() as session:
        row = await session.get(Generation, accepted["id"])
    assert row is not None
    assert [(x["id"], x["scale"]) for x in row.params["loras"]] == [("job-a", 0.7)]
    assert row.params["loras"][0]["path"] == lora_file(catalogue["job-a"])
    assert row.params["prompt"] == "a harbour, inkwash" and row.prompt == "a harbour"
    # The first form, and the REST shim (snake_case body), the same way.
    first_form = {"provider": "flux-dev", "input": {"text": "a harbour"},
                  "options": {"width": 256, "height": 256, "loras": [{"id": "job-b"}]}}  # fmt: skip
    generated = await gql(http, GENERATE, {"input": first_form}, key=customer.api_key)
    assert generated["data"]["generate"]["creditCost"] == accepted["creditCost"], generated
    rest = await http.post("/v1/text_to_image", json=styled,
                           headers={"X-API-Key": customer.api_key})  # fmt: skip
    assert rest.status_code == 200, rest.text
    # Refused as createJob refuses them, naming the field; nothing charged.
    for loras, field in (
        ([{"id": "nope"}], "loras.0.id"),
        ([{"id": "job-off"}], "loras.0.id"),
        ([{"id": "job-schnell"}], "loras.0.id"),  # another model's
        ([{"id": "job-a", "scale": 9}], "loras.0.scale"),
        ([{"id": "job-a"}, {"id": "job-b"}, {"id": "job-c"}, {"id": "job-a"}], "loras"),
    ):
        refused = await gql(http, SEED_001, {"input": {**plain_input, "loras": loras}},
                            key=customer.api_key)  # fmt: skip
        assert refused["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    spent = accepted["creditCost"] * 2 + rest.json()["data"]["generateImage"]["creditCost"]
    async with sessions() as session:
        account = await session.get(Account, customer.id)
    assert account is not None
    assert account.credits_available == START - spent  # captured or still held


async def test_image_to_image_takes_loras_on_its_typed_mutation(
    http: httpx.AsyncClient,
    lora_api: str,
    customer: TestAccount,
    catalogue: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    own = {"prompt": "a harbour", "strength": 0.8, "seed": 3, "width": 256, "height": 256}
    results = []
    for loras in ([], [{"id": "job-b", "scale": 1.0}]):
        result = await gql_upload(
            lora_api, customer, I2I, {"input": {**own, "loras": loras or None}}, {"image": PNG}
        )
        assert "errors" not in result, result
        job = await wait_job(http, customer, result["data"]["imageToImage"]["id"])
        assert job["status"] == "completed", job
        results.append((result["data"]["imageToImage"]["creditCost"], job))
    (plain_cost, plain_job), (styled_cost, styled_job) = results
    assert styled_cost == plain_cost + SURCHARGE
    plain = await download(http, plain_job["outputs"][0])
    styled = await download(http, styled_job["outputs"][0])
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 1
    await assert_charged(sessions, customer, START, plain_cost + styled_cost)


@pytest.mark.parametrize(
    ("loras", "field", "words"),
    [
        ([{"id": "nope"}], "loras.0.id", "unknown LoRA"),
        ([{"id": "job-a"}, {"id": "job-off"}], "loras.1.id", "unknown LoRA"),
        ([{"id": "job-schnell"}], "loras.0.id", "flux-schnell"),
        ([{"id": "job-a"}, {"id": "job-a"}], "loras.1.id", "twice"),
        ([{"id": "job-a"}, {"id": "job-b"}, {"id": "job-c"}, {"id": "job-a"}], "loras", "3"),
        ([{"id": "job-a", "scale": 2.5}], "loras.0.scale", "2"),
        ([{"id": "job-a", "scale": -0.1}], "loras.0.scale", "0"),
        ([{"scale": 1}], "loras.0.id", "required"),
    ],
)
async def test_bad_loras_are_refused_at_no_cost(
    http: httpx.AsyncClient,
    lora_api: str,
    customer: TestAccount,
    catalogue: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
    loras: list[dict[str, Any]],
    field: str,
    words: str,
) -> None:
    body = await gql(http, CREATE_JOB, {"kind": "text_to_image", "input": {**T2I, "loras": loras}},
                     key=customer.api_key)  # fmt: skip
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, error
    assert words in error["message"], error
    # The same on image_to_image's typed mutation (where GraphQL itself requires an id).
    own = {"prompt": "a harbour", "width": 256, "height": 256, "loras": loras}
    result = await gql_upload(lora_api, customer, I2I, {"input": own}, {"image": PNG})
    [i2i_error] = result["errors"]
    if all("id" in x for x in loras):
        assert i2i_error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, i2i_error
    else:
        assert "id" in i2i_error["message"] and "required" in i2i_error["message"], i2i_error
    await assert_untouched(sessions, customer, START)


async def test_admins_manage_the_catalogue_and_users_list_it(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    lora_settings: Settings,
) -> None:
    admin = await make_admin(sessions, lora_settings)
    fields = {"name": "Watercolour", "category": "Paint", "baseModel": "flux-dev",
              "path": lora_file("tiny-style-a"), "triggerWords": ["wtrclr"],
              "defaultScale": 0.8}  # fmt: skip
    added = await gql(http, ADD, {"id": "paint-1", "fields": fields}, key=admin.api_key)
    assert added["data"]["addLora"] == {
        "id": "paint-1", "name": "Watercolour", "category": "paint", "triggerWords": ["wtrclr"],
        "baseModel": "flux-dev", "defaultScale": 0.8, "enabled": True,
    }  # fmt: skip
    second = {**fields, "name": "Gouache", "enabled": False}
    assert "errors" not in await gql(http, ADD, {"id": "paint-2", "fields": second},
                                     key=admin.api_key)  # fmt: skip
    # Taken id, bad fields: refused with the field named.
    taken = await gql(http, ADD, {"id": "paint-1", "fields": fields}, key=admin.api_key)
    assert taken["errors"][0]["extensions"]["code"] == "CONFLICT"
    for bad, field in (
        ({"baseModel": "sdxl"}, "baseModel"),
        ({"path": "relative/x.safetensors"}, "path"),
        ({"path": "/models/x.ckpt"}, "path"),
        ({"defaultScale": 3.0}, "defaultScale"),
    ):
        refused = await gql(http, ADD, {"id": "paint-3", "fields": {**fields, **bad}},
                            key=admin.api_key)  # fmt: skip
        assert refused["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    # Users see the enabled LoRAs of a category, and every category's count.
    listed = (await gql(http, LIST, {"category": "paint"}, key=customer.api_key))["data"]
    assert [x["id"] for x in listed["loras"]["loras"]] == ["paint-1"]
    assert {"name": "paint", "count": 1} in listed["loras"]["categories"]
    # Non-admins: FORBIDDEN on every admin field, and nothing changed.
    for query, variables in (
        (ADD, {"id": "paint-4", "fields": fields}),
        (UPDATE, {"id": "paint-1", "fields": {"enabled": False}}),
        (REMOVE, {"id": "paint-1"}),
        (LIST, {"category": "paint", "all": True}),
    ):
        body = await gql(http, query, variables, key=customer.api_key)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert body["data"] is None
    everything = await gql(http, LIST, {"category": "paint", "all": True}, key=admin.api_key)
    assert [x["id"] for x in everything["data"]["loras"]["loras"]] == ["paint-2", "paint-1"]
    # Enable, disable, remove.
    enabled = await gql(http, UPDATE, {"id": "paint-2", "fields": {"enabled": True}},
                        key=admin.api_key)  # fmt: skip
    assert enabled["data"]["updateLora"]["enabled"] is True
    disabled = await gql(http, UPDATE, {"id": "paint-1", "fields": {"enabled": False}},
                         key=admin.api_key)  # fmt: skip
    assert disabled["data"]["updateLora"]["enabled"] is False
    listed = (await gql(http, LIST, {"category": "paint"}, key=customer.api_key))["data"]
    assert [x["id"] for x in listed["loras"]["loras"]] == ["paint-2"]
    assert "errors" not in await gql(http, REMOVE, {"id": "paint-2"}, key=admin.api_key)
    gone = await gql(http, REMOVE, {"id": "paint-2"}, key=admin.api_key)
    assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    # Every change an admin made is in the admin audit log, with who made it and what it
    # set; the refused ones are not.
    log = await gql(http, AUDIT, key=admin.api_key)
    changes = [
        (e["action"], e["details"]["lora"], e["details"].get("changes", {}).get("enabled"))
        for e in reversed(log["data"]["adminAuditLog"]["items"])
        if e["action"].startswith("lora_") and e["details"]["lora"] in ("paint-1", "paint-2")
    ]
    assert changes == [
        ("lora_add", "paint-1", None), ("lora_add", "paint-2", False),
        ("lora_update", "paint-2", True), ("lora_update", "paint-1", False),
        ("lora_remove", "paint-2", None),
    ]  # fmt: skip
    entries = [
        e for e in log["data"]["adminAuditLog"]["items"]
        if e["action"] == "lora_add" and e["details"]["lora"] in ("paint-1", "paint-2")
    ]  # fmt: skip
    assert {e["actor"] for e in entries} == {admin.email}
    first_add = next(e for e in entries if e["details"]["lora"] == "paint-1")
    assert first_add["details"]["changes"]["trigger_words"] == ["wtrclr"]


def test_the_cli_manages_the_catalogue(
    lora_settings: Settings, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import app

    monkeypatch.setenv("FLUXGATE_DATABASE_URL", lora_settings.database_url)
    monkeypatch.setenv("FLUXGATE_MODELS", str(lora_settings.models))
    get_settings.cache_clear()
    try:
        cli = CliRunner()
        added = cli.invoke(app, [
            "lora", "add", "cli-style", "--path", lora_file("tiny-style-b"), "--name", "CLI",
            "--category", "cli", "--base-model", "family:flux.1", "--trigger", "clistyle",
            "--scale", "0.5",
        ])  # fmt: skip
        assert added.exit_code == 0, added.output
        assert json.loads(added.output)["trigger_words"] == ["clistyle"]
        missing = cli.invoke(app, [
            "lora", "add", "cli-missing", "--path", "/nowhere/x.safetensors", "--name", "M",
            "--category", "cli", "--base-model", "flux-dev",
        ])  # fmt: skip
        assert missing.exit_code == 1 and "no file at" in missing.output
        assert cli.invoke(app, ["lora", "disable", "cli-style"]).exit_code == 0
        listed = cli.invoke(app, ["lora", "list", "--category", "cli"])
        assert [json.loads(line)["enabled"] for line in listed.output.splitlines()] == [False]
        assert cli.invoke(app, ["lora", "enable", "cli-style"]).exit_code == 0
        assert cli.invoke(app, ["lora", "remove", "cli-style"]).exit_code == 0
        assert cli.invoke(app, ["lora", "list", "--category", "cli"]).output == ""
        unknown = cli.invoke(app, ["lora", "remove", "cli-style"])
        assert unknown.exit_code == 1 and "not found" in unknown.output
        # The operator's changes are in the admin audit log, as cli:<user>.
        audit = cli.invoke(app, ["admin", "audit", "--first", "100"])
        assert audit.exit_code == 0, audit.output
        mine = [
            json.loads(line) for line in reversed(audit.output.splitlines())
            if json.loads(line)["details"].get("lora") == "cli-style"
        ]  # fmt: skip
        assert [e["action"] for e in mine] == [
            "lora_add",
            "lora_update",
            "lora_update",
            "lora_remove",
        ]
        assert {e["actor"] for e in mine} == {f"cli:{getpass.getuser()}"}
        assert [e["details"].get("changes", {}).get("enabled") for e in mine] == [
            True,
            False,
            True,
            None,
        ]
    finally:
        get_settings.cache_clear()


def test_the_tiny_lora_files_exist() -> None:
    build_tiny_loras(LORA_DIR)
    assert sorted(p.stem for p in LORA_DIR.glob("*.safetensors")) == sorted(TINY_LORAS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield b
        await b.close()


async def sign_in(browser: Browser, site: str, account: TestAccount) -> Page:
    context = await browser.new_context(base_url=site)
    page = await context.new_page()
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", account.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    return page


async def test_the_dashboard_lists_the_loras_by_category(
    lora_api: str,
    browser: Browser,
    customer: TestAccount,
    catalogue: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
    lora_settings: Settings,
) -> None:
    page = await sign_in(browser, lora_api, customer)
    await page.click("nav >> text=LoRAs")
    await expect(page).to_have_url(re.compile(r"/dashboard/loras$"))
    rows = page.locator("#loras tbody tr")
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    # Users see the enabled LoRAs only, and no status column.
    assert {"job-a", "job-b", "job-c", "job-schnell"} <= set(ids) and "job-off" not in ids
    await expect(page.locator("#loras thead")).not_to_contain_text("Status")
    await expect(page.locator("tr[data-id=job-a]")).to_contain_text("inkwash")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-loras.png"), full_page=True)
    await page.click("#lora-categories a[data-category=detail]")
    await expect(page).to_have_url(re.compile(r"/dashboard/loras\?category=detail$"))
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert sorted(ids) == ["job-b", "job-c"]
    await page.screenshot(path=str(ARTIFACTS / "dashboard-loras-detail.png"), full_page=True)
    await page.goto("/dashboard/loras?category=none-such")
    await expect(page.locator("#no-loras")).to_be_visible()
    # An admin also sees the disabled ones, marked.
    admin = await make_admin(sessions, lora_settings)
    admin_page = await sign_in(browser, lora_api, admin)
    await admin_page.goto("/dashboard/loras?category=detail")
    await expect(admin_page.locator("tr[data-id=job-off]")).to_contain_text("disabled")
    await admin_page.screenshot(path=str(ARTIFACTS / "dashboard-loras-admin.png"), full_page=True)
