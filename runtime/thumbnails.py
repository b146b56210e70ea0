"""Library thumbnails: a small WebP of each raster output, made by the worker when it
stores a job's outputs and kept next to the output (``<output key>.thumb.webp``).
Outputs that are not raster images (SVG, EPS) get none."""

from __future__ import annotations

import io

from PIL import Image

# About 256 px on the long side: a dashboard grid cell at 2x density.
SIZE = 256
QUALITY = 80
MIME = "image/webp"
RASTER_FORMATS = frozenset({"png", "jpeg", "webp"})


def thumbnail_key(key: str) -> str:
    """Where an output's thumbnail is stored: next to it."""
    return f"{key.rpartition('.')[0] or key}.thumb.webp"


def make_thumbnail(data: bytes, size: int = SIZE) -> bytes:
    """A WebP at most ``size`` px on its long side (never enlarged). CPU work: call it off
    the event loop. The image was just encoded by the worker itself, so it is trusted."""
    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=QUALITY, method=4)
    return out.getvalue()
