"""Where images go: jobs' inputs and outputs. ``Storage`` is the interface;
``LocalStorage`` writes under a directory the API serves at ``/files/``; ``S3Storage``
keeps them in an S3-compatible bucket (AWS, MinIO, R2) that clients download from by
presigned URL. ``storage_from_settings`` picks one from ``FLUXGATE_STORAGE_URL``.

A store that fails or stalls raises ``StorageUnavailable`` within a bounded time: the API
answers it 503 like a Redis outage, and the worker retries the job."""

from __future__ import annotations

import asyncio
import errno
import logging
import mimetypes
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from billing.errors import ServiceUnavailable
from runtime.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}(/[A-Za-z0-9][A-Za-z0-9._-]{0,200}){0,3}$")


# The Content-Type of a stored file by its key's extension: what ``LocalStorage``'s files
# are served as (S3 keeps the type given to ``put``). Outputs that are not raster images
# (kinds.base.OutputFile) are here too, so the API never serves an SVG or EPS by a guess.
MEDIA_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "svg": "image/svg+xml",
    "eps": "application/postscript",
}


def media_type(key: str) -> str:
    """The Content-Type a file stored as ``key`` is served with."""
    extension = key.rpartition(".")[2].lower() if "." in key else ""
    known = MEDIA_TYPES.get(extension) or mimetypes.guess_type(f"x.{extension}")[0]
    return known or "application/octet-stream"


def check_key(key: str) -> str:
    """Keys are simple relative paths: no '..', no absolute paths, no odd characters."""
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class StorageUnavailable(ServiceUnavailable, ConnectionError):
    """The object store failed or did not answer in time; the cause is logged, never sent.

    Both classes on purpose. As a ``ServiceUnavailable`` the API answers it like a Redis
    outage (503 SERVICE_UNAVAILABLE, Retry-After: nothing was charged, the same request
    may be sent again); as a ``ConnectionError`` (an ``OSError``, what a failing disk
    raises from ``LocalStorage``) the worker treats it as a store error and retries the
    job, instead of failing the customer's job over an outage."""

    def __init__(self) -> None:
        super().__init__("Image storage is temporarily unavailable; retry shortly")


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none."""
        ...

    async def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str: ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine, if the backend keeps one (served by the API)."""
        ...


