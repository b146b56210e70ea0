"""A tiny, randomly initialised FLUX pipeline for tests and local development.

:func:`build_tiny_flux` writes a directory that ``diffusers.FluxPipeline.from_pretrained``
loads with ``local_files_only=True`` and that generates images through the real FLUX code
path on a CPU in tens of milliseconds.  Nothing is downloaded: the weights are random and
both tokenizers are made here from hand-written vocabularies.

Why the shapes are what they are:

* The VAE has four down/up blocks, like the real one, so it scales by ``2 ** 3 = 8`` and
  the pipeline's ``vae_scale_factor`` is 8.  With fewer blocks the latents would be larger
  (full-size with one block) and the transformer would see up to 64x more image tokens.
  ``latent_channels=16`` because FLUX packs 16-channel latents in 2x2 patches, which
  gives the transformer ``in_channels = 16 * 2 * 2 = 64``.  The blocks are 4 channels
  wide (2 norm groups) because at 1024x1024 the decoder's full-resolution convolutions
  are most of the run time, and the mid-block attention is off: at 1024x1024 it would
  be a 16384-token attention.
* The transformer has one double-stream and one single-stream block with 2 heads of
  width 16 (inner width 32); ``axes_dims_rope`` must add up to the head width.
  ``joint_attention_dim`` is the T5 ``d_model`` and ``pooled_projection_dim`` is the CLIP
  ``hidden_size`` (FLUX uses CLIP's pooled output, which has the hidden size).
  ``guidance_embeds=True`` as in FLUX.1-dev, so ``guidance_scale`` reaches the model.
* The CLIP tokenizer is byte-level BPE whose vocabulary holds every byte, with and
  without CLIP's ``</w>`` end-of-word suffix, so any unicode text tokenizes without an
  unknown token.  CLIP's ``max_position_embeddings`` is 77, the tokenizer's max length.
* The T5 tokenizer is a Unigram model over printable ASCII; any other character becomes
  ``<unk>``.  T5 uses relative position buckets, so it accepts FLUX's default
  ``max_sequence_length=512`` and no special call arguments are needed.
* Both text encoders' ``vocab_size`` is the tokenizer's ``len()``, so every id the
  tokenizers can produce is covered.

:func:`build_tiny_flux_fill` writes the same pipeline for ``diffusers.FluxFillPipeline``
(inpainting and outpainting): the tokenizers, text encoders, VAE and scheduler are
:func:`build_tiny_flux`'s own (same seed, same weights); only the transformer differs.
FLUX.1-Fill concatenates three things along the channel axis of each packed 2x2 latent
patch before the transformer sees it:

* the noisy latents: ``16 * 2 * 2 = 64`` channels, as in FLUX;
* the VAE latents of the masked image (the image with the repainted area zeroed):
  another ``16 * 2 * 2 = 64``;
* the mask, not encoded but folded: each latent pixel covers ``8 x 8`` image pixels
  (``vae_scale_factor`` 8), which become ``8 * 8 = 64`` channels, packed in 2x2 patches
  to ``64 * 4 = 256``.

So its ``in_channels`` is ``64 + 64 + 256 = 384`` (as in the real FLUX.1-Fill-dev), and
``out_channels=64``: it still predicts only the latents' own 64 packed channels.
FluxImg2ImgPipeline and FluxKontextPipeline need no build of their own: they take
FluxPipeline's components (Kontext appends the reference image's latents as extra
*tokens*, not channels), and load from the :func:`build_tiny_flux` directory.
:func:`build_tiny_models` builds both directories under one root.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import string
import tempfile
from typing import Any

from gpu_worker.tiny_flux2 import (
    TINY_FLUX2,
    TINY_FLUX2_KLEIN,
    build_tiny_flux2,
    build_tiny_flux2_klein,
)

__all__ = [
    "build_tiny_flux", "build_tiny_flux_fill", "build_tiny_lora", "build_tiny_loras",
    "build_tiny_models",
]  # fmt: skip

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_END_OF_WORD = "</w>"
_CLIP_MAX_LENGTH = 77
_CLIP_HIDDEN = 32
_CLIP_MERGED_WORDS = ("the", "cat", "photo", "of", "on", "in")

_T5_PAD = "<pad>"
_T5_EOS = "</s>"
_T5_UNK = "<unk>"
_T5_SPACE = "\u2581"  # SentencePiece's word-start marker.
_T5_MAX_LENGTH = 512
_T5_D_MODEL = 32

_VAE_SCALING_FACTOR = 0.3611
_VAE_SHIFT_FACTOR = 0.1159

_LATENT_CHANNELS = 16
_VAE_SCALE_FACTOR = 8  # 2 ** (four VAE blocks - 1)
_PACKED_LATENT_CHANNELS = _LATENT_CHANNELS * 2 * 2
_PACKED_MASK_CHANNELS = _VAE_SCALE_FACTOR * _VAE_SCALE_FACTOR * 2 * 2
FILL_IN_CHANNELS = 2 * _PACKED_LATENT_CHANNELS + _PACKED_MASK_CHANNELS  # 384

TINY_FLUX = "tiny-flux"
TINY_FLUX_FILL = "tiny-flux-fill"
# Offset from the build seed for the fill transformer's weights, so they do not repeat
# the draws of any other component.
_FILL_SEED_OFFSET = 1_000_003


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte-to-character map used by byte-level BPE, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def _write_clip_vocab(directory: pathlib.Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for a byte-level BPE CLIP tokenizer.

    The vocabulary is the two special tokens, every byte symbol alone and as a word
    ending, and a few merged words so that BPE merging is exercised too.
    """
    symbols = _bytes_to_unicode()
    tokens = [_CLIP_BOS, _CLIP_EOS, *symbols, *(s + _CLIP_END_OF_WORD for s in symbols)]
    merges: list[str] = []
    for word in _CLIP_MERGED_WORDS:
        # Merge left to right: "t h" -> "th", then "th e</w>" -> "the</w>".
        left, *rest = [*word[:-1], word[-1] + _CLIP_END_OF_WORD]
        for right in rest:
            merges.append(f"{left} {right}")
            left += right
            tokens.append(left)
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), encoding="utf-8"
    )


