"""Style, medium and filter presets on the FLUX kinds that take a prompt (seed 002):
validated against ``billing/presets.toml`` and applied to the prompt at submit, so the
job's frozen params hold the final prompt and the preset ids (``style``, ``medium``,
``filter``: the image library filters on them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from pydantic import Field

from billing.presets import default_presets
from kinds.base import KindParams, Plan


class PresetOptions(KindParams):
    style: str | None = Field(
        default=None, max_length=32, description="A style preset id (see the presets query)."
    )
    medium: str | None = Field(default=None, max_length=32, description="A medium preset id.")
    filter: str | None = Field(default=None, max_length=32, description="A filter preset id.")


def with_presets(plan: Plan, options: PresetOptions) -> Plan:
    """``plan`` with the named presets applied to its prompt (BAD_USER_INPUT naming the
    field for an unknown id); the ids are frozen into its params, null when not used."""
    return apply_presets(plan, style=options.style, medium=options.medium, filter=options.filter)


def apply_presets(plan: Plan, *, style: str | None, medium: str | None, filter: str | None) -> Plan:
    prompt, chosen = default_presets().apply(plan.prompt, style=style, medium=medium, filter=filter)
    params = {**plan.params, "prompt": prompt, **chosen}
    return replace(plan, params=params, prompt=prompt)


def presets_fingerprint(request_hash: str, chosen: dict[str, str | None]) -> str:
    """An idempotency fingerprint that covers the presets too (unchanged without any,
    so a request sent before presets existed still matches its retry)."""
    if not any(chosen.values()):
        return request_hash
    extra = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request_hash}|{extra}".encode()).hexdigest()
