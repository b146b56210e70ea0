"""``text_to_image``: FLUX from a prompt (seed 001's ``generate``/``generateImage``, the
REST ``POST /v1/text_to_image``). Its request rules are billing/requests.py's, shared by
every surface; this module freezes a validated request into a job and runs it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from billing.errors import BadUserInput
from billing.requests import FLUX2_PIPELINES, ImageRequest, RawImageRequest, validate
from kinds import lora
from kinds.base import (
    FluxOptions,
    ImageInfo,
    JobKind,
    KindParams,
    Limits,
    Output,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
    model_ref,
)
from kinds.flux import (
    DIMENSION_STEP,
    check_prompt,
    check_side,
    denoising_steps,
    fitted,
    run_flux,
    run_flux_batch,
    text_pipeline,
)
from kinds.lora import LoraChoice, loras_field
from kinds.presets import PresetOptions, with_presets
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image


# How much of the schedule the refinement at the target size runs by default: enough to
# redraw detail at the new size, little enough to keep the composition.
TARGET_STRENGTH = 0.35


class TextToImageParams(PresetOptions, FluxOptions):
    width: int | None = Field(default=None, description="Multiple of 16; default 1024.")
    height: int | None = Field(default=None, description="Multiple of 16; default 1024.")
    quality: Literal["standard", "high"] = "standard"
    loras: tuple[LoraChoice, ...] | None = loras_field()
    target_width: int | None = Field(
        default=None,
        description="With target_height: upscale to this size (a multiple of 16, at least "
        "width, the same aspect ratio to within 16 px). The image made at width x height "
        "is enlarged and FLUX redraws it at the target (img2img at target_strength), "
        "adding detail at the new size. One job, priced at the target size. FLUX.1 "
        "models.",
    )
    target_height: int | None = Field(
        default=None, description="With target_width: the upscaled height (at least height)."
    )
    target_strength: float = Field(
        default=TARGET_STRENGTH,
        gt=0.0,
        le=1.0,
        description="How much of the schedule the redraw at the target size runs (0.35: "
        "about a third of the steps; 1 redraws it entirely).",
    )


def plan_request(
    request: ImageRequest,
    *,
    negative_prompt: str | None = None,
    true_cfg_scale: float = 1.0,
    steps: int | None = None,
    guidance: float | None = None,
    image_format: str = "png",
    output_quality: int = 90,
    count: int = 1,
) -> Plan:
    """A validated seed-001 request made into a job (``generate``/``generateImage`` and
    the REST shim come this way)."""
    params: dict[str, Any] = {
        "model": model_ref(request.model),
        "prompt": request.prompt,
        "negative_prompt": negative_prompt,
        "true_cfg_scale": true_cfg_scale if negative_prompt else 1.0,
        "steps": steps or request.steps,
        "guidance": request.guidance if guidance is None else guidance,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "quality": request.quality,
        "format": image_format,
        "output_quality": output_quality,
        "count": count,
    }
    return Plan(
        params=params,
        quote=request.quote,
        provider=request.provider,
        version=request.version,
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        steps=int(params["steps"]),
        guidance=float(params["guidance"]),
        seed=request.seed,
        quality=request.quality,
    )


def made_size(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """The size a job that upscales to a target made its image at (None: it made it at
    its output size)."""
    if "target_width" not in params:
        return None
    return int(params["width"]), int(params["height"])


def keeps_aspect(made: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether ``target`` has ``made``'s aspect ratio, to within one grid step of height."""
    (w, h), (tw, th) = made, target
    return abs(th * w - tw * h) <= DIMENSION_STEP * w


def _target(
    params: TextToImageParams, request: ImageRequest, limits: Limits
) -> tuple[int, int] | None:
    """The size to upscale to (None: the image is made at its size and that is all). Any
    strength above 0 leaves at least one step to redraw (``denoising_steps``)."""
    tw, th = params.target_width, params.target_height
    if tw is None and th is None:
        return None
    if tw is None or th is None:
        missing = "target_width" if tw is None else "target_height"
        raise BadUserInput(missing, f"{missing} is missing: give both target sides, or neither")
    check_side(tw, "target_width", limits)
    check_side(th, "target_height", limits)
    if (tw, th) == (request.width, request.height):
        return None  # nothing to upscale
    if tw < request.width or th < request.height:
        raise BadUserInput(
            "target_width",
            f"target {tw}x{th} must be at least the size made, {request.width}x"
            f"{request.height} (an upscale)",
        )
    if not keeps_aspect((request.width, request.height), (tw, th)):
        raise BadUserInput(
            "target_height",
            f"target {tw}x{th} must keep the aspect ratio of {request.width}x"
            f"{request.height} (to within {DIMENSION_STEP} px): the image is enlarged, "
            "never cropped",
        )
    if request.model.pipeline != "FluxPipeline":
        raise BadUserInput(
            "target_width",
            f"service {request.provider!r} cannot redraw at a target size (FLUX.1 models "
            "can); make the image at the size you need",
        )
    return tw, th


