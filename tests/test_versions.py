"""Which OCPP version a link speaks, and what becomes of records written under the other.

`csms.ocpp_version` is 1.6, 2.0.1 or auto; with auto the CSMS's choice of subprotocol wins,
is remembered, and is offered first after a restart. Queued records are version-neutral: a
transaction recorded under one version and delivered after a switch is rendered for the link
that delivers it, whole.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms

CP = "CP-TEST"


async def agent_on(data: Path, url: str, version: str, **sections) -> RunningAgent:
    config = make_config(data, url, csms={"ocpp_version": version}, **sections)
    return await RunningAgent(config, Clock("system")).start()


async def test_auto_speaks_what_a_single_version_server_agrees(tmp_path):
    for offered, agreed in (("ocpp1.6", "1.6"), ("ocpp2.0.1", "2.0.1")):
        async with DevCsms(subprotocols=(offered,)) as csms:
            cp = await agent_on(tmp_path / offered, csms.url, "auto")
            try:
                await csms.wait_for_call("BootNotification")
                assert csms.subprotocol(CP) == offered
                await asyncio.sleep(0.05)
                status = cp.agent.snapshot()["connection"]
                assert status["ocpp_version"] == agreed
                assert status["offered"] == ["ocpp2.0.1", "ocpp1.6"]
            finally:
                await cp.stop()


async def test_auto_remembers_the_agreed_version_and_offers_it_first(tmp_path):
    data = tmp_path / "agent"
    async with DevCsms(subprotocols=("ocpp1.6",)) as csms:
        cp = await agent_on(data, csms.url, "auto")
        await csms.wait_for_call("BootNotification")
        await cp.stop()
    # A server speaking both: the charger offers the version it was on first, so a server
    # that honours the client's order does not switch it silently.
    async with DevCsms(subprotocols=("ocpp1.6", "ocpp2.0.1")) as csms:
        cp = await agent_on(data, csms.url, "auto")
        try:
            await csms.wait_for_call("BootNotification")
            assert cp.agent.transport.settings.versions == ["1.6", "2.0.1"]
            assert csms.subprotocol(CP) == "ocpp1.6"
        finally:
            await cp.stop()


async def test_a_fixed_version_is_all_that_is_offered(tmp_path):
    async with DevCsms(subprotocols=("ocpp2.0.1", "ocpp1.6")) as csms:
        cp = await agent_on(tmp_path / "a", csms.url, "1.6")
        try:
            await csms.wait_for_call("BootNotification")
            assert csms.subprotocol(CP) == "ocpp1.6"
            assert cp.agent.snapshot()["connection"]["offered"] == ["ocpp1.6"]
        finally:
            await cp.stop()


async def test_a_server_that_agrees_to_none_is_explained(tmp_path):
    async with DevCsms(subprotocols=("ocpp2.1",)) as csms:
        cp = await agent_on(tmp_path / "a", csms.url, "auto")
        try:
            for _ in range(200):
                error = cp.agent.snapshot()["last_error"]
                if error:
                    break
                await asyncio.sleep(0.02)
            assert error is not None
            assert "subprotocol" in error or "HTTP 400" in error, error
            assert not csms.calls("BootNotification")
        finally:
            await cp.stop()


async def test_a_16_session_recorded_offline_is_delivered_whole_under_201(tmp_path):
    data = tmp_path / "agent"
    async with DevCsms() as old:
        cp = await agent_on(data, old.url, "1.6")
        await old.wait_for_call("StatusNotification")
        assert (await old.call(CP, "ChangeConfiguration", {
            "key": "AllowOfflineTxForUnknownId", "value": "true"}))["status"] == "Accepted"
        await cp.go_offline()
        cp.mock.meter(1).energy_wh = 500.0
        await asyncio.sleep(1.1)  # a meter poll
        cp.mock.plug(1)
        cp.mock.swipe("OFFLINE1")
        await cp.settle()
        cp.mock.swipe("OFFLINE1")
        await cp.settle()
        cp.mock.unplug(1)
        await cp.settle()
        await cp.stop()
        assert not old.calls("StartTransaction")
    async with DevCsms(subprotocols=("ocpp2.0.1",)) as new:
        cp = await agent_on(data, new.url, "2.0.1")
        try:
            ended = await new.wait_for_call("TransactionEvent",
                                            predicate=lambda p: p["eventType"] == "Ended")
            events = [r.payload for r in new.calls("TransactionEvent")]
            assert events[0]["eventType"] == "Started" and events[-1] is ended.payload
            assert [e["seqNo"] for e in events] == list(range(len(events)))
            assert events[0]["idToken"]["idToken"] == "OFFLINE1"
            assert events[0]["evse"] == {"id": 1, "connectorId": 1}
            assert all(e["offline"] for e in events)
            assert ended.payload["transactionInfo"]["stoppedReason"] == "Local"
            assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
        finally:
            await cp.stop()


async def test_a_201_session_begun_with_the_cable_is_delivered_whole_under_16(tmp_path):
    data = tmp_path / "agent"
    async with DevCsms(subprotocols=("ocpp2.0.1",)) as new:
        cp = await agent_on(data, new.url, "2.0.1")
        await new.wait_for_call("StatusNotification")
        for component, name, value in (("TxCtrlr", "TxStartPoint", "EVConnected"),
                                       ("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "true")):
            answer = await new.call(CP, "SetVariables", {"setVariableData": [{
                "component": {"name": component}, "variable": {"name": name},
                "attributeValue": value}]})
            assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
        await cp.go_offline()
        cp.mock.plug(1)  # the transaction begins here, nobody's yet
        await cp.settle()
        await asyncio.sleep(0.2)
        cp.mock.swipe("LATE")  # authorized afterwards
        await cp.settle()
        cp.mock.unplug(1)
        await cp.settle()
        await cp.stop()
    async with DevCsms() as old:
        cp = await agent_on(data, old.url, "1.6")
        try:
            stop = await old.wait_for_call("StopTransaction")
            [start] = old.calls("StartTransaction")
            assert start.payload["idTag"] == "LATE"
            tx_id = next(r.payload for r in old.records if r.kind == "result"
                         and r.action == "StartTransaction")["transactionId"]
            assert stop.payload["transactionId"] == tx_id
            assert stop.payload["reason"] == "EVDisconnected"
            assert old.records.index(start) < old.records.index(stop)
        finally:
            await cp.stop()


async def test_the_end_of_a_16_session_after_the_switch_reaches_the_201_csms(tmp_path):
    """Started under 1.6 (delivered), ended offline, delivered under 2.0.1: the CSMS that
    never saw the start still learns where and for whom the session ran."""
    data = tmp_path / "agent"
    async with DevCsms() as old:
        cp = await agent_on(data, old.url, "1.6")
        await old.wait_for_call("StatusNotification")
        cp.mock.plug(1)
        cp.mock.swipe("CARD1")
        await old.wait_for_call("StartTransaction")
        await cp.settle()
        await asyncio.sleep(0.2)
        await cp.go_offline()
        cp.mock.swipe("CARD1")
        await cp.settle()
        await cp.stop()
    async with DevCsms(subprotocols=("ocpp2.0.1",)) as new:
        cp = await agent_on(data, new.url, "2.0.1")
        try:
            ended = await new.wait_for_call("TransactionEvent",
                                            predicate=lambda p: p["eventType"] == "Ended")
            first = new.calls("TransactionEvent")[0].payload
            assert first["evse"] == {"id": 1, "connectorId": 1}
            assert "idToken" in first
            assert ended.payload["transactionInfo"]["stoppedReason"] == "Local"
        finally:
            await cp.stop()
