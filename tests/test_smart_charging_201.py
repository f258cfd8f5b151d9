"""OCPP 2.0.1 block K (smart charging) end to end: a charger on the mock hardware against the
loopback dev CSMS, which checks every frame against the 2.0.1 JSON schemas.

The expectations come from the specification (Part 2 block K, the SmartChargingCtrlr
variables of the components-and-variables list) and are worked out by hand in each test:
amps per phase, 230 V, three phases (so 1 A is 690 W), a hardware maximum of 32 A per EVSE.
The station runs on the system clock, so schedules are laid on real time a few seconds ahead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms, Record

CP = "CP-TEST"
HARDWARE_MAX = 32.0  # station.max_current's default, amps per phase
WATTS_PER_AMP = 230.0 * 3  # one amp on each of three phases at 230 V
CTRLR = "SmartChargingCtrlr"


# ---- the station and the CSMS ---------------------------------------------------------------


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


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 3.0) -> float:
    """Poll until `condition` holds; the wall-clock time it was first seen to."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)
    return time.time()


def pilot(cp: RunningAgent, evse: int = 1) -> float:
    """The current the control pilot offers the vehicle, in amps."""
    return cp.mock.hardware.pilots[evse].current_limit


def closed(cp: RunningAgent, evse: int = 1) -> bool:
    return cp.mock.hardware.contactors[evse].is_closed


# ---- wire builders ----------------------------------------------------------------------------


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def whole_second() -> int:
    return math.floor(time.time())


def profile(pid: int, purpose: str, periods: list[tuple[int, float]], *, level: int = 0,
            kind: str = "Absolute", start: float | str | None = "default", unit: str = "A",
            duration: int | None = None, valid_from: float | None = None,
            valid_to: float | None = None, transaction: str | None = None,
            recurrency: str | None = None) -> dict:
    """A ChargingProfileType. An Absolute or Recurring schedule starts an hour ago unless
    told otherwise, so its first period is in force now; a Relative one has no start."""
    if start == "default":
        start = None if kind == "Relative" else whole_second() - 3600
    schedule: dict[str, Any] = {
        "id": pid, "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": limit} for s, limit in periods]}
    if start is not None:
        schedule["startSchedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    wire: dict[str, Any] = {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
                            "chargingProfileKind": kind, "chargingSchedule": [schedule]}
    if valid_from is not None:
        wire["validFrom"] = iso(valid_from)
    if valid_to is not None:
        wire["validTo"] = iso(valid_to)
    if transaction is not None:
        wire["transactionId"] = transaction
    if recurrency is not None:
        wire["recurrencyKind"] = recurrency
    return wire


def default_profile(pid: int, amps: float, **kw: Any) -> dict:
    return profile(pid, "TxDefaultProfile", [(0, amps)], **kw)


async def set_profile(csms: DevCsms, evse: int, wire: dict) -> str:
    answer = await csms.call(CP, "SetChargingProfile", {"evseId": evse, "chargingProfile": wire})
    return answer["status"]


async def install(csms: DevCsms, evse: int, wire: dict) -> None:
    status = await set_profile(csms, evse, wire)
    assert status == "Accepted", (evse, wire)


# ---- the device model -----------------------------------------------------------------------


def var(name: str, instance: str | None = None) -> dict:
    variable: dict[str, Any] = {"name": name}
    if instance:
        variable["instance"] = instance
    return {"component": {"name": CTRLR}, "variable": variable}


async def read(csms: DevCsms, name: str, instance: str | None = None) -> str:
    answer = await csms.call(CP, "GetVariables", {"getVariableData": [var(name, instance)]})
    [result] = answer["getVariableResult"]
    assert result["attributeStatus"] == "Accepted", result
    return result["attributeValue"]


async def write(csms: DevCsms, name: str, value: str, instance: str | None = None) -> str:
    answer = await csms.call(CP, "SetVariables", {"setVariableData": [
        {**var(name, instance), "attributeValue": value}]})
    return answer["setVariableResult"][0]["attributeStatus"]


async def entries_max(csms: DevCsms) -> int:
    """Entries[ChargingProfiles]'s maxLimit: how many profiles the station says it holds."""
    mark = csms.mark()
    answer = await csms.call(CP, "GetReport", {"requestId": 77, "componentVariable": [
        var("Entries", "ChargingProfiles")]})
    assert answer["status"] == "Accepted"
    report = await csms.wait_for_call("NotifyReport", after=mark,
                                      predicate=lambda p: p["requestId"] == 77)
    [entry] = report.payload["reportData"]
    return int(entry["variableCharacteristics"]["maxLimit"])


# ---- transactions -----------------------------------------------------------------------------


async def wait_event(csms: DevCsms, after: int, timeout: float = 3.0,
                     **fields: Any) -> Record:
    """The next TransactionEvent whose top-level or transactionInfo fields match."""
    def match(p: dict) -> bool:
        info = p["transactionInfo"]
        return all(p.get(k, info.get(k)) == v for k, v in fields.items())
    return await csms.wait_for_call("TransactionEvent", after=after, predicate=match,
                                    timeout=timeout)


async def charge(cp: RunningAgent, csms: DevCsms, evse: int = 1, card: str = "CARD1") -> str:
    """Plug in and present a card; the 2.0.1 transactionId of the session once it charges."""
    mark = csms.mark()
    cp.mock.plug(evse)
    cp.mock.swipe(card, evse)
    started = await csms.wait_for_call("TransactionEvent", after=mark, predicate=lambda p:
                                       p["eventType"] == "Started" and p["evse"]["id"] == evse)
    # Up to 5 s more when the supply is shared: the other vehicle's time to follow its lower
    # offer (IEC 61851-1) before this one is offered its share.
    await wait_until(lambda: closed(cp, evse), f"EVSE {evse} charges", timeout=8.0)
    return started.payload["transactionInfo"]["transactionId"]


