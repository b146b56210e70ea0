"""S3Storage against a real S3 server process (moto's standalone server on loopback,
tests/s3_server.py), over HTTP, through the same boto3 calls as production: the round
trip, a missing key, presigned URLs (content type, expiry, the public endpoint), key
validation, prefix isolation, a store that is down or stalled, and the choice of storage
from the settings."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from billing.errors import ErrorCode, ServiceUnavailable
from runtime.settings import ROOT, Settings
from runtime.storage import (
    LocalStorage,
    S3Storage,
    StorageUnavailable,
    storage_from_settings,
)
from tests.s3_server import S3Server, aws_test_credentials

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"
# Short and few: a stopped or stalled store gives up within about 2 x 0.5 s plus backoff.
FAST_FAIL = {"timeout_s": 0.5, "max_attempts": 2}


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    with aws_test_credentials():
        yield


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    return s3.create_bucket("fluxgate-storage-test")


def storage(s3: S3Server, bucket: str, prefix: str = "images", **kwargs: Any) -> S3Storage:
    return S3Storage(bucket, prefix, endpoint_url=s3.url, **kwargs)


def stored_names(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def test_put_get_delete_round_trip(s3: S3Server, bucket: str) -> None:
    store = storage(s3, bucket, "round-trip")
    key = f"{uuid.uuid4().hex}-0.png"
    await store.put(key, PNG, "image/png")
    assert await store.get(key) == PNG
    # Stored under the prefix, with its content type and the immutable caching of /files/.
    head = s3.client().head_object(Bucket=bucket, Key=f"round-trip/{key}")
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == "public, max-age=31536000, immutable"
    assert store.local_path(key) is None  # nothing for the API to serve itself

    await store.delete(key)
    with pytest.raises(FileNotFoundError):
        await store.get(key)
    await store.delete(key)  # deleting again is fine
    assert stored_names(s3, bucket, "round-trip/") == []


async def test_nested_keys_as_the_api_writes_them(s3: S3Server, bucket: str) -> None:
    store = storage(s3, bucket, "nested")
    await store.put("inputs/0123abcd.png", PNG, "image/png")
    assert await store.get("inputs/0123abcd.png") == PNG
    assert stored_names(s3, bucket, "nested/") == ["nested/inputs/0123abcd.png"]


async def test_a_missing_key_is_file_not_found(s3: S3Server, bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        await storage(s3, bucket).get("never-written.png")


async def test_the_presigned_url_downloads_the_bytes_with_their_type(
    s3: S3Server, bucket: str
) -> None:
    store = storage(s3, bucket, "urls")
    await store.put("picture.webp", b"RIFF....WEBPVP8 ", "image/webp")
    url = store.url("picture.webp")
    assert url.startswith(f"{s3.url}/{bucket}/urls/picture.webp?")  # path-style, prefixed
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["3600"]  # the default
    async with httpx.AsyncClient() as client:  # no credentials: the URL alone
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"RIFF....WEBPVP8 "
    assert response.headers["content-type"] == "image/webp"


def _signed_at(store: S3Storage, key: str, when: datetime.datetime) -> str:
    """The URL botocore signs for ``key`` at ``when`` (its clock pinned there)."""
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        return store.url(key)


async def test_a_presigned_url_expires_after_the_configured_time(s3: S3Server, bucket: str) -> None:
    """moto does not enforce the expiry of presigned URLs (AWS, MinIO and R2 refuse one
    after X-Amz-Date + X-Amz-Expires), so this checks what they enforce, without
    waiting: the URL says 1 second from its signing time, and the signature covers that
    (botocore re-signing at the URL's own time reproduces it exactly; another expiry
    gives another signature), so nobody can stretch it by editing the query."""
    store = storage(s3, bucket, "expiry", url_expiry_s=1)
    await store.put("short.png", PNG, "image/png")
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0, tzinfo=None)
    url = store.url("short.png")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["1"]
    signed = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    assert signed >= before  # signed now: dead 1 s later
    assert query["X-Amz-Credential"][0].startswith("fluxgate-test/")

    assert _signed_at(store, "short.png", signed) == url
    longer = storage(s3, bucket, "expiry", url_expiry_s=3600)
    stretched = parse_qs(urlsplit(_signed_at(longer, "short.png", signed)).query)
    assert stretched["X-Amz-Signature"] != query["X-Amz-Signature"]

    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == PNG


async def test_urls_name_the_public_endpoint(s3: S3Server, bucket: str) -> None:
    """The API reaches the store at one address, clients at another: URLs are signed for
    the public one (here "localhost", the same server)."""
    public = f"http://localhost:{s3.port}"
    store = storage(s3, bucket, "public", public_endpoint_url=public)
    await store.put("seen.png", PNG, "image/png")
    url = store.url("seen.png")
    assert url.startswith(f"{public}/{bucket}/public/seen.png?")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == PNG


@pytest.mark.parametrize(
    "key", ["../escape.png", "/absolute.png", "a//b.png", "", ".hidden", "a/../b.png", "a b.png"]
)
async def test_keys_are_validated(s3: S3Server, bucket: str, key: str) -> None:
    store = storage(s3, bucket, "validated")
    with pytest.raises(ValueError, match="invalid storage key"):
        await store.put(key, PNG, "image/png")
    with pytest.raises(ValueError, match="invalid storage key"):
        await store.get(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        await store.delete(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        store.url(key)
    assert stored_names(s3, bucket, "validated") == []


async def test_prefixes_keep_deployments_apart(s3: S3Server, bucket: str) -> None:
    blue, green, bare = (storage(s3, bucket, p) for p in ("blue", "green/v2", ""))
    await blue.put("same.png", b"blue", "image/png")
    await green.put("same.png", b"green", "image/png")
    assert await blue.get("same.png") == b"blue"
    assert await green.get("same.png") == b"green"
    with pytest.raises(FileNotFoundError):
        await bare.get("same.png")  # the unprefixed key is another object
    await blue.delete("same.png")
    assert await green.get("same.png") == b"green"
    assert stored_names(s3, bucket, "blue") == []
    assert stored_names(s3, bucket, "green") == ["green/v2/same.png"]


async def test_a_stopped_store_is_unavailable_not_an_internal_error() -> None:
    server = S3Server().start()
    try:
        bucket = server.create_bucket("fluxgate-down")
        store = storage(server, bucket, "down", **FAST_FAIL)
        await store.put("before.png", PNG, "image/png")
        server.kill()  # connections refused from now on

        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.put("after.png", PNG, "image/png"),
            lambda: store.get("before.png"),
            lambda: store.delete("before.png"),
        ]
        async with asyncio.timeout(60):  # a guard: it must give up by itself
            for call in calls:
                with pytest.raises(StorageUnavailable) as caught:
                    await call()
                error = caught.value
                # The API's 503 with Retry-After, and an OSError for the worker's retry.
                assert isinstance(error, ServiceUnavailable) and isinstance(error, OSError)
                assert error.extensions == {
                    "code": ErrorCode.SERVICE_UNAVAILABLE.value,
                    "retryAfter": 5,
                }
                assert "127.0.0.1" not in error.message  # nothing of the cause is sent
        assert store.url("before.png").startswith(server.url)  # signing needs no store
    finally:
        server.stop()


async def test_a_stalled_store_gives_up_and_recovers() -> None:
    """SIGSTOP: connections are accepted and nothing answers. Each call gives up after
    its read timeout and attempts; the same storage works again once the store does."""
    server = S3Server().start()
    try:
        bucket = server.create_bucket("fluxgate-stalled")
        store = storage(server, bucket, "stalled", **FAST_FAIL)
        await store.put("kept.png", PNG, "image/png")
        server.pause()
        async with asyncio.timeout(60):  # a guard: it must give up by itself
            with pytest.raises(StorageUnavailable):
                await store.get("kept.png")
            with pytest.raises(StorageUnavailable):
                await store.put("new.png", PNG, "image/png")
        server.resume()
        assert await store.get("kept.png") == PNG  # paused, not lost
    finally:
        server.stop()


def test_no_credentials_is_a_clear_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RuntimeError, match="no AWS credentials were found"):
        S3Storage("fluxgate-nocreds", endpoint_url="http://127.0.0.1:9")


# --- choosing the storage ----------------------------------------------------------------


def test_local_files_by_default(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path, public_url="http://api.test/")
    chosen = storage_from_settings(settings)
    assert isinstance(chosen, LocalStorage)
    assert chosen.root == tmp_path.resolve()
    assert chosen.url("a.png") == "http://api.test/files/a.png"


def test_a_file_url_names_the_directory(tmp_path: Path) -> None:
    settings = Settings(storage_url=f"file://{tmp_path}/images", storage_dir=ROOT / "unused")
    chosen = storage_from_settings(settings)
    assert isinstance(chosen, LocalStorage)
    assert chosen.root == (tmp_path / "images").resolve()


def test_an_s3_url_with_its_settings(s3: S3Server) -> None:
    settings = Settings(
        storage_url="s3://fluxgate-chosen/deploy/eu/",
        s3_endpoint_url=s3.url,
        s3_url_expiry_s=120,
        s3_timeout_s=2,
        s3_max_attempts=4,
    )
    chosen = storage_from_settings(settings)
    assert isinstance(chosen, S3Storage)
    assert (chosen.bucket, chosen.prefix, chosen.url_expiry_s) == (
        "fluxgate-chosen",
        "deploy/eu",
        120,
    )
    assert chosen.object_key("x.png") == "deploy/eu/x.png"
    assert parse_qs(urlsplit(chosen.url("x.png")).query)["X-Amz-Expires"] == ["120"]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("gs://bucket/prefix", "expected s3://bucket/prefix or file:///directory"),
        ("s3://Upper_Case/x", "is not a bucket name"),
        ("s3://ab/x", "is not a bucket name"),
        ("s3://user:secret@bucket-name/x", "is not a bucket name"),
        ("s3://bucket-name:9000/x", "is not a bucket name"),
        ("s3://bucket-name/a/../b", "is not a key prefix"),
        ("s3://bucket-name/a//b", "is not a key prefix"),
        ("s3://bucket-name/x?versioning=1", "no query or fragment"),
        ("file://elsewhere/srv/images", "file:///absolute/directory"),
        ("images", "expected s3://bucket/prefix"),
    ],
)
def test_a_bad_storage_url_is_a_settings_error(url: str, said: str) -> None:
    with pytest.raises(ValidationError, match="storage_url") as caught:
        Settings(storage_url=url)
    assert said in str(caught.value)


@pytest.mark.parametrize("endpoint", ["minio:9000", "ftp://minio:9000", "http://", "http://h/?x=1"])
def test_a_bad_endpoint_is_a_settings_error(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="s3_endpoint_url"):
        Settings(s3_endpoint_url=endpoint)


def test_the_cli_says_a_bad_storage_url_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        env={**os.environ, "FLUXGATE_STORAGE_URL": "gs://bucket/images"},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid settings: FLUXGATE_STORAGE_URL: "), done.stderr
    assert "expected s3://bucket/prefix or file:///directory" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
