"""Prometheus metrics: every Fluxgate metric defined here, once, and what each process
exposes of them.

One process, one view: each process counts what it does itself (the API its HTTP requests
and the credits it reserves; a GPU worker its jobs' latencies, device time and
settlements; the webhook worker its deliveries) and serves it on its own endpoint (the
API's ``/metrics``, a worker's metrics port). The gauges of shared state (queue depth,
oldest job's age, running jobs, live workers per pool) are read from Redis when the API
is scraped, so they are right whichever API process answers.

Several processes on one host can share one view instead: with ``PROMETHEUS_MULTIPROC_DIR``
set (prometheus-client's multiprocess mode, read when ``prometheus_client`` is imported)
every process writes its counts to files there and any endpoint serves the sum of them.
``fluxgate serve --workers N`` turns it on by itself, or N API processes behind one port
would each answer with a fraction of the counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Literal

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from billing.catalog import DEFAULT_POOL, Catalog
from billing.db import Dispatch, Event, GenerationAccepted, GenerationUpdated
from runtime.queue import RUNNING_SCAN, WORKER_TTL_S, Keys, pool_queues
from runtime.settings import Settings

# The classic text format (Prometheus 2 and 3, and every other scraper, read it).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

Role = Literal["api", "worker", "webhooks"]

# --- what the API counts ---------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "fluxgate_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=None,
)
HTTP_DURATION = Histogram(
    "fluxgate_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)

# --- what every process that settles or reserves counts -------------------------------

CREDITS = Counter(
    "fluxgate_credits",
    "Credits moved in the ledger by this process: reserved on acceptance, then captured "
    "(completed) or released (failed, cancelled, expired).",
    ["movement"],
    registry=None,
)

# --- what a GPU worker counts ----------------------------------------------------------

JOB_QUEUE_WAIT = Histogram(
    "fluxgate_job_queue_wait_seconds",
    "Time a job waited in the queue before a worker started it (started_at - queued_at, "
    "or created_at for its first run), by kind and model.",
    ["kind", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=None,
)
JOB_RUN = Histogram(
    "fluxgate_job_run_seconds",
    "Time from a job's start to its completion or failure (completed_at - started_at), "
    "by kind and model.",
    ["kind", "model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=None,
)
JOBS = Counter(
    "fluxgate_jobs",
    "Job runs this worker finished, by kind, model and outcome "
    "(completed, failed, stopped: cancelled or finished elsewhere).",
    ["kind", "model", "outcome"],
    registry=None,
)
GPU_SECONDS = Counter(
    "fluxgate_gpu_seconds",
    "Seconds the device spent rendering jobs (completed or not), by model.",
    ["model"],
    registry=None,
)

# --- what the webhook worker counts ----------------------------------------------------

WEBHOOK_DELIVERIES = Counter(
    "fluxgate_webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered, retrying (another attempt is "
    "scheduled), failed (given up: refused address, final status or attempts exhausted).",
    ["outcome"],
    registry=None,
)
WEBHOOK_DURATION = Histogram(
    "fluxgate_webhook_delivery_seconds",
    "Duration of one webhook delivery attempt.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=None,
)

# Label values known in advance start at 0, so a dashboard's series (and rates) exist
# before the first movement or delivery; a worker adds its models' (gpu_worker/metrics.py).
CREDIT_MOVEMENTS = ("reserved", "captured", "released")
DELIVERY_OUTCOMES = ("delivered", "retrying", "failed")
for _movement in CREDIT_MOVEMENTS:
    CREDITS.labels(_movement)
for _outcome in DELIVERY_OUTCOMES:
    WEBHOOK_DELIVERIES.labels(_outcome)

OWN: dict[Role, tuple[Collector, ...]] = {
    "api": (HTTP_REQUESTS, HTTP_DURATION, CREDITS),
    "worker": (JOB_QUEUE_WAIT, JOB_RUN, JOBS, GPU_SECONDS, CREDITS),
    "webhooks": (WEBHOOK_DELIVERIES, WEBHOOK_DURATION, CREDITS),
}


def pools(settings: Settings, catalog: Catalog) -> dict[str, str]:
    """Pool name → its arq queue: every pool the model registry names, and the default
    one always (jobs of kinds that run no model, and jobs queued before pools, wait there)."""
    return pool_queues(settings.queue_name, sorted({DEFAULT_POOL, *catalog.pools}))


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


class _Latest(Collector):
    """Yields the families last handed to it: gauges read from Redis (an async read)
    just before a synchronous ``generate_latest``, with no await in between."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class Exposition:
    """What one process serves on ``/metrics``: its own metrics (``role``), or, in
    multiprocess mode, the sum over every process sharing the directory; plus the
    families ``render`` is handed."""

    def __init__(self, role: Role) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._latest = _Latest()
        self._lock = threading.Lock()  # a worker's endpoint renders from its own threads
        if multiprocess():
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        else:
            for collector in (*OWN[role], PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.registry.register(self._latest)

    def render(self, extra: Sequence[Metric] = ()) -> bytes:
        with self._lock:
            self._latest.families = list(extra)
            try:
                return generate_latest(self.registry)
            finally:
                self._latest.families = []


@cache
def exposition(role: Role) -> Exposition:
    """The process's one exposition per role (a registry holds each collector once)."""
    return Exposition(role)


# --- credits, from the domain events ---------------------------------------------------

_SETTLED = {"completed": "captured", "failed": "released", "cancelled": "released"}


def count_credits(events: Sequence[Event]) -> None:
    """Count the credit movements of one committed unit of work from its events: every
    final state is a settlement (``_settle`` emits it, once per job: the transitions into
    a final state are conditional), and a job both accepted and announced queued in one
    transaction is a new reservation (``submit``; a requeue emits one or the other)."""
    accepted: set[str] | None = None
    for event in events:
        if not isinstance(event, GenerationUpdated) or event.live:
            continue
        snapshot = event.snapshot
        status = snapshot.get("status")
        movement = _SETTLED.get(status) if isinstance(status, str) else None
        if movement is None and status == "queued":
            if accepted is None:
                accepted = {e.generation_id for e in events if isinstance(e, GenerationAccepted)}
            if snapshot.get("id") in accepted:
                movement = "reserved"
        cost = snapshot.get("credit_cost")
        if movement is not None and isinstance(cost, int) and cost > 0:
            CREDITS.labels(movement).inc(cost)


def counting(dispatch: Dispatch) -> Dispatch:
    """``dispatch``, counting the credits each committed unit of work moved first (a
    Store's dispatch runs only after commit, so nothing rolled back is counted)."""

    async def dispatch_counted(events: Sequence[Event]) -> None:
        count_credits(events)
        await dispatch(events)

    return dispatch_counted


# --- gauges of the queues, read from Redis at scrape time ------------------------------

# Per queue: the jobs due (score = enqueue or defer-until time in ms, <= now), the running
# ones among the first ARGV[2] due (arq keeps a job in the queue while it runs; running
# jobs are at the front), the score of the oldest due job not running ('' if none), and
# the workers whose heartbeat is fresh.
_QUEUE_STATS = """
local due = redis.call('zcount', KEYS[1], '-inf', ARGV[1])
local head = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                        tonumber(ARGV[2]))
local running = 0
local oldest = ''
for i = 1, #head, 2 do
  if redis.call('exists', ARGV[3] .. head[i]) == 1 then
    running = running + 1
  elseif oldest == '' then
    oldest = head[i + 1]
    -- A score is moved by the job's priority (runtime/queue.py): its wait is measured
    -- from the enqueue time in the job record when there is one.
    local job = redis.call('get', ARGV[5] .. head[i])
    if job then
      local ok, data = pcall(cjson.decode, job)
      if ok and type(data) == 'table' and type(data['et']) == 'number' then
        oldest = data['et']
      end
    end
  end
end
local workers = redis.call('zcount', KEYS[2], ARGV[4], '+inf')
return {due, running, oldest, workers}
"""


class QueueGauges:
    """Depth, oldest waiting job's age, running jobs and live workers of each pool: one
    script call per pool, so a scrape costs a round trip per pool."""

    def __init__(self, redis: ArqRedis, pools: dict[str, str]) -> None:
        self.pools = pools
        self._script = redis.register_script(_QUEUE_STATS)

    async def read(self) -> list[Metric]:
        depth = GaugeMetricFamily(
            "fluxgate_queue_depth", "Jobs due in the pool's queue and not started.", labels=["pool"]
        )
        age = GaugeMetricFamily(
            "fluxgate_queue_oldest_job_age_seconds",
            "How long the oldest job due and not started has waited (0: none).",
            labels=["pool"],
        )
        running = GaugeMetricFamily(
            "fluxgate_jobs_running", "Jobs of the pool a worker is running.", labels=["pool"]
        )
        workers = GaugeMetricFamily(
            "fluxgate_workers_live",
            f"Workers of the pool with a heartbeat in the last {WORKER_TTL_S}s.",
            labels=["pool"],
        )
        for pool, queue_name in self.pools.items():
            now = time.time()
            due, busy, oldest, live = await self._script(
                keys=[queue_name, Keys(queue_name).workers],
                args=[
                    int(now * 1000),
                    RUNNING_SCAN,
                    in_progress_key_prefix,
                    now - WORKER_TTL_S,
                    job_key_prefix,
                ],
            )
            waited = max(0.0, now - float(oldest) / 1000) if oldest not in ("", b"") else 0.0
            depth.add_metric([pool], max(0, int(due) - int(busy)))
            age.add_metric([pool], round(waited, 3))
            running.add_metric([pool], int(busy))
            workers.add_metric([pool], int(live))
        return [depth, age, running, workers]


def redis_up(up: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "fluxgate_redis_up", "1 when this scrape read the queue gauges from Redis.", value=int(up)
    )
