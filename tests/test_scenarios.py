"""Charging sessions played against two CSMSs that share no code with each other or with us:
the dev CSMS on the `ocpp` package, and the npm package ocpp-rpc in strict mode, which checks
every frame against the official schemas (date-time formats included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import RunningAgent, make_config
from ocpp_rpc_csms import OcppRpcCsms, ocpp_rpc_available

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from hal.interfaces import Fault


@pytest.fixture(params=["dev", "ocpp-rpc"])
async def peer(request) -> AsyncIterator[DevCsms | OcppRpcCsms]:
    if request.param == "dev":
        async with DevCsms() as csms:
            yield csms
        return
    missing = ocpp_rpc_available()
    if missing:
        pytest.skip(f"ocpp-rpc CSMS unavailable: {missing}")
    async with OcppRpcCsms() as csms:
        yield csms
        # The independent CSMS must have found nothing wrong with anything we sent.
        assert csms.bad_frames == []


@pytest.fixture
async def charger(peer, tmp_path: Path) -> AsyncIterator[RunningAgent]:
    config = make_config(tmp_path / "agent", peer.url, station={"connectors": 2})
    agent = RunningAgent(config, Clock("system"))
    await agent.start()
    await peer.wait_for_call("StatusNotification", predicate=lambda p: p["connectorId"] == 2)
    yield agent
    await agent.stop()


def status(value: str, connector: int = 1):
    return lambda p: p["connectorId"] == connector and p["status"] == value


async def charge(peer, charger, tag: str = "04A2B3C4", connector: int = 1):
    mark = peer.mark()
    charger.mock.plug(connector)
    charger.mock.swipe(tag, connector)
    start = await peer.wait_for_call("StartTransaction", after=mark)
    await peer.wait_for_call("StatusNotification", predicate=status("Charging", connector),
                             after=mark)
    return start


async def test_card_then_plug_then_card_then_unplug(peer, charger):
    mark = peer.mark()
    charger.mock.swipe("04A2B3C4")
    await peer.wait_for_call("Authorize", after=mark)
    charger.mock.plug(1)
    start = await peer.wait_for_call("StartTransaction", after=mark)
    await peer.wait_for_call("StatusNotification", predicate=status("Charging"), after=mark)
    charger.mock.swipe("04A2B3C4")
    stop = await peer.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Local"
    assert stop.payload["meterStop"] >= start.payload["meterStart"]
    charger.mock.unplug(1)
    await peer.wait_for_call("StatusNotification", predicate=status("Available"),
                             after=peer.mark() - 1)


async def test_unplug_mid_session_stops_with_ev_disconnected(peer, charger):
    start = await charge(peer, charger)
    charger.mock.unplug(1)
    stop = await peer.wait_for_call("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
    transaction_ids = [r.payload for r in peer.records
                       if r.kind == "result" and r.action == "StartTransaction"]
    assert stop.payload["transactionId"] == transaction_ids[-1]["transactionId"]
    assert start.payload["connectorId"] == 1


async def test_ev_suspends_and_resumes(peer, charger):
    await charge(peer, charger)
    mark = peer.mark()
    charger.mock.suspend(1)
    await peer.wait_for_call("StatusNotification", predicate=status("SuspendedEV"), after=mark)
    assert not charger.agent.hardware.contactors[1].is_closed
    charger.mock.resume(1)
    await peer.wait_for_call("StatusNotification", predicate=status("Charging"), after=mark)
    assert charger.agent.hardware.contactors[1].is_closed


async def test_invalid_id_tag_never_starts(peer, charger):
    peer.rejected_tags = {"STOLEN"}
    mark = peer.mark()
    charger.mock.plug(1)
    charger.mock.swipe("STOLEN")
    await peer.wait_for_call("Authorize", after=mark)
    await charger.settle()
    assert not peer.calls("StartTransaction")
    assert not charger.agent.hardware.contactors[1].is_closed
    assert await charger.status(1) == "Preparing"


async def test_fault_mid_session(peer, charger):
    await charge(peer, charger)
    mark = peer.mark()
    charger.mock.fault(Fault.GROUND_FAILURE, 1)
    stop = await peer.wait_for_call("StopTransaction", after=mark)
    assert stop.payload["reason"] == "Other"
    faulted = await peer.wait_for_call("StatusNotification", predicate=status("Faulted"),
                                       after=mark)
    assert faulted.payload["errorCode"] == "GroundFailure"
    assert not charger.agent.hardware.contactors[1].is_closed


async def test_remote_start_and_stop_on_the_second_connector(peer, charger):
    charger.mock.plug(2)
    await peer.wait_for_call("StatusNotification", predicate=status("Preparing", 2))
    answer = await peer.call("CP-TEST", "RemoteStartTransaction",
                             {"idTag": "REMOTE1", "connectorId": 2})
    assert answer == {"status": "Accepted"}
    start = await peer.wait_for_call("StartTransaction")
    assert start.payload["connectorId"] == 2
    await peer.wait_for_call("StatusNotification", predicate=status("Charging", 2))
    started = [r.payload for r in peer.records
               if r.kind == "result" and r.action == "StartTransaction"][-1]
    busy = await peer.call("CP-TEST", "RemoteStartTransaction",
                           {"idTag": "REMOTE2", "connectorId": 2})
    assert busy == {"status": "Rejected"}
    answer = await peer.call("CP-TEST", "RemoteStopTransaction",
                             {"transactionId": started["transactionId"]})
    assert answer == {"status": "Accepted"}
    stop = await peer.wait_for_call("StopTransaction")
    assert stop.payload["reason"] == "Remote"


async def test_reset_during_a_session_stops_it_first(peer, charger):
    await charge(peer, charger)
    answer = await peer.call("CP-TEST", "Reset", {"type": "Soft"})
    assert answer == {"status": "Accepted"}
    stop = await peer.wait_for_call("StopTransaction")
    assert stop.payload["reason"] == "SoftReset"
    assert await charger.task == "soft"


async def test_meter_values_during_a_session(peer, charger):
    answer = await peer.call("CP-TEST", "ChangeConfiguration",
                             {"key": "MeterValueSampleInterval", "value": "1"})
    assert answer == {"status": "Accepted"}
    await charge(peer, charger)
    values = await peer.wait_for_call("MeterValues", timeout=5)
    sampled = values.payload["meterValue"][0]["sampledValue"]
    assert {s["measurand"] for s in sampled} == {"Energy.Active.Import.Register",
                                                 "Power.Active.Import"}
    assert "transactionId" in values.payload
