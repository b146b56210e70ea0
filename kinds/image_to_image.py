"""``image_to_image``: FLUX repaints an input image towards a prompt (seed 000's img2img,
``POST /v1/image_to_image``). ``strength`` says how far it may move from the image: 1
redraws it entirely, small values only retouch it.

The output has the input's size (scaled down to the largest side allowed, each side
rounded down to a multiple of 16) unless the request gives ``width`` and ``height``; the
image is then scaled to cover that size and centre-cropped, never stretched.

This module also holds what the kinds that take an image share: reading an input's size,
choosing the output size, pricing a plan and fitting a PIL image to the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from billing.catalog import ModelEntry
from billing.errors import BadUserInput
from kinds.base import (
    FluxOptions,
    ImageInfo,
    InputSpec,
    JobKind,
    KindParams,
    Limits,
    Output,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
)
from kinds.flux import check_side, common_params, fit_size, resolve_model, run_flux
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

# Img2img runs on a text-to-image checkpoint (its components, its weights).
PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline")
DEFAULT_SERVICE = "flux-dev"
DEFAULT_STRENGTH = 0.75


class ImageToImageParams(FluxOptions):
    strength: float = Field(
        default=DEFAULT_STRENGTH,
        ge=0.0,
        le=1.0,
        description="How much to change the image: 1 redraws it, near 0 barely touches it.",
    )
    width: int | None = Field(default=None, description="Multiple of 16; default: the image's.")
    height: int | None = Field(default=None, description="Multiple of 16; default: the image's.")


def input_info(inputs: Mapping[str, ImageInfo], name: str) -> ImageInfo:
    info = inputs.get(name)
    if info is None:
        raise BadUserInput(name, f"{name} is required")
    return info


def output_size(
    width: int | None, height: int | None, image: ImageInfo, limits: Limits
) -> tuple[int, int]:
    """The requested ``width``/``height`` (both or neither), else the image's size fitted
    to the limits (``kinds.flux.fit_size``)."""
    if width is None and height is None:
        return fit_size(image.width, image.height, limits)
    if width is None or height is None:
        missing = "width" if width is None else "height"
        raise BadUserInput(
            missing, "give both width and height, or neither (then the image's size is used)"
        )
    return check_side(width, "width", limits), check_side(height, "height", limits)


def image_plan(kind: str, entry: ModelEntry, params: dict[str, Any], ctx: PlanContext) -> Plan:
    """The job of an image kind whose frozen ``params`` are complete (``common_params``
    plus ``width``, ``height`` and the kind's own values), priced per output image."""
    width, height = int(params["width"]), int(params["height"])
    quote = ctx.prices.quote(
        width=width, height=height, version=entry.version, kind=kind, count=int(params["count"])
    )
    return Plan(
        params=params,
        quote=quote,
        provider=entry.provider,
        version=entry.version,
        prompt=params["prompt"],
        width=width,
        height=height,
        steps=int(params["steps"]),
        guidance=float(params["guidance"]),
        seed=int(params["seed"]),
    )


def fitted(
    image: Image, width: int, height: int, *, mode: str = "RGB", nearest: bool = False
) -> Image:
    """``image`` in ``mode``, scaled to cover ``width``x``height`` and centre-cropped to it
    (the aspect ratio kept). ``nearest`` for masks, whose values must stay 0 or 255."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    method = PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.LANCZOS
    return ImageOps.fit(image.convert(mode), (width, height), method=method)


def denoising_steps(steps: int, strength: float) -> int:
    """The steps an img2img run denoises: diffusers skips the first ``1 - strength`` of
    the schedule (``FluxImg2ImgPipeline.get_timesteps``, same arithmetic)."""
    start = int(max(steps - min(steps * strength, steps), 0))
    return steps - start


class ImageToImage(JobKind):
    name = "image_to_image"
    title = "Image to image"
    mutation = "imageToImage"
    Params = ImageToImageParams
    inputs = (InputSpec("image", description="The image to start from."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, ImageToImageParams)
        image = input_info(inputs, "image")
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        width, height = output_size(params.width, params.height, image, ctx.limits)
        frozen = common_params(params, entry, ctx.limits)
        # Strength 0 (or so small that no step of the schedule is left) would return the
        # image unchanged while charging for it: refused rather than silently "done".
        if denoising_steps(frozen["steps"], params.strength) < 1:
            raise BadUserInput(
                "strength",
                f"strength {params.strength} leaves no denoising step out of "
                f"{frozen['steps']}; raise strength (or steps)",
            )
        frozen.update(width=width, height=height, strength=params.strength)
        return image_plan(self.name, entry, frozen, ctx)

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], "FluxImg2ImgPipeline")
        width, height = int(params["width"]), int(params["height"])
        strength = float(params["strength"])
        total = denoising_steps(int(params["steps"]), strength)

        def progress(step: int, _steps: int, preview: bytes | None) -> None:
            # Report against the steps that actually run, so progress reaches 100%.
            on_step(step, total, preview)

        return run_flux(
            pipe,
            params,
            progress,
            width=width,
            height=height,
            preview=bool(params.get("preview")),
            image=fitted(inputs["image"], width, height),
            strength=strength,
        )


KIND = register(ImageToImage())