def sent(csms: DevCsms, action: str, after: int = 0) -> list[dict]:
    """The payloads of the calls the station made since `after`."""
    return [r.payload for r in csms.records[after:]
            if r.direction == "cp->csms" and r.kind == "call" and r.action == action]


# ---- block K reports --------------------------------------------------------------------------


async def get_profiles(csms: DevCsms, request_id: int, criteria: dict,
                       evse: int | None = None) -> tuple[str, list[dict]]:
    """GetChargingProfiles: its status and the ReportChargingProfiles parts that follow."""
    mark = csms.mark()
    payload: dict[str, Any] = {"requestId": request_id, "chargingProfile": criteria}
    if evse is not None:
        payload["evseId"] = evse
    status = (await csms.call(CP, "GetChargingProfiles", payload))["status"]
    if status != "Accepted":
        return status, []
    parts, after = [], mark
    while True:
        part = await csms.wait_for_call("ReportChargingProfiles", after=after, timeout=3,
                                        predicate=lambda p: p["requestId"] == request_id)
        after = csms.records.index(part) + 1
        parts.append(part.payload)
        if not part.payload.get("tbc", False):
            return status, parts


def reported(parts: list[dict]) -> dict[int, int]:
    """{profile id: the evseId of the part that carried it}."""
    found: dict[int, int] = {}
    for part in parts:
        for p in part["chargingProfile"]:
            assert p["id"] not in found, f"profile {p['id']} reported twice"
            found[p["id"]] = part["evseId"]
    return found


def check_parts(parts: list[dict], request_id: int) -> None:
    """Every part answers the request, names the CSMS's profiles as the CSO's, and all but
    the last say more is to come (K09)."""
    assert parts
    assert all(p["requestId"] == request_id for p in parts)
    assert all(p["chargingLimitSource"] == "CSO" for p in parts)
    assert [bool(p.get("tbc", False)) for p in parts] == [True] * (len(parts) - 1) + [False]


async def composite(csms: DevCsms, evse: int, duration: int, unit: str | None = None) -> dict:
    payload: dict[str, Any] = {"evseId": evse, "duration": duration}
    if unit is not None:
        payload["chargingRateUnit"] = unit
    return await csms.call(CP, "GetCompositeSchedule", payload)


def periods_of(answer: dict) -> list[tuple[int, float]]:
    return [(p["startPeriod"], p["limit"]) for p in answer["schedule"]["chargingSchedulePeriod"]]


# ---- SmartChargingCtrlr ---------------------------------------------------------------------


async def test_smart_charging_ctrlr_variables_read_and_write(csms, start):
    await start()
    await booted(csms)
    assert await read(csms, "Available") == "true"
    assert await read(csms, "Enabled") == "true"
    assert await read(csms, "Entries", "ChargingProfiles") == "0"
    assert float(await read(csms, "LimitChangeSignificance")) >= 0
    assert await read(csms, "NotifyChargingLimitWithSchedules") in ("true", "false")
    assert int(await read(csms, "PeriodsPerSchedule")) >= 1
    assert int(await read(csms, "ProfileStackLevel")) >= 0
    assert set((await read(csms, "RateUnit")).split(",")) == {"A", "W"}

    # Entries counts what is installed, whatever the EVSE.
    await install(csms, 0, default_profile(1, 16))
    await install(csms, 1, default_profile(2, 12, level=1))
    assert await read(csms, "Entries", "ChargingProfiles") == "2"

    # The writable ones take valid values and refuse others; the rest are read-only.
    assert await write(csms, "LimitChangeSignificance", "5") == "Accepted"
    assert float(await read(csms, "LimitChangeSignificance")) == 5
    assert await write(csms, "LimitChangeSignificance", "-1") == "Rejected"
    assert await write(csms, "LimitChangeSignificance", "lots") == "Rejected"
    assert await write(csms, "NotifyChargingLimitWithSchedules", "true") == "Accepted"
    assert await read(csms, "NotifyChargingLimitWithSchedules") == "true"
    for name, instance, value in [("Available", None, "false"), ("PeriodsPerSchedule", None, "9"),
                                  ("ProfileStackLevel", None, "2"), ("RateUnit", None, "A"),
                                  ("Entries", "ChargingProfiles", "0")]:
        assert await write(csms, name, value, instance) == "Rejected", name

    # Disabled: SetChargingProfile is refused; the installed profiles stay.
    assert await write(csms, "Enabled", "false") == "Accepted"
    assert await set_profile(csms, 1, default_profile(3, 10, level=2)) == "Rejected"
    assert await read(csms, "Entries", "ChargingProfiles") == "2"
    assert await write(csms, "Enabled", "true") == "Accepted"
    assert await set_profile(csms, 1, default_profile(3, 10, level=2)) == "Accepted"


