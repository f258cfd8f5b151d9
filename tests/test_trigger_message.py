"""OCPP 1.6 Remote Trigger profile: TriggerMessage against the dev CSMS.

The CSMS validates every frame with the `ocpp` package's schemas; the charger answers first and
sends what was asked for after its answer (1.6 §5.17), which each test checks on the wire.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from harness import booted

import cpagent.devcsms
from cpagent.clock import Clock
from cpagent.devcsms import CP_TO_CSMS, DevCsms, Record

CP = "CP-TEST"
TWO = {"connectors": 2}


def answer_to(csms: DevCsms, action: str, after: int = 0, *, by_csms: bool = False) -> Record:
    """The charger's (only) answer to the CSMS's `action` since `after`, or the CSMS's to the
    charger's."""
    [record] = [r for r in csms.records[after:] if (r.direction == CP_TO_CSMS) != by_csms
                and r.kind == "result" and r.action == action]
    return record


def position(csms: DevCsms, record: Record) -> int:
    return next(i for i, r in enumerate(csms.records) if r is record)


def calls_since(csms: DevCsms, action: str, after: int) -> list[Record]:
    return [r for r in csms.calls(action) if position(csms, r) >= after]


async def trigger(csms: DevCsms, requested: str, connector_id: int | None = None) -> str:
    payload: dict = {"requestedMessage": requested}
    if connector_id is not None:
        payload["connectorId"] = connector_id
    return (await csms.call(CP, "TriggerMessage", payload))["status"]


async def quiet(seconds: float = 0.3) -> None:
    """Long enough for anything triggered to have gone out (it follows after 0.05 s)."""
    await asyncio.sleep(seconds)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def contexts(meter_values: Record) -> set[str]:
    return {v["context"] for mv in meter_values.payload["meterValue"]
            for v in mv["sampledValue"]}


async def start_session(cp, csms: DevCsms, connector: int = 1) -> int:
    """Plug and swipe; the transactionId the CSMS gave, once the connector charges."""
    mark = csms.mark()
    cp.mock.plug(connector)
    cp.mock.swipe("CARD1", connector)
    await csms.wait_for_call("StatusNotification", after=mark, predicate=lambda p: (
        p["connectorId"] == connector and p["status"] == "Charging"))
    return answer_to(csms, "StartTransaction", mark, by_csms=True).payload["transactionId"]


# ---- each message, after the answer -----------------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [
    ("BootNotification", None),
    ("DiagnosticsStatusNotification", {"status": "Idle"}),
    ("FirmwareStatusNotification", {"status": "Idle"}),
    ("Heartbeat", {}),
    ("MeterValues", None),
    ("StatusNotification", None),
])
async def test_the_requested_message_follows_the_accepted_answer(csms, start_agent, requested,
                                                                 expected):
    await start_agent()
    await booted(csms)
    mark = csms.mark()
    assert await trigger(csms, requested) == "Accepted"
    sent = await csms.wait_for_call(requested, after=mark)
    assert position(csms, answer_to(csms, "TriggerMessage", mark)) < position(csms, sent)
    if expected is not None:
        assert sent.payload == expected
    await quiet()
    assert len(calls_since(csms, requested, mark)) == (2 if requested == "StatusNotification"
                                                       else 1)  # station and connector 1


async def test_the_supported_profiles_name_remote_trigger(csms, start_agent):
    await start_agent()
    await booted(csms)
    answer = await csms.call(CP, "GetConfiguration", {"key": ["SupportedFeatureProfiles"]})
    profiles = answer["configurationKey"][0]["value"].split(",")
    assert "RemoteTrigger" in profiles


# ---- StatusNotification ------------------------------------------------------------------------


async def test_status_notification_of_one_connector_is_sent_again_unchanged(csms, start_agent):
    await start_agent(station=TWO)
    await booted(csms, connectors=2)
    for connector_id in (2, 0):
        mark = csms.mark()
        assert await trigger(csms, "StatusNotification", connector_id) == "Accepted"
        sent = await csms.wait_for_call("StatusNotification", after=mark)
        assert (sent.payload["connectorId"], sent.payload["status"],
                sent.payload["errorCode"]) == (connector_id, "Available", "NoError")
        await quiet()
        assert [r.payload["connectorId"] for r in calls_since(csms, "StatusNotification",
                                                               mark)] == [connector_id]


