"""What a job kind is.

A kind is one module: its parameters (a frozen pydantic model that validates the client's
request and names the offending field), the image inputs it takes, how a request becomes
a priced, frozen job (``plan``), and how a worker runs it (``run``). Everything else (the
ledger, queue, events, subscriptions, webhooks, cancel, idempotency, limits, REST polling,
the dashboard) handles every kind alike: it sees a job's ``kind`` name, its ``params``
(JSON, frozen at submit) and its input and output assets.

``plan`` runs in the API process and must not import torch; ``run`` runs in the worker's
pipeline thread, imports what it needs, and returns images (or finished files: ``Output``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from billing.catalog import Catalog, ModelEntry
from billing.errors import BadUserInput
from billing.models import Lora
from billing.pricing import PriceTable, Quote
from billing.requests import Limits

__all__ = ["Limits"]
from billing.service.generations import JobSpec, NewAsset

if TYPE_CHECKING:
    from PIL.Image import Image

# (step, total steps, preview PNG or None). It may raise to stop the run between steps.
StepCallback = Callable[[int, int, bytes | None], None]

MAX_SEED = 2**31 - 1
MAX_COUNT = 4
FORMATS = ("png", "jpeg", "webp")


class KindParams(BaseModel):
    """A kind's parameters as a client sends them: snake_case (REST, SPEC) or camelCase
    (GraphQL) names, unknown names refused, frozen once validated."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
        hide_input_in_errors=True,
    )


class OutputOptions(KindParams):
    """How the images of a job are returned: every kind that makes images has these."""

    format: Literal["png", "jpeg", "webp"] = Field(default="png", description="png | jpeg | webp.")
    output_quality: int = Field(default=90, ge=1, le=100, description="JPEG/WebP quality.")
    count: int = Field(default=1, ge=1, le=MAX_COUNT, description="Images to make (priced each).")


class FluxOptions(OutputOptions):
    """The options of a FLUX pipeline run; ``None`` means the model's default."""

    service: str | None = Field(
        default=None, max_length=64, description="The model; omitted: the kind's default."
    )
    version: str | None = Field(
        default=None, max_length=64, description="The service's version; omitted: its default."
    )
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = Field(
        default=None, description="What to avoid (true CFG, with true_cfg_scale > 1)."
    )
    true_cfg_scale: float = Field(default=1.0, ge=1.0, le=10.0)
    steps: int | None = Field(
        default=None, ge=1, le=100, description="Denoising steps; omitted: the model's."
    )
    guidance: float | None = Field(
        default=None, ge=0.0, le=30.0, description="Guidance scale; omitted: the model's."
    )
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1: random.")


