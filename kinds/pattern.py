"""``extract_pattern``: the repeating print of a garment or fabric photo as a flat,
seamless pattern tile (``POST /v1/extract_pattern``, GraphQL ``extractPattern``; seed
004's ``submit_extract_pattern_task``).

Input: ``image``, one photo of the print, as seed 004 takes. (More views of the same
print would need asset roles beyond ``image``/``mask``, which the assets table's check
constraint does not allow yet.) Kontext sees it fitted to the output's size.

One Kontext pass does both steps: the instruction (``prompt``; default ``EXTRACT``)
asks for the print as a flat, front-on swatch, and the pass runs on a torus
(``kinds.tiling``: latents rolled between steps, circular VAE decode), so what it paints
is already a seamless tile: no second, separately priced pass.

Size: ``aspect_ratio`` (``"W:H"``, default ``"1:1"``, as seed 004) with the longer side
``long_side`` px (default 1024, a multiple of 16); the shorter side is rounded to a
multiple of 16 and must fit the size limits. ``count`` tiles (1-4) are priced each.
"""

from __future__ import annotations

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
from kinds.edit import run_kontext
from kinds.flux import (
    DIMENSION_STEP,
    check_side,
    common_params,
    image_plan,
    input_info,
    resolve_model,
)
from kinds.outpaint import ASPECT_RATIO
from kinds.registry import register
from kinds.tiling import WrapAround, wrapped_decoder

if TYPE_CHECKING:
    from PIL.Image import Image

PIPELINES = ("FluxKontextPipeline",)
DEFAULT_SERVICE = "flux-kontext-pro"
DEFAULT_LONG_SIDE = 1024
EXTRACT = (
    "Extract the repeating print pattern as a flat, front-on fabric swatch that fills the "
    "whole frame: evenly lit, no folds, no wrinkles, no garment, no person, no background, "
    "a seamless repeat"
)


class PatternParams(FluxOptions):
    prompt: str = Field(default="", description="The instruction; default: extract the print.")
    aspect_ratio: str = Field(default="1:1", max_length=16, description='"W:H", e.g. "4:3".')
    long_side: int | None = Field(
        default=None, description="The longer side in px, a multiple of 16; 1024."
    )

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: str) -> str:
        if not ASPECT_RATIO.fullmatch(value):
            raise ValueError('must be "W:H" in whole numbers from 1 to 999, like "4:3"')
        return value


def pattern_size(ratio: str, long_side: int, limits: Limits) -> tuple[int, int]:
    """(width, height) of ``ratio`` with the longer side ``long_side`` (module docstring)."""
    match = ASPECT_RATIO.fullmatch(ratio)
    assert match is not None  # checked by PatternParams
    rw, rh = int(match[1]), int(match[2])
    short = round(long_side * min(rw, rh) / max(rw, rh) / DIMENSION_STEP) * DIMENSION_STEP
    if short < limits.min_side:
        raise BadUserInput(
            "aspect_ratio",
            f"aspect_ratio {ratio} at long_side {long_side} makes a side of {short} px; "
            f"each side must be at least {limits.min_side} px",
        )
    return (long_side, short) if rw >= rh else (short, long_side)


class ExtractPattern(JobKind):
    name = "extract_pattern"
    title = "Pattern extraction"
    mutation = "extractPattern"
    Params = PatternParams
    inputs = (InputSpec("image", description="A photo of the print (a garment, a fabric)."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, PatternParams)
        input_info(inputs, "image")
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        long_side = check_side(params.long_side or DEFAULT_LONG_SIDE, "long_side", ctx.limits)
        width, height = pattern_size(params.aspect_ratio, long_side, ctx.limits)
        prompt = params.prompt if params.prompt.strip() else EXTRACT
        frozen = common_params(params.model_copy(update={"prompt": prompt}), entry, ctx.limits)
        frozen.update(
            width=width,
            height=height,
            aspect_ratio=params.aspect_ratio,
        )
        plan = image_plan(self.name, entry, frozen, ctx)
        plan.metadata["aspect_ratio"] = params.aspect_ratio
        return plan

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], "FluxKontextPipeline")
        width, height = int(params["width"]), int(params["height"])
        with wrapped_decoder(pipe.vae, x=True, y=True):
            return run_kontext(
                pipe, params, inputs["image"], on_step,
                on_latents=WrapAround(width, height, x=True, y=True),
            )  # fmt: skip


KIND = register(ExtractPattern())
