"""``outpaint``: FLUX.1 Fill extends an image beyond its borders (``POST /v1/outpaint``;
seed 004's expand tasks). The image is placed, at its own size, on a larger canvas; the
new area is painted as the prompt describes.

How much to add, either:

* ``left``, ``right``, ``top``, ``bottom``: pixels to add on each side (any integer
  ≥ 0, unset = 0), or
* ``aspect_ratio``: ``"W:H"`` in whole numbers (``"16:9"``); the canvas grows along one
  axis only, the image centred on it.

not both, and something must be added. FLUX needs each side of the canvas to be a
multiple of 16, so a canvas that is not is widened (and/or heightened) by up to 15 px
more on the right (bottom). The job's frozen params hold the padding actually used. The
canvas must fit the size limits (each side between ``min_side`` and ``max_side``): the
image is never scaled, so a large image leaves little room to grow.

Like ``inpaint`` it takes no ``negative_prompt``/``true_cfg_scale``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

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
from kinds.flux import (
    DIMENSION_STEP,
    common_params,
    fitted,
    image_plan,
    input_info,
    resolve_model,
    run_flux,
)
from kinds.inpaint import DEFAULT_SERVICE, PIPELINES, check_fill_options
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

ASPECT_RATIO = re.compile(r"([1-9][0-9]{0,2}):([1-9][0-9]{0,2})")
# The mask reaches this far into the original image along each side that grows, so the
# seam is repainted too rather than left as a hard edge.
OVERLAP = 8
# The new area before Fill paints it. Fill zeroes the masked area of its input in [-1, 1]
# (mid grey) and at strength 1 starts from pure noise, so the model never sees this:
# mid grey makes the canvas what the model sees.
FILL_RGB = (128, 128, 128)
SIDES = ("left", "right", "top", "bottom")


class OutpaintParams(FluxOptions):
    left: int | None = Field(default=None, ge=0, description="Pixels to add on the left.")
    right: int | None = Field(default=None, ge=0, description="Pixels to add on the right.")
    top: int | None = Field(default=None, ge=0, description="Pixels to add at the top.")
    bottom: int | None = Field(default=None, ge=0, description="Pixels to add at the bottom.")
    aspect_ratio: str | None = Field(
        default=None, max_length=16, description='The canvas\'s "W:H", e.g. "16:9".'
    )

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: str | None) -> str | None:
        if value is not None and not ASPECT_RATIO.fullmatch(value):
            raise ValueError('must be "W:H" in whole numbers from 1 to 999, like "16:9"')
        return value


def ratio_padding(width: int, height: int, ratio: str) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) growing ``width``x``height`` along one axis to ``ratio``,
    centred."""
    match = ASPECT_RATIO.fullmatch(ratio)
    assert match is not None  # checked by OutpaintParams
    rw, rh = int(match[1]), int(match[2])
    if width * rh < height * rw:  # too narrow: add width
        extra = round(height * rw / rh) - width
        return extra // 2, extra - extra // 2, 0, 0
    extra = round(width * rh / rw) - height
    return 0, 0, extra // 2, extra - extra // 2


def canvas_padding(
    params: OutpaintParams, image: ImageInfo, limits: Limits
) -> tuple[int, int, int, int]:
    """The (left, right, top, bottom) padding of the canvas, checked (module docstring)."""
    pixels = [getattr(params, side) for side in SIDES]
    if params.aspect_ratio is not None:
        if any(p is not None for p in pixels):
            raise BadUserInput(
                "aspect_ratio", "give aspect_ratio or left/right/top/bottom, not both"
            )
        left, right, top, bottom = ratio_padding(image.width, image.height, params.aspect_ratio)
        if not (left or right or top or bottom):
            raise BadUserInput(
                "aspect_ratio",
                f"the image ({image.width}x{image.height}) already has aspect ratio "
                f"{params.aspect_ratio}; nothing to add",
            )
    else:
        left, right, top, bottom = (p or 0 for p in pixels)
        if not (left or right or top or bottom):
            raise BadUserInput(
                "left",
                "nothing to add: give left, right, top or bottom (pixels to add on that "
                "side) or aspect_ratio",
            )
    return rounded_canvas(
        left, right, top, bottom, image, limits, ratio=params.aspect_ratio is not None
    )


