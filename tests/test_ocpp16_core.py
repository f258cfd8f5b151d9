"""OCPP 1.6 Core profile, message by message, against the dev CSMS.

Every test checks two sides: what the central system saw on the wire (schema-validated by the
`ocpp` package) and what the charger really did (contactor, connector status, persisted state).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import booted

from cpagent import __version__
from cpagent.clock import Clock, parse_time
from cpagent.core.model import IdToken
from cpagent.devcsms import CP_TO_CSMS, CsmsCallError, DevCsms, Record
from cpagent.ocpp16.configuration import KEYS
from hal.interfaces import Fault

CP = "CP-TEST"

# The keys OCPP 1.6 (section 9.1) requires of every Core charge point, with their access.
REQUIRED_CORE_KEYS = {
    "AuthorizeRemoteTxRequests": False,  # R or RW: the charge point's choice; ours is RW
    "ClockAlignedDataInterval": False,
    "ConnectionTimeOut": False,
    "ConnectorPhaseRotation": False,
    "GetConfigurationMaxKeys": True,
    "HeartbeatInterval": False,
    "LocalAuthorizeOffline": False,
    "LocalPreAuthorize": False,
    "MeterValuesAlignedData": False,
    "MeterValuesSampledData": False,
    "MeterValueSampleInterval": False,
    "NumberOfConnectors": True,
    "ResetRetries": False,
    "StopTransactionOnEVSideDisconnect": False,
    "StopTransactionOnInvalidId": False,
    "StopTxnAlignedData": False,
    "StopTxnSampledData": False,
    "SupportedFeatureProfiles": True,
    "TransactionMessageAttempts": False,
    "TransactionMessageRetryInterval": False,
    "UnlockConnectorOnEVSideDisconnect": False,
}


# ---- helpers ----------------------------------------------------------------------------------


def calls_after(csms: DevCsms, action: str, after: int = 0,
                connector: int | None = None) -> list[Record]:
    return [
        r for r in csms.records[after:]
        if r.direction == CP_TO_CSMS and r.kind == "call" and r.action == action
        and (connector is None or r.payload.get("connectorId") == connector)
    ]


def statuses(csms: DevCsms, connector: int = 1, after: int = 0) -> list[str]:
    return [r.payload["status"] for r in calls_after(csms, "StatusNotification", after, connector)]


def index_of(csms: DevCsms, record: Record) -> int:
    return next(i for i, r in enumerate(csms.records) if r is record)


async def wait_status(csms: DevCsms, status: str, connector: int = 1, after: int = 0,
                      timeout: float = 5.0) -> Record:
    return await csms.wait_for_call(
        "StatusNotification", after=after, timeout=timeout,
        predicate=lambda p: p["connectorId"] == connector and p["status"] == status,
    )


async def configure(csms: DevCsms, key: str, value: str) -> None:
    answer = await csms.call(CP, "ChangeConfiguration", {"key": key, "value": value})
    assert answer == {"status": "Accepted"}, (key, value, answer)


async def get_config(csms: DevCsms, *keys: str) -> dict[str, dict]:
    answer = await csms.call(CP, "GetConfiguration", {"key": list(keys)} if keys else {})
    return {entry["key"]: entry for entry in answer["configurationKey"]}


async def until(cp: Any, predicate: Callable[[Any], Any], timeout: float = 3.0) -> None:
    """Poll the core (through its own input queue) until `predicate(core)` holds."""
    deadline = time.monotonic() + timeout
    while not await cp.agent.ask(lambda core, now: predicate(core)):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def meter_reads(cp: Any, wh: float, connector: int = 1) -> None:
    """Set the (idle) mock meter to `wh` and wait until the core has read it."""
    cp.mock.meter(connector).energy_wh = wh
    await until(cp, lambda core: core.evses[connector].reading is not None
                and core.evses[connector].reading.energy_wh == wh)


async def start_session(cp: Any, csms: DevCsms, tag: str = "CARD1",
                        connector: int = 1) -> Record:
    """Plug, present a card, wait until the CSMS sees the start and the charging status."""
    mark = csms.mark()
    cp.mock.plug(connector)
    cp.mock.swipe(tag, connector)
    start = await csms.wait_for_call("StartTransaction", after=mark,
                                     predicate=lambda p: p["connectorId"] == connector)
    # Charging is reported after StartTransaction.conf, so the transaction id is known here.
    await wait_status(csms, "Charging", connector, after=mark)
    assert cp.agent.hardware.contactors[connector].is_closed
    return start


async def raw_call(csms: DevCsms, unique_id: str, frame: str, timeout: float = 5.0) -> Record:
    """Send a frame as is; return the charger's result or error for `unique_id`."""
    mark = csms.mark()
    await csms.send_raw(CP, frame)
    deadline = time.monotonic() + timeout
    while True:
        for r in csms.records[mark:]:
            if r.direction == CP_TO_CSMS and r.kind != "call" and r.unique_id == unique_id:
                return r
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer to {unique_id}")
        await asyncio.sleep(0.01)


def measurands(meter_value: dict) -> list[tuple[str, str | None, str, str]]:
    return [(v["measurand"], v.get("phase"), v["unit"], v["value"])
            for v in meter_value["sampledValue"]]


# ---- BootNotification -------------------------------------------------------------------------


