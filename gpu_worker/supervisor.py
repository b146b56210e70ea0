"""Keeps an arq worker running through Redis outages.

arq's poll loop raises when Redis is killed or restarted, and its ``Worker`` cannot be
started again. The supervisor builds a fresh ``Worker`` each time, around the same
``ctx``: whatever the startup put there that is worth keeping (the GPU worker's loaded
pipelines) survives, so a reconnect never reloads a model. Between attempts it waits with
exponential backoff and jitter (redis-py's), so a fleet of workers does not reconnect in
lockstep. SIGINT and SIGTERM stop it at any point. With a drain time, the first signal
stops it taking jobs and lets the jobs in flight finish for up to that long (a rolling
restart loses no work); what is still running then is cancelled and handed back (arq
retries it elsewhere; the ledger charges it once). A second signal stops at once.

An arq ``Worker`` takes jobs from one queue; a process serving several model pools runs a
``WorkerGroup``: one ``Worker`` per pool's queue in the same event loop, around one
``ctx`` and one Redis pool, and supervised as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from arq.worker import Worker
from redis.backoff import AbstractBackoff, EqualJitterBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# A worker that ran this long before losing Redis starts the backoff again from the base.
HEALTHY_AFTER_S = 60.0
# How long a stop (SIGTERM/SIGINT) may take before the process exits regardless.
GRACEFUL_STOP_S = 30.0
# Errors that mean "Redis (or the network to it) went away", worth a reconnect. Anything
# else (a model that does not load, a bad setting) ends the process: restarting would not
# fix it. Not OSError as a whole: a missing model file is one too.
CONNECTION_ERRORS = (RedisError, ConnectionError, TimeoutError)


def awaiting(coro: Any) -> str:
    """Where a coroutine is suspended, outermost first: the chain of what it awaits
    (``Task.print_stack`` shows only the outermost frame)."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "".join(lines)