def rounded_canvas(
    left: int,
    right: int,
    top: int,
    bottom: int,
    image: ImageInfo,
    limits: Limits,
    *,
    ratio: bool = False,
) -> tuple[int, int, int, int]:
    """The padding grown on the right (bottom) until each side of the canvas is a multiple
    of 16, checked against the size limits (``ratio``: the client gave an aspect ratio)."""
    # The error names the side the client asked to grow, not the rounding added here.
    asked = {"left": left, "right": right, "top": top, "bottom": bottom}
    right += -(image.width + left + right) % DIMENSION_STEP
    bottom += -(image.height + top + bottom) % DIMENSION_STEP
    width = image.width + left + right
    height = image.height + top + bottom
    for side, size, own, pads in (
        ("width", width, image.width, {k: asked[k] for k in ("left", "right")}),
        ("height", height, image.height, {k: asked[k] for k in ("top", "bottom")}),
    ):
        if limits.min_side <= size <= limits.max_side:
            continue
        if ratio:
            field = "aspect_ratio"
        elif own > limits.max_side or not any(pads.values()):
            field = "image"
        else:
            field = max(pads, key=lambda name: pads[name])
        bound = (
            f"at most {limits.max_side}" if size > limits.max_side
            else f"at least {limits.min_side}"
        )  # fmt: skip
        raise BadUserInput(
            field,
            f"the canvas would be {width}x{height} (image {image.width}x{image.height} plus "
            f"padding); its {side} must be {bound} px. The image is not scaled: "
            + ("add less or send a smaller image" if size > limits.max_side else "add more"),
        )
    return left, right, top, bottom


class Outpaint(JobKind):
    name = "outpaint"
    title = "Outpaint"
    mutation = "outpaintImage"
    Params = OutpaintParams
    inputs = (InputSpec("image", description="The image to extend."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, OutpaintParams)
        check_fill_options(params)
        image = input_info(inputs, "image")
        left, right, top, bottom = canvas_padding(params, image, ctx.limits)
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        frozen = common_params(params, entry, ctx.limits)
        frozen.update(
            width=image.width + left + right,
            height=image.height + top + bottom,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
        )
        return image_plan(self.name, entry, frozen, ctx)

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], "FluxFillPipeline")
        canvas, mask = outpaint_canvas(
            inputs["image"],
            width=int(params["width"]),
            height=int(params["height"]),
            left=int(params["left"]),
            right=int(params["right"]),
            top=int(params["top"]),
            bottom=int(params["bottom"]),
        )
        return run_flux(
            pipe,
            params,
            on_step,
            width=canvas.width,
            height=canvas.height,
            preview=bool(params.get("preview")),
            image=canvas,
            mask_image=mask,
        )


def outpaint_canvas(
    image: Image, *, width: int, height: int, left: int, right: int, top: int, bottom: int
) -> tuple[Image, Image]:
    """The canvas (``image`` at (left, top) on mid grey) and Fill's mask (white = paint:
    the new area and an ``OVERLAP`` band of the image along each side that grows)."""
    from PIL import Image as PILImage

    inner = (width - left - right, height - top - bottom)
    # The planned size; a differently sized image (not the one planned) is fitted to it
    # so the job still makes the size it was priced at.
    picture = image.convert("RGB") if image.size == inner else fitted(image, *inner)
    canvas = PILImage.new("RGB", (width, height), FILL_RGB)
    canvas.paste(picture, (left, top))
    mask = PILImage.new("L", (width, height), 255)
    keep = (
        left + (min(OVERLAP, inner[0] // 4) if left else 0),
        top + (min(OVERLAP, inner[1] // 4) if top else 0),
        left + inner[0] - (min(OVERLAP, inner[0] // 4) if right else 0),
        top + inner[1] - (min(OVERLAP, inner[1] // 4) if bottom else 0),
    )
    mask.paste(0, keep)
    return canvas, mask


KIND = register(Outpaint())
