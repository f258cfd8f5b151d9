"""OCPP 2.0.1, block by block, against the dev CSMS (ocpp's v201 server, schemas checked both
ways): provisioning, the device model and its reports, availability, authorization,
transactions, remote control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import CsmsCallError, DevCsms, Record
from hal.interfaces import Fault

CP = "CP-TEST"


@pytest.fixture
async def csms() -> AsyncIterator[DevCsms]:
    async with DevCsms(subprotocols=("ocpp2.0.1",)) as server:
        yield server


@pytest.fixture
async def start(tmp_path, csms) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningAgent] = []

    async def start_agent(**sections: dict) -> RunningAgent:
        sections.setdefault("csms", {}).setdefault("ocpp_version", "2.0.1")
        config = make_config(tmp_path / f"agent{len(running)}", csms.url, **sections)
        agent = RunningAgent(config, Clock("system"))
        running.append(agent)
        return await agent.start()

    yield start_agent
    for agent in running:
        await agent.stop()


async def booted(csms: DevCsms, evses: int = 1, after: int = 0) -> None:
    await csms.wait_for_call("BootNotification", after=after)
    await csms.wait_for_call("StatusNotification", after=after,
                             predicate=lambda p: p["evseId"] == evses)


def var(component: str, name: str, evse: dict | None = None, instance: str | None = None):
    c: dict[str, Any] = {"name": component}
    if evse:
        c["evse"] = evse
    v: dict[str, Any] = {"name": name}
    if instance:
        v["instance"] = instance
    return {"component": c, "variable": v}


async def get(csms: DevCsms, *items: dict) -> list[dict]:
    answer = await csms.call(CP, "GetVariables", {"getVariableData": list(items)})
    return answer["getVariableResult"]


async def set_(csms: DevCsms, item: dict, value: str) -> dict:
    answer = await csms.call(CP, "SetVariables", {"setVariableData": [
        {**item, "attributeValue": value}]})
    return answer["setVariableResult"][0]


async def value_of(csms: DevCsms, component: str, name: str, **kw: Any) -> str:
    [result] = await get(csms, var(component, name, **kw))
    assert result["attributeStatus"] == "Accepted", result
    return result["attributeValue"]


def events(csms: DevCsms, after: int = 0) -> list[dict]:
    return [r.payload for r in csms.records[after:]
            if r.kind == "call" and r.action == "TransactionEvent"]


async def wait_event(csms: DevCsms, after: int = 0, **fields: Any) -> Record:
    def match(p: dict) -> bool:
        return all((p.get(k) if k != "stoppedReason" else
                    p["transactionInfo"].get("stoppedReason")) == v for k, v in fields.items())
    return await csms.wait_for_call("TransactionEvent", after=after, predicate=match)


async def reports(csms: DevCsms, request_id: int, after: int = 0) -> list[dict]:
    parts = []
    while True:
        part = await csms.wait_for_call("NotifyReport", after=after,
                                        predicate=lambda p: p["requestId"] == request_id)
        after = csms.records.index(part) + 1
        parts.append(part.payload)
        if not part.payload.get("tbc"):
            return parts


# ---- provisioning ---------------------------------------------------------------------------


async def test_boot_says_why_and_what(csms, start):
    await start()
    boot = await csms.wait_for_call("BootNotification")
    assert boot.payload["reason"] == "PowerUp"
    assert boot.payload["chargingStation"]["vendorName"] == "cpagent"
    assert csms.subprotocol(CP) == "ocpp2.0.1"


async def test_while_pending_the_csms_may_configure_but_not_start(csms, start):
    csms.boot_status = "Pending"
    csms.heartbeat_interval = 1
    await start()
    await csms.wait_for_call("BootNotification")
    await asyncio.sleep(0.1)
    assert await value_of(csms, "OCPPCommCtrlr", "HeartbeatInterval")
    with pytest.raises(CsmsCallError) as refused:
        await csms.call(CP, "UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert refused.value.code == "SecurityError"
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "A", "type": "Central"}, "remoteStartId": 1})
    assert answer["status"] == "Rejected"
    # Nothing but the boot goes out while pending, retried at the interval it gave.
    mark = csms.mark()
    await csms.wait_for_call("BootNotification", after=mark, timeout=3)
    sent = {r.action for r in csms.calls(identity=CP)}
    assert sent == {"BootNotification"}
    csms.boot_status = "Accepted"
    await csms.wait_for_call("StatusNotification", after=mark, timeout=3)


async def test_while_rejected_calls_are_refused_with_security_error(csms, start):
    csms.boot_status = "Rejected"
    csms.heartbeat_interval = 30
    cp = await start()
    await csms.wait_for_call("BootNotification")
    while cp.agent.gate.of("2.0.1") != "Rejected":
        await asyncio.sleep(0.01)
    with pytest.raises(CsmsCallError) as refused:
        await csms.call(CP, "GetVariables", {"getVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval")]})
    assert refused.value.code == "SecurityError"
    assert "BootNotification" in (cp.agent.snapshot()["last_error"] or "")


# ---- the device model -----------------------------------------------------------------------


async def test_get_variables_results(csms, start):
    await start()
    await booted(csms)
    results = await get(
        csms,
        var("OCPPCommCtrlr", "HeartbeatInterval"),
        var("ocppcommctrlr", "heartbeatinterval"),  # names are case-insensitive
        var("NoSuchCtrlr", "HeartbeatInterval"),
        var("OCPPCommCtrlr", "NoSuchVariable"),
        {**var("OCPPCommCtrlr", "HeartbeatInterval"), "attributeType": "MaxSet"},
        var("SecurityCtrlr", "BasicAuthPassword"),
        var("EVSE", "AvailabilityState", {"id": 1}),
        var("EVSE", "AvailabilityState", {"id": 9}),
        var("Connector", "ConnectorType", {"id": 1, "connectorId": 1}),
        var("DeviceDataCtrlr", "ItemsPerMessage", instance="GetVariables"),
    )
    statuses = [(r["attributeStatus"], r.get("attributeValue")) for r in results]
    assert statuses == [
        ("Accepted", "300"), ("Accepted", "300"), ("UnknownComponent", None),
        ("UnknownVariable", None), ("NotSupportedAttributeType", None),
        ("Rejected", None),  # write-only: never read back
        ("Accepted", "Available"), ("UnknownComponent", None), ("Accepted", "sType2"),
        ("Accepted", "64"),
    ]


async def test_too_many_items_in_one_request_is_a_call_error(csms, start):
    await start()
    await booted(csms)
    items = [var("OCPPCommCtrlr", "HeartbeatInterval")] * 65
    with pytest.raises(CsmsCallError) as refused:
        await csms.call(CP, "GetVariables", {"getVariableData": items})
    assert refused.value.code == "OccurrenceConstraintViolation"


# Every writable variable, with a value it takes and one it must refuse.
WRITABLE = [
    ("OCPPCommCtrlr", "HeartbeatInterval", "120", "-1"),
    ("OCPPCommCtrlr", "MessageAttemptsTransactionEvent", "5", "0"),
    ("OCPPCommCtrlr", "MessageAttemptIntervalTransactionEvent", "20", "x"),
    ("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", "2", "0"),
    ("OCPPCommCtrlr", "OfflineThreshold", "60", "1.5"),
    ("OCPPCommCtrlr", "ResetRetries", "2", "11"),
    ("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "false", "no"),
    ("OCPPCommCtrlr", "WebSocketPingInterval", "20", "-5"),
    ("OCPPCommCtrlr", "NetworkConfigurationPriority", "1", "3"),
    ("SecurityCtrlr", "OrganizationName", "Example Charging Ltd", "x" * 51),
    ("AuthCtrlr", "Enabled", "true", "1"),
    ("AuthCtrlr", "AuthorizeRemoteStart", "false", "maybe"),
    ("AuthCtrlr", "LocalAuthorizeOffline", "false", ""),
    ("AuthCtrlr", "LocalPreAuthorize", "true", "yes"),
    ("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "true", "2"),
    ("AuthCacheCtrlr", "Enabled", "false", "off"),
    ("AuthCacheCtrlr", "LifeTime", "3600", "-1"),
    ("AuthCacheCtrlr", "Policy", "LRU", "LFU"),
    ("LocalAuthListCtrlr", "Enabled", "false", "nein"),
    ("TxCtrlr", "EVConnectionTimeOut", "90", "0"),
    ("TxCtrlr", "MaxEnergyOnInvalidId", "1000", "-1"),
    ("TxCtrlr", "StopTxOnEVSideDisconnect", "false", "x"),
    ("TxCtrlr", "StopTxOnInvalidId", "false", "x"),
    ("TxCtrlr", "TxStartPoint", "EVConnected,Authorized", "ParkingBayOccupancy"),
    ("TxCtrlr", "TxStopPoint", "EVConnected", "DataSigned"),
    ("SampledDataCtrlr", "Enabled", "true", "x"),
    ("SampledDataCtrlr", "TxEndedMeasurands", "Energy.Active.Import.Register,Voltage",
     "Temperature"),
    ("SampledDataCtrlr", "TxEndedInterval", "300", "x"),
    ("SampledDataCtrlr", "TxStartedMeasurands", "Power.Active.Import", "SoC"),
    ("SampledDataCtrlr", "TxUpdatedMeasurands", "Current.Import", "Frequency"),
    ("SampledDataCtrlr", "TxUpdatedInterval", "30", "x"),
    ("AlignedDataCtrlr", "Enabled", "false", "x"),
    ("AlignedDataCtrlr", "Interval", "600", "x"),
    ("AlignedDataCtrlr", "Measurands", "Energy.Active.Import.Register,Voltage", "Nope"),
    ("AlignedDataCtrlr", "SendDuringIdle", "true", "x"),
    ("AlignedDataCtrlr", "TxEndedMeasurands", "Voltage", "Voltage,Voltage"),
    ("AlignedDataCtrlr", "TxEndedInterval", "900", "x"),
    ("ClockCtrlr", "TimeSource", "Heartbeat", "GPS"),
    ("ReservationCtrlr", "Enabled", "false", "x"),
    ("ReservationCtrlr", "NonEvseSpecific", "false", "off"),
]


async def test_every_writable_variable_round_trips_and_persists(csms, start):
    csms.heartbeat_interval = 120  # the boot's answer sets it too, at every start
    cp = await start()
    await booted(csms)
    for component, name, good, bad in WRITABLE:
        refused = await set_(csms, var(component, name), bad)
        assert refused["attributeStatus"] == "Rejected", (component, name, bad)
        accepted = await set_(csms, var(component, name), good)
        assert accepted["attributeStatus"] == "Accepted", (component, name, accepted)
        assert await value_of(csms, component, name) == good, (component, name)
    mark = csms.mark()
    await cp.restart()
    await booted(csms, after=mark)
    for component, name, good, _ in WRITABLE:
        assert await value_of(csms, component, name) == good, (component, name)


async def test_read_only_variables_cannot_be_set(csms, start):
    await start()
    await booted(csms)
    result = await set_(csms, var("SecurityCtrlr", "SecurityProfile"), "3")
    assert result["attributeStatus"] == "Rejected"
    result = await set_(csms, var("EVSE", "Power", {"id": 1}), "1")
    assert result["attributeStatus"] == "Rejected"
    result = await set_(csms, {**var("TxCtrlr", "StopTxOnInvalidId"), "attributeType":
                               "Target"}, "true")
    assert result["attributeStatus"] == "NotSupportedAttributeType"


async def test_settings_shared_with_16_are_one_value(csms, start, tmp_path):
    """A value the 2.0.1 CSMS set is what a 1.6 CSMS reads after a switch of versions."""
    cp = await start()
    await booted(csms)
    assert (await set_(csms, var("TxCtrlr", "EVConnectionTimeOut"), "77"))[
        "attributeStatus"] == "Accepted"
    assert (await set_(csms, var("SampledDataCtrlr", "TxUpdatedInterval"), "15"))[
        "attributeStatus"] == "Accepted"
    await cp.stop()
    async with DevCsms() as old:  # a 1.6 CSMS, on the same data
        config = make_config(cp.config.station.data_dir, old.url,
                             csms={"ocpp_version": "1.6"})
        agent = await RunningAgent(config, Clock("system")).start()
        try:
            await old.wait_for_call("StatusNotification")
            answer = await old.call(CP, "GetConfiguration", {"key": [
                "ConnectionTimeOut", "MeterValueSampleInterval"]})
            assert {k["key"]: k["value"] for k in answer["configurationKey"]} == {
                "ConnectionTimeOut": "77", "MeterValueSampleInterval": "15"}
        finally:
            await agent.stop()


# ---- reports --------------------------------------------------------------------------------


async def test_full_inventory_in_parts(csms, start):
    await start(station={"connectors": 2})
    await booted(csms, evses=2)
    mark = csms.mark()
    answer = await csms.call(CP, "GetBaseReport", {"requestId": 7,
                                                   "reportBase": "FullInventory"})
    assert answer == {"status": "Accepted"}
    parts = await reports(csms, 7, mark)
    assert [p["seqNo"] for p in parts] == list(range(len(parts)))
    assert [p["tbc"] for p in parts] == [True] * (len(parts) - 1) + [False]
    assert len(parts) >= 2  # more variables than ItemsPerMessageGetReport
    data = [d for p in parts for d in p["reportData"]]
    names = {(d["component"]["name"], d["variable"]["name"]) for d in data}
    for component in ("OCPPCommCtrlr", "SecurityCtrlr", "AuthCtrlr", "AuthCacheCtrlr",
                      "LocalAuthListCtrlr", "TxCtrlr", "SampledDataCtrlr", "AlignedDataCtrlr",
                      "DeviceDataCtrlr", "ClockCtrlr", "ReservationCtrlr",
                      "SmartChargingCtrlr", "ChargingStation", "EVSE", "Connector"):
        assert any(c == component for c, _ in names), component
    evse_power = [d for d in data if d["component"]["name"] == "EVSE"
                  and d["variable"]["name"] == "Power"]
    assert sorted(d["component"]["evse"]["id"] for d in evse_power) == [1, 2]
    assert evse_power[0]["variableCharacteristics"]["maxLimit"] == 32 * 230 * 3
    secret = next(d for d in data if d["variable"]["name"] == "BasicAuthPassword")
    assert "value" not in secret["variableAttribute"][0]
    assert secret["variableAttribute"][0]["mutability"] == "WriteOnly"
    reservation = {d["variable"]["name"]: d["variableAttribute"][0]["value"] for d in data
                   if d["component"]["name"] == "ReservationCtrlr"}
    assert reservation == {"Available": "true", "Enabled": "true", "NonEvseSpecific": "true"}


async def test_configuration_and_summary_inventories(csms, start):
    await start()
    await booted(csms)
    mark = csms.mark()
    await csms.call(CP, "GetBaseReport", {"requestId": 1,
                                          "reportBase": "ConfigurationInventory"})
    config = [d for p in await reports(csms, 1, mark) for d in p["reportData"]]
    assert config and all(d["variableAttribute"][0]["mutability"] != "ReadOnly"
                          for d in config)
    mark = csms.mark()
    await csms.call(CP, "GetBaseReport", {"requestId": 2, "reportBase": "SummaryInventory"})
    summary = [d for p in await reports(csms, 2, mark) for d in p["reportData"]]
    assert {d["variable"]["name"] for d in summary} <= {"AvailabilityState", "Available",
                                                       "Problem", "Enabled"}
    assert any(d["component"]["name"] == "Connector" for d in summary)


async def test_get_report_filters_and_empty_result(csms, start):
    cp = await start()
    await booted(csms)
    mark = csms.mark()
    answer = await csms.call(CP, "GetReport", {"requestId": 3, "componentVariable": [
        {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"}},
        {"component": {"name": "EVSE", "evse": {"id": 1}}}]})
    assert answer == {"status": "Accepted"}
    data = [d for p in await reports(csms, 3, mark) for d in p["reportData"]]
    assert {(d["component"]["name"], d["variable"]["name"]) for d in data} == {
        ("TxCtrlr", "TxStartPoint"), ("EVSE", "AvailabilityState"), ("EVSE", "Available"),
        ("EVSE", "AllowReset"), ("EVSE", "Power"), ("EVSE", "SupplyPhases"),
        ("EVSE", "Problem")}
    assert await csms.call(CP, "GetReport", {"requestId": 4, "componentCriteria":
                                             ["Problem"]}) == {"status": "EmptyResultSet"}
    cp.mock.fault(Fault.READER_FAILURE, 1)
    await cp.settle()
    mark = csms.mark()
    assert await csms.call(CP, "GetReport", {"requestId": 5, "componentCriteria":
                                             ["Problem"]}) == {"status": "Accepted"}
    data = [d for p in await reports(csms, 5, mark) for d in p["reportData"]]
    assert {d["component"]["name"] for d in data} == {"EVSE", "Connector"}
    assert await csms.call(CP, "GetReport", {"requestId": 6, "componentVariable": [
        {"component": {"name": "NoSuch"}}]}) == {"status": "EmptyResultSet"}


# ---- availability, faults, reset ------------------------------------------------------------


async def test_change_availability_of_evse_connector_and_station(csms, start):
    cp = await start(station={"connectors": 2})
    await booted(csms, evses=2)
    mark = csms.mark()
    answer = await csms.call(CP, "ChangeAvailability", {
        "operationalStatus": "Inoperative", "evse": {"id": 2, "connectorId": 1}})
    assert answer == {"status": "Accepted"}
    await csms.wait_for_call("StatusNotification", after=mark, predicate=lambda p:
                             p["evseId"] == 2 and p["connectorStatus"] == "Unavailable")
    assert await value_of(csms, "Connector", "AvailabilityState",
                          evse={"id": 2, "connectorId": 1}) == "Unavailable"
    cp.mock.plug(1)
    cp.mock.swipe("CARD1", 1)
    await csms.wait_for_call("TransactionEvent")
    answer = await csms.call(CP, "ChangeAvailability", {"operationalStatus": "Inoperative"})
    assert answer == {"status": "Scheduled"}
    answer = await csms.call(CP, "ChangeAvailability", {"operationalStatus": "Operative",
                                                        "evse": {"id": 7}})
    assert answer["status"] == "Rejected"
    mark = csms.mark()
    await cp.restart()
    await booted(csms, evses=2, after=mark)
    # Stored, and applied once the session ended (here: the restart ended it).
    statuses = {r.payload["evseId"]: r.payload["connectorStatus"]
                for r in csms.calls("StatusNotification")[-2:]}
    assert statuses == {1: "Unavailable", 2: "Unavailable"}


async def test_faults_are_problems_of_the_connector(csms, start):
    cp = await start()
    await booted(csms)
    mark = csms.mark()
    cp.mock.fault(Fault.GROUND_FAILURE, 1, "RCD")
    raised = await csms.wait_for_call("NotifyEvent", after=mark)
    data = raised.payload["eventData"][0]
    assert (data["component"], data["variable"]["name"], data["actualValue"],
            data["trigger"], data["techCode"], data["cleared"]) == (
        {"name": "Connector", "evse": {"id": 1, "connectorId": 1}}, "Problem", "true",
        "Delta", "ground_failure", False)
    await csms.wait_for_call("StatusNotification", after=mark,
                             predicate=lambda p: p["connectorStatus"] == "Faulted")
    mark = csms.mark()
    cp.mock.clear_fault(1)
    cleared = await csms.wait_for_call("NotifyEvent", after=mark)
    assert cleared.payload["eventData"][0]["actualValue"] == "false"
    assert cleared.payload["eventData"][0]["cleared"] is True


async def test_reset_on_idle_waits_and_immediate_ends_with_immediate_reset(csms, start):
    cp = await start()
    await booted(csms)
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    await wait_event(csms, eventType="Started")
    answer = await csms.call(CP, "Reset", {"type": "OnIdle"})
    assert answer == {"status": "Scheduled"}
    await asyncio.sleep(0.2)
    assert not cp.task.done()
    answer = await csms.call(CP, "Reset", {"type": "Immediate"})
    assert answer == {"status": "Accepted"}
    end = await wait_event(csms, eventType="Ended")
    assert end.payload["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    assert end.payload["triggerReason"] == "ResetCommand"
    assert await cp.task == "soft"
    await cp.start()
    boots = csms.calls("BootNotification")
    await csms.wait_for_call("BootNotification", after=csms.records.index(boots[-1]) + 1)
    assert csms.calls("BootNotification")[-1].payload["reason"] == "RemoteReset"


async def test_reset_of_one_evse(csms, start):
    cp = await start(station={"connectors": 2})
    await booted(csms, evses=2)
    for e in (1, 2):
        cp.mock.plug(e)
        cp.mock.swipe(f"CARD{e}", e)
        await wait_event(csms, eventType="Started", evse={"id": e, "connectorId": 1})
    answer = await csms.call(CP, "Reset", {"type": "Immediate", "evseId": 1})
    assert answer == {"status": "Accepted"}
    end = await wait_event(csms, eventType="Ended")
    assert end.payload["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    await cp.settle()
    assert not cp.task.done()  # the station runs on
    assert cp.agent.core.evses[2].transaction is not None
    assert await csms.call(CP, "Reset", {"type": "Immediate", "evseId": 9}) == {
        "status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}


# ---- transactions ---------------------------------------------------------------------------


async def test_a_whole_transaction(csms, start):
    cp = await start()
    await booted(csms)
    cp.mock.meter(1).energy_wh = 1000.0
    await cp.settle()
    await asyncio.sleep(1.1)
    mark = csms.mark()
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    started = await wait_event(csms, mark, eventType="Started")
    p = started.payload
    assert (p["seqNo"], p["triggerReason"], p["evse"], p["idToken"]) == (
        0, "Authorized", {"id": 1, "connectorId": 1}, {"idToken": "CARD1", "type": "ISO14443"})
    assert p["meterValue"][0]["sampledValue"][0] == {
        "value": 1000, "context": "Transaction.Begin", "measurand":
        "Energy.Active.Import.Register", "location": "Outlet", "unitOfMeasure": {"unit": "Wh"}}
    assert p["numberOfPhasesUsed"] == 3
    ref = p["transactionInfo"]["transactionId"]
    assert len(ref) <= 36
    await wait_event(csms, mark, triggerReason="ChargingStateChanged")
    answer = await csms.call(CP, "GetTransactionStatus", {"transactionId": ref})
    assert answer["ongoingIndicator"] is True
    cp.mock.unplug(1)
    ended = await wait_event(csms, mark, eventType="Ended")
    info = ended.payload["transactionInfo"]
    assert (info["stoppedReason"], ended.payload["triggerReason"], info["chargingState"]) == (
        "EVDisconnected", "EVCommunicationLost", "Idle")
    seqs = [e["seqNo"] for e in events(csms, mark)]
    assert seqs == list(range(len(seqs)))
    for _ in range(100):  # true until the CSMS has confirmed the last event
        answer = await csms.call(CP, "GetTransactionStatus", {"transactionId": ref})
        if not answer["messagesInQueue"]:
            break
        await asyncio.sleep(0.01)
    assert answer == {"ongoingIndicator": False, "messagesInQueue": False}


async def test_start_with_the_cable_then_authorize(csms, start):
    cp = await start()
    await booted(csms)
    assert (await set_(csms, var("TxCtrlr", "TxStartPoint"), "EVConnected"))[
        "attributeStatus"] == "Accepted"
    mark = csms.mark()
    cp.mock.plug(1)
    started = await wait_event(csms, mark, eventType="Started")
    assert started.payload["triggerReason"] == "CablePluggedIn"
    assert "idToken" not in started.payload
    assert started.payload["transactionInfo"]["chargingState"] == "EVConnected"
    await csms.wait_for_call("StatusNotification", after=mark, predicate=lambda p:
                             p["connectorStatus"] == "Occupied")
    cp.mock.swipe("CARD1")
    authorized = await wait_event(csms, mark, triggerReason="Authorized")
    assert authorized.payload["eventType"] == "Updated"
    assert authorized.payload["idToken"]["idToken"] == "CARD1"
    await cp.settle()
    assert cp.agent.hardware.contactors[1].is_closed


async def test_request_start_and_stop(csms, start):
    cp = await start()
    await booted(csms)
    cp.mock.plug(1)
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "APP-42", "type": "Central"}, "remoteStartId": 42, "evseId": 1})
    assert answer == {"status": "Accepted"}
    started = await wait_event(csms, eventType="Started")
    assert started.payload["transactionInfo"]["remoteStartId"] == 42
    assert started.payload["triggerReason"] == "RemoteStart"
    ref = started.payload["transactionInfo"]["transactionId"]
    assert await csms.call(CP, "RequestStopTransaction", {"transactionId": "nope"}) == {
        "status": "Rejected"}
    assert await csms.call(CP, "RequestStopTransaction", {"transactionId": ref}) == {
        "status": "Accepted"}
    ended = await wait_event(csms, eventType="Ended")
    assert (ended.payload["transactionInfo"]["stoppedReason"],
            ended.payload["triggerReason"]) == ("Remote", "RemoteStop")
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "APP-43", "type": "Central"}, "remoteStartId": 43,
        # F01.FR.08: only a TxProfile may come with a start; a default one is refused
        # rather than accepted and then ignored.
        "chargingProfile": {"id": 1, "stackLevel": 0,
                            "chargingProfilePurpose": "TxDefaultProfile",
                            "chargingProfileKind": "Relative", "chargingSchedule": [{
                                "id": 1, "chargingRateUnit": "A",
                                "chargingSchedulePeriod": [{"startPeriod": 0,
                                                            "limit": 6}]}]}})
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "InvalidProfile"


async def test_request_start_on_a_cable_transaction_returns_its_id(csms, start):
    cp = await start()
    await booted(csms)
    await set_(csms, var("TxCtrlr", "TxStartPoint"), "EVConnected")
    await set_(csms, var("AuthCtrlr", "AuthorizeRemoteStart"), "false")
    cp.mock.plug(1)
    started = await wait_event(csms, eventType="Started")
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "APP", "type": "Central"}, "remoteStartId": 5})
    assert answer == {"status": "Accepted",
                      "transactionId": started.payload["transactionInfo"]["transactionId"]}
    update = await wait_event(csms, triggerReason="RemoteStart")
    assert update.payload["transactionInfo"]["remoteStartId"] == 5


async def test_an_invalid_token_in_the_answer_ends_the_transaction(csms, start):
    """Started offline for an unknown card; the CSMS says Invalid once it hears of it."""
    cp = await start()
    await booted(csms)
    await set_(csms, var("AuthCtrlr", "OfflineTxForUnknownIdEnabled"), "true")
    csms.rejected_tags = {"STOLEN"}
    await cp.go_offline()
    cp.mock.plug(1)
    cp.mock.swipe("STOLEN")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is not None
    mark = csms.mark()
    cp.agent.transport.set_network(True)
    started = await wait_event(csms, mark, eventType="Started")
    assert started.payload["offline"] is True
    ended = await wait_event(csms, mark, eventType="Ended")
    assert ended.payload["transactionInfo"]["stoppedReason"] == "DeAuthorized"
    assert ended.payload["triggerReason"] == "Deauthorized"


async def test_meter_values_per_sampled_and_aligned_data(csms, start):
    cp = await start(hardware={"meter": {"driver": "mock", "speedup": 100}})
    await booted(csms)
    await set_(csms, var("SampledDataCtrlr", "TxUpdatedInterval"), "1")
    await set_(csms, var("SampledDataCtrlr", "TxUpdatedMeasurands"),
               "Energy.Active.Import.Register,Current.Offered")
    await set_(csms, var("SampledDataCtrlr", "TxEndedInterval"), "1")
    mark = csms.mark()
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    update = await wait_event(csms, mark, triggerReason="MeterValuePeriodic")
    sampled = update.payload["meterValue"][0]["sampledValue"]
    assert {s["measurand"] for s in sampled} == {"Energy.Active.Import.Register",
                                                 "Current.Offered"}
    offered = next(s for s in sampled if s["measurand"] == "Current.Offered")
    assert offered["value"] == 32 and offered["unitOfMeasure"] == {"unit": "A"}
    await asyncio.sleep(1.5)
    cp.mock.swipe("CARD1")
    ended = await wait_event(csms, mark, eventType="Ended")
    contexts = [v["sampledValue"][0]["context"] for v in ended.payload["meterValue"]]
    assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
    assert "Sample.Periodic" in contexts
    # Outside a transaction: a reading asked for goes as MeterValues.
    mark = csms.mark()
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "MeterValues"}) == {
        "status": "Accepted"}
    values = await csms.wait_for_call("MeterValues", after=mark)
    assert values.payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"


# ---- remote control -------------------------------------------------------------------------


async def test_trigger_message(csms, start):
    cp = await start()
    await booted(csms)
    mark = csms.mark()
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"}) == {
        "status": "Accepted"}
    await csms.wait_for_call("Heartbeat", after=mark)
    answer = await csms.call(CP, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                    "evse": {"id": 1, "connectorId": 1}})
    assert answer == {"status": "Accepted"}
    await csms.wait_for_call("StatusNotification", after=mark)
    answer = await csms.call(CP, "TriggerMessage", {"requestedMessage": "TransactionEvent"})
    assert answer["status"] == "Rejected"  # no transaction to tell of
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    await wait_event(csms, eventType="Started")
    mark = csms.mark()
    answer = await csms.call(CP, "TriggerMessage", {"requestedMessage": "TransactionEvent"})
    assert answer == {"status": "Accepted"}
    triggered = await wait_event(csms, mark, triggerReason="Trigger")
    assert triggered.payload["eventType"] == "Updated"
    answer = await csms.call(CP, "TriggerMessage", {"requestedMessage":
                                                    "LogStatusNotification"})
    assert answer == {"status": "NotImplemented"}  # until the field issue brings logs
    mark = csms.mark()
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "BootNotification"}) \
        == {"status": "Accepted"}
    boot = await csms.wait_for_call("BootNotification", after=mark)
    assert boot.payload["reason"] == "Triggered"


async def test_unlock_connector(csms, start):
    cp = await start()
    await booted(csms)
    assert await csms.call(CP, "UnlockConnector", {"evseId": 3, "connectorId": 1}) == {
        "status": "UnknownConnector"}
    assert await csms.call(CP, "UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "Unlocked"}
    cp.mock.plug(1)
    cp.mock.swipe("CARD1")
    await wait_event(csms, eventType="Started")
    assert await csms.call(CP, "UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "OngoingAuthorizedTransaction"}
    assert cp.agent.core.evses[1].transaction is not None


async def test_data_transfer_unknown_vendor(csms, start):
    await start()
    await booted(csms)
    assert await csms.call(CP, "DataTransfer", {"vendorId": "com.example"}) == {
        "status": "UnknownVendorId"}


# ---- authorization --------------------------------------------------------------------------


async def test_local_list_and_cache(csms, start):
    cp = await start()
    await booted(csms)
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 0}
    full = {"versionNumber": 3, "updateType": "Full", "localAuthorizationList": [
        {"idToken": {"idToken": "GOOD", "type": "ISO14443"},
         "idTokenInfo": {"status": "Accepted"}},
        {"idToken": {"idToken": "ONLY2", "type": "ISO14443"},
         "idTokenInfo": {"status": "Accepted", "evseId": [2]}}]}
    assert (await csms.call(CP, "SendLocalList", full))["status"] == "Accepted"
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 3}
    stale = {"versionNumber": 3, "updateType": "Differential"}
    assert (await csms.call(CP, "SendLocalList", stale))["status"] == "VersionMismatch"
    assert await value_of(csms, "LocalAuthListCtrlr", "Entries") == "2"
    await cp.go_offline()
    cp.mock.plug(1)
    cp.mock.swipe("ONLY2")  # valid on EVSE 2 only
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    cp.mock.swipe("GOOD")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is not None
    cp.agent.transport.set_network(True)
    await csms.wait_for_call("StatusNotification", after=csms.mark())
    assert (await csms.call(CP, "ClearCache", {}))["status"] == "Accepted"


# ---- security profiles 1 and 2, network profiles ---------------------------------------------


async def test_basic_auth_password_is_write_only_and_used_at_once(tmp_path):
    async with DevCsms(subprotocols=("ocpp2.0.1",),
                       basic_auth={CP: "first-password-0001"}) as csms:
        config = make_config(tmp_path / "a", csms.url, csms={"ocpp_version": "2.0.1",
                                                             "password": "first-password-0001"})
        cp = await RunningAgent(config, Clock("system")).start()
        try:
            await booted(csms)
            assert await value_of(csms, "SecurityCtrlr", "SecurityProfile") == "1"
            bad = await set_(csms, var("SecurityCtrlr", "BasicAuthPassword"), "short")
            assert bad["attributeStatus"] == "Rejected"
            csms.basic_auth = {CP: "second-password-0002"}
            result = await set_(csms, var("SecurityCtrlr", "BasicAuthPassword"),
                                "second-password-0002")
            assert result["attributeStatus"] == "Accepted"
            mark = csms.mark()
            await csms.wait_connected(CP)
            await csms.wait_for_call("StatusNotification", after=mark, timeout=10)
            [read] = await get(csms, var("SecurityCtrlr", "BasicAuthPassword"))
            assert read["attributeStatus"] == "Rejected" and "attributeValue" not in read
            snapshot = cp.agent.snapshot()
            assert "second-password" not in str(snapshot)
        finally:
            await cp.stop()


async def test_set_network_profile_validation_and_fallback(csms, start):
    cp = await start()
    await booted(csms)

    def profile(url: str, security: int = 1) -> dict:
        return {"ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url,
                "messageTimeout": 30, "securityProfile": security, "ocppInterface": "Wired0"}

    async def network(slot: int, data: dict) -> str:
        answer = await csms.call(CP, "SetNetworkProfile", {"configurationSlot": slot,
                                                           "connectionData": data})
        return answer["status"]

    assert await network(2, profile("ws://127.0.0.1:1/ocpp", 3)) == "Rejected"
    assert await network(2, profile("ws://127.0.0.1:1/ocpp", 2)) == "Rejected"  # needs wss
    assert await network(9, profile("ws://127.0.0.1:1/ocpp")) == "Rejected"
    # A profile nobody answers at: the station tries it, then falls back to the one that works.
    assert await network(2, profile("ws://127.0.0.1:9/ocpp")) == "Accepted"
    await set_(csms, var("OCPPCommCtrlr", "NetworkProfileConnectionAttempts"), "2")
    assert (await set_(csms, var("OCPPCommCtrlr", "NetworkConfigurationPriority"), "2,1"))[
        "attributeStatus"] == "Accepted"
    mark = csms.mark()
    await csms.wait_for_call("StatusNotification", after=mark, timeout=20)
    assert cp.agent.transport.fallbacks
    assert "falling back" in cp.agent.transport.fallbacks[-1]
    assert (await set_(csms, var("OCPPCommCtrlr", "NetworkConfigurationPriority"), "4"))[
        "attributeStatus"] == "Rejected"  # no profile in slot 4
