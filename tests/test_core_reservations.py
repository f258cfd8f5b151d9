"""Reservations in the charging core alone, with a fake clock: what may be reserved, what a
reservation keeps from whom, what shows Reserved, how reservations end, and what survives a
restart. The 1.6 and 2.0.1 differences (when a reservation counts as used, where a
transaction begins) are each run where they matter."""

from __future__ import annotations

import pytest
from test_core import ENDED, STARTED, T0, UPDATED, Rig, St, events, of, tok

from cpagent.core.actions import (
    RequestAuthorization,
    ReservationEnded,
    ReservationsChanged,
    SetCurrentLimit,
    StatusChanged,
)
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    CoreSettings,
    IdToken,
    Reservation,
    ReservationEnd,
    ReserveResult,
    TokenType,
    Trigger,
    TxPoint,
)
from cpagent.core.reservations import reservation_of, reservation_record
from cpagent.core.station import ChargingStation
from hal.interfaces import Fault

HOUR = 3600.0
ACCEPTED, OCCUPIED, FAULTED = ReserveResult.ACCEPTED, ReserveResult.OCCUPIED, \
    ReserveResult.FAULTED
REJECTED, UNAVAILABLE = ReserveResult.REJECTED, ReserveResult.UNAVAILABLE
V16 = {"reservation_ends_at_start": True}  # 1.6: used when the transaction starts
V201 = {"reservation_ends_at_start": False}  # 2.0.1: used once its token is accepted


def booking(rid: int = 7, evse: int | None = 1, tag: str = "OWNER", *,
            group: str | None = None, until: float = T0 + HOUR,
            connector_type: str | None = None) -> Reservation:
    return Reservation(rid, until, tok(tag), tok(group) if group else None, evse, connector_type)


def card(value: str) -> IdToken:
    return IdToken(value, TokenType.ISO14443)


def reserve(rig: Rig, reservation: Reservation, **kw) -> ReserveResult:
    answer, _ = rig.call("reserve", reservation, **kw)
    return answer


def ended(actions) -> list[tuple[int, ReservationEnd]]:
    return [(a.reservation_id, a.reason) for a in of(ReservationEnded, actions)]


def status(rig: Rig, e: int = 1) -> St:
    return rig.cs.status(e)[0]


def open_ids(rig: Rig) -> list[int]:
    return [r.id for r in rig.cs.reservations.all()]


# ---- making a reservation ---------------------------------------------------------------------


def test_a_reserved_evse_shows_reserved_and_the_reservation_is_to_be_kept():
    rig = Rig(2)
    answer, actions = rig.call("reserve", booking())
    assert answer is ACCEPTED
    assert of(StatusChanged, actions) == [rig.status_changed(St.RESERVED, 1)]
    assert of(ReservationsChanged, actions) == [ReservationsChanged((booking(),))]
    assert (status(rig, 1), status(rig, 2)) == (St.RESERVED, St.AVAILABLE)


@pytest.mark.parametrize("prepare, answer", [
    (lambda rig: rig.plug(), OCCUPIED),  # a car is there
    (lambda rig: rig.card("SOMEONE", 1), OCCUPIED),  # a card waits for its answer
    (lambda rig: rig.charging("SOMEONE"), OCCUPIED),
    (lambda rig: reserve(rig, booking(rid=1, tag="FIRST")), OCCUPIED),  # reserved by another
    (lambda rig: reserve(rig, booking(rid=1, tag="OWNER")), OCCUPIED),  # ... whoever's it is
    (lambda rig: rig.call("fault_raised", 1, Fault.GROUND_FAILURE, "RCD"), FAULTED),
    (lambda rig: rig.call("fault_raised", 0, Fault.EMERGENCY_STOP, ""), FAULTED),
    (lambda rig: rig.call("change_availability", 1, False), UNAVAILABLE),
    (lambda rig: rig.call("change_availability", 0, False), UNAVAILABLE),
])
def test_what_cannot_be_reserved(prepare, answer):
    rig = Rig(2)
    prepare(rig)
    before = status(rig)
    assert reserve(rig, booking()) is answer
    assert status(rig) is before
    assert 7 not in open_ids(rig)


