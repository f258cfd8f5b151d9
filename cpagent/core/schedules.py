"""Charging profiles and the composite schedule they make: pure functions of time.

A profile is a limit over time (a schedule of periods) with a purpose, a stack level and a
validity. The composite schedule of an EVSE is, at each instant, the smallest of: the station
maximum profile in force, the external constraints in force, the winning transaction or default
profile (a transaction profile overrides every default profile; within a kind the highest stack
level in force wins, at a tie the one set for this EVSE over the station-wide one), and fixed
caps (the hardware's maximum, the installer's limits). Where a winner's schedule has ended or
not yet begun, the next one down the stack is in force.

Limits are kept in amps per phase: a limit in watts is divided by the configured voltage and by
the phases the EVSE really uses. The hardware cannot switch phases, so a period's numberPhases
cannot lower that count: converting with fewer phases would let a three-phase car take three
times the power the CSMS granted.

Recurring profiles restart at the same local wall-clock time as their startSchedule, in the
installer's time zone: a daily 22:00 off-peak window stays at 22:00 across a DST change. Within
one recurrence, period offsets are elapsed seconds, as the specifications define them; the
recurrence that begins on the day of a change is an hour shorter or longer, and ends where the
next one begins.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum

DAY = 86400.0


class ProfilePurpose(StrEnum):
    STATION_MAX = "station_max"  # 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile
    TX_DEFAULT = "tx_default"
    TX = "tx"
    EXTERNAL = "external"  # 2.0.1 ChargingStationExternalConstraints: not set by the CSMS


class ProfileKind(StrEnum):
    ABSOLUTE = "absolute"
    RECURRING = "recurring"
    RELATIVE = "relative"  # from the start of the transaction


class Recurrence(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class RateUnit(StrEnum):
    AMPS = "amps"  # per phase
    WATTS = "watts"  # in total


@dataclass(frozen=True, slots=True)
class Period:
    start: float  # seconds from the start of the schedule
    limit: float  # in the schedule's unit
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    unit: RateUnit
    periods: tuple[Period, ...]
    start: float | None = None  # epoch seconds; required unless the profile is Relative
    duration: float | None = None  # seconds; None: the last period lasts
    min_rate: float | None = None  # the vehicle's least useful rate, in the same unit
    id: int | None = None  # 2.0.1 chargingSchedule id


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    id: int
    stack_level: int
    purpose: ProfilePurpose
    kind: ProfileKind
    schedule: Schedule
    evse_id: int = 0  # 0: the station (station-wide for defaults, the supply for maxima)
    recurrence: Recurrence | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    transaction: str | None = None  # the core's reference, for TX profiles

    def expired(self, now: float) -> bool:
        """Never in force again: past validTo, or an Absolute schedule whose end has passed."""
        if self.valid_to is not None and self.valid_to <= now:
            return True
        s = self.schedule
        return (self.kind is ProfileKind.ABSOLUTE and s.start is not None
                and s.duration is not None and s.start + s.duration <= now)


@dataclass(frozen=True, slots=True)
class Supply:
    """What converts watts to amps for one EVSE (or the station)."""

    voltage: float = 230.0
    phases: int = 3

    def amps(self, value: float, unit: RateUnit) -> float:
        if unit is RateUnit.AMPS:
            return value
        return value / (self.voltage * self.phases)

    def watts(self, amps: float) -> float:
        return amps * self.voltage * self.phases

    def in_unit(self, amps: float, unit: RateUnit) -> float:
        return amps if unit is RateUnit.AMPS else self.watts(amps)


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a composite schedule, in amps per phase."""

    start: float
    end: float
    amps: float
    min_amps: float | None = None  # of the winning transaction or default schedule
    profile_id: int | None = None  # which profile set the limit; None: a fixed cap did


def _recurrences(base: float, every: Recurrence, zone: tzinfo, start: float,
                 end: float) -> Iterator[tuple[float, float]]:
    """(begin, next begin) of each recurrence that overlaps [start, end), none before base."""
    days = 1 if every is Recurrence.DAILY else 7
    wall = datetime.fromtimestamp(base, zone).replace(tzinfo=None)
    length = days * DAY

    def begin(k: int) -> float:
        # Wall-clock arithmetic, then back to an instant: the same local time each time.
        # The first is the base itself (its wall time may be the second of a repeated hour).
        if k == 0:
            return base
        return (wall + timedelta(days=days * k)).replace(tzinfo=zone).timestamp()

    k = max(0, math.floor((start - base) / length) - 1)
    while begin(k + 1) <= start:
        k += 1
    while (b := begin(k)) < end:
        yield b, begin(k + 1)
        k += 1


_CONVERTED: dict[int, tuple[Schedule, Supply, float | None, list[float], list[float]]] = {}


def _in_amps(schedule: Schedule, supply: Supply) -> tuple[float | None, list[float],
                                                          list[float]]:
    """The schedule's minimum, period offsets and limits in amps, worked out once per
    schedule (profiles are immutable; a composite looks at each of them again and again)."""
    known = _CONVERTED.get(id(schedule))
    if known is not None and known[0] is schedule and known[1] == supply:
        return known[2], known[3], known[4]
    unit = schedule.unit
    minimum = None if schedule.min_rate is None else supply.amps(schedule.min_rate, unit)
    offsets = [q.start for q in schedule.periods]
    amps = [supply.amps(q.limit, unit) for q in schedule.periods]
    if len(_CONVERTED) > 512:
        _CONVERTED.clear()  # old profiles' entries; the ones in use come back at once
    _CONVERTED[id(schedule)] = (schedule, supply, minimum, offsets, amps)
    return minimum, offsets, amps


