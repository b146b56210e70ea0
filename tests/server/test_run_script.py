"""`make run`'s script supervises its processes (issue 9, item 1): a worker that dies is
started again by itself, the service keeps working, and Ctrl-C (SIGINT to the process
group, as a terminal sends it) stops everything.

deploy/run.sh itself runs here, in its own session, on a database, Redis queue, port,
log folder and key file of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.settings import ROOT, Settings
from tests.conftest import TEST_DATABASE_URL, free_port, recreate_database, wait_healthy


def processes_of(queue_name: str) -> dict[int, str]:
    """pid → command line of the processes started with this queue name."""
    found: dict[int, str] = {}
    marker = f"FLUXGATE_QUEUE_NAME={queue_name}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def gpu_workers(queue_name: str) -> list[int]:
    return [
        pid
        for pid, cmd in processes_of(queue_name).items()
        if cmd.rstrip().endswith("fluxgate worker")
    ]


def wait_for(
    what: str,
    check: Callable[[], bool],
    alive: subprocess.Popen[bytes] | None,
    timeout: float = 120,
) -> None:
    """Poll ``check`` until true; fail early if ``alive`` (run.sh) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        assert alive is None or alive.poll() is None, f"run.sh exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
async def run_env(tmp_path: Path, settings: Settings) -> dict[str, str]:
    database_url = f"{TEST_DATABASE_URL}_runsh"
    await recreate_database(database_url)
    port = free_port()
    return {
        **os.environ,
        "FLUXGATE_DATABASE_URL": database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_QUEUE_NAME": f"fluxgate:runsh:{uuid.uuid4().hex[:8]}",
        "FLUXGATE_STORAGE_DIR": str(tmp_path / "storage"),
        "FLUXGATE_PORT": str(port),
        "FLUXGATE_LOG_DIR": str(tmp_path / "log"),
        "FLUXGATE_DEV_KEY_FILE": str(tmp_path / "dev-account.json"),
        "FLUXGATE_DEVICE": "cpu",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }


@pytest.fixture
def run_sh(run_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    # The terminal's output (the API's log, run.sh's own lines) goes to a file: a pipe
    # nobody reads would fill up and block the API.
    with (tmp_path / "terminal.log").open("wb") as terminal:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "deploy" / "run.sh")],
            env=run_env, cwd=ROOT, start_new_session=True,
            stdout=terminal, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_run_sh_restarts_a_dead_worker_and_stops_on_ctrl_c(
    run_sh: subprocess.Popen[bytes], run_env: dict[str, str], tmp_path: Path
) -> None:
    queue_name = run_env["FLUXGATE_QUEUE_NAME"]
    url = f"http://127.0.0.1:{run_env['FLUXGATE_PORT']}"
    wait_healthy(url, [run_sh])
    log = Path(run_env["FLUXGATE_LOG_DIR"]) / "worker.log"
    wait_for("the worker", lambda: "Starting worker" in log.read_text(errors="replace"), run_sh)
    [first] = gpu_workers(queue_name)

    os.kill(first, signal.SIGKILL)  # as the OOM killer would
    wait_for(
        "a new worker",
        lambda: (w := gpu_workers(queue_name)) != [] and w != [first]
        and log.read_text(errors="replace").count("Starting worker") >= 2,
        run_sh,
    )  # fmt: skip

    # The restarted worker serves: the development key works, a job completes.
    key = json.loads(Path(run_env["FLUXGATE_DEV_KEY_FILE"]).read_text())["api_key"]
    with httpx.Client(base_url=url, timeout=30) as client:
        accepted = client.post(
            "/v1/text_to_image",
            json={"service": "flux-dev", "prompt": "after a restart", "width": 256, "height": 256},
            headers={"X-API-Key": key},
        )
        assert accepted.status_code == 200, accepted.text
        job = accepted.json()["data"]["generateImage"]["id"]
        deadline = time.monotonic() + 120
        while True:
            polled = client.get(f"/v1/text_to_image/{job}", headers={"X-API-Key": key})
            if polled.status_code == 429:  # the dev plan's requests a minute, on a slow run
                assert time.monotonic() < deadline, polled.text
                time.sleep(float(polled.headers["Retry-After"]))
                continue
            state = polled.json()
            if state["data"]["generateImage"]["status"] == "completed":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.25)
        # One /metrics shows every process of make run: the job the worker ran included.
        exposed = client.get("/metrics")
        assert exposed.status_code == 200, exposed.text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposed.text)
            for s in family.samples
        }
        runs = [
            v
            for (name, labels), v in samples.items()
            if name == "fluxgate_job_run_seconds_count" and ("kind", "text_to_image") in labels
        ]
        assert runs and sum(runs) >= 1, sorted(n for n, _ in samples)  # fmt: skip
        assert any(name == "fluxgate_queue_depth" for name, _ in samples)

    os.killpg(run_sh.pid, signal.SIGINT)  # Ctrl-C in the terminal
    assert run_sh.wait(timeout=60) == 130
    output = (tmp_path / "terminal.log").read_text(errors="replace")
    assert "run.sh: worker exited with status 137; restarting" in output
    try:
        wait_for("every process to end", lambda: processes_of(queue_name) == {}, None, 60)
    except AssertionError:  # which one, and what it last said (a stuck worker logs its stacks)
        logs = Path(run_env["FLUXGATE_LOG_DIR"])
        tails = {p.name: p.read_text(errors="replace")[-4000:] for p in logs.glob("*.log")}
        raise AssertionError(f"still running: {processes_of(queue_name)}\n{tails}") from None
