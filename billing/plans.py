"""Plans and the limits they set. The table is data (``plans.toml``); an account's
``limit_overrides`` replace single values (enterprise contracts)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from billing.errors import BadUserInput

PLANS_FILE = Path(__file__).with_name("plans.toml")
LIMIT_NAMES = ("requests_per_minute", "concurrent_jobs", "jobs_per_day", "max_subscriptions")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """None means unlimited."""

    requests_per_minute: int | None
    concurrent_jobs: int | None
    jobs_per_day: int | None
    # Open GraphQL subscriptions at once, over every connection and API process.
    max_subscriptions: int | None


@dataclass(frozen=True, slots=True)
class PlanBook:
    plans: dict[str, PlanLimits]

    @classmethod
    def load(cls, path: Path = PLANS_FILE) -> PlanBook:
        with path.open("rb") as f:
            data = tomllib.load(f)
        plans = {}
        for name, raw in data["plan"].items():
            unknown = set(raw) - set(LIMIT_NAMES)
            if unknown:
                raise ValueError(f"plan {name}: unknown limits {sorted(unknown)}")
            plans[name] = PlanLimits(**{k: _limit(raw.get(k), k) for k in LIMIT_NAMES})
        return cls(plans=plans)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.plans)

    def check_plan(self, plan: str) -> str:
        if plan not in self.plans:
            raise BadUserInput("plan", f"plan must be one of {', '.join(self.plans)}")
        return plan

    def limits(self, plan: str, overrides: dict[str, Any] | None = None) -> PlanLimits:
        base = self.plans[self.check_plan(plan)]
        return replace(base, **validate_overrides(overrides)) if overrides else base


def _limit(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadUserInput(name, f"{name} must be a non-negative integer or null (unlimited)")
    return value


def validate_overrides(overrides: dict[str, Any]) -> dict[str, int | None]:
    unknown = set(overrides) - set(LIMIT_NAMES)
    if unknown:
        raise BadUserInput("overrides", f"unknown limits {sorted(unknown)}; use {LIMIT_NAMES}")
    return {k: _limit(v, k) for k, v in overrides.items()}


@lru_cache(maxsize=1)
def default_plan_book() -> PlanBook:
    return PlanBook.load()
