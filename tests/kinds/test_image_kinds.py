"""The image job kinds (image_to_image, edit, inpaint, outpaint): each request planned
the way the API plans it (the dev model registry, the shipped price table, default
limits), then run the way the worker runs it (``LoadedPipelines`` over the tiny
pipelines, real PIL inputs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image

from billing.errors import BadUserInput
from gpu_worker.pipeline import LoadedPipelines
from kinds import edit, image_to_image, inpaint, outpaint
from kinds.base import ImageInfo, JobKind, Output, Plan, PlanContext
from kinds.flux import denoising_steps
from kinds.outpaint import outpaint_canvas
from kinds.text_to_image import made_size
from runtime.queue import size_key
from tests.kinds.conftest import info, picture

IMG2IMG = image_to_image.KIND
EDIT = edit.KIND
INPAINT = inpaint.KIND
OUTPAINT = outpaint.KIND
PROMPT = "a photo of a cat on a mat"


class Stop(Exception):
    pass


def half_mask(width: int, height: int) -> Image.Image:
    """White (repaint) on the right half."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 2, 0, width, height))
    return mask


def images_for(kind: JobKind, width: int = 320, height: int = 256) -> dict[str, Image.Image]:
    images = {"image": picture(width, height)}
    if kind is INPAINT:
        images["mask"] = half_mask(width, height)
    return images


def plan(
    kind: JobKind,
    ctx: PlanContext,
    raw: Mapping[str, Any],
    inputs: Mapping[str, ImageInfo] | None = None,
) -> Plan:
    if inputs is None:
        inputs = {name: info(image) for name, image in images_for(kind).items()}
    return kind.plan(kind.parse({"prompt": PROMPT, **raw}), inputs, ctx)


def run(
    kind: JobKind,
    pipelines: LoadedPipelines,
    planned: Plan,
    images: Mapping[str, Image.Image],
    steps: list[tuple[int, int]] | None = None,
) -> list[Output]:
    # Through JSON, as the job's params travel: a value that is not JSON fails here.
    params = json.loads(json.dumps(planned.params))

    def on_step(step: int, total: int, _preview: bytes | None) -> None:
        if steps is not None:
            steps.append((step, total))

    return kind.run(pipelines, params, images, on_step)


def sizes(outputs: list[Output]) -> list[tuple[int, int]]:
    return [output.image.size for output in outputs]


# --- image_to_image --------------------------------------------------------------------


