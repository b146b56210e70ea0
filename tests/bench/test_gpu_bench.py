"""bench/gpu.py runs: ``--device cpu --tiny`` goes through the same code paths as on a GPU
(meta build, ``to_empty``, random fill, the worker's speed settings, timing, the table),
so the bench cannot rot while no GPU is at hand. Its figures here are a smoke run, not a
speed measurement; the test checks that the rows are there and their numbers sane."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import ensure_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def rows(output: str) -> dict[tuple[str, str], list[str]]:
    table: dict[tuple[str, str], list[str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("model",):
            table[(cells[0], cells[1])] = cells[2:]
    return table


def test_tiny_cpu_run_prints_the_table() -> None:
    ensure_tiny_model()
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--tiny",
            "--models",
            "flux1-dev,flux2-klein-4b",
            "--variants",
            "plain,fuse_qkv,prompt_cache,fp8",
            "--size",
            "64",
            "--steps",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=True,
    )
    out = result.stdout
    assert "tiny models (a smoke run, not a speed figure)" in out
    assert "measured matmul peak:" in out
    table = rows(out)
    for model in ("flux1-dev", "flux2-klein-4b"):
        for variant in ("plain", "fuse_qkv", "prompt_cache"):
            cells = table[(model, variant)]
            per_image, step_ms, peak, per_s, compile_s, floor, db, max_abs = cells
            assert float(per_image) > 0 and float(step_ms) > 0
            assert math.isclose(float(per_s) * float(per_image), 1, rel_tol=0.01)
            assert peak == "-" and compile_s == "-"  # no CUDA memory; nothing compiled
            assert 0 < float(floor) < 1
            # Lossless options: the same pixels, or within rounding of them.
            assert db == "inf" or float(db) > 40, (model, variant, db)
            assert int(max_abs) <= 2
        [fp8] = [cells for (m, v), cells in table.items() if m == model and v.startswith("fp8")]
        assert fp8[0].startswith("skipped: SpeedUnavailable: FLUXGATE_QUANTIZATION=fp8")
        assert "FP8 needs a CUDA GPU; this worker runs on cpu" in fp8[0]


@pytest.mark.parametrize("model", ["flux1-dev", "flux2-klein-4b"])
def test_flops_formula_matches_torch_flop_counter(model: str) -> None:
    """The compute floor's FLOPs per step, against torch's count of one forward of the
    tiny transformer (built the bench's way)."""
    ensure_tiny_model()
    bench = load_bench()
    spec = bench.MODELS[model]
    config = bench._tiny_config(bench.TINY_ROOT / spec.tiny_dir, "transformer")
    generator = torch.Generator().manual_seed(0)
    transformer = bench._build_module(
        spec.components["transformer"], config, "cpu", torch.float32, generator
    )
    size, text = 128, 64
    image_tokens = (size // 16) ** 2
    inputs: dict[str, Any] = {
        "hidden_states": torch.randn(1, image_tokens, config["in_channels"]),
        "encoder_hidden_states": torch.randn(1, text, config["joint_attention_dim"]),
        "timestep": torch.tensor([0.5]),
    }
    side = size // 16
    grid = torch.stack(
        torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1
    ).reshape(-1, 2)
    axes = len(config["axes_dims_rope"])
    img_ids = torch.zeros(image_tokens, axes)
    img_ids[:, -2:] = grid
    inputs["img_ids"] = img_ids
    inputs["txt_ids"] = torch.zeros(text, axes)
    if model == "flux1-dev":
        inputs["pooled_projections"] = torch.randn(1, config["pooled_projection_dim"])
        inputs["guidance"] = torch.tensor([3.5])
    counter = FlopCounterMode(display=False)
    # The math backend: attention as two counted matmuls (the counter has no formula for
    # the CPU's fused attention kernel).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        transformer(**inputs)
    counted = counter.get_total_flops()
    formula = bench.flops_per_step(config, spec.mlp_linear_units, size, size, text)
    # The formula leaves out the per-image timestep and modulation layers: a few percent
    # of a tiny model's FLOPs, <0.01 % of a full-size one's.
    assert formula == pytest.approx(counted, rel=0.05)
    assert formula <= counted


def test_full_size_flux1_dev_is_74_tflop_per_step() -> None:
    bench = load_bench()
    spec = bench.MODELS["flux1-dev"]
    flops = bench.flops_per_step(
        spec.components["transformer"].config, spec.mlp_linear_units, 1024, 1024, 512
    )
    assert flops / 1e12 == pytest.approx(74.4, abs=0.1)
