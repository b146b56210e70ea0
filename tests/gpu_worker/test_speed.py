"""The worker's speed settings (gpu_worker/speed.py, gpu_worker/prompt_cache.py) on the
real tiny FLUX pipeline and the real worker start-up.

There is no GPU here: FP8 is tested as what this machine does with it (the worker refuses
to start, saying why); the options that run on a CPU are tested for their effect on the
loaded modules and for the image they make against the plain pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import kinds
from billing.catalog import Catalog, ModelEntry
from gpu_worker.pipeline import PipelineRunner
from gpu_worker.prompt_cache import PromptCache
from gpu_worker.speed import SpeedOptions, SpeedUnavailable
from gpu_worker.worker import startup
from kinds.base import model_ref
from runtime.settings import Settings
from tests.conftest import ensure_tiny_model

SIZE = 64


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    ensure_tiny_model()
    catalog = Catalog.load(Settings().models)
    return next(e for e in catalog.entries if e.pipeline == "FluxPipeline")


def runner_for(entry: ModelEntry, **speed: Any) -> PipelineRunner:
    return PipelineRunner(
        Catalog(entries=(entry,)), device="cpu", dtype="float32", speed=SpeedOptions(**speed)
    )


def render(runner: PipelineRunner, entry: ModelEntry, prompt: str = "a cat", **extra: Any) -> Any:
    params = {
        "model": model_ref(entry), "prompt": prompt, "steps": 2, "seed": 7,
        "guidance": entry.guidance, "width": SIZE, "height": SIZE, **extra,
    }  # fmt: skip
    [output] = kinds.get("text_to_image").run(runner.pipelines, params, {}, lambda *_: None)
    return np.asarray(output.image, dtype=np.int16)


@pytest.fixture(scope="module")
def plain(entry: ModelEntry) -> Iterator[Any]:
    runner = runner_for(entry)
    yield render(runner, entry)
    runner.close()


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lossy and slow-to-start options are off unless asked for.
    assert SpeedOptions.from_settings(Settings(_env_file=None)) == SpeedOptions()
    for name, value in {
        "COMPILE": "regional", "FUSE_QKV": "1", "QUANTIZATION": "fp8",
        "ATTENTION_BACKEND": "_native_cudnn", "VAE_TILING": "true", "PROMPT_CACHE": "64",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"FLUXGATE_{name}", value)
    options = SpeedOptions.from_settings(Settings())
    assert options == SpeedOptions(
        compile="regional", fuse_qkv=True, quantization="fp8",
        attention_backend="_native_cudnn", vae_tiling=True, prompt_cache=64,
    )  # fmt: skip


async def test_fp8_refused_at_worker_start_up_on_cpu(settings: Settings) -> None:
    # The real start-up path: it must stop before loading any model, saying why.
    ctx: dict[str, Any] = {
        "settings": settings.model_copy(update={"quantization": "fp8", "device": "cpu"}),
        "redis": None,
    }
    with pytest.raises(SpeedUnavailable) as refused:
        await startup(ctx)
    assert str(refused.value) == (
        "FLUXGATE_QUANTIZATION=fp8 cannot run here: FP8 needs a CUDA GPU; this worker runs on cpu"
    )
    assert "runner" not in ctx and "state" not in ctx


def test_unknown_attention_backend_refused(entry: ModelEntry) -> None:
    with pytest.raises(SpeedUnavailable, match="'nope' is not a diffusers attention backend"):
        runner_for(entry, attention_backend="nope")


def test_lossless_options_applied_and_image_unchanged(entry: ModelEntry, plain: Any) -> None:
    runner = runner_for(
        entry, fuse_qkv=True, attention_backend="_native_math", vae_channels_last=True
    )
    try:
        image = render(runner, entry)
        pipe = runner.pipelines.get(model_ref(entry))
    finally:
        runner.close()
    attentions = [m for m in pipe.transformer.modules() if hasattr(m, "fused_projections")]
    assert attentions and all(m.fused_projections for m in attentions)
    backends = {m.processor._attention_backend for m in attentions}
    assert {str(getattr(b, "value", b)) for b in backends} == {"_native_math"}
    conv = pipe.vae.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    # Exact up to float rounding: at most one grey level apart.
    assert image.shape == plain.shape
    assert int(np.abs(image - plain).max()) <= 1


def test_vae_tiling_decodes_in_tiles(entry: ModelEntry) -> None:
    runner = runner_for(entry, vae_tiling=True)
    try:
        image = render(runner, entry, width=256, height=256)
        vae = runner.pipelines.get(model_ref(entry)).vae
    finally:
        runner.close()
    # The tiny VAE's tiles are 64 px (its sample_size): 256 px is decoded in tiles.
    assert vae.use_tiling and vae.tile_sample_min_size < 256
    assert image.shape == (256, 256, 3)


def test_prompt_cache_encodes_a_repeated_prompt_once(entry: ModelEntry, plain: Any) -> None:
    runner = runner_for(entry, prompt_cache=2)
    try:
        cache = runner.speed.prompt_cache
        assert isinstance(cache, PromptCache)
        first = render(runner, entry)
        assert (cache.hits, cache.misses) == (0, 1)
        again = render(runner, entry)
        assert (cache.hits, cache.misses) == (1, 1)
        # The cached embeddings make the same image as encoding afresh.
        assert np.array_equal(again, first)
        assert int(np.abs(first - plain).max()) <= 1

        # The key holds the prompt and max_sequence_length; the LRU keeps 2 entries.
        render(runner, entry, model={**model_ref(entry), "max_sequence_length": 32})
        assert (cache.hits, cache.misses) == (1, 2)
        render(runner, entry, prompt="a dog")
        assert (cache.hits, cache.misses, len(cache)) == (1, 3, 2)
        render(runner, entry)  # "a cat" at 64 tokens was the least recently used: evicted
        assert (cache.hits, cache.misses) == (1, 4)

        # A pipeline made from the loaded one (img2img) shares the cache.
        img2img = runner.pipelines.get(model_ref(entry), "FluxImg2ImgPipeline")
        assert getattr(img2img.encode_prompt, "__prompt_cache__", None) is cache
    finally:
        runner.close()


# Importing inductor runs a deprecated torch.jit decorator of torch's own (torch/utils/mkldnn.py).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_regional_compile_of_the_tiny_transformer(entry: ModelEntry, plain: Any) -> None:
    # torch.compile runs on a CPU (inductor's C++ backend): slow, so one small run.
    torch._dynamo.reset()
    runner = runner_for(entry, compile="regional")
    try:
        image = render(runner, entry)
        transformer = runner.pipelines.get(model_ref(entry)).transformer
    finally:
        runner.close()
        torch._dynamo.reset()
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert transformer._compiled_call_impl is None  # only the repeated blocks
    assert int(np.abs(image - plain).max()) <= 2
