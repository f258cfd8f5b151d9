"""The current an EVSE may offer: the smallest of every limit that applies to it, shared.

Per EVSE: the hardware's maximum, a limit set locally (a load manager), and the composite of
the charging profiles in force (see `schedules`). For the station: the installer's site limit
(the supply's fuse) and the station maximum profile, shared between the sessions that may draw
current, so that their sum never exceeds it, with or without a CSMS. A share below what a
vehicle can use (6 A, or the schedule's minimum rate) is no share: that session pauses, the
latest-started first, and its current goes to the others.

Schedules are evaluated at instants and cached until their next boundary, so the offer costs
nothing between boundaries; `next_change` tells the core when to look again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo

from cpagent.core.model import CoreSettings
from cpagent.core.schedules import (
    ChargingProfile,
    ProfilePurpose,
    Segment,
    Supply,
    composite,
    stacked,
    summed,
)

MIN_OFFER = 6.0  # IEC 61851-1: below 6 A the pilot cannot offer charging
FOLLOW_TIME = 5.0  # IEC 61851-1: seconds a vehicle has to follow a lower offer
# What the station takes, as both versions report it (1.6 keys, 2.0.1 SmartChargingCtrlr):
# enough for a day in half-hours from a few sources; bench/composite_schedule.py times it.
MAX_PROFILES = 32
MAX_PERIODS = 48
MAX_STACK_LEVEL = 8
HORIZON = 3600.0  # how far ahead a cached limit is computed; it is looked at again after


class LimitSource(StrEnum):
    """What set an EVSE's offer."""

    HARDWARE = "hardware"  # the EVSE's own maximum: nothing limits it
    PROFILE = "profile"  # a charging profile of the CSMS
    LOCAL = "local"  # a limit set on the station (a local load manager)
    SITE = "site"  # the installer's site limit, shared between the sessions


@dataclass(frozen=True, slots=True)
class Demand:
    """A session that may draw current: what it may take by itself, and since when."""

    evse_id: int
    transaction: str | None
    tx_start: float | None
    since: float


@dataclass(frozen=True, slots=True)
class Offer:
    amps: float
    source: LimitSource
    cut: bool = False  # sharing the supply left it less than its own limit


