"""Fixtures for the job kinds: the registry, prices and limits the API plans with, and
the tiny pipelines (built once into var/models, as deploy/models.dev.toml names them) run
through the worker's real ``LoadedPipelines`` on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from billing.catalog import Catalog
from billing.pricing import PriceTable
from gpu_worker.pipeline import LoadedPipelines
from gpu_worker.tiny import build_tiny_models
from kinds.base import ImageInfo, Limits, PlanContext

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "var" / "models"


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    build_tiny_models(MODELS)
    return MODELS


@pytest.fixture(scope="session")
def ctx(tiny_models: Path) -> PlanContext:
    return PlanContext(
        catalog=Catalog.load(ROOT / "deploy" / "models.dev.toml"),
        prices=PriceTable.load(),
        limits=Limits(),
    )


@pytest.fixture(scope="session")
def pipelines(tiny_models: Path) -> LoadedPipelines:
    return LoadedPipelines(device="cpu", dtype=torch.float32)


def picture(width: int, height: int) -> Image.Image:
    """A real RGB image with some structure (a gradient and a block), not a flat colour."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste((200, 40, 40), (width // 4, height // 4, width // 2, height // 2))
    return image


def info(image: Image.Image) -> ImageInfo:
    return ImageInfo(width=image.width, height=image.height)