class TextToImage(JobKind):
    name = "text_to_image"
    title = "Text to image"
    Params = TextToImageParams
    inputs = ()

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, TextToImageParams)
        if not params.service:
            raise BadUserInput("service", "service is required")
        request = validate(
            RawImageRequest(
                provider=params.service,
                prompt=params.prompt,
                width=params.width,
                height=params.height,
                version=params.version,
                quality=params.quality,
                seed=params.seed if params.seed >= 0 else None,
            ),
            catalog=ctx.catalog,
            prices=ctx.prices,
            limits=ctx.limits,
            fields={
                "provider": "service", "prompt": "prompt", "width": "width",
                "height": "height", "version": "version", "quality": "quality",
                "seed": "seed", "webhook_url": "webhook_url", "type": "type",
                "webhook_events": "webhook_events",
            },
        )  # fmt: skip
        negative = params.negative_prompt
        if negative is not None and negative.strip():
            negative = check_prompt(negative, ctx.limits, "negative_prompt")
        else:
            negative = None
        if negative is not None and request.model.pipeline in FLUX2_PIPELINES:
            raise BadUserInput(
                "negative_prompt", f"service {request.provider!r} takes no negative prompt"
            )
        target = _target(params, request, ctx.limits)
        width, height = target or (request.width, request.height)
        quote = ctx.prices.quote(
            width=width,
            height=height,
            version=request.version,
            quality=request.quality,
            kind=self.name,
            count=params.count,
        )
        plan = plan_request(
            replace(request, quote=quote),
            negative_prompt=negative,
            true_cfg_scale=params.true_cfg_scale,
            steps=params.steps,
            guidance=params.guidance,
            image_format=params.format,
            output_quality=params.output_quality,
            count=params.count,
        )
        if target is not None:
            frozen = {
                **plan.params,
                "target_width": width,
                "target_height": height,
                "target_strength": params.target_strength,
            }
            plan = replace(plan, params=frozen, width=width, height=height)
        return lora.apply(with_presets(plan, params), params.loras, request.model, ctx)

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], text_pipeline(params["model"]))
        preview = bool(params.get("preview"))
        if "target_width" not in params:
            return run_flux(
                pipe,
                params,
                on_step,
                width=int(params["width"]),
                height=int(params["height"]),
                preview=preview,
            )
        # Made at width x height, then each image enlarged to the target and redrawn
        # there by img2img: progress counts both passes' steps.
        steps, count = int(params["steps"]), int(params.get("count", 1))
        strength = float(params["target_strength"])
        redraw = denoising_steps(steps, strength)
        total = steps + count * redraw

        def first(step: int, _steps: int, shot: bytes | None) -> None:
            on_step(step, total, shot)

        made = run_flux(
            pipe, params, first, width=int(params["width"]), height=int(params["height"]),
            preview=preview,
        )  # fmt: skip
        width, height = int(params["target_width"]), int(params["target_height"])
        refine = pipelines.get(params["model"], "FluxImg2ImgPipeline")
        outputs: list[Output] = []
        for n, output in enumerate(made):
            done = steps + n * redraw

            def then(step: int, _steps: int, shot: bytes | None, done: int = done) -> None:
                on_step(done + step, total, shot)

            outputs += run_flux(
                refine, {**params, "count": 1}, then, width=width, height=height,
                preview=preview, image=fitted(output.image, width, height), strength=strength,
            )  # fmt: skip
        return outputs

    def batch_key(self, params: Mapping[str, Any]) -> Hashable | None:
        """One image of a plain prompt batches (README "Serving fast"): count 1, no
        negative prompt (true CFG runs the transformer twice), no LoRAs (adapters are
        per call), no previews (they show one image of the latents). Jobs batch on the
        same frozen model, pipeline class, size, steps and guidance; the output format
        is each job's own (the images are encoded one by one). FLUX.1 only for now: that
        a batched FLUX.2 image equals its single-job image is not tested yet."""
        if (
            text_pipeline(params["model"]) != "FluxPipeline"
            or "target_width" in params
            or int(params.get("count", 1)) != 1
            or params.get("negative_prompt")
            or params.get("loras")
            or params.get("preview")
        ):
            return None
        model = params["model"]
        return (
            tuple(sorted((str(k), str(v)) for k, v in model.items())),
            text_pipeline(model),
            int(params["width"]),
            int(params["height"]),
            int(params["steps"]),
            float(params["guidance"]),
        )

    def run_batch(
        self,
        pipelines: Pipelines,
        params: Sequence[Mapping[str, Any]],
        on_step: StepCallback,
    ) -> list[list[Output]]:
        first = params[0]
        pipe = pipelines.get(first["model"], text_pipeline(first["model"]))
        images = run_flux_batch(
            pipe, params, on_step, width=int(first["width"]), height=int(first["height"])
        )
        return [[image] for image in images]


KIND = register(TextToImage())
