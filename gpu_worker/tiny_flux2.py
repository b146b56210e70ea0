"""Tiny, randomly initialised FLUX.2 pipelines for tests and local development.

:func:`build_tiny_flux2` writes a directory that ``diffusers.Flux2Pipeline`` (FLUX.2
[dev]) loads with ``from_pretrained(..., local_files_only=True)``, and
:func:`build_tiny_flux2_klein` one for ``diffusers.Flux2KleinPipeline`` (FLUX.2 [klein]).
Both are the real architectures at toy sizes, saved with ``save_pretrained`` in the layout
of the published checkpoints, so the worker loads them exactly as it loads a download.
Nothing is downloaded: the weights are random and the tokenizers are made here.

Why the shapes are what they are:

* FLUX.2's VAE (``AutoencoderKLFlux2``) has 32 latent channels; the pipeline folds each
  2x2 latent patch into the channels (``_patchify_latents``), so the transformer's
  ``in_channels`` is ``32 * 4 = 128``, as in the real models, and the VAE's batch norm
  (``bn``, which normalises the patchified latents) has 128 channels. Four VAE blocks
  keep ``vae_scale_factor`` at 8, so an image of ``H x W`` is ``H/16 * W/16`` tokens.
  The blocks are 4 channels wide and the mid-block attention is off, for the reasons
  ``gpu_worker.tiny`` gives for FLUX.1's VAE.
* The text encoders are real ``Mistral3ForConditionalGeneration`` ([dev]) and
  ``Qwen3ForCausalLM`` ([klein]) models, 16 wide. The pipelines stack the hidden states of
  three fixed layers, (10, 20, 30) for Mistral and (9, 18, 27) for Qwen3, so the encoders
  need at least 30 and 27 layers (the real ones have 40 and 36); the transformer's
  ``joint_attention_dim`` is three times the encoder's width.
* [dev] has a guidance embedding (``guidance_embeds=True``: guidance-distilled);
  [klein] has none and is saved ``is_distilled=True``, like FLUX.2-klein-4B/9B (4 steps,
  no classifier-free guidance).
* ``axes_dims_rope`` has four axes (time, height, width, sequence) adding up to the head
  width.
* Both tokenizers are byte-level BPE: every byte is in the vocabulary, so any text
  tokenizes without an unknown token, and the words of FLUX.2's system prompt are merged
  whole so that the prompt, not the system prompt, fills most of a short
  ``max_sequence_length``. [dev]'s is wrapped in the ``PixtralProcessor`` that
  ``AutoProcessor.from_pretrained`` loads (the pipeline calls the processor's
  ``apply_chat_template``), with Mistral's chat template reduced to text messages;
  [klein]'s is a ``Qwen2Tokenizer`` with Qwen3's chat format (``enable_thinking=False``
  gives the empty think block).
"""

from __future__ import annotations

import importlib
import pathlib
import re
from typing import Any

__all__ = ["TINY_FLUX2", "TINY_FLUX2_KLEIN", "build_tiny_flux2", "build_tiny_flux2_klein"]

TINY_FLUX2 = "tiny-flux2"
TINY_FLUX2_KLEIN = "tiny-flux2-klein"

_TEXT_HIDDEN = 16
_MISTRAL_LAYERS = 30  # Flux2Pipeline reads hidden states 10, 20 and 30
_QWEN_LAYERS = 27  # Flux2KleinPipeline reads hidden states 9, 18 and 27
_STACKED_LAYERS = 3
_LATENT_CHANNELS = 32
_MAX_POSITIONS = 1024

# Offsets from the build seed, so the two pipelines do not share weights.
_KLEIN_SEED_OFFSET = 2_000_003

_MISTRAL_UNK, _MISTRAL_BOS, _MISTRAL_EOS, _MISTRAL_PAD = "<unk>", "<s>", "</s>", "<pad>"
_MISTRAL_SPECIAL = (
    _MISTRAL_UNK, _MISTRAL_BOS, _MISTRAL_EOS, _MISTRAL_PAD, "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
)  # fmt: skip
# Mistral Small 3.1's chat format, for text content only (FLUX.2 sends no images when it
# encodes a prompt): a system prompt, then [INST] user turns.
_MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set text = message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

