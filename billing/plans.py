"""Plans and the limits they set. The table is data (``plans.toml``); an account's
``limit_overrides`` replace single values (enterprise contracts)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from billing.errors import BadUserInput

PLANS_FILE = Path(__file__).with_name("plans.toml")
LIMIT_NAMES = (
    "requests_per_minute",
    "concurrent_jobs",
    "jobs_per_day",
    "max_subscriptions",
    "retention_days",
    "storage_quota_mb",
)
# Not an integer: a megapixel cap such as 1.05 (1024x1024).
MAX_MEGAPIXELS = "max_megapixels"
# A table of per-kind daily quotas ({kind: jobs per UTC day}); an override merges into
# the plan's, kind by kind (null: unlimited for that kind).
DAILY = "daily"
OVERRIDE_NAMES = (*LIMIT_NAMES, MAX_MEGAPIXELS, DAILY)


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """None means unlimited."""

    requests_per_minute: int | None
    concurrent_jobs: int | None
    jobs_per_day: int | None
    # Open GraphQL subscriptions at once, over every connection and API process.
    max_subscriptions: int | None
    # Quotas (issue 13). Days an asset is kept (None: forever).
    retention_days: int | None = None
    storage_quota_mb: int | None = None
    # Largest image (width x height / 1e6) a job may make.
    max_megapixels: float | None = None
    # Jobs per UTC day per kind (a kind not named: unlimited).
    daily: Mapping[str, int] = field(default_factory=dict)

    def daily_quota(self, kind: str) -> int | None:
        return self.daily.get(kind)

    def needs_lock(self, kind: str) -> bool:
        """Whether accepting a job of ``kind`` counts or reads anything under the
        account's row lock (``generations.submit``): not for an uncapped account."""
        return (
            self.concurrent_jobs is not None
            or self.jobs_per_day is not None
            or self.storage_quota_mb is not None
            or kind in self.daily
        )


@dataclass(frozen=True, slots=True)
class PlanBook:
    plans: dict[str, PlanLimits]

    @classmethod
    def load(cls, path: Path = PLANS_FILE) -> PlanBook:
        with path.open("rb") as f:
            data = tomllib.load(f)
        plans = {}
        for name, raw in data["plan"].items():
            unknown = set(raw) - set(OVERRIDE_NAMES)
            if unknown:
                raise ValueError(f"plan {name}: unknown limits {sorted(unknown)}")
            plans[name] = PlanLimits(
                **{k: _limit(raw.get(k), k) for k in LIMIT_NAMES},
                max_megapixels=_megapixels(raw.get(MAX_MEGAPIXELS)),
                daily=_daily(raw.get(DAILY) or {}, drop_unlimited=True),
            )
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
        if not overrides:
            return base
        values: dict[str, Any] = dict(validate_overrides(overrides))
        if DAILY in values:
            merged = {**base.daily, **values[DAILY]}
            values[DAILY] = {k: v for k, v in merged.items() if v is not None}
        return replace(base, **values)


def _limit(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadUserInput(name, f"{name} must be a non-negative integer or null (unlimited)")
    return value


def _megapixels(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadUserInput(MAX_MEGAPIXELS, "max_megapixels must be a positive number or null")
    return float(value)


def _daily(value: Any, *, drop_unlimited: bool = False) -> dict[str, Any]:
    """``{kind: quota}``; a null quota is unlimited (kept in an override, where it undoes
    the plan's quota for that kind)."""
    if not isinstance(value, dict):
        raise BadUserInput(DAILY, "daily must be an object of kind names to jobs per day")
    found: dict[str, Any] = {}
    for kind, quota in value.items():
        if not isinstance(kind, str) or not kind.isidentifier() or len(kind) > 32:
            raise BadUserInput(DAILY, f"daily: {kind!r} is not a kind name")
        found[kind] = _limit(quota, f"daily.{kind}")
    return {k: v for k, v in found.items() if v is not None} if drop_unlimited else found


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(OVERRIDE_NAMES)
    if unknown:
        raise BadUserInput("overrides", f"unknown limits {sorted(unknown)}; use {OVERRIDE_NAMES}")
    values: dict[str, Any] = {}
    for k, v in overrides.items():
        if k == MAX_MEGAPIXELS:
            values[k] = _megapixels(v)
        elif k == DAILY:
            values[k] = _daily(v)
        else:
            values[k] = _limit(v, k)
    return values


@lru_cache(maxsize=1)
def default_plan_book() -> PlanBook:
    return PlanBook.load()
