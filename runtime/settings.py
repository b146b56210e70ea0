"""The one settings object. A leaf module: it imports nothing from the project.

Every setting is read from an environment variable with the ``FLUXGATE_`` prefix (or a
``.env`` file in the working directory). Defaults fit ``make run`` on a development
machine; outside development the placeholder secret is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DEV_SECRET = "dev-insecure-secret-change-me"  # noqa: S105  # the refused placeholder

# S3's bucket naming rules (MinIO and R2 follow them), and a key prefix of plain segments.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class StorageLocation:
    """``FLUXGATE_STORAGE_URL`` parsed: local files (``path``; None means
    ``FLUXGATE_STORAGE_DIR``) or an S3 bucket and key prefix."""

    scheme: Literal["file", "s3"]
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_storage_url(url: str | None) -> StorageLocation:
    """``file:///absolute/dir`` or ``s3://bucket[/prefix]``; ValueError saying what is
    wrong otherwise. Unset or empty: local files under ``FLUXGATE_STORAGE_DIR``."""
    if url is None or not url.strip():
        return StorageLocation("file")
    parts = urlsplit(url.strip())
    if parts.query or parts.fragment:
        raise ValueError("a storage URL takes no query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file storage URL is file:///absolute/directory")
        return StorageLocation("file", path=Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not _BUCKET.match(parts.netloc) or ".." in parts.netloc:
            raise ValueError(
                f"{parts.netloc!r} is not a bucket name (3-63 lowercase letters, digits, "
                "dots and hyphens): use s3://bucket/prefix"
            )
        prefix = parts.path.strip("/")
        if prefix and (
            not _PREFIX.match(prefix) or any(s in (".", "..") for s in prefix.split("/"))
        ):
            raise ValueError(
                f"{prefix!r} is not a key prefix (segments of letters, digits, '.', '_', '-')"
            )
        return StorageLocation("s3", bucket=parts.netloc, prefix=prefix)
    raise ValueError("expected s3://bucket/prefix or file:///directory")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXGATE_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/fluxgate"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The arq queue, and the prefix of Fluxgate's own Redis keys (events, cancel flags,
    # timings). arq's job keys and cron ids are not prefixed: give each deployment its own
    # Redis database.
    queue_name: str = "fluxgate:queue"
    # The API's connect and read timeout on Redis: a stalled Redis answers requests 503
    # (SERVICE_UNAVAILABLE, Retry-After) after a few times this long instead of hanging.
    redis_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # The workers' read and connect timeout on Redis: longer than the API's (nobody waits
    # on a worker's poll; a busy host must not read a slow reply as an outage), short
    # enough that a stalled Redis makes them reconnect instead of hang.
    worker_redis_timeout_s: float = Field(default=10.0, gt=0, le=120)
    storage_dir: Path = ROOT / "var" / "storage"
    # Where input and output images are kept (runtime/storage.py). Unset: files under
    # storage_dir, served by the API at /files/. `s3://bucket/prefix`: an S3-compatible
    # store (AWS, MinIO, R2) that clients download from by presigned URL; credentials and
    # region come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_REGION, ...).
    storage_url: str | None = None
    # Set for anything but AWS itself (MinIO, R2): the API and workers reach the store
    # there, with path-style addressing. The public endpoint, where clients reach the same
    # store, is the host presigned URLs name (it is signed): set it when the two differ
    # (an internal `http://minio:9000` behind a public `https://images.example.com`).
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    # How long a presigned image URL works (SigV4 allows at most 7 days).
    s3_url_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    # Connect and read timeout of one S3 call, and the attempts at it (with backoff): a
    # stalled store answers a request 503 (SERVICE_UNAVAILABLE) after about
    # attempts x timeout instead of hanging.
    s3_timeout_s: float = Field(default=5.0, gt=0, le=60)
    s3_max_attempts: int = Field(default=3, ge=1, le=10)
    public_url: str = "http://127.0.0.1:8000"
    models: Path = ROOT / "deploy" / "models.dev.toml"
    # The price table (billing/prices.toml's format); every job kind needs a row in it.
    prices: Path = ROOT / "billing" / "prices.toml"
    # Pepper for the keyed hash of API keys: the database alone cannot verify a key.
    secret_key: SecretStr = SecretStr(DEV_SECRET)

    host: str = "127.0.0.1"
    port: int = 8000

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    job_timeout_s: int = Field(default=600, ge=10)
    # LoRA adapters a GPU worker keeps loaded per model (issue 13); past this the least
    # recently used are deleted from the pipeline.
    lora_cache_size: int = Field(default=8, ge=1)
    # On SIGTERM a GPU worker takes no more jobs and lets the one in flight finish for up
    # to this long (default: the job timeout, so a job is never cut short by a restart);
    # then it is cancelled and handed back. 0: cancel at once. A second signal skips it.
    worker_drain_s: float | None = Field(default=None, ge=0)
    # On SIGTERM the API stops accepting connections and waits this long for the requests
    # in flight (open subscriptions are closed with 1012 at once); then it exits anyway.
    api_shutdown_s: int = Field(default=30, ge=1)
    job_max_tries: int = Field(default=3, ge=1)
    # The worker running a job renews its lease (in the database) every job_heartbeat_s;
    # the sweeper, every sweep_interval_s, retries (up to job_max_tries runs) or fails and
    # releases a processing job whose lease is older than job_lease_s: a crashed worker's
    # job is picked up again within about job_lease_s + sweep_interval_s.
    job_lease_s: int = Field(default=30, ge=2)
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    # Whether this worker process sweeps. Concurrent sweeps are safe, so by default every
    # GPU and webhook worker does; a deployment may keep it to one process (the webhook
    # worker, say) by setting it false on the GPU workers.
    sweep: bool = True
    # A job still queued after this long (no live worker serves its model) fails, and its
    # credits are released.
    max_queue_wait_s: int = Field(default=3600, ge=1)
    # How long a synchronous request (seed 003's POST /flux/images) waits for its job
    # before answering 504 with the job's id; the job goes on either way.
    sync_wait_s: float = Field(default=600.0, gt=0)
    # A streamed answer (seed 003's NDJSON) repeats its last line after this long without
    # news (a job waiting in the queue), so proxies' idle timeouts do not cut it.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    progress_interval_s: float = Field(default=0.25, gt=0)
    worker_poll_interval_s: float = Field(default=0.02, gt=0)
    # A GPU worker's memory budget (GB) for the models of the pools it serves, measured
    # as their directories' size on disk; over it, `fluxgate worker` refuses to start.
    # Unset: no check.
    worker_memory_gb: float | None = Field(default=None, gt=0)

    # Serving speed (README "Serving fast"; applied by gpu_worker/speed.py when the worker
    # loads a pipeline, before its warm-up, so the worker is announced only once compiled).
    # `regional`: torch.compile of the transformer's repeated blocks (a cold start of tens
    # of seconds on a GPU instead of minutes for the whole model).
    compile: Literal["off", "regional"] = "off"
    fuse_qkv: bool = False
    # `fp8`: torchao float8 dynamic quantization of the transformer. Lossy, so off by
    # default; needs a CUDA GPU with FP8 (compute capability 8.9+) and `torchao` (the
    # `gpu` extra): a worker asked for it anywhere else refuses to start.
    quantization: Literal["none", "fp8"] = "none"
    # A diffusers attention backend (`diffusers.models.attention_dispatch
    # .AttentionBackendName`: native, _native_cudnn, _native_flash, flash, _flash_3,
    # sage...), checked at start-up; `default`: diffusers' own choice (torch SDPA).
    attention_backend: str = Field(default="default", pattern=r"^[a-z0-9_]+$")
    vae_tiling: bool = False
    vae_channels_last: bool = False
    # Text embeddings kept per (model, prompt, max_sequence_length), least recently used
    # dropped past this many; 0: off. One FLUX.1 T5 embedding is ~4 MB of GPU memory.
    prompt_cache: int = Field(default=0, ge=0, le=4096)
    # Up to this many queued compatible jobs (same model, size, steps, guidance, format;
    # README "Serving fast") run as one pipeline call, each still claimed, announced,
    # cancellable and settled on its own (gpu_worker/batching.py); 1: off.
    batch_max: int = Field(default=1, ge=1, le=64)

    # Webhooks. Allowed hosts: comma-separated names and CIDR ranges that may be reached
    # although they are not public addresses (everything private is refused otherwise).
    webhook_allowed_hosts: str = ""
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Seconds to wait after each failed attempt; one more attempt per entry. The default
    # spreads 8 attempts over about 27 hours.
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_secret_grace_s: int = Field(default=86400, ge=0)
    webhook_concurrency: int = Field(default=50, ge=1)

    # Stripe. Without an API key purchases are off (the rest works). The webhook secret
    # may list several, comma-separated, while one is being rolled.
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    # A Stripe event that keeps failing to apply is retried this often, this many times,
    # then dead-lettered (`fluxgate stripe dead-letters`); a malformed one at once.
    stripe_event_max_attempts: int = Field(default=8, ge=1, le=100)
    stripe_event_retry_s: float = Field(default=30.0, gt=0, le=3600)
    checkout_success_url: str | None = None
    checkout_cancel_url: str | None = None

    # GraphQL hardening.
    graphql_introspection: bool = True
    graphql_max_depth: int = Field(default=10, ge=2)
    graphql_max_aliases: int = Field(default=30, ge=1)
    graphql_max_tokens: int = Field(default=2000, ge=50)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # A multipart request (image uploads) may be larger: an image and a mask at most.
    max_upload_body_bytes: int = Field(default=34 * 1024 * 1024, ge=1024)
    # Websocket keep-alive: `ka` (graphql-ws) or `ping` (graphql-transport-ws) this often,
    # so clients that watch for liveness (gql's keep_alive_timeout) and idle-closing
    # proxies keep the connection.
    ws_keepalive_s: float = Field(default=10.0, gt=0)
    # The safety net of live subscriptions, for what no event announced (a key revoked by
    # hand in SQL, an event whose publication failed after its commit): this often each API
    # process checks the keys of all its open subscriptions and the revisions of the jobs
    # they follow, in one transaction (none when no subscription is open).
    subscription_recheck_s: float = Field(default=30.0, gt=0)

    max_prompt_chars: int = Field(default=4000, ge=1)
    min_side: int = 256
    max_side: int = 2048
    # Image inputs (uploads, image_url, image_id) of the job kinds.
    max_input_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_input_megapixels: float = Field(default=16.0, gt=0, le=64)
    input_fetch_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Connections kept open, and extra ones opened under bursts (closed when returned). A
    # request holds one from authentication to its commit: keep the pool at least as
    # large as the requests one process serves at once, or every burst pays connection
    # setup (TLS, type codecs, statement preparation) again.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    # Observability (README "Observability"). Logs: `text` for a terminal, `json` (one
    # object per line, with request and job ids) for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # uvicorn's line per HTTP request. /metrics counts every request by route and status
    # (with its duration) either way; behind a proxy or ingress that logs requests, the
    # line is a second copy (~3 % of the API's CPU per accepted job, bench/README.md).
    access_log: bool = True
    # When set, every /metrics (the API's and the workers') wants `Authorization: Bearer
    # <token>`. Unset, /metrics is open: keep it off the public network either way.
    metrics_token: SecretStr | None = None
    # A worker's /metrics and /readyz (`fluxgate worker`, `fluxgate webhook-worker`; their
    # --metrics-port overrides it). 0: none.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # The API's /readyz answers 503 when the database or Redis does not answer this fast.
    readiness_timeout_s: float = Field(default=1.0, gt=0, le=30)

    @field_validator("storage_url")
    @classmethod
    def _valid_storage_url(cls, value: str | None) -> str | None:
        parse_storage_url(value)  # a bad URL stops the start-up, saying what is wrong
        return value

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError("expected an http(s)://host[:port] endpoint URL")
        return value.strip()

    @model_validator(mode="after")
    def _stripe_needs_its_webhook_secret(self) -> Settings:
        # Payments without their webhook would be charged and never credited.
        if self.stripe_api_key and not self.stripe_webhook_secrets:
            raise ValueError("FLUXGATE_STRIPE_API_KEY needs FLUXGATE_STRIPE_WEBHOOK_SECRET")
        return self

    @model_validator(mode="after")
    def _valid_schedule(self) -> Settings:
        try:
            delays = self.webhook_schedule
        except ValueError:
            raise ValueError("FLUXGATE_WEBHOOK_RETRY_SCHEDULE: comma-separated seconds") from None
        if any(d < 0 for d in delays):
            raise ValueError("FLUXGATE_WEBHOOK_RETRY_SCHEDULE: delays must not be negative")
        return self

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        # A live worker must not lose its job to the sweeper over one slow or missed
        # renewal (a database hiccup): the lease spans at least three heartbeats. arq's own
        # lock no longer matters: the sweeper clears it when it re-enqueues a job.
        if self.job_lease_s < 3 * self.job_heartbeat_s:
            raise ValueError(
                "FLUXGATE_JOB_LEASE_S must be at least 3 times FLUXGATE_JOB_HEARTBEAT_S"
            )
        # A lease must be checked more often than it lasts, or a crash is noticed late.
        if self.sweep_interval_s > self.job_lease_s:
            raise ValueError("FLUXGATE_SWEEP_INTERVAL_S must not exceed FLUXGATE_JOB_LEASE_S")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == DEV_SECRET:
            raise ValueError("FLUXGATE_SECRET_KEY must be set to a random value in production")
        return self

    @property
    def storage_location(self) -> StorageLocation:
        return parse_storage_url(self.storage_url)

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def stripe_webhook_secrets(self) -> list[str]:
        raw = self.stripe_webhook_secret.get_secret_value() if self.stripe_webhook_secret else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    @property
    def webhook_schedule(self) -> list[float]:
        return [float(s) for s in self.webhook_retry_schedule.split(",") if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
