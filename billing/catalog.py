"""The model registry: which ``provider``/``service`` + ``version`` runs which local
pipeline directory, with its defaults, and on which ``pool`` of workers. Read from the
TOML file named by ``FLUXGATE_MODELS``; the API validates requests against it, the worker
loads from it. Weights are only ever read from ``path``: nothing is downloaded at run time.

A pool is a set of workers that load the same models and take jobs from one queue of
their own (``fluxgate worker --pool NAME``): a GPU holds one or two FLUX models, so a
large catalogue spans several pools. An entry without ``pool`` is in ``DEFAULT_POOL``."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.errors import BadUserInput

DEFAULT_POOL = "default"
# Short and plain: a pool's name is part of Redis keys, metric labels and CLI options.
POOL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def check_pool_name(name: str) -> str:
    """``name`` if it is a valid pool name (1-32 of a-z, 0-9, '-'; no '-' at either end)."""
    if not POOL_NAME.fullmatch(name):
        raise ValueError(
            f"invalid pool name {name!r}: 1-32 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )
    return name


def pool_of(params: Mapping[str, Any]) -> str:
    """The pool a job is queued on: its frozen model's (``kinds.base.model_ref`` records
    the entry's pool in ``params["model"]``). A job whose kind runs no model, or accepted
    before pools existed, is on the default pool (whose queue is the one all jobs used
    then)."""
    model = params.get("model")
    pool = model.get("pool") if isinstance(model, Mapping) else None
    return pool if isinstance(pool, str) and pool else DEFAULT_POOL


def default_family(pipeline: str) -> str:
    """The model family of a registry entry that names none, from its pipeline class."""
    return "flux.2" if pipeline.startswith("Flux2") else "flux.1"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    provider: str
    version: str
    path: Path
    pipeline: str
    steps: int
    high_quality_steps: int
    guidance: float
    max_sequence_length: int
    is_default: bool
    pool: str = DEFAULT_POOL
    # What LoRAs it takes (``family:<name>`` in a LoRA's base model, issue 13): the
    # registry's ``family``, else flux.2 for the Flux2* pipelines and flux.1 for the others
    # (the checkpoints of one family share an architecture).
    family: str = "flux.1"


@dataclass(frozen=True, slots=True)
class Catalog:
    entries: tuple[ModelEntry, ...]

    @classmethod
    def load(cls, path: Path) -> Catalog:
        with path.open("rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data, base=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: Path) -> Catalog:
        entries = []
        for raw in data.get("model", []):
            steps = int(raw.get("steps", 28))
            model_path = Path(raw["path"])
            entries.append(
                ModelEntry(
                    provider=str(raw["provider"]),
                    version=str(raw["version"]),
                    path=model_path if model_path.is_absolute() else (base / model_path).resolve(),
                    pipeline=str(raw.get("pipeline", "FluxPipeline")),
                    steps=steps,
                    high_quality_steps=int(raw.get("high_quality_steps", steps)),
                    guidance=float(raw.get("guidance", 3.5)),
                    max_sequence_length=int(raw.get("max_sequence_length", 512)),
                    is_default=bool(raw.get("default", False)),
                    pool=check_pool_name(str(raw.get("pool", DEFAULT_POOL))),
                    family=str(raw.get("family", default_family(str(raw.get("pipeline", ""))))),
                )
            )
        if not entries:
            raise ValueError("the model registry lists no [[model]]")
        seen: set[tuple[str, str]] = set()
        for e in entries:
            if (e.provider, e.version) in seen:
                raise ValueError(f"duplicate model {e.provider}/{e.version}")
            seen.add((e.provider, e.version))
        return cls(entries=tuple(entries))

    @property
    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.entries})

    @property
    def pools(self) -> list[str]:
        """Every pool the registry names, sorted."""
        return sorted({e.pool for e in self.entries})

    def in_pools(self, pools: Iterable[str]) -> list[ModelEntry]:
        """The entries of ``pools`` (what a worker serving them loads); an unknown pool
        is a ValueError naming the known ones."""
        wanted = set(pools)
        unknown = sorted(wanted - set(self.pools))
        if unknown:
            raise ValueError(
                f"unknown pool {', '.join(unknown)}; the model registry has: "
                f"{', '.join(self.pools)}"
            )
        return [e for e in self.entries if e.pool in wanted]

    def resolve(
        self,
        provider: str,
        version: str | None,
        *,
        fields: tuple[str, str] = ("provider", "version"),
    ) -> ModelEntry:
        """The entry for ``provider`` + ``version``; no version means the provider's default."""
        candidates = [e for e in self.entries if e.provider == provider]
        if not candidates:
            raise BadUserInput(
                fields[0],
                f"Unknown {fields[0]} {provider!r}; available: {', '.join(self.providers)}",
            )
        if version is None:
            return next((e for e in candidates if e.is_default), candidates[0])
        for e in candidates:
            if e.version == version:
                return e
        versions = ", ".join(e.version for e in candidates)
        raise BadUserInput(
            fields[1], f"Unknown version {version!r} for {provider!r}; available: {versions}"
        )
