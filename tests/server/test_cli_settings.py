"""A bad setting stops every CLI command with one plain line, not a traceback (found by
the outside review of issue 9: invalid lease timings printed a full rich traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.settings import ROOT


@pytest.mark.parametrize(
    ("env", "args", "said"),
    [
        ({"FLUXGATE_JOB_LEASE_S": "10", "FLUXGATE_JOB_HEARTBEAT_S": "5"}, ["worker"],
         "FLUXGATE_JOB_LEASE_S must be at least 3 times FLUXGATE_JOB_HEARTBEAT_S"),
        ({"FLUXGATE_PORT": "abc"}, ["serve"], "FLUXGATE_PORT: Input should be a valid integer"),
        ({"FLUXGATE_REDIS_TIMEOUT_S": "-1"}, ["db", "upgrade"], "FLUXGATE_REDIS_TIMEOUT_S"),
    ],
    ids=["lease-vs-heartbeat", "port", "redis-timeout"],
)  # fmt: skip
def test_invalid_settings_are_one_plain_line(
    env: dict[str, str], args: list[str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid settings: "), done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
