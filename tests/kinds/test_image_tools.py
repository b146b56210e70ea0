"""The image tools of issue 12 (seamless, cleanup, extract_pattern): planned the way the
API plans them (the dev model registry, the shipped price table, default limits), run
the way the worker runs them (``LoadedPipelines`` over the tiny pipelines), and their
outputs checked for what they claim: tiles whose opposite edges continue each other,
cleanups that change nothing outside the mask."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch import nn

from billing.errors import BadUserInput
from gpu_worker.pipeline import LoadedPipelines
from kinds import cleanup, pattern, seamless
from kinds.base import JobKind, Output, Plan, PlanContext
from kinds.tiling import seam_ratio
from tests.kinds.conftest import info, picture

SEAMLESS = seamless.KIND
CLEANUP = cleanup.KIND
PATTERN = pattern.KIND
# A tile's wrap-around step is like any neighbouring step (about 1); an image whose
# edges do not meet is far above (the test picture: over 200 top to bottom).
TILES = 1.5


def plan(kind: JobKind, ctx: PlanContext, raw: Mapping[str, Any], **images: Image.Image) -> Plan:
    return kind.plan(kind.parse(raw), {n: info(i) for n, i in images.items()}, ctx)


def run(
    kind: JobKind,
    pipelines: LoadedPipelines,
    planned: Plan,
    steps: list[tuple[int, int]] | None = None,
    **images: Image.Image,
) -> list[Output]:
    params = json.loads(json.dumps(planned.params))  # as the job's params travel

    def on_step(step: int, total: int, _preview: bytes | None) -> None:
        if steps is not None:
            steps.append((step, total))

    return kind.run(pipelines, params, images, on_step)


def refused(kind: JobKind, ctx: PlanContext, raw: Mapping[str, Any], **images: Image.Image) -> str:
    with pytest.raises(BadUserInput) as caught:
        plan(kind, ctx, raw, **images)
    return caught.value.field


def decoder_paddings(pipelines: LoadedPipelines, ctx: PlanContext, service: str) -> list[Any]:
    from kinds.base import model_ref

    pipe = pipelines.get(model_ref(ctx.catalog.resolve(service, None)))
    convs = [m for m in pipe.vae.decoder.modules() if isinstance(m, nn.Conv2d)]
    return [(c.padding, c.padding_mode, len(c._forward_pre_hooks)) for c in convs]


# --- seamless ------------------------------------------------------------------------------


def test_seamless_from_a_prompt_tiles(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    before = decoder_paddings(pipelines, ctx, "flux-dev")
    planned = plan(SEAMLESS, ctx, {"prompt": "a floral print", "width": 320, "height": 256})
    assert (planned.width, planned.height) == (320, 256)
    assert planned.quote.count == 1
    assert (
        planned.quote.credits
        == ctx.prices.quote(width=320, height=256, version="flux-dev", kind="seamless").credits
    )
    steps: list[tuple[int, int]] = []
    tile, grid = run(SEAMLESS, pipelines, planned, steps)
    assert tile.image.size == (320, 256)
    assert grid.image.size == (960, 768)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seam_ratio(tile.image, "x") < TILES
    assert seam_ratio(tile.image, "y") < TILES
    # The grid is the tile repeated.
    pixels = np.asarray(grid.image)
    assert np.array_equal(pixels[256:512, 320:640], np.asarray(tile.image))
    # The decoder is as it was: zero padding, no hooks left behind.
    assert decoder_paddings(pipelines, ctx, "flux-dev") == before


def test_the_same_image_without_wrap_around_does_not_tile(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    """The control: text to image at the same seed and size has visible seams."""
    from kinds import text_to_image

    kind = text_to_image.KIND
    planned = plan(
        kind, ctx, {"service": "flux-dev", "prompt": "a floral print", "width": 320,
                    "height": 256, "seed": 7},
    )  # fmt: skip
    [image] = run(kind, pipelines, planned)
    tiled = plan(SEAMLESS, ctx, {"prompt": "a floral print", "width": 320, "height": 256,
                                 "seed": 7})  # fmt: skip
    tile, _grid = run(SEAMLESS, pipelines, tiled)
    assert max(seam_ratio(image.image, "x"), seam_ratio(image.image, "y")) > max(
        seam_ratio(tile.image, "x"), seam_ratio(tile.image, "y")
    )


def test_seamless_one_direction(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    planned = plan(
        SEAMLESS, ctx, {"prompt": "stripes", "width": 256, "height": 256, "direction": 2}
    )
    tile, grid = run(SEAMLESS, pipelines, planned)
    assert grid.image.size == (768, 256)  # left/right only: 3x1
    assert seam_ratio(tile.image, "x") < TILES
    assert planned.metadata["direction"] == "horizontal"


def test_seamless_from_an_image_tiles(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    image = picture(320, 256)
    # The test picture is a top-to-bottom gradient: its own edges do not meet.
    assert seam_ratio(image, "y") > 100
    before = decoder_paddings(pipelines, ctx, "flux-fill")
    planned = plan(SEAMLESS, ctx, {"seed": 3}, image=image)
    assert planned.provider == "flux-fill"
    assert (planned.params["mode"], planned.params["fit"]) == ("image", 0.5)
    band = int(planned.params["band"])
    assert band == 16
    steps: list[tuple[int, int]] = []
    tile, grid = run(SEAMLESS, pipelines, planned, steps, image=image)
    assert tile.image.size == (320, 256)
    assert grid.image.size == (960, 768)
    assert steps == [(i, 8) for i in range(1, 9)]  # two Fill passes of 4 steps
    # The edges lie in the repainted bands: compare with the steps across the bands.
    assert seam_ratio(tile.image, "x", near=band) < TILES
    assert seam_ratio(tile.image, "y", near=band) < TILES
    # Away from the bands the image is the original's, unchanged.
    inner = (2 * band, 2 * band, 320 - 2 * band, 256 - 2 * band)
    assert np.array_equal(np.asarray(tile.image.crop(inner)), np.asarray(image.crop(inner)))
    assert decoder_paddings(pipelines, ctx, "flux-fill") == before


def test_seamless_from_an_image_one_direction(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    image = picture(256, 256)
    planned = plan(SEAMLESS, ctx, {"direction": 1, "fit": 0.9}, image=image)
    steps: list[tuple[int, int]] = []
    tile, grid = run(SEAMLESS, pipelines, planned, steps, image=image)
    assert grid.image.size == (256, 768)  # top/bottom only: 1x3
    assert len(steps) == 4  # one Fill pass
    assert seam_ratio(tile.image, "y", near=int(planned.params["band"])) < TILES


def test_seamless_extends_the_image_first(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    """Seed 004's expand_*: an outpaint of the image, then the tile made of the result."""
    image = picture(320, 256)
    raw = {"direction": 2, "fit": 0.3, "expand_top": 0.2, "expand_bottom": 0.1, "seed": 5}
    planned = plan(SEAMLESS, ctx, raw, image=image)
    # 20 % of 256 = 51 px up, 10 % = 26 down: 333 px high, rounded up to 336 at the bottom.
    assert (planned.width, planned.height) == (320, 336)
    assert [planned.params[side] for side in ("left", "right", "top", "bottom")] == [0, 0, 51, 29]
    assert planned.quote.credits == sum(
        ctx.prices.quote(width=320, height=336, version=planned.version, kind=kind).credits
        for kind in ("seamless", "outpaint")
    )
    band = int(planned.params["band"])
    steps: list[tuple[int, int]] = []
    tile, grid = run(SEAMLESS, pipelines, planned, steps, image=image)
    assert tile.image.size == (320, 336)
    assert grid.image.size == (960, 336)  # left/right only: 3x1
    assert steps == [(i, 8) for i in range(1, 9)]  # the extension, then the seam: 4 steps each
    assert seam_ratio(tile.image, "x", near=band) < TILES
    # Between the painted strips above and below and the seam bands at the sides, the
    # pixels are the original's, where the extension placed them (51 px down).
    kept = np.asarray(tile.image.crop((2 * band, 51 + 8, 320 - 2 * band, 51 + 256 - 8)))
    assert np.array_equal(kept, np.asarray(image.crop((2 * band, 8, 320 - 2 * band, 248))))
    # A canvas past the largest side is refused, naming the field the client sent.
    assert refused(SEAMLESS, ctx, {"expand_left": 0.1}, image=picture(2048, 256)) == "expand_left"


