"""Seed 001's client code as written, run to completion against the real API and a real
worker: its JavaScript (Node 20: ``fetch`` of ``generateImage``, then the seed's
``pollStatus`` loop, which polls only while the status is ``processing``) and its Python
example. Only the base URL and the key are changed.

The seed leaves ``sleep`` and ``checkJobStatus`` to the client; the harness defines them
(``checkJobStatus`` polls seed 001's REST surface, ``GET /v1/text_to_image/{id}``, which
reports a queued job as ``processing`` with its ``queuePosition``). The seed's
``pollStatus`` returns ``result`` from outside the block that declares it; the harness
provides that binding (the latest reply of ``checkJobStatus``), else the function, as
written, throws a ReferenceError once its loop has ended.

(tests/server/test_seed_examples.py covers the seed's curl and GraphQL bodies from
Python.)"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql, wait_for_final
from tests.runners import SlowRunner

# deploy/setup.sh installs Node.js (make test); its absence is a failure, not a skip.
NODE = shutil.which("node")

SEED_URL = "https://api.doitong.com/graphql"
SEED_KEY = "YOUR_API_KEY"

# The seed's JavaScript example, verbatim.
SEED_FETCH = """const response = await fetch('https://api.doitong.com/graphql', {
method: 'POST',
headers: {
'Content-Type': 'application/json',
'Authorization': 'Bearer YOUR_API_KEY'
},
body: JSON.stringify({
query: `
mutation GenerateImage($input: ImageGenerationInput!) {
generateImage(input: $input) {
id
url
width
height
}
}
`,
variables: {
input: {
service: 'flux-pro',
prompt: 'A futuristic city with flying cars and neon lights',
width: 1024,
height: 1024
}
}
})
});
const data = await response.json();
console.log('Image:', data.data.generateImage);
"""

# The seed's polling example ("Upravljajte asinkronom obradom"), verbatim.
SEED_POLL = """// Polling example
async function pollStatus(jobId) {
let status = 'processing';
while (status === 'processing') {
await sleep(2000); // Wait 2 seconds
const result = await checkJobStatus(jobId);
status = result.status;
}
return result;
}
"""

# What the seed leaves to the client. One JSON line per poll, for the test to follow.
HARNESS_BEFORE = """const BASE = process.env.FLUXGATE_URL;
const KEY = process.env.FLUXGATE_KEY;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let result = null; // the binding the seed's `return result` reads
async function checkJobStatus(jobId) {
  const reply = await fetch(`${BASE}/v1/text_to_image/${jobId}`, {
    headers: { 'X-API-Key': KEY },
  });
  result = (await reply.json()).data.generateImage;
  console.log(JSON.stringify({ poll: result.status, queuePosition: result.queuePosition }));
  return result;
}
"""
HARNESS_AFTER = """console.log(JSON.stringify({ submitted: data.data.generateImage }));
const done = await pollStatus(data.data.generateImage.id);
console.log(JSON.stringify({ final: done }));
"""

# The seed's Python example, verbatim.
SEED_PYTHON = '''import requests
import json
url = "https://api.doitong.com/graphql"
headers = {
"Content-Type": "application/json",
"Authorization": "Bearer YOUR_API_KEY"
}
query = """
mutation Generate($input: GenerateInput!) {
generate(input: $input) {
id
status
type
provider
url
metadata
creditCost
}
}
"""
variables = {
"input": {
"type": "IMAGE",
"provider": "flux-pro",
"input": {
"text": "A futuristic city with flying cars and neon lights"
},
"options": {
"width": 1024,
"height": 1024
}
}
}
response = requests.post(url, json={
"query": query,
"variables": variables
}, headers=headers)
data = response.json()
print("Result:", data["data"]["generate"])
'''


def as_written(seed: str, base_url: str, key: str) -> str:
    """The seed's code with only its base URL and key changed."""
    assert SEED_URL in seed and SEED_KEY in seed
    return seed.replace(SEED_URL, f"{base_url}/graphql").replace(SEED_KEY, key)


@pytest.fixture(scope="module")
def queue_settings(settings: Settings) -> Settings:
    return own_queue(settings, "seed001-js")


