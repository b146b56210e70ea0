"""GPU speed of FLUX.1-dev, FLUX.1-schnell and FLUX.2 [klein] 4B under the worker's speed
settings (gpu_worker/speed.py), on the real architectures with random weights.

    python bench/gpu.py                       # on a GPU: every model, every variant
    python bench/gpu.py --device cpu --tiny   # the same code paths on the tiny models

Nothing is downloaded. Each model is built from its published configuration (written out
below) on the meta device, moved with ``to_empty(device=...)`` and filled in place with
random values on the device itself, so no full-size weight is ever made on the CPU. The
tokenizers are the tiny ones the project builds (gpu_worker/tiny.py): timing does not
depend on them, because every prompt is padded to ``max_sequence_length`` tokens (512 for
T5 and Qwen3, 77 for CLIP) whatever its words. ``--tiny`` builds the same way from the
tiny models' configurations (var/models/tiny-*).

Each variant is one set of worker settings (``SpeedOptions``, i.e. FLUXGATE_* variables):
the model is built afresh with the same seeded weights, the options are applied exactly as
the worker applies them, one warm-up generation runs (it compiles, when compiling), then
``--repeats`` timed generations; the median is reported. Rows, printed as each is
measured (a failed variant prints ``skipped: <why>`` and the run goes on):

- ``s/image``: wall time of one pipeline call (text encoding, denoising, VAE decode, to
  numpy) divided by the batch; ``images/s`` is its inverse;
- ``ms/step``: the denoising loop's time per step (between step-end callbacks, the device
  synchronised);
- ``peak GiB``: ``torch.cuda.max_memory_allocated`` over the timed calls (``-`` on CPU);
- ``compile s``: warm-up call minus a timed call, for compiled variants;
- ``floor``: the compute floor of one image divided by ``s/image`` (1.0 would be a
  pipeline that does nothing but the transformer's matmuls at the device's measured peak);
- ``PSNR dB`` / ``max abs``: the first image against the plain variant's, same seed and
  weights, in 8-bit pixels (inf / 0 when identical). Random weights make noise images,
  so this shows how far an option moves the pixels, not how a real image looks.

The compute floor. The device's dense matmul rate is measured first (an 8192^3 bf16
matmul on a GPU; a small fp32 one on a CPU). One denoising step of one image costs, for
the transformer with hidden width ``d`` (heads x head dim), ``I = (H/16)(W/16)`` image
tokens, ``T`` text tokens (max_sequence_length), ``N = I + T``, ``L`` double-stream plus
single-stream blocks:

    FLOPs/step = L * (2 * c * d^2 * N + 4 * N^2 * d) + 2 * d * (C_in * I + C_txt * T + C_out * I)

with ``c`` the per-token linear width of a block in units of d^2: ``4 + 2 * mlp_ratio``
for FLUX.1 (QKV 3, output 1, GELU MLP 2 x 4; its single blocks come to the same 12) and
``4 + 3 * mlp_ratio`` for FLUX.2 (SwiGLU: 13 at mlp_ratio 3). ``4 N^2 d`` is attention's
two matmuls (QK^T and PV). The last term is the input, text and output projections;
timestep and modulation layers act on one vector per image and are left out (<0.01 %).
FLUX.1-dev at 1024^2 (d=3072, N=4096+512, L=57): 74.4 TFLOP/step. The floor per image
is ``steps * FLOPs/step / peak``. tests/bench/test_gpu_bench.py checks the formula
against torch's FLOP counter on the tiny transformers.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_worker.speed import Speed, SpeedOptions  # noqa: E402  # after the path

TINY_ROOT = ROOT / "var" / "models"
SEED = 1234
PROMPT = "a photo of a cat on a red sofa, soft window light"

# --- published configurations -------------------------------------------------------

# black-forest-labs/FLUX.1-dev, transformer/config.json.
FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19,
    "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
    "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
# black-forest-labs/FLUX.1-schnell: the same transformer without the guidance embedding.
FLUX1_SCHNELL_TRANSFORMER = {**FLUX1_DEV_TRANSFORMER, "guidance_embeds": False}
# google/t5-v1_1-xxl (FLUX.1's text_encoder_2: the encoder only).
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True, "pad_token_id": 0,
    "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
# openai/clip-vit-large-patch14, text model (FLUX.1's text_encoder).
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}  # fmt: skip
# black-forest-labs/FLUX.1-dev, vae/config.json.
FLUX1_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip
FLUX1_DEV_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
    "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}  # fmt: skip
FLUX1_SCHNELL_SCHEDULER = {**FLUX1_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
# black-forest-labs/FLUX.2-klein-4B, transformer/config.json: 5 double + 20 single blocks,
# 24 heads of 128, joint_attention_dim = 3 stacked Qwen3-4B layers of 2560.
KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 5,
    "num_single_layers": 20, "attention_head_dim": 128, "num_attention_heads": 24,
    "joint_attention_dim": 7680, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000, "eps": 1e-6,
    "guidance_embeds": False,
}  # fmt: skip
# Qwen/Qwen3-4B (FLUX.2 [klein] 4B's text_encoder; layers 9, 18 and 27 are read).
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6, "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
}  # fmt: skip
# black-forest-labs/FLUX.2-klein-4B, vae/config.json (AutoencoderKLFlux2).
FLUX2_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "act_fn": "silu", "latent_channels": 32, "norm_num_groups": 32,
    "sample_size": 1024, "use_quant_conv": True, "use_post_quant_conv": True,
    "patch_size": (2, 2), "batch_norm_eps": 1e-4, "batch_norm_momentum": 0.1,
}  # fmt: skip


@dataclass(frozen=True)
class Component:
    library: str  # "diffusers" | "transformers"
    cls: str
    config: dict[str, Any]
    config_cls: str | None = None  # transformers' config class


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline: str
    tiny_dir: str
    steps: int
    guidance: float
    max_sequence_length: int
    components: dict[str, Component]
    scheduler: dict[str, Any]
    tokenizers: tuple[str, ...]
    mlp_linear_units: int  # 2 for a GELU MLP, 3 for SwiGLU (see the FLOPs formula)
    extra: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    "flux1-dev": ModelSpec(
        name="flux1-dev", pipeline="FluxPipeline", tiny_dir="tiny-flux", steps=28,
        guidance=3.5, max_sequence_length=512,
        components={
            "transformer": Component("diffusers", "FluxTransformer2DModel", FLUX1_DEV_TRANSFORMER),
            "vae": Component("diffusers", "AutoencoderKL", FLUX1_VAE),
            "text_encoder": Component("transformers", "CLIPTextModel", CLIP_L, "CLIPTextConfig"),
            "text_encoder_2": Component("transformers", "T5EncoderModel", T5_XXL, "T5Config"),
        },
        scheduler=FLUX1_DEV_SCHEDULER, tokenizers=("tokenizer", "tokenizer_2"),
        mlp_linear_units=2,
    ),
    "flux1-schnell": ModelSpec(
        name="flux1-schnell", pipeline="FluxPipeline", tiny_dir="tiny-flux", steps=4,
        guidance=0.0, max_sequence_length=256,
        components={
            "transformer": Component(
                "diffusers", "FluxTransformer2DModel", FLUX1_SCHNELL_TRANSFORMER
            ),
            "vae": Component("diffusers", "AutoencoderKL", FLUX1_VAE),
            "text_encoder": Component("transformers", "CLIPTextModel", CLIP_L, "CLIPTextConfig"),
            "text_encoder_2": Component("transformers", "T5EncoderModel", T5_XXL, "T5Config"),
        },
        scheduler=FLUX1_SCHNELL_SCHEDULER, tokenizers=("tokenizer", "tokenizer_2"),
        mlp_linear_units=2, extra={"tiny_overrides": {"guidance_embeds": False}},
    ),
    "flux2-klein-4b": ModelSpec(
        name="flux2-klein-4b", pipeline="Flux2KleinPipeline", tiny_dir="tiny-flux2-klein",
        steps=4, guidance=1.0, max_sequence_length=512,
        components={
            "transformer": Component("diffusers", "Flux2Transformer2DModel", KLEIN_4B_TRANSFORMER),
            "vae": Component("diffusers", "AutoencoderKLFlux2", FLUX2_VAE),
            "text_encoder": Component("transformers", "Qwen3ForCausalLM", QWEN3_4B, "Qwen3Config"),
        },
        scheduler=FLUX1_DEV_SCHEDULER, tokenizers=("tokenizer",), mlp_linear_units=3,
        extra={"pipeline_kwargs": {"is_distilled": True}},
    ),
}  # fmt: skip

VARIANTS = (
    "plain", "attention", "fuse_qkv", "vae_channels_last", "vae_tiling", "prompt_cache",
    "compile", "best", "batch2", "batch4", "fp8",
)  # fmt: skip
# Tried in this order by the `attention` variant; each one that runs is a row.
ATTENTION_CANDIDATES_GPU = (
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flash",
    "_flash_3",
)
ATTENTION_CANDIDATES_CPU = ("_native_math", "_native_flash")


# --- building on the device ---------------------------------------------------------


def flops_per_step(spec_config: dict[str, Any], mlp_units: int, width: int, height: int,
                   text_tokens: int, vae_scale: int = 8) -> float:  # fmt: skip
    """One transformer forward of one image (the module docstring's formula)."""
    d = spec_config["num_attention_heads"] * spec_config["attention_head_dim"]
    image = (height // (vae_scale * 2)) * (width // (vae_scale * 2))
    n = image + text_tokens
    blocks = spec_config["num_layers"] + spec_config["num_single_layers"]
    c = 4 + mlp_units * float(spec_config.get("mlp_ratio", 4.0))
    c_in = spec_config["in_channels"]
    c_out = spec_config.get("out_channels") or c_in
    per_block = 2 * c * d * d * n + 4 * n * n * d
    projections = 2 * d * (c_in * image + spec_config["joint_attention_dim"] * text_tokens
                           + c_out * image)  # fmt: skip
    return float(blocks * per_block + projections)


def _fill_(module: Any, generator: Any) -> None:
    """Random weights in place on their device: N(0, 1/fan_in) for matrices and
    convolutions (activations stay O(1) through the depth), 1 for norm scales, 0 for
    biases; then the buffers a constructor computes (positions, RoPE frequencies,
    running statistics), which ``to_empty`` left uninitialised."""
    import torch

    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if isinstance(sub, torch.nn.Embedding):
                    param.normal_(0.0, 1.0, generator=generator)  # token vectors: unit variance
                elif param.dim() >= 2:
                    fan_in = math.prod(param.shape[1:])
                    param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                elif name == "bias":
                    param.zero_()
                else:
                    param.fill_(1.0)
        for sub in module.modules():
            own = dict(sub.named_buffers(recurse=False))
            if not own:
                continue
            if "position_ids" in own:
                ids = own["position_ids"]
                ids.copy_(torch.arange(ids.shape[-1], device=ids.device).expand_as(ids))
            elif "inv_freq" in own:
                inv_freq, _ = sub.compute_default_rope_parameters(
                    sub.config, device=own["inv_freq"].device
                )
                own["inv_freq"].copy_(inv_freq)
                own["original_inv_freq"].copy_(inv_freq)
            elif isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.reset_running_stats()
            else:
                raise RuntimeError(
                    f"no initialiser for the buffers {sorted(own)} of {type(sub).__name__}"
                )


def _build_module(component: Component, config: dict[str, Any], device: str, dtype: Any,
                  generator: Any) -> Any:  # fmt: skip
    import torch

    library = importlib.import_module(component.library)
    cls = getattr(library, component.cls)
    previous = torch.get_default_dtype()
    # Made in ``dtype`` on the meta device (no memory), then given storage on ``device``.
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            if component.config_cls is None:
                module = cls(**config)
            else:
                module = cls(getattr(library, component.config_cls)(**config))
    finally:
        torch.set_default_dtype(previous)
    module = module.to_empty(device=device)
    if hasattr(module, "tie_weights"):
        module.tie_weights()  # to_empty made the tied lm_head a copy of its own
    _fill_(module, generator)
    return module.eval().requires_grad_(False)


def _tiny_config(directory: Path, name: str) -> dict[str, Any]:
    raw = json.loads((directory / name / "config.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_") and k not in (
        "architectures", "transformers_version", "dtype", "torch_dtype", "model_type",
        "layer_types", "use_cache",
    )}  # fmt: skip


def ensure_tiny_models() -> None:
    from gpu_worker.tiny import build_tiny_models

    build_tiny_models(TINY_ROOT)


def build_pipeline(spec: ModelSpec, device: str, dtype: Any, tiny: bool) -> Any:
    import torch
    import transformers

    diffusers: Any = importlib.import_module("diffusers")  # untyped
    directory = TINY_ROOT / spec.tiny_dir
    generator = torch.Generator(device=device).manual_seed(SEED)
    parts: dict[str, Any] = {}
    for name, component in spec.components.items():
        config = dict(component.config)
        if tiny:
            config = _tiny_config(directory, name)
            config.update(spec.extra.get("tiny_overrides", {}) if name == "transformer" else {})
        parts[name] = _build_module(component, config, device, dtype, generator)
    for name in spec.tokenizers:
        parts[name] = transformers.AutoTokenizer.from_pretrained(
            str(directory / name), local_files_only=True
        )
    parts["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler(**spec.scheduler)
    pipe = getattr(diffusers, spec.pipeline)(**parts, **spec.extra.get("pipeline_kwargs", {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- measuring ----------------------------------------------------------------------


def say(line: str) -> None:
    print(line, flush=True)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype: Any, tiny: bool) -> float:
    """The device's dense matmul rate, measured: the compute floor's denominator."""
    import torch

    n = 512 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    rounds = 5 if tiny else 50
    started = time.perf_counter()
    for _ in range(rounds):
        a @ b
    synchronize(device)
    return 2 * n**3 * rounds / (time.perf_counter() - started) / 1e12


@dataclass
class Run:
    seconds: float
    step_seconds: float
    images: Any  # numpy uint8, (batch, H, W, 3)


def generate(pipe: Any, spec: ModelSpec, args: argparse.Namespace, batch: int,
             device: str) -> Run:  # fmt: skip
    import numpy as np
    import torch

    steps = args.steps or spec.steps
    marks: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        synchronize(device)
        marks.append(time.perf_counter())
        return kwargs

    generators = [torch.Generator(device="cpu").manual_seed(SEED + i) for i in range(batch)]
    call: dict[str, Any] = {
        "prompt": [PROMPT] * batch, "width": args.size, "height": args.size,
        "num_inference_steps": steps, "guidance_scale": spec.guidance, "generator": generators,
        "max_sequence_length": args.max_sequence_length or spec.max_sequence_length,
        "output_type": "np", "callback_on_step_end": on_step,
    }  # fmt: skip
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = pipe(**call).images
    synchronize(device)
    seconds = time.perf_counter() - started
    step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else math.nan
    pixels = (np.clip(np.asarray(out, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    return Run(seconds=seconds, step_seconds=step, images=pixels)


def psnr(a: Any, b: Any) -> tuple[float, int]:
    import numpy as np

    diff = a.astype(np.int16) - b.astype(np.int16)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    peak = int(np.abs(diff).max())
    return (math.inf if mse == 0 else 10 * math.log10(255**2 / mse)), peak


HEADER = ("| model | variant | s/image | ms/step | peak GiB | images/s | compile s | floor "
          "| PSNR dB | max abs |")  # fmt: skip


def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


@dataclass
class Bench:
    args: argparse.Namespace
    device: str
    dtype: Any
    peak_tflops: float
    reference: dict[str, Any] = field(default_factory=dict)  # model -> plain image
    attention: dict[str, tuple[str, float]] = field(default_factory=dict)  # fastest seen

    def row(self, spec: ModelSpec, variant: str, options: SpeedOptions, batch: int = 1) -> None:
        import torch

        label = f"| {spec.name} | {variant} |"
        pipe = None
        try:
            pipe = build_pipeline(spec, self.device, self.dtype, self.args.tiny)
            speed = Speed(options, self.device)
            speed.check()
            speed.apply(pipe, spec.name)
            warm = generate(pipe, spec, self.args, batch, self.device)
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            runs = [generate(pipe, spec, self.args, batch, self.device)
                    for _ in range(self.args.repeats)]  # fmt: skip
        except Exception as exc:  # one variant failing must not end the run
            if self.args.verbose:
                traceback.print_exc()
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            say(f"{label} skipped: {reason} |")
            return
        finally:
            del pipe
            gc.collect()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        seconds = statistics.median(r.seconds for r in runs)
        per_image = seconds / batch
        step_ms = statistics.median(r.step_seconds for r in runs) * 1000
        peak = (torch.cuda.max_memory_allocated() / 2**30
                if self.device.startswith("cuda") else math.nan)  # fmt: skip
        compile_s = warm.seconds - seconds if options.compile != "off" else math.nan
        floor = self.floor_seconds(spec) / per_image
        image = runs[0].images[0]
        if variant == "plain":
            self.reference[spec.name] = image
        ref = self.reference.get(spec.name)
        db, peak_diff = psnr(image, ref) if ref is not None else (math.nan, -1)
        say(f"{label} {fmt(per_image)} | {fmt(step_ms)} | {fmt(peak)} | {fmt(1 / per_image)} "
            f"| {fmt(compile_s)} | {fmt(floor, 2)} | {fmt(db)} | "
            f"{peak_diff if peak_diff >= 0 else '-'} |")  # fmt: skip
        if variant.startswith("attention:"):
            best = self.attention.get(spec.name)
            if best is None or step_ms < best[1]:
                self.attention[spec.name] = (options.attention_backend, step_ms)

    def transformer_config(self, spec: ModelSpec) -> dict[str, Any]:
        if self.args.tiny:
            return _tiny_config(TINY_ROOT / spec.tiny_dir, "transformer")
        return spec.components["transformer"].config

    def flops(self, spec: ModelSpec) -> float:
        return flops_per_step(
            self.transformer_config(spec), spec.mlp_linear_units, self.args.size,
            self.args.size, self.args.max_sequence_length or spec.max_sequence_length,
        )  # fmt: skip

    def floor_seconds(self, spec: ModelSpec) -> float:
        steps = self.args.steps or spec.steps
        return steps * self.flops(spec) / (self.peak_tflops * 1e12)

    def model(self, spec: ModelSpec, variants: list[str]) -> None:
        say(f"\n{spec.name}: {self.args.size}x{self.args.size}, {self.args.steps or spec.steps} "
            f"steps, {self.flops(spec) / 1e12:.4g} TFLOP/step, compute floor "
            f"{self.floor_seconds(spec):.4g} s/image")  # fmt: skip
        say(HEADER)
        say("|" + "---|" * HEADER.count(" | ") + "---|")
        gpu = self.device.startswith("cuda")
        for variant in variants:
            if variant == "plain":
                self.row(spec, "plain", SpeedOptions())
            elif variant == "attention":
                for backend in ATTENTION_CANDIDATES_GPU if gpu else ATTENTION_CANDIDATES_CPU:
                    self.row(spec, f"attention:{backend}", SpeedOptions(attention_backend=backend))
            elif variant in ("fuse_qkv", "vae_channels_last", "vae_tiling"):
                flags: dict[str, Any] = {variant: True}
                self.row(spec, variant, SpeedOptions(**flags))
            elif variant == "prompt_cache":
                self.row(spec, variant, SpeedOptions(prompt_cache=8))
            elif variant == "compile":
                self.row(spec, variant, SpeedOptions(compile="regional"))
            elif variant in ("best", "batch2", "batch4", "fp8"):
                options = self.best(spec)
                if variant == "fp8":
                    options = SpeedOptions(**{**_fields(options), "quantization": "fp8"})
                batch = {"batch2": 2, "batch4": 4}.get(variant, 1)
                self.row(spec, f"{variant} ({describe(options)})", options, batch)
            else:
                raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
            if gpu:
                import torch

                torch._dynamo.reset()  # each compiled variant compiles afresh
            elif variant in ("compile", "best", "batch2", "batch4", "fp8"):
                import torch

                torch._dynamo.reset()

    def best(self, spec: ModelSpec) -> SpeedOptions:
        """Every lossless option, with the fastest attention backend measured (if any)."""
        attention = self.attention.get(spec.name, ("default", 0.0))[0]
        return SpeedOptions(compile="regional", fuse_qkv=True, attention_backend=attention,
                            vae_channels_last=True, prompt_cache=8)  # fmt: skip


def _fields(options: SpeedOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in SpeedOptions.__slots__}


def describe(options: SpeedOptions) -> str:
    default = SpeedOptions()
    changed = [f"{k}={v}" for k, v in _fields(options).items() if getattr(default, k) != v]
    return ", ".join(changed) or "defaults"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny models (var/models)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--max-sequence-length", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of skipped rows")
    args = parser.parse_args(argv)

    import torch

    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if args.tiny:
        ensure_tiny_models()
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    what = "tiny models (a smoke run, not a speed figure)" if args.tiny else "full-size models"
    say(f"bench/gpu.py on {device} ({gpu}), torch {torch.__version__}, {dtype}, {what}")
    peak = matmul_tflops(device, dtype, args.tiny)
    say(f"measured matmul peak: {peak:.4g} TFLOP/s ({str(dtype).removeprefix('torch.')})")
    bench = Bench(args, device, dtype, peak)
    for name in models:
        bench.model(MODELS[name], variants)


if __name__ == "__main__":
    main()
