"""``plan`` runs in the API process, which has no GPU stack: importing the kinds and
planning a job of each must not import torch or diffusers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.kinds.conftest import ROOT


def test_planning_every_kind_imports_no_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        import kinds
        from billing.catalog import Catalog
        from billing.pricing import PriceTable
        from kinds.base import ImageInfo, Limits, PlanContext

        ctx = PlanContext(Catalog.load(Path("deploy/models.dev.toml")), PriceTable.load(), Limits())
        image = ImageInfo(320, 256)
        for name, extra in [
            ("image_to_image", {}), ("edit", {}), ("inpaint", {}), ("outpaint", {"left": 64}),
        ]:
            kind = kinds.get(name)
            params = kind.parse({"prompt": "a cat", **extra})
            kind.plan(params, {"image": image, "mask": image}, ctx)
        loaded = {m.split(".")[0] for m in sys.modules}
        heavy = sorted(loaded & {"torch", "diffusers", "transformers"})
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