_QWEN_PAD, _QWEN_EOS = "<|endoftext|>", "<|im_end|>"
_QWEN_SPECIAL = (_QWEN_PAD, "<|im_start|>", _QWEN_EOS, "<think>", "</think>")
# Qwen3's chat format, reduced to plain string messages.
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def build_tiny_flux2(directory: pathlib.Path, *, seed: int = 0) -> None:
    """Build a tiny random ``Flux2Pipeline`` (FLUX.2 [dev]) into ``directory``.

    The same ``seed`` always gives byte-identical weights; the global torch RNG state is
    left as it was.
    """
    import torch
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    diffusers = importlib.import_module("diffusers")
    tokenizer = _byte_bpe_tokenizer(_MISTRAL_SPECIAL, qwen=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = Mistral3ForConditionalGeneration(
            Mistral3Config(
                text_config=MistralConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=_TEXT_HIDDEN,
                    intermediate_size=32,
                    num_hidden_layers=_MISTRAL_LAYERS,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=8,
                    max_position_embeddings=_MAX_POSITIONS,
                    sliding_window=None,
                    bos_token_id=tokenizer.convert_tokens_to_ids(_MISTRAL_BOS),
                    eos_token_id=tokenizer.convert_tokens_to_ids(_MISTRAL_EOS),
                    pad_token_id=tokenizer.pad_token_id,
                ),
                vision_config=PixtralVisionConfig(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,  # head_dim: 16 / 2
                    patch_size=16,
                    image_size=64,
                ),
                image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
                spatial_merge_size=2,
            )
        )
        transformer = _tiny_transformer(diffusers, guidance_embeds=True)
        vae = _tiny_vae(diffusers)
    diffusers.Flux2Pipeline(
        scheduler=_scheduler(diffusers),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(directory)


def build_tiny_flux2_klein(directory: pathlib.Path, *, seed: int = 0) -> None:
    """Build a tiny random ``Flux2KleinPipeline`` (FLUX.2 [klein], step-distilled) into
    ``directory``. Deterministic per ``seed``; the global torch RNG state is left as it
    was."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    diffusers = importlib.import_module("diffusers")
    tokenizer = _byte_bpe_tokenizer(_QWEN_SPECIAL, qwen=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _KLEIN_SEED_OFFSET)
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_HIDDEN,
                intermediate_size=32,
                num_hidden_layers=_QWEN_LAYERS,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=_MAX_POSITIONS,
                tie_word_embeddings=True,
                bos_token_id=None,
                eos_token_id=tokenizer.convert_tokens_to_ids(_QWEN_EOS),
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        transformer = _tiny_transformer(diffusers, guidance_embeds=False)
        vae = _tiny_vae(diffusers)
    diffusers.Flux2KleinPipeline(
        scheduler=_scheduler(diffusers),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    ).save_pretrained(directory)


def _tiny_transformer(diffusers: Any, *, guidance_embeds: bool) -> Any:
    return diffusers.Flux2Transformer2DModel(
        patch_size=1,
        in_channels=_LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_STACKED_LAYERS * _TEXT_HIDDEN,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _tiny_vae(diffusers: Any) -> Any:
    return diffusers.AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=2,
        sample_size=64,
        mid_block_add_attention=False,
    )


def _scheduler(diffusers: Any) -> Any:
    # FLUX.2's own scheduler config; the pipelines pass ``mu`` (an empirical fit of the
    # image size and step count) for the dynamic shift.
    return diffusers.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def _byte_bpe_tokenizer(special: tuple[str, ...], *, qwen: bool) -> Any:
    """A byte-level BPE tokenizer: the special tokens, every byte symbol, and merges that
    make each word of FLUX.2's system prompt (with and without its leading space) one
    token. ``qwen`` gives a ``Qwen2Tokenizer``, else a plain fast tokenizer for the
    Mistral processor."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    from gpu_worker.tiny import _bytes_to_unicode  # GPT-2's byte map, shared with CLIP's

    symbols = _bytes_to_unicode()
    space = symbols[ord(" ")]
    vocab: dict[str, int] = {}
    for token in symbols:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted(set(re.findall(r"[A-Za-z]+", SYSTEM_MESSAGE + " a photo of the cat")))
    # Spaced words first: their merges rank before the bare words', so " photo" becomes
    # one token rather than a space and "photo".
    for spelled in [space + word for word in words] + words:
        left = spelled[0]
        for right in spelled[1:]:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left += right
    if qwen:
        # Typed as taking "a b" strings, but the tokenizers BPE it builds wants pairs.
        qwen_tokenizer: Any = Qwen2Tokenizer
        tokenizer = qwen_tokenizer(
            vocab=vocab,
            merges=merges,
            unk_token=None,  # as Qwen3's: byte-level BPE has no unknown text
            eos_token=_QWEN_EOS,
            pad_token=_QWEN_PAD,
            chat_template=_QWEN_CHAT_TEMPLATE,
        )
        tokenizer.add_special_tokens({"additional_special_tokens": list(special[1:])})
        tokenizer.add_tokens([AddedToken(special[0], special=True)], special_tokens=True)
        return tokenizer
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in special])
    fast: Any = PreTrainedTokenizerFast  # its __init__ is untyped
    return fast(
        tokenizer_object=backend,
        unk_token=_MISTRAL_UNK,
        bos_token=_MISTRAL_BOS,
        eos_token=_MISTRAL_EOS,
        pad_token=_MISTRAL_PAD,
        chat_template=_MISTRAL_CHAT_TEMPLATE,
    )
