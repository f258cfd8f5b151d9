"""Outages, lost answers, CSMS errors, restarts offline, the local list, a damaged database."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from harness import RunningAgent, booted, make_config

from cpagent.agent import Agent
from cpagent.clock import Clock, parse_time
from cpagent.core.model import IdToken
from cpagent.devcsms import DevCsms
from cpagent.store import NewRecord, StoreUnavailable

CP = "CP-TEST"


def transaction_ids(csms) -> list[int]:
    return [r.payload["transactionId"] for r in csms.records
            if r.kind == "result" and r.action == "StartTransaction"]


async def configure(csms, key: str, value: str) -> None:
    assert await csms.call(CP, "ChangeConfiguration", {"key": key, "value": value}) == {
        "status": "Accepted"}


async def test_offline_start_then_online_stop_carries_the_real_transaction_id(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "AllowOfflineTxForUnknownId", "true")
    await cp.go_offline()
    cp.mock.plug(1)
    cp.mock.swipe("OFFLINE1")
    await cp.settle()
    assert cp.agent.hardware.contactors[1].is_closed  # charging while offline
    assert not csms.calls("StartTransaction")
    mark = csms.mark()
    cp.agent.transport.set_network(True)
    start = await csms.wait_for_call("StartTransaction", after=mark)
    assert start.payload["idTag"] == "OFFLINE1"
    cp.mock.swipe("OFFLINE1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["transactionId"] == transaction_ids(csms)[-1]
    assert csms.records.index(start) < csms.records.index(stop)


async def test_offline_start_stop_and_restart_still_reach_the_csms_in_order(tmp_path):
    first = DevCsms()
    await first.start()
    port = int(first.url.rsplit(":", 1)[1].split("/")[0])
    config = make_config(tmp_path / "agent", first.url)
    cp = RunningAgent(config, Clock("system"))
    await cp.start()
    await booted(first)
    await first.call(CP, "ChangeConfiguration",
                     {"key": "AllowOfflineTxForUnknownId", "value": "true"})
    await first.stop()  # the CSMS is gone
    cp.mock.plug(1)
    cp.mock.swipe("NIGHT")
    await asyncio.sleep(0.3)
    cp.mock.swipe("NIGHT")
    await cp.settle()
    await cp.restart()  # a reboot while still offline
    second = DevCsms(port=port)
    await second.start()
    try:
        start = await second.wait_for_call("StartTransaction")
        stop = await second.wait_for_call("StopTransaction")
        assert second.records.index(start) < second.records.index(stop)
        assert stop.payload["transactionId"] == transaction_ids(second)[0]
        assert stop.payload["reason"] == "Local"
        assert stop.payload["meterStop"] >= start.payload["meterStart"]
        assert parse_time(stop.payload["timestamp"]) >= parse_time(start.payload["timestamp"])
    finally:
        await cp.stop()
        await second.stop()


async def test_an_answer_lost_with_the_link_is_asked_again_with_the_same_message_id(
        csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "AuthorizeRemoteTxRequests", "false")
    cp.mock.plug(1)
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Preparing")
    csms.respond = False  # the CSMS takes the next message and the link dies before it answers
    answer = await csms.call(CP, "RemoteStartTransaction", {"idTag": "REMOTE", "connectorId": 1})
    assert answer == {"status": "Accepted"}
    first = await csms.wait_for_call("StartTransaction")
    csms.respond = True
    await csms.drop(CP)
    again = await csms.wait_for_call("StartTransaction", after=csms.records.index(first) + 1)
    assert again.unique_id == first.unique_id
    assert again.payload == first.payload
    cp.mock.swipe("REMOTE")
    stop = await csms.wait_for_call("StopTransaction")
    assert stop.payload["transactionId"] == csms.transaction_ids[first.unique_id]
    assert len(csms.transaction_ids) == 1


async def test_call_errors_are_retried_per_transaction_message_attempts(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "TransactionMessageAttempts", "3")
    await configure(csms, "TransactionMessageRetryInterval", "0")
    csms.fail_calls["StartTransaction"] = 2
    cp.mock.plug(1)
    cp.mock.swipe("RETRY")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Charging")
    for _ in range(100):
        if transaction_ids(csms):
            break
        await asyncio.sleep(0.02)
    attempts = csms.calls("StartTransaction")
    assert len(attempts) == 3 and len({a.unique_id for a in attempts}) == 1
    cp.mock.swipe("RETRY")
    stop = await csms.wait_for_call("StopTransaction")
    assert stop.payload["transactionId"] == transaction_ids(csms)[0]


async def test_a_start_refused_every_time_is_given_up_and_no_stop_goes_out_with_a_made_up_id(
        csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "TransactionMessageAttempts", "2")
    await configure(csms, "TransactionMessageRetryInterval", "0")
    csms.fail_calls["StartTransaction"] = 2
    cp.mock.plug(1)
    cp.mock.swipe("DOOMED")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Charging")
    cp.mock.swipe("DOOMED")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Finishing")
    for _ in range(100):
        if not cp.agent.outbox.pending:
            break
        await asyncio.sleep(0.02)
    assert len(csms.calls("StartTransaction")) == 2
    assert csms.calls("StopTransaction") == []  # never with transactionId -1 or a guess


async def test_hours_offline_with_a_fake_clock(csms, start_agent):
    now = [time.time()]
    clock = Clock("system", wall=lambda: now[0])
    cp = await start_agent(clock=clock)
    await booted(csms)
    await configure(csms, "AllowOfflineTxForUnknownId", "true")
    await configure(csms, "MeterValueSampleInterval", "600")
    await cp.go_offline()
    cp.mock.plug(1)
    cp.mock.swipe("LONG")
    await cp.settle()
    began = now[0]
    for _ in range(6 * 3):  # three hours, ten minutes at a time
        now[0] += 600
        await cp.agent.ask(lambda core, t: core.tick(t))
    cp.mock.swipe("LONG")
    await cp.settle()
    mark = csms.mark()
    cp.agent.transport.set_network(True)
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    values = [r for r in csms.calls("MeterValues") if csms.records.index(r) > mark
              and r.payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Periodic"]
    # One sample per interval, not a flood; all before the stop, all of this transaction.
    assert 15 <= len(values) <= 19
    stamps = [parse_time(v.payload["meterValue"][0]["timestamp"]) for v in values]
    assert stamps == sorted(stamps)
    assert all(csms.records.index(v) < csms.records.index(stop) for v in values)
    assert {v.payload["transactionId"] for v in values} == {stop.payload["transactionId"]}
    assert parse_time(stop.payload["timestamp"]) - began >= 3 * 3600 - 0.001


async def test_local_list_full_and_differential_updates(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 0}
    full = {"listVersion": 5, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "GOOD", "idTagInfo": {"status": "Accepted"}},
        {"idTag": "BLOCKED1", "idTagInfo": {"status": "Blocked"}},
        {"idTag": "GONE", "idTagInfo": {"status": "Accepted"}},
    ]}
    assert await csms.call(CP, "SendLocalList", full) == {"status": "Accepted"}
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 5}
    stale = {"listVersion": 5, "updateType": "Differential", "localAuthorizationList": []}
    assert await csms.call(CP, "SendLocalList", stale) == {"status": "VersionMismatch"}
    gap = {"listVersion": 9, "updateType": "Differential", "localAuthorizationList": [
        {"idTag": "GONE"}, {"idTag": "NEW", "idTagInfo": {"status": "Accepted"}}]}
    assert await csms.call(CP, "SendLocalList", gap) == {"status": "Accepted"}
    assert sorted(t.value for t in cp.agent.core.local_list.tokens()) == [
        "BLOCKED1", "GOOD", "NEW"]
    too_many = {"listVersion": 10, "updateType": "Full", "localAuthorizationList": [
        {"idTag": f"T{n}", "idTagInfo": {"status": "Accepted"}} for n in range(1001)]}
    assert await csms.call(CP, "SendLocalList", too_many) == {"status": "Failed"}
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 9}
    # The list outlives a restart and decides offline.
    mark = csms.mark()
    await cp.restart()
    await csms.wait_for_call("StatusNotification", after=mark)  # the new link is up
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 9}
    await cp.go_offline()
    cp.mock.plug(1)
    cp.mock.swipe("BLOCKED1")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    cp.mock.swipe("NEW")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction.token.value == "NEW"
    # Cards on the list are never cached.
    assert cp.agent.core.cache.get(IdToken("NEW")) is None


async def test_a_damaged_database_is_set_aside_and_the_agent_starts_fresh(tmp_path, csms):
    data = tmp_path / "agent"
    data.mkdir()
    (data / "cpagent.db").write_bytes(b"this is not a database" * 100)
    config = make_config(data, csms.url)
    agent = Agent(config, clock=Clock("system"))
    recovery = agent.store.recovery
    assert recovery is not None
    assert recovery.moved_to.read_bytes().startswith(b"this is not")
    agent.store.close()
    cp = RunningAgent(config, Clock("system"))
    await cp.start()
    await booted(csms)
    await cp.stop()


async def test_a_foreign_sqlite_database_is_not_taken_or_moved(tmp_path, csms):
    """Another program's database is not damaged: the agent refuses it and leaves it be."""
    data = tmp_path / "agent"
    data.mkdir()
    foreign = sqlite3.connect(data / "cpagent.db")
    foreign.execute("CREATE TABLE songs (title TEXT)")
    foreign.execute("INSERT INTO songs VALUES ('one')")
    foreign.execute("PRAGMA user_version = 1")
    foreign.commit()
    foreign.close()
    with pytest.raises(StoreUnavailable, match="another program"):
        Agent(make_config(data, csms.url), clock=Clock("system"))
    assert sorted(p.name for p in data.iterdir() if not p.name.endswith(".reserve")) == [
        "cpagent.db"]
    assert sqlite3.connect(data / "cpagent.db").execute("SELECT * FROM songs").fetchall() == [
        ("one",)]


