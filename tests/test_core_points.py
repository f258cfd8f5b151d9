"""Where transactions begin and end when the start and stop points are not 1.6's: the
2.0.1 TxStartPoint / TxStopPoint choices, on the core alone with a fake clock."""

from __future__ import annotations

from test_core import (
    ENDED,
    STARTED,
    STATE,
    T0,
    UPDATED,
    B,
    C,
    Rig,
    St,
    events,
    kinds,
    of,
    only_end,
    shape,
    tok,
)

from cpagent.core.actions import RequestAuthorization, SetContactor, SetCurrentLimit
from cpagent.core.model import AuthStatus, ChargingState, StopReason, Trigger, TxPoint


def points(*start: TxPoint, stop: tuple[TxPoint, ...] = (TxPoint.EV_CONNECTED,
                                                          TxPoint.AUTHORIZED), **settings):
    return dict(start_points=frozenset(start), stop_points=frozenset(stop), **settings)


def test_starts_with_the_cable_and_is_authorized_later():
    rig = Rig(**points(TxPoint.EV_CONNECTED))
    rig.meter(100.0)
    actions = rig.plug()
    assert shape(actions) == [(STARTED, Trigger.CABLE_PLUGGED_IN),
                              rig.status_changed(St.PREPARING)]
    start = events(actions)[0]
    assert (start.token, start.authorized_now, start.charging_state) == (
        None, False, ChargingState.EV_CONNECTED)
    assert not of(SetCurrentLimit, rig.log)  # nobody authorized it: no current
    rig.later(5)
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1"))]
    actions = rig.answer("CARD1")
    assert kinds(actions)[1:3] == [(UPDATED, Trigger.AUTHORIZED), SetCurrentLimit]
    authorized = events(actions)[0]
    assert (authorized.seq, authorized.token, authorized.authorized_now) == (
        1, tok("CARD1"), True)
    assert authorized.charging_state is ChargingState.SUSPENDED_EV
    assert rig.cs.status(1)[0] is St.CHARGING
    assert rig.cs.evse(1).transaction.started_at == T0  # began with the cable


def test_a_refused_card_leaves_the_cable_transaction_waiting_for_another():
    rig = Rig(**points(TxPoint.EV_CONNECTED))
    rig.plug()
    rig.card("BAD")
    rig.answer("BAD", AuthStatus.BLOCKED)
    tx = rig.cs.evse(1).transaction
    assert tx is not None and not tx.authorized
    rig.card("GOOD")
    rig.answer("GOOD")
    assert rig.cs.evse(1).transaction is tx and tx.token == tok("GOOD")
    assert rig.cs.evse(1).contactor_closed


def test_unplug_before_authorization_ends_the_cable_transaction():
    rig = Rig(**points(TxPoint.EV_CONNECTED))
    rig.plug()
    end = only_end(rig.unplug())
    assert (end.reason, end.trigger, end.token) == (
        StopReason.EV_DISCONNECTED, Trigger.EV_COMMUNICATION_LOST, None)


def test_starts_with_the_card_and_the_car_follows():
    rig = Rig(**points(TxPoint.AUTHORIZED))
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    start = events(actions, STARTED)[0]
    assert (start.trigger, start.token, start.charging_state) == (
        Trigger.AUTHORIZED, tok("CARD1"), ChargingState.IDLE)
    assert not of(SetCurrentLimit, actions)  # no car: nothing offered
    rig.later(10)
    actions = rig.plug()
    assert kinds(actions)[:2] == [SetCurrentLimit, (UPDATED, Trigger.CABLE_PLUGGED_IN)]
    assert rig.cs.status(1)[0] is St.CHARGING


def test_a_card_transaction_without_a_car_times_out():
    rig = Rig(**points(TxPoint.AUTHORIZED), connection_timeout=30.0)
    rig.card("CARD1")
    rig.answer("CARD1")
    rig.later(29)
    assert rig.tick() == []
    rig.later(1)
    end = only_end(rig.tick())
    assert (end.reason, end.trigger) == (StopReason.TIMEOUT, Trigger.EV_CONNECT_TIMEOUT)
    assert rig.cs.status(1)[0] is St.AVAILABLE


