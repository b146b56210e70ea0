"""deploy/Dockerfile, checked without Docker (none runs here): its stages and bases, a
non-root user, COPY sources that exist and are not excluded by .dockerignore, the
`fluxgate` commands it runs, its settings, and the torch pin it shares with setup.sh."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

from runtime.settings import ROOT
from tests.deploy.common import DEPLOY, check_cli, unknown_env

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name}: no {keyword}"
        return found[-1]


def parse() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = stages[name.strip()] = Stage(image, name.strip())
        elif current is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((keyword, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_names(stage: Stage) -> set[str]:
    names = set()
    for args in stage.all("ENV"):
        names |= {part.split("=", 1)[0] for part in shlex.split(args)}
    return names


def test_stages_and_bases() -> None:
    _, stages = parse()
    assert set(stages) == {"api-build", "api", "worker-build", "worker"}
    assert stages["api"].base == stages["api-build"].base == "python:3.11-slim"
    # The GPU worker runs on NVIDIA's CUDA runtime image, pinned to a release.
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", stages["worker"].base)
    assert stages["worker-build"].base == stages["worker"].base
    # The final images carry only what the build stages made: no compilers, no sources.
    for final, build in (("api", "api-build"), ("worker", "worker-build")):
        copies = stages[final].all("COPY")
        assert copies and all(c.startswith(f"--from={build} ") for c in copies), copies


def test_final_images_run_as_a_non_root_user() -> None:
    _, stages = parse()
    for name in ("api", "worker"):
        user = stages[name].last("USER")
        assert user not in ("0", "root") and not user.startswith(("0:", "root:")), name
        # USER comes after everything that needs root.
        keywords = [kw for kw, _ in stages[name].instructions]
        assert "RUN" not in keywords[keywords.index("USER") :], name


def test_copy_sources_exist_and_are_sent_to_the_build() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    _, stages = parse()
    sources = set()
    for stage in stages.values():
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            *srcs, _dest = shlex.split(args)
            sources |= set(srcs)
    assert {"pyproject.toml", "README.md", "billing", "server", "gpu_worker"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"
    # Every package pyproject.toml installs is copied in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    assert packages <= sources


def test_entrypoints_are_fluxgate_commands() -> None:
    _, stages = parse()
    for name in ("api", "worker"):
        assert exec_form(stages[name].last("ENTRYPOINT")) == ["fluxgate"]
        check_cli(exec_form(stages[name].last("CMD")))
    assert exec_form(stages["api"].last("CMD")) == ["serve"]
    assert exec_form(stages["worker"].last("CMD")) == ["worker"]


def test_healthchecks_probe_the_exposed_ports() -> None:
    _, stages = parse()
    for name, port in (("api", "8000"), ("worker", "9100")):
        stage = stages[name]
        assert stage.last("EXPOSE") == port
        assert f"http://127.0.0.1:{port}/healthz" in stage.last("HEALTHCHECK")
    assert "FLUXGATE_PORT=8000" in stages["api"].last("ENV")
    assert "FLUXGATE_WORKER_METRICS_PORT=9100" in stages["worker"].last("ENV")


def test_environment_names_are_settings() -> None:
    _, stages = parse()
    for stage in stages.values():
        assert not unknown_env(env_names(stage)), stage.name


def test_worker_installs_the_pinned_torch_and_the_worker_extra() -> None:
    args, stages = parse()
    setup = (DEPLOY / "setup.sh").read_text()
    pinned = re.search(r"FLUXGATE_TORCH_SPEC:-torch==([\d.]+)", setup)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
    runs = " ".join(stages["worker-build"].all("RUN"))
    assert '"torch==${TORCH_VERSION}"' in runs
    assert '".[worker]"' in runs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "worker" in pyproject["project"]["optional-dependencies"]
    # The API image stays slim: no extra, so no torch.
    assert "[" not in " ".join(stages["api-build"].all("RUN"))
