"""LoRA adapters on the worker's loaded pipelines (issue 13).

A job's LoRAs are frozen in its params (``kinds.lora``: weight file path, scale, adapter
name). Adapters live on the transformer, which every pipeline made from one model
directory shares (``LoadedPipelines.get``): so the cache is kept per directory, and
whatever pipeline class a job asks for sees the adapters in the state this job needs.

* An adapter is loaded once (``load_lora_weights(path, adapter_name=...)``) and kept; a
  later job using it only switches the weights (``set_adapters``).
* A job without LoRAs, on any pipeline of that directory, runs with the adapters
  disabled (``disable_lora``): peft's layers then compute only the base layer, so its
  images equal those of a pipeline that never loaded a LoRA.
* At most ``max_adapters`` adapters stay loaded per directory: past that the least
  recently used ones a job is not using are deleted (``delete_adapters``).

Used only from the one pipeline thread (``PipelineRunner``), like the pipelines.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_ADAPTERS = 8


@dataclass(slots=True)
class LoraStats:
    """What the cache did, for tests and the worker's log."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    loaded: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _ModelAdapters:
    """The adapters loaded on one model directory's transformer, least recent first."""

    loaded: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter -> path
    active: bool = False
    weights: tuple[tuple[str, float], ...] = ()


class LoraCache:
    def __init__(self, max_adapters: int = DEFAULT_MAX_ADAPTERS) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.max_adapters = max_adapters
        self.stats = LoraStats()
        self._models: dict[Path, _ModelAdapters] = {}

    def apply(self, model_dir: Path, pipe: Any, loras: Sequence[Mapping[str, Any]]) -> None:
        """Put ``pipe`` (a pipeline of ``model_dir``) in the state a job with ``loras``
        needs: those adapters active with their scales, or none."""
        state = self._models.get(model_dir)
        if not loras:
            if state is not None and state.active:
                pipe.disable_lora()
                state.active = False
            return
        if state is None:
            state = self._models[model_dir] = _ModelAdapters()
        wanted = [(str(lora["adapter"]), float(lora["scale"])) for lora in loras]
        for lora in loras:
            name = str(lora["adapter"])
            if name in state.loaded:
                state.loaded.move_to_end(name)
                self.stats.hits += 1
                continue
            path = str(lora["path"])
            if not Path(path).is_file():
                raise FileNotFoundError(f"LoRA {lora.get('id')!r}: no weight file at {path}")
            started = time.perf_counter()
            try:
                pipe.load_lora_weights(path, adapter_name=name)
            except BaseException:
                # A file that does not fit the model may leave a half-injected adapter:
                # remove it, and have the next job without LoRAs disable adapters anyway.
                with contextlib.suppress(Exception):
                    pipe.delete_adapters(name)
                state.active = True
                state.weights = ()
                raise
            state.loaded[name] = path
            # Loading makes the new adapter the only active one: set the job's set again.
            state.weights = ()
            self.stats.loads += 1
            log.info(
                "loaded LoRA %s (%s) on %s in %.2fs",
                lora.get("id"), name, model_dir, time.perf_counter() - started,
            )  # fmt: skip
        self._evict(model_dir, pipe, state, keep={name for name, _ in wanted})
        if not state.active:
            pipe.enable_lora()
            state.active = True
            state.weights = ()
        if state.weights != tuple(wanted):
            pipe.set_adapters([n for n, _ in wanted], adapter_weights=[w for _, w in wanted])
            state.weights = tuple(wanted)
        self.stats.loaded = [n for s in self._models.values() for n in s.loaded]

    def _evict(self, model_dir: Path, pipe: Any, state: _ModelAdapters, keep: set[str]) -> None:
        while len(state.loaded) > self.max_adapters:
            victim = next((n for n in state.loaded if n not in keep), None)
            if victim is None:
                return
            pipe.delete_adapters(victim)
            del state.loaded[victim]
            # set_adapters must run again: the active set may have named it.
            state.weights = ()
            self.stats.evictions += 1
            log.info("evicted LoRA adapter %s from %s", victim, model_dir)
