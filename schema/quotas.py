"""Presets, usage and quotas, the low-credit alert (issue 13): thin resolvers over
``billing.presets`` and ``billing.service.quotas``."""

from __future__ import annotations

from datetime import date

import strawberry
from strawberry.types import Info

from billing.presets import Preset as PresetModel
from billing.presets import default_presets
from billing.requests import validate_webhook
from billing.service import quotas
from schema.context import Context
from schema.scalars import UtcDateTime

Ctx = Info[Context, None]


@strawberry.type(description="A style, medium or filter preset (seed 002): a prompt template.")
class Preset:
    id: strawberry.ID = strawberry.field(description="Pass as style, medium or filter.")
    category: str = strawberry.field(description="style | medium | filter")
    name: str
    template: str = strawberry.field(description="{prompt} is the job's prompt.")

    @classmethod
    def from_model(cls, p: PresetModel) -> Preset:
        return cls(id=strawberry.ID(p.id), category=p.category, name=p.name, template=p.template)


@strawberry.type(description="Jobs submitted and credits spent on one UTC day.")
class UsageDay:
    day: date
    jobs: int
    credits: int


@strawberry.type(description="One job kind: jobs over the report's days, today, and its quota.")
class KindUsage:
    kind: str
    jobs: int
    today: int
    daily_quota: int | None = strawberry.field(description="Jobs per UTC day; null: none.")
    remaining: int | None = strawberry.field(description="Left today; null: no quota.")


@strawberry.type(description="Storage used by the account's images (inputs and outputs).")
class StorageUsage:
    used_bytes: float = strawberry.field(description="Bytes (a Float: may exceed 2^31).")
    used_mb: float
    quota_mb: int | None = strawberry.field(description="Null: unlimited.")
    percent_used: float | None
    retention_days: int | None = strawberry.field(description="Null: images are kept forever.")


@strawberry.type(description="Usage and what is left of each quota (seed 000's stats).")
class Usage:
    days: list[UsageDay] = strawberry.field(description="Oldest first, zeros included.")
    kinds: list[KindUsage]
    credits_spent: int = strawberry.field(description="Captured over the report's days.")
    credits_available: int
    jobs_today: int
    jobs_per_day: int | None
    jobs_remaining: int | None
    storage: StorageUsage
    max_megapixels: float | None
    reset_at: UtcDateTime = strawberry.field(description="When daily quotas reset (UTC 00:00).")
    low_credit_threshold: int | None
    low_credit: bool = strawberry.field(description="The balance is below the threshold.")


@strawberry.type(description="The low-credit alert's settings.")
class LowCreditAlert:
    threshold: int | None = strawberry.field(description="Null: off.")
    webhook_url: str | None = strawberry.field(
        description="Where credits.low goes; null: the webhookUrl of the job whose debit crossed."
    )
    credits_available: int
    low_credit: bool


@strawberry.type
class QuotaQuery:
    @strawberry.field(description="The style, medium and filter presets (seed 002).")
    def presets(self, category: str | None = None) -> list[Preset]:
        return [Preset.from_model(p) for p in default_presets().all(category)]

    @strawberry.field(description="The caller's usage over the last `days` UTC days and quotas.")
    async def usage(self, info: Ctx, days: int = 14) -> Usage:
        ctx = info.context
        caller = await ctx.caller()
        limits = await ctx.limits()
        async with ctx.read() as session:
            found = await quotas.usage(session, caller.account.id, limits, days=days)
            threshold, _, available = await quotas.low_credit_settings(session, caller.account.id)
        return Usage(
            days=[UsageDay(day=d.day, jobs=d.jobs, credits=d.credits) for d in found.days],
            kinds=[
                KindUsage(
                    kind=k.kind,
                    jobs=k.jobs,
                    today=k.today,
                    daily_quota=k.daily_quota,
                    remaining=k.remaining,
                )
                for k in found.kinds
            ],
            credits_spent=found.credits_spent,
            credits_available=available,
            jobs_today=found.jobs_today,
            jobs_per_day=found.jobs_per_day,
            jobs_remaining=found.jobs_remaining,
            storage=StorageUsage(
                used_bytes=float(found.storage_used_bytes),
                used_mb=found.storage_used_mb,
                quota_mb=found.storage_quota_mb,
                percent_used=found.storage_percent,
                retention_days=found.retention_days,
            ),
            max_megapixels=found.max_megapixels,
            reset_at=UtcDateTime(found.reset_at),
            low_credit_threshold=threshold,
            low_credit=quotas.below_threshold(available, threshold),
        )


@strawberry.type
class QuotaMutation:
    @strawberry.mutation(
        description="Send a credits.low webhook when a debit takes the balance below "
        "`threshold` (once per crossing); null turns it off."
    )
    async def set_low_credit_threshold(
        self, info: Ctx, threshold: int | None, webhook_url: str | None = None
    ) -> LowCreditAlert:
        ctx = info.context
        caller = await ctx.caller()
        url, _ = validate_webhook(webhook_url, None, ctx.services.policy, fields=("webhookUrl", ""))
        async with ctx.transaction() as uow:
            await quotas.set_low_credit_threshold(uow.session, caller.account.id, threshold, url)
            saved, saved_url, available = await quotas.low_credit_settings(
                uow.session, caller.account.id
            )
        return LowCreditAlert(
            threshold=saved,
            webhook_url=saved_url,
            credits_available=available,
            low_credit=quotas.below_threshold(available, saved),
        )
