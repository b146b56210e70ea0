"""Credit packs (``packs.toml``): what a Stripe payment buys."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from billing.errors import BadUserInput

PACKS_FILE = Path(__file__).with_name("packs.toml")


@dataclass(frozen=True, slots=True)
class Pack:
    id: str
    name: str
    credits: int
    price: int  # smallest currency unit
    currency: str


@dataclass(frozen=True, slots=True)
class PackList:
    packs: tuple[Pack, ...]

    @classmethod
    def load(cls, path: Path = PACKS_FILE) -> PackList:
        with path.open("rb") as f:
            data = tomllib.load(f)
        packs = tuple(
            Pack(
                id=str(p["id"]),
                name=str(p["name"]),
                credits=int(p["credits"]),
                price=int(p["price"]),
                currency=str(p["currency"]).lower(),
            )
            for p in data["pack"]
        )
        if len({p.id for p in packs}) != len(packs):
            raise ValueError("duplicate pack ids")
        if any(p.credits <= 0 or p.price <= 0 for p in packs):
            raise ValueError("pack credits and prices must be positive")
        return cls(packs=packs)

    def get(self, pack_id: str, field: str = "packId") -> Pack:
        for pack in self.packs:
            if pack.id == pack_id:
                return pack
        raise BadUserInput(field, f"unknown pack {pack_id!r}")


@lru_cache(maxsize=1)
def default_packs() -> PackList:
    return PackList.load()