async def test_near_the_data_limit_old_meter_values_go_and_starts_and_stops_stay(
        csms, start_agent):
    cp = await start_agent(station={"max_data_mb": 8})
    await booted(csms)
    await cp.go_offline()
    agent = cp.agent
    store = agent.store

    def event(kind: str, trigger: str, samples: list | None = None) -> NewRecord:
        return NewRecord("transaction_event", "1.6", {
            "kind": kind, "trigger": trigger, "ref": "tx-1", "seq": 0, "samples": samples or []},
            "tx-1", time.time(), True, agent.boot_id)

    big = [{"timestamp": time.time(), "context": "periodic", "offered_amps": 0.0,
            "reading": {"energy_wh": 1.0, "power_w": None, "current_a": [1.0] * 200,
                        "voltage_v": None}}] * 4
    await store.enqueue(event("started", "authorized"))
    for _ in range(5000):  # ~10 MB of readings queued through a long outage
        await store.enqueue(event("updated", "meter_value_periodic", big))
    await store.enqueue(event("ended", "stop_authorized"))
    dropped = await agent.keep_within_disk_limit()
    assert dropped > 0
    assert await store.data_bytes() <= 0.9 * 8 * 1024 * 1024
    kinds = [e.record["kind"] for e in await store.outbox_after(0, 100000)]
    assert kinds[0] == "started" and kinds[-1] == "ended"
    assert kinds.count("updated") == 5000 - dropped
    assert "dropped" in cp.agent.last_error


