"""Style, medium and filter presets (seed 002): prompt templates a text-to-image or
image-to-image job may name. The table is data (``presets.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from billing.errors import BadUserInput

PRESETS_FILE = Path(__file__).with_name("presets.toml")
CATEGORIES = ("style", "medium", "filter")
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True, slots=True)
class Preset:
    category: str  # style | medium | filter
    id: str
    name: str
    template: str

    def apply(self, prompt: str) -> str:
        # Plain replacement, not str.format: a prompt's own braces stay as they are.
        return self.template.replace(PLACEHOLDER, prompt)


@dataclass(frozen=True, slots=True)
class PresetBook:
    presets: dict[str, dict[str, Preset]]  # category → id → preset, in file order

    @classmethod
    def load(cls, path: Path = PRESETS_FILE) -> PresetBook:
        with path.open("rb") as f:
            data = tomllib.load(f)
        unknown = set(data) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"presets: unknown categories {sorted(unknown)}")
        presets: dict[str, dict[str, Preset]] = {}
        for category in CATEGORIES:
            presets[category] = {}
            for preset_id, raw in data.get(category, {}).items():
                template = str(raw["template"])
                if PLACEHOLDER not in template:
                    raise ValueError(f"preset {category}.{preset_id}: no {PLACEHOLDER}")
                presets[category][preset_id] = Preset(
                    category, preset_id, str(raw["name"]), template
                )
        return cls(presets=presets)

    def all(self, category: str | None = None) -> list[Preset]:
        if category is not None:
            self._category(category)
        return [p for c in CATEGORIES if category in (None, c) for p in self.presets[c].values()]

    def _category(self, category: str) -> dict[str, Preset]:
        if category not in self.presets:
            raise BadUserInput("category", f"category must be one of {', '.join(CATEGORIES)}")
        return self.presets[category]

    def get(self, category: str, preset_id: str, field: str | None = None) -> Preset:
        """The preset, or BAD_USER_INPUT naming ``field`` (default: the category)."""
        found = self._category(category).get(preset_id)
        if found is None:
            raise BadUserInput(
                field or category,
                f"unknown {category} {preset_id!r}; use one of {', '.join(self.presets[category])}",
            )
        return found

    def apply(
        self, prompt: str, *, style: str | None, medium: str | None, filter: str | None
    ) -> tuple[str, dict[str, str | None]]:
        """The prompt with the named presets applied (style, medium, filter), and the
        preset ids to freeze into the job's params."""
        chosen = {"style": style, "medium": medium, "filter": filter}
        for category, preset_id in chosen.items():
            if preset_id is not None:
                prompt = self.get(category, preset_id).apply(prompt)
        return prompt, chosen


@lru_cache(maxsize=1)
def default_presets() -> PresetBook:
    return PresetBook.load()
