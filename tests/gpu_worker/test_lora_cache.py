"""The worker's LoRA adapter cache on the tiny FLUX pipeline (gpu_worker/loras.py): loaded
once, weights switched per job, disabled for a job without LoRAs on every pipeline class
sharing the transformer, the least recently used evicted past the bound."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from billing.catalog import Catalog
from gpu_worker.pipeline import LoadedPipelines
from gpu_worker.tiny import build_tiny_loras
from kinds import image_to_image, text_to_image
from kinds.base import model_ref
from kinds.lora import adapter_name
from tests.conftest import ensure_tiny_model

ROOT = Path(__file__).resolve().parents[2]
LORA_DIR = ROOT / "var" / "models" / "loras"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    ensure_tiny_model()
    build_tiny_loras(LORA_DIR)
    catalog = Catalog.load(ROOT / "deploy" / "models.dev.toml")
    return model_ref(catalog.resolve("flux-dev", None))


def lora(name: str, scale: float = 1.0) -> dict[str, Any]:
    path = str(LORA_DIR / f"{name}.safetensors")
    return {"id": name, "path": path, "scale": scale, "adapter": adapter_name(name, path)}


def t2i(
    pipelines: LoadedPipelines, model: Mapping[str, Any], loras: Sequence[Mapping[str, Any]]
) -> np.ndarray[Any, Any]:
    pipelines.use_loras(loras)
    params = {"model": model, "prompt": "a cat", "steps": 2, "seed": 5, "guidance": 3.5,
              "width": 64, "height": 64}  # fmt: skip
    [out] = text_to_image.KIND.run(pipelines, params, {}, lambda *_: None)
    return np.asarray(out.image, dtype=np.int16)


def i2i(
    pipelines: LoadedPipelines, model: Mapping[str, Any], loras: Sequence[Mapping[str, Any]]
) -> np.ndarray[Any, Any]:
    from PIL import Image

    pipelines.use_loras(loras)
    params = {"model": model, "prompt": "a cat", "steps": 2, "seed": 5, "guidance": 3.5,
              "width": 64, "height": 64, "strength": 0.9}  # fmt: skip
    image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    [out] = image_to_image.KIND.run(pipelines, params, {"image": image}, lambda *_: None)
    return np.asarray(out.image, dtype=np.int16)


def test_adapters_are_cached_switched_disabled_and_evicted(model: dict[str, Any]) -> None:
    fresh = LoadedPipelines("cpu", torch.float32)
    plain_t2i, plain_i2i = t2i(fresh, model, []), i2i(fresh, model, [])

    pipelines = LoadedPipelines("cpu", torch.float32)
    pipelines.loras.max_adapters = 2
    stats = pipelines.loras.stats
    a = t2i(pipelines, model, [lora("tiny-style-a")])
    assert stats.loads == 1 and np.abs(a - plain_t2i).mean() > 2
    # img2img shares the transformer: it sees the adapter too, loaded once.
    styled_i2i = i2i(pipelines, model, [lora("tiny-style-a")])
    assert stats.loads == 1 and stats.hits == 1
    assert np.abs(styled_i2i - plain_i2i).mean() > 1
    # A job without LoRAs on the other pipeline class: as if none was ever loaded.
    assert np.array_equal(i2i(pipelines, model, []), plain_i2i)
    assert np.array_equal(t2i(pipelines, model, []), plain_t2i)
    # Weights switched, not reloaded: a half-scale run differs, the full one comes back.
    half = t2i(pipelines, model, [lora("tiny-style-a", 0.5)])
    assert np.abs(half - a).mean() > 0.5 and stats.loads == 1
    assert np.array_equal(t2i(pipelines, model, [lora("tiny-style-a")]), a)
    # Past the bound the least recently used adapter goes; those in use stay.
    t2i(pipelines, model, [lora("tiny-style-b"), lora("tiny-style-a")])
    assert stats.loads == 2 and stats.evictions == 0
    t2i(pipelines, model, [lora("tiny-style-c")])
    assert stats.loads == 3 and stats.evictions == 1
    assert set(stats.loaded) == {lora("tiny-style-a")["adapter"], lora("tiny-style-c")["adapter"]}
    transformer = pipelines.get(model).transformer
    assert set(transformer.peft_config) == set(stats.loaded)
    # After eviction, images are still right: with a LoRA, and without any.
    assert np.array_equal(t2i(pipelines, model, [lora("tiny-style-a")]), a)
    assert np.array_equal(t2i(pipelines, model, []), plain_t2i)


def test_a_missing_weight_file_fails_the_job_clearly(model: dict[str, Any]) -> None:
    pipelines = LoadedPipelines("cpu", torch.float32)
    gone = {**lora("tiny-style-a"), "path": "/nowhere/gone.safetensors", "adapter": "lora_x"}
    with pytest.raises(FileNotFoundError, match=r"no weight file at /nowhere/gone\.safetensors"):
        t2i(pipelines, model, [gone])
    assert pipelines.loras.stats.loads == 0


def test_a_lora_that_does_not_fit_fails_its_job_and_leaves_no_trace(
    model: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    # Rank-4 factors of the wrong width (64, not the tiny transformer's 32).
    bad = tmp_path / "bad.safetensors"
    save_file({
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 64),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(64, 4),
    }, str(bad))  # fmt: skip
    fresh = LoadedPipelines("cpu", torch.float32)
    plain = t2i(fresh, model, [])
    pipelines = LoadedPipelines("cpu", torch.float32)
    a = t2i(pipelines, model, [lora("tiny-style-a")])
    broken = {"id": "bad", "path": str(bad), "scale": 1.0, "adapter": adapter_name("bad", str(bad))}
    with pytest.raises(Exception):  # noqa: B017  # diffusers/peft's own error for the shapes
        t2i(pipelines, model, [broken])
    assert broken["adapter"] not in pipelines.loras.stats.loaded
    assert np.array_equal(t2i(pipelines, model, []), plain)
    assert np.array_equal(t2i(pipelines, model, [lora("tiny-style-a")]), a)
