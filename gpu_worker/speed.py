"""The worker's speed settings, applied to a pipeline as it is loaded.

``FLUXGATE_COMPILE``, ``FLUXGATE_FUSE_QKV``, ``FLUXGATE_QUANTIZATION``,
``FLUXGATE_ATTENTION_BACKEND``, ``FLUXGATE_VAE_TILING``, ``FLUXGATE_VAE_CHANNELS_LAST`` and
``FLUXGATE_PROMPT_CACHE`` (runtime/settings.py) become a :class:`SpeedOptions`;
:meth:`Speed.check` refuses, before any model is loaded, what this device cannot run (FP8
anywhere but a CUDA GPU of compute capability 8.9+ with torchao; an attention backend
diffusers does not know), and :meth:`Speed.apply` changes a freshly loaded pipeline in
this order:

1. fused QKV projections (one matmul instead of three per attention; exact up to
   rounding);
2. FP8 dynamic quantization of the transformer's linear layers (torchao float8, per-row
   scales; lossy: off by default, and ``bench/gpu.py`` prints its pixel difference);
3. the attention backend (diffusers' dispatcher: torch SDPA's cuDNN or flash kernels,
   flash-attn 2/3, sage...);
4. the VAE: tiled decode (bounded memory at large sizes) and channels-last convolutions;
5. regional ``torch.compile``: only the transformer's repeated blocks
   (``ModelMixin.compile_repeated_blocks``), each block class compiled once and reused by
   its 19/38 (FLUX.1) instances, so the cold start is one block's compile, not the
   model's. Compilation itself happens on the first run: the worker's warm-up, which
   runs before the worker is announced;
6. the prompt-embedding cache (gpu_worker/prompt_cache.py).

Nothing here runs on import; torch and diffusers are imported when used.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gpu_worker.prompt_cache import PromptCache

if TYPE_CHECKING:
    from runtime.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["FP8_MIN_CAPABILITY", "Speed", "SpeedOptions", "SpeedUnavailable", "fp8_unavailable"]

FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have FP8 tensor cores; Ampere does not.


class SpeedUnavailable(ValueError):
    """A speed setting this worker cannot honour; the message names the setting."""


@dataclass(frozen=True, slots=True)
class SpeedOptions:
    compile: Literal["off", "regional"] = "off"
    fuse_qkv: bool = False
    quantization: Literal["none", "fp8"] = "none"
    attention_backend: str = "default"
    vae_tiling: bool = False
    vae_channels_last: bool = False
    prompt_cache: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeedOptions:
        return cls(
            compile=settings.compile,
            fuse_qkv=settings.fuse_qkv,
            quantization=settings.quantization,
            attention_backend=settings.attention_backend,
            vae_tiling=settings.vae_tiling,
            vae_channels_last=settings.vae_channels_last,
            prompt_cache=settings.prompt_cache,
        )


def fp8_unavailable(device: str) -> str | None:
    """Why FP8 quantization cannot run on ``device`` here, or None when it can."""
    import torch

    if not device.startswith("cuda"):
        return f"FP8 needs a CUDA GPU; this worker runs on {device}"
    if not torch.cuda.is_available():
        return "FP8 needs a CUDA GPU; torch sees none"
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_MIN_CAPABILITY:
        return (
            f"FP8 needs compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+ "
            f"(Ada, Hopper or newer); {torch.cuda.get_device_name(torch.device(device))} "
            f"has {capability[0]}.{capability[1]}"
        )
    if importlib.util.find_spec("torchao") is None:
        return "FP8 needs torchao, which is not installed (pip install 'fluxgate[gpu]')"
    return None


def check_attention_backend(name: str) -> None:
    """Refuse a backend name diffusers does not know, listing those it does."""
    if name == "default":
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [b.value for b in AttentionBackendName]
    if name not in known:
        raise SpeedUnavailable(
            f"FLUXGATE_ATTENTION_BACKEND={name!r} is not a diffusers attention backend; "
            f"use 'default' or one of: {', '.join(known)}"
        )


def quantize_fp8(transformer: Any) -> None:
    """torchao float8 dynamic quantization (activations and weights, per-row scales) of
    every linear layer of ``transformer``, in place."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


class Speed:
    """The options of one worker, and the prompt cache its pipelines share."""

    def __init__(self, options: SpeedOptions, device: str) -> None:
        self.options = options
        self.device = device
        self.prompt_cache = PromptCache(options.prompt_cache) if options.prompt_cache else None

    def check(self) -> None:
        """Raise :class:`SpeedUnavailable` for a setting this device cannot run: at
        start-up, before minutes of model loading, and never on a customer's job."""
        if self.options.quantization == "fp8":
            why = fp8_unavailable(self.device)
            if why is not None:
                raise SpeedUnavailable(f"FLUXGATE_QUANTIZATION=fp8 cannot run here: {why}")
        check_attention_backend(self.options.attention_backend)

    def apply(self, pipe: Any, model: str) -> None:
        """Apply the options to a pipeline loaded from the directory ``model``."""
        import torch

        opts = self.options
        transformer = getattr(pipe, "transformer", None)
        if transformer is not None:
            if opts.fuse_qkv:
                transformer.fuse_qkv_projections()
            if opts.quantization == "fp8":
                quantize_fp8(transformer)
            if opts.attention_backend != "default":
                transformer.set_attention_backend(opts.attention_backend)
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            if opts.vae_tiling:
                vae.enable_tiling()
            if opts.vae_channels_last:
                vae.to(memory_format=torch.channels_last)
        if transformer is not None and opts.compile == "regional":
            # fullgraph: a graph break inside a block would silently run it eagerly.
            transformer.compile_repeated_blocks(fullgraph=True)
        self.wrap(pipe, model)
        log.info("speed settings applied to %s: %s", model, opts)

    def wrap(self, pipe: Any, model: str) -> None:
        """The prompt cache on ``pipe`` (also a pipeline made with ``from_pipe``, which
        shares the modules :meth:`apply` changed but has its own ``encode_prompt``)."""
        if self.prompt_cache is not None and hasattr(pipe, "encode_prompt"):
            self.prompt_cache.wrap(pipe, model)
