"""The import-linter contracts of pyproject.toml ([tool.importlinter]) hold: billing is
the core, runtime is shared by the API and the workers, and neither of those imports the
other. Run here too, so the suite fails where `make lint` would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtime.settings import ROOT


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
