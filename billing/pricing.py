"""Prices a request from the table in ``prices.toml``. GraphQL, REST and the ``price``
query all call :func:`PriceTable.quote`, so a quote is always what a job is charged."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    max_pixels: int | None
    credits: int


@dataclass(frozen=True, slots=True)
class Quote:
    credits: int
    tier: str
    megapixels: float
    width: int
    height: int
    version: str
    quality: str
    kind: str = "text_to_image"
    count: int = 1
    unit_credits: int = 0  # one image's price; ``credits`` is ``count`` of them
    loras: int = 0  # LoRAs applied, each adding ``PriceTable.lora_surcharge`` per image


@dataclass(frozen=True, slots=True)
class PriceTable:
    tiers: tuple[Tier, ...]
    version_surcharge: dict[str, int]
    quality_surcharge: dict[str, int]
    kind_surcharge: dict[str, int]
    lora_surcharge: int = 0  # per LoRA a job applies, added to each image (issue 13)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceTable:
        tiers = tuple(
            Tier(name=str(t["name"]), max_pixels=t.get("max_pixels"), credits=int(t["credits"]))
            for t in data["tier"]
        )
        if not tiers or tiers[-1].max_pixels is not None:
            raise ValueError("the last price tier must have no max_pixels")
        bounds = [t.max_pixels for t in tiers[:-1]]
        if any(b is None for b in bounds) or bounds != sorted(bounds):  # type: ignore[type-var]  # None excluded just before
            raise ValueError("price tiers must be in increasing max_pixels order")
        for t in tiers:
            if t.credits <= 0:
                raise ValueError(f"tier {t.name}: credits must be positive")
        return cls(
            tiers=tiers,
            version_surcharge={k: int(v) for k, v in data.get("version_surcharge", {}).items()},
            quality_surcharge={k: int(v) for k, v in data["quality_surcharge"].items()},
            # A table from before job kinds priced text-to-image only.
            kind_surcharge={
                k: int(v) for k, v in data.get("kind_surcharge", {"text_to_image": 0}).items()
            },
            lora_surcharge=int(data.get("lora_surcharge", {}).get("per_lora", 0)),
        )

    @classmethod
    def load(cls, path: Path = PRICES_FILE) -> PriceTable:
        with path.open("rb") as f:
            return cls.from_dict(tomllib.load(f))

    @property
    def qualities(self) -> frozenset[str]:
        return frozenset(self.quality_surcharge)

    @property
    def kinds(self) -> frozenset[str]:
        """The job kinds this table prices (a kind without a row cannot be sold)."""
        return frozenset(self.kind_surcharge)

    def quote(
        self,
        *,
        width: int,
        height: int,
        version: str,
        quality: str = "standard",
        kind: str = "text_to_image",
        count: int = 1,
    ) -> Quote:
        """One image's price is its output size's tier + the version's, quality's and
        kind's surcharges; a job making ``count`` images costs ``count`` of them."""
        pixels = width * height
        tier = next(t for t in self.tiers if t.max_pixels is None or pixels <= t.max_pixels)
        surcharge = self.version_surcharge.get(version, self.version_surcharge.get("default", 0))
        if kind not in self.kind_surcharge:
            raise KeyError(f"the price table has no row for job kind {kind!r}")
        unit = (
            tier.credits + surcharge + self.quality_surcharge[quality] + self.kind_surcharge[kind]
        )
        return Quote(
            credits=unit * count,
            kind=kind,
            count=count,
            unit_credits=unit,
            tier=tier.name,
            megapixels=round(pixels / 1_000_000, 2),
            width=width,
            height=height,
            version=version,
            quality=quality,
        )


def with_loras(table: PriceTable, quote: Quote, loras: int) -> Quote:
    """``quote`` for a job that also applies ``loras`` LoRAs: each adds the table's
    ``lora_surcharge`` to every image."""
    unit = quote.unit_credits + loras * table.lora_surcharge
    return replace(quote, unit_credits=unit, credits=unit * quote.count, loras=loras)


@lru_cache(maxsize=1)
def default_price_table() -> PriceTable:
    return PriceTable.load()