def test_image_to_image_keeps_the_input_size(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    images = images_for(IMG2IMG)
    planned = plan(IMG2IMG, ctx, {}, {"image": info(images["image"])})
    assert (planned.width, planned.height) == (320, 256)
    assert planned.params["strength"] == 0.75
    assert planned.provider == "flux-dev"
    assert planned.params["model"]["pipeline"] == "FluxPipeline"
    steps: list[tuple[int, int]] = []
    outputs = run(IMG2IMG, pipelines, planned, images, steps)
    assert sizes(outputs) == [(320, 256)]
    assert outputs[0].image.mode == "RGB"
    # 4 steps at strength 0.75 denoise 3; progress is reported out of those and ends full.
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_image_to_image_at_a_given_size_makes_four(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    planned = plan(IMG2IMG, ctx, {"width": 256, "height": 256, "count": 4, "strength": 1.0})
    assert (planned.width, planned.height) == (256, 256)
    outputs = run(IMG2IMG, pipelines, planned, images_for(IMG2IMG))
    assert sizes(outputs) == [(256, 256)] * 4


def test_image_to_image_large_input_is_fitted_to_the_limits(ctx: PlanContext) -> None:
    planned = plan(IMG2IMG, ctx, {}, {"image": ImageInfo(width=4000, height=3000)})
    assert (planned.width, planned.height) == (2048, 1536)


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [(4, 1.0, 4), (4, 0.75, 3), (4, 0.2, 1), (28, 0.5, 14), (4, 0.0, 0), (4, 1e-17, 0)],
)
def test_denoising_steps_follow_diffusers(steps: int, strength: float, expected: int) -> None:
    assert denoising_steps(steps, strength) == expected


# --- edit --------------------------------------------------------------------------------


def test_edit_makes_exactly_the_planned_size(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    images = images_for(EDIT)
    planned = plan(EDIT, ctx, {"prompt": "make the block blue", "count": 2})
    assert planned.provider == "flux-kontext-pro"
    assert planned.guidance == 2.5
    assert (planned.width, planned.height) == (320, 256)
    outputs = run(EDIT, pipelines, planned, images)
    # Kontext would otherwise rescale to ~1 MP and snap to its preferred resolutions.
    assert sizes(outputs) == [(320, 256)] * 2


def test_edit_at_a_given_size(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    planned = plan(EDIT, ctx, {"service": "flux-kontext-max", "width": 256, "height": 384})
    assert planned.provider == "flux-kontext-max"
    outputs = run(EDIT, pipelines, planned, images_for(EDIT))
    assert sizes(outputs) == [(256, 384)]


def test_edit_takes_a_negative_prompt(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    planned = plan(EDIT, ctx, {"negative_prompt": "blurry", "true_cfg_scale": 2.0})
    assert planned.params["negative_prompt"] == "blurry"
    assert sizes(run(EDIT, pipelines, planned, images_for(EDIT))) == [(320, 256)]


# --- inpaint -----------------------------------------------------------------------------


def test_inpaint_keeps_the_size(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    images = images_for(INPAINT)
    planned = plan(INPAINT, ctx, {})
    assert planned.provider == "flux-fill"
    assert planned.guidance == 30.0
    assert planned.params["negative_prompt"] is None
    outputs = run(INPAINT, pipelines, planned, images)
    assert sizes(outputs) == [(320, 256)]


def test_inpaint_of_a_large_image_fits_image_and_mask(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    images = {"image": picture(2200, 600), "mask": half_mask(2200, 600)}
    planned = plan(INPAINT, ctx, {}, {k: info(v) for k, v in images.items()})
    assert (planned.width, planned.height) == (2048, 544)
    small = {"image": picture(530, 300), "mask": half_mask(530, 300)}
    planned = plan(INPAINT, ctx, {"count": 3}, {k: info(v) for k, v in small.items()})
    assert (planned.width, planned.height) == (528, 288)
    assert sizes(run(INPAINT, pipelines, planned, small)) == [(528, 288)] * 3


# --- outpaint ----------------------------------------------------------------------------


def test_outpaint_left_adds_to_the_width(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    images = images_for(OUTPAINT)
    planned = plan(OUTPAINT, ctx, {"left": 64})
    assert (planned.width, planned.height) == (320 + 64, 256)
    assert {k: planned.params[k] for k in ("left", "right", "top", "bottom")} == {
        "left": 64, "right": 0, "top": 0, "bottom": 0,
    }  # fmt: skip
    outputs = run(OUTPAINT, pipelines, planned, images)
    assert sizes(outputs) == [(384, 256)]


def test_outpaint_to_an_aspect_ratio(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    images = {"image": picture(256, 256)}
    planned = plan(OUTPAINT, ctx, {"aspectRatio": "16:9"}, {"image": info(images["image"])})
    # 256 x 16/9 = 455 → 199 px added, centred; 9 more on the right for a multiple of 16.
    assert (planned.width, planned.height) == (464, 256)
    assert (planned.params["left"], planned.params["right"]) == (99, 109)
    assert sizes(run(OUTPAINT, pipelines, planned, images)) == [(464, 256)]
    tall = plan(OUTPAINT, ctx, {"aspect_ratio": "2:3"}, {"image": ImageInfo(320, 256)})
    assert (tall.width, tall.height) == (320, 480)
    assert (tall.params["top"], tall.params["bottom"]) == (112, 112)


def test_outpaint_rounds_the_canvas_up_on_the_right_and_bottom(ctx: PlanContext) -> None:
    planned = plan(OUTPAINT, ctx, {"top": 10, "left": 3}, {"image": ImageInfo(330, 250)})
    assert (planned.width, planned.height) == (336, 272)
    assert [planned.params[k] for k in ("left", "right", "top", "bottom")] == [3, 3, 10, 12]


def test_outpaint_canvas_and_mask() -> None:
    image = picture(320, 256)
    canvas, mask = outpaint_canvas(image, width=384, height=256, left=64, right=0, top=0, bottom=0)
    assert canvas.size == mask.size == (384, 256)
    assert canvas.crop((64, 0, 384, 256)).tobytes() == image.tobytes()
    assert canvas.getpixel((10, 10)) == (128, 128, 128)
    # White over the new area and an 8 px band into the image; black over the rest.
    assert mask.getpixel((0, 0)) == 255
    assert mask.getpixel((64 + 7, 100)) == 255
    assert mask.getpixel((64 + 8, 100)) == 0
    assert mask.getpixel((383, 255)) == 0


# --- every kind --------------------------------------------------------------------------

KINDS = pytest.mark.parametrize("kind", [IMG2IMG, EDIT, INPAINT, OUTPAINT], ids=lambda k: k.name)


@KINDS
def test_a_step_callback_that_raises_stops_the_run(
    kind: JobKind, ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    planned = plan(kind, ctx, {"left": 16} if kind is OUTPAINT else {})
    calls: list[int] = []

    def on_step(step: int, _total: int, _preview: bytes | None) -> None:
        calls.append(step)
        raise Stop

    with pytest.raises(Stop):
        kind.run(pipelines, planned.params, images_for(kind), on_step)
    assert calls == [1]


@KINDS
def test_previews_are_small_pngs(
    kind: JobKind, ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    planned = plan(kind, ctx, {"left": 16} if kind is OUTPAINT else {})
    previews: list[bytes] = []

    def on_step(_step: int, _total: int, preview: bytes | None) -> None:
        if preview is not None:
            previews.append(preview)

    params = {**planned.params, "preview": True}
    assert len(kind.run(pipelines, params, images_for(kind), on_step)) == 1
    assert previews and all(p.startswith(b"\x89PNG") for p in previews)


@KINDS
def test_quote_is_one_image_times_count(kind: JobKind, ctx: PlanContext) -> None:
    raw: dict[str, Any] = {"left": 64} if kind is OUTPAINT else {}
    one = plan(kind, ctx, raw)
    three = plan(kind, ctx, {**raw, "count": 3})
    expected = ctx.prices.quote(
        width=one.width, height=one.height, version=one.version, kind=kind.name
    )
    assert one.quote == expected
    assert one.quote.kind == kind.name
    assert three.quote.unit_credits == one.quote.credits
    assert three.quote.credits == 3 * one.quote.credits
    assert three.params["count"] == 3
    plain = ctx.prices.quote(width=one.width, height=one.height, version=one.version)
    assert one.quote.credits == plain.credits + ctx.prices.kind_surcharge[kind.name]


@KINDS
def test_plan_freezes_json_params(kind: JobKind, ctx: PlanContext) -> None:
    planned = plan(kind, ctx, {"left": 16} if kind is OUTPAINT else {})
    params = planned.params
    assert json.loads(json.dumps(params)) == params
    assert (params["width"], params["height"]) == (planned.width, planned.height)
    assert 0 <= params["seed"] == planned.seed
    assert params["steps"] == planned.steps == 4
    assert params["model"]["version"] == planned.version
    again = plan(kind, ctx, {"left": 16, "seed": 7} if kind is OUTPAINT else {"seed": 7})
    assert again.seed == 7


BAD: list[tuple[JobKind, dict[str, Any], dict[str, ImageInfo] | None, str]] = [
    (IMG2IMG, {"strength": 1.5}, None, "strength"),
    (IMG2IMG, {"strength": -0.1}, None, "strength"),
    (IMG2IMG, {"strength": 0}, None, "strength"),
    (IMG2IMG, {"bogus": 1}, None, "bogus"),
    (IMG2IMG, {"width": 512}, None, "height"),
    (IMG2IMG, {"width": 500, "height": 512}, None, "width"),
    (IMG2IMG, {"width": 512, "height": 4096}, None, "height"),
    (IMG2IMG, {}, {"image": ImageInfo(200, 200)}, "image"),
    (IMG2IMG, {}, {}, "image"),
    (IMG2IMG, {"service": "flux-fill"}, None, "service"),
    (IMG2IMG, {"service": "nope"}, None, "service"),
    (IMG2IMG, {"count": 5}, None, "count"),
    (IMG2IMG, {"prompt": " "}, None, "prompt"),
    (EDIT, {"service": "flux-dev"}, None, "service"),
    (EDIT, {"service": "flux-kontext-pro", "version": "v9"}, None, "version"),
    (EDIT, {"height": 256}, None, "width"),
    (EDIT, {"steps": 0}, None, "steps"),
    (INPAINT, {}, {"image": ImageInfo(320, 256), "mask": ImageInfo(320, 240)}, "mask"),
    (INPAINT, {}, {"image": ImageInfo(320, 256)}, "mask"),
    (INPAINT, {"service": "flux-schnell"}, None, "service"),
    (INPAINT, {"negative_prompt": "blurry"}, None, "negative_prompt"),
    (INPAINT, {"true_cfg_scale": 2.0}, None, "true_cfg_scale"),
    (INPAINT, {"width": 256}, None, "width"),
    (OUTPAINT, {}, None, "left"),
    (OUTPAINT, {"left": 0, "top": 0}, None, "left"),
    (OUTPAINT, {"left": -16}, None, "left"),
    (OUTPAINT, {"aspect_ratio": "wide"}, None, "aspect_ratio"),
    (OUTPAINT, {"aspect_ratio": "16:0"}, None, "aspect_ratio"),
    (OUTPAINT, {"aspect_ratio": "16:9:1"}, None, "aspect_ratio"),
    (OUTPAINT, {"aspect_ratio": "16:9", "left": 64}, None, "aspect_ratio"),
    (OUTPAINT, {"aspect_ratio": "5:4"}, None, "aspect_ratio"),  # 320x256 is already 5:4
    (OUTPAINT, {"aspect_ratio": "999:1"}, None, "aspect_ratio"),
    (OUTPAINT, {"left": 1000, "right": 800}, None, "left"),
    (OUTPAINT, {"bottom": 2000}, None, "bottom"),
    (OUTPAINT, {"left": 64}, {"image": ImageInfo(2048, 100)}, "left"),
    (OUTPAINT, {"left": 16}, {"image": ImageInfo(3000, 1000)}, "image"),
    (OUTPAINT, {"left": 16}, {"image": ImageInfo(300, 100)}, "image"),
    (OUTPAINT, {"left": 16, "negative_prompt": "x"}, None, "negative_prompt"),
    (OUTPAINT, {"left": 16, "service": "flux-kontext-pro"}, None, "service"),
]


@pytest.mark.parametrize(
    ("kind", "raw", "inputs", "field"),
    BAD,
    ids=[f"{k.name}-{f}-{i}" for i, (k, _, _, f) in enumerate(BAD)],
)
def test_bad_requests_name_the_field(
    kind: JobKind,
    raw: dict[str, Any],
    inputs: dict[str, ImageInfo] | None,
    field: str,
    ctx: PlanContext,
) -> None:
    with pytest.raises(BadUserInput) as caught:
        plan(kind, ctx, raw, inputs)
    assert caught.value.field == field
    assert caught.value.message


def test_messages_say_what_to_do(ctx: PlanContext) -> None:
    with pytest.raises(BadUserInput, match="they must be the same size"):
        plan(INPAINT, ctx, {}, {"image": ImageInfo(320, 256), "mask": ImageInfo(256, 256)})
    with pytest.raises(BadUserInput, match=r"canvas would be 2112x256.*at most 2048"):
        plan(OUTPAINT, ctx, {"right": 1792})
    with pytest.raises(BadUserInput, match="cannot run this operation; use one of: flux-fill"):
        plan(OUTPAINT, ctx, {"left": 16, "service": "flux-dev"})
    with pytest.raises(BadUserInput, match="no denoising step"):
        plan(IMG2IMG, ctx, {"strength": 0.0})


def test_an_upscaled_job_is_timed_apart_from_one_made_at_its_size() -> None:
    """Made at 256x256 and redrawn at 512x384: its step and job times are not those of a
    job made at 512x384 (ETAs read them by this key)."""
    upscaled = {"width": 256, "height": 256, "target_width": 512, "target_height": 384}
    assert made_size(upscaled) == (256, 256)
    assert made_size({"width": 512, "height": 384}) is None
    assert size_key("v1", 512, 384, "text_to_image", made_size(upscaled)) == "v1:256x256>512x384"
    assert size_key("v1", 512, 384) == "v1:512x384"
