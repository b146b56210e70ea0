"""The LoRA catalogue (issue 13): styles operators add (``fluxgate lora``, the admin
mutations) and users apply to text-to-image and image-to-image jobs.

A LoRA names its weight file by a local path the workers read (never downloaded), and
the model it was trained for (``base_model``): a registry ``provider`` (any of its
versions), ``provider/version``, or ``family:<name>`` (every model of that family; the
registry's ``family``, ``flux.1`` unless it says otherwise). A job freezes the LoRAs it
uses, path included (``kinds.lora``), so the catalogue may change under accepted jobs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.catalog import Catalog, ModelEntry
from billing.errors import BadUserInput, Conflict, NotFound
from billing.models import Lora, utcnow

MAX_PER_JOB = 3
MIN_SCALE = 0.0
MAX_SCALE = 2.0
MAX_TRIGGER_WORDS = 10
# Short and plain: an id is what clients send (seed 000's "anime-style-v2").
LORA_ID = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
FAMILY_PREFIX = "family:"


def fits(base_model: str, entry: ModelEntry) -> bool:
    """Whether a LoRA trained for ``base_model`` may run on the registry's ``entry``."""
    if base_model.startswith(FAMILY_PREFIX):
        return base_model.removeprefix(FAMILY_PREFIX) == entry.family
    provider, _, version = base_model.partition("/")
    return provider == entry.provider and (not version or version == entry.version)


def check_id(lora_id: str) -> str:
    if not LORA_ID.fullmatch(lora_id):
        raise BadUserInput("id", f"invalid LoRA id {lora_id!r}: 1-64 of a-z, 0-9, '.', '_', '-'")
    return lora_id


def check_base_model(base_model: str, catalog: Catalog) -> str:
    """``base_model`` if at least one model of the registry fits it."""
    base_model = base_model.strip()
    if not any(fits(base_model, e) for e in catalog.entries):
        known = sorted(
            {e.provider for e in catalog.entries}
            | {f"{e.provider}/{e.version}" for e in catalog.entries}
            | {f"{FAMILY_PREFIX}{e.family}" for e in catalog.entries}
        )
        raise BadUserInput(
            "base_model",
            f"base_model {base_model!r} matches no model of the registry; use one of: "
            f"{', '.join(known)}",
        )
    return base_model


def check_path(path: str) -> str:
    """An absolute path to a ``.safetensors`` file (the only format loaded: it cannot run
    code, unlike a pickled checkpoint)."""
    path = path.strip()
    pure = PurePosixPath(path)
    if not pure.is_absolute() or pure.suffix != ".safetensors" or ".." in pure.parts:
        raise BadUserInput("path", "path must be an absolute path to a .safetensors file")
    return path


def check_scale(scale: float, field: str = "default_scale") -> float:
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise BadUserInput(field, f"{field} must be between {MIN_SCALE} and {MAX_SCALE}")
    return float(scale)


def check_text(value: str, field: str, max_length: int) -> str:
    value = value.strip()
    if not 0 < len(value) <= max_length:
        raise BadUserInput(field, f"{field} must be 1 to {max_length} characters")
    return value


def check_trigger_words(words: Iterable[str]) -> list[str]:
    cleaned = [w.strip() for w in words if w.strip()]
    if len(cleaned) > MAX_TRIGGER_WORDS or any(len(w) > 100 for w in cleaned):
        raise BadUserInput(
            "trigger_words", f"at most {MAX_TRIGGER_WORDS} trigger words of 100 characters"
        )
    return cleaned


@dataclass(frozen=True, slots=True)
class LoraChanges:
    """What an operator sets on a LoRA; ``None``: unchanged (or the default, on add)."""

    name: str | None = None
    category: str | None = None
    base_model: str | None = None
    path: str | None = None
    trigger_words: Sequence[str] | None = None
    default_scale: float | None = None
    description: str | None = None
    enabled: bool | None = None


def _apply(lora: Lora, changes: LoraChanges, catalog: Catalog) -> None:
    if changes.name is not None:
        lora.name = check_text(changes.name, "name", 100)
    if changes.category is not None:
        lora.category = check_text(changes.category, "category", 64).lower()
    if changes.base_model is not None:
        lora.base_model = check_base_model(changes.base_model, catalog)
    if changes.path is not None:
        lora.path = check_path(changes.path)
    if changes.trigger_words is not None:
        lora.trigger_words = check_trigger_words(changes.trigger_words)
    if changes.default_scale is not None:
        lora.default_scale = check_scale(changes.default_scale)
    if changes.description is not None:
        lora.description = changes.description.strip()[:500]
    if changes.enabled is not None:
        lora.enabled = changes.enabled


async def add(
    session: AsyncSession, lora_id: str, changes: LoraChanges, *, catalog: Catalog
) -> Lora:
    """A new LoRA; CONFLICT if the id is taken. name, category, base_model and path are
    required."""
    check_id(lora_id)
    for field in ("name", "category", "base_model", "path"):
        if getattr(changes, field) is None:
            raise BadUserInput(field, f"{field} is required")
    if await repo.get_lora(session, lora_id) is not None:
        raise Conflict(f"LoRA {lora_id!r} already exists")
    lora = Lora(id=lora_id, name="", category="", base_model="", path="")
    _apply(lora, changes, catalog)
    await repo.add(session, lora)
    return lora


async def update(
    session: AsyncSession, lora_id: str, changes: LoraChanges, *, catalog: Catalog
) -> Lora:
    lora = await get(session, lora_id)
    _apply(lora, changes, catalog)
    lora.updated_at = utcnow()
    await repo.add(session, lora)
    return lora


async def remove(session: AsyncSession, lora_id: str) -> Lora:
    """Delete a LoRA from the catalogue (jobs that froze it still run it)."""
    lora = await get(session, lora_id)
    await repo.delete_lora(session, lora)
    return lora


async def get(session: AsyncSession, lora_id: str) -> Lora:
    lora = await repo.get_lora(session, lora_id)
    if lora is None:
        raise NotFound("LoRA")
    return lora


async def list_loras(
    session: AsyncSession, *, category: str | None = None, include_disabled: bool = False
) -> list[Lora]:
    """The catalogue by category then name; users see only the enabled LoRAs."""
    return await repo.list_loras(
        session,
        category=category.strip().lower() if category else None,
        enabled_only=not include_disabled,
    )


def categories(loras: Iterable[Lora]) -> list[tuple[str, int]]:
    """Each category of ``loras`` with how many LoRAs it has, by name."""
    counts: dict[str, int] = {}
    for lora in loras:
        counts[lora.category] = counts.get(lora.category, 0) + 1
    return sorted(counts.items())


async def lookup(session: AsyncSession, lora_ids: Sequence[str]) -> dict[str, Lora]:
    """The rows a job names, by id, in one query (checked by ``kinds.lora``)."""
    return {lora.id: lora for lora in await repo.loras_by_id(session, lora_ids)}