def test_starts_with_the_first_energy():
    rig = Rig(**points(TxPoint.ENERGY_TRANSFER), ev_follows=False)
    rig.plug()
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    # The car is offered current so that it can ask; no transaction yet.
    assert SetCurrentLimit(1, 32.0) in actions and not events(actions)
    actions = rig.pilot(C)
    assert shape(actions)[:2] == [(STARTED, Trigger.CHARGING_STATE_CHANGED),
                                  SetContactor(1, True)]
    start = events(actions)[0]
    assert (start.token, start.charging_state) == (tok("CARD1"), ChargingState.CHARGING)


def test_stop_only_at_the_unplug_keeps_the_transaction_after_the_card():
    rig = Rig(**points(TxPoint.POWER_PATH_CLOSED, stop=(TxPoint.EV_CONNECTED,)))
    tx = rig.charging()
    rig.later(60)
    actions = rig.card("CARD1")
    assert shape(actions)[:3] == [SetContactor(1, False), SetCurrentLimit(1, 0.0),
                                  (UPDATED, Trigger.STOP_AUTHORIZED)]
    assert rig.cs.evse(1).transaction is tx
    assert rig.cs.status(1)[0] is St.FINISHING
    assert events(actions)[0].charging_state is ChargingState.SUSPENDED_EVSE
    rig.later(30)
    end = only_end(rig.unplug())
    assert (end.reason, end.trigger, end.stopped_by, end.timestamp) == (
        StopReason.LOCAL, Trigger.EV_COMMUNICATION_LOST, tok("CARD1"), T0 + 90)


def test_stop_at_the_end_of_energy_transfer():
    rig = Rig(**points(TxPoint.POWER_PATH_CLOSED, stop=(TxPoint.ENERGY_TRANSFER,)))
    rig.charging()
    rig.ev_follows = False
    end = only_end(rig.pilot(B))  # the car is full and stops asking
    assert (end.reason, end.trigger) == (StopReason.STOPPED_BY_EV,
                                         Trigger.CHARGING_STATE_CHANGED)


def test_remote_start_on_a_cable_transaction_names_it_and_authorizes_it():
    rig = Rig(**points(TxPoint.EV_CONNECTED), authorize_remote_start=False)
    rig.plug()
    tx = rig.cs.evse(1).transaction
    result, actions = rig.call("remote_start", tok("APP-USER"), 1, remote_start_id=9)
    assert (result.accepted, result.ref) == (True, tx.ref)
    update = events(actions)[0]
    assert (update.trigger, update.remote_start_id, update.token) == (
        Trigger.REMOTE_START, 9, tok("APP-USER"))
    assert rig.cs.evse(1).contactor_closed


def test_remote_stop_of_a_transaction_not_yet_authorized():
    rig = Rig(**points(TxPoint.EV_CONNECTED))
    rig.plug()
    tx = rig.cs.evse(1).transaction
    ok, actions = rig.call("remote_stop", tx.ref)
    assert ok is True
    assert (only_end(actions).reason, only_end(actions).trigger) == (StopReason.REMOTE,
                                                                     Trigger.REMOTE_STOP)


def test_charging_state_changes_are_events_of_the_transaction():
    rig = Rig(**points(TxPoint.EV_CONNECTED))
    rig.plug()
    rig.card("CARD1")
    rig.answer("CARD1")
    rig.pilot(B)
    rig.pilot(C)
    assert [(e.seq, e.trigger, e.charging_state) for e in events(rig.log)] == [
        (0, Trigger.CABLE_PLUGGED_IN, ChargingState.EV_CONNECTED),
        (1, Trigger.AUTHORIZED, ChargingState.SUSPENDED_EV),
        (2, Trigger.CHARGING_STATE_CHANGED, ChargingState.CHARGING),
        (3, Trigger.CHARGING_STATE_CHANGED, ChargingState.SUSPENDED_EV),
        (4, Trigger.CHARGING_STATE_CHANGED, ChargingState.CHARGING),
    ]
    assert STATE in shape(rig.log) and ENDED not in {e.kind for e in events(rig.log)}