class Limits:
    def __init__(self, settings: CoreSettings, evse_ids: Iterable[int],
                 profiles: Iterable[ChargingProfile] = ()) -> None:
        self.settings = settings
        self.evse_ids = tuple(evse_ids)
        self._local: dict[int, float] = {}
        self.profiles: dict[int, ChargingProfile] = {p.id: p for p in profiles}
        # EVSE -> (the transaction it was computed for, its segment at the last look)
        self._cache: dict[int, tuple[tuple[str | None, float | None], Segment]] = {}
        self._seen: tuple = ()
        self._look_again = math.inf  # a raise held back until then
        self._zone_name = ""
        self._zone = ZoneInfo("UTC")

    # ---- what applies -----------------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        name = self.settings.time_zone
        if name != self._zone_name:
            self._zone, self._zone_name = ZoneInfo(name), name
        return self._zone

    @property
    def supply(self) -> Supply:
        return Supply(self.settings.voltage, self.settings.phases)

    def changed(self) -> None:
        """Profiles, local limits or settings changed: every cached limit is stale."""
        self._cache.clear()

    def set_local(self, evse_id: int, amps: float | None) -> None:
        if amps is None:
            self._local.pop(evse_id, None)
        else:
            self._local[evse_id] = amps
        self.changed()

    def install(self, profile: ChargingProfile) -> None:
        self.profiles[profile.id] = profile
        self.changed()

    def remove(self, ids: Iterable[int]) -> list[ChargingProfile]:
        removed = [self.profiles.pop(i) for i in list(ids) if i in self.profiles]
        if removed:
            self.changed()
        return removed

    def expired(self, now: float) -> list[int]:
        return [p.id for p in self.profiles.values() if p.expired(now)]

    def bound_to(self, ref: str) -> list[int]:
        return [p.id for p in self.profiles.values() if p.transaction == ref]

    def _stacks(self, evse_id: int, transaction: str | None) -> list[list[ChargingProfile]]:
        by_purpose: dict[ProfilePurpose, list[ChargingProfile]] = {p: [] for p in
                                                                   ProfilePurpose}
        for p in self.profiles.values():
            by_purpose[p.purpose].append(p)
        station_max = stacked(by_purpose[ProfilePurpose.STATION_MAX], 0)
        if evse_id == 0:
            external = [p for p in by_purpose[ProfilePurpose.EXTERNAL] if p.evse_id == 0]
            return [station_max, stacked(external, 0)]
        external = [p for p in by_purpose[ProfilePurpose.EXTERNAL] if p.evse_id in (0, evse_id)]
        tx = [p for p in by_purpose[ProfilePurpose.TX]
              if transaction is not None and p.transaction == transaction
              and p.evse_id in (0, evse_id)]
        defaults = [p for p in by_purpose[ProfilePurpose.TX_DEFAULT] if p.evse_id in (0, evse_id)]
        # A transaction profile overrides every default one, whatever the stack levels.
        return [station_max, stacked(external, evse_id),
                stacked(tx, evse_id) + stacked(defaults, evse_id)]

    def cap(self, evse_id: int) -> float:
        """The fixed part: the hardware and the installer's limits (0: the supply's)."""
        site = self.settings.site_limit if self.settings.site_limit is not None else math.inf
        if evse_id == 0:
            return min(self.settings.max_current * len(self.evse_ids), site)
        # No EVSE can get more than the whole site, whatever it shares with the others.
        return min(self.settings.max_current, self._local.get(evse_id, math.inf), site)

    def schedule(self, evse_id: int, start: float, end: float, transaction: str | None = None,
                 tx_start: float | None = None, share: float | None = None,
                 memo: dict | None = None) -> list[Segment]:
        """The composite schedule of an EVSE (0: the station's supply) over [start, end);
        `share`: what sharing the supply leaves it now, expected to hold."""
        cap = self.cap(evse_id) if share is None else min(self.cap(evse_id), share)
        return composite(self._stacks(evse_id, transaction), start, end,
                         cap=cap, supply=self.supply, zone=self.zone,
                         tx_start=tx_start, limiting_stack=2 if evse_id else None, memo=memo)

    def grid_schedule(self, start: float, end: float, sessions: dict[int, tuple[str, float]],
                      shares: dict[int, float]) -> list[Segment]:
        """What the station as a whole is expected to draw over [start, end) (1.6 connector
        0, 2.0.1 evseId 0): the EVSEs' composites together, at most the supply's.
        `sessions`: the running transactions by EVSE, (reference, start)."""
        memo: dict = {}  # the station's profiles are in every EVSE's stacks: worked out once
        per_evse = [self.schedule(e, start, end, *sessions.get(e, (None, None)),
                                  share=shares.get(e), memo=memo) for e in self.evse_ids]
        return summed(per_evse, self.schedule(0, start, end, memo=memo))

    def _settings_seen(self) -> None:
        s = self.settings
        seen = (s.max_current, s.voltage, s.phases, s.site_limit, s.time_zone)
        if seen != self._seen:
            self._seen = seen
            self._cache.clear()

    def at(self, evse_id: int, now: float, transaction: str | None = None,
           tx_start: float | None = None) -> Segment:
        """The composite's segment at `now`, cached until it ends."""
        self._settings_seen()
        session = (transaction, tx_start)
        cached = self._cache.get(evse_id)
        if cached is not None and cached[0] == session and cached[1].start <= now < cached[1].end:
            return cached[1]
        found = self.schedule(evse_id, now, now + HORIZON, transaction, tx_start)[0]
        self._cache[evse_id] = (session, found)
        return found

    def next_change(self) -> float:
        """When a cached limit ends: the core looks at the offers again then."""
        return min(min((s.end for _, s in self._cache.values()), default=math.inf),
                   self._look_again)

    def look_again_at(self, when: float) -> None:
        self._look_again = min(self._look_again, when)

    def looked(self, now: float) -> None:
        if now >= self._look_again:
            self._look_again = math.inf

    # ---- sharing ----------------------------------------------------------------------------

    def allocate(self, demands: Iterable[Demand], now: float) -> dict[int, Offer]:
        """What each session may be offered now; 0 A where its share is too small to use."""
        demands = list(demands)
        own: dict[int, Segment] = {}
        for d in demands:
            own[d.evse_id] = self.at(d.evse_id, now, d.transaction, d.tx_start)
        for e in [e for e in self._cache if e and e not in own]:
            del self._cache[e]  # no session there: its boundaries are no reason to look again
        since = {d.evse_id: d.since for d in demands}
        station = self.at(0, now)
        supply = station.amps
        active = sorted(own, key=lambda e: since[e])
        while True:
            shares = _fill({e: own[e].amps for e in active}, supply)
            short = [e for e in active
                     if shares[e] < max(MIN_OFFER, own[e].min_amps or 0.0)]
            if not short:
                break
            # The session that came last pauses first; its current goes to the others.
            active.remove(max(short, key=lambda e: since[e]))
        by_station = LimitSource.PROFILE if station.profile_id is not None else LimitSource.SITE
        offers: dict[int, Offer] = {}
        for e, segment in own.items():
            if segment.profile_id is not None:
                by_itself = LimitSource.PROFILE
            elif segment.amps >= self.settings.max_current:
                by_itself = LimitSource.HARDWARE
            elif e in self._local and self._local[e] <= segment.amps:
                by_itself = LimitSource.LOCAL
            else:
                by_itself = LimitSource.SITE  # the site limit caps even a lone session
            if e in active:
                amps = shares[e]
                cut = amps < segment.amps
                offers[e] = Offer(amps, by_station if cut else by_itself, cut)
            else:
                usable = segment.amps >= max(MIN_OFFER, segment.min_amps or 0.0)
                offers[e] = Offer(0.0, by_station if usable else by_itself, usable)
        return offers


def _fill(wants: dict[int, float], supply: float) -> dict[int, float]:
    """Share `supply` so that no one gets more than it wants and the rest is split evenly,
    in tenths of an amp, rounded down: the shares never add up to more than the supply."""
    return {e: math.floor(amps * 10 + 1e-9) / 10 if amps < wants[e] else amps
            for e, amps in _even(wants, supply).items()}


def _even(wants: dict[int, float], supply: float) -> dict[int, float]:
    shares: dict[int, float] = {}
    left = supply
    pending = sorted(wants, key=lambda e: wants[e])
    while pending:
        share = left / len(pending)
        e = pending[0]
        if wants[e] <= share:
            shares[e] = wants[e]
            left -= wants[e]
            pending.pop(0)
            continue
        for e in pending:
            shares[e] = share
        break
    return shares