async def test_an_energy_limit_still_holds_while_offline(csms, start_agent):
    # The CSMS invalidates the card after the start; with StopTransactionOnInvalidId false the
    # session may take MaxEnergyOnInvalidId more Wh. The link then fails: the limit is the
    # charger's to keep.
    cp = await start_agent(hardware={"meter": {"driver": "mock", "speedup": 200}})
    await booted(csms)
    await configure(csms, "StopTransactionOnInvalidId", "false")
    await configure(csms, "MaxEnergyOnInvalidId", "500")
    await configure(csms, "AuthorizeRemoteTxRequests", "false")
    csms.rejected_tags = {"STOLEN"}
    cp.mock.plug(1)
    await csms.call(CP, "RemoteStartTransaction", {"idTag": "STOLEN", "connectorId": 1})
    start = await csms.wait_for_call("StartTransaction")
    ref = cp.agent.core.evses[1].transaction.ref
    while cp.agent.adapter.wire_transaction_id(ref) is None:  # the verdict arrived
        await asyncio.sleep(0.005)
    await cp.settle()
    assert cp.agent.hardware.contactors[1].is_closed  # still within the allowance
    await cp.go_offline()
    meter = cp.mock.meter(1)
    for _ in range(100):
        await asyncio.sleep(0.05)
        await cp.settle()
        if not cp.agent.hardware.contactors[1].is_closed:
            break
    assert not cp.agent.hardware.contactors[1].is_closed
    assert cp.agent.core.evses[1].transaction is not None  # suspended, not stopped
    assert meter.energy_wh - start.payload["meterStart"] >= 500
    assert meter.energy_wh - start.payload["meterStart"] < 500 + 22_080 * 200 / 3600 * 1.5
    assert await cp.status(1) == "SuspendedEVSE"
