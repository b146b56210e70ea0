"""How the tile kinds (``seamless``, ``extract_pattern``) make FLUX paint an image that
wraps around, and the checks and previews around it.

A FLUX image is made tileable in two places:

* **Denoising on a torus** (``WrapAround``): after each denoising step the packed latents'
  token grid is rolled by a different shift, so the seam between the last and the first
  row/column sits somewhere in the interior at the next step and the transformer denoises
  across it as across any other neighbours. After the last step the grid is rolled back,
  so the composition stays where step 1 put it. The transformer's positions (RoPE ids)
  are not rolled: only the content moves under them.
* **Decoding on a torus** (``wrapped_decoder``): the VAE decoder's convolutions pad with
  the opposite edge instead of zeros, so a pixel on the border is decoded from its
  wrap-around neighbours exactly as an interior pixel is from its own. Upsampling is
  nearest-neighbour and GroupNorm's statistics are the same over one period as over
  many, so the decoded image equals the middle tile of a decoded 3x3 grid of the
  latents: its edges continue each other.

Either direction can wrap alone (seed 004's ``direction``: 0 both, 1 top/bottom only,
2 left/right only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

# A packed FLUX latent token covers 16x16 pixels (the VAE's 8 times FLUX's 2x2 patches).
TOKEN_PIXELS = 16
# seed 004's direction codes.
BOTH, VERTICAL, HORIZONTAL = 0, 1, 2
DIRECTIONS = {BOTH: "both", VERTICAL: "vertical", HORIZONTAL: "horizontal"}


def wraps(direction: int) -> tuple[bool, bool]:
    """(wraps left/right, wraps top/bottom) for a seed-004 ``direction``."""
    return direction in (BOTH, HORIZONTAL), direction in (BOTH, VERTICAL)


@dataclass(frozen=True, slots=True)
class WrapAround:
    """``run_flux``'s ``on_latents``: rolls the packed latents of a ``width``x``height``
    image after each step (module docstring)."""

    width: int
    height: int
    x: bool
    y: bool

    def shift(self, i: int, steps: int, size: int) -> int:
        """The grid's total shift after step ``i``: spread over the period so the seam
        visits a different place each step, and 0 before the first and after the last."""
        if i < 0 or i + 1 >= steps:
            return 0
        return (i + 1) * size // steps % size

    def __call__(self, i: int, steps: int, latents: Any) -> Any:
        rows, cols = self.height // TOKEN_PIXELS, self.width // TOKEN_PIXELS
        batch, tokens, channels = latents.shape
        if tokens != rows * cols:  # not this image's grid: never roll what is not ours
            raise ValueError(f"latents have {tokens} tokens, expected {rows}x{cols}")
        grid = latents.reshape(batch, rows, cols, channels)
        dy = (self.shift(i, steps, rows) - self.shift(i - 1, steps, rows)) if self.y else 0
        dx = (self.shift(i, steps, cols) - self.shift(i - 1, steps, cols)) if self.x else 0
        if dx or dy:
            grid = grid.roll(shifts=(dy, dx), dims=(1, 2))
        return grid.reshape(batch, tokens, channels)


@contextmanager
def wrapped_decoder(vae: Any, *, x: bool, y: bool) -> Iterator[None]:
    """The VAE's decoder pads its convolutions circularly along the wrapped axes while
    the block runs, and as before afterwards (also when the run fails or is cancelled).

    The modules are shared by every pipeline made from the same directory
    (``LoadedPipelines.get``), so this is safe only because a worker runs one job at a
    time in its single pipeline thread (``gpu_worker.pipeline.PipelineRunner``): no other
    job decodes while the padding is changed."""
    import torch.nn.functional as F
    from torch import nn

    changed: list[tuple[Any, Any]] = []
    hooks: list[Any] = []

    def padder(ph: int, pw: int) -> Any:
        def pad(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            (tensor, *rest) = args
            tensor = F.pad(tensor, (pw, pw, 0, 0), mode="circular" if x else "constant")
            tensor = F.pad(tensor, (0, 0, ph, ph), mode="circular" if y else "constant")
            return (tensor, *rest)

        return pad

    try:
        if x or y:
            for conv in vae.decoder.modules():
                if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
                    continue
                if isinstance(conv.padding, str):  # "same"/"valid": not in FLUX's VAE
                    continue
                ph, pw = conv.padding
                if not (ph or pw):
                    continue
                changed.append((conv, conv.padding))
                conv.padding = (0, 0)
                hooks.append(conv.register_forward_pre_hook(padder(ph, pw)))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for conv, padding in changed:
            conv.padding = padding


def grid_preview(tile: Image, direction: int, max_side: int) -> Image:
    """The tile repeated 3x3 (one axis only: 3x1 or 1x3, as ``direction`` wraps), scaled
    down to at most ``max_side`` px a side: seed 004's ``grid_url`` image."""
    from PIL import Image as PILImage

    across, down = wraps(direction)
    cols, rows = (3 if across else 1), (3 if down else 1)
    grid = PILImage.new("RGB", (tile.width * cols, tile.height * rows))
    for row in range(rows):
        for col in range(cols):
            grid.paste(tile.convert("RGB"), (col * tile.width, row * tile.height))
    if max(grid.size) > max_side:
        grid.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    return grid


def seam_ratio(image: Image, axis: str, near: int | None = None) -> float:
    """How visible the wrap-around seam is: the mean absolute difference between the
    last and the first column (``axis="x"``) or row (``"y"``), over the mean absolute
    difference between neighbouring columns/rows: all of them, or (``near``) only those
    within ``near`` px of the two edges, where a repainted seam band lies. About 1 for a
    tile; far above 1 where opposite edges do not continue each other."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    if axis == "x":
        pixels = pixels.transpose(1, 0, 2)
    steps = np.abs(np.diff(pixels, axis=0))
    if near is not None:
        steps = np.concatenate([steps[: near - 1], steps[-(near - 1) :]])
    seam = np.abs(pixels[-1] - pixels[0]).mean()
    return float(seam / max(steps.mean(), 1e-9))