class LocalStorage:
    def __init__(self, root: Path, public_base: str) -> None:
        self.root = root.resolve()
        self.public_base = public_base.rstrip("/")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        # Files are served by their name's extension (``media_type``): a key whose type
        # would be served differently from the one stored is a programming error.
        if media_type(key) != content_type:
            raise ValueError(f"{key!r} would be served as {media_type(key)}, not {content_type}")
        await asyncio.to_thread(self._write, check_key(key), data)

    def _write(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees a half-written image.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread((self.root / check_key(key)).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread((self.root / check_key(key)).unlink, missing_ok=True)

    def url(self, key: str) -> str:
        return f"{self.public_base}/files/{check_key(key)}"

    def local_path(self, key: str) -> Path | None:
        try:
            path = (self.root / check_key(key)).resolve()
        except ValueError:
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path


# S3's answers for a key that does not exist (GetObject says NoSuchKey; some
# S3-compatible stores answer a bare 404).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# Answers that are the store's trouble, not our configuration's: logged as warnings.
_TRANSIENT = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
)


class S3Storage:
    """Objects under ``prefix/`` in an S3-compatible bucket; ``url`` is a presigned GET
    valid for ``url_expiry_s``, so the API never proxies image bytes.

    One boto3 client serves every call (boto3 clients are thread-safe). Its blocking
    calls run on a thread pool of their own, as large as the client's connection pool: a
    stalled store then holds at most those threads, never the event loop's default
    executor (which also resolves host names for the database and Redis). Every call is
    bounded: ``timeout_s`` to connect and per read, ``max_attempts`` attempts with
    botocore's standard backoff, then ``StorageUnavailable``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        url_expiry_s: int = 3600,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        max_connections: int = 16,
    ) -> None:
        # Imported only here: boto3 adds about 0.15 s to every start-up (and every CLI
        # command) of a deployment on local files.
        import boto3.session
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url_expiry_s = url_expiry_s
        # The standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web
        # identity, container and instance roles. Resolved now, at start-up: without
        # credentials every upload would fail, and ``url`` (on the event loop) must not
        # be the first to look them up over the network.
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise RuntimeError(
                "FLUXGATE_STORAGE_URL is s3:// but no AWS credentials were found: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role)"
            )
        compatible = endpoint_url is not None  # MinIO, R2, ...: not AWS itself
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max_connections,
            signature_version="s3v4",
            # S3-compatible stores serve buckets as paths of their one endpoint; AWS picks
            # virtual-hosted names by itself.
            s3={"addressing_style": "path" if compatible else "auto"},
            # botocore >= 1.36 adds CRC checksum headers (and aws-chunked trailers) to
            # every upload by default, which R2 and older MinIO refuse (boto/boto3#4392):
            # only where the operation requires them, outside AWS.
            request_checksum_calculation="when_required" if compatible else "when_supported",
            response_checksum_validation="when_required" if compatible else "when_supported",
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        # The host is part of the signature: URLs for clients are signed for the public
        # endpoint. Presigning makes no request, so this client never connects.
        self._signer: S3Client = self._client
        if public_endpoint_url and public_endpoint_url != endpoint_url:
            self._signer = session.client(
                "s3",
                endpoint_url=public_endpoint_url,
                config=config.merge(Config(s3={"addressing_style": "path"})),
            )
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="s3")

    def object_key(self, key: str) -> str:
        """The object's name in the bucket: the validated key under the prefix."""
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self.object_key(key)
        await self._run(
            "put",
            name,
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                # Like /files/: names are unguessable and objects never change.
                CacheControl="public, max-age=31536000, immutable",
            ),
        )

    async def get(self, key: str) -> bytes:
        name = self.object_key(key)

        def read() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            with response["Body"] as body:  # the body's reads are bounded by read_timeout
                return body.read()

        return await self._run("get", name, read)

    async def delete(self, key: str) -> None:
        name = self.object_key(key)
        # S3 answers 204 for a key that is not there: deleting twice is fine.
        await self._run(
            "delete", name, lambda: self._client.delete_object(Bucket=self.bucket, Key=name)
        )

    def url(self, key: str) -> str:
        # A local computation (an HMAC over the request), no call to the store.
        return self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=self.url_expiry_s,
        )

    def local_path(self, key: str) -> Path | None:
        return None

    async def _run(self, op: str, name: str, call: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if op == "get" and code in _MISSING:
                raise FileNotFoundError(errno.ENOENT, "no such stored object", name) from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _TRANSIENT or status >= 500:
                log.warning("S3 %s of %s failed: %s", op, name, exc)
            else:  # access denied, no such bucket, ...: the configuration's
                log.error("S3 %s of %s refused: %s", op, name, exc)
            raise StorageUnavailable() from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts
            log.warning("S3 %s of %s failed: %s", op, name, exc)
            raise StorageUnavailable() from exc


def storage_from_settings(settings: Settings) -> Storage:
    """The storage ``FLUXGATE_STORAGE_URL`` names: local files by default (the directory
    of a ``file://`` URL, else ``FLUXGATE_STORAGE_DIR``), or an S3 bucket."""
    location = settings.storage_location
    if location.scheme == "s3":
        return S3Storage(
            location.bucket,
            location.prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            url_expiry_s=settings.s3_url_expiry_s,
            timeout_s=settings.s3_timeout_s,
            max_attempts=settings.s3_max_attempts,
        )
    return LocalStorage(location.path or settings.storage_dir, settings.public_base)
