"""FLUX.2 [dev] and [klein] (issue 16): the tiny builds (``gpu_worker.tiny_flux2``) load
from their directories as the real checkpoints do, and the ``text_to_image`` kind runs
them through the worker's ``LoadedPipelines`` for the ``flux-2-dev`` and ``flux-2-klein``
services of deploy/models.dev.toml: the requested size, the same image for the same seed,
progress after every step and latent previews in FLUX.2's packing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from billing.errors import BadUserInput
from gpu_worker.pipeline import LoadedPipelines
from gpu_worker.tiny_flux2 import TINY_FLUX2, TINY_FLUX2_KLEIN
from kinds import text_to_image
from kinds.base import PlanContext

KIND = text_to_image.KIND
SERVICES = {
    "flux-2-dev": (TINY_FLUX2, "Flux2Pipeline"),
    "flux-2-klein": (TINY_FLUX2_KLEIN, "Flux2KleinPipeline"),
}


def render(
    pipelines: LoadedPipelines,
    ctx: PlanContext,
    service: str,
    *,
    seed: int,
    width: int = 320,
    height: int = 256,
    prompt: str = "a photo of the cat",
    preview: bool = False,
) -> tuple[list[Image.Image], list[tuple[int, int, bytes | None]]]:
    """Plan a text_to_image job as the API does, then run it as the worker does."""
    params = KIND.Params.model_validate(
        {"service": service, "prompt": prompt, "width": width, "height": height, "seed": seed}
    )
    plan = KIND.plan(params, {}, ctx)
    steps: list[tuple[int, int, bytes | None]] = []
    outputs = KIND.run(
        pipelines,
        {**plan.params, "preview": preview},
        {},
        lambda step, total, shot: steps.append((step, total, shot)),
    )
    return [o.image for o in outputs], steps


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_tiny_flux2_directory_loads_as_its_own_class(tiny_models: Path, service: str) -> None:
    name, pipeline = SERVICES[service]
    directory = tiny_models / name
    index = json.loads((directory / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    cls: Any = getattr(diffusers, pipeline)  # diffusers' classmethods are untyped
    pipe = cls.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True)
    assert type(pipe) is cls
    assert type(pipe.transformer).__name__ == "Flux2Transformer2DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLFlux2"
    # 32 latent channels, patchified 2x2 into the transformer's 128; three stacked
    # encoder layers make the text width.
    assert pipe.transformer.config.in_channels == 128 == 4 * pipe.vae.config.latent_channels
    width = pipe.text_encoder.config.get_text_config().hidden_size
    assert pipe.transformer.config.joint_attention_dim == 3 * width
    assert pipe.vae_scale_factor == 8


def test_tiny_flux2_dev_text_side_is_mistral_with_a_processor(tiny_models: Path) -> None:
    directory = tiny_models / TINY_FLUX2
    config = json.loads((directory / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["Mistral3ForConditionalGeneration"]
    assert config["text_config"]["num_hidden_layers"] >= 30  # hidden states 10, 20, 30
    auto: Any = AutoProcessor  # transformers' from_pretrained is untyped
    processor = auto.from_pretrained(str(directory / "tokenizer"))
    messages = [
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "a red fox, über"}]},
        ]
    ]
    encoded = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt",
        padding="max_length", truncation=True, max_length=64,
    )  # fmt: skip
    assert encoded["input_ids"].shape == (1, 64)
    text = processor.decode(encoded["input_ids"][0], skip_special_tokens=False)
    assert "[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]a red fox, über[/INST]" in text


def test_tiny_flux2_klein_text_side_is_qwen3(tiny_models: Path) -> None:
    directory = tiny_models / TINY_FLUX2_KLEIN
    assert json.loads((directory / "model_index.json").read_text())["is_distilled"] is True
    config = json.loads((directory / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["num_hidden_layers"] >= 27  # hidden states 9, 18, 27
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "ein Fuchs 🦊"}],
        tokenize=False, add_generation_prompt=True, enable_thinking=False,
    )  # fmt: skip
    assert isinstance(text, str)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: every character round-trips


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_text_to_image_runs_flux2_deterministically_per_seed(
    pipelines: LoadedPipelines, ctx: PlanContext, service: str
) -> None:
    first, steps = render(pipelines, ctx, service, seed=7)
    again, _ = render(pipelines, ctx, service, seed=7)
    other, _ = render(pipelines, ctx, service, seed=8)
    assert [i.size for i in first] == [(320, 256)]
    assert first[0].tobytes() == again[0].tobytes()
    assert first[0].tobytes() != other[0].tobytes()
    entry = ctx.catalog.resolve(service, None)
    assert [(s, t) for s, t, _ in steps] == [(s, entry.steps) for s in range(1, entry.steps + 1)]
    _, pipeline = SERVICES[service]
    loaded = pipelines.get({"path": str(entry.path), "pipeline": pipeline})
    assert type(loaded).__name__ == pipeline  # its own class, no FluxPipeline made over it


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_flux2_previews_are_small_pngs_of_the_image_shape(
    pipelines: LoadedPipelines, ctx: PlanContext, service: str
) -> None:
    images, steps = render(pipelines, ctx, service, seed=3, width=512, height=256, preview=True)
    assert images[0].size == (512, 256)
    shots = [shot for _, _, shot in steps if shot is not None]
    assert shots  # every steps // 4 steps, not after the last
    for shot in shots:
        preview = Image.open(io.BytesIO(shot))
        assert preview.format == "PNG"
        # the latent grid is 64x32 (8x downscale), thumbnailed to at most 128 wide
        assert preview.size == (64, 32)


def test_flux2_versions_are_priced_and_refuse_a_negative_prompt(ctx: PlanContext) -> None:
    base = {"prompt": "a cat", "width": 512, "height": 512, "seed": 1}
    credits = {}
    for service, version in (
        ("flux-dev", None),
        ("flux-2-dev", None),
        ("flux-2-klein", None),
        ("flux-2-klein", "flux-2-klein-9b"),
    ):
        params = KIND.Params.model_validate({**base, "service": service, "version": version})
        plan = KIND.plan(params, {}, ctx)
        credits[plan.version] = plan.quote.credits
        assert plan.params["model"]["pipeline"] == ctx.catalog.resolve(service, version).pipeline
    # billing/prices.toml: the small tier (10) plus each version's surcharge
    assert credits == {
        "flux-dev": 10, "flux-2-dev": 12, "flux-2-klein-4b": 10, "flux-2-klein-9b": 11,
    }  # fmt: skip
    negative = KIND.Params.model_validate(
        {**base, "service": "flux-2-dev", "negative_prompt": "blurry"}
    )
    with pytest.raises(BadUserInput, match="takes no negative prompt") as refused:
        KIND.plan(negative, {}, ctx)
    assert refused.value.field == "negative_prompt"