def test_rejected_for_what_the_station_does_not_have_or_a_time_gone_by():
    rig = Rig(2)
    assert reserve(rig, booking(evse=3)) is REJECTED
    assert reserve(rig, booking(until=T0)) is REJECTED
    types = {1: {"cType2"}, 2: {"cType2"}}
    assert reserve(rig, booking(evse=None, connector_type="cCCS2"), connector_types=types) \
        is REJECTED
    assert reserve(rig, booking(evse=1, connector_type="cCCS2"), connector_types=types) \
        is REJECTED
    assert rig.cs.reservations.all() == []


def test_the_same_id_replaces_the_reservation():
    rig = Rig(2)
    assert reserve(rig, booking(evse=1)) is ACCEPTED
    answer, actions = rig.call("reserve", booking(evse=2, tag="NEW"))
    assert answer is ACCEPTED
    assert [(a.evse_id, a.status) for a in of(StatusChanged, actions)] == [
        (1, St.AVAILABLE), (2, St.RESERVED)]
    assert rig.cs.reservations.all() == [booking(evse=2, tag="NEW")]
    # Replaced in place, even on the same EVSE with a later expiry.
    assert reserve(rig, booking(evse=2, tag="NEW", until=T0 + 2 * HOUR)) is ACCEPTED
    assert rig.cs.reservations.get(7).expiry == T0 + 2 * HOUR


def test_a_replacement_that_cannot_be_made_leaves_the_old_one():
    rig = Rig(2)
    reserve(rig, booking(evse=1))
    rig.plug(2)
    assert reserve(rig, booking(evse=2)) is OCCUPIED
    assert rig.cs.reservations.all() == [booking(evse=1)]
    assert status(rig, 1) is St.RESERVED


# ---- who may use a reserved EVSE -------------------------------------------------------------


def test_another_card_gets_nothing_on_a_reserved_evse():
    rig = Rig()
    reserve(rig, booking())
    rig.plug()
    assert status(rig) is St.RESERVED  # a car alone changes nothing (2.0.1 G01.FR.09)
    assert rig.card("STRANGER", 1) == []  # no group to learn: not even asked
    assert rig.cs.evse(1).pending is None
    assert status(rig) is St.RESERVED
    assert not events(rig.log)


@pytest.mark.parametrize("version", [V16, V201])
def test_the_reserved_card_starts_and_the_start_names_the_reservation(version):
    rig = Rig(**version)
    reserve(rig, booking())
    assert rig.card("OWNER", 1) == [RequestAuthorization(tok("OWNER"))]
    assert status(rig) is St.RESERVED  # until it is accepted
    actions = rig.answer("OWNER")
    assert status(rig) is St.PREPARING  # 2.0.1 says Available: nobody plugged in yet
    used_now = not version["reservation_ends_at_start"]
    assert ended(actions) == ([(7, ReservationEnd.USED)] if used_now else [])
    actions = rig.plug()
    [start] = events(actions, STARTED)
    assert (start.token, start.reservation_id) == (tok("OWNER"), 7)
    assert ended(actions) == ([] if used_now else [(7, ReservationEnd.USED)])
    assert rig.cs.reservations.all() == []
    assert status(rig) is St.CHARGING
    # Its end, and the next session, know nothing of it.
    actions = rig.card("OWNER", 1)
    assert events(actions, ENDED)[0].reservation_id == 7
    rig.unplug()
    assert status(rig) is St.AVAILABLE


def test_a_card_at_the_station_reader_goes_where_it_may():
    rig = Rig(2)
    reserve(rig, booking(evse=1))
    rig.card("STRANGER")  # one reader for the station
    assert rig.cs.evse(2).pending is not None and rig.cs.evse(1).pending is None
    rig.answer("STRANGER")
    rig.card("OWNER")
    assert rig.cs.evse(1).pending is not None  # its own EVSE
    assert status(rig, 1) is St.RESERVED


