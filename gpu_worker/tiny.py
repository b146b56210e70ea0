"""A tiny, randomly initialised FLUX pipeline for tests and local development.

:func:`build_tiny_flux` writes a directory that ``diffusers.FluxPipeline.from_pretrained``
loads with ``local_files_only=True`` and that generates images through the real FLUX code
path on a CPU in tens of milliseconds.  Nothing is downloaded: the weights are random and
both tokenizers are made here from hand-written vocabularies.

Why the shapes are what they are:

* The VAE has four down/up blocks, like the real one, so it scales by ``2 ** 3 = 8`` and
  the pipeline's ``vae_scale_factor`` is 8.  With fewer blocks the latents would be larger
  (full-size with one block) and the transformer would see ~64x more image tokens.
  ``latent_channels=16`` because FLUX packs 16-channel latents in 2x2 patches, which
  gives the transformer ``in_channels = 16 * 2 * 2 = 64``.  The mid-block attention is
  off: at 1024x1024 it would be a 16384-token attention that dwarfs everything else.
* The transformer has one double-stream and one single-stream block with 2 heads of
  width 16 (inner width 32); ``axes_dims_rope`` must add up to the head width.
  ``joint_attention_dim`` is the T5 ``d_model`` and ``pooled_projection_dim`` is the CLIP
  ``hidden_size`` (FLUX uses CLIP's pooled output, which has the hidden size).
* The CLIP tokenizer is byte-level BPE whose vocabulary holds every byte, with and
  without CLIP's ``</w>`` end-of-word suffix, so any unicode text tokenizes without an
  unknown token.  CLIP's ``max_position_embeddings`` is 77, the tokenizer's max length.
* The T5 tokenizer is a Unigram model over ASCII characters; any other character becomes
  ``<unk>``.  T5 uses relative position buckets, so it accepts FLUX's default
  ``max_sequence_length=512`` and no special call arguments are needed.
* Both text encoders' ``vocab_size`` is the tokenizer's ``len()``, so every id the
  tokenizers can produce is covered.
"""

from __future__ import annotations

import pathlib
import string

__all__ = ["build_tiny_flux"]

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_MAX_LENGTH = 77
_CLIP_HIDDEN = 32

_T5_PAD = "<pad>"
_T5_EOS = "</s>"
_T5_UNK = "<unk>"
_T5_MAX_LENGTH = 512
_T5_D_MODEL = 32

_VAE_SCALING_FACTOR = 0.3611
_VAE_SHIFT_FACTOR = 0.1159


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Every byte symbol, alone and as a word ending, plus a few merges of common words."""
    symbols = list(_bytes_to_unicode().values())
    tokens = [_CLIP_BOS, _CLIP_EOS, *symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []
    for word in ("a", "the", "cat", "photo", "of", "on", "in"):
        if len(word) < 2:
            continue
        # Merge left to right: ((t h) e</w>) and so on.
        parts = [*word[:-1], word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merge = (left, right)
            if merge not in merges:
                merges.append(merge)
            left = left + right
            if left not in tokens:
                tokens.append(left)
    vocab = {token: index for index, token in enumerate(tokens)}
    return vocab, merges


def _t5_vocab() -> list[tuple[str, float]]:
    """``<pad>``, ``</s>``, ``<unk>`` at 0, 1, 2 like T5, then printable ASCII pieces."""
    pieces: list[tuple[str, float]] = [(_T5_PAD, 0.0), (_T5_EOS, 0.0), (_T5_UNK, 0.0), ("▁", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces.extend((c, -3.0) for c in chars)
    pieces.extend(("▁" + c, -3.5) for c in chars)
    return pieces


def build_tiny_flux(directory: pathlib.Path, *, seed: int = 0) -> None:
    """Build a tiny random FLUX pipeline and ``save_pretrained`` it into ``directory``.

    The same ``seed`` always yields the same weights.  The global torch RNG state is left
    as it was.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    clip_vocab, clip_merges = _clip_vocab()
    tokenizer = CLIPTokenizer(
        vocab=clip_vocab,
        merges=clip_merges,
        model_max_length=_CLIP_MAX_LENGTH,
    )
    tokenizer_2 = T5TokenizerFast(
        vocab=_t5_vocab(),
        extra_ids=0,
        model_max_length=_T5_MAX_LENGTH,
    )

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
                decoder_start_token_id=tokenizer_2.pad_token_id,
            )
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=_T5_D_MODEL,
            pooled_projection_dim=_CLIP_HIDDEN,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(4, 4, 4, 4),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=2,
            sample_size=64,
            scaling_factor=_VAE_SCALING_FACTOR,
            shift_factor=_VAE_SHIFT_FACTOR,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
        )

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )

    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(directory)
