"""Request validation shared by GraphQL and REST (``billing.requests``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from billing.catalog import Catalog
from billing.errors import BadUserInput, ErrorCode
from billing.pricing import default_price_table
from billing.requests import (
    GENERATE_FIELDS,
    IMAGE_FIELDS,
    MAX_SEED,
    ImageRequest,
    Limits,
    RawImageRequest,
    request_fingerprint,
    validate,
)
from runtime.settings import ROOT

CATALOG = Catalog.load(ROOT / "deploy" / "models.dev.toml")
PRICES = default_price_table()
LIMITS = Limits()
FIELD_MAPS = pytest.mark.parametrize(
    "fields", [IMAGE_FIELDS, GENERATE_FIELDS], ids=["image", "generate"]
)


def raw(**kwargs: Any) -> RawImageRequest:
    base: dict[str, Any] = {"provider": "flux-pro", "prompt": "a cat in a hat"}
    base.update(kwargs)
    return RawImageRequest(**base)


def check(request: RawImageRequest, fields: Mapping[str, str] = IMAGE_FIELDS) -> ImageRequest:
    return validate(request, catalog=CATALOG, prices=PRICES, limits=LIMITS, fields=fields)


def rejects(request: RawImageRequest, fields: Mapping[str, str], field: str) -> BadUserInput:
    with pytest.raises(BadUserInput) as info:
        check(request, fields)
    error = info.value
    assert error.field == fields[field], (error.field, error.message)
    assert error.extensions == {"code": ErrorCode.BAD_USER_INPUT.value, "field": fields[field]}
    assert error.message
    return error


# --- the field-name maps ----------------------------------------------------------


def test_field_maps_name_every_field() -> None:
    assert set(IMAGE_FIELDS) == set(GENERATE_FIELDS)
    assert IMAGE_FIELDS["provider"] == "service"
    assert IMAGE_FIELDS["width"] == "width"
    assert IMAGE_FIELDS["prompt"] == "prompt"
    assert GENERATE_FIELDS["provider"] == "provider"
    assert GENERATE_FIELDS["width"] == "options.width"
    assert GENERATE_FIELDS["prompt"] == "input.text"


# --- defaults and normalisation ---------------------------------------------------


def test_defaults() -> None:
    r = check(raw())
    assert (r.width, r.height) == (1024, 1024)
    assert r.quality == "standard"
    assert r.provider == "flux-pro"
    assert r.version == "flux-pro-1.1"  # the registry's default for flux-pro
    assert r.model.version == "flux-pro-1.1"
    assert r.model.is_default
    assert r.type == "IMAGE"
    assert r.webhook_url is None
    assert r.steps == 4
    assert r.guidance == 3.5
    assert r.prompt == "a cat in a hat"
    assert r.quote == PRICES.quote(
        width=1024, height=1024, version="flux-pro-1.1", quality="standard"
    )
    assert r.quote.credits == 17


@pytest.mark.parametrize(
    ("provider", "version"),
    [("flux-pro", "flux-pro-1.1"), ("flux-dev", "flux-dev"), ("flux-schnell", "flux-schnell")],
)
def test_provider_default_version_from_registry(provider: str, version: str) -> None:
    assert check(raw(provider=provider)).version == version
    # an empty string means "not given" as well
    assert check(raw(provider=provider, version="")).version == version


def test_explicit_version() -> None:
    r = check(raw(version="flux-pro"))
    assert r.version == "flux-pro"
    assert r.quote.credits == 15


def test_prompt_is_stripped() -> None:
    assert check(raw(prompt="  a dog \n")).prompt == "a dog"


def test_empty_quality_means_standard() -> None:
    assert check(raw(quality="")).quality == "standard"


def test_empty_webhook_url_means_none() -> None:
    assert check(raw(webhook_url="")).webhook_url is None


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://hooks.example.com:8443/a?b=c"])
def test_webhook_url_kept(url: str) -> None:
    assert check(raw(webhook_url=url)).webhook_url == url


def test_seed_assigned_when_absent() -> None:
    seeds = {check(raw()).seed for _ in range(50)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1  # random, not a constant


@pytest.mark.parametrize("seed", [0, 1, 42, MAX_SEED])
def test_seed_kept_when_given(seed: int) -> None:
    assert check(raw(seed=seed)).seed == seed


def test_assigned_seed_does_not_change_fingerprint() -> None:
    a, b = check(raw()), check(raw())
    assert a.request_hash == b.request_hash == request_fingerprint(raw())


@pytest.mark.parametrize(
    ("provider", "version", "steps", "high_steps"),
    [
        ("flux-pro", "flux-pro", 4, 6),
        ("flux-pro", "flux-pro-1.1", 4, 6),
        ("flux-dev", "flux-dev", 4, 4),
        ("flux-schnell", "flux-schnell", 2, 2),
    ],
)
def test_steps_from_registry(provider: str, version: str, steps: int, high_steps: int) -> None:
    entry = CATALOG.resolve(provider, version)
    assert (entry.steps, entry.high_quality_steps) == (steps, high_steps)
    standard = check(raw(provider=provider, version=version))
    high = check(raw(provider=provider, version=version, quality="high"))
    assert standard.steps == steps
    assert high.steps == high_steps
    assert standard.guidance == high.guidance == entry.guidance
    assert high.quote.credits > standard.quote.credits


def test_high_quality_uses_high_quality_steps() -> None:
    r = check(raw(provider="flux-pro", quality="high"))
    assert r.quality == "high"
    assert r.steps == r.model.high_quality_steps == 6


def test_limits_inclusive_bounds() -> None:
    for side in (256, 2048):
        r = check(raw(width=side, height=side))
        assert (r.width, r.height) == (side, side)


def test_prompt_at_max_length_accepted() -> None:
    assert len(check(raw(prompt="x" * LIMITS.max_prompt_chars)).prompt) == 4000


def test_type_image_accepted() -> None:
    assert check(raw(type="IMAGE")).type == "IMAGE"


# --- rejections --------------------------------------------------------------------


@FIELD_MAPS
@pytest.mark.parametrize("prompt", [None, "", " ", "   \t\n  "])
def test_missing_or_blank_prompt(fields: Mapping[str, str], prompt: str | None) -> None:
    error = rejects(raw(prompt=prompt), fields, "prompt")
    assert fields["prompt"] in error.message


@FIELD_MAPS
def test_prompt_too_long(fields: Mapping[str, str]) -> None:
    error = rejects(raw(prompt="x" * (LIMITS.max_prompt_chars + 1)), fields, "prompt")
    assert "4000" in error.message


def test_prompt_limit_is_configurable() -> None:
    limits = Limits(max_prompt_chars=5)
    with pytest.raises(BadUserInput) as info:
        validate(raw(prompt="123456"), catalog=CATALOG, prices=PRICES, limits=limits)
    assert info.value.field == "prompt"
    assert validate(raw(prompt="12345"), catalog=CATALOG, prices=PRICES, limits=limits)


@FIELD_MAPS
@pytest.mark.parametrize("prompt", ["a\x00b", "\x00cat", "cat\x00"])
def test_prompt_with_nul(fields: Mapping[str, str], prompt: str) -> None:
    error = rejects(raw(prompt=prompt), fields, "prompt")
    assert "NUL" in error.message


@FIELD_MAPS
@pytest.mark.parametrize("side", ["width", "height"])
@pytest.mark.parametrize("value", [0, -1, 100000, 255, 2064, 240, 4096])
def test_dimension_out_of_range(fields: Mapping[str, str], side: str, value: int) -> None:
    error = rejects(raw(**{side: value}), fields, side)
    assert "between 256 and 2048" in error.message
    assert str(value) in error.message


@FIELD_MAPS
@pytest.mark.parametrize("side", ["width", "height"])
def test_dimension_not_multiple_of_16(fields: Mapping[str, str], side: str) -> None:
    error = rejects(raw(**{side: 1000}), fields, side)
    assert "multiple of 16" in error.message
    assert "992" in error.message
    assert "1008" in error.message
    assert fields[side] in error.message


@FIELD_MAPS
@pytest.mark.parametrize(("value", "lower"), [(257, 256), (1023, 1008), (2047, 2032), (520, 512)])
def test_dimension_nearest_sizes(fields: Mapping[str, str], value: int, lower: int) -> None:
    error = rejects(raw(width=value), fields, "width")
    assert f"nearest: {lower} or {lower + 16}" in error.message


@FIELD_MAPS
@pytest.mark.parametrize("value", [True, 512.0, "512"])
def test_dimension_not_an_integer(fields: Mapping[str, str], value: Any) -> None:
    rejects(raw(width=value), fields, "width")


@FIELD_MAPS
@pytest.mark.parametrize("provider", ["flux-ultra", "FLUX-PRO", "nope"])
def test_unknown_provider(fields: Mapping[str, str], provider: str) -> None:
    error = rejects(raw(provider=provider), fields, "provider")
    assert "flux-dev" in error.message  # lists what is available


@FIELD_MAPS
@pytest.mark.parametrize("provider", [None, ""])
def test_missing_provider(fields: Mapping[str, str], provider: str | None) -> None:
    rejects(raw(provider=provider), fields, "provider")


@FIELD_MAPS
@pytest.mark.parametrize(
    ("provider", "version"),
    [("flux-pro", "flux-pro-9"), ("flux-dev", "flux-pro"), ("flux-schnell", "flux-dev")],
)
def test_unknown_version(fields: Mapping[str, str], provider: str, version: str) -> None:
    error = rejects(raw(provider=provider, version=version), fields, "version")
    assert version in error.message


@FIELD_MAPS
@pytest.mark.parametrize("quality", ["ultra", "HIGH", "Standard", "low"])
def test_bad_quality(fields: Mapping[str, str], quality: str) -> None:
    error = rejects(raw(quality=quality), fields, "quality")
    assert "high" in error.message
    assert "standard" in error.message


@FIELD_MAPS
@pytest.mark.parametrize("seed", [-1, 2**31, 2**63, -(2**31)])
def test_seed_out_of_range(fields: Mapping[str, str], seed: int) -> None:
    error = rejects(raw(seed=seed), fields, "seed")
    assert str(MAX_SEED) in error.message


@FIELD_MAPS
@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "not a url",
        "/relative/path",
        "http://",
        "https:///path-only",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://example.com/" + "a" * 2048,
    ],
)
def test_bad_webhook_url(fields: Mapping[str, str], url: str) -> None:
    rejects(raw(webhook_url=url), fields, "webhook_url")


@FIELD_MAPS
def test_webhook_url_length_limit(fields: Mapping[str, str]) -> None:
    head = "https://example.com/"
    ok = head + "a" * (2048 - len(head))
    assert len(ok) == 2048
    assert check(raw(webhook_url=ok), fields).webhook_url == ok
    error = rejects(raw(webhook_url=ok + "a"), fields, "webhook_url")
    assert "2048" in error.message


@FIELD_MAPS
@pytest.mark.parametrize("type_", ["VIDEO", "image", "", "AUDIO"])
def test_type_other_than_image(fields: Mapping[str, str], type_: str) -> None:
    error = rejects(raw(type=type_), fields, "type")
    assert "IMAGE" in error.message


@FIELD_MAPS
def test_errors_name_surface_fields(fields: Mapping[str, str]) -> None:
    """The same mistake is reported under each surface's own field name."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": ""}, "prompt"),
        ({"width": 1000}, "width"),
        ({"height": 0}, "height"),
        ({"provider": "x"}, "provider"),
        ({"version": "x"}, "version"),
        ({"quality": "x"}, "quality"),
        ({"seed": -1}, "seed"),
        ({"webhook_url": "x"}, "webhook_url"),
        ({"type": "x"}, "type"),
    ]
    for kwargs, field in cases:
        with pytest.raises(BadUserInput) as info:
            check(raw(**kwargs), fields)
        assert info.value.field == fields[field], kwargs