@pytest.fixture(scope="module")
def queue_api(queue_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(queue_settings) as server:
        yield server.url


async def next_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON line the script prints (other output, e.g. console.log of an
    object, is skipped)."""
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=120)
        if not raw:
            stderr = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"node ended: {stderr.decode(errors='replace')}")
        line = raw.decode().strip()
        if line.startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value


async def test_seed_javascript_polls_a_queued_then_running_job_to_completion(
    queue_api: str,
    queue_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    account = await create_account(sessions, queue_settings, credits=1000)
    script = tmp_path / "seed001.mjs"
    script.write_text(
        HARNESS_BEFORE
        + as_written(SEED_FETCH, queue_api, account.api_key)
        + SEED_POLL
        + HARNESS_AFTER
    )
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(script),
        env={**os.environ, "FLUXGATE_URL": queue_api, "FLUXGATE_KEY": account.api_key},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        submitted = (await next_line(process))["submitted"]
        assert set(submitted) == {"id", "url", "width", "height"}
        assert (submitted["url"], submitted["width"], submitted["height"]) == (None, 1024, 1024)
        job_id = submitted["id"]
        # No worker takes this queue yet: the job waits, and the seed's loop goes on
        # because seed 001's surface says "processing" (queuePosition 0: it is next).
        first = await next_line(process)
        assert first == {"poll": "processing", "queuePosition": 0}
        async with httpx.AsyncClient(base_url=queue_api, timeout=60) as http:
            # GraphQL keeps Fluxgate's own status (SPEC): queued.
            state = await gql(
                http, "query($id: ID!) { generation(id: $id) { status queuePosition } }",
                {"id": job_id}, key=account.api_key,
            )  # fmt: skip
            assert state["data"]["generation"] == {"status": "queued", "queuePosition": 0}
            # The REST submit of seed 001 says processing too, with its place in the queue.
            second = await http.post(
                "/v1/text_to_image",
                json={"service": "flux-pro", "prompt": "second", "width": 256, "height": 256},
                headers={"X-API-Key": account.api_key},
            )
            queued = second.json()["data"]["generateImage"]
            assert (queued["status"], queued["queuePosition"]) == ("processing", 1)

            # A worker whose steps take a second: the loop sees the job really running.
            runner = SlowRunner(Catalog.load(queue_settings.models), step_seconds=1.0)
            with ThreadedWorker(queue_settings, runner=runner):
                polls = [first]
                while "final" not in (line := await next_line(process)):
                    polls.append(line)
                final = line["final"]
                assert await asyncio.wait_for(process.wait(), timeout=30) == 0
                await wait_for_final(http, account.api_key, queued["id"])
            assert {"poll": "processing", "queuePosition": None} in polls  # running
            assert polls[-1] == {"poll": "completed", "queuePosition": None}
            assert all(p["poll"] == "processing" for p in polls[:-1])
            assert final["id"] == job_id and final["status"] == "completed"
            assert final["completedAt"].endswith("Z")
            image = await http.get(final["url"])
            assert image.status_code == 200
            assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
        spent = await balance(sessions, account.id)
        assert spent.reserved == 0
        assert spent.available == 1000 - final["creditCost"] - queued["creditCost"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_seed_javascript_fetch_example_as_written(
    client: httpx.AsyncClient, api: str, account: TestAccount, tmp_path: Path
) -> None:
    """The fetch example alone, as the seed prints it: ``Image:`` and the job."""
    script = tmp_path / "fetch.mjs"
    script.write_text(as_written(SEED_FETCH, api, account.api_key))
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith("Image: {")
    assert "width: 1024" in text and "height: 1024" in text and "url: null" in text


async def test_seed_python_example_as_written(
    client: httpx.AsyncClient,
    api: str,
    account: TestAccount,
    worker: ThreadedWorker,
    tmp_path: Path,
) -> None:
    script = tmp_path / "seed001.py"
    script.write_text(as_written(SEED_PYTHON, api, account.api_key))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    prefix = "Result: "
    text = out.decode().strip()
    assert text.startswith(prefix)
    job = ast.literal_eval(text[len(prefix) :])
    assert set(job) == {"id", "status", "type", "provider", "url", "metadata", "creditCost"}
    assert (job["type"], job["provider"], job["url"]) == ("IMAGE", "flux-pro", None)
    assert job["status"] in ("queued", "processing")
    done = await wait_for_final(client, account.api_key, job["id"])
    assert done["status"] == "completed"
    assert (await client.get(done["url"])).status_code == 200