@pytest.mark.parametrize("version", [V16, V201])
def test_a_card_of_the_reservations_group_may_use_it(version):
    rig = Rig(**version)
    reserve(rig, booking(group="FLEET"))
    # The card's group is known only from its authorization: it is asked for.
    assert rig.card("DRIVER2", 1) == [RequestAuthorization(tok("DRIVER2"))]
    rig.answer("DRIVER2", parent="OTHER-FLEET")
    assert rig.cs.evse(1).pending is None
    assert status(rig) is St.RESERVED and open_ids(rig) == [7]
    rig.card("DRIVER3", 1)
    rig.answer("DRIVER3", parent="fleet")  # identifiers match ignoring case
    [start] = events(rig.plug(), STARTED)
    assert (start.token, start.group, start.reservation_id) == (tok("DRIVER3"), tok("fleet"), 7)
    assert open_ids(rig) == []


def test_a_group_known_locally_needs_no_question():
    rig = Rig(local_pre_authorize=True)
    rig.cs.update_local_list([(tok("DRIVER2"), AuthInfo(AuthStatus.ACCEPTED, tok("FLEET")))])
    reserve(rig, booking(group="FLEET"))
    actions = rig.card("DRIVER2", 1)
    assert not of(RequestAuthorization, actions)
    assert ended(actions) == [(7, ReservationEnd.USED)]


def test_remote_start_for_another_token_is_refused_and_for_the_owner_accepted():
    rig = Rig()
    reserve(rig, booking())
    result, _ = rig.call("remote_start", tok("STRANGER"), 1)
    assert not result.accepted
    result, actions = rig.call("remote_start", tok("OWNER"), 1)
    assert result.accepted and actions == [RequestAuthorization(tok("OWNER"))]
    rig.answer("OWNER")
    [start] = events(rig.plug(), STARTED)
    assert start.reservation_id == 7


def test_remote_start_unauthorized_still_asks_when_only_the_group_can_tell():
    rig = Rig(authorize_remote_start=False)
    reserve(rig, booking(group="FLEET"))
    result, actions = rig.call("remote_start", tok("DRIVER2"), 1)
    assert result.accepted and actions == [RequestAuthorization(tok("DRIVER2"))]
    rig.answer("DRIVER2", parent="FLEET")
    assert events(rig.plug(), STARTED)[0].reservation_id == 7
    # The owner needs no question.
    rig2 = Rig(authorize_remote_start=False)
    reserve(rig2, booking())
    result, actions = rig2.call("remote_start", tok("OWNER"), 1)
    assert result.accepted and not of(RequestAuthorization, actions)
    assert ended(actions) == [(7, ReservationEnd.USED)]


def test_cable_first_transaction_stays_reserved_and_charges_only_for_the_owner():
    """2.0.1 with TxStartPoint EVConnected: the plug starts a transaction (H03 S1 #2), but no
    energy flows for it until the reservation's token is presented; anyone else's card is
    refused, so nobody charges on someone else's reservation."""
    rig = Rig(start_points=frozenset({TxPoint.EV_CONNECTED}),
              stop_points=frozenset({TxPoint.EV_CONNECTED, TxPoint.AUTHORIZED}))
    reserve(rig, booking())
    actions = rig.plug()
    [start] = events(actions, STARTED)
    assert start.token is None and start.reservation_id is None
    assert status(rig) is St.RESERVED
    assert not [a for a in of(SetCurrentLimit, rig.log) if a.amps > 0]
    assert rig.card("STRANGER", 1) == []
    rig.card("OWNER", 1)
    actions = rig.answer("OWNER")
    update = events(actions, UPDATED)[0]
    assert (update.trigger, update.authorized_now, update.reservation_id) == (
        Trigger.AUTHORIZED, True, 7)
    assert ended(actions) == [(7, ReservationEnd.USED)]
    assert status(rig) is St.CHARGING


