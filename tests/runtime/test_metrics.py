"""The metrics computed rather than counted at a call site: the credits a committed unit
of work moved, read from its events, and the queue gauges read from a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from arq.constants import in_progress_key_prefix

from billing.catalog import Catalog
from billing.db import (
    Event,
    GenerationAccepted,
    GenerationCancelled,
    GenerationRequeued,
    GenerationUpdated,
)
from runtime import metrics as m
from runtime.queue import Keys, new_pool, pool_queue
from runtime.settings import ROOT, Settings

MOVEMENTS = ("reserved", "captured", "released")


def credits() -> dict[str, float]:
    registry = m.exposition("api").registry
    return {
        movement: registry.get_sample_value("fluxgate_credits_total", {"movement": movement}) or 0.0
        for movement in MOVEMENTS
    }


def moved_by(*events: Event) -> dict[str, float]:
    before = credits()
    m.count_credits(list(events))
    return {k: v - before[k] for k, v in credits().items() if v != before[k]}


def updated(job: str, status: str, cost: int = 12, **extra: Any) -> GenerationUpdated:
    return GenerationUpdated({"id": job, "status": status, "credit_cost": cost, **extra})


def test_credits_are_counted_once_per_movement_from_the_events() -> None:
    # submit: accepted and announced queued in one unit of work.
    assert moved_by(GenerationAccepted("a"), updated("a", "queued")) == {"reserved": 12}
    # The settlements: every final state, emitted once per job.
    assert moved_by(updated("a", "completed")) == {"captured": 12}
    assert moved_by(GenerationCancelled("b"), updated("b", "cancelled", 7)) == {"released": 7}
    assert moved_by(updated("c", "failed", 5)) == {"released": 5}
    # Not movements: a run starting, progress, a requeue (by the sweeper, of a job whose
    # worker died, or of one never enqueued), an announcement without its acceptance.
    assert moved_by(updated("a", "processing")) == {}
    assert moved_by(GenerationUpdated({"id": "a", "status": "processing"}, {"eta": 1})) == {}
    assert moved_by(GenerationRequeued("a"), updated("a", "queued")) == {}
    assert moved_by(GenerationAccepted("a")) == {}
    assert moved_by(updated("d", "queued")) == {}
    assert moved_by(GenerationAccepted("e"), updated("f", "queued")) == {}


async def test_queue_gauges_count_due_waiting_running_and_live(settings: Settings) -> None:
    queue = f"fluxgate:gauges:{uuid.uuid4().hex[:8]}"
    pool = new_pool(settings.redis_url, queue)
    keys = Keys(queue)
    now = time.time()
    try:
        gauges = m.QueueGauges(pool, {"default": queue})
        [depth, age, running, live] = await gauges.read()
        assert [s.value for f in (depth, age, running, live) for s in f.samples] == [0, 0, 0, 0]

        await pool.zadd(
            queue,
            {
                "generation:running": (now - 60) * 1000,  # started a minute ago
                "generation:waiting": (now - 20) * 1000,
                "generation:next": (now - 5) * 1000,
                "generation:deferred": (now + 300) * 1000,  # a retry, not due yet
            },
        )
        await pool.set(in_progress_key_prefix + "generation:running", b"1")
        await pool.zadd(keys.workers, {"fresh": now, "gone": now - 600})
        [depth, age, running, live] = await gauges.read()
        assert depth.samples[0].value == 2
        assert depth.samples[0].labels == {"pool": "default"}
        assert 19 <= age.samples[0].value <= 60  # the waiting one, not the running one
        assert running.samples[0].value == 1
        assert live.samples[0].value == 1
    finally:
        await pool.delete(queue, keys.workers, in_progress_key_prefix + "generation:running")
        await pool.aclose(close_connection_pool=True)


def test_every_pool_of_the_registry_and_the_default_one(settings: Settings) -> None:
    gpus = Catalog.from_dict(
        {
            "model": [
                {"provider": "flux-dev", "version": "flux-dev", "path": "dev", "pool": "big"},
                {"provider": "flux-s", "version": "flux-s", "path": "s", "pool": "small"},
            ]
        },
        base=Path("/models"),
    )
    assert m.pools(settings, gpus) == {
        "big": pool_queue(settings.queue_name, "big"),
        "default": settings.queue_name,
        "small": pool_queue(settings.queue_name, "small"),
    }


def test_known_label_values_are_exposed_at_zero_before_any_event() -> None:
    """A fresh process (nothing counted yet) already exposes each credit movement and each
    delivery outcome at 0, so dashboards and rate() have a series from the first scrape."""
    script = (
        "from runtime.metrics import exposition\n"
        "import sys\n"
        "sys.stdout.write(exposition('api').render().decode())\n"
        "sys.stdout.write(exposition('webhooks').render().decode())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != m.MULTIPROCESS_ENV}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
        cwd=ROOT, timeout=120,
    ).stdout  # fmt: skip
    for movement in ("reserved", "captured", "released"):
        assert f'fluxgate_credits_total{{movement="{movement}"}} 0.0' in out
    for outcome in ("delivered", "retrying", "failed"):
        assert f'fluxgate_webhook_deliveries_total{{outcome="{outcome}"}} 0.0' in out