async def test_a_significant_change_is_a_charging_rate_changed_event(csms, start):
    """LimitChangeSignificance = 50 %: 32 -> 20 A is 12 / 32 = 37.5 %, which the station may
    skip telling (and this one does); 20 -> 8 A is 12 / 20 = 60 %, told as a TransactionEvent
    with triggerReason ChargingRateChanged."""
    cp = await start()
    await booted(csms)
    assert await write(csms, "LimitChangeSignificance", "50") == "Accepted"
    tx = await charge(cp, csms)
    assert pilot(cp) == HARDWARE_MAX
    mark = csms.mark()
    await install(csms, 0, default_profile(1, 20))
    await wait_until(lambda: pilot(cp) == 20, "pilot at 20 A")
    await cp.settle()
    assert not [p for p in sent(csms, "TransactionEvent", mark)
                if p["triggerReason"] == "ChargingRateChanged"]
    mark = csms.mark()
    await install(csms, 0, default_profile(1, 8))  # same id: replaces it (K01.FR.05)
    await wait_until(lambda: pilot(cp) == 8, "pilot at 8 A")
    event = await wait_event(csms, mark, triggerReason="ChargingRateChanged")
    assert event.payload["eventType"] == "Updated"
    assert event.payload["transactionInfo"]["transactionId"] == tx


# ---- TxDefaultProfile and TxProfile at the pilot ----------------------------------------------


async def test_tx_default_profiles_for_the_station_and_the_evse_limit_the_pilot(csms, start):
    cp = await start()
    await booted(csms)
    # evseId 0: the profile applies to each EVSE by itself.
    await install(csms, 0, default_profile(1, 16))
    tx = await charge(cp, csms)
    await wait_until(lambda: pilot(cp) == 16, "pilot at the station-wide default, 16 A")
    # A default for EVSE 1 at a higher stack level takes over there: 16 -> 12 A is 25 %,
    # more than the default significance, so the CSMS hears of it.
    mark = csms.mark()
    await install(csms, 1, default_profile(2, 12, level=1))
    await wait_until(lambda: pilot(cp) == 12, "pilot at EVSE 1's default, 12 A")
    event = await wait_event(csms, mark, triggerReason="ChargingRateChanged")
    assert (event.payload["eventType"], event.payload["transactionInfo"]["transactionId"]) == (
        "Updated", tx)
    # Cleared, the station-wide default is in force again.
    answer = await csms.call(CP, "ClearChargingProfile", {"chargingProfileId": 2})
    assert answer["status"] == "Accepted"
    await wait_until(lambda: pilot(cp) == 16, "pilot back at 16 A")
    assert closed(cp)


async def test_a_lowering_at_a_schedule_boundary_reaches_the_pilot_within_a_second(csms, start):
    cp = await start()
    await booted(csms)
    tx = await charge(cp, csms)
    assert pilot(cp) == HARDWARE_MAX
    s = whole_second()
    # From s: 16 A; s+2: 10 A; s+4: 4 A, too little for a vehicle (IEC 61851-1: 6 A at
    # least), so the session pauses; s+6: 16 A again.
    await install(csms, 0, profile(1, "TxDefaultProfile", [(0, 16), (2, 10), (4, 4), (6, 16)],
                                   start=s))
    await wait_until(lambda: pilot(cp) == 16, "pilot at 16 A at once")

    async def follows(boundary: float, condition: Callable[[], bool], what: str) -> None:
        assert time.time() < boundary, "the test is too slow for its own schedule"
        seen = await wait_until(condition, what, timeout=boundary - time.time() + 1.5)
        assert boundary - 0.05 <= seen <= boundary + 1.2, (what, seen - boundary)

    mark = csms.mark()
    await follows(s + 2, lambda: pilot(cp) == 10, "10 A from s+2")
    event = await wait_event(csms, mark, triggerReason="ChargingRateChanged")
    assert event.payload["transactionInfo"]["transactionId"] == tx
    assert closed(cp)

    mark = csms.mark()
    await follows(s + 4, lambda: not closed(cp), "the contactor opens below 6 A")
    assert pilot(cp) == 0  # no PWM below 6 A: nothing is offered
    paused = await wait_event(csms, mark, chargingState="SuspendedEVSE")
    assert paused.payload["eventType"] == "Updated"
    assert cp.agent.core.evses[1].transaction is not None  # paused, not ended

    mark = csms.mark()
    await follows(s + 6, lambda: pilot(cp) == 16 and closed(cp), "16 A and charging at s+6")
    resumed = await wait_event(csms, mark, chargingState="Charging")
    assert resumed.payload["transactionInfo"]["transactionId"] == tx


