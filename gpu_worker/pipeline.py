"""Loads diffusers pipelines once and runs them off the event loop.

Each model directory in the registry is loaded once at worker start-up with an explicit
device and dtype, stays resident, and runs in a single-thread executor: one image at a
time per worker process (one GPU), and the asyncio loop stays free for progress updates
and arq's heartbeat. Progress comes from ``callback_on_step_end``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from billing.catalog import Catalog, ModelEntry

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger(__name__)

# (step, total steps, preview PNG or None). It may raise Interrupted to stop the run.
StepCallback = Callable[[int, int, bytes | None], None]
PREVIEWS_PER_JOB = 4
PREVIEW_MAX_SIDE = 128

# Approximate RGB of FLUX's 16 latent channels (a linear fit, as ComfyUI's latent_formats.Flux
# uses for its previews): a preview costs one small matrix product instead of a VAE decode.
FLUX_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)  # fmt: skip
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


class Interrupted(Exception):  # a signal, not an error
    """Raised from the step callback to stop a run between two denoising steps.

    Raising (rather than setting the pipeline's ``_interrupt``) also skips the VAE decode
    that diffusers would still run on the abandoned latents.
    """


def latents_preview(pipe: Any, latents: Any, height: int, width: int) -> bytes:
    """A small PNG of the current latents, from a linear projection of their channels."""
    import torch
    from PIL import Image as PILImage

    unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)[0]
    factors = torch.tensor(FLUX_LATENT_RGB, dtype=torch.float32, device=unpacked.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=unpacked.device)
    rgb = torch.einsum("chw,cr->hwr", unpacked.float(), factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu().numpy()
    image = PILImage.fromarray(pixels, mode="RGB")
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class RenderJob:
    entry: ModelEntry
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    preview: bool = False


@dataclass(frozen=True, slots=True)
class Rendered:
    png: bytes
    seconds: float
    device: str
    dtype: str


def resolve_device(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """'auto' picks CUDA with bf16 where a GPU is present, else CPU with fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    return device, torch_dtype


class PipelineRunner:
    def __init__(self, catalog: Catalog, *, device: str = "auto", dtype: str = "auto") -> None:
        self.catalog = catalog
        self.device, self.dtype = resolve_device(device, dtype)
        self._pipes: dict[Path, Any] = {}
        # One thread: a GPU runs one pipeline at a time, and diffusers pipelines are not
        # thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    def load_all(self) -> None:
        """Load every model directory in the registry. Missing weights fail loudly here,
        at start-up, rather than on a customer's job."""
        for entry in self.catalog.entries:
            self._load(entry.path, entry.pipeline)

    def _load(self, path: Path, pipeline: str) -> Any:
        if path in self._pipes:
            return self._pipes[path]
        import diffusers

        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"no diffusers pipeline at {path} (model_index.json missing); "
                "build the tiny one with `fluxgate models build-tiny DIR` or point the "
                "model registry at a local checkpoint"
            )
        cls = getattr(diffusers, pipeline)
        started = time.perf_counter()
        pipe = cls.from_pretrained(str(path), dtype=self.dtype, local_files_only=True)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        log.info(
            "loaded %s from %s on %s/%s in %.1fs",
            pipeline, path, self.device, self.dtype, time.perf_counter() - started,
        )  # fmt: skip
        self._pipes[path] = pipe
        return pipe

    async def render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._render, job, on_step)

    def _render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        import torch

        pipe = self._load(job.entry.path, job.entry.pipeline)
        steps = job.steps
        preview_every = max(1, steps // PREVIEWS_PER_JOB) if job.preview else 0

        def callback(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # Called between denoising steps. Without previews it only passes numbers on (no
            # GPU synchronisation); `on_step` raises Interrupted to stop the run here.
            step = i + 1
            preview = None
            if preview_every and step % preview_every == 0 and step < steps:
                preview = latents_preview(pipe, kwargs["latents"], job.height, job.width)
            on_step(step, steps, preview)
            return kwargs

        started = time.perf_counter()
        # A CPU generator gives the same image for a seed on any device.
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        with torch.inference_mode():
            result = pipe(
                prompt=job.prompt,
                width=job.width,
                height=job.height,
                num_inference_steps=steps,
                guidance_scale=job.guidance,
                generator=generator,
                max_sequence_length=job.entry.max_sequence_length,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="pil",
            )
        image: Image = result.images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Rendered(
            png=buffer.getvalue(),
            seconds=time.perf_counter() - started,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