@dataclass(frozen=True, slots=True)
class InputSpec:
    """An image a kind takes: a multipart file field ``name``, ``<name>_url`` or
    ``<name>_id`` (an earlier output of the same account)."""

    name: str
    required: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ``plan`` may know of an input image (its bytes stay with the API)."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class PlanContext:
    catalog: Catalog
    prices: PriceTable
    limits: Limits
    # The catalogue rows of the LoRAs a request names (kinds.lora), looked up before
    # planning only when it names some: a request without LoRAs costs no query.
    loras: Mapping[str, Lora] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """A request made into a job: every value the worker needs, frozen in ``params``
    (JSON, including the resolved model), and the price. The other fields are the job's
    summary columns (shown by every surface and used for ETAs)."""

    params: dict[str, Any]
    quote: Quote
    provider: str
    version: str
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    quality: str = "standard"
    metadata: dict[str, Any] = field(default_factory=dict)

    def job(
        self,
        kind: str,
        *,
        request_hash: str,
        inputs: tuple[NewAsset, ...] = (),
        webhook_url: str | None = None,
        webhook_events: list[str] | None = None,
        preview: bool = False,
    ) -> JobSpec:
        """The job to accept (billing/service/generations.submit)."""
        return JobSpec(
            kind=kind,
            params=self.params,
            credits=self.quote.credits,
            provider=self.provider,
            version=self.version,
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            quality=self.quality,
            metadata={
                "kind": kind,
                "width": self.width,
                "height": self.height,
                "seed": self.seed,
                "steps": self.steps,
                "guidance": self.guidance,
                "version": self.version,
                "quality": self.quality,
                "tier": self.quote.tier,
                "megapixels": self.quote.megapixels,
                "count": self.quote.count,
                **self.metadata,
            },
            request_hash=request_hash,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            preview=preview,
            inputs=inputs,
        )


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A finished output that is not a raster image (an SVG, an EPS): the worker stores
    ``data`` as it is, named ``<key>.<format>`` and served as ``mime``. ``format`` is
    what clients see as the output's format, and its file extension; ``width`` and
    ``height`` are its size in pixels (a vector's viewBox)."""

    data: bytes
    format: str
    mime: str
    width: int
    height: int

    def __post_init__(self) -> None:
        # It becomes part of a storage key (runtime.storage.check_key) and a file name.
        if not (self.format.isascii() and self.format.isalnum() and self.format.islower()):
            raise ValueError(f"an output format is a short lowercase name, not {self.format!r}")
        if self.width < 1 or self.height < 1:
            raise ValueError("an output file has a size of at least 1x1")


@dataclass(frozen=True, slots=True, init=False)
class Output:
    """One thing a run made: an image, which the worker encodes in the job's ``format``
    (``Output(image=...)``, what most kinds return), or a finished file
    (``Output(file=OutputFile(...))``) stored as it is."""

    _image: Image | None
    file: OutputFile | None

    def __init__(self, image: Image | None = None, *, file: OutputFile | None = None) -> None:
        if (image is None) == (file is None):
            raise ValueError("an Output is either an image or a file")
        object.__setattr__(self, "_image", image)
        object.__setattr__(self, "file", file)

    @property
    def image(self) -> Image:
        """The image; an output made as a file has none (check ``file`` first)."""
        if self._image is None:
            raise AttributeError("this output is a file, not an image")
        return self._image


class JobKind(ABC):
    """One image operation. Subclasses set the class attributes and implement
    ``plan`` and ``run``; ``kinds.registry.register`` makes the kind available on every
    surface."""

    name: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type[KindParams]]
    inputs: ClassVar[tuple[InputSpec, ...]] = ()
    # The kind's own GraphQL mutation (e.g. "editImage"); None: only `createJob` runs it.
    mutation: ClassVar[str | None] = None

    def parse(self, raw: Mapping[str, Any]) -> KindParams:
        """The client's parameters, validated; the first problem is a BadUserInput that
        names the field as the client spelled it."""
        try:
            return self.Params.model_validate(dict(raw))
        except ValidationError as exc:
            raise bad_input(exc) from None

    @abstractmethod
    def plan(
        self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext
    ) -> Plan: ...

    @abstractmethod
    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]: ...

    def batch_key(self, params: Mapping[str, Any]) -> Hashable | None:
        """What a job (its frozen ``params``) must share with others to run with them in
        one pipeline call (the worker's batching, ``gpu_worker/batching.py``): jobs of
        equal keys make the same call but for their prompts and seeds. None (the
        default): the job always runs alone."""
        return None

    def run_batch(
        self,
        pipelines: Pipelines,
        params: Sequence[Mapping[str, Any]],
        on_step: StepCallback,
    ) -> list[list[Output]]:
        """Run jobs of one ``batch_key`` in one pipeline call: each job's outputs, in
        order, as ``run`` would have made them for it alone (same seed, same image up to
        float rounding). Only kinds whose ``batch_key`` can be non-None implement it."""
        raise NotImplementedError(f"the {self.name} kind does not batch")


class Pipelines(ABC):
    """The worker's loaded pipelines, as a kind's ``run`` sees them."""

    device: str

    @abstractmethod
    def get(self, model: Mapping[str, Any], pipeline: str | None = None) -> Any:
        """The loaded diffusers pipeline of a frozen model (``params["model"]``), as
        class ``pipeline`` (default: the model's own) sharing the loaded components."""


def bad_input(exc: ValidationError) -> BadUserInput:
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in error["loc"]]
    name = ".".join(loc) or "input"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field {name}"
    elif error["type"] == "missing":
        message = f"{name} is required"
    else:
        message = f"{name}: {message}"
    return BadUserInput(name, message)


def model_ref(entry: ModelEntry) -> dict[str, Any]:
    """A model frozen into a job's params: the worker loads exactly this, never
    re-resolving it from its own registry; its pool is the queue the job goes on
    (``billing.catalog.pool_of``)."""
    return {
        "provider": entry.provider,
        "version": entry.version,
        "path": str(entry.path),
        "pipeline": entry.pipeline,
        "max_sequence_length": entry.max_sequence_length,
        "pool": entry.pool,
    }
