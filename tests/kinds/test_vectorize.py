"""``vectorize`` on its own, as the worker runs it: ``color_count`` is exact, the SVG
scales (viewBox), the EPS is EPS, a cancel between stages stops the run, and the API
process plans it without loading the tracer."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image, ImageFilter

import kinds
from billing.errors import BadUserInput
from gpu_worker.pipeline import Interrupted, encode_output
from kinds.base import ImageInfo, Output, OutputFile, Pipelines, PlanContext
from kinds.vectorize import MAX_TRACE_PIXELS, trace_size
from tests.kinds.conftest import ROOT

VECTORIZE = kinds.get("vectorize")
FILL = re.compile(rb'fill="(#[0-9A-F]{6})"')


class NoPipelines(Pipelines):
    """vectorize loads no model: any call would be a bug."""

    device = "cpu"

    def get(self, model: object, pipeline: str | None = None) -> object:
        raise AssertionError("vectorize asked for a pipeline")


def photo(width: int = 256, height: int = 192) -> Image.Image:
    """Smooth gradients in every channel: thousands of colours."""
    red = Image.linear_gradient("L").resize((width, height))
    green = red.rotate(90).resize((width, height))
    blue = Image.effect_noise((width, height), 60).filter(ImageFilter.GaussianBlur(6))
    return Image.merge("RGB", (red, green, blue))


def run(ctx: PlanContext, values: dict[str, object], image: Image.Image) -> list[Output]:
    params = VECTORIZE.parse(values)
    planned = VECTORIZE.plan(params, {"image": ImageInfo(*image.size)}, ctx)
    return VECTORIZE.run(NoPipelines(), planned.params, {"image": image}, lambda *_: None)


@pytest.mark.parametrize("colors", [2, 6, 16])
def test_color_count_is_the_most_colours_the_svg_uses(ctx: PlanContext, colors: int) -> None:
    [output] = run(ctx, {"color_count": colors, "preset": "photo"}, photo())
    assert output.file is not None and output.file.format == "svg"
    fills = set(FILL.findall(output.file.data))
    assert 1 < len(fills) <= colors, fills


def test_the_svg_scales_and_the_eps_is_encapsulated(ctx: PlanContext) -> None:
    [svg] = run(ctx, {"preset": "photo"}, photo())
    assert svg.file is not None
    assert b'viewBox="0 0 256 192"' in svg.file.data
    assert (svg.file.width, svg.file.height, svg.file.mime) == (256, 192, "image/svg+xml")
    [eps] = run(ctx, {"format": "eps"}, photo())
    assert eps.file is not None and eps.file.mime == "application/postscript"
    assert eps.file.data.startswith(b"%!PS-Adobe-3.0 EPSF-3.0")
    assert b"\n%%BoundingBox: 0 0 192 144\n" in eps.file.data
    stored = encode_output(eps, "png", 90)  # the job's image format does not apply
    assert (stored.format, stored.extension, stored.mime) == ("eps", "eps", eps.file.mime)
    assert stored.data == eps.file.data


def test_a_cancel_between_stages_stops_the_run(ctx: PlanContext) -> None:
    params = VECTORIZE.parse({})
    planned = VECTORIZE.plan(params, {"image": ImageInfo(256, 192)}, ctx)
    steps: list[tuple[int, int]] = []

    def cancelled(step: int, total: int, _preview: bytes | None) -> None:
        steps.append((step, total))
        raise Interrupted

    with pytest.raises(Interrupted):
        VECTORIZE.run(NoPipelines(), planned.params, {"image": photo()}, cancelled)
    assert steps == [(1, 2)]


def test_the_traced_size_is_bounded() -> None:
    assert trace_size(ImageInfo(640, 480)) == (640, 480)
    width, height = trace_size(ImageInfo(8192, 2048))
    assert width * height <= MAX_TRACE_PIXELS and abs(width / height - 4) < 0.01
    assert trace_size(ImageInfo(20000, 1)) == (20000, 1)


def test_params_are_checked_by_name() -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"color_count": 1}, "color_count"),
        ({"colorCount": 65}, "colorCount"),
        ({"preset": "sketch"}, "preset"),
        ({"filter_speckle": -1}, "filter_speckle"),
        ({"format": "png"}, "format"),
    ]
    for values, field in cases:
        with pytest.raises(BadUserInput) as caught:
            VECTORIZE.parse(values)
        assert caught.value.field == field


def test_an_output_is_an_image_or_a_file() -> None:
    image = Image.new("RGB", (2, 2))
    file = OutputFile(data=b"<svg/>", format="svg", mime="image/svg+xml", width=2, height=2)
    assert Output(image=image).file is None and Output(image=image).image is image
    with pytest.raises(AttributeError):
        _ = Output(file=file).image
    with pytest.raises(ValueError):
        Output()
    with pytest.raises(ValueError):
        Output(image=image, file=file)
    with pytest.raises(ValueError):
        OutputFile(data=b"", format="../x", mime="text/plain", width=1, height=1)


def test_planning_loads_no_tracer() -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        import kinds
        import server.app
        from billing.catalog import Catalog
        from billing.pricing import PriceTable
        from kinds.base import ImageInfo, Limits, PlanContext

        ctx = PlanContext(Catalog.load(Path("deploy/models.dev.toml")), PriceTable.load(), Limits())
        kind = kinds.get("vectorize")
        kind.plan(kind.parse({"format": "eps"}), {"image": ImageInfo(320, 256)}, ctx)
        loaded = {m.split(".")[0] for m in sys.modules}
        heavy = sorted(loaded & {"vtracer", "cairosvg", "cairocffi", "torch"})
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
