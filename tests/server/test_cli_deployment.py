"""The operator CLI and a second deployment, as real subprocesses: `fluxgate db upgrade`,
`account create --json`, `serve`, `worker`, `credits grant`, `key create|revoke`, and the
seed's curl example pasted into a shell. The second deployment has its own database and
Redis database and never interferes with the test session's deployment."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from billing.migrate import drop_database
from runtime.settings import ROOT, Settings
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, free_port, wait_healthy
from tests.server.test_seed_examples import SEED_CURL_BODY

FLUXGATE = [sys.executable, "-m", "server.cli"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    db_url = TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/fluxgate_test_cli_{uuid.uuid4().hex[:6]}"
    # A Redis database of its own beside the suite's (14 beside CI's 15), so that a run
    # with FLUXGATE_TEST_REDIS_URL set flushes none that another run may be using.
    server, number = TEST_REDIS_URL.rsplit("/", 1)
    redis_url = f"{server}/{(int(number) - 1) % 16}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": db_url,
        "FLUXGATE_REDIS_URL": redis_url,
        "FLUXGATE_STORAGE_DIR": str(tmp_path_factory.mktemp("cli-storage")),
        "FLUXGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "FLUXGATE_SECRET_KEY": "another-deployment-secret",
        "FLUXGATE_MODELS": str(ROOT / "deploy" / "models.dev.toml"),
    }
    upgrade = run(env, "db", "upgrade")  # also creates the database
    assert "database at head" in upgrade
    procs = [
        subprocess.Popen([*FLUXGATE, "serve", "--port", str(port)], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        subprocess.Popen([*FLUXGATE, "worker"], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, procs)
        yield {"env": env, "url": url, "db_url": db_url}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
        # Leave the server clean for the next run.
        asyncio.run(drop_database(db_url))


def run(env: dict[str, str], *args: str, ok: bool = True) -> str:
    result = subprocess.run(
        [*FLUXGATE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result.stdout if ok else result.stdout + result.stderr


def graphql(url: str, key: str, query: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/graphql", json={"query": query}, headers={"Authorization": f"Bearer {key}"}
    )
    body: dict[str, Any] = response.json()
    return body


def test_cli_and_pasted_curl_example(deployment: dict[str, Any], tmp_path: Path) -> None:
    env, url = deployment["env"], deployment["url"]
    created = json.loads(
        run(env, "account", "create", "--email", "Ops@Example.com", "--plan", "starter",
            "--credits", "50", "--json")
    )  # fmt: skip
    assert set(created) >= {"api_key", "account_id", "webhook_secret"}
    assert created["email"] == "ops@example.com"
    assert created["credits_available"] == 50
    key = created["api_key"]
    assert key.startswith("fgk_")

    duplicate = run(env, "account", "create", "--email", "ops@example.com", ok=False)
    assert "already exists" in duplicate

    # Seed 001's curl example, with the URL and key a user would paste in.
    body_file = tmp_path / "body.json"
    body_file.write_text(SEED_CURL_BODY)
    curl = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{url}/graphql", "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {key}", "-d", f"@{body_file}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    job = json.loads(curl.stdout)["data"]["generate"]
    assert job["status"] == "queued"

    deadline = time.monotonic() + 60
    while True:
        polled = httpx.get(f"{url}/v1/text_to_image/{job['id']}", headers={"X-API-Key": key})
        current = polled.json()["data"]["generateImage"]
        if current["status"] == "completed":
            break
        assert current["status"] in ("queued", "processing"), current
        assert time.monotonic() < deadline
        time.sleep(0.2)
    image = httpx.get(current["url"])
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"

    expected = 50 - job["creditCost"] + 25
    assert f"granted; available: {expected}" in run(
        env, "credits", "grant", "--account", "ops@example.com", "--amount", "25",
        "--reference", "invoice-7",
    )  # fmt: skip
    assert f"already granted; available: {expected}" in run(
        env, "credits", "grant", "--account", created["account_id"], "--amount", "25",
        "--reference", "invoice-7",
    )  # fmt: skip
    assert graphql(url, key, "{ me { creditsAvailable } }")["data"]["me"] == {
        "creditsAvailable": expected
    }
    # An admin action: the grant (once) is in the audit log, as the operator's.
    audit = [json.loads(line) for line in run(
        env, "admin", "audit", "--account", "ops@example.com", "--action", "grant",
    ).splitlines()]  # fmt: skip
    assert [(e["actor"].startswith("cli:"), e["details"]["reference"], e["details"]["amount"])
            for e in audit] == [(True, "invoice-7", 25)]  # fmt: skip

    second = json.loads(run(env, "key", "create", "--account", "ops@example.com", "--json"))
    assert graphql(url, second["api_key"], "{ me { email } }")["data"]["me"]["email"] == (
        "ops@example.com"
    )
    assert f"revoked {second['api_key_id']}" in run(env, "key", "revoke", second["api_key_id"])
    revoked = graphql(url, second["api_key"], "{ me { email } }")
    assert revoked["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert graphql(url, key, "{ me { email } }")["data"]["me"]["email"] == "ops@example.com"


def test_deployments_do_not_interfere(
    deployment: dict[str, Any], api: str, settings: Settings
) -> None:
    """The session's deployment (its own database, Redis db 15) and this one (another
    database, Redis db 14) share a Postgres server and a Redis server, nothing else."""
    env, url = deployment["env"], deployment["url"]
    other = json.loads(
        run(env, "account", "create", "--email", "iso@example.com", "--credits", "10", "--json")
    )
    # A key of one deployment means nothing to the other.
    assert graphql(api, other["api_key"], "{ me { id } }")["errors"][0]["extensions"] == {
        "code": "UNAUTHENTICATED"
    }
    assert graphql(url, other["api_key"], "{ me { creditsAvailable } }")["data"]["me"] == {
        "creditsAvailable": 10
    }
    # A job of this deployment runs on this deployment's worker only: the session's worker
    # (another Redis database) never sees it, so it cannot claim or skip it.
    submitted = httpx.post(
        f"{url}/v1/text_to_image",
        json={"service": "flux-schnell", "prompt": "iso", "width": 256, "height": 256},
        headers={"X-API-Key": other["api_key"]},
    ).json()["data"]["generateImage"]
    deadline = time.monotonic() + 60
    while (
        httpx.get(
            f"{url}/v1/text_to_image/{submitted['id']}", headers={"X-API-Key": other["api_key"]}
        ).json()["data"]["generateImage"]["status"]
        != "completed"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    session_redis = redis.Redis.from_url(settings.redis_url)
    assert not [k for k in session_redis.scan_iter() if submitted["id"].encode() in k]
    session_redis.close()