def exit_after_teardown(status: int = 0) -> NoReturn:
    """End a worker process whose teardown is done (``Supervisor.run`` returned), without
    the interpreter's own finalization.

    Nothing is left to finalize by then: every job is settled in the database or handed
    back, the connections are closed, and the logs are flushed here. Finalization (the
    garbage collection of every module, the native libraries' exit handlers: torch's
    thread pools) can only add a stall, and one there could not be bounded: the stop's
    watchdog is a thread, and threads stop running once finalization begins."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


class WorkerGroup:
    """arq Workers of several queues run as one, sharing their ``ctx`` (whatever the
    startup loads) and their Redis pool (``ctx["redis"]``). Their startup and shutdown
    hooks run once per member and must tolerate it (the first does the work). Whatever
    ends one member (a lost Redis, a stop) ends them all.

    It has what the ``Supervisor`` and the tests use of a ``Worker``: ``async_run``,
    ``run``, ``handle_sig``, ``main_task``, ``tasks``, ``ctx``, ``on_shutdown``.
    """

    def __init__(self, members: Sequence[Worker]) -> None:
        if not members:
            raise ValueError("a worker group needs a worker")
        self.members = list(members)
        self.main_task: asyncio.Task[None] | None = None

    @property
    def ctx(self) -> dict[str, Any]:
        return self.members[0].ctx

    @property
    def on_shutdown(self) -> Any:
        return self.members[0].on_shutdown

    @property
    def tasks(self) -> dict[str, asyncio.Task[Any]]:
        return {jid: t for member in self.members for jid, t in member.tasks.items()}

    async def main(self) -> None:
        tasks = [asyncio.create_task(member.async_run()) for member in self.members]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # the first member's error (or cancellation) is the group's

    async def async_run(self) -> None:
        self.main_task = asyncio.create_task(self.main())
        await self.main_task

    def handle_sig(self, signum: signal.Signals) -> None:
        for member in self.members:
            member.handle_sig(signum)
        if self.main_task is not None:
            self.main_task.cancel()

    def run(self) -> None:
        """Run until cancelled (``main_task``), then close: what ``Worker.run`` does."""
        loop = self.members[0].loop
        self.main_task = loop.create_task(self.main())
        try:
            loop.run_until_complete(self.main_task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(self.close())

    async def close(self) -> None:
        """What ``Worker.close`` does, once for the group: the jobs in flight finish
        (cancelled already), the shutdown hook runs, the shared Redis pool closes."""
        for member in self.members:
            member.handle_sig(signal.SIGUSR1)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        ctx = self.ctx
        if self.on_shutdown is not None and "redis" in ctx:
            await self.on_shutdown(ctx)
        pool = ctx.pop("redis", None)
        if pool is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pool.aclose(close_connection_pool=True)


class Supervisor:
    """Runs ``build()``'s worker (or group of workers) until stopped, rebuilding it after
    a connection loss.

    ``build`` must return a worker made with ``handle_signals=False`` (the supervisor owns
    the signals) and the same ``ctx`` dict every time.
    """

    def __init__(
        self,
        build: Callable[[], Worker | WorkerGroup],
        name: str,
        *,
        backoff: AbstractBackoff | None = None,
        drain_s: float = 0.0,
    ) -> None:
        self.build = build
        self.name = name
        self.backoff = backoff or EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
        self.drain_s = drain_s
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._worker: Worker | WorkerGroup | None = None
        self._watchdog: threading.Timer | None = None
        self._deadline = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Stop for good: the running worker takes no more jobs, lets those in flight
        finish for up to ``drain_s``, then cancels what is left (arq retries it) and
        closes; a wait between attempts ends at once; a second signal skips the drain.
        The stop is bounded: if the teardown has not ended the process ``GRACEFUL_STOP_S``
        after it began (after the drain, if there was one; a teardown stuck on a
        connection: everything a job owns is settled in the database by then, or its lease
        lets the sweeper retry it), the process logs where it is stuck and exits anyway,
        with status 1."""
        again = self._stopping.is_set()
        self._stopping.set()
        worker = self._worker
        if worker is not None and not again and self.drain_s > 0 and worker.tasks:
            if self._drain is None:
                # Bounded by the drain's own timeout; the watchdog covers a loop too stuck
                # to run it.
                self._arm(self.drain_s + GRACEFUL_STOP_S)
                self._drain = asyncio.get_running_loop().create_task(self._drained(worker, signum))
            return
        self._arm(GRACEFUL_STOP_S)
        if worker is not None:
            worker.handle_sig(signum)

    def _arm(self, seconds: float) -> None:
        """Exit in ``seconds`` unless the process has ended, or sooner if already armed so."""
        deadline = time.monotonic() + seconds
        if self._watchdog is not None:
            if self._deadline <= deadline:
                return
            self._watchdog.cancel()
        self._deadline = deadline
        self._watchdog = threading.Timer(seconds, self._exit_now)
        self._watchdog.daemon = True  # never holds up a normal exit
        self._watchdog.start()

    async def _drained(self, worker: Worker | WorkerGroup, signum: signal.Signals) -> None:
        """Let ``worker``'s jobs in flight finish (for up to ``drain_s``), then stop it."""
        for member in worker.members if isinstance(worker, WorkerGroup) else [worker]:
            member.allow_pick_jobs = False  # arq's own switch: its poll takes no job
        log.info(
            "%s: stopping: finishing the jobs in flight (at most %ss)", self.name, self.drain_s
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_s):
                while running := [t for t in worker.tasks.values() if not t.done()]:
                    await asyncio.wait(running)
        left = sum(not t.done() for t in worker.tasks.values())
        if left:
            log.warning("%s: %d job(s) still running after %ss: handed back", self.name,
                        left, self.drain_s)  # fmt: skip
        self._arm(GRACEFUL_STOP_S)
        worker.handle_sig(signum)

    def _exit_now(self) -> None:
        """The watchdog: say where the teardown is stuck (every thread's stack, and the
        event loop's tasks), then exit."""
        stacks = io.StringIO()
        with contextlib.suppress(Exception):  # a diagnosis, best effort, never in the way
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            if self._loop is not None:
                for task in list(asyncio.all_tasks(self._loop)):
                    stacks.write(f"{task!r}\n{awaiting(task.get_coro())}")
        log.error(
            "%s: still stopping %ss after the teardown began; exiting without finishing "
            "it. Tasks pending:\n%s", self.name, GRACEFUL_STOP_S, stacks.getvalue(),
        )  # fmt: skip
        logging.shutdown()
        os._exit(1)

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        for signum in handled:
            loop.add_signal_handler(signum, self.stop, signum)
        try:
            await self._supervise(loop)
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
        # The teardown is done: a stall after this line is the interpreter's exit.
        log.info("%s: stopped", self.name)

    async def _supervise(self, loop: asyncio.AbstractEventLoop) -> None:
        failures = 0
        while not self._stopping.is_set():
            worker = self.build()
            self._worker = worker
            started = loop.time()
            try:
                await worker.async_run()
                return  # main() returns only in burst mode: done
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping.is_set() and not (task and task.cancelling()):
                    return  # stop(): arq's handle_sig cancelled the worker's main task
                raise
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    return
                failures = 1 if loop.time() - started >= HEALTHY_AFTER_S else failures + 1
                delay = self.backoff.compute(failures)
                log.warning(
                    "%s: lost Redis (%s: %s); reconnecting in %.1fs (attempt %d), "
                    "loaded models are kept",
                    self.name, type(exc).__name__, exc, delay, failures,
                )  # fmt: skip
            finally:
                await self._close(worker)
                self._worker = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self._stopping.is_set():
                self.restarts += 1
                log.info("%s: reconnecting to Redis (attempt %d)", self.name, failures)

    async def _close(self, worker: Worker | WorkerGroup) -> None:
        """What ``Worker.close`` does, minus what needs Redis, which may be gone: let the
        jobs in flight finish (they settle in the database; a stop has cancelled them
        already), run the shutdown hook, drop the connections."""
        if worker.tasks:
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        ctx: dict[str, Any] = worker.ctx
        if worker.on_shutdown is not None and "redis" in ctx:
            try:
                await worker.on_shutdown(ctx)
            except Exception:
                log.exception("%s: shutdown hook failed", self.name)
        pool = ctx.pop("redis", None)
        if pool is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pool.aclose(close_connection_pool=True)
