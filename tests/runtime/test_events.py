"""The subscriber mailbox of the event broker."""

from __future__ import annotations

import asyncio

from runtime.events import Mailbox


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