async def test_a_tx_profile_for_the_running_transaction_overrides_the_default(csms, start):
    cp = await start(station={"connectors": 2})
    await booted(csms, evses=2)
    # A default at a high stack level: a TxProfile overrides it all the same.
    await install(csms, 0, default_profile(1, 10, level=5))
    tx = await charge(cp, csms)
    await wait_until(lambda: pilot(cp) == 10, "pilot at the default's 10 A")

    def tx_profile(pid: int, amps: float, **kw: Any) -> dict:
        return profile(pid, "TxProfile", [(0, amps)], kind="Relative", **kw)

    assert await set_profile(csms, 1, tx_profile(2, 20, transaction="no-such-tx")) == "Rejected"
    assert await set_profile(csms, 0, tx_profile(2, 20, transaction=tx)) == "Rejected"
    assert await set_profile(csms, 1, tx_profile(2, 20)) == "Rejected"  # no transactionId
    # The transaction runs on EVSE 1, not on EVSE 2.
    assert await set_profile(csms, 2, tx_profile(2, 20, transaction=tx)) == "Rejected"
    assert await read(csms, "Entries", "ChargingProfiles") == "1"

    await install(csms, 1, tx_profile(2, 20, transaction=tx))
    await wait_until(lambda: pilot(cp) == 20, "pilot at the TxProfile's 20 A")
    # The same id again replaces it (K01.FR.05).
    await install(csms, 1, tx_profile(2, 14, transaction=tx))
    await wait_until(lambda: pilot(cp) == 14, "pilot at the replacement's 14 A")
    assert await read(csms, "Entries", "ChargingProfiles") == "2"
    # Cleared while the transaction runs, the default is in force again.
    assert (await csms.call(CP, "ClearChargingProfile", {"chargingProfileCriteria": {
        "evseId": 1, "chargingProfilePurpose": "TxProfile"}}))["status"] == "Accepted"
    await wait_until(lambda: pilot(cp) == 10, "pilot back at the default's 10 A")
    await install(csms, 1, tx_profile(2, 14, transaction=tx))
    await wait_until(lambda: pilot(cp) == 14, "pilot at 14 A again")

    # The transaction ends: its profile goes with it, the default stays.
    mark = csms.mark()
    assert (await csms.call(CP, "RequestStopTransaction", {"transactionId": tx}))[
        "status"] == "Accepted"
    await wait_event(csms, mark, eventType="Ended")
    await cp.settle()
    assert await get_profiles(csms, 1, {"chargingProfilePurpose": "TxProfile"}) == (
        "NoProfiles", [])
    assert await read(csms, "Entries", "ChargingProfiles") == "1"
    assert await set_profile(csms, 1, tx_profile(3, 20, transaction=tx)) == "Rejected"


async def test_a_second_tx_profile_on_the_same_stack_level_is_rejected(csms, start):
    """K01.FR.39: a TxProfile with another id but the stackLevel and transactionId of an
    installed one is rejected (for other purposes the same case is K01.FR.06)."""
    cp = await start()
    await booted(csms)
    tx = await charge(cp, csms)
    await install(csms, 1, profile(1, "TxProfile", [(0, 20)], kind="Relative", transaction=tx))
    await wait_until(lambda: pilot(cp) == 20, "pilot at 20 A")
    status = await set_profile(csms, 1, profile(2, "TxProfile", [(0, 8)], kind="Relative",
                                                transaction=tx))
    assert status == "Rejected"
    await cp.settle()
    assert pilot(cp) == 20
    assert await read(csms, "Entries", "ChargingProfiles") == "1"


# ---- SetChargingProfile's checks --------------------------------------------------------------


async def test_set_charging_profile_refuses_what_the_specification_forbids(csms, start):
    await start()
    await booted(csms)
    periods = int(await read(csms, "PeriodsPerSchedule"))
    top = int(await read(csms, "ProfileStackLevel"))
    s = whole_second()
    many = [(60 * i, 16) for i in range(periods + 1)]
    cases = {
        # (evseId, profile)
        "ChargingStationMaxProfile on an EVSE": (
            1, profile(1, "ChargingStationMaxProfile", [(0, 20)])),
        "ChargingStationExternalConstraints (not the CSMS's to set)": (
            0, profile(2, "ChargingStationExternalConstraints", [(0, 20)])),
        "K01.FR.40 Absolute without startSchedule": (1, default_profile(3, 16, start=None)),
        "K01.FR.40 Recurring without startSchedule": (
            1, default_profile(4, 16, kind="Recurring", recurrency="Daily", start=None)),
        "an EVSE the station does not have": (5, default_profile(7, 16)),
        "more periods than PeriodsPerSchedule": (
            1, profile(8, "TxDefaultProfile", many)),
        "a stackLevel above ProfileStackLevel": (1, default_profile(9, 16, level=top + 1)),
        "validTo in the past": (1, default_profile(10, 16, valid_to=s - 60)),
    }
    statuses = {name: await set_profile(csms, evse, wire) for name, (evse, wire) in
                cases.items()}
    assert statuses == {name: "Rejected" for name in cases}
    assert await read(csms, "Entries", "ChargingProfiles") == "0"
    # Right at the limits they are taken.
    assert await set_profile(csms, 1, profile(11, "TxDefaultProfile", many[:periods])) \
        == "Accepted"
    assert await set_profile(csms, 1, default_profile(12, 16, level=top)) == "Accepted"


async def test_relative_schedules_take_no_start_and_cannot_cap_the_station(csms, start):
    """K01.FR.41: a Relative schedule starts with its transaction, so a startSchedule is
    refused; K01.FR.38: a ChargingStationMaxProfile cannot be Relative (no transaction to
    begin it)."""
    await start()
    await booted(csms)
    statuses = {
        "K01.FR.41": await set_profile(csms, 1, default_profile(
            5, 16, kind="Relative", start=whole_second())),
        "K01.FR.38": await set_profile(csms, 0, profile(
            6, "ChargingStationMaxProfile", [(0, 20)], kind="Relative")),
    }
    assert statuses == {"K01.FR.41": "Rejected", "K01.FR.38": "Rejected"}
    assert await read(csms, "Entries", "ChargingProfiles") == "0"


