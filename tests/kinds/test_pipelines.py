"""The pipelines the image kinds run on: the tiny FluxFill build (``gpu_worker.tiny``)
and the worker's ``LoadedPipelines``, which loads each model directory once and makes
the other pipeline classes over it with ``from_pipe``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

from billing.catalog import Catalog
from gpu_worker.pipeline import LoadedPipelines
from gpu_worker.tiny import FILL_IN_CHANNELS, build_tiny_models
from kinds.base import PlanContext, model_ref

# FLUX.1, FLUX.1-Fill, FLUX.2 [dev] and [klein] (tests/kinds/test_flux2.py runs the last two).
BUILT = ("tiny-flux", "tiny-flux-fill", "tiny-flux2", "tiny-flux2-klein")


def ref(ctx: PlanContext, service: str) -> dict[str, Any]:
    return model_ref(ctx.catalog.resolve(service, None))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    assert build_tiny_models(root) == [root / name for name in BUILT]
    assert torch.equal(torch.get_rng_state(), rng_before)
    return root


def test_build_tiny_models_builds_each_once(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == sorted(BUILT)
    assert build_tiny_models(built) == []  # all present: nothing rebuilt, no staging left
    assert sorted(p.name for p in built.iterdir()) == sorted(BUILT)


def test_tiny_fill_shapes_and_shared_components(built: Path) -> None:
    fill = built / "tiny-flux-fill"
    index = json.loads((fill / "model_index.json").read_text())
    assert index["_class_name"] == "FluxFillPipeline"
    config = json.loads((fill / "transformer" / "config.json").read_text())
    # latents 16·2·2 + masked-image latents 16·2·2 + mask 8·8·2·2
    assert (config["in_channels"], config["out_channels"]) == (384, 64) == (FILL_IN_CHANNELS, 64)
    for part in ("vae", "text_encoder", "text_encoder_2"):
        for weights in (built / "tiny-flux" / part).glob("*.safetensors"):
            assert weights.read_bytes() == (fill / part / weights.name).read_bytes(), part
    for part in ("tokenizer", "tokenizer_2", "scheduler"):
        for file in (built / "tiny-flux" / part).iterdir():
            assert file.read_bytes() == (fill / part / file.name).read_bytes(), file


def test_tiny_fill_loads_and_runs(built: Path) -> None:
    fill: Any = diffusers.FluxFillPipeline  # diffusers' classmethods are untyped
    pipe = fill.from_pretrained(
        str(built / "tiny-flux-fill"), dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    image = torch.rand(1, 3, 256, 320)
    mask = torch.zeros(1, 1, 256, 320)
    mask[..., 160:] = 1
    out = pipe(
        prompt="a cat", image=image, mask_image=mask, height=256, width=320,
        num_inference_steps=2, max_sequence_length=64,
    ).images  # fmt: skip
    assert [i.size for i in out] == [(320, 256)]


@pytest.mark.parametrize("name", ["FluxImg2ImgPipeline", "FluxKontextPipeline"])
def test_img2img_and_kontext_load_from_the_flux_directory(built: Path, name: str) -> None:
    cls: Any = getattr(diffusers, name)
    pipe = cls.from_pretrained(str(built / "tiny-flux"), dtype=torch.float32, local_files_only=True)
    assert type(pipe) is cls
    assert pipe.transformer.config.in_channels == 64


def test_loaded_pipelines_load_each_directory_once(
    ctx: PlanContext, pipelines: LoadedPipelines
) -> None:
    dev = ref(ctx, "flux-dev")
    base = pipelines.get(dev)
    assert type(base).__name__ == "FluxPipeline"
    assert pipelines.get(dev, "FluxPipeline") is base
    img2img = pipelines.get(dev, "FluxImg2ImgPipeline")
    assert type(img2img).__name__ == "FluxImg2ImgPipeline"
    assert pipelines.get(dev, "FluxImg2ImgPipeline") is img2img
    # Same directory: Kontext (the model's own class) is made over what is loaded.
    kontext = pipelines.get(ref(ctx, "flux-kontext-pro"))
    assert type(kontext).__name__ == "FluxKontextPipeline"
    for pipe in (img2img, kontext):
        assert pipe.transformer is base.transformer
        assert pipe.vae is base.vae
        assert pipe.text_encoder_2 is base.text_encoder_2
    fill = pipelines.preload(ref(ctx, "flux-fill"))
    assert type(fill).__name__ == "FluxFillPipeline"
    assert fill.transformer is not base.transformer


def test_from_pipe_keeps_the_dtype(ctx: PlanContext) -> None:
    half = LoadedPipelines(device="cpu", dtype=torch.bfloat16)
    dev = ref(ctx, "flux-dev")
    base = half.get(dev)
    img2img = half.get(dev, "FluxImg2ImgPipeline")
    assert img2img.transformer is base.transformer
    assert base.transformer.dtype == torch.bfloat16


def test_missing_directory_is_a_helpful_error(tmp_path: Path) -> None:
    catalog = Catalog.from_dict(
        {"model": [{"provider": "p", "version": "v", "path": "nowhere"}]}, base=tmp_path
    )
    pipes = LoadedPipelines(device="cpu", dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match=r"model_index.json missing.*build-tiny"):
        pipes.preload(model_ref(catalog.entries[0]))
