"""``inpaint``: FLUX.1 Fill repaints the area of an image that a mask marks, as the
prompt describes (``POST /v1/inpaint``; seed 004's inpaint tasks).

Inputs: ``image`` and ``mask``, of the same size; the mask is read as grayscale and
white means "repaint" (the pipeline binarizes it at half grey). The output has the
image's size, scaled down to the largest side allowed with each side rounded down to a
multiple of 16; the mask follows with nearest-neighbour scaling so it stays two-valued.

FLUX Fill has no negative prompt (its pipeline takes neither ``negative_prompt`` nor
``true_cfg_scale``): a request that sets them is refused rather than silently run
without them. The shared checks live here and ``outpaint`` uses them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from billing.errors import BadUserInput
from kinds.base import (
    FluxOptions,
    ImageInfo,
    InputSpec,
    JobKind,
    KindParams,
    Output,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
)
from kinds.flux import (
    common_params,
    fit_size,
    fitted,
    image_plan,
    input_info,
    resolve_model,
    run_flux,
)
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

PIPELINES = ("FluxFillPipeline",)
DEFAULT_SERVICE = "flux-fill"


class InpaintParams(FluxOptions):
    pass


def check_fill_options(params: FluxOptions) -> None:
    """Refuse the options FLUX Fill cannot honour."""
    if params.negative_prompt is not None and params.negative_prompt.strip():
        raise BadUserInput(
            "negative_prompt",
            "this operation takes no negative_prompt (FLUX Fill has none); "
            "describe what to paint in prompt",
        )
    if params.true_cfg_scale != 1.0:
        raise BadUserInput(
            "true_cfg_scale",
            "this operation takes no true_cfg_scale (FLUX Fill has no negative prompt)",
        )


def binary_mask(mask: Image, size: tuple[int, int]) -> Image:
    """``mask`` at ``size`` as 0/255, thresholded at half grey as FLUX Fill reads it."""
    from PIL import Image as PILImage

    gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, PILImage.Resampling.NEAREST)
    return gray.point(lambda v: 255 if v >= 128 else 0)


def paste_masked(original: Image, painted: Image, mask: Image, feather: int = 0) -> Image:
    """``original`` with ``painted`` (scaled to its size) where ``mask`` is white.

    Fill's output is a VAE decode of the whole image, so outside the mask it only
    resembles the input; pasting keeps every pixel outside the mask exactly the
    original's. ``feather`` > 0 blends over about that many pixels *inside* the mask's
    edge (never outside it), so the repainted area has no hard border."""
    from PIL import Image as PILImage
    from PIL import ImageChops, ImageFilter

    base = original.convert("RGB")
    alpha = binary_mask(mask, base.size)
    if painted.size != base.size:
        painted = painted.resize(base.size, PILImage.Resampling.LANCZOS)
    if feather > 0:
        # Blurring spreads the edge both ways; keeping the darker of the blur and the
        # mask leaves only the inward half: 0 everywhere outside the mask.
        alpha = ImageChops.darker(alpha.filter(ImageFilter.GaussianBlur(feather)), alpha)
    return PILImage.composite(painted.convert("RGB"), base, alpha)


class Inpaint(JobKind):
    name = "inpaint"
    title = "Inpaint"
    mutation = "inpaintImage"
    Params = InpaintParams
    inputs = (
        InputSpec("image", description="The image to repaint part of."),
        InputSpec("mask", description="Same size as image; white = repaint, black = keep."),
    )

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, InpaintParams)
        check_fill_options(params)
        image = input_info(inputs, "image")
        mask = input_info(inputs, "mask")
        if (mask.width, mask.height) != (image.width, image.height):
            raise BadUserInput(
                "mask",
                f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
                "they must be the same size",
            )
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        width, height = fit_size(image.width, image.height, ctx.limits)
        frozen = common_params(params, entry, ctx.limits)
        frozen.update(width=width, height=height)
        return image_plan(self.name, entry, frozen, ctx)

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], "FluxFillPipeline")
        width, height = int(params["width"]), int(params["height"])
        return run_flux(
            pipe,
            params,
            on_step,
            width=width,
            height=height,
            preview=bool(params.get("preview")),
            image=fitted(inputs["image"], width, height),
            mask_image=fitted(inputs["mask"], width, height, mode="L", nearest=True),
        )


KIND = register(Inpaint())
