"""Charging profiles from the wire and from the store: what is accepted, and as what."""

from __future__ import annotations

import pytest

from cpagent.core.schedules import ProfileKind, ProfilePurpose
from cpagent.ocpp16.smart_charging import profile_of
from cpagent.records import profile_from_json, profile_to_json
from cpagent.schedule_wire import InvalidProfile, composite_duration

NOW = 1_780_000_000.0


def wire16(purpose: str = "TxDefaultProfile", kind: str = "Absolute", **schedule) -> dict:
    return {"chargingProfileId": 3, "stackLevel": 1, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind,
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 16}, {"startPeriod": 600, "limit": 8}], **schedule}}


def test_a_16_absolute_default_without_a_start_runs_from_the_start_of_charging():
    # 1.6 ChargingSchedule.startSchedule: "If absent the schedule will be relative to start
    # of charging" -- not to the moment the profile was installed.
    assert profile_of(wire16(), 1, None, NOW).kind is ProfileKind.RELATIVE
    station_max = profile_of(wire16("ChargePointMaxProfile"), 0, None, NOW)
    assert (station_max.kind, station_max.schedule.start) == (ProfileKind.ABSOLUTE, NOW)


def test_phase_switching_is_refused_where_the_hardware_has_none():
    d = wire16(startSchedule="2026-01-01T00:00:00Z")
    d["chargingSchedule"]["chargingSchedulePeriod"][0]["phaseToUse"] = 1
    with pytest.raises(InvalidProfile, match="phaseToUse"):
        profile_of(d, 1, None, NOW)


def test_composite_durations():
    assert composite_duration(0) is None and composite_duration(-5) is None
    assert composite_duration(3600) == 3600
    assert composite_duration(365 * 86400) == 7 * 86400  # a week is what is planned


def test_a_stored_profile_round_trips_and_a_damaged_one_is_refused():
    profile = profile_of(wire16(startSchedule="2026-01-01T00:00:00Z"), 1, None, NOW)
    stored = profile_to_json(profile)
    assert profile_from_json(stored) == profile
    for damage in ({"stack_level": "1"}, {"purpose": "max"}, {"valid_to": "tomorrow"}):
        with pytest.raises((ValueError, KeyError)):
            profile_from_json({**stored, **damage})
    bad_periods = {**stored, "schedule": {**stored["schedule"], "periods": [[600, 8, None]]}}
    with pytest.raises(ValueError, match="start at 0"):
        profile_from_json(bad_periods)
    assert ProfilePurpose(stored["purpose"]) is ProfilePurpose.TX_DEFAULT
