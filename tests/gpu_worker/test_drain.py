"""A stopping worker drains (issue 11, graceful lifecycle): on SIGTERM it takes no more
jobs and lets the job in flight finish, for up to its drain time; a job still running then
is cancelled and handed back (left in the queue for another worker); a second signal
skips the wait.

A real process running the real Supervisor around a real arq worker on the test Redis; the
job is an arq function that says when it starts and finishes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, JobStatus

from runtime.settings import ROOT, Settings

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from arq.connections import RedisSettings
    from arq.worker import Worker, func
    from gpu_worker.supervisor import Supervisor

    logging.basicConfig(level=logging.INFO, stream=sys.stdout)

    async def work(ctx, seconds):
        print("job started", flush=True)
        await asyncio.sleep(seconds)  # the job's own work, not a synchronisation
        print("job finished", flush=True)
        return "done"

    async def ready(ctx):
        print("worker ready", flush=True)

    def build():
        return Worker(
            functions=[func(work, name="work")],
            redis_settings=RedisSettings.from_dsn(sys.argv[1]),
            queue_name=sys.argv[2],
            on_startup=ready,
            handle_signals=False,
            poll_delay=0.05,
        )

    asyncio.run(Supervisor(build, "draining", drain_s=float(sys.argv[3])).run())
    """
)


class Worker:
    """The process, its output read line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []

    def wait_for(self, text: str) -> None:
        assert self.proc.stdout is not None
        if any(text in line for line in self.lines):
            return
        for line in self.proc.stdout:
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in:\n{''.join(self.lines)}")

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdout is not None
        status = self.proc.wait(timeout=60)
        return status, "".join(self.lines) + self.proc.stdout.read()


@contextmanager
def worker(settings: Settings, queue: str, drain_s: float) -> Iterator[Worker]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, settings.redis_url, queue, str(drain_s)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        running = Worker(proc)
        running.wait_for("worker ready")
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def pool(settings: Settings) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(settings.redis_url))


async def test_a_stopping_worker_finishes_its_job_and_takes_no_other(settings: Settings) -> None:
    queue = f"fluxgate:drain:{uuid.uuid4().hex}"
    redis = await pool(settings)
    try:
        with worker(settings, queue, drain_s=60) as running:
            first = await redis.enqueue_job("work", 1.0, _queue_name=queue)
            assert first is not None
            running.wait_for("job started")
            os.kill(running.proc.pid, signal.SIGTERM)
            running.wait_for("finishing the jobs in flight")
            second = await redis.enqueue_job("work", 0.0, _queue_name=queue)
            assert second is not None
            status, output = running.finish()
        assert status == 0, output
        assert output.count("job started") == 1 and "job finished" in output, output
        assert await first.result(timeout=5) == "done"
        # The job that came after the signal waits for another worker.
        assert await second.status() == JobStatus.queued
    finally:
        await redis.delete(queue)
        await redis.aclose()


async def test_a_job_longer_than_the_drain_is_handed_back(settings: Settings) -> None:
    queue = f"fluxgate:drain:{uuid.uuid4().hex}"
    redis = await pool(settings)
    try:
        with worker(settings, queue, drain_s=0.2) as running:
            job = await redis.enqueue_job("work", 3600.0, _queue_name=queue)
            assert job is not None
            running.wait_for("job started")
            os.kill(running.proc.pid, signal.SIGTERM)
            status, output = running.finish()
        assert status == 0, output
        assert "job finished" not in output
        assert "1 job(s) still running after 0.2s: handed back" in output, output
        # Still in the queue: another worker runs it (arq retries a cancelled job).
        assert await Job(job.job_id, redis, _queue_name=queue).status() in (
            JobStatus.queued,
            JobStatus.in_progress,
        )
        assert await redis.zscore(queue, job.job_id) is not None
    finally:
        await redis.delete(queue)
        await redis.aclose()


async def test_a_second_signal_skips_the_drain(settings: Settings) -> None:
    queue = f"fluxgate:drain:{uuid.uuid4().hex}"
    redis = await pool(settings)
    try:
        with worker(settings, queue, drain_s=3600) as running:
            job = await redis.enqueue_job("work", 3600.0, _queue_name=queue)
            assert job is not None
            running.wait_for("job started")
            os.kill(running.proc.pid, signal.SIGTERM)
            running.wait_for("finishing the jobs in flight")
            os.kill(running.proc.pid, signal.SIGTERM)  # Ctrl-C twice: now
            status, output = await asyncio.to_thread(running.finish)
        assert status == 0, output
        assert "job finished" not in output
        assert await redis.zscore(queue, job.job_id) is not None  # handed back
    finally:
        await redis.delete(queue)
        await redis.aclose()