# --- fingerprint -----------------------------------------------------------------


FULL = RawImageRequest(
    provider="flux-pro",
    prompt="a cat",
    width=512,
    height=768,
    version="flux-pro",
    quality="high",
    seed=7,
    webhook_url="https://example.com/hook",
    type="IMAGE",
)


def test_fingerprint_is_stable() -> None:
    copy = RawImageRequest(**dataclasses.asdict(FULL))
    assert copy is not FULL
    assert request_fingerprint(copy) == request_fingerprint(FULL)
    assert len(request_fingerprint(FULL)) == 64  # fits generations.request_hash
    assert check(FULL).request_hash == request_fingerprint(FULL)


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "flux-dev"},
        {"prompt": "a dog"},
        {"prompt": "a cat "},
        {"width": 528},
        {"width": None},
        {"height": 512},
        {"version": None},
        {"version": "flux-pro-1.1"},
        {"quality": "standard"},
        {"quality": None},
        {"seed": 8},
        {"seed": None},
        {"webhook_url": None},
        {"webhook_url": "https://example.com/hook2"},
        {"type": "VIDEO"},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_fingerprint_changes_with_any_field(change: dict[str, Any]) -> None:
    changed = dataclasses.replace(FULL, **change)
    assert request_fingerprint(changed) != request_fingerprint(FULL)


def test_fingerprint_tells_swapped_dimensions_apart() -> None:
    swapped = dataclasses.replace(FULL, width=FULL.height, height=FULL.width)
    assert request_fingerprint(swapped) != request_fingerprint(FULL)