@pytest.mark.parametrize(
    ("raw", "with_image", "field"),
    [
        ({"prompt": "x", "fit": 0.5}, False, "fit"),
        ({}, False, "prompt"),
        ({"prompt": "x", "expand_top": 0.2}, False, "expand_top"),
        ({"width": 256, "height": 256}, True, "width"),
        ({"negative_prompt": "blur"}, True, "negative_prompt"),
        ({"prompt": "x", "width": 250, "height": 256}, False, "width"),
    ],
)
def test_seamless_refusals(
    ctx: PlanContext, raw: dict[str, Any], with_image: bool, field: str
) -> None:
    images = {"image": picture(256, 256)} if with_image else {}
    assert refused(SEAMLESS, ctx, raw, **images) == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"direction": 3}, "direction"), ({"fit": 0.05}, "fit"), ({"count": 2}, "count")],
)
def test_seamless_parameter_refusals(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        SEAMLESS.parse({"prompt": "x", **raw})
    assert caught.value.field == field


# --- cleanup -------------------------------------------------------------------------------


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Where two RGB images differ, as a boolean (h, w) array."""
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    result: np.ndarray = (a != b).any(axis=2)
    return result


def test_cleanup_with_rectangles_changes_only_them(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    image = picture(330, 270)  # not multiples of 16: Fill runs at 320x256, output stays
    planned = plan(
        CLEANUP, ctx, {"preset": "remove_watermark", "rectangles": [[10, 20, 100, 40],
                                                                     [200, 180, 64, 50]]},
        image=image,
    )  # fmt: skip
    assert planned.params["prompt"] == cleanup.PRESETS["remove_watermark"]
    assert planned.params["rectangles"] == "10,20,100,40;200,180,64,50"
    assert (planned.width, planned.height) == (330, 270)
    assert (planned.params["width"], planned.params["height"]) == (320, 256)
    [out] = run(CLEANUP, pipelines, planned, image=image)
    assert out.image.size == (330, 270)
    inside = np.zeros((270, 330), dtype=bool)
    inside[20:60, 10:110] = True
    inside[180:230, 200:264] = True
    diff = changed(image, out.image)
    assert not diff[~inside].any()  # outside the rectangles: identical
    assert diff[inside].mean() > 0.5  # inside: repainted


def test_cleanup_with_a_mask_changes_only_the_mask(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    image = picture(320, 256)
    mask = Image.new("L", (320, 256), 0)
    mask.paste(255, (100, 60, 180, 140))
    mask.paste(90, (0, 0, 320, 10))  # below half grey: keep
    planned = plan(CLEANUP, ctx, {"prompt": "grass", "count": 2}, image=image, mask=mask)
    assert planned.quote.count == 2
    outputs = run(CLEANUP, pipelines, planned, image=image, mask=mask)
    assert len(outputs) == 2
    inside = np.asarray(mask) >= 128
    for out in outputs:
        diff = changed(image, out.image)
        assert not diff[~inside].any()
        assert diff[inside].any()


@pytest.mark.parametrize(
    ("raw", "mask_size", "field"),
    [
        ({"preset": "remove_fabric"}, None, "mask"),  # neither mask nor rectangles
        ({"preset": "remove_fabric", "rectangles": "0,0,10,10"}, (320, 256), "rectangles"),
        ({"preset": "remove_fabric"}, (160, 128), "mask"),  # the wrong size
        ({"preset": "remove_fabric", "rectangles": "300,0,40,10"}, None, "rectangles"),
        ({"preset": "remove_fabric", "rectangles": "-1,0,40,10"}, None, "rectangles"),
        ({"preset": "remove_fabric", "rectangles": "0,0,0,10"}, None, "rectangles"),
        ({"preset": "remove_fabric", "prompt": "x", "rectangles": "0,0,8,8"}, None, "prompt"),
        ({"rectangles": "0,0,8,8"}, None, "prompt"),
    ],
)
def test_cleanup_refusals(
    ctx: PlanContext, raw: dict[str, Any], mask_size: tuple[int, int] | None, field: str
) -> None:
    images = {"image": picture(320, 256)}
    if mask_size is not None:
        images["mask"] = Image.new("L", mask_size, 255)
    assert refused(CLEANUP, ctx, raw, **images) == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"preset": "remove_everything"}, "preset"),
        ({"rectangles": "1,2,3"}, "rectangles"),
        ({"rectangles": [[1, 2, 3]]}, "rectangles"),
        ({"rectangles": [[1, 2, 3, 4.5]]}, "rectangles"),
        ({"rectangles": ""}, "rectangles"),
    ],
)
def test_cleanup_parameter_refusals(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        CLEANUP.parse(raw)
    assert caught.value.field == field


# --- extract_pattern -----------------------------------------------------------------------


def test_extract_pattern_follows_the_aspect_ratio_and_tiles(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    before = decoder_paddings(pipelines, ctx, "flux-kontext-pro")
    planned = plan(PATTERN, ctx, {"aspect_ratio": "4:3", "long_side": 384}, image=picture(300, 400))
    assert (planned.width, planned.height) == (384, 288)
    assert planned.params["prompt"] == pattern.EXTRACT
    [tile] = run(PATTERN, pipelines, planned, image=picture(300, 400))
    assert tile.image.size == (384, 288)
    assert seam_ratio(tile.image, "x") < TILES
    assert seam_ratio(tile.image, "y") < TILES
    assert decoder_paddings(pipelines, ctx, "flux-kontext-pro") == before


def test_extract_pattern_tall(ctx: PlanContext, pipelines: LoadedPipelines) -> None:
    planned = plan(
        PATTERN, ctx, {"aspect_ratio": "9:16", "long_side": 512}, image=picture(320, 256)
    )
    assert (planned.width, planned.height) == (288, 512)
    [tile] = run(PATTERN, pipelines, planned, image=picture(320, 256))
    assert tile.image.size == (288, 512)
    assert seam_ratio(tile.image, "x") < TILES
    assert seam_ratio(tile.image, "y") < TILES


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"aspect_ratio": "999:1"}, "aspect_ratio"),  # a side below the minimum
        ({"long_side": 250}, "long_side"),
        ({"long_side": 99999}, "long_side"),
    ],
)
def test_extract_pattern_refusals(ctx: PlanContext, raw: dict[str, Any], field: str) -> None:
    assert refused(PATTERN, ctx, raw, image=picture(256, 256)) == field


@pytest.mark.parametrize("ratio", ["0:1", "4x3", "abc", "1:1000", ""])
def test_bad_aspect_ratios_are_refused(ratio: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        PATTERN.parse({"aspect_ratio": ratio})
    assert caught.value.field == "aspect_ratio"


def test_extract_pattern_needs_an_image(ctx: PlanContext) -> None:
    with pytest.raises(BadUserInput) as caught:
        PATTERN.plan(PATTERN.parse({}), {}, ctx)
    assert caught.value.field == "image"