def _t5_vocab() -> list[tuple[str, float]]:
    """``<pad>``, ``</s>``, ``<unk>`` at ids 0, 1, 2 as in T5, then printable ASCII pieces."""
    chars = string.ascii_letters + string.digits + string.punctuation
    return [
        (_T5_PAD, 0.0),
        (_T5_EOS, 0.0),
        (_T5_UNK, 0.0),
        (_T5_SPACE, -2.0),
        *((c, -3.0) for c in chars),
        *((_T5_SPACE + c, -3.5) for c in chars),
    ]


def build_tiny_flux(directory: pathlib.Path, *, seed: int = 0) -> None:
    """Build a tiny random FLUX pipeline and ``save_pretrained`` it into ``directory``.

    The same ``seed`` always gives byte-identical weights.  The global torch RNG state
    is left as it was.
    """
    _tiny_flux(seed).save_pretrained(directory)


def build_tiny_flux_fill(directory: pathlib.Path, *, seed: int = 0) -> None:
    """Build a tiny random ``FluxFillPipeline`` into ``directory``: :func:`build_tiny_flux`'s
    components for ``seed`` with a transformer of ``in_channels=384, out_channels=64``
    (see the module docstring).  Deterministic per ``seed``; the global torch RNG state
    is left as it was."""
    import torch

    diffusers = importlib.import_module("diffusers")
    components = dict(_tiny_flux(seed).components)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _FILL_SEED_OFFSET)
        components["transformer"] = _tiny_transformer(
            diffusers, in_channels=FILL_IN_CHANNELS, out_channels=_PACKED_LATENT_CHANNELS
        )
    # FluxFillPipeline has no IP-adapter image encoder.
    components.pop("image_encoder", None)
    components.pop("feature_extractor", None)
    diffusers.FluxFillPipeline(**components).save_pretrained(directory)


