"""Reservations end to end, against the dev CSMS (schemas checked both ways) in OCPP 1.6
(Reservation profile: ReserveNow, CancelReservation) and 2.0.1 (block H: ReserveNow,
CancelReservation, ReservationStatusUpdate), on the mock hardware: what the CSMS is answered
and sees, who may charge on a reserved EVSE, how a reservation ends, and that it outlives a
restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from dialects import DIALECTS, Dialect
from harness import RunningAgent, make_config

from cpagent.clock import Clock, format_time
from cpagent.core.model import ConnectorStatus
from cpagent.devcsms import DevCsms, Record
from hal.interfaces import Fault


class Booking:
    """The reservation messages of one version, and the rest of its dialect."""

    def __init__(self, peer: DevCsms) -> None:
        self.say: Dialect = DIALECTS[peer.version](peer)
        self.peer = peer
        self.v16 = peer.version == "1.6"

    async def reserve(self, rid: int, tag: str, evse: int | None = 1, *, seconds: float = 3600,
                      group: str | None = None, connector_type: str | None = None,
                      kind: str = "ISO14443") -> str:
        expiry = format_time(time.time() + seconds)
        payload: dict[str, Any]
        if self.v16:
            payload = {"connectorId": evse or 0, "expiryDate": expiry, "idTag": tag,
                       "reservationId": rid}
            if group:
                payload["parentIdTag"] = group
        else:
            payload = {"id": rid, "expiryDateTime": expiry,
                       "idToken": {"idToken": tag, "type": kind}}
            if evse is not None:
                payload["evseId"] = evse
            if group:
                payload["groupIdToken"] = {"idToken": group, "type": "Central"}
            if connector_type:
                payload["connectorType"] = connector_type
        return (await self.say.call("ReserveNow", payload))["status"]

    async def cancel(self, rid: int) -> str:
        return (await self.say.call("CancelReservation", {"reservationId": rid}))["status"]

    async def inoperative(self, evse: int) -> None:
        if self.v16:
            payload: dict[str, Any] = {"connectorId": evse, "type": "Inoperative"}
        else:
            payload = {"operationalStatus": "Inoperative", "evse": {"id": evse}}
        assert (await self.say.call("ChangeAvailability", payload))["status"] == "Accepted"

    def updates(self, after: int = 0) -> list[dict]:
        return [r.payload for r in self.peer.records[after:]
                if r.kind == "call" and r.action == "ReservationStatusUpdate"]

    def starts(self, after: int = 0) -> list[Record]:
        action = "StartTransaction" if self.v16 else "TransactionEvent"
        return [r for r in self.peer.records[after:] if r.kind == "call" and r.action == action
                and (self.v16 or r.payload["eventType"] == "Started")]


@pytest.fixture
async def book(peer: DevCsms) -> Booking:
    return Booking(peer)


@pytest.fixture
async def start(tmp_path, peer) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningAgent] = []

    async def start_agent(connectors: int = 2) -> RunningAgent:
        config = make_config(tmp_path / "agent", peer.url, station={"connectors": connectors},
                             csms={"ocpp_version": peer.version})
        agent = RunningAgent(config, Clock("system"))
        running.append(agent)
        await agent.start()
        await DIALECTS[peer.version](peer).wait_status("Available", connectors)
        return agent

    yield start_agent
    for agent in running:
        await agent.stop()


async def core_status(cp: RunningAgent, evse: int) -> ConnectorStatus:
    return (await cp.agent.ask(lambda core, now: core.status(evse)))[0]


async def refused(cp: RunningAgent, book: Booking, tag: str, evse: int) -> None:
    """A card at a reserved EVSE: no session, and the EVSE stays Reserved."""
    mark = book.peer.mark()
    cp.mock.swipe(tag, evse)
    await asyncio.sleep(0.2)
    await cp.settle()
    assert book.starts(mark) == []
    assert await core_status(cp, evse) is ConnectorStatus.RESERVED
    assert not cp.agent.hardware.contactors[evse].is_closed


async def charges(cp: RunningAgent, book: Booking, tag: str, evse: int, after: int) -> Record:
    cp.mock.swipe(tag, evse)
    start = await book.say.wait_start(after=after, evse=evse)
    await book.say.wait_charging(evse, after=after)
    return start


# ---- a reservation and its driver -------------------------------------------------------------


async def test_only_the_reserved_card_charges_and_its_start_names_the_reservation(
        start, book):
    cp = await start()
    mark = book.peer.mark()
    assert await book.reserve(11, "OWNER1", 1) == "Accepted"
    await book.say.wait_status("Reserved", 1, after=mark)
    cp.mock.plug(1)
    await refused(cp, book, "STRANGER", 1)  # a car alone, or another card, changes nothing
    assert not [r for r in book.peer.records[mark:] if r.action == "Authorize"]
    started = await charges(cp, book, "OWNER1", 1, mark)
    assert started.payload["reservationId"] == 11
    assert book.updates(mark) == []  # a used reservation needs no update (2.0.1 H03)
    # Used: the next session knows nothing of it.
    mark = book.peer.mark()
    cp.mock.swipe("OWNER1", 1)
    await book.say.wait_end(after=mark)
    cp.mock.unplug(1)
    await book.say.wait_status("Available", 1, after=mark)
    assert await core_status(cp, 1) is ConnectorStatus.AVAILABLE


async def test_a_member_of_the_reservations_group_may_use_it(start, book):
    book.peer.parent_id_tags = {"MEMBER": "FLEET", "OUTSIDER": "OTHER"}
    cp = await start()
    mark = book.peer.mark()
    assert await book.reserve(12, "OWNER1", 1, group="FLEET") == "Accepted"
    await book.say.wait_status("Reserved", 1, after=mark)
    cp.mock.plug(1)
    # Only its authorization tells a card's group: it is asked, and refused for another.
    await refused(cp, book, "OUTSIDER", 1)
    asked = [r.payload for r in book.peer.calls("Authorize")]
    assert asked[-1] in ({"idTag": "OUTSIDER"},
                         {"idToken": {"idToken": "OUTSIDER", "type": "ISO14443"}})
    started = await charges(cp, book, "MEMBER", 1, mark)
    assert started.payload["reservationId"] == 12


async def test_remote_start_for_another_token_is_refused(start, book):
    cp = await start()
    await book.reserve(13, "OWNER1", 1, kind="Central")  # 2.0.1 compares the types too
    assert (await book.say.remote_start("STRANGER", 1))["status"] == "Rejected"
    assert (await book.say.remote_start("STRANGER", 2))["status"] == "Accepted"
    mark = book.peer.mark()
    assert (await book.say.remote_start("OWNER1", 1, remote_id=2))["status"] == "Accepted"
    cp.mock.plug(1)
    started = await book.say.wait_start(after=mark, evse=1)
    assert started.payload["reservationId"] == 13


# ---- how it ends ------------------------------------------------------------------------------


async def test_expiry_makes_it_available_and_2_0_1_says_expired(start, book):
    await start()
    mark = book.peer.mark()
    assert await book.reserve(21, "OWNER1", 1, seconds=1.5) == "Accepted"
    await book.say.wait_status("Reserved", 1, after=mark)
    await book.say.wait_status("Available", 1, after=mark + 1, timeout=5)
    if book.v16:
        assert book.updates(mark) == []  # 1.6 has only the status to say it
    else:
        update = await book.peer.wait_for_call("ReservationStatusUpdate", after=mark)
        assert update.payload == {"reservationId": 21, "reservationUpdateStatus": "Expired"}


async def test_cancel_makes_it_available_without_an_update(start, book):
    cp = await start()
    mark = book.peer.mark()
    await book.reserve(22, "OWNER1", 2)
    await book.say.wait_status("Reserved", 2, after=mark)
    assert await book.cancel(22) == "Accepted"
    await book.say.wait_status("Available", 2, after=mark + 1)
    assert await book.cancel(22) == "Rejected"
    assert await book.cancel(99) == "Rejected"
    await cp.settle()
    assert book.updates(mark) == []  # H02: the status says it


async def test_the_same_id_replaces_it(start, book):
    await start()
    mark = book.peer.mark()
    await book.reserve(23, "OWNER1", 1)
    await book.say.wait_status("Reserved", 1, after=mark)
    mark = book.peer.mark()
    assert await book.reserve(23, "OWNER1", 2) == "Accepted"
    await book.say.wait_status("Available", 1, after=mark)
    await book.say.wait_status("Reserved", 2, after=mark)


async def test_a_fault_removes_it_and_afterwards_the_evse_is_available(start, book):
    cp = await start()
    mark = book.peer.mark()
    await book.reserve(24, "OWNER1", 1)
    await book.say.wait_status("Reserved", 1, after=mark)
    cp.mock.fault(Fault.GROUND_FAILURE, 1)
    await book.say.wait_status("Faulted", 1, after=mark)
    if not book.v16:  # the OCTT's TC_H_20
        update = await book.peer.wait_for_call("ReservationStatusUpdate", after=mark)
        assert update.payload == {"reservationId": 24, "reservationUpdateStatus": "Removed"}
    mark = book.peer.mark()
    cp.mock.clear_fault(1)
    await book.say.wait_status("Available", 1, after=mark)


async def test_unavailable_removes_it(start, book):
    cp = await start()
    mark = book.peer.mark()
    await book.reserve(25, "OWNER1", 1)
    await book.say.wait_status("Reserved", 1, after=mark)
    await book.inoperative(1)
    await book.say.wait_status("Unavailable", 1, after=mark)
    await cp.settle()
    assert await cp.agent.ask(lambda core, now: core.reservations.all()) == []
    if not book.v16:  # the OCTT's TC_H_21
        update = await book.peer.wait_for_call("ReservationStatusUpdate", after=mark)
        assert update.payload["reservationUpdateStatus"] == "Removed"


# ---- what cannot be reserved ------------------------------------------------------------------


async def test_faulted_occupied_unavailable_and_rejected_answers(start, book):
    cp = await start(connectors=3)
    cp.mock.fault(Fault.GROUND_FAILURE, 1)
    await book.say.wait_status("Faulted", 1)
    assert await book.reserve(31, "A", 1) == "Faulted"
    mark = book.peer.mark()
    cp.mock.plug(2)
    cp.mock.swipe("DRIVER", 2)
    await book.say.wait_charging(2, after=mark)
    assert await book.reserve(32, "A", 2) == "Occupied"
    assert await book.reserve(33, "A", 3) == "Accepted"
    assert await book.reserve(34, "B", 3) == "Occupied"  # reserved by another reservation
    assert await book.reserve(35, "B", None) == "Occupied"  # nothing free is left
    assert await book.cancel(33) == "Accepted"
    await book.inoperative(3)
    assert await book.reserve(36, "A", 3) == "Unavailable"
    assert await book.reserve(37, "A", 9) == "Rejected"  # no such EVSE
    assert await book.reserve(38, "A", 3, seconds=-60) == "Rejected"  # expired already


async def test_what_each_version_offers_and_2_0_1_switching_it_off(start, book):
    if book.v16:
        await start()
        answer = await book.say.call("GetConfiguration", {"key": [
            "ReserveConnectorZeroSupported", "SupportedFeatureProfiles"]})
        keys = {k["key"]: k for k in answer["configurationKey"]}
        assert keys["ReserveConnectorZeroSupported"] == {
            "key": "ReserveConnectorZeroSupported", "readonly": True, "value": "true"}
        assert "Reservation" in keys["SupportedFeatureProfiles"]["value"].split(",")
        return
    await start()

    async def set_variable(name: str, value: str) -> None:
        answer = await book.say.call("SetVariables", {"setVariableData": [{
            "component": {"name": "ReservationCtrlr"}, "variable": {"name": name},
            "attributeValue": value}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"

    await set_variable("NonEvseSpecific", "false")
    assert await book.reserve(41, "A", None) == "Rejected"
    assert await book.reserve(42, "A", 1) == "Accepted"
    await set_variable("Enabled", "false")
    assert await book.reserve(43, "A", 2) == "Rejected"  # the OCTT's TC_H_22


# ---- any EVSE ---------------------------------------------------------------------------------


async def test_any_evse_reservations_keep_one_free_for_each(start, book):
    cp = await start()
    mark = book.peer.mark()
    assert await book.reserve(51, "OWNER1", None) == "Accepted"  # 1.6 connector 0
    await cp.settle()
    assert [await core_status(cp, e) for e in (1, 2)] == [ConnectorStatus.AVAILABLE] * 2
    assert await book.reserve(52, "OWNER2", None) == "Accepted"
    await book.say.wait_status("Reserved", 1, after=mark)
    await book.say.wait_status("Reserved", 2, after=mark)
    assert await book.reserve(53, "OWNER3", None) == "Occupied"
    cp.mock.plug(1)
    await refused(cp, book, "STRANGER", 1)
    started = await charges(cp, book, "OWNER2", 1, mark)
    assert started.payload["reservationId"] == 52
    assert await core_status(cp, 2) is ConnectorStatus.RESERVED  # still kept for OWNER1


async def test_a_reservation_for_a_connector_type(start, book):
    if book.v16:
        pytest.skip("connector types are 2.0.1's")
    await start()
    mark = book.peer.mark()
    # The mock EVSEs have sockets (a lock): their connectors are sType2.
    assert await book.reserve(61, "A", None, connector_type="cCCS2") == "Rejected"
    assert await book.reserve(62, "A", None, connector_type="sType2") == "Accepted"
    assert await book.reserve(63, "B", 1, connector_type="sType2") == "Accepted"
    await book.say.wait_status("Reserved", 2, after=mark)  # the one left for 62


# ---- across a restart -------------------------------------------------------------------------


async def test_reservations_outlive_a_restart(start, book):
    cp = await start()
    mark = book.peer.mark()
    assert await book.reserve(71, "OWNER1", 1) == "Accepted"
    assert await book.reserve(72, "OWNER2", 2, seconds=1.0) == "Accepted"
    await book.say.wait_status("Reserved", 2, after=mark)
    await cp.stop()
    await asyncio.sleep(1.2)  # 72 expires while the agent is off
    mark = book.peer.mark()
    await cp.start()
    await book.say.wait_status("Reserved", 1, after=mark)  # told at connection, as it is
    await book.say.wait_status("Available", 2, after=mark)
    if not book.v16:
        update = await book.peer.wait_for_call("ReservationStatusUpdate", after=mark)
        assert update.payload == {"reservationId": 72, "reservationUpdateStatus": "Expired"}
    cp.mock.plug(1)
    await refused(cp, book, "STRANGER", 1)
    started = await charges(cp, book, "OWNER1", 1, mark)
    assert started.payload["reservationId"] == 71
    assert await cp.agent.ask(lambda core, now: core.reservations.all()) == []
