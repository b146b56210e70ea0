"""``vectorize``: traces an image into a vector drawing with vtracer, as SVG or EPS
(``POST /v1/vectorize``, GraphQL ``vectorizeImage``; seed 004's ``submit_vector_task``
with ``color_count`` and EPS).

No model runs: the job is CPU work in the worker (vtracer, then cairosvg for EPS), queued
on the default pool like any kind without a model.

**Size.** The image is traced at its size, scaled down (Lanczos) to at most
``MAX_TRACE_PIXELS`` (1024x1024): vtracer's time and the SVG's size grow with the
pixels and the detail (a 1 MP photo of noise takes about 15 s and makes 10-20 MB), so a
job stays bounded whatever the input. The job is priced like an image of the traced
size (billing/prices.toml: its resolution tier, no version surcharge, the ``vectorize``
row), and the output's ``width``/``height`` are that size: the SVG's viewBox, in CSS
pixels. The EPS has the same drawing, its ``%%BoundingBox`` in points (72 per inch at 96
pixels per inch: 3/4 of the pixels).

**Colours.** ``color_count`` N is honoured exactly rather than approximated with
vtracer's colour precision (which counts significant bits per channel, not colours): the
image is quantised to N colours with Pillow (median cut, no dithering), traced, and each
traced shape's fill is snapped to the nearest colour of that palette, because vtracer
averages the colours of the speckles it merges into a neighbour. The SVG then uses at
most N fill colours (fewer when the image has fewer). Without ``color_count`` the
``photo`` preset leaves the colours to vtracer's own clustering (its photo settings);
``logo`` defaults to 5 colours (seed 004's default) and ``poster`` to 16.

**Presets** are vtracer's settings for each kind of picture (its CLI's ``poster`` and
``photo`` presets; ``logo`` is ``poster`` with fewer colours and sharper corners):

========  ========  ==============  =================  ================
preset    colours   filter_speckle  corner_threshold   layer_difference
========  ========  ==============  =================  ================
logo      5         4               60                 16
poster    16        4               60                 16
photo     (vtracer) 10              180                48
========  ========  ==============  =================  ================

(``layer_difference`` only matters without a palette: with one, every palette colour is
its own layer.) ``filter_speckle`` (pixels: patches smaller than this square are merged
into their neighbour) may be set per job.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from billing.errors import BadUserInput
from kinds.base import (
    ImageInfo,
    InputSpec,
    JobKind,
    KindParams,
    Output,
    OutputFile,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
)
from kinds.registry import register

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_TRACE_PIXELS = 1024 * 1024
MIN_COLORS = 2
MAX_COLORS = 64
MIME = {"svg": "image/svg+xml", "eps": "application/postscript"}
PROVIDER = VERSION = "vtracer"


@dataclass(frozen=True, slots=True)
class Preset:
    """vtracer's settings for one kind of picture; ``colors``: the default
    ``color_count`` (None: vtracer's own clustering)."""

    colors: int | None
    filter_speckle: int
    corner_threshold: int
    layer_difference: int
    color_precision: int = 8
    length_threshold: float = 4.0
    splice_threshold: int = 45
    max_iterations: int = 10


PRESETS: dict[str, Preset] = {
    "logo": Preset(colors=5, filter_speckle=4, corner_threshold=60, layer_difference=16),
    "poster": Preset(colors=16, filter_speckle=4, corner_threshold=60, layer_difference=16),
    "photo": Preset(colors=None, filter_speckle=10, corner_threshold=180, layer_difference=48),
}


class VectorizeParams(KindParams):
    format: Literal["svg", "eps"] = Field(
        default="svg", description="svg (image/svg+xml) | eps (application/postscript)."
    )
    preset: Literal["logo", "poster", "photo"] = Field(
        default="logo", description="logo | poster | photo: vtracer's settings for the picture."
    )
    color_count: int | None = Field(
        default=None,
        ge=MIN_COLORS,
        le=MAX_COLORS,
        description="At most this many colours (2-64); omitted: the preset's (logo 5, "
        "poster 16, photo: vtracer's clustering).",
    )
    filter_speckle: int | None = Field(
        default=None,
        ge=0,
        le=128,
        description="Drop patches smaller than this many pixels square; omitted: the preset's.",
    )


def trace_size(image: ImageInfo) -> tuple[int, int]:
    """The size the image is traced at: its own, scaled down to ``MAX_TRACE_PIXELS``."""
    pixels = image.width * image.height
    if pixels <= MAX_TRACE_PIXELS:
        return image.width, image.height
    scale = (MAX_TRACE_PIXELS / pixels) ** 0.5
    return max(1, int(image.width * scale)), max(1, int(image.height * scale))


class Vectorize(JobKind):
    name = "vectorize"
    title = "Vectorize"
    mutation = "vectorizeImage"
    Params = VectorizeParams
    inputs = (InputSpec("image", description="The image to trace."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, VectorizeParams)
        image = inputs.get("image")
        if image is None:
            raise BadUserInput("image", "image is required")
        preset = PRESETS[params.preset]
        width, height = trace_size(image)
        colors = params.color_count if params.color_count is not None else preset.colors
        speckle = preset.filter_speckle if params.filter_speckle is None else params.filter_speckle
        quote = ctx.prices.quote(width=width, height=height, version=VERSION, kind=self.name)
        return Plan(
            params={
                "format": params.format,
                "preset": params.preset,
                "color_count": colors,
                "filter_speckle": speckle,
                "width": width,
                "height": height,
            },
            quote=quote,
            provider=PROVIDER,
            version=VERSION,
            prompt="",
            width=width,
            height=height,
            steps=3 if params.format == "eps" else 2,
            guidance=0.0,
            seed=0,
            metadata={"preset": params.preset, "color_count": colors, "format": params.format},
        )

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, Image],
        on_step: StepCallback,
    ) -> list[Output]:
        width, height = int(params["width"]), int(params["height"])
        output_format = str(params["format"])
        total = 3 if output_format == "eps" else 2
        image = inputs["image"].convert("RGB")
        if image.size != (width, height):
            from PIL.Image import Resampling

            image = image.resize((width, height), Resampling.LANCZOS)
        colors = params.get("color_count")
        palette = None
        if colors is not None:
            image, palette = quantize(image, int(colors))
        on_step(1, total, None)  # each stage is a point where a cancel stops the run
        svg = trace(image, PRESETS[str(params["preset"])], int(params["filter_speckle"]), palette)
        on_step(2, total, None)
        data = svg.encode()
        if output_format == "eps":
            data = to_eps(data)
            on_step(3, total, None)
        file = OutputFile(
            data=data, format=output_format, mime=MIME[output_format], width=width, height=height
        )
        return [Output(file=file)]


