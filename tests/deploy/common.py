"""What the deployment tests share: the `fluxgate` CLI, the settings, the model pools and
the app's routes, which deploy/ must agree with."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer

from billing.catalog import Catalog
from runtime.settings import ROOT, Settings
from server.cli import app

DEPLOY = ROOT / "deploy"
EXAMPLE_REGISTRY = DEPLOY / "models.example.toml"

# Variables the deployment sets that are not Fluxgate settings: read by the AWS SDK
# (boto3), the Postgres and MinIO images, pip/uv/Python at build time, Hugging Face and
# prometheus-client.
EXTERNAL_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "MINIO_BUCKET",
        "PATH",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "UV_PYTHON_INSTALL_DIR",
        "UV_NO_CACHE",
        "UV_LINK_MODE",
        "HF_HUB_OFFLINE",
        "PROMETHEUS_MULTIPROC_DIR",
    }
)
# deploy/compose.yaml's own interpolation variables (docker compose reads them from the
# shell), not passed to any container.
COMPOSE_VARIABLES = frozenset(
    {"FLUXGATE_ENV_FILE", "FLUXGATE_IMAGE_PREFIX", "FLUXGATE_IMAGE_TAG", "FLUXGATE_MODELS_DIR"}
)


def setting_names() -> set[str]:
    return {f"FLUXGATE_{name.upper()}" for name in Settings.model_fields}


def unknown_env(names: Iterable[str]) -> set[str]:
    """The names that are neither a Fluxgate setting nor a known external variable: a
    misspelt setting is silently ignored by pydantic-settings, so it is caught here."""
    return set(names) - setting_names() - EXTERNAL_ENV


def fluxgate_words(text: str) -> set[str]:
    return set(re.findall(r"\bFLUXGATE_[A-Z0-9_]+", text))


def check_cli(argv: Sequence[str]) -> None:
    """``fluxgate ARGV`` names a real command and its options parse (nothing runs)."""
    # typer ships its own copy of click: groups are told apart by their `commands`.
    command: Any = typer.main.get_command(app)
    rest = list(argv)
    name = "fluxgate"
    while (subcommands := getattr(command, "commands", None)) is not None:
        assert rest, f"fluxgate {' '.join(argv)}: no command"
        name = rest.pop(0)
        assert name in subcommands, f"fluxgate {' '.join(argv)}: no command {name!r}"
        command = subcommands[name]
    # Raises click's UsageError on an unknown option or a value of the wrong type.
    command.make_context(name, rest)


def example_pools() -> set[str]:
    return set(Catalog.load(EXAMPLE_REGISTRY).pools)


def default_queue_name() -> str:
    default = Settings.model_fields["queue_name"].default
    assert isinstance(default, str)
    return default


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))
