"""The outbound queue on a real SQLite file, with a stand-in for the link."""

from __future__ import annotations

import asyncio
import time

from cpagent.outbox import Outbox, RetryPolicy
from cpagent.store import AsyncStore, QueuedMessage, Store


class Link:
    """Answers every call at once and remembers what went out."""

    def __init__(self, on_call=None) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.on_call = on_call

    async def call(self, action, payload, *, unique_id=None, validated=False, timeout=None):
        self.sent.append((action, unique_id))
        if self.on_call:
            await self.on_call(action)
        return {}


async def ready(payload_entry):
    return dict(payload_entry.payload)


async def nothing(entry, answer):
    pass


POLICY = RetryPolicy(attempts=lambda: 3, interval=lambda: 0.0)


def message(action: str) -> QueuedMessage:
    return QueuedMessage(action, {"n": 1}, None, time.time(), True, "boot")


async def test_stops_behind_readings_the_disk_guard_dropped_mid_read_are_still_sent(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    for _ in range(100):
        store.store.enqueue(message("MeterValues"))
    stops = [store.store.enqueue(message("StopTransaction")) for _ in range(5)]
    outbox = Outbox(store)
    await outbox.open()

    async def guard_strikes(action: str) -> None:
        if action == "MeterValues" and store.store.outbox_count() > 50:
            # What Agent.keep_within_disk_limit does while 64 entries are read ahead.
            await store.run(store.store.drop_oldest_meter_values, 1000)
            outbox.durable_depth = await store.run(store.store.outbox_count)

    link = Link(guard_strikes)
    sender = asyncio.create_task(outbox.run(link, ready, nothing, POLICY))
    for _ in range(200):
        if not outbox.pending:
            break
        await asyncio.sleep(0.01)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await outbox.flush()
    sent_stops = [uid for action, uid in link.sent if action == "StopTransaction"]
    assert sent_stops == [s.unique_id for s in stops]
    assert store.store.outbox_count() == 0
    store.close()


async def test_a_new_link_does_not_resend_what_the_last_one_delivered(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    for _ in range(10):
        store.store.enqueue(message("MeterValues"))
    outbox = Outbox(store)
    await outbox.open()
    first = Link()
    sender = asyncio.create_task(outbox.run(first, ready, nothing, POLICY))
    while outbox.pending:
        await asyncio.sleep(0.005)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    store.store.enqueue(message("StopTransaction"))
    outbox.durable_added(store.store.outbox_after(0, 100)[-1])
    second = Link()
    sender = asyncio.create_task(outbox.run(second, ready, nothing, POLICY))
    while outbox.pending:
        await asyncio.sleep(0.005)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    assert len(first.sent) == 10
    assert [a for a, _ in second.sent] == ["StopTransaction"]
    store.close()
