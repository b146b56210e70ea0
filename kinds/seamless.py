"""``seamless``: a tile that repeats without visible seams (``POST /v1/seamless``,
GraphQL ``seamlessTile``; seed 004's ``submit_seamless_task``). Two modes:

* **From a prompt** (no image): FLUX paints on a torus (``kinds.tiling``): the latents
  are rolled between denoising steps and the VAE decodes with circular padding, so the
  image's edges continue each other. ``width``/``height`` as for text to image
  (default 1024x1024).
* **From an image** (``image``, ``image_url`` or ``image_id``): the image (fitted to the
  size limits, sides multiples of 16) is offset by half its size, so its opposite edges
  meet in a cross through the middle; FLUX Fill repaints a band along that cross; pixels
  outside the band are the original's, so the offset image's own edges, which were
  neighbouring pixels of the original, continue each other exactly. When both
  directions wrap, the band's two ends lie on the tile's edges, so a second Fill pass,
  with the image offset by a further quarter, repaints the two places where those ends
  meet. Finally the tile is offset back: the composition stays where it was and the
  repainted bands run along the tile's edges.

Outputs: position 0 the tile, position 1 a preview of it repeated (seed 004's
``grid_url``): 3x3 when both directions wrap, 3x1 or 1x3 when one does, scaled to fit the
largest side allowed. Priced as one image of the tile's size (the preview is free):
``count`` is always 1.

Seed 004's options:

* ``direction``: 0 wraps both ways (default), 1 top/bottom only, 2 left/right only. (Seed
  004 previews 2x2, 1x2, 2x1; a 3x3 preview shows all four seams around one tile.)
* ``fit`` (0.1-0.9, default 0.5; image mode only): how wide the repainted band is, from
  2.5 % (0.1) to 22.5 % (0.9) of the shorter side: wider blends more smoothly and keeps less
  of the original. A prompt has no seam to blend, so ``fit`` with a prompt is refused.
* ``expand_top``/``expand_bottom``/``expand_left``/``expand_right`` (0-0.3; image mode
  only): first extend the image by that fraction of its height (top, bottom) or width
  (left, right), as ``outpaint`` does (FLUX Fill paints the new area; the canvas is then
  rounded up to a multiple of 16 on the right and bottom), then make the larger image
  tileable. The tile has the canvas's size, and the job costs an ``outpaint`` and a
  ``seamless`` image of that size (two kinds of Fill run, each priced as its own kind).

FLUX Fill has no negative prompt: image mode refuses ``negative_prompt`` and
``true_cfg_scale`` as ``inpaint`` does. In image mode ``prompt`` is optional (it describes
what the bands should show; default: a neutral continuation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import Field

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
    check_side,
    common_params,
    fit_size,
    fitted,
    image_plan,
    resolve_model,
    run_flux,
)
from kinds.inpaint import check_fill_options, paste_masked
from kinds.outpaint import SIDES, Outpaint, outpaint_canvas, rounded_canvas
from kinds.registry import register
from kinds.tiling import BOTH, DIRECTIONS, WrapAround, grid_preview, wrapped_decoder, wraps

if TYPE_CHECKING:
    from PIL.Image import Image

PROMPT_PIPELINES = ("FluxPipeline",)
FILL_PIPELINES = ("FluxFillPipeline",)
PROMPT_SERVICE = "flux-dev"
FILL_SERVICE = "flux-fill"
DEFAULT_SIDE = 1024
DEFAULT_FIT = 0.5
# What the bands are repainted with when no prompt is given.
SEAM_PROMPT = "seamless continuation of the surrounding image, same texture, colours and light"
# The band's width per unit of fit, as a fraction of the shorter side: fit 0.9 gives a
# band of 22.5 % of it, whose second-pass patches (1.5x its half-width from their
# centres, a quarter of the side in) stay clear of the tile's edges.
BAND_PER_FIT = 0.25
BAND_STEP = 8


class SeamlessParams(FluxOptions):
    prompt: str = Field(
        default="", description="What to paint; required without an image, optional with one."
    )
    count: int = Field(default=1, ge=1, le=1, description="Always 1: one tile and its preview.")
    width: int | None = Field(default=None, description="Prompt mode: multiple of 16; 1024.")
    height: int | None = Field(default=None, description="Prompt mode: multiple of 16; 1024.")
    direction: int = Field(
        default=BOTH, ge=0, le=2, description="0: wraps both ways; 1: top/bottom; 2: left/right."
    )
    fit: float | None = Field(
        default=None, ge=0.1, le=0.9, description="Image mode: seam band width, 0.1-0.9; 0.5."
    )
    expand_top: float = Field(
        default=0.0, ge=0.0, le=0.3, description="Image: extend up first, a part of the height."
    )
    expand_bottom: float = Field(
        default=0.0, ge=0.0, le=0.3, description="Image: extend down, a part of the height."
    )
    expand_left: float = Field(
        default=0.0, ge=0.0, le=0.3, description="Image: extend left, a part of the width."
    )
    expand_right: float = Field(
        default=0.0, ge=0.0, le=0.3, description="Image: extend right, a part of the width."
    )


def expansion(
    params: SeamlessParams, width: int, height: int, ctx: PlanContext
) -> tuple[int, int, int, int]:
    """The (left, right, top, bottom) pixels to extend the ``width``x``height`` image by
    (its ``expand_*`` fractions), checked and rounded as ``outpaint`` does; all 0 when
    nothing is asked. An error names the ``expand_*`` field the client sent."""
    asked = {
        side: round(getattr(params, f"expand_{side}") * (height if side in ("top", "bottom")
                                                          else width))
        for side in SIDES
    }  # fmt: skip
    if not any(asked.values()):
        return 0, 0, 0, 0
    try:
        return rounded_canvas(
            asked["left"], asked["right"], asked["top"], asked["bottom"],
            ImageInfo(width, height), ctx.limits,
        )  # fmt: skip
    except BadUserInput as exc:
        field = f"expand_{exc.field}" if exc.field in SIDES else exc.field
        raise BadUserInput(field, str(exc)) from exc


def band_half_width(fit: float, width: int, height: int) -> int:
    """Half the band's width in pixels (module docstring), a multiple of 8."""
    half = fit * BAND_PER_FIT * min(width, height) / 2
    return max(BAND_STEP, int(half) // BAND_STEP * BAND_STEP)


class Seamless(JobKind):
    name = "seamless"
    title = "Seamless tile"
    mutation = "seamlessTile"
    Params = SeamlessParams
    inputs = (
        InputSpec(
            "image", required=False, description="Make this image tileable (else: a prompt)."
        ),
    )

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, SeamlessParams)
        image = inputs.get("image")
        if image is None:
            return self._plan_prompt(params, ctx)
        return self._plan_image(params, image, ctx)

    def _plan_prompt(self, params: SeamlessParams, ctx: PlanContext) -> Plan:
        for side in SIDES:
            if getattr(params, f"expand_{side}"):
                raise BadUserInput(
                    f"expand_{side}", f"expand_{side} extends an image; a prompt has none"
                )
        if params.fit is not None:
            raise BadUserInput("fit", "fit applies to an image (the seam band); a prompt has none")
        if not params.prompt.strip():
            raise BadUserInput("prompt", "prompt is required when no image is given")
        entry = resolve_model(
            ctx, params, default_service=PROMPT_SERVICE, pipelines=PROMPT_PIPELINES
        )
        width = check_side(params.width or DEFAULT_SIDE, "width", ctx.limits)
        height = check_side(params.height or DEFAULT_SIDE, "height", ctx.limits)
        frozen = common_params(params, entry, ctx.limits)
        frozen.update(width=width, height=height, mode="prompt", direction=params.direction)
        frozen.update(grid_max_side=ctx.limits.max_side)
        return self._finish(image_plan(self.name, entry, frozen, ctx))

    def _plan_image(self, params: SeamlessParams, image: ImageInfo, ctx: PlanContext) -> Plan:
        for field in ("width", "height"):
            if getattr(params, field) is not None:
                raise BadUserInput(field, f"{field} applies to a prompt; the tile has the image's")
        check_fill_options(params)
        entry = resolve_model(ctx, params, default_service=FILL_SERVICE, pipelines=FILL_PIPELINES)
        width, height = fit_size(image.width, image.height, ctx.limits)
        left, right, top, bottom = expansion(params, width, height, ctx)
        width, height = width + left + right, height + top + bottom
        fit = DEFAULT_FIT if params.fit is None else params.fit
        prompt = params.prompt if params.prompt.strip() else SEAM_PROMPT
        frozen = common_params(params.model_copy(update={"prompt": prompt}), entry, ctx.limits)
        frozen.update(
            width=width,
            height=height,
            mode="image",
            direction=params.direction,
            fit=fit,
            band=band_half_width(fit, width, height),
            grid_max_side=ctx.limits.max_side,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
        )
        plan = image_plan(self.name, entry, frozen, ctx)
        if left or right or top or bottom:
            # The extension is a Fill run of its own, priced as the outpaint it is.
            extension = ctx.prices.quote(
                width=width, height=height, version=entry.version, kind=Outpaint.name
            )
            plan = replace(
                plan,
                quote=replace(
                    plan.quote,
                    credits=plan.quote.credits + extension.credits,
                    unit_credits=plan.quote.unit_credits + extension.unit_credits,
                ),
            )
            plan.metadata.update(expanded={"left": left, "right": right, "top": top,
                                           "bottom": bottom})  # fmt: skip
        return self._finish(plan)

    @staticmethod
    def _finish(plan: Plan) -> Plan:
        plan.metadata.update(
            mode=plan.params["mode"], direction=DIRECTIONS[int(plan.params["direction"])]
        )
        return plan

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        direction = int(params["direction"])
        if params["mode"] == "prompt":
            tile = tile_from_prompt(pipelines, params, on_step, direction)
        else:
            tile = tile_from_image(pipelines, params, inputs["image"], on_step, direction)
        grid = grid_preview(tile, direction, int(params["grid_max_side"]))
        return [Output(image=tile), Output(image=grid)]


