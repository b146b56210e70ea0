"""Pipeline runners for tests: the real pipeline with injected failure or delay."""

from __future__ import annotations

import time

from billing.catalog import Catalog
from gpu_worker.pipeline import PipelineRunner, Rendered, RenderJob, StepCallback


class ExplodingRunner(PipelineRunner):
    """Failure injection: a pipeline that raises mid-run, as a GPU out of memory would
    (no GPU here to run out of)."""

    def _render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


class SlowRunner(PipelineRunner):
    """The real pipeline, with each denoising step slowed so that progress, queueing and
    cancellation can be observed (the tiny model finishes a job in ~50 ms)."""

    def __init__(self, catalog: Catalog, *, step_seconds: float = 0.3, device: str = "cpu") -> None:
        super().__init__(catalog, device=device)
        self.step_seconds = step_seconds

    def _render(self, job: RenderJob, on_step: StepCallback) -> Rendered:
        def slow(step: int, total: int, preview: bytes | None) -> None:
            on_step(step, total, preview)
            time.sleep(self.step_seconds)

        return super()._render(job, slow)