async def test_status_notification_without_connector_covers_the_station_and_each_connector(
        csms, start_agent):
    cp = await start_agent(station=TWO)
    await booted(csms, connectors=2)
    cp.mock.plug(2)
    await csms.wait_for_call("StatusNotification", predicate=lambda p: (
        p["connectorId"] == 2 and p["status"] == "Preparing"))
    mark = csms.mark()
    assert await trigger(csms, "StatusNotification") == "Accepted"
    await csms.wait_for_call("StatusNotification", after=mark,
                             predicate=lambda p: p["connectorId"] == 2)
    await quiet()
    said = [(r.payload["connectorId"], r.payload["status"])
            for r in calls_since(csms, "StatusNotification", mark)]
    assert said == [(0, "Available"), (1, "Available"), (2, "Preparing")]


# ---- MeterValues -------------------------------------------------------------------------------


async def test_meter_values_of_one_connector_and_of_all(csms, start_agent):
    await start_agent(station=TWO)
    await booted(csms, connectors=2)
    mark = csms.mark()
    assert await trigger(csms, "MeterValues", 2) == "Accepted"
    sent = await csms.wait_for_call("MeterValues", after=mark)
    assert sent.payload["connectorId"] == 2 and "transactionId" not in sent.payload
    assert contexts(sent) == {"Trigger"}
    await quiet()
    assert len(calls_since(csms, "MeterValues", mark)) == 1
    mark = csms.mark()
    assert await trigger(csms, "MeterValues") == "Accepted"
    await csms.wait_for_call("MeterValues", after=mark, predicate=lambda p: (
        p["connectorId"] == 2))
    await quiet()
    sent_now = calls_since(csms, "MeterValues", mark)
    assert sorted(r.payload["connectorId"] for r in sent_now) == [1, 2]
    assert all(contexts(r) == {"Trigger"} for r in sent_now)


async def test_meter_values_during_a_transaction_carry_its_transaction_id(csms, start_agent):
    cp = await start_agent(station=TWO)
    await booted(csms, connectors=2)
    transaction_id = await start_session(cp, csms, connector=1)
    mark = csms.mark()
    assert await trigger(csms, "MeterValues", 1) == "Accepted"
    sent = await csms.wait_for_call("MeterValues", after=mark)
    assert position(csms, answer_to(csms, "TriggerMessage", mark)) < position(csms, sent)
    assert (sent.payload["connectorId"], sent.payload["transactionId"]) == (1, transaction_id)
    assert contexts(sent) == {"Trigger"}
    # All connectors: the one charging with its transaction, the idle one without.
    mark = csms.mark()
    assert await trigger(csms, "MeterValues") == "Accepted"
    await until(lambda: len(calls_since(csms, "MeterValues", mark)) == 2)
    by_connector = {r.payload["connectorId"]: r.payload for r in
                    calls_since(csms, "MeterValues", mark)}
    assert by_connector[1]["transactionId"] == transaction_id
    assert "transactionId" not in by_connector[2]


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "connector_id"), [
    ("StatusNotification", 3),
    ("MeterValues", 3),
    ("MeterValues", 0),  # the main meter: this station has none
    ("Heartbeat", -1),
])
async def test_rejected_for_a_connector_the_station_does_not_have(csms, start_agent, requested,
                                                                  connector_id):
    await start_agent(station=TWO)
    await booted(csms, connectors=2)
    mark = csms.mark()
    assert await trigger(csms, requested, connector_id) == "Rejected"
    await quiet()
    assert calls_since(csms, requested, mark) == []


async def test_a_message_the_schema_does_not_know_is_refused_and_the_link_survives(
        csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    # 1.6's schema enumerates the requestable messages: LogStatusNotification (2.0.1's) is
    # refused before any handler sees it, so NotImplemented cannot occur on the wire.
    await csms.send_raw(CP, json.dumps(
        [2, "trigger-1", "TriggerMessage", {"requestedMessage": "LogStatusNotification"}]))
    await until(lambda: any(r.unique_id == "trigger-1" and r.direction == CP_TO_CSMS
                            for r in csms.records[mark:]))
    [refusal] = [r for r in csms.records[mark:] if r.unique_id == "trigger-1"
                 and r.direction == CP_TO_CSMS]
    assert refusal.kind == "error"
    assert refusal.payload["errorCode"] in ("PropertyConstraintViolation", "FormationViolation")
    mark = csms.mark()
    assert await trigger(csms, "Heartbeat") == "Accepted"
    await csms.wait_for_call("Heartbeat", after=mark)
    assert csms.is_connected(CP) and cp.agent.transport.connect_count == 1


async def test_extended_trigger_message_keeps_its_answers(csms, start_agent):
    await start_agent()
    await booted(csms)
    mark = csms.mark()
    assert await csms.call(CP, "ExtendedTriggerMessage", {"requestedMessage": "Heartbeat"}) \
        == {"status": "Accepted"}
    sent = await csms.wait_for_call("Heartbeat", after=mark)
    assert position(csms, answer_to(csms, "ExtendedTriggerMessage", mark)) < position(csms,
                                                                                        sent)
    assert await csms.call(CP, "ExtendedTriggerMessage", {
        "requestedMessage": "StatusNotification"}) == {"status": "NotImplemented"}


# ---- Heartbeat and the clock -------------------------------------------------------------------


async def test_the_triggered_heartbeat_sets_the_clock(csms, start_agent, monkeypatch):
    cp = await start_agent(clock=Clock("csms"))
    await booted(csms)
    assert abs(cp.agent.clock.now() - time.time()) < 2  # the boot's currentTime

    def ahead() -> str:  # the CSMS's time two minutes ahead of ours
        moment = time.time() + 120
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))

    monkeypatch.setattr(cpagent.devcsms, "utc_timestamp", ahead)
    mark = csms.mark()
    assert await trigger(csms, "Heartbeat") == "Accepted"
    await csms.wait_for_call("Heartbeat", after=mark)
    await until(lambda: abs(cp.agent.clock.now() - time.time() - 120) < 2)


