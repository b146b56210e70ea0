"""Layering: ``billing`` is the core and depends on no edge, and no edge drags in the GPU
stack just by being imported."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.settings import ROOT

BILLING = ROOT / "billing"
FORBIDDEN = frozenset(
    {
        "runtime",
        "server",
        "schema",
        "gpu_worker",
        "kinds",
        "strawberry",
        "starlette",
        "uvicorn",
        "arq",
        "torch",
        "diffusers",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Every absolute module name ``source`` imports, relative imports resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    found.append((node.lineno, "<relative import beyond the top level>"))
                    continue
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
                if not target:
                    # "from ... import server" at the top level imports the names themselves
                    found.extend((node.lineno, alias.name) for alias in node.names)
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from billing import x" may name a submodule; "from . import server" too
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    return [
        f"{module}:{line} imports {name}"
        for line, name in imported_modules(source, module, is_package=is_package)
        if name.split(".")[0] in FORBIDDEN or name.startswith("<")
    ]


BILLING_FILES = sorted(BILLING.rglob("*.py"))


def test_billing_files_found() -> None:
    names = {module_name(p) for p in BILLING_FILES}
    assert {
        "billing",
        "billing.models",
        "billing.repository",
        "billing.service.ledger",
        "billing.service.generations",
        "billing.migrations.env",
        "billing.migrations.versions.0001_initial_schema",
    } <= names


@pytest.mark.parametrize("path", BILLING_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_billing_imports_no_edge(path: Path) -> None:
    found = violations(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    assert found == []


# The checker itself, so a silent checker cannot pass the test above.
@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import torch", "billing.x", False),
        ("import torch.nn as nn", "billing.x", False),
        ("import os, starlette.requests", "billing.x", False),
        ("from runtime.settings import Settings", "billing.x", False),
        ("from schema import schema", "billing.x", False),
        ("from runtime.queue import Dispatcher", "billing.service.x", False),
        ("from gpu_worker.worker import run", "billing.service.x", False),
        ("from kinds import registry", "billing.x", False),
        ("from strawberry.types import Info", "billing.x", False),
        ("from uvicorn import run", "billing.x", False),
        ("from arq.connections import ArqRedis", "billing.x", False),
        ("from diffusers import FluxPipeline", "billing.x", False),
        ("from .. import server", "billing.x", False),
        ("from ..server import app", "billing.x", False),
        ("from ...server import app", "billing.service.x", False),
        ("from ... import gpu_worker", "billing.service.x", False),
        ("from ..server import app", "billing", True),
        ("def f():\n    import torch\n", "billing.x", False),
        ("if TYPE_CHECKING:\n    from server.app import create_app\n", "billing.x", False),
        ("import importlib\nimportlib.import_module('torch')\n", "billing.x", False),
        ("__import__('arq')", "billing.x", False),
    ],
)
def test_checker_finds_forbidden_imports(source: str, module: str, is_package: bool) -> None:
    assert violations(source, module, is_package=is_package) != []


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import os\nimport sqlalchemy", "billing.x", False),
        ("from billing import keys", "billing.service.x", False),
        ("from . import ledger", "billing.service.x", False),
        ("from .. import repository as repo", "billing.service.x", False),
        ("from .models import Account", "billing", True),
        ("from billing.serverless import x", "billing.x", False),
        ("import schemathesis", "billing.x", False),
        ("from torchvision_like import x", "billing.x", False),
    ],
)
def test_checker_allows_other_imports(source: str, module: str, is_package: bool) -> None:
    assert violations(source, module, is_package=is_package) == []


def test_relative_imports_resolve() -> None:
    found = imported_modules(
        "from .. import repository\nfrom .ledger import grant\n",
        "billing.service.generations",
        is_package=False,
    )
    assert found == [
        (1, "billing"),
        (1, "billing.repository"),
        (2, "billing.service.ledger"),
        (2, "billing.service.ledger.grant"),
    ]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_edges_do_not_import_torch() -> None:
    result = _run(
        """
        import sys
        import runtime.queue
        import runtime.storage
        import server.app
        import schema
        heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
        print("loaded:", heavy)
        assert "server.app" in sys.modules and "schema" in sys.modules
        assert "torch" not in sys.modules, heavy
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout


def test_billing_loads_no_edge_at_run_time() -> None:
    """The AST check's run-time counterpart: importing every billing module (migrations
    aside, which need an Alembic context) loads none of the forbidden packages."""
    modules = [
        module_name(p)
        for p in BILLING_FILES
        if not module_name(p).startswith("billing.migrations.")
    ]
    result = _run(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        forbidden = {sorted(FORBIDDEN)!r}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
        print("loaded:", loaded)
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout
