"""OCPP 1.6 Smart Charging end to end, against the dev CSMS (schema-validated both ways).

Written to the specification (OCPP 1.6 edition 2: 3.13 Smart Charging, 5.5
ClearChargingProfile, 5.7 GetCompositeSchedule, 5.11 RemoteStartTransaction, 5.16
SetChargingProfile, 9.4 the Smart Charging keys), not to the code. Every expected limit is
worked out by hand in the test from the station's configuration: 32 A per EVSE (the default
station.max_current), 230 V, three phases, so 1 A per phase is 690 W. What the charger really
does is read where the current is offered: the mock pilot's set_current_limit (timed), or the
PWM duty on gpiozero's mock pins.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from gpiozero import Device
from harness import booted
from test_ocpp16_core import (
    calls_after,
    get_config,
    start_session,
    statuses,
    wait_status,
)
from test_pilot import OFFSET, SCALE, BenchFactory, FakeMCP3008

from cpagent.clock import parse_time
from cpagent.devcsms import DevCsms
from hal.mock import MockPilot

CP = "CP-TEST"
HARDWARE_MAX = 32.0  # station.max_current's default: what an EVSE offers with no profile
WATTS_PER_AMP = 230 * 3  # 230 V on three phases: 690 W for each amp per phase

SMART_CHARGING_KEYS = ("ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit",
                       "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled")


# ---- helpers ----------------------------------------------------------------------------------


def wire_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def whole_second_now() -> float:
    return float(math.floor(time.time()))


def cs_profile(profile_id: int, level: int, purpose: str, periods: list[tuple[int, float]], *,
               kind: str = "Absolute", start: float | None = None, unit: str = "A",
               duration: int | None = None, recurrency: str | None = None,
               transaction_id: int | None = None, valid_from: float | None = None,
               valid_to: float | None = None) -> dict:
    """A csChargingProfiles. An Absolute or Recurring schedule without a given start begins a
    minute ago, so that it is in force from the moment it is installed."""
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": limit} for s, limit in periods],
    }
    if kind != "Relative":
        schedule["startSchedule"] = wire_time(start if start is not None
                                              else whole_second_now() - 60)
    if duration is not None:
        schedule["duration"] = duration
    profile: dict[str, Any] = {"chargingProfileId": profile_id, "stackLevel": level,
                               "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
                               "chargingSchedule": schedule}
    if recurrency is not None:
        profile["recurrencyKind"] = recurrency
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    if valid_from is not None:
        profile["validFrom"] = wire_time(valid_from)
    if valid_to is not None:
        profile["validTo"] = wire_time(valid_to)
    return profile


async def set_profile(csms: DevCsms, connector: int, profile: dict) -> str:
    answer = await csms.call(CP, "SetChargingProfile",
                             {"connectorId": connector, "csChargingProfiles": profile})
    return answer["status"]


async def clear(csms: DevCsms, **criteria: Any) -> str:
    answer = await csms.call(CP, "ClearChargingProfile", criteria)
    return answer["status"]


async def composite(csms: DevCsms, connector: int, duration: int = 600,
                    unit: str | None = None) -> tuple[float, list[tuple[int, float]]]:
    """(scheduleStart, [(startPeriod, limit)]) of an Accepted GetCompositeSchedule, after
    checking the envelope 5.7 and 6.x describe."""
    request: dict[str, Any] = {"connectorId": connector, "duration": duration}
    if unit is not None:
        request["chargingRateUnit"] = unit
    asked_at = time.time()
    answer = await csms.call(CP, "GetCompositeSchedule", request)
    assert answer["status"] == "Accepted", answer
    assert answer.get("connectorId", connector) == connector
    start = parse_time(answer["scheduleStart"])
    # Calculated from the moment the request is received (5.7), to the whole second the
    # periods' integer offsets count in.
    assert asked_at - 1.0 <= start <= time.time() + 1.0, (asked_at, answer["scheduleStart"])
    schedule = answer["chargingSchedule"]
    if unit is not None:
        assert schedule["chargingRateUnit"] == unit
    assert schedule.get("duration", duration) == duration
    if "startSchedule" in schedule:
        assert parse_time(schedule["startSchedule"]) == start
    periods = schedule["chargingSchedulePeriod"]
    # Each startPeriod ends the period before it (ChargingSchedulePeriod): from 0, increasing.
    starts = [p["startPeriod"] for p in periods]
    assert starts and starts[0] == 0 and starts == sorted(set(starts)), periods
    # Without a numberPhases in any profile, three phases are assumed (ChargingSchedulePeriod).
    assert all(p.get("numberPhases", 3) == 3 for p in periods), periods
    return start, [(p["startPeriod"], p["limit"]) for p in periods]


def same_periods(got: list[tuple[int, float]], want: list[tuple[float, float]]) -> bool:
    """Equal limits in the same order, each period starting within a second of the expected
    offset (the schedule's start is a whole second of the moment the request arrived)."""
    return len(got) == len(want) and all(
        abs(g[0] - w[0]) <= 1 and g[1] == pytest.approx(w[1], abs=0.05)
        for g, w in zip(got, want, strict=True))


async def limits_now(csms: DevCsms, connector: int) -> float:
    """The composite's limit at this moment, in amps."""
    _, periods = await composite(csms, connector, 60, "A")
    return periods[0][1]


def offered(cp: Any, connector: int = 1) -> float:
    return cp.mock.hardware.pilots[connector].current_limit


async def pilot_offers(cp: Any, amps: float, connector: int = 1, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while offered(cp, connector) != amps:
        assert time.monotonic() < deadline, (
            f"pilot {connector} offers {offered(cp, connector)} A, not {amps} A")
        await asyncio.sleep(0.01)


def transaction_ids(csms: DevCsms) -> list[int]:
    return [r.payload["transactionId"] for r in csms.records
            if r.kind == "result" and r.action == "StartTransaction"]


@dataclass(frozen=True)
class PilotCall:
    at: float  # wall clock: profiles are laid on it
    connector: int
    amps: float


@pytest.fixture
def pilot_calls(monkeypatch: pytest.MonkeyPatch) -> list[PilotCall]:
    """Every set_current_limit the mock pilots get, with its wall-clock time. Patched on the
    class before the agent starts, since the agent keeps the bound methods it builds with."""
    calls: list[PilotCall] = []
    original = MockPilot.set_current_limit

    async def recording(self: MockPilot, amps: float) -> None:
        calls.append(PilotCall(time.time(), self.connector_id, amps))
        await original(self, amps)

    monkeypatch.setattr(MockPilot, "set_current_limit", recording)
    return calls


# IEC 61851-1 gives a vehicle 5 s to follow a lower offer: until then the station may hold back
# a raise elsewhere, so that the supply is not exceeded while that vehicle still draws.
FOLLOW_TIME = 5.0


async def join_shared_supply(cp: Any, tag: str, connector: int, amps: float) -> None:
    """Plug and present a card at `connector`, where the supply must be shared: it is offered
    `amps` once the others were lowered and their vehicles had time to follow."""
    cp.mock.plug(connector)
    cp.mock.swipe(tag, connector)
    await pilot_offers(cp, amps, connector, timeout=FOLLOW_TIME + 3)
    await cp.settle()
    assert cp.agent.hardware.contactors[connector].is_closed


def never_over(calls: list[PilotCall], supply: float) -> None:
    """Along the way, the offers together never exceeded the supply."""
    last: dict[int, float] = {}
    for call in calls:
        last[call.connector] = call.amps
        assert sum(last.values()) <= supply, (call, last)


# ---- 9.4 / 3.13.5: what the station says it can do --------------------------------------------


async def test_smart_charging_keys_are_reported_read_only(csms, start_agent):
    await start_agent()
    await booted(csms)
    keys = await get_config(csms, *SMART_CHARGING_KEYS, "SupportedFeatureProfiles")
    for name in SMART_CHARGING_KEYS:
        assert keys[name]["readonly"] is True, name
    assert int(keys["ChargeProfileMaxStackLevel"]["value"]) >= 0
    assert int(keys["ChargingScheduleMaxPeriods"]["value"]) >= 1
    assert int(keys["MaxChargingProfilesInstalled"]["value"]) >= 1
    # The station takes A and W schedules alike (tested below), so it must say both.
    units = {u.strip() for u in keys["ChargingScheduleAllowedChargingRateUnit"]["value"]
             .split(",")}
    assert units == {"Current", "Power"}
    profiles = {p.strip() for p in keys["SupportedFeatureProfiles"]["value"].split(",")}
    assert {"Core", "SmartCharging"} <= profiles
    for name in SMART_CHARGING_KEYS:  # read-only: ChangeConfiguration is Rejected (5.3)
        answer = await csms.call(CP, "ChangeConfiguration", {"key": name, "value": "1"})
        assert answer == {"status": "Rejected"}, name
    again = await get_config(csms, *SMART_CHARGING_KEYS)
    assert {k: v["value"] for k, v in again.items()} == {
        k: keys[k]["value"] for k in SMART_CHARGING_KEYS}


# ---- the limit at the pilot -------------------------------------------------------------------


async def test_a_tx_default_profile_limits_the_session_at_the_pilot(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    # On connector 0 a TxDefaultProfile applies to every connector (3.13.1).
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 10)])) == \
        "Accepted"
    await start_session(cp, csms)
    await cp.settle()
    assert offered(cp) == 10.0


async def test_a_watt_profile_is_amps_by_voltage_and_phases_at_the_pilot(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    # 6900 W / (230 V x 3 phases) = 10 A per phase.
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 6900)],
                                                 unit="W")) == "Accepted"
    await start_session(cp, csms)
    await cp.settle()
    assert offered(cp) == 10.0


async def test_schedule_boundaries_reach_the_pilot_within_a_second(csms, start_agent,
                                                                   pilot_calls):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    await cp.settle()
    assert offered(cp) == HARDWARE_MAX
    # A schedule that begins two seconds from now, then every two seconds: lowered, lowered
    # below what IEC 61851 can offer (6 A: the session pauses), then raised again.
    begins = whole_second_now() + 2
    timeline = [(0, 16.0), (2, 10.0), (4, 3.0), (6, 8.0)]
    mark, seen = len(pilot_calls), csms.mark()
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", timeline,
                                                 start=begins)) == "Accepted"
    await cp.settle()
    assert offered(cp) == HARDWARE_MAX, "not in force before its startSchedule"
    suspended = await wait_status(csms, "SuspendedEVSE", after=seen, timeout=10)
    assert not cp.agent.hardware.contactors[1].is_closed  # paused: the contactor is open
    assert calls_after(csms, "StopTransaction", seen) == []  # paused, not ended
    resumed = await wait_status(csms, "Charging", after=csms.records.index(suspended),
                                timeout=6)
    assert cp.agent.hardware.contactors[1].is_closed
    changes = [(c.at, c.amps) for c in pilot_calls[mark:] if c.connector == 1]
    # What the pilot must offer from each boundary on: 3 A is no offer at all (0).
    wanted = [(begins + offset, 0.0 if amps < 6 else amps) for offset, amps in timeline]
    assert [amps for _, amps in changes] == [amps for _, amps in wanted], changes
    for (at, amps), (due, _) in zip(changes, wanted, strict=True):
        assert due <= at < due + 1.0, f"{amps} A at {at - due:+.3f} s from its boundary"
    pause_at = parse_time(suspended.payload["timestamp"])
    assert begins + 4 - 0.001 <= pause_at < begins + 5
    assert statuses(csms, 1, after=seen)[-1] == "Charging"
    assert resumed.time > suspended.time


@pytest.fixture
def pwm_pins() -> Iterator[tuple[BenchFactory, FakeMCP3008]]:
    """gpiozero mock pins with PWM and an MCP3008 on the mock SPI bus that reads the pilot."""
    previous = Device.pin_factory
    Device.pin_factory = factory = BenchFactory()
    adc = FakeMCP3008()
    for channel in range(8):
        adc.set_volts(channel, 12.0)  # state A: nothing plugged in
    yield factory, adc
    factory.reset()
    Device.pin_factory = previous


async def test_the_real_pwm_pilot_offers_the_profile_limit(csms, start_agent, pwm_pins):
    factory, adc = pwm_pins
    cp = await start_agent(hardware={"pilot": {
        "driver": "gpio_pwm", "pwm_pin": "GPIO18", "adc": "MCP3008", "adc_channel": 0,
        "adc_scale": SCALE, "adc_offset": OFFSET, "poll_interval": 0.01}})
    await booted(csms)
    pwm = factory.pin("GPIO18")
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 10)])) == \
        "Accepted"
    mark = csms.mark()
    adc.set_volts(0, 9.0)  # state B: a vehicle is plugged in
    await wait_status(csms, "Preparing", after=mark)
    assert pwm.state == 1.0  # steady +12 V: nothing offered before the session
    cp.mock.swipe("CARD1")
    await csms.wait_for_call("StartTransaction", after=mark)

    async def duty(value: float) -> None:
        deadline = time.monotonic() + 3
        while pwm.state != pytest.approx(value, abs=1e-4):
            assert time.monotonic() < deadline, f"duty {pwm.state}, not {value}"
            await asyncio.sleep(0.01)

    # IEC 61851-1 for 6..51 A: duty = amps / 0.6 %. 10 A -> 16.667 %.
    await duty(10 / 0.6 / 100)
    adc.set_volts(0, 6.0)  # state C: the vehicle asks for power
    await wait_status(csms, "Charging", after=mark)
    # Replaced by its id (5.16): 20 A -> 33.333 %.
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 20)])) == \
        "Accepted"
    await duty(20 / 0.6 / 100)
    # 4 A is below the 6 A IEC 61851 can signal: no PWM, steady +12 V, contactor open.
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 4)])) == \
        "Accepted"
    await duty(1.0)
    await wait_status(csms, "SuspendedEVSE", after=mark)
    assert not cp.agent.hardware.contactors[1].is_closed


# ---- stacking and combining (3.13.2, 3.13.3) --------------------------------------------------


async def test_the_highest_stack_level_prevails_and_profiles_are_replaced(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    await start_session(cp, csms)
    await cp.settle()
    assert offered(cp) == HARDWARE_MAX
    steps = [
        # (profile, the limit then): higher levels prevail, even when they allow more.
        (cs_profile(1, 0, "TxDefaultProfile", [(0, 20)]), 20.0),
        (cs_profile(2, 1, "TxDefaultProfile", [(0, 25)]), 25.0),
        # The same id: replaced (5.16), 25 A becomes 14 A.
        (cs_profile(2, 1, "TxDefaultProfile", [(0, 14)]), 14.0),
        # A new id with the same stackLevel and purpose replaces profile 2 (3.13.2).
        (cs_profile(3, 1, "TxDefaultProfile", [(0, 18)]), 18.0),
    ]
    for profile, amps in steps:
        assert await set_profile(csms, 0, profile) == "Accepted"
        await pilot_offers(cp, amps)
        assert await limits_now(csms, 1) == amps
    assert await clear(csms, id=2) == "Unknown", "profile 2 was replaced, not kept"
    # Without profile 3 only profile 1 (level 0) is left: 20 A.
    assert await clear(csms, id=3) == "Accepted"
    await pilot_offers(cp, 20.0)
    assert await limits_now(csms, 1) == 20.0


async def test_a_tx_profile_overrides_the_defaults_and_the_station_maximum_caps(csms,
                                                                                start_agent):
    cp = await start_agent()
    await booted(csms)
    assert await set_profile(csms, 1, cs_profile(1, 5, "TxDefaultProfile", [(0, 10)])) == \
        "Accepted"
    await start_session(cp, csms)
    await pilot_offers(cp, 10.0)
    (tx_id,) = transaction_ids(csms)
    # A TxProfile overrules the TxDefaultProfile, whatever their stack levels (3.13.1).
    assert await set_profile(csms, 1, cs_profile(2, 0, "TxProfile", [(0, 20)],
                                                 transaction_id=tx_id)) == "Accepted"
    await pilot_offers(cp, 20.0)
    # The composite is the minimum of ChargePointMaxProfile and TxProfile (3.13.3): 16 A.
    assert await set_profile(csms, 0, cs_profile(3, 0, "ChargePointMaxProfile",
                                                 [(0, 16)])) == "Accepted"
    await pilot_offers(cp, 16.0)
    assert await limits_now(csms, 1) == 16.0
    assert await limits_now(csms, 0) == 16.0
    # Raised above the TxProfile, the station maximum no longer limits: 20 A.
    assert await set_profile(csms, 0, cs_profile(3, 0, "ChargePointMaxProfile",
                                                 [(0, 30)])) == "Accepted"
    await pilot_offers(cp, 20.0)
    mark = csms.mark()
    cp.mock.swipe("CARD1")
    await csms.wait_for_call("StopTransaction", after=mark)
    # The TxProfile was for that transaction only and is deleted with it (3.13.1).
    assert await clear(csms, id=2) == "Unknown"
    # min(TxDefaultProfile 10 A, ChargePointMaxProfile 30 A)
    assert await limits_now(csms, 1) == 10.0


async def test_the_station_maximum_is_for_all_connectors_together(csms, start_agent):
    cp = await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    assert await set_profile(csms, 0, cs_profile(1, 0, "ChargePointMaxProfile",
                                                 [(0, 20)])) == "Accepted"
    await start_session(cp, csms, "CARD1", 1)
    await pilot_offers(cp, 20.0, 1)
    # 3.13.3: the connectors together stay within the 20 A: 10 A each.
    await join_shared_supply(cp, "CARD2", 2, 10.0)
    await pilot_offers(cp, 10.0, 1)


# ---- GetCompositeSchedule (5.7) ---------------------------------------------------------------


async def test_composite_schedule_in_amps_and_watts(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    now = whole_second_now()
    began = now - 60
    # ChargePointMaxProfile in watts: 20700 W = 30 A until now+900, then 5520 W = 8 A.
    assert await set_profile(csms, 0, cs_profile(
        1, 0, "ChargePointMaxProfile", [(0, 20700), (960, 5520)], start=began,
        unit="W")) == "Accepted"
    # With only the station maximum, the grid connection (connector 0) and connector 1 see it
    # alike: the hardware's 32 A is above 30 A.
    for connector in (0, 1):
        start, periods = await composite(csms, connector, 1200, "A")
        assert same_periods(periods, [(0, 30.0), (now + 900 - start, 8.0)]), periods
        start, periods = await composite(csms, connector, 1200, "W")
        assert same_periods(periods, [(0, 20700.0), (now + 900 - start, 5520.0)]), periods
    # A TxDefaultProfile of 16 A until now+600, 10 A after it, and on top of it (level 1) a
    # 6 A window [now+300, now+420) valid only then.
    assert await set_profile(csms, 0, cs_profile(
        2, 0, "TxDefaultProfile", [(0, 16), (660, 10)], start=began)) == "Accepted"
    assert await set_profile(csms, 0, cs_profile(
        3, 1, "TxDefaultProfile", [(0, 6)], start=now + 300, duration=120,
        valid_from=now + 300, valid_to=now + 420)) == "Accepted"
    # Connector 1, the minimum of the station maximum and the prevailing default:
    #   [start, now+300)     min(16, 30) = 16
    #   [now+300, now+420)   min(6, 30)  = 6   (level 1 prevails while valid)
    #   [now+420, now+600)   min(16, 30) = 16  (back to level 0)
    #   [now+600, now+900)   min(10, 30) = 10
    #   [now+900, end)       min(10, 8)  = 8
    amps = [(now, 16.0), (now + 300, 6.0), (now + 420, 16.0), (now + 600, 10.0),
            (now + 900, 8.0)]
    start, periods = await composite(csms, 1, 1200, "A")
    assert same_periods(periods, [(max(0, t - start), a) for t, a in amps]), periods
    start, periods = await composite(csms, 1, 1200, "W")
    assert same_periods(periods, [(max(0, t - start), a * WATTS_PER_AMP) for t, a in amps]), \
        periods
    # The grid connection of a one-connector station expects what that connector may draw.
    start, periods = await composite(csms, 0, 1200, "A")
    assert same_periods(periods, [(max(0, t - start), a) for t, a in amps]), periods
    # Only the next 400 s: the periods that begin in them.
    start, periods = await composite(csms, 1, 400, "A")
    assert same_periods(periods, [(0, 16.0), (now + 300 - start, 6.0)]), periods
    # A session now charges at the first period's 16 A.
    await start_session(cp, csms)
    await pilot_offers(cp, 16.0)


# ---- what 1.6 rules out -----------------------------------------------------------------------


async def test_profiles_the_specification_rules_out_are_rejected(csms, start_agent):
    cp = await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    config = await get_config(csms, "ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods")
    max_level = int(config["ChargeProfileMaxStackLevel"]["value"])
    max_periods = int(config["ChargingScheduleMaxPeriods"]["value"])
    too_many = [(i * 60, 7.0) for i in range(max_periods + 1)]
    ruled_out = [
        # 3.13.1: a ChargePointMaxProfile is set on connector 0 only.
        (1, cs_profile(1, 0, "ChargePointMaxProfile", [(0, 7)])),
        # 3.13.1: a TxProfile on a connector > 0 only ...
        (0, cs_profile(2, 0, "TxProfile", [(0, 7)])),
        # ... and only where a transaction runs.
        (1, cs_profile(3, 0, "TxProfile", [(0, 7)])),
        # No connector 3 on a two-connector station.
        (3, cs_profile(4, 0, "TxDefaultProfile", [(0, 7)])),
        # 9.4: above ChargeProfileMaxStackLevel, more periods than ChargingScheduleMaxPeriods.
        (1, cs_profile(5, max_level + 1, "TxDefaultProfile", [(0, 7)])),
        (1, cs_profile(6, 0, "TxDefaultProfile", too_many)),
        # A Recurring profile says what it recurs on: without recurrencyKind it cannot.
        (1, cs_profile(7, 0, "TxDefaultProfile", [(0, 7)], kind="Recurring")),
    ]
    for connector, profile in ruled_out:
        assert await set_profile(csms, connector, profile) == "Rejected", (connector, profile)
    # None of them was installed: nothing to clear, and no limit but the hardware's.
    assert await clear(csms) == "Unknown"
    assert await limits_now(csms, 1) == HARDWARE_MAX
    assert await limits_now(csms, 2) == HARDWARE_MAX
    # 5.7: a connector the station does not have has no composite schedule.
    answer = await csms.call(CP, "GetCompositeSchedule", {"connectorId": 3, "duration": 60})
    assert answer["status"] == "Rejected"

    await start_session(cp, csms, "CARD1", 1)
    (tx_id,) = transaction_ids(csms)
    for connector, profile in [
        (1, cs_profile(8, 0, "TxProfile", [(0, 7)], transaction_id=tx_id + 1)),  # not running
        (2, cs_profile(9, 0, "TxProfile", [(0, 7)], transaction_id=tx_id)),  # on connector 1
        (2, cs_profile(10, 0, "TxProfile", [(0, 7)])),  # nothing runs on connector 2
    ]:
        assert await set_profile(csms, connector, profile) == "Rejected", (connector, profile)
    await cp.settle()
    assert offered(cp) == HARDWARE_MAX
    # The limits themselves are allowed: the top stack level with the most periods (12 A for
    # the first minute from now, then 6 A).
    at_the_limits = [(i * 60, 12.0 if i == 0 else 6.0) for i in range(max_periods)]
    assert await set_profile(csms, 1, cs_profile(11, max_level, "TxProfile", at_the_limits,
                                                 start=whole_second_now(),
                                                 transaction_id=tx_id)) == "Accepted"
    await pilot_offers(cp, 12.0)


async def test_no_more_profiles_than_max_charging_profiles_installed(csms, start_agent):
    await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    config = await get_config(csms, "ChargeProfileMaxStackLevel", "MaxChargingProfilesInstalled")
    levels = range(int(config["ChargeProfileMaxStackLevel"]["value"]) + 1)
    most = int(config["MaxChargingProfilesInstalled"]["value"])
    # Distinct (connector, purpose, stackLevel): none replaces another (3.13.1, 3.13.2).
    slots = [(connector, purpose, level)
             for connector, purpose in [(0, "TxDefaultProfile"), (0, "ChargePointMaxProfile"),
                                        (1, "TxDefaultProfile"), (2, "TxDefaultProfile")]
             for level in levels]
    assert len(slots) > most, "the station reports more profiles than 1.6 lets one install"
    for n, (connector, purpose, level) in enumerate(slots[:most + 1], start=1):
        answer = await set_profile(csms, connector, cs_profile(n, level, purpose, [(0, 20)]))
        assert answer == ("Accepted" if n <= most else "Rejected"), (n, connector, purpose)
    # Full, a profile that replaces one (by its id) still fits.
    connector, purpose, level = slots[0]
    assert await set_profile(csms, connector, cs_profile(1, level, purpose, [(0, 18)])) == \
        "Accepted"
    # One cleared, one more fits again.
    assert await clear(csms, id=2) == "Accepted"
    connector, purpose, level = slots[most]
    assert await set_profile(csms, connector, cs_profile(most + 1, level, purpose,
                                                         [(0, 20)])) == "Accepted"


# ---- ClearChargingProfile (5.5) ---------------------------------------------------------------


async def test_clear_charging_profile_by_each_criterion(csms, start_agent):
    await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    # Nothing installed: nothing matches (5.5: Unknown).
    assert await clear(csms, id=11) == "Unknown"
    assert await clear(csms, connectorId=1) == "Unknown"
    assert await clear(csms, chargingProfilePurpose="TxDefaultProfile") == "Unknown"
    installed = [
        (0, cs_profile(11, 0, "TxDefaultProfile", [(0, 20)])),  # every connector
        (1, cs_profile(12, 1, "TxDefaultProfile", [(0, 10)])),
        (2, cs_profile(13, 2, "TxDefaultProfile", [(0, 8)])),
        (0, cs_profile(14, 0, "ChargePointMaxProfile", [(0, 24)])),
    ]
    for connector, profile in installed:
        assert await set_profile(csms, connector, profile) == "Accepted"
    # Connector 0 is the expected consumption for the grid connection (5.7): what the
    # connectors can draw together, within the ChargePointMaxProfile (3.13.3).
    assert await limits_now(csms, 1) == 10.0  # profile 12 over 11: its level is higher
    assert await limits_now(csms, 2) == 8.0
    assert await limits_now(csms, 0) == 18.0  # min(24, 10 + 8)

    assert await clear(csms, id=12) == "Accepted"
    assert await limits_now(csms, 1) == 20.0  # profile 11 again
    assert await limits_now(csms, 0) == 24.0  # min(24, 20 + 8)
    assert await clear(csms, id=12) == "Unknown"

    assert await clear(csms, connectorId=2) == "Accepted"  # profile 13
    assert await limits_now(csms, 2) == 20.0
    assert await limits_now(csms, 0) == 24.0  # min(24, 20 + 20)
    assert await clear(csms, connectorId=2) == "Unknown"

    assert await clear(csms, chargingProfilePurpose="ChargePointMaxProfile") == "Accepted"
    assert await limits_now(csms, 0) == 40.0  # 20 + 20, nothing above them now
    assert await clear(csms, chargingProfilePurpose="ChargePointMaxProfile") == "Unknown"

    assert await set_profile(csms, 1, cs_profile(12, 1, "TxDefaultProfile", [(0, 10)])) == \
        "Accepted"
    assert await limits_now(csms, 1) == 10.0
    assert await clear(csms, stackLevel=1) == "Accepted"  # profile 12, not 11 (level 0)
    assert await limits_now(csms, 1) == 20.0
    assert await clear(csms, stackLevel=1) == "Unknown"

    assert await clear(csms, connectorId=0, chargingProfilePurpose="TxDefaultProfile") == \
        "Accepted"
    assert await limits_now(csms, 1) == HARDWARE_MAX
    assert await limits_now(csms, 2) == HARDWARE_MAX
    assert await limits_now(csms, 0) == 2 * HARDWARE_MAX
    assert await clear(csms) == "Unknown"  # all gone


# ---- RemoteStartTransaction with a profile (5.11) ---------------------------------------------


async def test_remote_start_with_a_tx_profile_limits_that_transaction_only(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 20)])) == \
        "Accepted"
    mark = csms.mark()
    answer = await csms.call(CP, "RemoteStartTransaction", {
        "connectorId": 1, "idTag": "APP1",
        "chargingProfile": cs_profile(50, 0, "TxProfile", [(0, 12)], kind="Relative")})
    assert answer == {"status": "Accepted"}
    await csms.wait_for_call("Authorize", after=mark)
    await cp.settle()
    # Plugged early in a wall-clock second, the composite below is asked within the
    # transaction's first second: a Relative TxProfile holds from the transaction's start, which
    # is after the whole second a composite schedule is given from.
    await asyncio.sleep(1.05 - time.time() % 1.0)
    cp.mock.plug(1)
    await csms.wait_for_call("StartTransaction", after=mark)
    # "The Charge Point SHALL use this ChargingProfile for the transaction": 12 A, over the
    # TxDefaultProfile's 20 A, at the pilot and in the composite schedule from its start.
    await pilot_offers(cp, 12.0)
    assert await limits_now(csms, 1) == 12.0
    await wait_status(csms, "Charging", after=mark)
    (tx_id,) = transaction_ids(csms)
    assert await csms.call(CP, "RemoteStopTransaction", {"transactionId": tx_id}) == {
        "status": "Accepted"}
    await csms.wait_for_call("StopTransaction", after=mark)
    # Gone with its transaction (3.13.1); the default is back for the next one.
    assert await clear(csms, id=50) == "Unknown"
    assert await limits_now(csms, 1) == 20.0
    cp.mock.unplug(1)
    await wait_status(csms, "Available", after=mark)
    await start_session(cp, csms, "CARD2")
    await pilot_offers(cp, 20.0)


