"""``cleanup``: remove a watermark, an object or a defect from an image (``POST
/v1/cleanup``, GraphQL ``cleanupImage``; seed 004's ``submit_remove_watermark_task``,
``submit_remove_fabric_task`` and ``submit_remove_diamonds_task`` as ``preset``\\ s).

Where: a ``mask`` (same size as the image, white = remove) or ``rectangles``, one or more
``x,y,w,h`` boxes in the image's pixels, separated by ``;`` (``"10,10,120,40;0,200,64,56"``)
or, in JSON, a list of ``[x, y, w, h]``. One of the two, not both: this kind repaints only
where it is told. Seed 004's remove tasks name no area; given none, its adapter asks the
``edit`` kind (FLUX Kontext, an instruction-following editor working on the whole image)
to do the removal instead, with the preset's entry in ``INSTRUCTIONS``.

What to paint instead: a ``preset`` (``remove_watermark``, ``remove_fabric``,
``remove_diamonds``, ``remove_object``) sets the prompt, or ``prompt`` describes it; not
both.

FLUX Fill repaints the area at the image's size fitted to the limits (like ``inpaint``);
the repainted area is then scaled back and pasted into the *original* image through the
mask, so every pixel outside the mask is the input's own (PNG keeps them exactly; JPEG
and WebP re-encode). ``feather`` blends over that many pixels just inside the mask's
edge, never outside it. The output has the input's size; the price follows the size
Fill works at. The image is read as RGB (an alpha channel is dropped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

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
from kinds.flux import common_params, fit_size, image_plan, input_info, resolve_model, run_flux
from kinds.inpaint import (
    DEFAULT_SERVICE,
    PIPELINES,
    binary_mask,
    check_fill_options,
    paste_masked,
)
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

PRESETS = {
    "remove_watermark": (
        "clean image with no watermark, no text and no logo, the background continues naturally"
    ),
    "remove_fabric": (
        "the same printed pattern, flat and crisp, with no fabric weave texture, no "
        "wrinkles and no folds"
    ),
    "remove_diamonds": (
        "the same printed pattern, flat, with no rhinestones, no diamonds, no studs and no "
        "glitter decorations"
    ),
    "remove_object": "empty background that continues the surroundings naturally",
}
# The same removals as instructions to an editor that finds the area itself (seed 004's
# remove tasks without a mask or rectangles run as ``edit`` jobs with these prompts).
INSTRUCTIONS = {
    "remove_watermark": (
        "Remove every watermark, overlaid text and logo from the image; keep everything "
        "else exactly as it is"
    ),
    "remove_fabric": (
        "Remove the fabric weave texture, wrinkles and folds so the printed pattern is flat "
        "and crisp; keep the pattern, its colours and its layout exactly as they are"
    ),
    "remove_diamonds": (
        "Remove all rhinestones, diamonds, studs and glitter decorations; keep the printed "
        "pattern, its colours and its layout exactly as they are"
    ),
}
Preset = Literal["remove_watermark", "remove_fabric", "remove_diamonds", "remove_object"]
MAX_RECTANGLES = 64
_NUMBER = r"\s*-?\d{1,6}\s*"
_RECTANGLE = re.compile(rf"{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}")


class CleanupParams(FluxOptions):
    prompt: str = Field(default="", description="What to paint instead; or use preset.")
    preset: Preset | None = Field(
        default=None,
        description="remove_watermark | remove_fabric | remove_diamonds | remove_object.",
    )
    rectangles: str | None = Field(
        default=None,
        max_length=4096,
        description='Areas to remove instead of a mask: "x,y,w,h;x,y,w,h" (JSON: a list).',
    )
    feather: int = Field(default=4, ge=0, le=64, description="Blend px inside the mask edge.")

    @field_validator("rectangles", mode="before")
    @classmethod
    def _rectangles(cls, value: Any) -> Any:
        """A JSON list of [x, y, w, h] in the canonical text form; the text checked."""
        if isinstance(value, list):
            boxes = []
            for box in value:
                if (
                    not isinstance(box, list | tuple)
                    or len(box) != 4
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
                ):
                    raise ValueError("each rectangle must be [x, y, w, h] in whole pixels")
                boxes.append(",".join(str(v) for v in box))
            value = ";".join(boxes)
        if isinstance(value, str):
            parts = [p for p in value.split(";") if p.strip()]
            if not parts:
                raise ValueError('give at least one rectangle "x,y,w,h"')
            if len(parts) > MAX_RECTANGLES:
                raise ValueError(f"at most {MAX_RECTANGLES} rectangles")
            for part in parts:
                if not _RECTANGLE.fullmatch(part):
                    raise ValueError('must be "x,y,w,h" boxes separated by ";"')
            value = ";".join(",".join(v.strip() for v in p.split(",")) for p in parts)
        return value


def rectangles_of(text: str) -> list[tuple[int, int, int, int]]:
    boxes = [tuple(int(v) for v in part.split(",")) for part in text.split(";")]
    return [(b[0], b[1], b[2], b[3]) for b in boxes]


def check_rectangles(text: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
    boxes = rectangles_of(text)
    for number, (x, y, w, h) in enumerate(boxes, 1):
        if w <= 0 or h <= 0:
            raise BadUserInput(
                "rectangles", f"rectangle {number} ({x},{y},{w},{h}) must have w and h above 0"
            )
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise BadUserInput(
                "rectangles",
                f"rectangle {number} ({x},{y},{w},{h}) reaches outside the {width}x{height} image",
            )
    return boxes


def rectangles_mask(boxes: list[tuple[int, int, int, int]], width: int, height: int) -> Image:
    """White (remove) inside the boxes, black elsewhere."""
    from PIL import Image as PILImage

    mask = PILImage.new("L", (width, height), 0)
    for x, y, w, h in boxes:
        mask.paste(255, (x, y, x + w, y + h))
    return mask


class Cleanup(JobKind):
    name = "cleanup"
    title = "Cleanup"
    mutation = "cleanupImage"
    Params = CleanupParams
    inputs = (
        InputSpec("image", description="The image to clean up."),
        InputSpec(
            "mask",
            required=False,
            description="Same size as image; white = remove. Or give rectangles.",
        ),
    )

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, CleanupParams)
        check_fill_options(params)
        image = input_info(inputs, "image")
        mask = inputs.get("mask")
        if mask is not None and params.rectangles is not None:
            raise BadUserInput("rectangles", "give a mask or rectangles, not both")
        if mask is None and params.rectangles is None:
            raise BadUserInput(
                "mask", "say what to remove: a mask (white = remove) or rectangles (x,y,w,h)"
            )
        if mask is not None and (mask.width, mask.height) != (image.width, image.height):
            raise BadUserInput(
                "mask",
                f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
                "they must be the same size",
            )
        if params.rectangles is not None:
            check_rectangles(params.rectangles, image.width, image.height)
        if params.preset is not None and params.prompt.strip():
            raise BadUserInput("prompt", "give a preset or a prompt, not both")
        if params.preset is None and not params.prompt.strip():
            raise BadUserInput(
                "prompt", f"give a prompt or a preset ({', '.join(sorted(PRESETS))})"
            )
        prompt = PRESETS[params.preset] if params.preset is not None else params.prompt
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        width, height = fit_size(image.width, image.height, ctx.limits)
        frozen = common_params(params.model_copy(update={"prompt": prompt}), entry, ctx.limits)
        frozen.update(
            width=width,
            height=height,
            preset=params.preset,
            rectangles=params.rectangles,
            feather=params.feather,
        )
        plan = image_plan(self.name, entry, frozen, ctx)
        # The output has the input's size (module docstring); the price stays Fill's.
        plan = replace(plan, width=image.width, height=image.height)
        if params.preset is not None:
            plan.metadata["preset"] = params.preset
        return plan

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        from PIL import Image as PILImage
        from PIL import ImageFilter

        pipe = pipelines.get(params["model"], "FluxFillPipeline")
        width, height = int(params["width"]), int(params["height"])
        original = inputs["image"].convert("RGB")
        if params.get("rectangles"):
            mask = rectangles_mask(rectangles_of(params["rectangles"]), *original.size)
        else:
            mask = binary_mask(inputs["mask"], original.size)
        outputs = run_flux(
            pipe,
            params,
            on_step,
            width=width,
            height=height,
            preview=bool(params.get("preview")),
            # Scaled, not cropped: the repainted area must map back onto the original.
            image=original.resize((width, height), PILImage.Resampling.LANCZOS),
            # Grown by a pixel: a thin stroke that scaling down would lose is still
            # repainted, since everything inside the full-size mask is pasted back.
            mask_image=mask.resize((width, height), PILImage.Resampling.NEAREST).filter(
                ImageFilter.MaxFilter(3)
            ),
        )
        feather = int(params["feather"])
        return [Output(image=paste_masked(original, out.image, mask, feather)) for out in outputs]


KIND = register(Cleanup())