def tile_from_prompt(
    pipelines: Pipelines, params: Mapping[str, Any], on_step: StepCallback, direction: int
) -> Image:
    pipe = pipelines.get(params["model"], "FluxPipeline")
    width, height = int(params["width"]), int(params["height"])
    across, down = wraps(direction)
    with wrapped_decoder(pipe.vae, x=across, y=down):
        [output] = run_flux(
            pipe,
            params,
            on_step,
            width=width,
            height=height,
            preview=bool(params.get("preview")),
            on_latents=WrapAround(width, height, x=across, y=down),
        )
    return output.image


def tile_from_image(
    pipelines: Pipelines,
    params: Mapping[str, Any],
    image: Image,
    on_step: StepCallback,
    direction: int,
) -> Image:
    """The image made tileable by one or two Fill passes (module docstring)."""
    from PIL import Image as PILImage
    from PIL import ImageChops

    pipe = pipelines.get(params["model"], "FluxFillPipeline")
    width, height = int(params["width"]), int(params["height"])
    band = int(params["band"])
    across, down = wraps(direction)
    # Jobs from before expand_* was served have no padding in their params.
    pads = {side: int(params.get(side, 0)) for side in ("left", "right", "top", "bottom")}
    expanding = any(pads.values())
    passes = (2 if across and down else 1) + expanding

    def fill(frame: Image, mask: Image, done: int) -> Image:
        def step(i: int, total: int, shot: bytes | None) -> None:
            on_step(done * total + i, passes * total, shot)

        [painted] = run_flux(
            pipe, {**params, "count": 1}, step, width=width, height=height,
            preview=bool(params.get("preview")), image=frame, mask_image=mask,
        )  # fmt: skip
        return paste_masked(frame, painted.image, mask, feather=max(2, band // 3))

    if expanding:  # the outpaint first: the image on a larger canvas, the rest painted
        canvas, mask = outpaint_canvas(image, width=width, height=height, **pads)
        source = fill(canvas, mask, 0)
    else:
        source = fitted(image, width, height)
    done = int(expanding)
    # Pass 1: the original's edges meet in the middle; repaint a band over them.
    dx, dy = (width // 2 if across else 0), (height // 2 if down else 0)
    frame = ImageChops.offset(source, dx, dy)
    mask = PILImage.new("L", (width, height), 0)
    if across:
        mask.paste(255, (width // 2 - band, 0, width // 2 + band, height))
    if down:
        mask.paste(255, (0, height // 2 - band, width, height // 2 + band))
    frame = fill(frame, mask, done)
    if across and down:
        # The bands end on the frame's edges, where each end meets the other end of the
        # same band: (w/2, 0|h) and (0|w, h/2). A further quarter offset brings both
        # meeting places inside, at (3w/4, h/4) and (w/4, 3h/4); repaint a square there.
        qx, qy = width // 4, height // 4
        frame = ImageChops.offset(frame, qx, qy)
        dx, dy = dx + qx, dy + qy
        reach = band + band // 2
        mask = PILImage.new("L", (width, height), 0)
        for cx, cy in ((3 * qx, qy), (qx, 3 * qy)):
            mask.paste(255, (cx - reach, cy - reach, cx + reach, cy + reach))
        frame = fill(frame, mask, done + 1)
    return ImageChops.offset(frame, -dx, -dy)


KIND = register(Seamless())