async def test_remote_start_with_another_purpose_is_rejected(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    mark = csms.mark()
    # 5.11: the profile of a RemoteStartTransaction SHALL be a TxProfile.
    answer = await csms.call(CP, "RemoteStartTransaction", {
        "connectorId": 1, "idTag": "APP1",
        "chargingProfile": cs_profile(51, 0, "TxDefaultProfile", [(0, 12)])})
    assert answer == {"status": "Rejected"}
    cp.mock.plug(1)
    await wait_status(csms, "Preparing", after=mark)
    await cp.settle()
    assert calls_after(csms, "Authorize", mark) == []
    assert calls_after(csms, "StartTransaction", mark) == []
    assert await clear(csms, id=51) == "Unknown"  # not installed either


# ---- persistence ------------------------------------------------------------------------------


async def test_profiles_survive_a_restart_but_a_tx_profile_not_its_transaction(csms,
                                                                                start_agent):
    cp = await start_agent()
    await booted(csms)
    assert await set_profile(csms, 0, cs_profile(1, 0, "TxDefaultProfile", [(0, 10)])) == \
        "Accepted"
    assert await set_profile(csms, 0, cs_profile(2, 0, "ChargePointMaxProfile",
                                                 [(0, 24)])) == "Accepted"
    await start_session(cp, csms)
    (tx_id,) = transaction_ids(csms)
    assert await set_profile(csms, 1, cs_profile(3, 0, "TxProfile", [(0, 14)],
                                                 transaction_id=tx_id)) == "Accepted"
    await pilot_offers(cp, 14.0)
    mark = csms.mark()
    await cp.restart()  # a crash: the transaction is closed at the next start
    await csms.wait_for_call("BootNotification", after=mark)
    await csms.wait_for_call("StopTransaction", after=mark,
                             predicate=lambda p: p["transactionId"] == tx_id)
    # The defaults were kept; the TxProfile ended with its transaction (3.13.1).
    assert await limits_now(csms, 1) == 10.0
    assert await limits_now(csms, 0) == 10.0  # the grid: min(24, the one connector's 10)
    assert await clear(csms, id=3) == "Unknown"
    await start_session(cp, csms, "CARD2")
    await pilot_offers(cp, 10.0)
    # The station maximum was kept as well.
    assert await clear(csms, chargingProfilePurpose="ChargePointMaxProfile") == "Accepted"


# ---- the installer's site limit, shared ------------------------------------------------------


async def test_a_site_limit_is_shared_online_and_offline(csms, start_agent, pilot_calls):
    cp = await start_agent(station={"connectors": 2, "site_limit": 32})
    await booted(csms, connectors=2)
    await start_session(cp, csms, "CARD1", 1)
    await pilot_offers(cp, 32.0, 1)  # alone, it takes the whole supply

    async def second_session() -> None:
        mark = len(pilot_calls)
        # 32 A between two sessions: 16 A each.
        await join_shared_supply(cp, "CARD2", 2, 16.0)
        await pilot_offers(cp, 16.0, 1)
        calls = pilot_calls[mark:]
        lowered = next(i for i, c in enumerate(calls) if c.connector == 1 and c.amps == 16)
        offered_2 = next(i for i, c in enumerate(calls) if c.connector == 2 and c.amps > 0)
        assert lowered < offered_2, calls  # the first gives up its share before

    await second_session()
    # One ends (its car leaves): the other gets the whole supply back.
    cp.mock.unplug(2)
    await pilot_offers(cp, 32.0, 1)
    await pilot_offers(cp, 0.0, 2)

    # The same without the CSMS: the card is known from the first time round (the cache).
    await cp.go_offline()
    await second_session()
    # This time the second car has paused by itself (full, or its timer) when its driver
    # stops with the card: nothing at the pilot changes state, and still the share returns.
    cp.mock.suspend(2)
    await until_status(cp, "SuspendedEV", 2)
    cp.mock.swipe("CARD2", 2)
    await pilot_offers(cp, 0.0, 2)
    await pilot_offers(cp, 32.0, 1)
    assert not cp.agent.hardware.contactors[2].is_closed
    never_over(pilot_calls, 32.0)


async def until_status(cp: Any, status: str, connector: int, timeout: float = 3.0) -> None:
    """The connector's status as the core has it (the CSMS may be out of reach)."""
    deadline = time.monotonic() + timeout
    while await cp.status(connector) != status:
        assert time.monotonic() < deadline, f"connector {connector} not {status}"
        await asyncio.sleep(0.01)