async def test_boot_notification_identity_and_accepted_interval(csms, start_agent):
    csms.heartbeat_interval = 77
    await start_agent(charge_point={"vendor": "Acme", "model": "AC-22", "serial": "SN-0042",
                                    "firmware_version": "4.5.6"})
    boot = await csms.wait_for_call("BootNotification")
    assert boot.payload == {"chargePointVendor": "Acme", "chargePointModel": "AC-22",
                            "chargePointSerialNumber": "SN-0042", "firmwareVersion": "4.5.6"}
    await booted(csms)
    # The first thing after the boot: the status of the station and of each connector (the
    # security events of the start are queued durably, and may go first).
    first = [(r.action, r.payload.get("connectorId"), r.payload.get("status"),
              r.payload.get("errorCode")) for r in csms.calls()
             if r.action != "SecurityEventNotification"][:3]
    assert first == [("BootNotification", None, None, None),
                     ("StatusNotification", 0, "Available", "NoError"),
                     ("StatusNotification", 1, "Available", "NoError")]
    config = await get_config(csms, "HeartbeatInterval")
    assert config["HeartbeatInterval"] == {"key": "HeartbeatInterval", "readonly": False,
                                           "value": "77"}


async def test_boot_pending_retries_after_interval_and_answers_configuration(csms, start_agent):
    csms.boot_status = "Pending"
    csms.heartbeat_interval = 1
    cp = await start_agent()
    first = await csms.wait_for_call("BootNotification")
    assert first.payload == {"chargePointVendor": "cpagent", "chargePointModel": "cpagent",
                             "firmwareVersion": __version__}
    cp.mock.plug(1)  # a status change while pending must not be reported yet
    await cp.settle()
    config = await get_config(csms, "NumberOfConnectors")
    assert config["NumberOfConnectors"]["value"] == "1"
    await configure(csms, "MeterValueSampleInterval", "15")
    remote = await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "R1"})
    assert remote == {"status": "Rejected"}
    assert await csms.call(CP, "RemoteStopTransaction", {"transactionId": 1}) == {
        "status": "Rejected"}
    assert [r.action for r in csms.calls()] == ["BootNotification"]
    csms.boot_status = "Accepted"
    second = await csms.wait_for_call("BootNotification", after=index_of(csms, first) + 1)
    assert second.time - first.time >= 0.95  # not before the interval the CSMS asked for
    await wait_status(csms, "Preparing")
    assert [r.action for r in csms.calls()][:2] == ["BootNotification", "BootNotification"]
    await cp.settle()
    assert calls_after(csms, "Authorize") == []
    assert calls_after(csms, "StartTransaction") == []
    assert (await get_config(csms, "MeterValueSampleInterval"))[
        "MeterValueSampleInterval"]["value"] == "15"


async def test_boot_rejected_retries_after_interval_and_sends_nothing_else(csms, start_agent):
    csms.boot_status = "Rejected"
    csms.heartbeat_interval = 1
    cp = await start_agent()
    first = await csms.wait_for_call("BootNotification")
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")  # no Authorize may go out while rejected: decided offline
    await cp.settle()
    csms.boot_status = "Accepted"
    second = await csms.wait_for_call("BootNotification", after=index_of(csms, first) + 1)
    assert second.time - first.time >= 0.95
    assert [r.action for r in csms.records[: index_of(csms, second)]] == ["BootNotification"] * 2
    await wait_status(csms, "Preparing")
    await cp.settle()
    # The unknown card was refused offline (AllowOfflineTxForUnknownId is false).
    assert calls_after(csms, "Authorize") == []
    assert calls_after(csms, "StartTransaction") == []
    assert not cp.agent.hardware.contactors[1].is_closed


# ---- Heartbeat --------------------------------------------------------------------------------


async def test_heartbeat_follows_changed_interval_on_a_quiet_link(csms, start_agent):
    await start_agent()
    await booted(csms)
    await configure(csms, "HeartbeatInterval", "1")
    changed = csms.records[-1]  # the ChangeConfiguration answer: the last exchange
    assert changed.kind == "result" and changed.action == "ChangeConfiguration"
    beat = await csms.wait_for_call("Heartbeat", after=index_of(csms, changed), timeout=3)
    assert beat.payload == {}
    assert 0.95 <= beat.time - changed.time < 1.6
    assert (await get_config(csms, "HeartbeatInterval"))["HeartbeatInterval"]["value"] == "1"


# ---- StatusNotification -----------------------------------------------------------------------