async def test_duplicates_are_rejected_and_the_same_id_replaces(csms, start):
    await start(station={"connectors": 2})
    await booted(csms, evses=2)
    now = whole_second()
    hour = 3600
    await install(csms, 1, default_profile(10, 16, level=2))
    # K01.FR.06: the same stackLevel, purpose and EVSE, valid at the same time.
    assert await set_profile(csms, 1, default_profile(11, 12, level=2)) == "Rejected"
    # Another EVSE (or the station-wide default) is another place in the stack.
    assert await set_profile(csms, 2, default_profile(12, 12, level=2)) == "Accepted"
    assert await set_profile(csms, 0, default_profile(13, 12, level=2)) == "Accepted"
    # Validities that do not overlap do not clash; one that spans both does.
    await install(csms, 1, default_profile(20, 16, level=3, valid_to=now + hour))
    assert await set_profile(csms, 1, default_profile(
        21, 12, level=3, valid_from=now + 2 * hour, start=now + 2 * hour)) == "Accepted"
    assert await set_profile(csms, 1, default_profile(
        22, 10, level=3, valid_from=now + hour // 2, valid_to=now + 3 * hour,
        start=now + hour // 2)) == "Rejected"
    assert await read(csms, "Entries", "ChargingProfiles") == "5"  # 10, 12, 13, 20, 21
    # K01.FR.05: the id of an installed profile replaces it, whatever it says now.
    await install(csms, 1, default_profile(10, 8, level=2))
    assert await read(csms, "Entries", "ChargingProfiles") == "5"
    status, parts = await get_profiles(csms, 5, {"chargingProfileId": [10]})
    assert status == "Accepted"
    [replaced] = [p for part in parts for p in part["chargingProfile"]]
    assert replaced["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 8


async def test_no_more_profiles_than_entries_maximum(csms, start):
    await start()
    await booted(csms)
    most = await entries_max(csms)
    assert most >= 1
    now = whole_second()
    # Disjoint future validity windows: none clashes with another (K01.FR.06).
    for n in range(most):
        begins = now + 3600 * (n + 1)
        await install(csms, 1, default_profile(100 + n, 16, valid_from=begins,
                                               valid_to=begins + 3600, start=begins))
    assert await read(csms, "Entries", "ChargingProfiles") == str(most)
    beyond = now + 3600 * (most + 1)
    assert await set_profile(csms, 1, default_profile(
        100 + most, 16, valid_from=beyond, valid_to=beyond + 3600, start=beyond)) == "Rejected"
    assert await read(csms, "Entries", "ChargingProfiles") == str(most)


# ---- GetCompositeSchedule (K08) ---------------------------------------------------------------


async def test_composite_schedule_in_amps_and_watts(csms, start):
    await start(station={"connectors": 2})
    await booted(csms, evses=2)
    s = whole_second() - 10
    # EVSE 1's default: 16 A, from s+600 10 A, from s+1200 20 A, over after 1800 s.
    await install(csms, 1, profile(1, "TxDefaultProfile", [(0, 16), (600, 10), (1200, 20)],
                                   start=s, duration=1800))
    # The station's supply: 25 A, from s+900 18 A.
    await install(csms, 0, profile(2, "ChargingStationMaxProfile", [(0, 25), (900, 18)],
                                   start=s))
    amps = await composite(csms, 1, 3600, "A")
    assert amps["status"] == "Accepted"
    schedule = amps["schedule"]
    assert (schedule["evseId"], schedule["duration"], schedule["chargingRateUnit"]) == (
        1, 3600, "A")
    d = round(instant(schedule["scheduleStart"]) - s)  # how long ago the profiles began
    assert 10 <= d <= 12
    # EVSE 1 is the smaller of its default and the supply, second by second:
    #   [0, 600-d)      min(16, 25) = 16
    #   [600-d, 900-d)  min(10, 25) = 10, and [900-d, 1200-d) min(10, 18) = 10: one period
    #   [1200-d, 1800-d) min(20, 18) = 18, and after the default ends min(32, 18) = 18
    assert periods_of(amps) == [(0, 16), (600 - d, 10), (1200 - d, 18)]
    watts = await composite(csms, 1, 3600, "W")
    assert watts["schedule"]["chargingRateUnit"] == "W"
    assert round(instant(watts["schedule"]["scheduleStart"]) - s) == d
    # The same periods at 690 W per amp: 16 A 11040 W, 10 A 6900 W, 18 A 12420 W.
    assert periods_of(watts) == [(0, 11040), (600 - d, 6900), (1200 - d, 12420)]

    # The grid connection: EVSE 2 has no default, so it could take all the supply (25 A,
    # then 18 A); with EVSE 1 the sum is above the supply, which is the limit throughout.
    station = await composite(csms, 0, 3600, "A")
    assert station["schedule"]["evseId"] == 0
    d0 = round(instant(station["schedule"]["scheduleStart"]) - s)
    assert periods_of(station) == [(0, 25), (900 - d0, 18)]
    station_w = await composite(csms, 0, 3600, "W")
    d0 = round(instant(station_w["schedule"]["scheduleStart"]) - s)
    assert periods_of(station_w) == [(0, 25 * WATTS_PER_AMP), (900 - d0, 18 * WATTS_PER_AMP)]

    assert (await composite(csms, 3, 3600))["status"] == "Rejected"  # no EVSE 3 (K08.FR.05)


async def test_composite_schedule_back_at_the_hardware_maximum_without_profiles(csms, start):
    await start(station={"connectors": 2})
    await booted(csms, evses=2)
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, HARDWARE_MAX)]
    # Two EVSEs of 32 A each on the grid connection: 64 A.
    assert periods_of(await composite(csms, 0, 600, "A")) == [(0, 2 * HARDWARE_MAX)]


async def test_a_composite_asked_for_just_after_a_start_is_one_period_per_start(csms, start):
    """Each period ends where the next one starts, so their startPeriods must increase
    strictly; and the first is what is in force now: the TxProfile of the running
    transaction (14 A), not the default it overrides (10 A)."""
    cp = await start()
    await booted(csms)
    await install(csms, 0, default_profile(1, 10, level=5))
    # Early in a wall-clock second, so that all of what follows happens within it.
    await wait_until(lambda: 0.02 < time.time() % 1 < 0.2, "early in a second", timeout=2)
    tx = await charge(cp, csms)
    await install(csms, 1, profile(2, "TxProfile", [(0, 14)], kind="Relative", transaction=tx))
    answer = await composite(csms, 1, 600, "A")
    starts = [p["startPeriod"] for p in answer["schedule"]["chargingSchedulePeriod"]]
    assert starts == sorted(set(starts)), starts
    assert periods_of(answer) == [(0, 14)]
    await wait_until(lambda: pilot(cp) == 14, "pilot at 14 A")


async def test_a_profile_in_watts_limits_the_pilot_in_amps(csms, start):
    cp = await start()
    await booted(csms)
    # 11040 W over three phases at 230 V: 11040 / 690 = 16 A.
    await install(csms, 0, profile(1, "TxDefaultProfile", [(0, 11040)], unit="W"))
    await charge(cp, csms)
    await wait_until(lambda: pilot(cp) == 16, "pilot at 16 A")
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, 16)]
    assert periods_of(await composite(csms, 1, 600, "W")) == [(0, 11040)]