# ---- BootNotification --------------------------------------------------------------------------


async def test_the_triggered_boot_answer_is_honoured(csms, start_agent):
    await start_agent()
    await booted(csms)
    csms.heartbeat_interval = 42
    mark = csms.mark()
    assert await trigger(csms, "BootNotification") == "Accepted"
    boot = await csms.wait_for_call("BootNotification", after=mark)
    assert position(csms, answer_to(csms, "TriggerMessage", mark)) < position(csms, boot)
    assert boot.payload["chargePointVendor"] == "cpagent"
    await until(lambda: bool(answer_to_boot(csms, mark)))
    answer = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert answer["configurationKey"][0]["value"] == "42"


def answer_to_boot(csms: DevCsms, after: int) -> list[Record]:
    return [r for r in csms.records[after:] if r.direction != CP_TO_CSMS
            and r.kind == "result" and r.action == "BootNotification"]


async def test_a_triggered_boot_answered_pending_boots_again_after_the_interval(
        csms, start_agent):
    await start_agent()
    await booted(csms)
    csms.boot_status, csms.heartbeat_interval = "Pending", 1
    mark = csms.mark()
    assert await trigger(csms, "BootNotification") == "Accepted"
    first = await csms.wait_for_call("BootNotification", after=mark)
    await until(lambda: bool(answer_to_boot(csms, mark)))
    # Pending, as at boot: no remote start (1.6 §4.2.1).
    assert await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "R1"}) \
        == {"status": "Rejected"}
    csms.boot_status = "Accepted"
    second = await csms.wait_for_call("BootNotification", after=position(csms, first) + 1)
    assert second.time - first.time >= 0.95  # not before the interval the CSMS gave
    await until(lambda: len(answer_to_boot(csms, mark)) == 2)
    assert await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "R1"}) \
        == {"status": "Accepted"}


async def test_a_boot_triggered_while_pending_is_sent_at_once(csms, start_agent):
    csms.boot_status, csms.heartbeat_interval = "Pending", 60
    await start_agent()
    first = await csms.wait_for_call("BootNotification")
    await until(lambda: bool(answer_to_boot(csms, 0)))  # answered Pending
    csms.boot_status = "Accepted"
    mark = csms.mark()
    assert await trigger(csms, "BootNotification") == "Accepted"
    # The boot gate, on a new connection, sends it without waiting out the minute.
    second = await csms.wait_for_call("BootNotification", after=mark, timeout=5)
    assert second.time - first.time < 30
    assert position(csms, answer_to(csms, "TriggerMessage", mark)) < position(csms, second)
    await csms.wait_for_call("StatusNotification", after=mark,
                             predicate=lambda p: p["connectorId"] == 1)


async def test_while_pending_the_requested_status_goes_out_and_readings_wait(csms, start_agent):
    csms.boot_status, csms.heartbeat_interval = "Pending", 60
    await start_agent()
    await csms.wait_for_call("BootNotification")
    await until(lambda: bool(answer_to_boot(csms, 0)))
    mark = csms.mark()
    # 1.6 §4.2: while Pending the charge point sends only what a TriggerMessage asks for.
    assert await trigger(csms, "StatusNotification", 1) == "Accepted"
    sent = await csms.wait_for_call("StatusNotification", after=mark)
    assert sent.payload["connectorId"] == 1
    assert await trigger(csms, "Heartbeat") == "Accepted"
    await csms.wait_for_call("Heartbeat", after=mark)
    assert await trigger(csms, "MeterValues", 1) == "Rejected"
    await quiet()
    assert [r.action for r in csms.calls()[1:]] == ["StatusNotification", "Heartbeat"]
