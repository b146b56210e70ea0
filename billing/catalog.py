"""The model registry: which ``provider``/``service`` + ``version`` runs which local
pipeline directory, with its defaults. Read from the TOML file named by
``FLUXGATE_MODELS``; the API validates requests against it, the worker loads from it.
Weights are only ever read from ``path``: nothing is downloaded at run time."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.errors import BadUserInput


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