async def test_a_daily_recurring_profile_in_the_composite(csms, start):
    await start(station={"time_zone": "UTC"})
    await booted(csms)
    s0 = whole_second()
    # Began yesterday 100 s before now: each day 10 A for 200 s, then 20 A until the next.
    began = s0 - 86400 - 100
    await install(csms, 1, profile(1, "TxDefaultProfile", [(0, 10), (200, 20)],
                                   kind="Recurring", recurrency="Daily", start=began))
    answer = await composite(csms, 1, 86400, "A")
    today = began + 86400
    o = round(instant(answer["schedule"]["scheduleStart"]) - today)  # into today's: ~100 s
    assert 100 <= o <= 102
    # [0, 200-o) 10 A; then 20 A until tomorrow's recurrence at 86400-o; 10 A again.
    assert periods_of(answer) == [(0, 10), (200 - o, 20), (86400 - o, 10)]


async def test_a_relative_default_starts_with_the_transaction(csms, start):
    cp = await start()
    await booted(csms)
    await install(csms, 0, profile(1, "TxDefaultProfile", [(0, 16), (600, 10)],
                                   kind="Relative"))
    mark = csms.mark()
    await charge(cp, csms)
    began = instant((await wait_event(csms, mark, eventType="Started")).payload["timestamp"])
    await wait_until(lambda: pilot(cp) == 16, "pilot at 16 A")
    await asyncio.sleep(1.1)  # so the schedule is visibly under way
    answer = await composite(csms, 1, 1200, "A")
    into = instant(answer["schedule"]["scheduleStart"]) - began
    [(first, sixteen), (second, ten)] = periods_of(answer)
    # 600 s after the transaction began, less the time it has run.
    assert (first, sixteen, ten) == (0, 16, 10)
    assert abs(second - (600 - into)) <= 1, (second, into)


async def test_the_composite_shows_what_the_site_limit_leaves(csms, start):
    """K08: the composite is the result of every active schedule and the local limits. With a
    site limit of 20 A, EVSE 1 never gets more than 20 A; with a second session, 20 / 2 = 10 A
    each; the grid connection, 20 A."""
    cp = await start(station={"connectors": 2, "site_limit": 20})
    await booted(csms, evses=2)
    seen = {"EVSE 1 idle": periods_of(await composite(csms, 1, 600, "A")),
            "station idle": periods_of(await composite(csms, 0, 600, "A"))}
    await charge(cp, csms, 1, "CARD1")
    await charge(cp, csms, 2, "CARD2")
    await wait_until(lambda: pilot(cp, 1) == 10 and pilot(cp, 2) == 10, "10 A each")
    seen["EVSE 1 sharing"] = periods_of(await composite(csms, 1, 600, "A"))
    seen["station sharing"] = periods_of(await composite(csms, 0, 600, "A"))
    assert seen == {"EVSE 1 idle": [(0, 20)], "station idle": [(0, 20)],
                    "EVSE 1 sharing": [(0, 10)], "station sharing": [(0, 20)]}


async def test_the_grid_connection_composite_counts_the_evses_defaults(csms, start):
    """evseId 0 asks for the expected consumption of the grid connection (K08). A
    TxDefaultProfile on evseId 0 limits each of the two EVSEs to 10 A, so together they
    cannot draw more than 2 x 10 = 20 A, far below the hardware's 2 x 32 = 64 A."""
    await start(station={"connectors": 2})
    await booted(csms, evses=2)
    await install(csms, 0, default_profile(1, 10))
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, 10)]
    assert periods_of(await composite(csms, 2, 600, "A")) == [(0, 10)]
    assert periods_of(await composite(csms, 0, 600, "A")) == [(0, 20)]


# ---- GetChargingProfiles (K09) ----------------------------------------------------------------


