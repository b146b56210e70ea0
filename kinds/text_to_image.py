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
    Output,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
    model_ref,
)
from kinds.flux import check_prompt, run_flux, run_flux_batch, text_pipeline
from kinds.lora import LoraChoice, loras_field
from kinds.presets import PresetOptions, with_presets
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image


class TextToImageParams(PresetOptions, FluxOptions):
    width: int | None = Field(default=None, description="Multiple of 16; default 1024.")
    height: int | None = Field(default=None, description="Multiple of 16; default 1024.")
    quality: Literal["standard", "high"] = "standard"
    loras: tuple[LoraChoice, ...] | None = loras_field()


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
        quote = ctx.prices.quote(
            width=request.width,
            height=request.height,
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
        return lora.apply(with_presets(plan, params), params.loras, request.model, ctx)

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        pipe = pipelines.get(params["model"], text_pipeline(params["model"]))
        return run_flux(
            pipe,
            params,
            on_step,
            width=int(params["width"]),
            height=int(params["height"]),
            preview=bool(params.get("preview")),
        )

    def batch_key(self, params: Mapping[str, Any]) -> Hashable | None:
        """One image of a plain prompt batches (README "Serving fast"): count 1, no
        negative prompt (true CFG runs the transformer twice), no LoRAs (adapters are
        per call), no previews (they show one image of the latents). Jobs batch on the
        same frozen model, pipeline class, size, steps and guidance; the output format
        is each job's own (the images are encoded one by one). FLUX.1 only for now: that
        a batched FLUX.2 image equals its single-job image is not tested yet."""
        if (
            text_pipeline(params["model"]) != "FluxPipeline"
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
