"""Text embeddings kept for repeated prompts.

A FLUX.1 prompt goes through CLIP-L and T5-XXL (a 4.7B-parameter encoder) before the
first denoising step; a served prompt is often sent again (retries, ``count`` variants,
seeds explored). :class:`PromptCache` wraps a pipeline's own ``encode_prompt`` so that the
same call is encoded once: any diffusers pipeline's, since the key is the call's bound
arguments (prompt, prompt_2, max_sequence_length, num_images_per_prompt, lora_scale,
device, the text encoder layers of FLUX.2...) under the model directory and the method.

Not cached: a call that passes tensors (precomputed embeddings: nothing to save), or a
pipeline one of whose text encoders has a LoRA injected (its output depends on which
adapters are active, which the arguments do not say). The cached tensors are returned as
they are: diffusers' pipelines only read them (they repeat or concatenate into new ones).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["PromptCache"]

_TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def _frozen(value: Any) -> Hashable | None:
    """A hashable stand-in for an argument, or None when it cannot key a cache entry."""
    if value is None or isinstance(value, str | int | float | bool):
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        items = [_frozen(v) for v in value]
        return None if any(i is None for i in items) else ("seq", *items)
    if type(value).__name__ == "device":  # torch.device, without importing torch here
        return ("device", str(value))
    return None


class PromptCache:
    """A bounded LRU of ``encode_prompt`` results, shared by every pipeline it wraps.

    Used from the worker's one pipeline thread; the lock only guards the counters and
    the order for readers elsewhere (metrics, tests).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a prompt cache holds at least one entry")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def wrap(self, pipe: Any, model: str) -> None:
        """Make ``pipe.encode_prompt`` (an instance attribute shadowing the method) go
        through this cache under ``model`` (the model directory). Wrapping twice is a
        no-op."""
        original = pipe.encode_prompt
        if getattr(original, "__prompt_cache__", None) is self:
            return
        signature = inspect.signature(original)
        method = f"{type(pipe).__qualname__}.encode_prompt"

        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = self._key(pipe, model, method, bound.arguments)
            if key is None:
                return original(*args, **kwargs)
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key]
                self.misses += 1
            value = original(*args, **kwargs)
            with self._lock:
                self._entries[key] = value
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            return value

        encode_prompt.__prompt_cache__ = self  # type: ignore[attr-defined]  # marks ours
        pipe.encode_prompt = encode_prompt

    @staticmethod
    def _key(pipe: Any, model: str, method: str, arguments: dict[str, Any]) -> Hashable | None:
        for name in _TEXT_ENCODERS:
            if getattr(getattr(pipe, name, None), "peft_config", None):
                return None  # a LoRA in a text encoder: the arguments do not say which
        items: list[Hashable] = [model, method]
        for name, value in sorted(arguments.items()):
            frozen = _frozen(value)
            if frozen is None:
                return None  # a tensor (precomputed embeddings) or another object
            items.append((name, frozen))
        return tuple(items)
