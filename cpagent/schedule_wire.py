"""Charging schedules on the wire: the part 1.6 and 2.0.1 spell alike.

Both versions name a schedule's fields, its units ("A", "W"), its kinds ("Absolute",
"Recurring", "Relative") and recurrences ("Daily", "Weekly") with the same words; what differs
(the purposes, the profile's id and transaction fields, the composite answer's envelope) stays
in each adapter. Checks here are the ones both specifications make: a first period at 0,
periods in increasing order, a start for a Recurring schedule.
"""

from __future__ import annotations

import itertools
import math

from cpagent.clock import parse_time
from cpagent.core.schedules import (
    ChargingProfile,
    Period,
    ProfileKind,
    ProfilePurpose,
    RateUnit,
    Recurrence,
    Schedule,
    Segment,
    Supply,
)

UNITS = {"A": RateUnit.AMPS, "W": RateUnit.WATTS}
UNIT_WORDS = {v: k for k, v in UNITS.items()}
KINDS = {"Absolute": ProfileKind.ABSOLUTE, "Recurring": ProfileKind.RECURRING,
         "Relative": ProfileKind.RELATIVE}
RECURRENCES = {"Daily": Recurrence.DAILY, "Weekly": Recurrence.WEEKLY}
KIND_WORDS = {v: k for k, v in KINDS.items()}
RECURRENCE_WORDS = {v: k for k, v in RECURRENCES.items()}


class InvalidProfile(ValueError):
    """Why a charging profile cannot be installed, in words for the log and the CSMS."""


def _time(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise InvalidProfile(f"{what} {text!r} is not a date and time") from None


def schedule_from_wire(d: dict, kind: ProfileKind, now: float, max_periods: int, *,
                       start_required: bool) -> Schedule:
    periods = d["chargingSchedulePeriod"]
    if not periods:
        raise InvalidProfile("the schedule has no periods")
    if len(periods) > max_periods:
        raise InvalidProfile(f"{len(periods)} periods; this station takes at most {max_periods}")
    starts = [p["startPeriod"] for p in periods]
    if starts[0] != 0:
        raise InvalidProfile("the first period must start at 0")
    if any(b <= a for a, b in itertools.pairwise(starts)):
        raise InvalidProfile("periods must start in increasing order")
    if any(p["limit"] < 0 for p in periods):
        raise InvalidProfile("a limit is negative")
    if any("phaseToUse" in p for p in periods):
        # 2.0.1: only where the station can switch phases (Phases3to1), which this one can't.
        raise InvalidProfile("phaseToUse needs phase switching, which this station lacks")
    start = _time(d.get("startSchedule"), "startSchedule")
    if start is None and kind is ProfileKind.RECURRING:
        raise InvalidProfile("a Recurring schedule needs a startSchedule")
    if start is None and kind is ProfileKind.ABSOLUTE:
        if start_required:
            raise InvalidProfile("an Absolute schedule needs a startSchedule")
        start = now  # lenient (1.6): a station maximum without a start holds from now
    duration = d.get("duration")
    if duration is not None and duration <= 0:
        raise InvalidProfile("duration must be positive")
    return Schedule(
        UNITS[d["chargingRateUnit"]],
        tuple(Period(float(p["startPeriod"]), float(p["limit"]), p.get("numberPhases"))
              for p in periods),
        start, None if duration is None else float(duration), d.get("minChargingRate"),
        d.get("id"))


def profile_from_wire(d: dict, schedule: dict, *, profile_id: int, purpose: ProfilePurpose,
                      evse_id: int, transaction: str | None, now: float, max_periods: int,
                      start_required: bool = False) -> ChargingProfile:
    kind = KINDS[d["chargingProfileKind"]]
    if kind is ProfileKind.ABSOLUTE and not start_required and "startSchedule" not in schedule \
            and purpose is not ProfilePurpose.STATION_MAX:
        # 1.6 ChargingSchedule.startSchedule: "If absent the schedule will be relative to
        # start of charging."
        kind = ProfileKind.RELATIVE
    recurrence = RECURRENCES.get(d.get("recurrencyKind") or "")
    if kind is ProfileKind.RECURRING and recurrence is None:
        raise InvalidProfile("a Recurring profile needs a recurrencyKind")
    valid_from = _time(d.get("validFrom"), "validFrom")
    valid_to = _time(d.get("validTo"), "validTo")
    if valid_to is not None and valid_to <= now:
        raise InvalidProfile("validTo has passed")
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        raise InvalidProfile("validTo is not after validFrom")
    return ChargingProfile(
        profile_id, d["stackLevel"], purpose, kind,
        schedule_from_wire(schedule, kind, now, max_periods, start_required=start_required),
        evse_id, recurrence if kind is ProfileKind.RECURRING else None, valid_from, valid_to,
        transaction)


MAX_COMPOSITE = 7 * 86400  # seconds a composite schedule covers at most: a week is planned


def composite_duration(requested: int) -> int | None:
    """The duration a composite answer covers; None when the request cannot be answered."""
    return min(requested, MAX_COMPOSITE) if requested > 0 else None


def composite_limit(value: float) -> float:
    """To the 0.1 both versions' limits are multiples of, never up: a composite schedule
    must not promise more than the station will offer."""
    return math.floor(value * 10 + 1e-6) / 10


def composite_periods(segments: list[Segment], start: float, unit: RateUnit,
                      supply: Supply) -> list[dict]:
    periods: list[dict] = []
    for s in segments:
        limit = composite_limit(supply.in_unit(s.amps, unit))
        offset = round(s.start - start)
        if periods and periods[-1]["startPeriod"] == offset:
            periods.pop()  # two boundaries in one second: what holds from then on is told
        if periods and periods[-1]["limit"] == limit:
            continue
        periods.append({"startPeriod": offset, "limit": limit, "numberPhases": supply.phases})
    return periods


def schedule_start(now: float) -> float:
    """Where a composite schedule begins: the next whole second (the wire's periods count
    whole seconds), so nothing it states lies in the past."""
    return float(math.ceil(now))


def composite_minimum(segments: list[Segment], unit: RateUnit, supply: Supply) -> float | None:
    """The winning schedule's minimum rate at the start, where one was given."""
    first = segments[0].min_amps if segments else None
    return None if first is None else composite_limit(supply.in_unit(first, unit))