def test_free_vend_does_not_charge_on_a_reserved_evse():
    rig = Rig(2, free_vend_token=tok("FREE"))
    reserve(rig, booking(evse=1))
    rig.plug(1)
    assert rig.cs.evse(1).transaction is None and status(rig, 1) is St.RESERVED
    rig.plug(2)
    assert status(rig, 2) is St.CHARGING
    rig.card("OWNER", 1)
    rig.answer("OWNER")
    assert events(rig.log, STARTED)[-1].reservation_id == 7
    assert status(rig, 1) is St.CHARGING


def test_an_accepted_card_whose_car_never_comes():
    # 1.6: the reservation ends only with a transaction, so it holds again.
    rig = Rig(connection_timeout=60, **V16)
    reserve(rig, booking())
    rig.card("OWNER", 1)
    rig.answer("OWNER")
    rig.later(61).tick()
    assert rig.cs.evse(1).pending is None
    assert status(rig) is St.RESERVED and open_ids(rig) == [7]
    # 2.0.1: it was used when the card was accepted (H03.FR.09).
    rig = Rig(connection_timeout=60, **V201)
    reserve(rig, booking())
    rig.card("OWNER", 1)
    rig.answer("OWNER")
    rig.later(61).tick()
    assert status(rig) is St.AVAILABLE and open_ids(rig) == []


# ---- reservations for any EVSE ----------------------------------------------------------------


def test_any_evse_reservations_keep_one_free_each():
    rig = Rig(3)
    assert reserve(rig, booking(1, None, "A")) is ACCEPTED
    assert [status(rig, e) for e in (1, 2, 3)] == [St.AVAILABLE] * 3  # three for one
    rig.charging("STRANGER1", 1)  # allowed: two are left for one reservation
    assert reserve(rig, booking(2, None, "B")) is ACCEPTED
    assert [status(rig, e) for e in (2, 3)] == [St.RESERVED] * 2  # as many as reservations
    assert reserve(rig, booking(3, None, "C")) is OCCUPIED
    assert reserve(rig, booking(4, 2, "D")) is OCCUPIED  # EVSE 2 is needed by A or B
    # Strangers get nothing; each owner gets an EVSE, and the last one stays kept.
    assert rig.card("STRANGER2", 2) == []
    rig.card("A", 2)
    rig.answer("A")
    assert ended(rig.log) == [(1, ReservationEnd.USED)]
    assert status(rig, 3) is St.RESERVED
    rig.plug(2)
    assert events(rig.log, STARTED)[-1].reservation_id == 1


def test_an_any_evse_reservation_and_an_evse_reserved_by_itself():
    rig = Rig(2)
    assert reserve(rig, booking(1, 1, "A")) is ACCEPTED
    assert reserve(rig, booking(2, None, "B")) is ACCEPTED
    assert (status(rig, 1), status(rig, 2)) == (St.RESERVED, St.RESERVED)
    assert reserve(rig, booking(3, None, "C")) is OCCUPIED  # TC_H_09's case
    # B may not take A's EVSE, but takes the other.
    rig.card("B")
    assert rig.cs.evse(2).pending is not None


def test_connector_types_decide_which_evse_an_any_reservation_keeps():
    rig = Rig(2)
    types = {1: {"cType2"}, 2: {"cCCS2"}}
    assert reserve(rig, booking(1, None, "A", connector_type="cCCS2"),
                   connector_types=types) is ACCEPTED
    assert (status(rig, 1), status(rig, 2)) == (St.AVAILABLE, St.RESERVED)
    assert reserve(rig, booking(2, None, "B", connector_type="cCCS2"),
                   connector_types=types) is OCCUPIED
    assert reserve(rig, booking(3, None, "C", connector_type="cType2"),
                   connector_types=types) is ACCEPTED
    assert status(rig, 1) is St.RESERVED
    # Without the types known, any EVSE fits.
    assert reserve(Rig(1), booking(connector_type="cCCS2")) is ACCEPTED


# ---- how reservations end ---------------------------------------------------------------------


