"""Security events in 1.6 and 2.0.1: kept in a local security log, queued durably (also
across a restart), told to the CSMS in each version's words, and never in the way of
transaction messages when a CSMS does not take them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from dialects import DIALECTS
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from cpagent.host import Message, RetryPolicy
from cpagent.outbox import Outbox
from cpagent.records import SECURITY_EVENT, TRANSACTION_EVENT
from cpagent.rpc import CallErrorReceived
from cpagent.store import AsyncStore, NewRecord, Store

CP = "CP-TEST"
WORDS = {"1.6": {"auth": "FailedToAuthenticateAtCentralSystem"},
         "2.0.1": {"auth": "FailedToAuthenticateAtCsms"}}


@pytest.fixture(params=["1.6", "2.0.1"])
async def peer(request) -> AsyncIterator[DevCsms]:
    async with DevCsms(subprotocols=(DIALECTS[request.param].subprotocol,),
                       basic_auth={CP: "right-password-0001"}) as csms:
        csms.version = request.param
        yield csms


async def test_events_are_logged_queued_and_told_after_the_status(peer, tmp_path):
    version = peer.version
    data = tmp_path / "agent"
    # The installer typed the password wrong: the CSMS refuses the charger (HTTP 401).
    charger = RunningAgent(make_config(data, peer.url, csms={
        "ocpp_version": version, "password": "wrong-password-0001"}), Clock("system"))
    await charger.start()
    try:
        for _ in range(300):
            if "401" in (charger.agent.transport.last_error or ""):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a few more refusals: one event, not one each
    finally:
        await charger.stop()
    log = (data / "security.log").read_text()
    assert log.count("failed_to_authenticate_at_csms") == 1
    assert (data / "security.log").stat().st_mode & 0o777 == 0o600

    charger.config = make_config(data, peer.url, csms={
        "ocpp_version": version, "password": "right-password-0001"})
    await charger.start()
    try:
        say = DIALECTS[version](peer)
        await say.wait_status("Available")
        events = []
        for _ in range(300):
            events = [r.payload for r in peer.calls("SecurityEventNotification")]
            if len(events) >= 3:
                break
            await asyncio.sleep(0.01)
        kinds = [e["type"] for e in events]
        # Queued durably across the restart; both starts; in this version's words.
        assert WORDS[version]["auth"] in kinds
        assert kinds.count("StartupOfTheDevice") + kinds.count("ResetOrReboot") == 2
        assert all(len(e["techInfo"]) <= 255 for e in events)
        # Durable: the refusal and the first start were told after the restart, in order.
        assert kinds.index(WORDS[version]["auth"]) < len(kinds) - 1
    finally:
        await charger.stop()


async def test_a_csms_without_security_events_holds_up_nothing(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    outbox = Outbox(store)
    event = await store.enqueue(NewRecord(SECURITY_EVENT, "1.6", {
        "event": "startup", "timestamp": time.time(), "tech_info": "x"}, None, time.time(),
        True, "b"))
    start = await store.enqueue(NewRecord(TRANSACTION_EVENT, "1.6", {"action": "Start"}, "t",
                                          time.time(), True, "b"))
    await outbox.open()
    sent: list[str] = []

    class Link:
        async def call(self, action, payload, *, unique_id=None, timeout=None):
            sent.append(action)
            if action == "SecurityEventNotification":
                raise CallErrorReceived("NotImplemented", "no security extension", {})
            return {}

    async def render(entry):
        return [Message("SecurityEventNotification" if entry.kind == SECURITY_EVENT
                        else "StartTransaction", {})]

    async def delivered(entry, message, answer):
        pass

    policy = RetryPolicy(attempts=lambda: 3, interval=lambda: 60.0)
    runner = asyncio.create_task(outbox.run(Link(), render, delivered, lambda e, m: "kept",
                                            policy))
    for _ in range(200):
        if not outbox.pending:
            break
        await asyncio.sleep(0.01)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await outbox.flush()
    assert sent == ["SecurityEventNotification", "StartTransaction"]  # no 60 s wait, no retry
    assert outbox.dead_letters == 0 and await store.outbox_count() == 0
    assert event.seq < start.seq
    store.close()
