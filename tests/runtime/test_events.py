"""The subscriber mailbox of the event broker, and what the broker does with a message."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from billing.db import GenerationUpdated
from runtime.events import REVOKED, Broker, Mailbox
from runtime.queue import Dispatcher


def update(job: str, status: str, step: int = 0) -> dict[str, object]:
    return {"snapshot": {"id": job, "status": status, "step": step}, "live": {}}


async def test_a_full_mailbox_keeps_final_states_and_newest_updates() -> None:
    box = Mailbox(maxsize=3)
    box.put(update("a", "completed"))
    for step in range(1, 6):
        box.put(update("b", "processing", step))
    items = [await box.get() for _ in range(len(box))]
    assert [(m["snapshot"]["id"], m["snapshot"]["step"]) for m in items] == [
        ("a", 0), ("b", 4), ("b", 5),
    ]  # fmt: skip


async def test_get_waits_for_a_message() -> None:
    box = Mailbox()
    waiter = asyncio.create_task(box.get())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    box.put(update("a", "queued"))
    assert (await asyncio.wait_for(waiter, 1))["snapshot"] == {
        "id": "a",
        "status": "queued",
        "step": 0,
    }


def test_a_job_update_nobody_here_follows_is_not_decoded_but_a_revocation_is() -> None:
    """Every API process hears every job's updates; one with no subscriber to them skips
    them undecoded, and still takes in revocations (a key revoked just before a
    subscription registers must end it)."""
    broker = Broker(Redis(), "events")  # never connects: messages are handed to it
    message = Dispatcher._message(GenerationUpdated({"id": "g1", "status": "queued"}))
    assert message.startswith('{"snapshot":')
    broker._deliver(b"{not json" + message.encode())  # malformed: dropped, logged
    broker._deliver(message.encode()[:20])  # truncated, and followed by nobody: skipped
    broker._deliver(json.dumps({"revoked_key": "k1", "account_id": "a1"}).encode())
    with broker.listen(generation_id="g1", api_key_id="k1") as mailbox:
        assert mailbox.ended == REVOKED
    with broker.listen(generation_id="g1", api_key_id="k2") as mailbox:
        broker._deliver(message.encode())
        assert mailbox._items[0]["snapshot"]["id"] == "g1"
