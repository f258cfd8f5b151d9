"""Charging profiles, the composite schedule and the shared supply, on a fake clock.

Every expectation is worked out by hand from the profiles in the test (times in UTC, amps per
phase, 230 V): the code under test is never asked what it should be.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from test_core import C, Rig, St, of, statuses

from cpagent.core.actions import (
    ChargingLimitChanged,
    ChargingProfilesChanged,
    CurrentOverrun,
    SetContactor,
    SetCurrentLimit,
    StatusChanged,
    TransactionEvent,
)
from cpagent.core.limits import Demand, Limits, LimitSource
from cpagent.core.model import CoreSettings, IdToken, Trigger, TxPoint
from cpagent.core.schedules import (
    ChargingProfile,
    Period,
    ProfileKind,
    ProfilePurpose,
    RateUnit,
    Recurrence,
    Schedule,
    Supply,
)
from cpagent.core.station import ChargingStation
from hal.interfaces import Fault, MeterReading

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


MIDNIGHT = at("2026-06-01T00:00:00")  # a Monday


def profile(pid: int, level: int, periods: list[tuple[float, float]], *,
            purpose: ProfilePurpose = ProfilePurpose.TX_DEFAULT,
            kind: ProfileKind = ProfileKind.ABSOLUTE, start: float | None = MIDNIGHT,
            duration: float | None = None, unit: RateUnit = RateUnit.AMPS, evse: int = 0,
            recurrence: Recurrence | None = None, valid_from: float | None = None,
            valid_to: float | None = None, transaction: str | None = None,
            min_rate: float | None = None) -> ChargingProfile:
    return ChargingProfile(
        pid, level, purpose, kind,
        Schedule(unit, tuple(Period(s, limit) for s, limit in periods), start, duration,
                 min_rate),
        evse, recurrence, valid_from, valid_to, transaction)


def limits(*profiles: ChargingProfile, evses: int = 1, **settings) -> Limits:
    return Limits(CoreSettings(**settings), range(1, evses + 1), profiles)


def plan(lim: Limits, start: float, end: float, evse: int = 1, **kw) -> list[tuple]:
    """(seconds from start, seconds long, amps) of each segment."""
    return [(s.start - start, s.end - s.start, round(s.amps, 2))
            for s in lim.schedule(evse, start, end, **kw)]


# ---- the composite -----------------------------------------------------------------------------

def test_absolute_periods_under_the_hardware_maximum():
    lim = limits(profile(1, 0, [(0, 16), (3600, 40), (7200, 10)]), max_current=32)
    # 40 A is more than the hardware's 32 A: the hardware wins there.
    assert plan(lim, MIDNIGHT, MIDNIGHT + 4 * 3600) == [
        (0, 3600, 16), (3600, 3600, 32), (7200, 7200, 10)]


def test_higher_stack_level_wins_while_in_force_then_the_lower_one_returns():
    lim = limits(profile(1, 0, [(0, 20)]),
                 profile(2, 3, [(0, 8)], start=MIDNIGHT + 600, duration=1200))
    assert plan(lim, MIDNIGHT, MIDNIGHT + 3600) == [
        (0, 600, 20), (600, 1200, 8), (1800, 1800, 20)]


def test_higher_stack_level_wins_even_when_it_allows_more():
    lim = limits(profile(1, 0, [(0, 10)]), profile(2, 1, [(0, 25)]))
    assert plan(lim, MIDNIGHT, MIDNIGHT + 60) == [(0, 60, 25)]


def test_a_stack_level_tie_goes_to_the_profile_set_for_the_evse():
    lim = limits(profile(1, 2, [(0, 10)], evse=0), profile(2, 2, [(0, 14)], evse=1), evses=2)
    assert plan(lim, MIDNIGHT, MIDNIGHT + 60, evse=1) == [(0, 60, 14)]
    assert plan(lim, MIDNIGHT, MIDNIGHT + 60, evse=2) == [(0, 60, 10)]


def test_a_transaction_profile_overrides_defaults_of_any_stack_level():
    lim = limits(profile(1, 9, [(0, 10)]),
                 profile(2, 0, [(0, 20)], purpose=ProfilePurpose.TX, evse=1, transaction="t1"))
    assert plan(lim, MIDNIGHT, MIDNIGHT + 60, transaction="t1") == [(0, 60, 20)]
    # Another transaction does not see it.
    assert plan(lim, MIDNIGHT, MIDNIGHT + 60, transaction="t2") == [(0, 60, 10)]


def test_the_station_maximum_caps_every_profile():
    lim = limits(profile(1, 0, [(0, 30), (1800, 12)]),
                 profile(2, 0, [(0, 20)], purpose=ProfilePurpose.STATION_MAX))
    assert plan(lim, MIDNIGHT, MIDNIGHT + 3600) == [(0, 1800, 20), (1800, 1800, 12)]


def test_valid_from_and_valid_to_bound_a_profile():
    lim = limits(profile(1, 0, [(0, 30)]),
                 profile(2, 1, [(0, 10)], valid_from=MIDNIGHT + 100, valid_to=MIDNIGHT + 200))
    assert plan(lim, MIDNIGHT, MIDNIGHT + 300) == [(0, 100, 30), (100, 100, 10), (200, 100, 30)]


def test_a_schedule_that_has_not_begun_leaves_the_lower_profile_in_force():
    lim = limits(profile(1, 0, [(0, 25)]), profile(2, 5, [(600, 7)]))  # first period at 600 s
    assert plan(lim, MIDNIGHT, MIDNIGHT + 1200) == [(0, 600, 25), (600, 600, 7)]


def test_watts_are_amps_by_voltage_and_phases():
    p = profile(1, 0, [(0, 11000)], unit=RateUnit.WATTS)
    assert plan(limits(p), MIDNIGHT, MIDNIGHT + 60) == [(0, 60, round(11000 / 690, 2))]
    # One phase at 230 V: the same power is three times the current (capped at 32 A).
    assert plan(limits(p, phases=1), MIDNIGHT, MIDNIGHT + 60) == [(0, 60, 32)]
    assert plan(limits(profile(1, 0, [(0, 3680)], unit=RateUnit.WATTS), phases=1,
                       voltage=230), MIDNIGHT, MIDNIGHT + 60) == [(0, 60, 16)]
    assert Supply(230, 3).watts(16) == 11040


def test_a_relative_profile_starts_with_its_transaction():
    tx_start = MIDNIGHT + 5000
    lim = limits(profile(1, 0, [(0, 10), (600, 20)], kind=ProfileKind.RELATIVE, start=None))
    assert plan(lim, tx_start + 300, tx_start + 900, tx_start=tx_start,
                transaction="t") == [(0, 300, 10), (300, 300, 20)]


def test_daily_recurrence_across_midnight():
    # 22:00 to 06:00 at 32 A, else 10 A, every day.
    p = profile(1, 0, [(0, 32), (8 * 3600, 10)], kind=ProfileKind.RECURRING,
                recurrence=Recurrence.DAILY, start=MIDNIGHT - 2 * 3600)
    start = MIDNIGHT + 3 * 86400 + 20 * 3600  # Thursday 20:00
    assert plan(limits(p), start, start + 12 * 3600) == [
        (0, 2 * 3600, 10), (2 * 3600, 8 * 3600, 32), (10 * 3600, 2 * 3600, 10)]


def test_weekly_recurrence_repeats_after_seven_days():
    # Monday 00:00-01:00 at 6 A, the rest of the week 20 A.
    p = profile(1, 0, [(0, 6), (3600, 20)], kind=ProfileKind.RECURRING,
                recurrence=Recurrence.WEEKLY, start=MIDNIGHT)
    week = 7 * 86400
    start = MIDNIGHT + 2 * week - 1800  # Sunday 23:30, two weeks on
    assert plan(limits(p), start, start + 7200) == [(0, 1800, 20), (1800, 3600, 6),
                                                     (5400, 1800, 20)]


@pytest.mark.parametrize(("day", "utc_hour"), [
    ("2026-03-28", 21),  # CET (+1): 22:00 local is 21:00 UTC
    ("2026-03-29", 20),  # clocks went forward at 02:00: CEST (+2)
    ("2026-10-24", 20),
    ("2026-10-25", 21),  # back to CET
])
def test_daily_recurrence_keeps_the_local_time_across_dst(day, utc_hour):
    base = datetime(2026, 1, 5, 22, 0, tzinfo=BERLIN).timestamp()  # 22:00 Berlin, winter
    p = profile(1, 0, [(0, 32), (3600, 8)], kind=ProfileKind.RECURRING,
                recurrence=Recurrence.DAILY, start=base)
    lim = limits(p, time_zone="Europe/Berlin")
    start = at(f"{day}T18:00:00")
    found = plan(lim, start, start + 6 * 3600)
    assert found[1][0] == (utc_hour - 18) * 3600, found
    assert found[1][2] == 32
    assert found[1][1] == 3600  # the period is elapsed seconds, as the specification says


def test_recurrence_in_utc_when_the_installer_says_so():
    base = datetime(2026, 1, 5, 22, 0, tzinfo=BERLIN).timestamp()  # 21:00 UTC
    p = profile(1, 0, [(0, 32), (3600, 8)], kind=ProfileKind.RECURRING,
                recurrence=Recurrence.DAILY, start=base)
    start = at("2026-07-01T18:00:00")
    assert plan(limits(p), start, start + 6 * 3600)[1][0] == 3 * 3600


def test_a_duration_shorter_than_the_recurrence_leaves_a_gap():
    p = profile(1, 1, [(0, 8)], kind=ProfileKind.RECURRING, recurrence=Recurrence.DAILY,
                start=MIDNIGHT, duration=3600)
    lim = limits(p, profile(2, 0, [(0, 16)]))
    start = MIDNIGHT + 86400 - 1800
    assert plan(lim, start, start + 7200) == [(0, 1800, 16), (1800, 3600, 8), (5400, 1800, 16)]


def test_expiry():
    absolute = profile(1, 0, [(0, 10)], duration=600)
    bounded = profile(2, 0, [(0, 10)], valid_to=MIDNIGHT + 60)
    lasting = profile(3, 0, [(0, 10)])
    lim = limits(absolute, bounded, lasting)
    assert lim.expired(MIDNIGHT + 59) == []
    assert lim.expired(MIDNIGHT + 60) == [2]
    assert lim.expired(MIDNIGHT + 600) == [1, 2]


# ---- the shared supply -------------------------------------------------------------------------

def demand(e: int, since: float = MIDNIGHT) -> Demand:
    return Demand(e, None, None, since)


def test_the_site_limit_is_shared_evenly():
    lim = limits(evses=2, site_limit=32.0)
    offers = lim.allocate([demand(1), demand(2)], MIDNIGHT)
    assert {e: o.amps for e, o in offers.items()} == {1: 16.0, 2: 16.0}
    assert {o.source for o in offers.values()} == {LimitSource.SITE}


def test_what_one_session_cannot_use_goes_to_the_others():
    lim = limits(profile(1, 0, [(0, 10)], evse=1), evses=3, site_limit=40.0)
    offers = lim.allocate([demand(1), demand(2), demand(3)], MIDNIGHT)
    assert {e: o.amps for e, o in offers.items()} == {1: 10.0, 2: 15.0, 3: 15.0}
    assert offers[1].source is LimitSource.PROFILE


def test_a_share_below_six_amps_pauses_the_latest_session():
    lim = limits(evses=3, site_limit=16.0)
    offers = lim.allocate([demand(1, MIDNIGHT), demand(2, MIDNIGHT + 10),
                           demand(3, MIDNIGHT + 5)], MIDNIGHT + 20)
    assert {e: o.amps for e, o in offers.items()} == {1: 8.0, 2: 0.0, 3: 8.0}
    assert sum(o.amps for o in offers.values()) <= 16.0


def test_a_station_maximum_profile_is_shared_like_the_site_limit():
    lim = limits(profile(1, 0, [(0, 20)], purpose=ProfilePurpose.STATION_MAX), evses=2)
    offers = lim.allocate([demand(1), demand(2)], MIDNIGHT)
    assert {e: o.amps for e, o in offers.items()} == {1: 10.0, 2: 10.0}
    assert offers[1].source is LimitSource.PROFILE


def test_the_vehicles_minimum_rate_counts_as_unusable_below_it():
    lim = limits(profile(1, 0, [(0, 9)], min_rate=10))
    assert lim.allocate([demand(1)], MIDNIGHT)[1].amps == 0.0


# ---- the limit applied in a session ------------------------------------------------------------

def test_a_profile_lowers_a_running_session_at_its_boundary():
    rig = Rig(max_current=32.0)
    rig.now = MIDNIGHT
    rig.charging()
    _, actions = rig.call("install_profile", profile(
        1, 0, [(0, 32), (600, 10)], start=MIDNIGHT))
    assert of(ChargingProfilesChanged, actions)
    assert of(SetCurrentLimit, actions) == []  # 32 A already
    rig.later(599)
    assert of(SetCurrentLimit, rig.tick()) == []
    rig.later(1)
    actions = rig.tick()
    assert of(SetCurrentLimit, actions) == [SetCurrentLimit(1, 10.0)]
    change = [a for a in of(TransactionEvent, actions)]
    assert [a.trigger for a in change] == [Trigger.CHARGING_RATE_CHANGED]
    assert of(ChargingLimitChanged, actions) == [ChargingLimitChanged(1, 10.0,
                                                                      LimitSource.PROFILE)]
    assert rig.cs.status(1)[0] is St.CHARGING


def test_below_six_amps_the_session_pauses_and_resumes():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.charging()
    rig.call("install_profile", profile(1, 0, [(0, 32), (60, 4), (120, 16)]))
    rig.later(60)
    actions = rig.tick()
    assert SetContactor(1, False) in actions and SetCurrentLimit(1, 0.0) in actions
    assert statuses(actions) == [St.SUSPENDED_EVSE]
    assert rig.cs.evse(1).transaction is not None  # paused, not ended
    rig.later(60)
    actions = rig.tick()
    assert SetCurrentLimit(1, 16.0) in actions
    assert rig.cs.evse(1).pilot is C and SetContactor(1, True) in actions
    # Offered again, the vehicle asks for power a moment later.
    assert statuses(actions) == [St.SUSPENDED_EV, St.CHARGING]


def test_a_second_session_takes_half_the_site_limit_from_the_first():
    rig = Rig(2, site_limit=32.0)
    rig.now = MIDNIGHT
    rig.charging("A", 1)
    assert rig.cs.evse(1).offered_amps == 32.0
    rig.plug(2)
    rig.card("B", 2)
    actions = rig.answer("B")
    # The first session is lowered; the second is offered its half only once the first
    # vehicle has had the 5 s IEC 61851-1 gives it to follow: 32 + 16 A never flow at once.
    assert of(SetCurrentLimit, actions) == [SetCurrentLimit(1, 16.0)]
    rig.later(4.9)
    assert of(SetCurrentLimit, rig.tick()) == []
    rig.later(0.1)
    assert of(SetCurrentLimit, rig.tick()) == [SetCurrentLimit(2, 16.0)]
    assert rig.cs.status(2)[0] is St.CHARGING
    rig.unplug(2)
    assert rig.cs.evse(1).offered_amps == 32.0


def test_a_remote_start_profile_belongs_to_its_transaction_and_ends_with_it():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.plug()
    tx_profile = profile(7, 0, [(0, 12)], purpose=ProfilePurpose.TX, kind=ProfileKind.RELATIVE,
                         start=None)
    rig.cs.remote_start(IdToken("APP"), 1, rig.now, profile=tx_profile)
    actions = rig.take() + rig.answer("APP")
    tx = rig.cs.evse(1).transaction
    assert tx is not None and rig.cs.evse(1).offered_amps == 12.0
    assert [p.transaction for p in rig.cs.profiles] == [tx.ref]
    assert of(ChargingProfilesChanged, actions)
    actions = rig.card("APP")  # ends it
    assert rig.cs.profiles == []
    assert of(ChargingProfilesChanged, actions)[-1].profiles == ()


def test_an_expired_profile_is_removed_and_the_offer_returns():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.charging()
    rig.call("install_profile", profile(1, 0, [(0, 10)], valid_to=MIDNIGHT + 300))
    assert rig.cs.evse(1).offered_amps == 10.0
    rig.later(300)
    actions = rig.tick()
    assert rig.cs.profiles == []
    assert of(ChargingProfilesChanged, actions) and SetCurrentLimit(1, 32.0) in actions


# ---- a vehicle that does not follow ------------------------------------------------------------

def test_a_vehicle_over_its_offer_for_long_is_reported_and_cleared_when_it_complies():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.charging()
    rig.call("install_profile", profile(1, 0, [(0, 16)]))

    def draw(amps: float) -> list:
        rig.cs.meter_sample(1, MeterReading(energy_wh=0.0, current_a=(amps, amps, amps)),
                            rig.now)
        return rig.take()

    # 17 A on a 16 A offer is within the margin (1 A); 5 s to follow, then 10 s of grace.
    for _ in range(30):
        assert of(CurrentOverrun, draw(17.0)) == []
        rig.later(1)
    reported = []
    for _ in range(16):
        reported += draw(20.0)
        rig.later(1)
    assert len(of(CurrentOverrun, reported)) == 1
    assert "20.0 A of 16.0 A" in of(CurrentOverrun, reported)[0].info
    status = of(StatusChanged, reported)[-1]
    assert status.fault is Fault.EV_OVER_CURRENT and status.status is St.CHARGING
    assert rig.cs.evse(1).contactor_closed  # told, not tripped
    cleared = draw(15.0)
    assert of(StatusChanged, cleared)[-1].fault is None


def test_an_idle_evse_does_not_make_the_core_look_again_every_second():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.charging()
    rig.call("install_profile", profile(1, 0, [(0, 16), (60, 10)]))
    rig.card("CARD1")  # the session ends; the schedule's boundary at 60 s concerns no one
    rig.later(120)
    rig.tick()
    assert rig.cs.limits.next_change() > rig.now


def test_a_transaction_profile_left_in_the_store_does_not_come_back_after_a_restart():
    default = profile(1, 0, [(0, 16)])
    orphan = profile(2, 0, [(0, 8)], purpose=ProfilePurpose.TX, evse=1, transaction="gone")
    station = ChargingStation(1, CoreSettings(), profiles=[default, orphan])
    assert station.profiles == [default]
    assert station.drain() == [ChargingProfilesChanged((default,))]  # written back


# ---- found in review ---------------------------------------------------------------------------

def test_offers_planned_on_an_untrusted_clock_are_planned_again_on_the_true_one():
    rig = Rig()
    rig.now = MIDNIGHT
    rig.charging()
    rig.call("install_profile", profile(1, 0, [(0, 16), (100, 8)]))
    rig.cs.clock_synchronised(rig.now, 0.0)
    rig.take()
    rig.later(200)
    assert SetCurrentLimit(1, 8.0) in rig.tick()


def test_a_remote_start_profile_binds_to_a_transaction_that_began_with_the_cable():
    rig = Rig(start_points=frozenset({TxPoint.EV_CONNECTED}))
    rig.now = MIDNIGHT
    rig.plug()
    tx_profile = profile(5, 0, [(0, 10)], purpose=ProfilePurpose.TX, kind=ProfileKind.RELATIVE,
                         start=None)
    rig.cs.remote_start(IdToken("APP"), 1, rig.now, profile=tx_profile)
    rig.take()
    rig.answer("APP")
    tx = rig.cs.evse(1).transaction
    assert tx is not None and tx.authorized
    assert [p.transaction for p in rig.cs.profiles] == [tx.ref]
    assert rig.cs.evse(1).offered_amps == 10.0


def test_a_session_that_starts_with_the_energy_never_closes_on_a_plan_without_its_profile():
    rig = Rig(start_points=frozenset({TxPoint.ENERGY_TRANSFER}))
    rig.now = MIDNIGHT
    rig.plug()
    zero = profile(5, 0, [(0, 0)], purpose=ProfilePurpose.TX, kind=ProfileKind.RELATIVE,
                   start=None)
    rig.cs.remote_start(IdToken("APP"), 1, rig.now, profile=zero)
    actions = rig.take() + rig.answer("APP")
    assert SetContactor(1, True) not in actions  # its 0 A profile forbids any energy


def test_uneven_shares_are_tenths_that_never_exceed_the_supply_and_do_not_keep_the_core_busy():
    rig = Rig(7, site_limit=50.0)
    rig.now = MIDNIGHT
    for e in range(1, 8):
        rig.plug(e)
        rig.card(f"C{e}", e)
        rig.answer(f"C{e}")
        rig.later(6)  # each raise waits for the vehicles lowered before it
        rig.tick()
    assert all(rig.cs.status(e)[0] is St.CHARGING for e in range(1, 8))
    offers = [rig.cs.evse(e).offered_amps for e in range(1, 8)]
    assert sum(offers) <= 50.0 and all(round(a * 10) == a * 10 for a in offers), offers
    assert min(offers) >= 7.1  # 50 / 7 = 7.14 each, down to the tenth
    rig.later(6)
    rig.tick()
    assert rig.cs.limits.next_change() > rig.now + 60


def test_a_recurrence_based_in_a_repeated_dst_hour_does_not_begin_before_its_base():
    # 02:30 CET on 2026-10-25 is the second 02:30 in Berlin (01:30 UTC).
    base = at("2026-10-25T01:30:00")
    p = profile(1, 0, [(0, 10)], kind=ProfileKind.RECURRING, recurrence=Recurrence.DAILY,
                start=base)
    lim = limits(p, time_zone="Europe/Berlin")
    assert plan(lim, base - 7200, base + 60)[0] == (0, 7200, 32)


def test_the_end_of_a_session_clears_what_limited_it():
    rig = Rig(site_limit=20.0)
    rig.now = MIDNIGHT
    rig.charging()
    assert rig.cs.evse(1).limit_source is LimitSource.SITE
    actions = rig.card("CARD1")
    assert ChargingLimitChanged(1, 0.0, LimitSource.HARDWARE) in actions
