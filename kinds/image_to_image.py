"""``image_to_image``: FLUX repaints an input image towards a prompt (seed 000's img2img,
``POST /v1/image_to_image``). ``strength`` says how far it may move from the image: 1
redraws it entirely, small values only retouch it.

The output has the input's size (scaled down to the largest side allowed, each side
rounded down to a multiple of 16) unless the request gives ``width`` and ``height``; the
image is then scaled to cover that size and centre-cropped, never stretched.

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from billing.errors import BadUserInput
from kinds import lora
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
    denoising_steps,
    fitted,
    image_plan,
    input_info,
    output_size,
    resolve_model,
    run_flux,
)
from kinds.lora import LoraChoice, loras_field
from kinds.presets import PresetOptions, with_presets
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

# Img2img runs on a text-to-image checkpoint (its components, its weights).
PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline")
DEFAULT_SERVICE = "flux-dev"
DEFAULT_STRENGTH = 0.75


class ImageToImageParams(PresetOptions, FluxOptions):
    strength: float = Field(
        default=DEFAULT_STRENGTH,
        ge=0.0,
        le=1.0,
        description="How much to change the image: 1 redraws it, near 0 barely touches it.",
    )
    width: int | None = Field(default=None, description="Multiple of 16; default: the image's.")
    height: int | None = Field(default=None, description="Multiple of 16; default: the image's.")
    loras: tuple[LoraChoice, ...] | None = loras_field()


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
        plan = with_presets(image_plan(self.name, entry, frozen, ctx), params)
        return lora.apply(plan, params.loras, entry, ctx)

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
