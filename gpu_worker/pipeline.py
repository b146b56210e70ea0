"""Loads diffusers pipelines once and runs job kinds on them off the event loop.

Each model directory in the registry is loaded once at worker start-up with an explicit
device and dtype, stays resident, and runs in a single-thread executor: one job at a
time per worker process (one GPU), and the asyncio loop stays free for progress updates
and arq's heartbeat. A job's kind (kinds/) runs the pipeline; progress comes from its
step callback; this module decodes the inputs and encodes the outputs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from billing.catalog import Catalog
from billing.images import open_image
from gpu_worker.loras import LoraCache
from gpu_worker.speed import Speed, SpeedOptions
from kinds.base import JobKind, Output, Pipelines, StepCallback, model_ref

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger(__name__)

__all__ = [
    "Encoded", "Interrupted", "LoadedPipelines", "PipelineRunner", "RenderJob", "Rendered",
    "StepCallback", "encode", "encode_output", "resolve_device",
]  # fmt: skip

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class Interrupted(Exception):  # a signal, not an error
    """Raised from the step callback to stop a run between two denoising steps.

    Raising (rather than setting the pipeline's ``_interrupt``) also skips the VAE decode
    that diffusers would still run on the abandoned latents.
    """


@dataclass(frozen=True, slots=True)
class RenderJob:
    """One run: the kind, its frozen params, and its stored inputs by role."""

    kind: JobKind
    params: Mapping[str, Any]
    inputs: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One output as it is stored: an image encoded in the job's format, or a kind's
    finished file (``kinds.base.OutputFile``: an SVG, an EPS) as the kind made it."""

    data: bytes
    format: str
    mime: str
    width: int
    height: int
    extension: str


@dataclass(frozen=True, slots=True)
class Rendered:
    outputs: list[Encoded]
    seconds: float
    device: str
    dtype: str


def encode(image: Image, image_format: str, quality: int) -> Encoded:
    """``image`` as PNG (lossless), JPEG or WebP at ``quality`` (1..100)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return Encoded(
        data=buffer.getvalue(),
        format=image_format,
        mime=MIME[image_format],
        width=image.width,
        height=image.height,
        extension=EXTENSIONS[image_format],
    )


def encode_output(output: Output, image_format: str, quality: int) -> Encoded:
    """An output as stored: an image encoded (``encode``), a file as it is."""
    file = output.file
    if file is None:
        return encode(output.image, image_format, quality)
    return Encoded(
        data=file.data,
        format=file.format,
        mime=file.mime,
        width=file.width,
        height=file.height,
        extension=file.format,
    )


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
    def __init__(
        self,
        catalog: Catalog,
        *,
        device: str = "auto",
        dtype: str = "auto",
        speed: SpeedOptions | None = None,
    ) -> None:
        self.catalog = catalog
        self.device, self.dtype = resolve_device(device, dtype)
        # Checked before anything loads: a setting this device cannot run stops start-up.
        self.speed = Speed(speed or SpeedOptions(), self.device)
        self.speed.check()
        self.pipelines = LoadedPipelines(self.device, self.dtype, self.speed)
        # One thread: a GPU runs one pipeline at a time, and diffusers pipelines are not
        # thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        # Pipeline calls made (one per ``render``, one per ``render_batch``): what the
        # batching tests and the bench count.
        self.calls = 0

    def load_all(self) -> None:
        """Load every model directory in the registry. Missing weights fail loudly here,
        at start-up, rather than on a customer's job."""
        for entry in self.catalog.entries:
            self.pipelines.preload(model_ref(entry))

    async def render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._render, job, on_step)

    async def render_batch(
        self, jobs: Sequence[RenderJob], on_step: StepCallback
    ) -> list[Rendered]:
        """Jobs of one kind and one ``batch_key`` (``JobKind.batch_key``) in one pipeline
        call: each job's outputs, in order, each encoded in its own format. ``seconds`` is
        the whole call's."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._render_batch, jobs, on_step)

    def _render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        images = {role: open_image(data) for role, data in job.inputs.items()}
        # Every pipeline the kind gets is put in this job's LoRA state (none: disabled).
        self.pipelines.use_loras(job.params.get("loras") or ())
        self.calls += 1
        started = time.perf_counter()
        outputs = job.kind.run(self.pipelines, job.params, images, on_step)
        return self._encoded(job, outputs, time.perf_counter() - started)

    def _render_batch(self, jobs: Sequence[RenderJob], on_step: StepCallback) -> list[Rendered]:
        kind = jobs[0].kind
        if any(job.kind is not kind or job.inputs for job in jobs):
            raise ValueError("a batch is jobs of one kind that take no input images")
        self.pipelines.use_loras(())  # a job with LoRAs never batches (its batch_key)
        self.calls += 1
        started = time.perf_counter()
        outputs = kind.run_batch(self.pipelines, [job.params for job in jobs], on_step)
        seconds = time.perf_counter() - started
        return [self._encoded(j, o, seconds) for j, o in zip(jobs, outputs, strict=True)]

    def _encoded(self, job: RenderJob, outputs: Sequence[Output], seconds: float) -> Rendered:
        image_format = str(job.params.get("format", "png"))
        quality = int(job.params.get("output_quality", 90))
        return Rendered(
            outputs=[encode_output(o, image_format, quality) for o in outputs],
            seconds=seconds,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LoadedPipelines(Pipelines):
    """The worker's diffusers pipelines, as a job kind's ``run`` asks for them.

    Each model directory is loaded once (``from_pretrained`` as the model's own class,
    then moved to ``device``); another pipeline class over the same directory (img2img
    over a text-to-image checkpoint, say) is made with ``from_pipe``, which shares the
    loaded modules instead of loading the weights a second time. Both are kept. Not
    thread-safe: like the pipelines themselves, it is used from the one pipeline thread.
    """

    def __init__(self, device: str, dtype: torch.dtype, speed: Speed | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.speed = speed
        self._loaded: dict[Path, dict[str, Any]] = {}
        self.loras = LoraCache()
        self._job_loras: Sequence[Mapping[str, Any]] = ()

    def use_loras(self, loras: Sequence[Mapping[str, Any]]) -> None:
        """The LoRAs (frozen by ``kinds.lora``) of the job about to run: ``get`` returns
        pipelines with exactly these adapters active, or none."""
        self._job_loras = tuple(loras)

    def preload(self, model: Mapping[str, Any]) -> Any:
        """Load a frozen model (``kinds.base.model_ref``) as its own pipeline class now,
        so a missing or broken directory fails at start-up, not on a customer's job."""
        return self.get(model)

    def get(self, model: Mapping[str, Any], pipeline: str | None = None) -> Any:
        path = Path(model["path"])
        own = str(model["pipeline"])
        wanted = pipeline or own
        by_class = self._loaded.get(path)
        if by_class is None:
            by_class = {own: self._load(path, own)}
            self._loaded[path] = by_class
        if wanted not in by_class:
            import diffusers

            base = next(iter(by_class.values()))
            started = time.perf_counter()
            # dtype must be passed: from_pipe casts the new pipeline (and so the modules
            # it shares with ``base``) to float32 when it is not given.
            pipe = getattr(diffusers, wanted).from_pipe(base, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            if self.speed is not None:
                self.speed.wrap(pipe, str(path))
            log.info(
                "made %s from the %s loaded from %s in %.1fs",
                wanted, type(base).__name__, path, time.perf_counter() - started,
            )  # fmt: skip
            by_class[wanted] = pipe
        pipe = by_class[wanted]
        # The components (adapters on the transformer) are shared by every class made
        # from this directory: set them for this job whichever class it asks for.
        self.loras.apply(path, pipe, self._job_loras)
        return pipe

    def _load(self, path: Path, pipeline: str) -> Any:
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
        if self.speed is not None:
            self.speed.apply(pipe, str(path))
        log.info(
            "loaded %s from %s on %s/%s in %.1fs",
            pipeline, path, self.device, self.dtype, time.perf_counter() - started,
        )  # fmt: skip
        return pipe