def build_tiny_models(root: pathlib.Path, *, seed: int = 0) -> list[pathlib.Path]:
    """Build ``root/tiny-flux``, ``root/tiny-flux-fill``, ``root/tiny-flux2`` and
    ``root/tiny-flux2-klein`` (the directories ``deploy/models.dev.toml`` names),
    skipping one that already holds a pipeline.

    Each is written to a temporary sibling and renamed into place, so a build that is
    interrupted, or that races another process building the same directory, never
    leaves a half-written directory behind a ``model_index.json``.  Returns the
    directories built now.
    """
    built = []
    builds = (
        (TINY_FLUX, build_tiny_flux),
        (TINY_FLUX_FILL, build_tiny_flux_fill),
        # FLUX.2 [dev] and [klein] (gpu_worker.tiny_flux2), for the flux-2-* services.
        (TINY_FLUX2, build_tiny_flux2),
        (TINY_FLUX2_KLEIN, build_tiny_flux2_klein),
    )
    for name, build in builds:
        target = root / name
        if (target / "model_index.json").is_file():
            continue
        root.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(staging, seed=seed)
            staging.chmod(0o755)  # mkdtemp makes it private to this user
            try:
                staging.rename(target)
            except OSError:
                # Another process finished first (or an empty directory is in the way):
                # keep what is there if it is a pipeline, else report the conflict.
                if not (target / "model_index.json").is_file():
                    raise
                continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        built.append(target)
    return built


def _tiny_flux(seed: int) -> Any:
    """The tiny ``FluxPipeline`` of :func:`build_tiny_flux`, in memory."""
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    # diffusers has no type information that mypy --strict accepts; use it as Any.
    diffusers = importlib.import_module("diffusers")

    with tempfile.TemporaryDirectory(prefix="tiny-clip-tokenizer-") as clip_files:
        _write_clip_vocab(pathlib.Path(clip_files))
        tokenizer = CLIPTokenizer.from_pretrained(
            clip_files, model_max_length=_CLIP_MAX_LENGTH, local_files_only=True
        )
    tokenizer_2 = T5Tokenizer(vocab=_t5_vocab(), extra_ids=0, model_max_length=_T5_MAX_LENGTH)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_CLIP_HIDDEN,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=_CLIP_MAX_LENGTH,
                projection_dim=_CLIP_HIDDEN,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=_T5_D_MODEL,
                d_kv=16,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
            )
        )
        transformer = _tiny_transformer(diffusers, in_channels=_PACKED_LATENT_CHANNELS)
        vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(4, 4, 4, 4),
            layers_per_block=1,
            latent_channels=_LATENT_CHANNELS,
            norm_num_groups=2,
            sample_size=64,
            scaling_factor=_VAE_SCALING_FACTOR,
            shift_factor=_VAE_SHIFT_FACTOR,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
        )

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return diffusers.FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# Tiny LoRA styles for the tiny transformer (issue 13): development and the tests apply
# them to tiny-flux. Name -> seed of its random weights.
TINY_LORAS = {"tiny-style-a": 11, "tiny-style-b": 12, "tiny-style-c": 13, "tiny-style-d": 14}
_LORA_RANK = 4
# The attention projections of the tiny transformer's one double-stream and one
# single-stream block, as FluxLoraLoaderMixin names them (diffusers/peft format).
_LORA_TARGETS = tuple(
    f"transformer.transformer_blocks.0.attn.{m}"
    for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")
) + tuple(f"transformer.single_transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v"))


def build_tiny_lora(path: pathlib.Path, *, seed: int) -> None:
    """Write a rank-4 LoRA for the tiny transformer's attention projections to ``path``
    (safetensors). Both factors are random and non-zero (a trained LoRA's B starts at
    zero and moves; an untrained one would change nothing), large enough that an image
    made with it differs clearly from one without."""
    import torch
    from safetensors.torch import save_file

    inner = 2 * 16  # 2 heads of width 16 (_tiny_transformer): every projection is 32 -> 32
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for module in _LORA_TARGETS:
        a = torch.randn(_LORA_RANK, inner, generator=generator) * 0.5
        b = torch.randn(inner, _LORA_RANK, generator=generator) * 0.5
        tensors[f"{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{module}.lora_B.weight"] = b.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, staging)
        pathlib.Path(staging).replace(path)  # atomic: a reader never sees half a file
    finally:
        pathlib.Path(staging).unlink(missing_ok=True)


def build_tiny_loras(directory: pathlib.Path) -> list[pathlib.Path]:
    """Build the tiny LoRA files (``<name>.safetensors``) missing from ``directory``;
    returns those built now."""
    built = []
    for name, seed in TINY_LORAS.items():
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            build_tiny_lora(path, seed=seed)
            built.append(path)
    return built


def _tiny_transformer(diffusers: Any, *, in_channels: int, out_channels: int | None = None) -> Any:
    """The tiny FLUX transformer; ``out_channels=None`` means ``in_channels``."""
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_D_MODEL,
        pooled_projection_dim=_CLIP_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