def test_expiry_makes_the_evse_available_again():
    rig = Rig()
    reserve(rig, booking(until=T0 + 60))
    assert not ended(rig.later(59).tick())
    actions = rig.later(1).tick()
    assert ended(actions) == [(7, ReservationEnd.EXPIRED)]
    assert of(StatusChanged, actions) == [rig.status_changed(St.AVAILABLE)]
    assert of(ReservationsChanged, actions) == [ReservationsChanged(())]


def test_cancel():
    rig = Rig()
    reserve(rig, booking())
    cancelled, actions = rig.call("cancel_reservation", 7)
    assert cancelled and ended(actions) == [(7, ReservationEnd.CANCELLED)]
    assert of(StatusChanged, actions) == [rig.status_changed(St.AVAILABLE)]
    assert rig.call("cancel_reservation", 7) == (False, [])


@pytest.mark.parametrize("breakdown", [
    lambda rig: rig.call("fault_raised", 1, Fault.GROUND_FAILURE, "RCD"),
    lambda rig: rig.call("fault_raised", 0, Fault.EMERGENCY_STOP, ""),
    lambda rig: rig.call("change_availability", 1, False),
    lambda rig: rig.call("change_availability", 0, False),
])
def test_faulted_or_unavailable_ends_it_and_afterwards_it_is_available(breakdown):
    rig = Rig()
    reserve(rig, booking())
    _, actions = breakdown(rig)
    assert ended(actions) == [(7, ReservationEnd.REMOVED)]
    assert status(rig) in (St.FAULTED, St.UNAVAILABLE)
    rig.call("fault_cleared", 0, None)
    rig.call("fault_cleared", 1, None)
    rig.call("change_availability", 0, True)
    rig.call("change_availability", 1, True)
    assert status(rig) is St.AVAILABLE


def test_an_any_evse_reservation_ends_when_no_evse_is_left_for_it():
    rig = Rig(2)
    reserve(rig, booking(1, None, "A"))
    _, actions = rig.call("fault_raised", 1, Fault.GROUND_FAILURE, "RCD")
    assert not ended(actions)  # EVSE 2 can still serve it, and is kept for it
    assert status(rig, 2) is St.RESERVED
    _, actions = rig.call("change_availability", 2, False)
    assert ended(actions) == [(1, ReservationEnd.REMOVED)]


# ---- across a restart -------------------------------------------------------------------------


def test_the_stored_form_round_trips():
    stored = [booking(), Reservation(8, T0 + 5, tok("X"), None, None),
              Reservation(9, T0 + 9, card("CARD"), card("GROUP"), None,
                          "cCCS2", frozenset({2}))]
    assert [reservation_of(reservation_record(r)) for r in stored] == stored
    assert reservation_of({"id": "x"}) is None
    assert reservation_of("garbage") is None


def test_stored_reservations_hold_from_the_start_and_expire_at_the_first_tick():
    station = ChargingStation(2, CoreSettings(), reservations=[
        booking(1, 1, "A"), booking(2, 2, "B", until=T0 - 10)])
    rig = Rig(2, station=station)
    assert (status(rig, 1), status(rig, 2)) == (St.RESERVED, St.RESERVED)
    actions = rig.tick()
    assert ended(actions) == [(2, ReservationEnd.EXPIRED)]
    assert (status(rig, 1), status(rig, 2)) == (St.RESERVED, St.AVAILABLE)
    assert rig.card("A", 1) == [RequestAuthorization(tok("A"))]


def test_every_change_is_reported_whole_for_storage():
    rig = Rig(2)
    reserve(rig, booking(1, 1))
    reserve(rig, booking(2, 2))
    rig.call("cancel_reservation", 1)
    changes = of(ReservationsChanged, rig.log)
    assert [tuple(r.id for r in c.reservations) for c in changes] == [(1,), (1, 2), (2,)]


def test_a_stored_reservation_for_an_evse_no_longer_there_ends_as_removed():
    station = ChargingStation(1, CoreSettings(), reservations=[booking(3, 3, "A")])
    rig = Rig(1, station=station)
    assert ended(rig.tick()) == [(3, ReservationEnd.REMOVED)]
    assert status(rig) is St.AVAILABLE
