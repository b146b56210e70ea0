"""``edit``: FLUX.1 Kontext changes an image as an instruction says ("make the car red",
"remove the people"), the instruction in ``prompt`` (``POST /v1/edit``; seed 003's
``action=edit`` and seed 004's edit tasks).

The output has the input's size (scaled down to the largest side allowed, each side
rounded down to a multiple of 16) unless ``width`` and ``height`` are given. Kontext's
pipeline would otherwise pick the size itself: it rescales the requested size to
``max_area`` (1024² by default) and snaps the reference image to one of its preferred
resolutions (``_auto_resize``). Both are turned off (``max_area`` = the planned area,
``_auto_resize=False``) so the job makes, and is priced at, exactly the planned size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

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
    fitted,
    image_plan,
    input_info,
    output_size,
    resolve_model,
    run_flux,
)
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

PIPELINES = ("FluxKontextPipeline",)
DEFAULT_SERVICE = "flux-kontext-pro"


class EditParams(FluxOptions):
    width: int | None = Field(default=None, description="Multiple of 16; default: the image's.")
    height: int | None = Field(default=None, description="Multiple of 16; default: the image's.")


class Edit(JobKind):
    name = "edit"
    title = "Edit"
    mutation = "editImage"
    Params = EditParams
    inputs = (InputSpec("image", description="The image to edit."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, EditParams)
        image = input_info(inputs, "image")
        entry = resolve_model(ctx, params, default_service=DEFAULT_SERVICE, pipelines=PIPELINES)
        width, height = output_size(params.width, params.height, image, ctx.limits)
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
        pipe = pipelines.get(params["model"], "FluxKontextPipeline")
        return run_kontext(pipe, params, inputs["image"], on_step)


def run_kontext(
    pipe: Any, params: Mapping[str, Any], image: Image, on_step: StepCallback, **extra: Any
) -> list[Output]:
    """Kontext at exactly the planned size (module docstring), with ``extra`` for
    ``run_flux`` (``extract_pattern`` adds its wrap-around)."""
    width, height = int(params["width"]), int(params["height"])
    return run_flux(
        pipe,
        params,
        on_step,
        width=width,
        height=height,
        preview=bool(params.get("preview")),
        # The reference image at the output size: its tokens are as many as the
        # output's, so memory and time follow the size the job was priced at.
        image=fitted(image, width, height),
        max_area=width * height,
        _auto_resize=False,
        **extra,
    )


KIND = register(Edit())
