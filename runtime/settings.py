"""The one settings object. A leaf module: it imports nothing from the project.

Every setting is read from an environment variable with the ``FLUXGATE_`` prefix (or a
``.env`` file in the working directory). Defaults fit ``make run`` on a development
machine; outside development the placeholder secret is refused.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DEV_SECRET = "dev-insecure-secret-change-me"  # noqa: S105  # the refused placeholder


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
    job_max_tries: int = Field(default=3, ge=1)
    # The worker running a job renews its lease (in the database) every job_heartbeat_s;
    # the sweeper, every sweep_interval_s, retries (up to job_max_tries runs) or fails and
    # releases a processing job whose lease is older than job_lease_s: a crashed worker's
    # job is picked up again within about job_lease_s + sweep_interval_s.
    job_lease_s: int = Field(default=30, ge=2)
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    # A job still queued after this long (no live worker serves its model) fails, and its
    # credits are released.
    max_queue_wait_s: int = Field(default=3600, ge=1)
    progress_interval_s: float = Field(default=0.25, gt=0)
    worker_poll_interval_s: float = Field(default=0.02, gt=0)

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

    max_prompt_chars: int = Field(default=4000, ge=1)
    min_side: int = 256
    max_side: int = 2048
    # Image inputs (uploads, image_url, image_id) of the job kinds.
    max_input_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_input_megapixels: float = Field(default=16.0, gt=0, le=64)
    input_fetch_timeout_s: float = Field(default=10.0, gt=0, le=60)
    db_pool_size: int = 10
    db_max_overflow: int = 20

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
