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