async def test_status_notification_on_each_transition(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    await start_session(cp, csms)
    paused = csms.mark()
    cp.mock.suspend(1)
    await wait_status(csms, "SuspendedEV", after=paused)
    await cp.settle()
    assert not cp.agent.hardware.contactors[1].is_closed
    assert await cp.status(1) == "SuspendedEV"
    resumed = csms.mark()
    cp.mock.resume(1)
    await wait_status(csms, "Charging", after=resumed)
    assert cp.agent.hardware.contactors[1].is_closed
    cp.mock.swipe("CARD1")
    await wait_status(csms, "Finishing", after=resumed)
    cp.mock.unplug(1)
    await wait_status(csms, "Available", after=resumed)
    seen = statuses(csms, 1, after=mark)
    # Nothing of the session is reported before the CSMS knows the session.
    start = calls_after(csms, "StartTransaction", mark)[0]
    first_busy = next(r for r in calls_after(csms, "StatusNotification", mark, 1)
                      if r.payload["status"] != "Preparing")
    assert index_of(csms, start) < index_of(csms, first_busy)
    # The car answers the PWM a moment after the contactor may close: SuspendedEV in between
    # is what IEC 61851 state B2 is, so it may or may not show, once.
    assert seen in (
        ["Preparing", "Charging", "SuspendedEV", "Charging", "Finishing", "Available"],
        ["Preparing", "SuspendedEV", "Charging", "SuspendedEV", "Charging", "Finishing",
         "Available"],
    )
    assert {r.payload["errorCode"] for r in calls_after(csms, "StatusNotification", mark)} == {
        "NoError"}


async def test_reconnect_reports_every_connector_without_a_new_boot(csms, start_agent):
    cp = await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    cp.mock.plug(1)
    await wait_status(csms, "Preparing", 1)
    mark = csms.mark()
    await csms.drop(CP)
    await csms.wait_for_call("StatusNotification", after=mark,
                             predicate=lambda p: p["connectorId"] == 2)
    reported = [(r.payload["connectorId"], r.payload["status"])
                for r in calls_after(csms, "StatusNotification", mark)]
    assert reported == [(0, "Available"), (1, "Preparing"), (2, "Available")]
    # A change while offline is not history to replay, but the state found on return.
    cp.agent.transport.set_network(False)
    await until(cp, lambda core: not core.online)
    mark = csms.mark()
    cp.mock.plug(2)
    await cp.settle()
    cp.agent.transport.set_network(True)
    await csms.wait_for_call("StatusNotification", after=mark,
                             predicate=lambda p: p["connectorId"] == 2)
    reported = [(r.payload["connectorId"], r.payload["status"])
                for r in calls_after(csms, "StatusNotification", mark)]
    assert reported == [(0, "Available"), (1, "Preparing"), (2, "Preparing")]
    assert len(csms.calls("BootNotification")) == 1
    assert cp.agent.transport.connect_count == 3


# ---- Authorize --------------------------------------------------------------------------------


async def test_authorize_accepted_card_starts_a_session(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    start = await start_session(cp, csms, "GOOD1")
    authorize = calls_after(csms, "Authorize", mark)
    assert [r.payload for r in authorize] == [{"idTag": "GOOD1"}]
    assert index_of(csms, authorize[0]) < index_of(csms, start)
    assert start.payload["idTag"] == "GOOD1"


async def test_authorize_invalid_card_before_plug_starts_nothing(csms, start_agent):
    csms.rejected_tags.add("BAD")
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    cp.mock.swipe("BAD")
    auth = await csms.wait_for_call("Authorize", after=mark)
    assert auth.payload == {"idTag": "BAD"}
    await wait_status(csms, "Available", after=mark)
    assert statuses(csms, 1, after=mark) == ["Preparing", "Available"]
    cp.mock.plug(1)
    await wait_status(csms, "Preparing", after=index_of(csms, auth))
    await cp.settle()
    assert calls_after(csms, "StartTransaction") == []
    assert not cp.agent.hardware.contactors[1].is_closed
    assert await cp.status(1) == "Preparing"


async def test_authorize_invalid_card_after_plug_starts_nothing(csms, start_agent):
    csms.rejected_tags.add("BAD")
    cp = await start_agent()
    await booted(csms)
    cp.mock.plug(1)
    await wait_status(csms, "Preparing")
    mark = csms.mark()
    cp.mock.swipe("BAD")
    await csms.wait_for_call("Authorize", after=mark)
    # The verdict lands in the authorization cache, and the pending card is dropped.
    await until(cp, lambda core: core.cache.get(IdToken("BAD")) is not None
                and core.evses[1].pending is None)
    assert cp.agent.core.cache.get(IdToken("BAD")).status.value == "invalid"
    assert calls_after(csms, "StartTransaction") == []
    assert statuses(csms, 1, after=mark) == []
    assert await cp.status(1) == "Preparing"
    assert not cp.agent.hardware.contactors[1].is_closed


# ---- StartTransaction / StopTransaction ------------------------------------------------------


async def test_meter_start_stop_in_wh_and_card_stop_carries_id_tag(csms, start_agent):
    cp = await start_agent()
    await meter_reads(cp, 1234.4)
    await booted(csms)
    start = await start_session(cp, csms)
    assert set(start.payload) == {"connectorId", "idTag", "meterStart", "timestamp"}
    assert start.payload["connectorId"] == 1
    assert start.payload["idTag"] == "CARD1"
    assert start.payload["meterStart"] == 1234
    assert abs(parse_time(start.payload["timestamp"]) - time.time()) < 5
    cp.mock.suspend(1)  # no power drawn: the meter holds still
    await until(cp, lambda core: not core.evses[1].contactor_closed)
    await meter_reads(cp, 5678.4)
    mark = csms.mark()
    cp.mock.swipe("CARD1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert set(stop.payload) == {"transactionId", "idTag", "meterStop", "timestamp", "reason"}
    assert stop.payload["transactionId"] == 1
    assert stop.payload["idTag"] == "CARD1"
    assert stop.payload["meterStop"] == 5678
    assert stop.payload["reason"] == "Local"
    await wait_status(csms, "Finishing", after=mark)
    assert not cp.agent.hardware.contactors[1].is_closed


async def test_unplug_mid_session_stops_with_ev_disconnected(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    cp.mock.unplug(1)
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "EVDisconnected"
    assert stop.payload["transactionId"] == 1
    assert "idTag" not in stop.payload
    await wait_status(csms, "Available", after=mark)
    assert statuses(csms, 1, after=mark) == ["Available"]
    assert not cp.agent.hardware.contactors[1].is_closed
    assert cp.mock.hardware.locks[1].unlock_count == 1  # UnlockConnectorOnEVSideDisconnect


async def test_stop_transaction_carries_stop_txn_sampled_data(csms, start_agent):
    cp = await start_agent()
    await meter_reads(cp, 1000.0)
    await booted(csms)
    await configure(csms, "StopTxnSampledData", "Energy.Active.Import.Register,Voltage")
    start = await start_session(cp, csms)
    mark = csms.mark()
    cp.mock.swipe("CARD1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    data = stop.payload["transactionData"]
    assert [v["sampledValue"][0]["context"] for v in data] == ["Transaction.Begin",
                                                              "Transaction.End"]
    begin, end = data
    assert measurands(begin) == [
        ("Energy.Active.Import.Register", None, "Wh", "1000"),
        ("Voltage", "L1-N", "V", "230"), ("Voltage", "L2-N", "V", "230"),
        ("Voltage", "L3-N", "V", "230"),
    ]
    assert begin["timestamp"] == start.payload["timestamp"]
    assert end["timestamp"] == stop.payload["timestamp"]
    assert [m[:3] for m in measurands(end)] == [m[:3] for m in measurands(begin)]
    assert round(float(end["sampledValue"][0]["value"])) == stop.payload["meterStop"]
    assert {v["context"] for v in end["sampledValue"]} == {"Transaction.End"}


async def test_without_stop_txn_data_configured_no_transaction_data(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    cp.mock.swipe("CARD1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert "transactionData" not in stop.payload


# ---- MeterValues ------------------------------------------------------------------------------


async def test_sampled_meter_values_follow_interval_and_measurands(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "MeterValueSampleInterval", "1")
    await configure(csms, "MeterValuesSampledData",
                    "Energy.Active.Import.Register,Current.Offered,Voltage")
    start = await start_session(cp, csms)
    began = parse_time(start.payload["timestamp"])
    record = await csms.wait_for_call(
        "MeterValues", after=index_of(csms, start), timeout=3,
        predicate=lambda p: p["meterValue"][0]["sampledValue"][0]["context"]
        == "Sample.Periodic")
    assert record.payload["connectorId"] == 1
    assert record.payload["transactionId"] == 1
    (value,) = record.payload["meterValue"]
    assert [m[:3] for m in measurands(value)] == [
        ("Energy.Active.Import.Register", None, "Wh"), ("Current.Offered", None, "A"),
        ("Voltage", "L1-N", "V"), ("Voltage", "L2-N", "V"), ("Voltage", "L3-N", "V"),
    ]
    assert [m[3] for m in measurands(value)][1:] == ["32", "230", "230", "230"]
    assert {v["context"] for v in value["sampledValue"]} == {"Sample.Periodic"}
    # The first sample is due one interval after the start (ticks come each second).
    assert 1.0 <= parse_time(value["timestamp"]) - began < 2.1


async def test_clock_aligned_meter_values_fall_on_interval_boundaries(csms, start_agent):
    # The time is learnt from BootNotification.conf; the interval was set before the reboot.
    cp = await start_agent(clock=Clock("csms"))
    await booted(csms)
    await configure(csms, "ClockAlignedDataInterval", "1")
    await configure(csms, "MeterValuesAlignedData", "Energy.Active.Import.Register,Voltage")
    cp.clock = Clock("csms")  # a new process has a new clock
    mark = csms.mark()
    await cp.restart()
    await csms.wait_for_call("BootNotification", after=mark)
    aligned = []
    for _ in range(2):
        after = index_of(csms, aligned[-1]) + 1 if aligned else mark
        aligned.append(await csms.wait_for_call(
            "MeterValues", after=after, timeout=3,
            predicate=lambda p: p["meterValue"][0]["sampledValue"][0]["context"]
            == "Sample.Clock"))
    stamps = []
    for record in aligned:
        assert record.payload["connectorId"] == 1
        assert "transactionId" not in record.payload  # no session running
        (value,) = record.payload["meterValue"]
        assert [m[:3] for m in measurands(value)] == [
            ("Energy.Active.Import.Register", None, "Wh"),
            ("Voltage", "L1-N", "V"), ("Voltage", "L2-N", "V"), ("Voltage", "L3-N", "V"),
        ]
        assert value["timestamp"].endswith(".000Z")
        stamps.append(parse_time(value["timestamp"]))
    assert stamps[1] - stamps[0] == 1.0
    config = await get_config(csms, "ClockAlignedDataInterval")
    assert config["ClockAlignedDataInterval"]["value"] == "1"


async def test_clock_aligned_meter_values_with_trusted_system_clock(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "ClockAlignedDataInterval", "1")
    mark = csms.mark()
    await cp.restart()  # the interval holds from the start: no rescheduling involved
    record = await csms.wait_for_call(
        "MeterValues", after=mark, timeout=2.1,
        predicate=lambda p: p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock")
    assert record.payload["meterValue"][0]["timestamp"].endswith(".000Z")


async def test_clock_aligned_interval_change_takes_effect_at_once(csms, start_agent):
    await start_agent()
    await booted(csms)
    # The trusted clock has had its first boundary scheduled at start, 900 s apart.
    mark = csms.mark()
    await configure(csms, "ClockAlignedDataInterval", "1")
    await csms.wait_for_call(
        "MeterValues", after=mark, timeout=2.1,
        predicate=lambda p: p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock")


# ---- RemoteStartTransaction / RemoteStopTransaction --------------------------------------------


async def test_remote_start_authorizes_first_then_starts_on_plug(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    answer = await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "REM1"})
    assert answer == {"status": "Accepted"}
    authorize = await csms.wait_for_call("Authorize", after=mark)
    assert authorize.payload == {"idTag": "REM1"}
    await wait_status(csms, "Preparing", after=mark)
    await until(cp, lambda core: core.evses[1].pending.authorized)
    assert calls_after(csms, "StartTransaction") == []
    assert not cp.agent.hardware.contactors[1].is_closed
    cp.mock.plug(1)
    start = await csms.wait_for_call("StartTransaction", after=mark)
    assert start.payload["idTag"] == "REM1"
    assert start.payload["connectorId"] == 1
    assert index_of(csms, authorize) < index_of(csms, start)
    await wait_status(csms, "Charging", after=mark)
    assert cp.agent.hardware.contactors[1].is_closed


async def test_remote_start_without_authorize_when_not_required(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "AuthorizeRemoteTxRequests", "false")
    cp.mock.plug(1)
    await wait_status(csms, "Preparing")
    mark = csms.mark()
    answer = await csms.call(CP, "RemoteStartTransaction", {"idTag": "REM2"})
    assert answer == {"status": "Accepted"}
    start = await csms.wait_for_call("StartTransaction", after=mark)
    assert start.payload["idTag"] == "REM2"
    await wait_status(csms, "Charging", after=mark)
    assert calls_after(csms, "Authorize", mark) == []
    assert cp.agent.hardware.contactors[1].is_closed


async def test_remote_start_rejected_for_occupied_or_missing_connector(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    for connector in (1, 2, 0):
        answer = await csms.call(CP, "RemoteStartTransaction",
                                 {"connectorId": connector, "idTag": "REM3"})
        assert answer == {"status": "Rejected"}, connector
    await cp.settle()
    assert calls_after(csms, "Authorize", mark) == []
    assert calls_after(csms, "StartTransaction", mark) == []
    assert await cp.status(1) == "Charging"


async def test_remote_start_expires_after_connection_timeout(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "ConnectionTimeOut", "1")
    mark = csms.mark()
    answer = await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "REM4"})
    assert answer == {"status": "Accepted"}
    preparing = await wait_status(csms, "Preparing", after=mark)
    available = await wait_status(csms, "Available", after=mark, timeout=3)
    assert available.time - preparing.time >= 0.9
    cp.mock.plug(1)
    await wait_status(csms, "Preparing", after=index_of(csms, available))
    await cp.settle()
    assert calls_after(csms, "StartTransaction") == []


async def test_remote_stop_accepts_running_transaction_only(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    start = await start_session(cp, csms)
    assert await csms.call(CP, "RemoteStopTransaction", {"transactionId": 99}) == {
        "status": "Rejected"}
    await cp.settle()
    assert await cp.status(1) == "Charging"
    assert cp.agent.hardware.contactors[1].is_closed
    mark = csms.mark()
    assert await csms.call(CP, "RemoteStopTransaction", {"transactionId": 1}) == {
        "status": "Accepted"}
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["transactionId"] == 1
    assert stop.payload["reason"] == "Remote"
    assert "idTag" not in stop.payload
    assert stop.payload["meterStop"] >= start.payload["meterStart"]
    await wait_status(csms, "Finishing", after=mark)
    assert not cp.agent.hardware.contactors[1].is_closed
    assert await csms.call(CP, "RemoteStopTransaction", {"transactionId": 1}) == {
        "status": "Rejected"}


async def test_remote_stop_right_after_start_confirmation(csms, start_agent):
    """A CSMS may stop a session as soon as it has answered StartTransaction."""
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    deadline = time.monotonic() + 5
    while not any(r.kind == "result" and r.action == "StartTransaction"
                  for r in csms.records[mark:]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0)
    answer = await csms.call(CP, "RemoteStopTransaction", {"transactionId": 1})
    assert answer == {"status": "Accepted"}
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Remote"


# ---- Reset ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Soft", "Hard"])
async def test_reset_during_transaction_stops_it_then_restarts(csms, start_agent, kind):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    contactor = cp.agent.hardware.contactors[1]
    mark = csms.mark()
    assert await csms.call(CP, "Reset", {"type": kind}) == {"status": "Accepted"}
    result = await asyncio.wait_for(cp.task, 5)
    assert result == kind.lower()
    assert not contactor.is_closed
    if kind == "Soft":  # a soft reset ends its sessions gracefully before restarting
        stops = calls_after(csms, "StopTransaction", mark)
        assert [(s.payload["transactionId"], s.payload["reason"]) for s in stops] == [
            (1, "SoftReset")]
    # The charger boots afresh; a hard reset may leave the stop to after the reboot (1.6
    # section 5.14), but either way it reaches the CSMS once.
    await cp.restart()
    boot = await csms.wait_for_call("BootNotification", after=mark)
    await csms.wait_for_call("StopTransaction", after=mark)
    await wait_status(csms, "Available", after=index_of(csms, boot))  # a new mock: no car
    await cp.settle()
    stops = calls_after(csms, "StopTransaction", mark)
    assert [(s.payload["transactionId"], s.payload["reason"]) for s in stops] == [
        (1, f"{kind}Reset")]


async def test_reset_when_idle_restarts(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    assert await csms.call(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    assert await asyncio.wait_for(cp.task, 5) == "soft"
    assert calls_after(csms, "StopTransaction", mark) == []


# ---- ChangeAvailability -----------------------------------------------------------------------


async def test_change_availability_inoperative_and_back(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    assert answer == {"status": "Accepted"}
    await wait_status(csms, "Unavailable", after=mark)
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    await cp.settle()
    assert await csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "R"}) == {
        "status": "Rejected"}
    assert statuses(csms, 1, after=mark) == ["Unavailable"]
    assert statuses(csms, 0, after=mark) == []  # the station itself stays available
    assert calls_after(csms, "StartTransaction") == []
    assert not cp.agent.hardware.contactors[1].is_closed
    back = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Operative"})
    assert answer == {"status": "Accepted"}
    await wait_status(csms, "Preparing", after=back)  # the car is plugged
    assert await csms.call(CP, "ChangeAvailability", {"connectorId": 2, "type": "Operative"}) == {
        "status": "Rejected"}


async def test_change_availability_during_transaction_is_scheduled(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    assert answer == {"status": "Scheduled"}
    await cp.settle()
    assert statuses(csms, 1, after=mark) == []
    assert await cp.status(1) == "Charging"
    assert cp.agent.hardware.contactors[1].is_closed
    cp.mock.swipe("CARD1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Local"
    await wait_status(csms, "Unavailable", after=mark)
    assert statuses(csms, 1, after=mark) == ["Unavailable"]
    assert not cp.agent.hardware.contactors[1].is_closed


async def test_change_availability_of_station_persists_across_restart(csms, start_agent):
    cp = await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    mark = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    assert answer == {"status": "Accepted"}
    for connector in (0, 1, 2):
        await wait_status(csms, "Unavailable", connector, after=mark)
    mark = csms.mark()
    await cp.restart()
    await csms.wait_for_call("BootNotification", after=mark)
    await wait_status(csms, "Unavailable", 2, after=mark)
    reported = [(r.payload["connectorId"], r.payload["status"])
                for r in calls_after(csms, "StatusNotification", mark)]
    assert reported == [(0, "Unavailable"), (1, "Unavailable"), (2, "Unavailable")]
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    await cp.settle()
    assert calls_after(csms, "StartTransaction") == []
    assert not cp.agent.hardware.contactors[1].is_closed
    mark = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    assert answer == {"status": "Accepted"}
    await wait_status(csms, "Available", 2, after=mark)
    assert await cp.status(0) == "Available"
    assert await cp.status(1) == "Preparing"
    assert await cp.status(2) == "Available"


async def test_change_availability_of_connector_persists_across_restart(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    assert answer == {"status": "Accepted"}
    await wait_status(csms, "Unavailable")
    mark = csms.mark()
    await cp.restart()
    await wait_status(csms, "Unavailable", 1, after=mark)
    assert await cp.status(1) == "Unavailable"
    assert await cp.status(0) == "Available"


async def test_station_inoperative_during_transaction_lets_it_finish(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    answer = await csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    assert answer == {"status": "Scheduled"}
    mark = csms.mark()
    cp.mock.suspend(1)  # the car pauses and resumes: the session must go on
    await wait_status(csms, "SuspendedEV", after=mark)
    cp.mock.resume(1)
    await wait_status(csms, "Charging", after=mark, timeout=2)
    assert cp.agent.hardware.contactors[1].is_closed
    cp.mock.swipe("CARD1")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Local"
    await wait_status(csms, "Unavailable", 1, after=mark)
    assert not cp.agent.hardware.contactors[1].is_closed


# ---- UnlockConnector --------------------------------------------------------------------------


async def test_unlock_connector_when_idle(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    lock = cp.mock.hardware.locks[1]
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
    await cp.settle()
    assert lock.unlock_count == 1  # one pulse per request
    lock.jammed = True
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {
        "status": "UnlockFailed"}
    await cp.settle()
    assert lock.unlock_count == 2
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 2}) == {
        "status": "NotSupported"}
    await cp.settle()
    assert calls_after(csms, "StopTransaction") == []


async def test_unlock_connector_during_session_stops_it(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "UnlockCommand"
    assert stop.payload["transactionId"] == 1
    assert "idTag" not in stop.payload
    assert not cp.agent.hardware.contactors[1].is_closed
    await wait_status(csms, "Finishing", after=mark)
    assert cp.mock.hardware.locks[1].unlock_count == 1


# ---- ClearCache -------------------------------------------------------------------------------


async def _cache_card_online(cp: Any, csms: DevCsms, tag: str) -> None:
    await start_session(cp, csms, tag)
    mark = csms.mark()
    cp.mock.swipe(tag)
    await csms.wait_for_call("StopTransaction", after=mark)
    cp.mock.unplug(1)
    await wait_status(csms, "Available", after=mark)


async def _go_offline(cp: Any) -> None:
    cp.agent.transport.set_network(False)
    await until(cp, lambda core: not core.online)


async def test_cached_card_is_accepted_offline_also_after_restart(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await _cache_card_online(cp, csms, "CACHED1")
    await _go_offline(cp)
    cp.mock.plug(1)
    cp.mock.swipe("CACHED1")
    await until(cp, lambda core: core.evses[1].contactor_closed)
    assert cp.agent.hardware.contactors[1].is_closed
    cp.mock.swipe("CACHED1")
    await until(cp, lambda core: core.evses[1].transaction is None)
    # The cache is kept in the store: a restart without network still knows the card.
    await cp.restart()
    cp.agent.transport.set_network(False)
    cp.mock.plug(1)
    cp.mock.swipe("CACHED1")
    await until(cp, lambda core: core.evses[1].contactor_closed)
    assert cp.agent.hardware.contactors[1].is_closed


async def test_clear_cache_forgets_cached_cards(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await _cache_card_online(cp, csms, "CACHED1")
    assert await csms.call(CP, "ClearCache", {}) == {"status": "Accepted"}
    await _go_offline(cp)
    cp.mock.plug(1)
    cp.mock.swipe("CACHED1")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    assert not cp.agent.hardware.contactors[1].is_closed
    assert await cp.status(1) == "Preparing"
    # The store forgot it too: after a restart offline the card is still unknown.
    await cp.restart()
    cp.agent.transport.set_network(False)
    cp.mock.plug(1)
    cp.mock.swipe("CACHED1")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    assert not cp.agent.hardware.contactors[1].is_closed


async def test_local_pre_authorize_then_invalid_start_stops_deauthorized(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await _cache_card_online(cp, csms, "CARD2")
    await configure(csms, "LocalPreAuthorize", "true")
    csms.rejected_tags.add("CARD2")  # the CSMS changed its mind since the card was cached
    mark = csms.mark()
    cp.mock.plug(1)
    cp.mock.swipe("CARD2")
    start = await csms.wait_for_call("StartTransaction", after=mark)
    assert start.payload["idTag"] == "CARD2"
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "DeAuthorized"
    assert stop.payload["transactionId"] == 2
    assert calls_after(csms, "Authorize", mark) == []  # started from the cache
    await wait_status(csms, "Finishing", after=mark)
    assert not cp.agent.hardware.contactors[1].is_closed
    assert cp.agent.core.cache.get(IdToken("CARD2")).status.value == "invalid"


async def test_invalid_start_without_stop_on_invalid_id_only_cuts_power(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await _cache_card_online(cp, csms, "CARD3")
    await configure(csms, "LocalPreAuthorize", "true")
    await configure(csms, "StopTransactionOnInvalidId", "false")
    csms.rejected_tags.add("CARD3")
    mark = csms.mark()
    cp.mock.plug(1)
    cp.mock.swipe("CARD3")
    await csms.wait_for_call("StartTransaction", after=mark)
    await wait_status(csms, "SuspendedEVSE", after=mark)
    await cp.settle()
    assert not cp.agent.hardware.contactors[1].is_closed
    assert calls_after(csms, "StopTransaction", mark) == []
    cp.mock.swipe("CARD3")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert (stop.payload["reason"], stop.payload["idTag"]) == ("Local", "CARD3")


# ---- DataTransfer -----------------------------------------------------------------------------


async def test_data_transfer_unknown_vendor(csms, start_agent):
    await start_agent()
    await booted(csms)
    answer = await csms.call(CP, "DataTransfer",
                             {"vendorId": "com.example", "messageId": "Hello", "data": "x"})
    assert answer == {"status": "UnknownVendorId"}


# ---- GetConfiguration / ChangeConfiguration ---------------------------------------------------


async def test_get_configuration_all_keys(csms, start_agent):
    await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    answer = await csms.call(CP, "GetConfiguration", {})
    assert "unknownKey" not in answer
    entries = {e["key"]: e for e in answer["configurationKey"]}
    assert len(entries) == len(answer["configurationKey"]) == len(KEYS)
    for key, readonly in REQUIRED_CORE_KEYS.items():
        assert entries[key]["readonly"] is readonly, key
    assert entries["NumberOfConnectors"]["value"] == "2"
    assert {"Core", "LocalAuthListManagement", "RemoteTrigger", "Reservation"} <= set(
        entries["SupportedFeatureProfiles"]["value"].split(","))
    assert entries["HeartbeatInterval"]["value"] == "300"
    assert entries["MeterValueSampleInterval"]["value"] == "60"
    assert entries["AuthorizeRemoteTxRequests"]["value"] == "true"
    assert entries["ConnectorPhaseRotation"]["value"] == "0.Unknown,1.Unknown,2.Unknown"


async def test_get_configuration_specific_and_unknown_keys(csms, start_agent):
    await start_agent()
    await booted(csms)
    answer = await csms.call(CP, "GetConfiguration",
                             {"key": ["NumberOfConnectors", "NoSuchKey", "HeartbeatInterval"]})
    assert answer == {
        "configurationKey": [
            {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        ],
        "unknownKey": ["NoSuchKey"],
    }
    answer = await csms.call(CP, "GetConfiguration", {"key": ["Nope"]})
    assert answer == {"configurationKey": [], "unknownKey": ["Nope"]}


async def test_change_configuration_persists_across_restart(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await configure(csms, "MeterValueSampleInterval", "15")
    await configure(csms, "StopTransactionOnInvalidId", "FALSE")
    await configure(csms, "MeterValuesSampledData", "Voltage, Current.Offered")
    await cp.settle()
    assert cp.agent.core.settings.update_interval == 15.0
    assert cp.agent.core.settings.stop_on_invalid_id is False
    mark = csms.mark()
    await cp.restart()
    await csms.wait_for_call("BootNotification", after=mark)
    config = await get_config(csms, "MeterValueSampleInterval", "StopTransactionOnInvalidId",
                              "MeterValuesSampledData")
    assert {k: v["value"] for k, v in config.items()} == {
        "MeterValueSampleInterval": "15",
        "StopTransactionOnInvalidId": "false",
        "MeterValuesSampledData": "Voltage,Current.Offered",
    }
    assert cp.agent.core.settings.update_interval == 15.0
    assert cp.agent.core.settings.stop_on_invalid_id is False


@pytest.mark.parametrize(("key", "value", "status"), [
    ("NumberOfConnectors", "3", "Rejected"),  # read-only
    ("SupportedFeatureProfiles", "Core,Reservation", "Rejected"),  # read-only
    ("NoSuchKey", "1", "NotSupported"),
    ("MeterValueSampleInterval", "abc", "Rejected"),
    ("MeterValueSampleInterval", "-1", "Rejected"),
    ("MeterValueSampleInterval", "1.5", "Rejected"),
    ("HeartbeatInterval", "", "Rejected"),
    ("LocalPreAuthorize", "yes", "Rejected"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register,Temperature", "Rejected"),
    ("StopTxnAlignedData", "SoC", "Rejected"),
    ("ConnectorPhaseRotation", "1.XYZ", "Rejected"),
])
async def test_change_configuration_refusals_leave_the_value(csms, start_agent, key, value,
                                                              status):
    await start_agent()
    await booted(csms)
    before = await csms.call(CP, "GetConfiguration", {"key": [key]})
    answer = await csms.call(CP, "ChangeConfiguration", {"key": key, "value": value})
    assert answer == {"status": status}
    assert await csms.call(CP, "GetConfiguration", {"key": [key]}) == before


# ---- CallErrors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "code"), [
    ({"connectorId": 1, "type": "Sometimes"}, "PropertyConstraintViolation"),
    ({"type": "Inoperative"}, "ProtocolError"),
    ({"connectorId": "1", "type": "Inoperative"}, "TypeConstraintViolation"),
    ({"connectorId": 1, "type": "Inoperative", "when": "now"}, "FormationViolation"),
    ([1, "Inoperative"], "FormationViolation"),
])
async def test_schema_breaking_call_gets_call_error(csms, start_agent, payload, code):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    answer = await raw_call(csms, "bad-1",
                            json.dumps([2, "bad-1", "ChangeAvailability", payload]))
    assert answer.kind == "error"
    assert answer.payload["errorCode"] == code
    await cp.settle()
    assert await cp.status(1) == "Available"  # nothing was done
    assert statuses(csms, 1, after=mark) == []


async def test_unknown_and_unsupported_actions(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    answer = await raw_call(csms, "foo-1", '[2,"foo-1","FooBar",{}]')
    assert (answer.kind, answer.payload["errorCode"]) == ("error", "NotImplemented")
    with pytest.raises(CsmsCallError) as info:
        await csms.call(CP, "GetDiagnostics", {"location": "ftp://example.com/diagnostics"})
    assert info.value.code == "NotSupported"
    await cp.settle()
    assert await cp.status(1) == "Available"


async def test_malformed_frames_leave_the_link_working(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    answer = await raw_call(csms, "broken-1", '[2,"broken-1","GetConfiguration",{')
    assert (answer.kind, answer.payload["errorCode"]) == ("error", "FormationViolation")
    await csms.send_raw(CP, "not json at all")
    await csms.send_raw(CP, '{"hello": "world"}')
    config = await get_config(csms, "NumberOfConnectors")
    assert config["NumberOfConnectors"]["value"] == "1"
    assert csms.is_connected(CP)
    assert cp.agent.transport.connect_count == 1
    await start_session(cp, csms)


# ---- faults and the car's own pauses --------------------------------------------------------


async def test_fault_mid_session_opens_contactor_and_reports_faulted(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    cp.mock.fault(Fault.GROUND_FAILURE, 1, "RCD tripped")
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Other"
    assert stop.payload["transactionId"] == 1
    faulted = await wait_status(csms, "Faulted", after=mark)
    assert faulted.payload["errorCode"] == "GroundFailure"
    assert faulted.payload["info"] == "RCD tripped"
    assert not cp.agent.hardware.contactors[1].is_closed
    # While faulted a card starts nothing.
    cp.mock.swipe("CARD1")
    await cp.settle()
    assert len(calls_after(csms, "StartTransaction")) == 1
    assert not cp.agent.hardware.contactors[1].is_closed
    cleared = csms.mark()
    cp.mock.clear_fault(1)
    finishing = await wait_status(csms, "Finishing", after=cleared)
    assert finishing.payload["errorCode"] == "NoError"


async def test_ev_suspends_and_resumes(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    mark = csms.mark()
    cp.mock.suspend(1)
    suspended = await wait_status(csms, "SuspendedEV", after=mark)
    assert suspended.payload["errorCode"] == "NoError"
    assert not cp.agent.hardware.contactors[1].is_closed
    assert calls_after(csms, "StopTransaction") == []
    cp.mock.resume(1)
    await wait_status(csms, "Charging", after=mark)
    assert cp.agent.hardware.contactors[1].is_closed


async def test_while_rejected_csms_calls_go_unanswered(csms, start_agent):
    # OCPP 1.6 4.2: "While Rejected, the Charge Point SHALL NOT respond to any Central System
    # initiated message."
    csms.boot_status = "Rejected"
    csms.heartbeat_interval = 30
    cp = await start_agent()
    await csms.wait_for_call("BootNotification")
    while cp.agent.gate.of("1.6") != "Rejected":  # the verdict has reached the charger
        await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        await csms.call("CP-TEST", "GetConfiguration", {}, timeout=0.5)
    assert [r for r in csms.records if r.direction == "cp->csms" and r.kind != "call"] == []


async def test_configuration_keys_are_case_insensitive(csms, start_agent):
    """1.6 keys are CiString: any spelling names the key, answers use its own spelling."""
    cp = await start_agent()
    await booted(csms)
    assert await csms.call(CP, "ChangeConfiguration",
                           {"key": "connectiontimeout", "value": "45"}) == {"status": "Accepted"}
    assert await csms.call(CP, "ChangeConfiguration",
                           {"key": "CONNECTIONTIMEOUT", "value": "46"}) == {"status": "Accepted"}
    spellings = ["heartbeatinterval", "ConnectionTimeout", "HEARTBEATINTERVAL"]
    answer = await csms.call(CP, "GetConfiguration", {"key": spellings})
    assert answer == {"configurationKey": [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "ConnectionTimeOut", "readonly": False, "value": "46"},
    ]}
    await cp.settle()
    assert cp.agent.core.settings.connection_timeout == 46.0


async def test_remote_start_with_a_default_profile_is_not_accepted_and_dropped(csms,
                                                                               start_agent):
    """1.6 5.11: the profile a RemoteStartTransaction carries is a TxProfile; any other is
    refused rather than accepted and then ignored."""
    cp = await start_agent()
    await booted(csms)
    profile = {"chargingProfileId": 1, "stackLevel": 0,
               "chargingProfilePurpose": "TxDefaultProfile",
               "chargingProfileKind": "Relative",
               "chargingSchedule": {"chargingRateUnit": "A",
                                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6}]}}
    mark = csms.mark()
    answer = await csms.call(CP, "RemoteStartTransaction",
                             {"idTag": "REMOTE1", "connectorId": 1, "chargingProfile": profile})
    assert answer == {"status": "Rejected"}
    cp.mock.plug(1)
    await wait_status(csms, "Preparing", after=mark)
    await cp.settle()
    assert not calls_after(csms, "StartTransaction", mark)
    assert not cp.agent.hardware.contactors[1].is_closed