def quantize(image: Image, colors: int) -> tuple[Image, list[tuple[int, int, int]]]:
    """``image`` in at most ``colors`` colours (median cut, no dithering: flat areas stay
    flat for the tracer), and the colours it uses."""
    from PIL.Image import Dither, Quantize

    reduced = image.quantize(colors=colors, method=Quantize.MEDIANCUT, dither=Dither.NONE)
    flat = reduced.getpalette() or []
    # A "P" image's colours are palette indices.
    used = [index for _, index in reduced.getcolors(colors) or [] if isinstance(index, int)]
    palette = [(flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i in used]
    return reduced.convert("RGB"), palette


_FILL = re.compile(r'fill="#([0-9A-Fa-f]{6})"')
_SVG_TAG = re.compile(r"<svg\b([^>]*)>")


def trace(
    image: Image, preset: Preset, filter_speckle: int, palette: list[tuple[int, int, int]] | None
) -> str:
    """The SVG of ``image`` (its size as the viewBox); with a palette, every fill is one
    of its colours."""
    # Imported here: the API process imports every kind and must not load the tracer.
    import vtracer

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    svg = vtracer.convert_raw_image_to_svg(
        buffer.getvalue(),
        img_format="png",
        colormode="color",
        hierarchical="stacked",
        mode="spline",
        filter_speckle=filter_speckle,
        color_precision=preset.color_precision,
        # With a palette every colour is its own layer; without, the preset's gradient step.
        layer_difference=1 if palette else preset.layer_difference,
        corner_threshold=preset.corner_threshold,
        length_threshold=preset.length_threshold,
        max_iterations=preset.max_iterations,
        splice_threshold=preset.splice_threshold,
        path_precision=3,
    )
    if palette:
        svg = _FILL.sub(lambda m: f'fill="{_nearest(m.group(1), palette)}"', svg)
    return _with_view_box(svg, image.width, image.height)


def _nearest(hex_rgb: str, palette: list[tuple[int, int, int]]) -> str:
    r, g, b = (int(hex_rgb[i : i + 2], 16) for i in (0, 2, 4))
    best = min(palette, key=lambda c: (c[0] - r) ** 2 + (c[1] - g) ** 2 + (c[2] - b) ** 2)
    return "#{:02X}{:02X}{:02X}".format(*best)


def _with_view_box(svg: str, width: int, height: int) -> str:
    """vtracer sets width and height only: a viewBox lets the drawing scale (an <img>
    sized by CSS shows all of it instead of a corner)."""
    match = _SVG_TAG.search(svg)
    if match is None:
        raise RuntimeError("vtracer made no <svg> element")
    if "viewBox" in match.group(1):
        return svg
    tag = f'<svg{match.group(1)} viewBox="0 0 {width} {height}">'
    return svg[: match.start()] + tag + svg[match.end() :]


def to_eps(svg: bytes) -> bytes:
    """The SVG as Encapsulated PostScript, drawn by cairo (cairosvg's PostScript surface
    in EPS mode: a ``%%BoundingBox`` of the drawing, in points)."""
    import cairosvg

    eps: bytes = cairosvg.svg2eps(bytestring=svg)
    if not eps.startswith(b"%!PS-Adobe"):
        raise RuntimeError("cairosvg made no EPS")
    return eps


KIND = register(Vectorize())
