"""Validation and normalisation of an image request, shared by every surface.

Dimensions that are not multiples of 16 are *rejected* (not rounded): a client that asks
for 1000x1000 and silently gets 1008x1008 is worse off than one told the nearest sizes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from billing.catalog import Catalog, ModelEntry
from billing.errors import BadUserInput
from billing.netguard import AddressPolicy, validate_webhook_url
from billing.pricing import PriceTable, Quote
from billing.service.webhooks import validate_filter
from billing.text import unstorable

DIMENSION_STEP = 16
DEFAULT_SIDE = 1024
# GraphQL Int is a signed 32-bit integer, so seeds stay within it on every surface.
MAX_SEED = 2**31 - 1
MAX_URL_LEN = 2048
# FLUX.2 [dev] and [klein]: text-to-image pipelines that run as their own class (no
# FluxPipeline over their directory) and take no negative prompt.
FLUX2_PIPELINES = frozenset({"Flux2Pipeline", "Flux2KleinPipeline"})
# The registry's pipeline classes that make an image from text.
TEXT_TO_IMAGE_PIPELINES = frozenset({"FluxPipeline"}) | FLUX2_PIPELINES


@dataclass(frozen=True, slots=True)
class Limits:
    min_side: int = 256
    max_side: int = 2048
    max_prompt_chars: int = 4000


@dataclass(frozen=True, slots=True)
class RawImageRequest:
    """What a client sent, before validation. ``None`` means "not given"."""

    provider: str | None
    prompt: str | None
    width: int | None = None
    height: int | None = None
    version: str | None = None
    quality: str | None = None
    seed: int | None = None
    webhook_url: str | None = None
    type: str = "IMAGE"
    preview: bool = False
    webhook_events: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated request: every field resolved, the price known."""

    provider: str
    version: str
    prompt: str
    width: int
    height: int
    quality: str
    seed: int
    steps: int
    guidance: float
    webhook_url: str | None
    webhook_events: list[str] | None
    type: str
    preview: bool
    quote: Quote
    model: ModelEntry
    request_hash: str


# How each surface names the request's fields in errors (BAD_USER_INPUT names the field
# the client actually sent).
IMAGE_FIELDS: Mapping[str, str] = {
    "provider": "service", "prompt": "prompt", "width": "width", "height": "height",
    "version": "version", "quality": "quality", "seed": "seed", "webhook_url": "webhookUrl",
    "type": "type", "webhook_events": "webhookEvents",
}  # fmt: skip
GENERATE_FIELDS: Mapping[str, str] = {
    "provider": "provider", "prompt": "input.text", "width": "options.width",
    "height": "options.height", "version": "options.version", "quality": "options.quality",
    "seed": "options.seed", "webhook_url": "webhookUrl", "type": "type",
    "webhook_events": "webhookEvents",
}  # fmt: skip


def _dimension(value: int | None, field: str, limits: Limits) -> int:
    if value is None:
        return DEFAULT_SIDE
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadUserInput(field, f"{field} must be an integer")
    if not limits.min_side <= value <= limits.max_side:
        raise BadUserInput(
            field, f"{field} must be between {limits.min_side} and {limits.max_side} (got {value})"
        )
    if value % DIMENSION_STEP:
        lower = value - value % DIMENSION_STEP
        raise BadUserInput(
            field,
            f"{field} must be a multiple of {DIMENSION_STEP} (got {value}; "
            f"nearest: {lower} or {lower + DIMENSION_STEP})",
        )
    return value


def _webhook_url(value: str | None, field: str, policy: AddressPolicy) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_URL_LEN:
        raise BadUserInput(field, f"{field} is longer than {MAX_URL_LEN} characters")
    # Parsed strictly (billing/netguard.py): a host with a space, credentials, a bad port
    # or a literal private address are refused now. A host *name* that resolves to a
    # private address can only be refused at delivery, when it is resolved.
    validate_webhook_url(value, policy, field)
    return value


def validate_webhook(
    url: str | None,
    events: list[str] | tuple[str, ...] | None,
    policy: AddressPolicy,
    *,
    fields: tuple[str, str] = ("webhook_url", "webhook_events"),
) -> tuple[str | None, list[str] | None]:
    """A job's webhook URL and event filter, checked (every kind's request has them)."""
    return _webhook_url(url, fields[0], policy), validate_filter(events, fields[1])


def request_fingerprint(raw: RawImageRequest) -> str:
    """Hash of what the client asked for, to tell an idempotent retry from a new request."""
    canonical = json.dumps(asdict(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate(
    raw: RawImageRequest,
    *,
    catalog: Catalog,
    prices: PriceTable,
    limits: Limits,
    fields: Mapping[str, str] = IMAGE_FIELDS,
    policy: AddressPolicy | None = None,
) -> ImageRequest:
    if raw.type != "IMAGE":
        raise BadUserInput(fields["type"], "Only type IMAGE is supported")
    prompt = (raw.prompt or "").strip()
    if not prompt:
        raise BadUserInput(fields["prompt"], f"{fields['prompt']} must not be empty")
    if len(prompt) > limits.max_prompt_chars:
        raise BadUserInput(
            fields["prompt"],
            f"{fields['prompt']} is longer than {limits.max_prompt_chars} characters",
        )
    if unstorable(prompt):
        raise BadUserInput(
            fields["prompt"], f"{fields['prompt']} contains a NUL character or a lone surrogate"
        )
    if not raw.provider:
        raise BadUserInput(fields["provider"], f"{fields['provider']} is required")
    model = catalog.resolve(
        raw.provider, raw.version or None, fields=(fields["provider"], fields["version"])
    )
    if model.pipeline not in TEXT_TO_IMAGE_PIPELINES:
        usable = sorted(
            {e.provider for e in catalog.entries if e.pipeline in TEXT_TO_IMAGE_PIPELINES}
        )
        raise BadUserInput(
            fields["provider"],
            f"{fields['provider']} {raw.provider!r} cannot make images from text; use one of: "
            f"{', '.join(usable)}",
        )
    width = _dimension(raw.width, fields["width"], limits)
    height = _dimension(raw.height, fields["height"], limits)
    quality = raw.quality or "standard"
    if quality not in prices.qualities:
        raise BadUserInput(
            fields["quality"],
            f"{fields['quality']} must be one of {', '.join(sorted(prices.qualities))}",
        )
    if raw.seed is not None and not 0 <= raw.seed <= MAX_SEED:
        raise BadUserInput(fields["seed"], f"{fields['seed']} must be between 0 and {MAX_SEED}")
    webhook_url = _webhook_url(raw.webhook_url, fields["webhook_url"], policy or AddressPolicy())
    quote = prices.quote(width=width, height=height, version=model.version, quality=quality)
    return ImageRequest(
        provider=model.provider,
        version=model.version,
        prompt=prompt,
        width=width,
        height=height,
        quality=quality,
        # Fixed at acceptance, so a retried job renders the same image.
        seed=raw.seed if raw.seed is not None else secrets.randbelow(MAX_SEED + 1),
        steps=model.high_quality_steps if quality == "high" else model.steps,
        guidance=model.guidance,
        webhook_url=webhook_url,
        webhook_events=validate_filter(raw.webhook_events, fields["webhook_events"]),
        type=raw.type,
        preview=raw.preview,
        quote=quote,
        model=model,
        request_hash=request_fingerprint(raw),
    )
