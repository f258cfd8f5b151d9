"""The outbound queue on a real SQLite file, with a stand-in for the link."""

from __future__ import annotations

import asyncio
import time

from cpagent.host import Message, RetryPolicy
from cpagent.outbox import Outbox, Undeliverable, message_id
from cpagent.rpc import CallErrorReceived
from cpagent.store import AsyncStore, NewRecord, Store


class Link:
    """Answers every call at once (or as `on_call` decides) and remembers what went out."""

    def __init__(self, on_call=None) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.on_call = on_call

    async def call(self, action, payload, *, unique_id=None, timeout=None):
        self.sent.append((action, unique_id))
        if self.on_call:
            await self.on_call(action)
        return {}


async def as_is(entry):
    return [Message(entry.record["action"], {})]


async def nothing(entry, message, answer):
    pass


def keep(entry, message):
    return "kept"


POLICY = RetryPolicy(attempts=lambda: 3, interval=lambda: 0.0)


def record(action: str, trigger: str = "meter_value_periodic") -> NewRecord:
    return NewRecord("transaction_event", "1.6", {"action": action, "trigger": trigger},
                     "tx-1", time.time(), True, "boot")


async def drain(outbox: Outbox, link: Link, render=as_is, refusal=keep) -> None:
    sender = asyncio.create_task(outbox.run(link, render, nothing, refusal, POLICY))
    for _ in range(500):
        if not outbox.pending:
            break
        await asyncio.sleep(0.01)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await outbox.flush()


async def test_stops_behind_readings_the_disk_guard_dropped_mid_read_are_still_sent(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    for _ in range(100):
        await store.enqueue(record("MeterValues"))
    stops = [await store.enqueue(record("StopTransaction", "stop_authorized")) for _ in range(5)]
    outbox = Outbox(store)
    await outbox.open()

    async def guard_strikes(action: str) -> None:
        if action == "MeterValues" and await store.outbox_count() > 50:
            # What Agent.keep_within_disk_limit does while 64 entries are read ahead.
            await store.drop_oldest_meter_values(1000)
            outbox.durable_depth = await store.outbox_count()

    link = Link(guard_strikes)
    await drain(outbox, link)
    sent_stops = [uid for action, uid in link.sent if action == "StopTransaction"]
    assert sent_stops == [s.unique_id for s in stops]
    assert await store.outbox_count() == 0
    store.close()


async def test_a_new_link_does_not_resend_what_the_last_one_delivered(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    for _ in range(10):
        await store.enqueue(record("MeterValues"))
    outbox = Outbox(store)
    await outbox.open()
    first = Link()
    await drain(outbox, first)
    outbox.durable_added(await store.enqueue(record("StopTransaction", "stop_authorized")))
    second = Link()
    await drain(outbox, second)
    assert len(first.sent) == 10
    assert [a for a, _ in second.sent] == ["StopTransaction"]
    store.close()


async def test_each_delivered_record_is_deleted_before_the_next_but_one_goes(tmp_path):
    """A crash in a replay resends at most the last confirmed record and the one in flight,
    never the backlog the CSMS already confirmed."""
    store = AsyncStore(Store(tmp_path / "q.db"))
    for _ in range(20):
        await store.enqueue(record("MeterValues"))
    outbox = Outbox(store)
    await outbox.open()
    left_when_sent: list[int] = []

    async def count(action: str) -> None:
        left_when_sent.append(await store.outbox_count())

    await drain(outbox, Link(count))
    # When record n (0-based) is sent, at most records n-1 and n and what follows remain.
    assert all(left >= 20 - n - 1 and left <= 20 - n + 1
               for n, left in enumerate(left_when_sent)), left_when_sent
    store.close()


async def test_a_record_may_become_several_messages_with_stable_ids(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    entry = await store.enqueue(record("StopTransaction", "stop_authorized"))
    outbox = Outbox(store)
    await outbox.open()

    async def start_then_stop(e):
        return [Message("StartTransaction", {}, suffix="start"), Message("StopTransaction", {})]

    link = Link()
    await drain(outbox, link, render=start_then_stop)
    assert link.sent == [
        ("StartTransaction", message_id(entry, Message("StartTransaction", {}, "start"))),
        ("StopTransaction", entry.unique_id)]
    assert link.sent[0][1] != entry.unique_id and len(link.sent[0][1]) == 36
    store.close()


async def test_refused_records_become_dead_letters_and_come_back_on_request(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    start = await store.enqueue(record("StartTransaction", "authorized"))
    stop = await store.enqueue(record("StopTransaction", "stop_authorized"))
    outbox = Outbox(store)
    await outbox.open()

    async def refuse_starts(action: str) -> None:
        if action == "StartTransaction":
            raise CallErrorReceived("InternalError", "busy")

    async def undeliverable_stop(e):
        if e.record["action"] == "StopTransaction":
            raise Undeliverable("its start was refused")
        return [Message(e.record["action"], {})]

    link = Link(refuse_starts)
    await drain(outbox, link, render=undeliverable_stop)
    assert [a for a, _ in link.sent] == ["StartTransaction"] * 3
    letters = await store.dead_letters()
    assert [(e.unique_id, "refused 3 times" in reason or "its start" in reason)
            for e, reason, _ in letters] == [(start.unique_id, True), (stop.unique_id, True)]
    assert outbox.dead_letters == 2 and await store.outbox_count() == 0
    # The operator puts them back; they go in their order with their own ids.
    outbox.requeued(await store.requeue_dead_letters())
    ok = Link()
    await drain(outbox, ok)
    assert ok.sent == [("StartTransaction", start.unique_id), ("StopTransaction", stop.unique_id)]
    assert await store.dead_letter_count() == 0
    store.close()


async def test_ordered_messages_do_not_freeze_behind_a_record_being_retried(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    await store.enqueue(record("StartTransaction", "authorized"))
    outbox = Outbox(store)
    await outbox.open()
    refusals = 0

    async def refuse_once(action: str) -> None:
        nonlocal refusals
        if action == "StartTransaction" and refusals == 0:
            refusals += 1
            raise CallErrorReceived("GenericError", "call already in progress")

    slow = RetryPolicy(attempts=lambda: 3, interval=lambda: 30.0)
    link = Link(refuse_once)
    sender = asyncio.create_task(outbox.run(link, as_is, nothing, keep, slow))
    while not link.sent:
        await asyncio.sleep(0.005)
    status = outbox.put("StatusNotification", {}, urgent=False)
    await asyncio.wait_for(status, 2)  # not 30 s later, after the retried start
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    assert [a for a, _ in link.sent] == ["StartTransaction", "StatusNotification"]
    store.close()