async def test_get_charging_profiles_by_criteria_in_parts(csms, start):
    await start()
    await booted(csms)
    now = whole_second()
    on_evse = list(range(101, 111))  # ten defaults on EVSE 1, a day ahead, hour by hour
    for n, pid in enumerate(on_evse):
        begins = now + 86400 + 3600 * n
        await install(csms, 1, default_profile(pid, 6 + n, valid_from=begins,
                                               valid_to=begins + 3600, start=begins))
    await install(csms, 0, default_profile(201, 10, level=3))
    await install(csms, 0, profile(301, "ChargingStationMaxProfile", [(0, 25)]))
    everything = {**{pid: 1 for pid in on_evse}, 201: 0, 301: 0}

    queries = [
        # (evseId, criteria, what is reported and with which evseId)
        (None, {"chargingProfileId": [103, 201]}, {103: 1, 201: 0}),
        (None, {"chargingProfilePurpose": "ChargingStationMaxProfile"}, {301: 0}),
        (None, {"stackLevel": 3}, {201: 0}),
        (None, {"chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0},
         {pid: 1 for pid in on_evse}),
        (1, {}, {pid: 1 for pid in on_evse}),
        (0, {}, {201: 0, 301: 0}),  # 0: only what is installed on the station itself
        (None, {}, everything),
        (None, {"chargingLimitSource": ["CSO"]}, everything),
    ]
    for request_id, (evse, criteria, expected) in enumerate(queries, start=1):
        status, parts = await get_profiles(csms, request_id, criteria, evse)
        assert status == "Accepted", criteria
        check_parts(parts, request_id)
        assert reported(parts) == expected, (evse, criteria)
    # Every profile once, and two EVSEs cannot share one part: at least two parts.
    _, parts = await get_profiles(csms, 50, {})
    assert len(parts) >= 2
    assert {p["evseId"] for p in parts} == {0, 1}

    nothing = [
        (None, {"chargingProfileId": [999]}),
        (None, {"chargingLimitSource": ["EMS"]}),  # every one is the CSO's
        (1, {"chargingProfilePurpose": "ChargingStationMaxProfile"}),
        (0, {"stackLevel": 8}),
    ]
    mark = csms.mark()
    for request_id, (evse, criteria) in enumerate(nothing, start=60):
        assert await get_profiles(csms, request_id, criteria, evse) == ("NoProfiles", []), \
            criteria
    await asyncio.sleep(0.2)  # a report would follow its answer at once
    assert sent(csms, "ReportChargingProfiles", mark) == []


# ---- ClearChargingProfile (K10) ---------------------------------------------------------------


async def test_clear_charging_profile_by_id_by_criteria_and_all(csms, start):
    cp = await start()
    await booted(csms)
    await install(csms, 1, default_profile(1, 16))
    await install(csms, 0, default_profile(2, 14, level=1))
    await install(csms, 0, profile(3, "ChargingStationMaxProfile", [(0, 20)]))
    await install(csms, 1, default_profile(4, 12, level=2))
    # EVSE 1: the default of the highest stack level (4: 12 A), under the supply's 20 A.
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, 12)]

    async def clear(payload: dict) -> str:
        return (await csms.call(CP, "ClearChargingProfile", payload))["status"]

    assert await clear({"chargingProfileId": 1}) == "Accepted"
    assert await get_profiles(csms, 1, {"chargingProfileId": [1]}) == ("NoProfiles", [])
    assert await clear({"chargingProfileId": 1}) == "Unknown"
    # By criteria: station-wide defaults go, the station maximum on evseId 0 stays.
    assert await clear({"chargingProfileCriteria": {
        "evseId": 0, "chargingProfilePurpose": "TxDefaultProfile"}}) == "Accepted"
    assert await clear({"chargingProfileCriteria": {"stackLevel": 7}}) == "Unknown"
    assert await clear({"chargingProfileCriteria": {
        "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 2}}) == "Accepted"
    status, parts = await get_profiles(csms, 2, {})
    assert (status, reported(parts)) == ("Accepted", {3: 0})
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, 20)]
    # Neither an id nor criteria: every profile goes.
    assert await clear({}) == "Accepted"
    assert await get_profiles(csms, 3, {}) == ("NoProfiles", [])
    assert await read(csms, "Entries", "ChargingProfiles") == "0"
    assert await clear({}) == "Unknown"
    # Nothing limits EVSE 1 but its hardware.
    assert periods_of(await composite(csms, 1, 600, "A")) == [(0, HARDWARE_MAX)]
    await charge(cp, csms)
    assert pilot(cp) == HARDWARE_MAX


# ---- RequestStartTransaction with a profile (F01, K05) ----------------------------------------


async def test_request_start_with_a_tx_profile_limits_that_transaction_only(csms, start):
    cp = await start()
    await booted(csms)
    cp.mock.plug(1)
    mark = csms.mark()
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "APP-1", "type": "Central"}, "remoteStartId": 1, "evseId": 1,
        "chargingProfile": profile(7, "TxProfile", [(0, 12)], kind="Relative")})
    assert answer["status"] == "Accepted"
    started = await wait_event(csms, mark, eventType="Started")
    tx = started.payload["transactionInfo"]["transactionId"]
    await wait_until(lambda: closed(cp) and pilot(cp) == 12, "charging at the profile's 12 A")
    status, parts = await get_profiles(csms, 1, {"chargingProfilePurpose": "TxProfile"})
    assert status == "Accepted"
    [bound] = [p for part in parts for p in part["chargingProfile"]]
    assert bound["id"] == 7 and bound.get("transactionId", tx) == tx
    assert reported(parts) == {7: 1}

    mark = csms.mark()
    assert (await csms.call(CP, "RequestStopTransaction", {"transactionId": tx}))[
        "status"] == "Accepted"
    await wait_event(csms, mark, eventType="Ended")
    await cp.settle()
    assert await get_profiles(csms, 2, {}) == ("NoProfiles", [])
    assert await read(csms, "Entries", "ChargingProfiles") == "0"
    # The next session on the EVSE is not held to it.
    cp.mock.unplug(1)
    await cp.settle()
    await charge(cp, csms)
    assert pilot(cp) == HARDWARE_MAX

    # Only a TxProfile may come with a start.
    answer = await csms.call(CP, "RequestStartTransaction", {
        "idToken": {"idToken": "APP-2", "type": "Central"}, "remoteStartId": 2, "evseId": 1,
        "chargingProfile": default_profile(8, 12)})
    assert answer["status"] == "Rejected"
    assert await read(csms, "Entries", "ChargingProfiles") == "0"


