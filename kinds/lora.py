"""LoRA styles on the FLUX kinds that take them (text_to_image, image_to_image): the
``loras`` parameter, and freezing the chosen LoRAs into a job at submit.

A request names up to three catalogue LoRAs with optional scales (``loras: [{id,
scale}]``). ``schema.jobs.prepare`` looks their rows up (one query, only when the request
names some) into ``PlanContext.loras``; :func:`apply` checks them against the job's model
and freezes each one's weight file path, scale and adapter name into ``params["loras"]``,
so the worker never re-resolves them (``gpu_worker.pipeline`` loads and caches them).

Each LoRA's trigger words are appended to the prompt the pipeline sees (``, word`` for
each word the prompt does not already contain); the job's ``prompt`` column keeps the
client's prompt. Each LoRA adds ``prices.toml``'s ``lora_surcharge.per_lora`` to every
image's price.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from pydantic import Field

from billing.catalog import ModelEntry
from billing.errors import BadUserInput
from billing.pricing import with_loras
from billing.service.loras import MAX_PER_JOB, MAX_SCALE, MIN_SCALE, fits
from kinds.base import KindParams, Plan, PlanContext


class LoraChoice(KindParams):
    """One LoRA a job applies."""

    id: str = Field(min_length=1, max_length=64, description="A LoRA of `loras`.")
    scale: float | None = Field(
        default=None,
        ge=MIN_SCALE,
        le=MAX_SCALE,
        description=f"Its weight, {MIN_SCALE}..{MAX_SCALE}; omitted: the LoRA's default.",
    )


def loras_field() -> Any:
    """The ``loras`` parameter of a kind that takes LoRAs."""
    return Field(
        default=None,
        max_length=MAX_PER_JOB,
        description=f"Up to {MAX_PER_JOB} LoRA styles with their scales (see `loras`).",
    )


def requested(params: KindParams) -> list[str]:
    """The LoRA ids a request names (none for a kind without ``loras``)."""
    choices = getattr(params, "loras", None)
    return [c.id for c in choices] if choices else []


def adapter_name(lora_id: str, path: str) -> str:
    """The adapter's name on the worker's pipeline: one per LoRA id and weight file, so
    pointing a LoRA at another file loads that file rather than reusing the old one."""
    return "lora_" + hashlib.sha256(f"{lora_id}\0{path}".encode()).hexdigest()[:16]


def apply(
    plan: Plan, choices: tuple[LoraChoice, ...] | None, entry: ModelEntry, ctx: PlanContext
) -> Plan:
    """``plan`` with its LoRAs checked and frozen, their trigger words appended to the
    prompt and their surcharge added; ``plan`` itself when there are none."""
    if not choices:
        return plan
    frozen: list[dict[str, Any]] = []
    triggers: list[str] = []
    seen: set[str] = set()
    for n, choice in enumerate(choices):
        field = f"loras.{n}.id"
        if choice.id in seen:
            raise BadUserInput(field, f"LoRA {choice.id!r} is named twice")
        seen.add(choice.id)
        lora = ctx.loras.get(choice.id)
        # A disabled LoRA reads as an unknown one: users only see the enabled catalogue.
        if lora is None or not lora.enabled:
            raise BadUserInput(field, f"unknown LoRA {choice.id!r}; see the `loras` query")
        if not fits(lora.base_model, entry):
            raise BadUserInput(
                field,
                f"LoRA {choice.id!r} is for {lora.base_model}, not this job's model "
                f"{entry.provider}/{entry.version}",
            )
        frozen.append(
            {
                "id": lora.id,
                "path": lora.path,
                "scale": lora.default_scale if choice.scale is None else choice.scale,
                "adapter": adapter_name(lora.id, lora.path),
            }
        )
        triggers.extend(lora.trigger_words)
    prompt = str(plan.params["prompt"])
    lowered = prompt.lower()
    added = [w for w in dict.fromkeys(triggers) if w.lower() not in lowered]
    if added:
        prompt = ", ".join([prompt, *added])
    params = {**plan.params, "prompt": prompt, "loras": frozen}
    return replace(
        plan,
        params=params,
        quote=with_loras(ctx.prices, plan.quote, len(frozen)),
        metadata={**plan.metadata, "loras": [f["id"] for f in frozen]},
    )
