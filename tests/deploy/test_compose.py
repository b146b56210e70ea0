"""deploy/compose.yaml, rendered by Debian's `docker-compose config` (no Docker daemon
needed): it validates against the compose schema, and what it runs agrees with the CLI,
the settings and the model registry."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    COMPOSE_VARIABLES,
    DEPLOY,
    EXAMPLE_REGISTRY,
    check_cli,
    example_pools,
    fluxgate_words,
    setting_names,
    unknown_env,
)

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose.env.example"


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip(
            "docker-compose is not installed: apt-get install docker-compose "
            "(deploy/setup.sh does it for `make test`, or with FLUXGATE_SETUP_DEPLOY=1)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXGATE_", "COMPOSE_"))}
    env["FLUXGATE_ENV_FILE"] = ENV_EXAMPLE.name
    done = subprocess.run(
        [docker_compose, "--project-directory", str(DEPLOY), "-f", str(COMPOSE), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def fluxgate_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = config["services"]
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("fluxgate")}


def test_services(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "webhook-worker"} <= set(
        services
    )
    assert len([n for n in services if n.startswith("api-")]) == 2
    assert services["migrate"]["command"] == ["db", "upgrade"]
    # Everything that serves waits for the migrations and the bucket.
    for name, service in fluxgate_services(rendered).items():
        if name == "migrate":
            continue
        after = service["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["minio-init"]["condition"] == "service_completed_successfully", name


def test_every_server_reads_the_registry(rendered: dict[str, Any]) -> None:
    for name, service in fluxgate_services(rendered).items():
        if name == "migrate":
            continue
        path = service["environment"]["FLUXGATE_MODELS"]
        assert f"{EXAMPLE_REGISTRY}:{path}:ro" in service["volumes"], name


def test_commands_are_fluxgate_commands(rendered: dict[str, Any]) -> None:
    for service in fluxgate_services(rendered).values():
        check_cli(service["command"])


def test_one_gpu_worker_per_pool(rendered: dict[str, Any]) -> None:
    workers = {
        name: service
        for name, service in fluxgate_services(rendered).items()
        if service["command"][0] == "worker"
    }
    pools = {}
    for name, service in workers.items():
        command = service["command"]
        assert command.count("--pool") == 1, name
        pools[command[command.index("--pool") + 1]] = service
    assert set(pools) == example_pools()
    for pool, service in pools.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], pool
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {"/models", "/etc/fluxgate/models.toml"} <= mounts, pool


def test_environment_names_are_settings(rendered: dict[str, Any]) -> None:
    for name, service in rendered["services"].items():
        assert not unknown_env(service.get("environment", {})), name
    # Commented-out settings in the example and the file's own variables, too.
    for text in (ENV_EXAMPLE.read_text(), COMPOSE.read_text()):
        assert not fluxgate_words(text) - setting_names() - COMPOSE_VARIABLES


def test_settings_load_from_the_example(rendered: dict[str, Any]) -> None:
    """The example's settings are valid (production refuses only the placeholder secret,
    which the example replaces with a change-me value)."""
    from runtime.settings import Settings

    environment = rendered["services"]["api-1"]["environment"]
    fields = {
        k.removeprefix("FLUXGATE_").lower(): v
        for k, v in environment.items()
        if k.startswith("FLUXGATE_")
    }
    settings = Settings.model_validate(fields)
    assert settings.storage_location.scheme == "s3"
    assert settings.storage_location.bucket == environment["MINIO_BUCKET"]