def steps(profile: ChargingProfile, start: float, end: float, supply: Supply, zone: tzinfo,
          tx_start: float | None = None) -> list[tuple[float, float, float, float | None]]:
    """Where in [start, end) the profile is in force, and with which limit: (from, to, amps,
    minimum amps) in time order. Tuples, not objects: a full station makes thousands."""
    schedule = profile.schedule
    lo = max(start, profile.valid_from if profile.valid_from is not None else -math.inf)
    hi = min(end, profile.valid_to if profile.valid_to is not None else math.inf)
    periods = schedule.periods
    if lo >= hi or not periods:
        return []
    duration = schedule.duration if schedule.duration is not None else math.inf
    if profile.kind is ProfileKind.RECURRING and schedule.start is not None and \
            profile.recurrence is not None:
        runs = [(b, min(b + duration, nxt))
                for b, nxt in _recurrences(schedule.start, profile.recurrence, zone, lo, hi)]
    elif profile.kind is ProfileKind.RELATIVE:
        base = tx_start if tx_start is not None else start
        runs = [(base, base + duration)]
    else:
        base = schedule.start if schedule.start is not None else start
        runs = [(base, base + duration)]
    minimum, offsets, amps = _in_amps(schedule, supply)
    count = len(periods)
    out: list[tuple[float, float, float, float | None]] = []
    for run_start, run_end in runs:
        first = max(lo, run_start)
        last = min(hi, run_end)
        # The period in force at `first`, then on until `last`.
        i = max(0, bisect.bisect_right(offsets, first - run_start) - 1)
        while i < count:
            a = run_start + offsets[i]
            if a >= last:
                break
            b = run_start + offsets[i + 1] if i + 1 < count else last
            if a < first:
                a = first
            if b > last:
                b = last
            if a < b:
                out.append((a, b, amps[i], minimum))
            i += 1
    return out


class _Cursor:
    """Walks a profile's steps forward in time: which one (if any) covers instant t."""

    __slots__ = ("i", "id", "n", "steps")

    def __init__(self, profile_id: int,
                 found: list[tuple[float, float, float, float | None]]) -> None:
        self.id = profile_id
        self.steps = found
        self.n = len(found)
        self.i = 0

    def at(self, t: float) -> tuple[float, float, float, float | None] | None:
        found, i, n = self.steps, self.i, self.n
        while i < n and found[i][1] <= t:
            i += 1
        self.i = i
        if i < n and found[i][0] <= t:
            return found[i]
        return None


def composite(stacks: Sequence[Sequence[ChargingProfile]], start: float, end: float, *,
              cap: float, supply: Supply, zone: tzinfo, tx_start: float | None = None,
              limiting_stack: int | None = None,
              memo: dict[tuple[int, float | None], list] | None = None) -> list[Segment]:
    """The composite schedule over [start, end): at each instant the smallest of `cap` and,
    for every stack (profiles best first), its first profile in force. `limiting_stack`
    names the stack whose minimum rate the segments carry (the transaction or default one).
    `memo` keeps each profile's steps for further composites over the same window."""
    cursors: list[list[_Cursor]] = []
    bounds = {start, end}
    for stack in stacks:
        row = []
        for profile in stack:
            key = (profile.id, tx_start if profile.kind is ProfileKind.RELATIVE else None)
            found = memo.get(key) if memo is not None else None
            if found is None:
                found = steps(profile, start, end, supply, zone, tx_start)
                if memo is not None:
                    memo[key] = found
            if found:
                row.append(_Cursor(profile.id, found))
                bounds.update(s[0] for s in found)
                bounds.update(s[1] for s in found)
        cursors.append(row)
    times = sorted(bounds)
    # (from, to, amps, minimum, profile id), merged while amps and minimum stay the same.
    found_segments: list[list] = []
    for t, t_next in itertools.pairwise(times):
        amps, minimum, source = cap, None, None
        for index, row in enumerate(cursors):
            for cursor in row:
                step = cursor.at(t)
                if step is None:
                    continue
                if step[2] < amps:
                    amps, source = step[2], cursor.id
                if index == limiting_stack:
                    minimum = step[3]
                break
        if found_segments and found_segments[-1][2] == amps and \
                found_segments[-1][3] == minimum:
            found_segments[-1][1] = t_next
        else:
            found_segments.append([t, t_next, amps, minimum, source])
    return [Segment(*f) for f in found_segments]


def stacked(profiles: Sequence[ChargingProfile], evse_id: int) -> list[ChargingProfile]:
    """Best first: the highest stack level; at a tie, the one set for this EVSE."""
    return sorted(profiles, key=lambda p: (p.stack_level, p.evse_id == evse_id), reverse=True)


def summed(schedules: Sequence[list[Segment]], cap: list[Segment]) -> list[Segment]:
    """What several EVSEs together may draw, at most `cap` (the supply): the composite of a
    grid connection. All lists cover the same window."""
    bounds = sorted({t for segments in [*schedules, cap] for s in segments
                     for t in (s.start, s.end)})
    cursors = [iter(segments) for segments in [*schedules, cap]]
    current: list[Segment | None] = [next(c, None) for c in cursors]
    out: list[Segment] = []
    for t, t_next in itertools.pairwise(bounds):
        for i, c in enumerate(cursors):
            while current[i] is not None and current[i].end <= t:  # type: ignore[union-attr]
                current[i] = next(c, None)
        total = sum(s.amps for s in current[:-1] if s is not None)
        limit = current[-1]
        amps = min(total, limit.amps) if limit is not None else total
        if out and out[-1].amps == amps:
            out[-1] = Segment(out[-1].start, t_next, amps, None, out[-1].profile_id)
        else:
            out.append(Segment(t, t_next, amps, None,
                               limit.profile_id if limit and limit.amps <= total else None))
    return out