# ---- the station's own site limit (K11, K12) ---------------------------------------------------


async def test_the_site_limit_shares_the_supply_and_is_told_to_the_csms(csms, start):
    cp = await start(station={"connectors": 2, "site_limit": 20})
    await booted(csms, evses=2)
    assert await write(csms, "NotifyChargingLimitWithSchedules", "true") == "Accepted"
    # The CSMS's default (16 A) is below the site's 20 A: alone, a session is held to it.
    await install(csms, 0, default_profile(1, 16))
    tx1 = await charge(cp, csms, 1, "CARD1")
    await wait_until(lambda: pilot(cp, 1) == 16, "session 1 at the CSMS's 16 A")
    await cp.settle()
    assert sent(csms, "NotifyChargingLimit") == []

    overloads: list[tuple[float, float]] = []

    async def watch() -> None:
        # The sum of what is offered, looked at whenever the loop lets go.
        while True:
            if pilot(cp, 1) + pilot(cp, 2) > 20:
                overloads.append((pilot(cp, 1), pilot(cp, 2)))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        mark = csms.mark()
        await charge(cp, csms, 2, "CARD2")
        # Both want 16 A; the site has 20 A: 20 / 2 = 10 A each.
        await wait_until(lambda: pilot(cp, 1) == 10 and pilot(cp, 2) == 10, "10 A each")
        await cp.settle()
    finally:
        watcher.cancel()
    assert overloads == []
    notified = await csms.wait_for_call("NotifyChargingLimit", after=mark,
                                        predicate=lambda p: p["evseId"] == 1)
    assert notified.payload["chargingLimit"]["chargingLimitSource"] == "Other"
    [schedule] = notified.payload["chargingSchedule"]
    first = schedule["chargingSchedulePeriod"][0]["limit"]
    assert first == (10 if schedule["chargingRateUnit"] == "A" else 10 * WATTS_PER_AMP)
    # EVSE 2 is held below its own 16 A by the site limit as well.
    other = await csms.wait_for_call("NotifyChargingLimit", after=mark,
                                     predicate=lambda p: p["evseId"] == 2)
    assert other.payload["chargingLimit"]["chargingLimitSource"] == "Other"
    rate = await wait_event(csms, mark, triggerReason="ChargingRateChanged",
                            transactionId=tx1)
    assert rate.payload["eventType"] == "Updated"

    # Session 2 ends: the site limit lets go of EVSE 1, the CSMS's 16 A is in force again.
    mark = csms.mark()
    cp.mock.unplug(2)
    await wait_until(lambda: pilot(cp, 1) == 16, "session 1 back at 16 A")
    cleared = await csms.wait_for_call("ClearedChargingLimit", after=mark,
                                       predicate=lambda p: p.get("evseId") == 1)
    assert cleared.payload["chargingLimitSource"] == "Other"


# ---- persistence ------------------------------------------------------------------------------


async def test_profiles_survive_a_restart(csms, start):
    cp = await start()
    await booted(csms)
    s = whole_second() - 60
    default = profile(7, "TxDefaultProfile", [(0, 16), (300, 8)], level=2, start=s,
                      duration=3600, valid_to=s + 7200)
    maximum = profile(8, "ChargingStationMaxProfile", [(0, 25)], start=s)
    await install(csms, 1, default)
    await install(csms, 0, maximum)
    mark = csms.mark()
    await cp.restart()
    await booted(csms, after=mark)

    assert await read(csms, "Entries", "ChargingProfiles") == "2"
    status, parts = await get_profiles(csms, 9, {})
    assert status == "Accepted"
    check_parts(parts, 9)
    assert reported(parts) == {7: 1, 8: 0}
    by_id = {p["id"]: p for part in parts for p in part["chargingProfile"]}
    for sent in (default, maximum):
        got = by_id[sent["id"]]
        for key in ("stackLevel", "chargingProfilePurpose", "chargingProfileKind"):
            assert got[key] == sent[key], key
        assert instant(got.get("validTo", "1970-01-01T00:00:00Z")) == instant(
            sent.get("validTo", "1970-01-01T00:00:00Z"))
        [g], [w] = got["chargingSchedule"], sent["chargingSchedule"]
        assert g["chargingRateUnit"] == w["chargingRateUnit"]
        assert instant(g["startSchedule"]) == instant(w["startSchedule"])
        assert g.get("duration") == w.get("duration")
        assert [(p["startPeriod"], p["limit"]) for p in g["chargingSchedulePeriod"]] == [
            (p["startPeriod"], p["limit"]) for p in w["chargingSchedulePeriod"]]
    # And they still apply: EVSE 1 is at 8 A since s+300 (now is s+60 plus the restart, so
    # 16 A until s+300 is about 240 s ahead).
    answer = await composite(csms, 1, 600, "A")
    d = round(instant(answer["schedule"]["scheduleStart"]) - s)
    assert periods_of(answer) == [(0, 16), (300 - d, 8)]
