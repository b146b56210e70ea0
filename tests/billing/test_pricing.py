"""The shipped price table (``billing/prices.toml``) against SPEC's price ranges, and the
rules :class:`billing.pricing.PriceTable` enforces on any table."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from billing.catalog import Catalog
from billing.pricing import PRICES_FILE, PriceTable, default_price_table
from runtime.settings import ROOT

REGISTRIES = [ROOT / "deploy" / "models.dev.toml", ROOT / "deploy" / "models.example.toml"]
QUALITIES = ("standard", "high")
STANDARD_SIDES = range(512, 1024 + 1, 16)


def _versions(path: Path) -> list[str]:
    """The text-to-image versions: seed 001's price ranges are for them (other kinds add
    their own surcharge per image, tested in tests/kinds)."""
    return sorted({e.version for e in Catalog.load(path).entries if e.pipeline == "FluxPipeline"})


DEV_VERSIONS = _versions(ROOT / "deploy" / "models.dev.toml")


def _table(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tier": [
            {"name": "a", "max_pixels": 100, "credits": 1},
            {"name": "b", "max_pixels": 200, "credits": 2},
            {"name": "c", "credits": 3},
        ],
        "version_surcharge": {"default": 0},
        "quality_surcharge": {"standard": 0, "high": 1},
    }
    data.update(overrides)
    return data


def test_dev_registry_lists_the_expected_versions() -> None:
    assert DEV_VERSIONS == ["flux-dev", "flux-pro", "flux-pro-1.1", "flux-schnell"]


def test_shipped_table_offers_both_qualities() -> None:
    assert default_price_table().qualities == frozenset(QUALITIES)


def test_default_price_table_is_the_shipped_file() -> None:
    assert default_price_table() == PriceTable.load(PRICES_FILE)
    assert default_price_table() is default_price_table()


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda p: p.name)
@pytest.mark.parametrize("quality", QUALITIES)
def test_standard_resolution_costs_10_to_20(registry: Path, quality: str) -> None:
    """SPEC: standard resolution (512x512 .. 1024x1024) costs 10-20 credits."""
    prices = default_price_table()
    for version in _versions(registry):
        for width in STANDARD_SIDES:
            for height in STANDARD_SIDES:
                q = prices.quote(width=width, height=height, version=version, quality=quality)
                assert 10 <= q.credits <= 20, (version, quality, width, height, q)


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda p: p.name)
@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize(
    ("width", "height"), [(2048, 2048), (2064, 2048), (2048, 4096), (4096, 4096), (8192, 8192)]
)
def test_high_resolution_costs_30_to_50(
    registry: Path, quality: str, width: int, height: int
) -> None:
    """SPEC: high resolution (2048x2048 and above) costs 30-50 credits."""
    prices = default_price_table()
    for version in _versions(registry):
        q = prices.quote(width=width, height=height, version=version, quality=quality)
        assert 30 <= q.credits <= 50, (version, quality, width, height, q)


@pytest.mark.parametrize("version", DEV_VERSIONS)
@pytest.mark.parametrize("quality", QUALITIES)
def test_price_never_decreases_with_pixels(version: str, quality: str) -> None:
    prices = default_price_table()
    sides = range(256, 2048 + 1, 16)
    by_pixels = sorted((w * h, w, h) for w in sides for h in (256, 512, 1024, 2048))
    last = 0
    for _, w, h in by_pixels:
        credits = prices.quote(width=w, height=h, version=version, quality=quality).credits
        assert credits >= last, (w, h)
        last = credits


@pytest.mark.parametrize(
    ("width", "height", "tier"),
    [
        (512, 512, "small"),
        (528, 512, "standard"),
        (512, 528, "standard"),
        (256, 256, "small"),
        (1024, 1024, "standard"),
        (1040, 1024, "large"),
        (1024, 1040, "large"),
        (1536, 1536, "large"),
        (1552, 1536, "high"),
        (2048, 2048, "high"),
        (2064, 2048, "ultra"),
    ],
)
def test_tier_is_chosen_by_pixel_count_at_boundaries(width: int, height: int, tier: str) -> None:
    q = default_price_table().quote(
        width=width, height=height, version="flux-dev", quality="standard"
    )
    assert q.tier == tier
    assert (q.width, q.height) == (width, height)


def test_tier_boundaries_change_the_price() -> None:
    prices = default_price_table()

    def cost(w: int, h: int) -> int:
        return prices.quote(width=w, height=h, version="flux-dev", quality="standard").credits

    assert cost(512, 512) == 10
    assert cost(528, 512) == 15
    assert cost(1024, 1024) == 15
    assert cost(1040, 1024) == 25
    assert cost(512, 512) < cost(528, 512) < cost(1040, 1024)


def test_same_pixels_same_price_whatever_the_shape() -> None:
    prices = default_price_table()
    a = prices.quote(width=1024, height=256, version="flux-pro", quality="standard")
    b = prices.quote(width=512, height=512, version="flux-pro", quality="standard")
    assert a.tier == b.tier
    assert a.credits == b.credits


@pytest.mark.parametrize("version", DEV_VERSIONS)
@pytest.mark.parametrize(
    ("width", "height"), [(512, 512), (1024, 1024), (1536, 1536), (2048, 2048)]
)
def test_high_quality_costs_more(version: str, width: int, height: int) -> None:
    prices = default_price_table()
    standard = prices.quote(width=width, height=height, version=version, quality="standard")
    high = prices.quote(width=width, height=height, version=version, quality="high")
    assert high.credits > standard.credits
    assert high.tier == standard.tier


def test_quote_reports_its_inputs() -> None:
    q = default_price_table().quote(width=1024, height=768, version="flux-pro-1.1", quality="high")
    assert q.credits == 15 + 2 + 3
    assert q.tier == "standard"
    assert q.megapixels == 0.79
    assert (q.width, q.height, q.version, q.quality) == (1024, 768, "flux-pro-1.1", "high")


def test_unknown_version_uses_default_surcharge_of_shipped_table() -> None:
    prices = default_price_table()
    assert prices.version_surcharge["default"] == 0
    unknown = prices.quote(width=1024, height=1024, version="no-such-model", quality="standard")
    assert unknown.credits == 15 + prices.version_surcharge["default"]


def test_unknown_version_uses_default_surcharge() -> None:
    table = PriceTable.from_dict(
        _table(version_surcharge={"default": 7, "known": 2}),
    )
    assert table.quote(width=10, height=10, version="known", quality="standard").credits == 1 + 2
    assert table.quote(width=10, height=10, version="other", quality="standard").credits == 1 + 7
    assert table.quote(width=10, height=10, version="other", quality="high").credits == 1 + 7 + 1


def test_missing_default_surcharge_means_zero() -> None:
    table = PriceTable.from_dict(_table(version_surcharge={"known": 2}))
    assert table.quote(width=10, height=10, version="other", quality="standard").credits == 1
    no_section = _table()
    del no_section["version_surcharge"]
    table = PriceTable.from_dict(no_section)
    assert table.quote(width=10, height=10, version="other", quality="standard").credits == 1


def test_from_dict_accepts_a_valid_table() -> None:
    table = PriceTable.from_dict(_table())
    assert [t.name for t in table.tiers] == ["a", "b", "c"]
    assert table.quote(width=10, height=10, version="v", quality="standard").tier == "a"
    assert table.quote(width=10, height=20, version="v", quality="standard").tier == "b"
    assert table.quote(width=10, height=21, version="v", quality="standard").tier == "c"


def test_from_dict_rejects_tiers_out_of_order() -> None:
    tiers = [
        {"name": "b", "max_pixels": 200, "credits": 2},
        {"name": "a", "max_pixels": 100, "credits": 1},
        {"name": "c", "credits": 3},
    ]
    with pytest.raises(ValueError, match="increasing"):
        PriceTable.from_dict(_table(tier=tiers))


def test_from_dict_rejects_an_open_tier_before_the_last() -> None:
    tiers = [
        {"name": "a", "max_pixels": 100, "credits": 1},
        {"name": "open", "credits": 2},
        {"name": "c", "credits": 3},
    ]
    with pytest.raises(ValueError, match="increasing"):
        PriceTable.from_dict(_table(tier=tiers))


def test_from_dict_rejects_last_tier_with_max_pixels() -> None:
    tiers = [
        {"name": "a", "max_pixels": 100, "credits": 1},
        {"name": "b", "max_pixels": 200, "credits": 2},
    ]
    with pytest.raises(ValueError, match="last price tier"):
        PriceTable.from_dict(_table(tier=tiers))


def test_from_dict_rejects_no_tiers() -> None:
    with pytest.raises(ValueError, match="last price tier"):
        PriceTable.from_dict(_table(tier=[]))


@pytest.mark.parametrize("credits", [0, -1, -100])
@pytest.mark.parametrize("position", [0, 2])
def test_from_dict_rejects_non_positive_credits(credits: int, position: int) -> None:
    data = _table()
    data["tier"][position]["credits"] = credits
    name = data["tier"][position]["name"]
    with pytest.raises(ValueError, match=f"tier {name}: credits must be positive"):
        PriceTable.from_dict(data)


def test_shipped_file_holds_only_integers() -> None:
    """Credits are money: the file itself must not rely on int() truncating a float."""
    with PRICES_FILE.open("rb") as f:
        raw = tomllib.load(f)
    for tier in raw["tier"]:
        assert type(tier["credits"]) is int, tier
        if "max_pixels" in tier:
            assert type(tier["max_pixels"]) is int, tier
    for section in ("version_surcharge", "quality_surcharge"):
        for key, value in raw[section].items():
            assert type(value) is int, (section, key)
            assert value >= 0, (section, key)


def test_all_prices_are_ints() -> None:
    prices = default_price_table()
    for tier in prices.tiers:
        assert type(tier.credits) is int
    assert all(type(v) is int for v in prices.version_surcharge.values())
    assert all(type(v) is int for v in prices.quality_surcharge.values())
    for version in [*DEV_VERSIONS, "unknown"]:
        for quality in QUALITIES:
            for side in (256, 512, 1024, 1536, 2048, 4096):
                q = prices.quote(width=side, height=side, version=version, quality=quality)
                assert type(q.credits) is int
                assert q.credits > 0


def test_shipped_tiers_are_strictly_increasing() -> None:
    tiers = default_price_table().tiers
    bounds = [t.max_pixels for t in tiers[:-1]]
    assert all(isinstance(b, int) for b in bounds)
    assert bounds == sorted(set(bounds))  # type: ignore[type-var]
    assert tiers[-1].max_pixels is None
    credits = [t.credits for t in tiers]
    assert credits == sorted(set(credits))
