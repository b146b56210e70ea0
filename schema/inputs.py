"""GraphQL inputs, shaped exactly as seed 001's two examples."""

from __future__ import annotations

from typing import Any

import strawberry

from billing.requests import RawImageRequest
from kinds.lora import LoraChoice
from schema.kind_schema import nested_input
from schema.types import GenerationType

# The LoRA styles a job applies: the same input the job kinds take (``createJob``).
LoraChoiceInput = nested_input(LoraChoice)
LORAS = "Up to 3 LoRA styles with their scales (see `loras`); priced per LoRA."

WEBHOOK_EVENTS = (
    "Events to POST to webhookUrl: started, progress (at 25/50/75 %), completed, failed, "
    "cancelled. Default: completed, failed, cancelled."
)


@strawberry.input(description="The content to generate from.")
class GenerateContentInput:
    text: str = strawberry.field(description="The prompt.")


@strawberry.input(description="Rendering options; all optional.")
class GenerateOptionsInput:
    width: int | None = strawberry.field(default=None, description="Pixels, multiple of 16.")
    height: int | None = strawberry.field(default=None, description="Pixels, multiple of 16.")
    version: str | None = strawberry.field(default=None, description="e.g. flux-pro-1.1")
    quality: str | None = strawberry.field(default=None, description="standard | high")
    seed: int | None = strawberry.field(default=None, description="0..2147483647")
    preview: bool = strawberry.field(
        default=False, description="Send small preview images with progress updates."
    )
    # Presets (seed 002; ids from the `presets` query), applied to the prompt.
    style: str | None = None
    medium: str | None = None
    filter: str | None = None
    loras: list[LoraChoiceInput] | None = strawberry.field(default=None, description=LORAS)  # type: ignore[valid-type]


@strawberry.input(description="Input of `generate` (seed 001, first form).")
class GenerateInput:
    provider: str = strawberry.field(description="e.g. flux-pro")
    input: GenerateContentInput
    type: GenerationType = GenerationType.IMAGE
    options: GenerateOptionsInput | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = strawberry.field(default=None, description=WEBHOOK_EVENTS)

    def presets(self) -> dict[str, str | None]:
        options = self.options or GenerateOptionsInput()
        return {"style": options.style, "medium": options.medium, "filter": options.filter}

    def lora_choices(self) -> list[Any] | None:
        return (self.options or GenerateOptionsInput()).loras

    def to_raw(self) -> RawImageRequest:
        options = self.options or GenerateOptionsInput()
        return RawImageRequest(
            provider=self.provider,
            prompt=self.input.text,
            width=options.width,
            height=options.height,
            version=options.version,
            quality=options.quality,
            seed=options.seed,
            webhook_url=self.webhook_url,
            type=self.type.value,
            preview=options.preview,
            webhook_events=tuple(self.webhook_events) if self.webhook_events is not None else None,
        )


@strawberry.input(description="Input of `generateImage` and `price` (seed 001, second form).")
class ImageGenerationInput:
    service: str = strawberry.field(description="e.g. flux-pro")
    prompt: str
    width: int | None = strawberry.field(default=None, description="Default 1024.")
    height: int | None = strawberry.field(default=None, description="Default 1024.")
    version: str | None = None
    quality: str | None = None
    seed: int | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = strawberry.field(default=None, description=WEBHOOK_EVENTS)
    preview: bool = strawberry.field(
        default=False, description="Send small preview images with progress updates."
    )
    # Presets (seed 002; ids from the `presets` query), applied to the prompt.
    style: str | None = None
    medium: str | None = None
    filter: str | None = None
    loras: list[LoraChoiceInput] | None = strawberry.field(default=None, description=LORAS)  # type: ignore[valid-type]

    def presets(self) -> dict[str, str | None]:
        return {"style": self.style, "medium": self.medium, "filter": self.filter}

    def lora_choices(self) -> list[Any] | None:
        return self.loras

    def to_raw(self) -> RawImageRequest:
        return RawImageRequest(
            provider=self.service,
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            version=self.version,
            quality=self.quality,
            seed=self.seed,
            webhook_url=self.webhook_url,
            preview=self.preview,
            webhook_events=tuple(self.webhook_events) if self.webhook_events is not None else None,
        )


@strawberry.input(description="Limits replacing the plan's; null: unlimited, absent: the plan's.")
class LimitOverridesInput:
    requests_per_minute: int | None = strawberry.UNSET
    concurrent_jobs: int | None = strawberry.UNSET
    jobs_per_day: int | None = strawberry.UNSET
    max_subscriptions: int | None = strawberry.UNSET
    # Quotas (issue 13).
    retention_days: int | None = strawberry.UNSET
    storage_quota_mb: int | None = strawberry.UNSET
    max_megapixels: float | None = strawberry.UNSET
    daily: list[KindQuotaInput] | None = strawberry.field(
        default=strawberry.UNSET,
        description="Per-kind daily quotas, merged into the plan's (perDay null: unlimited).",
    )

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            name: value
            for name, value in (
                ("requests_per_minute", self.requests_per_minute),
                ("concurrent_jobs", self.concurrent_jobs),
                ("jobs_per_day", self.jobs_per_day),
                ("max_subscriptions", self.max_subscriptions),
                ("retention_days", self.retention_days),
                ("storage_quota_mb", self.storage_quota_mb),
                ("max_megapixels", self.max_megapixels),
            )
            if value is not strawberry.UNSET
        }
        if self.daily is not strawberry.UNSET:
            found["daily"] = {q.kind: q.per_day for q in self.daily or []}
        return found


@strawberry.input(description="Profile fields to change; absent: unchanged, null: cleared.")
class ProfileInput:
    display_name: str | None = strawberry.UNSET
    default_model: str | None = strawberry.field(
        default=strawberry.UNSET, description="A service of the model registry."
    )
    default_quality: str | None = strawberry.UNSET
    email_notifications: bool | None = strawberry.UNSET
    webhook_enabled: bool | None = strawberry.UNSET

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not strawberry.UNSET}


@strawberry.input(description="A daily quota of one job kind.")
class KindQuotaInput:
    kind: str
    per_day: int | None = None
