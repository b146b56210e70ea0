"""Tests for the tiny random FLUX pipeline used by the GPU worker's tests."""

from __future__ import annotations

import pathlib
from typing import Any, cast

import diffusers
import pytest
import torch
from PIL import Image

from gpu_worker.tiny import build_tiny_flux

SIZE = 256
STEPS = 4


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_flux(directory, seed=0)
    flux: Any = diffusers.FluxPipeline  # diffusers' classmethods are untyped
    pipeline = flux.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipe: Any, prompt: str, seed: int, **kwargs: Any) -> Image.Image:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(
        prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=generator,
        **kwargs,
    )
    image = result.images[0]
    assert isinstance(image, Image.Image)
    return image


def test_build_writes_loadable_pipeline_directory(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    build_tiny_flux(tmp_path / "a", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)

    for name in (
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer_2/tokenizer.json",
        "scheduler/scheduler_config.json",
    ):
        assert (tmp_path / "a" / name).is_file(), name

    build_tiny_flux(tmp_path / "b", seed=0)
    build_tiny_flux(tmp_path / "c", seed=1)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    same_a = (tmp_path / "a" / weights).read_bytes()
    assert same_a == (tmp_path / "b" / weights).read_bytes()
    assert same_a != (tmp_path / "c" / weights).read_bytes()


def test_loads_as_flux_pipeline(pipe: Any) -> None:
    assert isinstance(pipe, diffusers.FluxPipeline)
    pipe = cast(Any, pipe)  # diffusers components are untyped attributes
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.config.in_channels == 64
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer_2.model_max_length == 512
    assert pipe.text_encoder.config.vocab_size >= len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size >= len(pipe.tokenizer_2)


def test_generates_image_of_requested_size(pipe: Any) -> None:
    image = _generate(pipe, "a photo of a cat", seed=7)
    assert image.size == (SIZE, SIZE)
    assert image.mode == "RGB"


def test_non_square_size(pipe: Any) -> None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    image = pipe(
        "a photo of a cat",
        height=128,
        width=256,
        num_inference_steps=2,
        generator=generator,
    ).images[0]
    assert image.size == (256, 128)


def test_same_seed_same_pixels_different_seed_different_pixels(pipe: Any) -> None:
    first = _generate(pipe, "a photo of a cat", seed=42).tobytes()
    second = _generate(pipe, "a photo of a cat", seed=42).tobytes()
    other = _generate(pipe, "a photo of a cat", seed=43).tobytes()
    assert first == second
    assert first != other


def test_callback_on_step_end_called_once_per_step(pipe: Any) -> None:
    steps: list[int] = []

    def on_step_end(
        _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        steps.append(step)
        return callback_kwargs

    _generate(pipe, "a photo of a cat", seed=0, callback_on_step_end=on_step_end)
    assert steps == list(range(STEPS))


def test_unicode_prompt(pipe: Any) -> None:
    image = _generate(pipe, "一只猫 🐱🚀 naïve café — Ωμέγα ✓ \x00\t\n", seed=0)
    assert image.size == (SIZE, SIZE)


def test_long_prompt_is_truncated(pipe: Any) -> None:
    prompt = ("a photo of a cat on a mat, 猫, 🐱. " * 80)[:2000]
    assert len(prompt) == 2000
    image = _generate(pipe, prompt, seed=0)
    assert image.size == (SIZE, SIZE)
