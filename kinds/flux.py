"""What the FLUX kinds share: resolving the model a request names, checking prompts and
sizes, freezing the common options into a job's params, choosing the output size of an
image input and pricing the plan, fitting a PIL image to the output, and running a
diffusers FLUX pipeline with progress, previews and cancellation between steps."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from billing.catalog import ModelEntry
from billing.errors import BadUserInput
from billing.requests import FLUX2_PIPELINES
from billing.text import unstorable
from kinds.base import (
    FluxOptions,
    ImageInfo,
    Limits,
    Output,
    Plan,
    PlanContext,
    StepCallback,
    model_ref,
)

if TYPE_CHECKING:
    from PIL.Image import Image

DIMENSION_STEP = 16
PREVIEWS_PER_JOB = 4
PREVIEW_MAX_SIDE = 128

# Approximate RGB of FLUX's 16 latent channels (a linear fit, as ComfyUI's latent_formats.Flux
# uses for its previews): a preview costs one small matrix product instead of a VAE decode.
FLUX_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)  # fmt: skip
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
# FLUX.2's 32 latent channels (ComfyUI's latent_formats.Flux2 fit, applied as there to the
# batch-normalised latents the transformer denoises, each 2x2 patch unfolded first).
FLUX2_LATENT_RGB = (
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644),
    (0.2144, 0.3009, 0.3652), (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160),
    (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109), (-0.3527, -0.2712, -0.1666),
    (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080),
    (-0.0939, -0.0008, 0.0186), (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127),
    (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065), (0.0128, 0.0101, 0.0142),
    (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025),
    (0.0220, 0.0169, -0.0048), (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609),
    (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
)  # fmt: skip


def text_pipeline(model: Mapping[str, Any]) -> str:
    """The pipeline class text-to-image runs over a frozen model: FLUX.2's own class (its
    directory holds no FLUX.1 components), else FluxPipeline (over a FLUX.1 directory of
    any class: Kontext, say)."""
    own = str(model["pipeline"])
    return own if own in FLUX2_PIPELINES else "FluxPipeline"


def resolve_model(
    ctx: PlanContext, params: FluxOptions, *, default_service: str, pipelines: tuple[str, ...]
) -> ModelEntry:
    """The registry entry the request names (or the kind's default service), refused
    unless its pipeline class can run this kind."""
    service = params.service or default_service
    entry = ctx.catalog.resolve(service, params.version or None, fields=("service", "version"))
    if entry.pipeline not in pipelines:
        usable = sorted({e.provider for e in ctx.catalog.entries if e.pipeline in pipelines})
        raise BadUserInput(
            "service",
            f"service {service!r} cannot run this operation; use one of: "
            f"{', '.join(usable) or 'none is installed'}",
        )
    return entry


def check_prompt(prompt: str, limits: Limits, field: str = "prompt") -> str:
    prompt = prompt.strip()
    if not prompt:
        raise BadUserInput(field, f"{field} must not be empty")
    if len(prompt) > limits.max_prompt_chars:
        raise BadUserInput(field, f"{field} is longer than {limits.max_prompt_chars} characters")
    if unstorable(prompt):
        raise BadUserInput(field, f"{field} contains a NUL character or a lone surrogate")
    return prompt


def check_side(value: int, field: str, limits: Limits) -> int:
    if not limits.min_side <= value <= limits.max_side:
        raise BadUserInput(
            field, f"{field} must be between {limits.min_side} and {limits.max_side} (got {value})"
        )
    if value % DIMENSION_STEP:
        lower = value - value % DIMENSION_STEP
        raise BadUserInput(
            field,
            f"{field} must be a multiple of {DIMENSION_STEP} (got {value}; "
            f"nearest: {lower} or {lower + DIMENSION_STEP})",
        )
    return value


def fit_size(width: int, height: int, limits: Limits, field: str = "image") -> tuple[int, int]:
    """The output size for an input image: its aspect ratio kept, scaled down to fit the
    largest side allowed, and each side rounded down to a multiple of 16 (FLUX's step).
    Refused when the image is too small for the smallest side allowed."""
    scale = min(1.0, limits.max_side / max(width, height))
    w = int(width * scale) // DIMENSION_STEP * DIMENSION_STEP
    h = int(height * scale) // DIMENSION_STEP * DIMENSION_STEP
    if min(w, h) < limits.min_side:
        raise BadUserInput(
            field,
            f"{field} is {width}x{height}; each side must be at least {limits.min_side} px "
            f"(after scaling to at most {limits.max_side} px)",
        )
    return w, h


def common_params(params: FluxOptions, entry: ModelEntry, limits: Limits) -> dict[str, Any]:
    """The options every FLUX kind freezes into its params: the model, prompt, steps,
    guidance, the seed (drawn now if random, so a retried job renders the same image)."""
    negative = params.negative_prompt
    if negative is not None:
        negative = check_prompt(negative, limits, "negative_prompt") if negative.strip() else None
    return {
        "model": model_ref(entry),
        "prompt": check_prompt(params.prompt, limits),
        "negative_prompt": negative,
        "true_cfg_scale": params.true_cfg_scale if negative else 1.0,
        "steps": params.steps or entry.steps,
        "guidance": entry.guidance if params.guidance is None else params.guidance,
        "seed": params.seed if params.seed >= 0 else secrets.randbelow(2**31),
        "format": params.format,
        "output_quality": params.output_quality,
        "count": params.count,
    }


# --- what the kinds that take an image share ------------------------------------------


def input_info(inputs: Mapping[str, ImageInfo], name: str) -> ImageInfo:
    info = inputs.get(name)
    if info is None:
        raise BadUserInput(name, f"{name} is required")
    return info


def output_size(
    width: int | None, height: int | None, image: ImageInfo, limits: Limits
) -> tuple[int, int]:
    """The requested ``width``/``height`` (both or neither), else the image's size fitted
    to the limits (``kinds.flux.fit_size``)."""
    if width is None and height is None:
        return fit_size(image.width, image.height, limits)
    if width is None or height is None:
        missing = "width" if width is None else "height"
        raise BadUserInput(
            missing, "give both width and height, or neither (then the image's size is used)"
        )
    return check_side(width, "width", limits), check_side(height, "height", limits)


def image_plan(kind: str, entry: ModelEntry, params: dict[str, Any], ctx: PlanContext) -> Plan:
    """The job of an image kind whose frozen ``params`` are complete (``common_params``
    plus ``width``, ``height`` and the kind's own values), priced per output image."""
    width, height = int(params["width"]), int(params["height"])
    quote = ctx.prices.quote(
        width=width, height=height, version=entry.version, kind=kind, count=int(params["count"])
    )
    return Plan(
        params=params,
        quote=quote,
        provider=entry.provider,
        version=entry.version,
        prompt=params["prompt"],
        width=width,
        height=height,
        steps=int(params["steps"]),
        guidance=float(params["guidance"]),
        seed=int(params["seed"]),
    )


def denoising_steps(steps: int, strength: float) -> int:
    """The steps an img2img run denoises: diffusers skips the first ``1 - strength`` of
    the schedule (``FluxImg2ImgPipeline.get_timesteps``, same arithmetic)."""
    start = int(max(steps - min(steps * strength, steps), 0))
    return steps - start


def fitted(
    image: Image, width: int, height: int, *, mode: str = "RGB", nearest: bool = False
) -> Image:
    """``image`` in ``mode``, scaled to cover ``width``x``height`` and centre-cropped to it
    (the aspect ratio kept). ``nearest`` for masks, whose values must stay 0 or 255."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    method = PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.LANCZOS
    return ImageOps.fit(image.convert(mode), (width, height), method=method)


def latents_preview(pipe: Any, latents: Any, height: int, width: int) -> bytes:
    """A small PNG of the current latents, from a linear projection of their channels."""
    import torch
    from PIL import Image as PILImage

    table: tuple[tuple[float, float, float], ...] = FLUX_LATENT_RGB
    if type(pipe).__name__ in FLUX2_PIPELINES:
        unpacked = _flux2_unpacked(pipe, latents, height, width)
        table = FLUX2_LATENT_RGB
    else:
        unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)[0]
    factors = torch.tensor(table, dtype=torch.float32, device=unpacked.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=unpacked.device)
    rgb = torch.einsum("chw,cr->hwr", unpacked.float(), factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu().numpy()
    image = PILImage.fromarray(pixels, mode="RGB")
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _flux2_unpacked(pipe: Any, latents: Any, height: int, width: int) -> Any:
    """The first image's FLUX.2 latents as ``(32, H/8, W/8)``: FLUX.2 packs one token per
    2x2 latent patch, row by row, with the patch's 4 x 32 values as its 128 channels (the
    pipeline's ``_pack_latents`` of ``_patchify_latents``)."""
    rows = height // (pipe.vae_scale_factor * 2)
    cols = width // (pipe.vae_scale_factor * 2)
    first = latents[:1, : rows * cols]
    patches = first.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
    return pipe._unpatchify_latents(patches)[0]


def run_flux(
    pipe: Any,
    params: Mapping[str, Any],
    on_step: StepCallback,
    *,
    width: int,
    height: int,
    preview: bool = False,
    on_latents: Callable[[int, int, Any], Any] | None = None,
    **call: Any,
) -> list[Output]:
    """Run a FLUX pipeline with the frozen common options plus ``call`` (the kind's own
    arguments: image, mask_image, strength...). Progress (and optional previews of the
    latents) go to ``on_step`` between denoising steps; it raises to stop the run there,
    which also skips the VAE decode of abandoned latents. ``on_latents(i, steps,
    latents)``, if given, replaces the packed latents after step ``i`` (0-based) with
    what it returns (``kinds.tiling`` rolls them so the image wraps around)."""
    import torch

    steps = int(params["steps"])
    preview_every = max(1, steps // PREVIEWS_PER_JOB) if preview else 0
    model = params["model"]

    def callback(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        step = i + 1
        shot = None
        if preview_every and step % preview_every == 0 and step < steps:
            shot = latents_preview(pipe, kwargs["latents"], height, width)
        on_step(step, steps, shot)
        if on_latents is not None:
            kwargs["latents"] = on_latents(i, steps, kwargs["latents"])
        return kwargs

    negative = params.get("negative_prompt")
    if negative and type(pipe).__name__ in FLUX2_PIPELINES:
        # Refused when planned (kinds.text_to_image); never silently dropped.
        raise ValueError(f"{type(pipe).__name__} takes no negative prompt")
    if negative:
        call.update(negative_prompt=negative, true_cfg_scale=params["true_cfg_scale"])
    # A CPU generator gives the same images for a seed on any device.
    generator = torch.Generator(device="cpu").manual_seed(int(params["seed"]))
    with torch.inference_mode():
        result = pipe(
            prompt=params["prompt"],
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=float(params["guidance"]),
            num_images_per_prompt=int(params.get("count", 1)),
            generator=generator,
            max_sequence_length=int(model["max_sequence_length"]),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
            **call,
        )
    images: list[Image] = list(result.images)
    return [Output(image=image) for image in images]


def run_flux_batch(
    pipe: Any,
    params: Sequence[Mapping[str, Any]],
    on_step: StepCallback,
    *,
    width: int,
    height: int,
) -> list[Output]:
    """One image for each of several jobs in one FLUX pipeline call: their prompts as a
    list, one CPU generator per job seeded with its seed. diffusers draws each image's
    initial latents from its own generator (``randn_tensor`` with a list), so each job
    gets the image it would get alone, up to the rounding of batched kernels. The jobs
    share everything else (``TextToImage.batch_key``: model, size, steps, guidance);
    ``on_step`` gets the common step, and raises to stop the whole call."""
    import torch

    first = params[0]
    steps = int(first["steps"])

    def callback(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(i + 1, steps, None)
        return kwargs

    generators = [torch.Generator(device="cpu").manual_seed(int(p["seed"])) for p in params]
    with torch.inference_mode():
        result = pipe(
            prompt=[p["prompt"] for p in params],
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=float(first["guidance"]),
            num_images_per_prompt=1,
            generator=generators,
            max_sequence_length=int(first["model"]["max_sequence_length"]),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
        )
    images: list[Image] = list(result.images)
    if len(images) != len(params):
        raise RuntimeError(f"a batch of {len(params)} prompts made {len(images)} images")
    return [Output(image=image) for image in images]
