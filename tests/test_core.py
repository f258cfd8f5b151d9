"""The charging core on its own: a fake clock (plain floats), no event loop, no I/O.

Every call goes through `Rig`, which drains the actions, replays them on a model of the
hardware and checks the safety rules on every step: a transaction is recorded before any
current is offered, the contactor closes only for a running, authorized session whose vehicle
asks for power while current is offered, and it is open before (or with) every stop. The
simulated vehicle follows the pilot: it asks for power (C) when current is offered and stops
asking (B) when the offer is withdrawn.
"""

from __future__ import annotations

import math

import pytest

from cpagent.core.model import (
    Action,
    AuthCacheUpdated,
    AuthStatus,
    Availability,
    AvailabilityChanged,
    ConnectorStatus,
    CoreSettings,
    IdTagInfo,
    MeterValuesReport,
    ReadingContext,
    RequestAuthorization,
    ResetNow,
    Sample,
    SetContactor,
    SetCurrentLimit,
    StatusChanged,
    StopReason,
    Transaction,
    TransactionStarted,
    TransactionStopped,
    UnlockConnector,
)
from cpagent.core.station import ChargingStation
from hal.interfaces import Fault, MeterReading, PilotState

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, not on a 900 s boundary
A, B, C, D, E, F = (PilotState(s) for s in "ABCDEF")
St = ConnectorStatus
ACCEPTED = IdTagInfo(AuthStatus.ACCEPTED)


class Rig:
    """A ChargingStation, a fake clock, vehicles that follow the pilot, and a safety check."""

    def __init__(self, connectors: int = 1, *, online: bool = True, ev_follows: bool = True,
                 station: ChargingStation | None = None, **settings) -> None:
        self.cs = station or ChargingStation(connectors, CoreSettings(**settings))
        self.now = T0
        self.ev_follows = ev_follows
        self.log: list[Action] = []
        self._closed = {c: False for c in self.cs.connectors}
        self._amps = {c: 0.0 for c in self.cs.connectors}
        self._open_tx: dict[int, Transaction] = {}
        if online:
            self.cs.connection_changed(True, self.now)
            assert self.take() == []

    # ---- time and bookkeeping --------------------------------------------------------------

    def later(self, seconds: float) -> Rig:
        self.now += seconds
        return self

    def take(self) -> list[Action]:
        """Drain, check, and let the vehicles react to what the pilot now offers."""
        actions = self.cs.drain()
        self._replay(actions)
        if self.ev_follows:
            for c, amps in {a.connector_id: a.amps for a in actions
                            if isinstance(a, SetCurrentLimit)}.items():
                pilot = self.cs.connector(c).pilot
                if amps > 0 and pilot is B:
                    self.cs.pilot_changed(c, C, self.now)
                    actions += self.take()
                elif amps == 0 and pilot.wants_power:
                    self.cs.pilot_changed(c, B, self.now)
                    actions += self.take()
        return actions

    def _replay(self, actions: list[Action]) -> None:
        self.log += actions
        for a in actions:
            match a:
                case TransactionStarted(transaction=tx):
                    assert tx.connector_id not in self._open_tx, "two sessions on one connector"
                    assert not self._closed[tx.connector_id]
                    self._open_tx[tx.connector_id] = tx
                case TransactionStopped(transaction=tx):
                    if self._open_tx.get(tx.connector_id) is tx:
                        assert not self._closed[tx.connector_id], "stopped with contactor closed"
                        del self._open_tx[tx.connector_id]
                case SetCurrentLimit(connector_id=c, amps=amps):
                    assert amps == 0 or c in self._open_tx, "current offered without a session"
                    assert amps > 0 or not self._closed[c], "offer withdrawn before opening"
                    self._amps[c] = amps
                case SetContactor(connector_id=c, closed=closed):
                    if closed:
                        tx = self._open_tx.get(c)
                        assert tx is not None, "contactor closed without a transaction"
                        assert not tx.suspended_by_csms
                        assert self.cs.connector(c).pilot.wants_power
                        assert self._amps[c] > 0
                    self._closed[c] = closed
        for c, conn in self.cs.connectors.items():
            assert conn.contactor_closed == self._closed[c]
            assert conn.offered_amps == self._amps[c]
            assert (c in self._open_tx) == (conn.transaction is not None)

    # ---- what happens at the charger -------------------------------------------------------

    def pilot(self, state: PilotState, c: int = 1) -> list[Action]:
        self.cs.pilot_changed(c, state, self.now)
        return self.take()

    def plug(self, c: int = 1) -> list[Action]:
        return self.pilot(B, c)

    def unplug(self, c: int = 1) -> list[Action]:
        return self.pilot(A, c)

    def card(self, tag: str, c: int | None = None) -> list[Action]:
        self.cs.card_presented(tag, c, self.now)
        return self.take()

    def answer(self, tag: str, status: AuthStatus | None = AuthStatus.ACCEPTED,
               parent: str | None = None, expiry: float | None = None) -> list[Action]:
        info = None if status is None else IdTagInfo(status, parent, expiry)
        self.cs.authorization_result(tag, info, self.now)
        return self.take()

    def learn(self, tag: str, status: AuthStatus = AuthStatus.ACCEPTED,
              parent: str | None = None, expiry: float | None = None) -> list[Action]:
        self.cs.id_tag_info_received(tag, IdTagInfo(status, parent, expiry), self.now)
        return self.take()

    def meter(self, wh: float, c: int = 1) -> None:
        self.cs.meter_sample(c, MeterReading(energy_wh=wh))
        assert self.cs.drain() == []

    def tick(self) -> list[Action]:
        self.cs.tick(self.now)
        return self.take()

    def offline(self) -> list[Action]:
        self.cs.connection_changed(False, self.now)
        return self.take()

    def confirm(self, local_id: int, csms_id: int,
                status: AuthStatus = AuthStatus.ACCEPTED, parent: str | None = None):
        self.cs.transaction_confirmed(local_id, csms_id, IdTagInfo(status, parent), self.now)
        return self.take()

    def call(self, method: str, *args):
        """Any other command: `rig.call("unlock", 1)` passes the rig's clock last."""
        result = getattr(self.cs, method)(*args, self.now)
        return result, self.take()

    # ---- a whole start ---------------------------------------------------------------------

    def charging(self, tag: str = "CARD1", c: int = 1, parent: str | None = None) -> Transaction:
        """Plug, tap, accept: a session that is charging now."""
        self.plug(c)
        assert self.card(tag, c) == [RequestAuthorization(tag)]
        self.answer(tag, parent=parent)
        assert self.cs.status(c)[0] is St.CHARGING
        tx = self.cs.connector(c).transaction
        assert tx is not None
        return tx

    def status_changed(self, status: ConnectorStatus, c: int = 1, fault: Fault | None = None,
                       info: str = "") -> StatusChanged:
        return StatusChanged(c, status, fault, info, self.now)


def of(kind: type, actions: list[Action]) -> list:
    return [a for a in actions if isinstance(a, kind)]


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


def statuses(actions: list[Action], c: int = 1) -> list[ConnectorStatus]:
    return [a.status for a in of(StatusChanged, actions) if a.connector_id == c]


def only_stop(actions: list[Action]) -> TransactionStopped:
    stops = of(TransactionStopped, actions)
    assert len(stops) == 1, stops
    return stops[0]


POWER_OFF_THEN_STOP = [SetContactor, SetCurrentLimit, TransactionStopped]


def power_off(c: int = 1) -> list[Action]:
    return [SetContactor(c, False), SetCurrentLimit(c, 0.0)]


# ---- starting a session ------------------------------------------------------------------


def test_plug_then_card_online():
    rig = Rig()
    assert rig.cs.status(1) == (St.AVAILABLE, None, "")
    rig.meter(1200.0)
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    rig.later(3)
    assert rig.card("CARD1") == [RequestAuthorization("CARD1")]
    rig.later(1)
    actions = rig.answer("CARD1")
    tx = rig.cs.connector(1).transaction
    assert actions == [
        AuthCacheUpdated("CARD1", ACCEPTED),
        TransactionStarted(tx),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),  # until the vehicle reacts to the offer
        SetContactor(1, True),
        rig.status_changed(St.CHARGING),
    ]
    assert (tx.local_id, tx.connector_id, tx.id_tag, tx.started_at, tx.meter_start_wh) == (
        1, 1, "CARD1", T0 + 4, 1200.0)
    assert tx.csms_id is None and tx.remote_start is False and tx.parent_id_tag is None
    assert rig.cs.connector(1).pilot is C


def test_card_then_plug_online():
    rig = Rig()
    assert rig.card("CARD1") == [RequestAuthorization("CARD1"), rig.status_changed(St.PREPARING)]
    rig.later(2)
    # Accepted, but no car yet: nothing to start, nothing to offer.
    assert rig.answer("CARD1", parent="GROUP") == [
        AuthCacheUpdated("CARD1", IdTagInfo(AuthStatus.ACCEPTED, "GROUP"))]
    assert rig.cs.transactions() == []
    rig.later(10)
    actions = rig.plug()
    tx = rig.cs.connector(1).transaction
    assert actions == [
        TransactionStarted(tx),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        rig.status_changed(St.CHARGING),
    ]
    assert (tx.id_tag, tx.parent_id_tag, tx.started_at) == ("CARD1", "GROUP", T0 + 12)


def test_vehicle_already_asking_for_power_closes_right_after_the_start():
    rig = Rig(ev_follows=False)
    rig.pilot(C)  # a car that goes straight to C: no current is offered, nothing closes
    assert rig.cs.connector(1).contactor_closed is False
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    assert kinds(actions) == [AuthCacheUpdated, TransactionStarted, SetCurrentLimit, SetContactor,
                              StatusChanged]
    assert actions[-2:] == [SetContactor(1, True), rig.status_changed(St.CHARGING)]


def test_no_contactor_without_a_session():
    rig = Rig()
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    assert rig.pilot(C) == []
    assert rig.pilot(D) == []
    assert rig.cs.status(1) == (St.PREPARING, None, "")
    # A rejected card does not change that.
    rig.card("BAD")
    assert rig.answer("BAD", AuthStatus.BLOCKED) == [
        AuthCacheUpdated("BAD", IdTagInfo(AuthStatus.BLOCKED))]
    assert not of(SetContactor, rig.log) and not of(SetCurrentLimit, rig.log)


def test_rejected_card_leaves_connector_free():
    rig = Rig()
    rig.card("BAD")
    assert rig.answer("BAD", AuthStatus.INVALID) == [
        AuthCacheUpdated("BAD", IdTagInfo(AuthStatus.INVALID)),
        rig.status_changed(St.AVAILABLE),
    ]
    assert rig.plug() == [rig.status_changed(St.PREPARING)]


def test_full_status_sequence():
    rig = Rig()
    assert rig.cs.status(1)[0] is St.AVAILABLE
    rig.charging()
    rig.later(60)
    assert rig.pilot(B) == [SetContactor(1, False), rig.status_changed(St.SUSPENDED_EV)]
    rig.later(60)
    assert rig.pilot(C) == [SetContactor(1, True), rig.status_changed(St.CHARGING)]
    rig.later(60)
    stop = rig.card("CARD1")
    assert kinds(stop) == [*POWER_OFF_THEN_STOP, StatusChanged]
    assert stop[-1] == rig.status_changed(St.FINISHING)
    assert rig.cs.connector(1).pilot is B  # the vehicle saw the offer withdrawn
    rig.later(30)
    assert rig.unplug() == [UnlockConnector(1), rig.status_changed(St.AVAILABLE)]
    assert statuses(rig.log) == [St.PREPARING, St.SUSPENDED_EV, St.CHARGING, St.SUSPENDED_EV,
                                 St.CHARGING, St.FINISHING, St.AVAILABLE]


def test_suspended_evse_when_no_current_is_offered():
    rig = Rig(max_current=0.0, ev_follows=False)
    rig.plug()
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    assert kinds(actions) == [AuthCacheUpdated, TransactionStarted, StatusChanged]
    assert actions[-1] == rig.status_changed(St.SUSPENDED_EVSE)
    # Even a vehicle asking for power gets no contactor while nothing is offered.
    assert rig.pilot(C) == []
    assert rig.cs.status(1)[0] is St.SUSPENDED_EVSE


def test_card_goes_to_the_connector_where_a_car_waits():
    rig = Rig(2)
    rig.plug(2)
    rig.card("CARD1")
    rig.answer("CARD1")
    assert rig.cs.connector(2).transaction is not None
    assert rig.cs.connector(1).transaction is None
    assert rig.cs.status(1)[0] is St.AVAILABLE


def test_same_card_twice_while_waiting_for_the_car_reserves_one_connector():
    rig = Rig(2)
    assert rig.card("CARD1") == [RequestAuthorization("CARD1"), rig.status_changed(St.PREPARING)]
    assert rig.card("CARD1") == []
    assert rig.cs.connector(2).pending is None
    rig.answer("CARD1")
    rig.plug(1)
    assert rig.cs.connector(1).transaction.id_tag == "CARD1"
    assert rig.cs.status(2)[0] is St.AVAILABLE


def test_transaction_ids_count_up_and_can_be_found():
    rig = Rig(2)
    tx1 = rig.charging("A", 1)
    tx2 = rig.charging("B", 2)
    assert (tx1.local_id, tx2.local_id) == (1, 2)
    rig.confirm(2, 502)
    assert rig.cs.find_transaction(local_id=1) is tx1
    assert rig.cs.find_transaction(csms_id=502) is tx2
    assert rig.cs.find_transaction(csms_id=999) is None
    assert rig.cs.transactions() == [tx1, tx2]


def test_first_transaction_id_comes_from_the_store():
    rig = Rig(station=ChargingStation(1, CoreSettings(), next_transaction_id=41))
    assert rig.charging().local_id == 41


# ---- stopping a session ------------------------------------------------------------------


def test_stop_by_the_same_card():
    rig = Rig()
    rig.meter(100.0)
    tx = rig.charging()
    rig.meter(2600.0)
    rig.later(3600)
    actions = rig.card("CARD1")
    assert actions[:3] == [*power_off(), TransactionStopped(tx, StopReason.LOCAL, T0 + 3600,
                                                            2600.0, "CARD1")]
    assert actions[3] == rig.status_changed(St.FINISHING)
    assert rig.cs.transactions() == []
    assert not of(RequestAuthorization, actions)


def test_another_card_does_not_stop_a_session_without_a_group():
    rig = Rig()
    rig.charging("CARD1")
    assert rig.card("OTHER") == []  # no free connector, no group to ask about
    assert rig.cs.status(1)[0] is St.CHARGING


def test_stop_by_unplug():
    rig = Rig()
    rig.meter(10.0)
    tx = rig.charging()
    rig.meter(510.0)
    rig.later(100)
    actions = rig.unplug()
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.EV_DISCONNECTED, T0 + 100, 510.0, None),
        UnlockConnector(1),
        rig.status_changed(St.AVAILABLE),
    ]


def test_unplug_without_unlock_on_disconnect():
    rig = Rig(unlock_on_ev_disconnect=False)
    rig.charging()
    actions = rig.unplug()
    assert kinds(actions) == [*POWER_OFF_THEN_STOP, StatusChanged]


def test_unplug_keeps_the_session_when_stop_on_ev_disconnect_is_off():
    rig = Rig(stop_on_ev_disconnect=False)
    tx = rig.charging()
    actions = rig.unplug()
    assert actions == [*power_off(), UnlockConnector(1), rig.status_changed(St.SUSPENDED_EVSE)]
    assert rig.cs.connector(1).transaction is tx
    rig.later(20)
    actions = rig.plug()
    assert actions == [
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        rig.status_changed(St.CHARGING),
    ]
    assert rig.cs.connector(1).transaction is tx


def test_remote_stop():
    rig = Rig()
    tx = rig.charging()
    assert rig.confirm(1, 777) == [AuthCacheUpdated("CARD1", ACCEPTED)]
    assert tx.csms_id == 777
    assert rig.call("stop_transaction", 778, StopReason.REMOTE) == (False, [])
    ok, actions = rig.call("stop_transaction", 777, StopReason.REMOTE)
    assert ok is True
    assert actions[:3] == [*power_off(), TransactionStopped(tx, StopReason.REMOTE, rig.now, 0.0,
                                                            None)]
    assert actions[3] == rig.status_changed(St.FINISHING)


def test_unconfirmed_transaction_cannot_be_stopped_remotely():
    rig = Rig()
    rig.charging()
    assert rig.call("stop_transaction", 1, StopReason.REMOTE) == (False, [])


def test_stop_by_fault_and_recovery():
    rig = Rig()
    tx = rig.charging()
    rig.later(5)
    actions = rig.call("fault_raised", 1, Fault.OVER_CURRENT, "I>40A")[1]
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.OTHER, T0 + 5, 0.0, None),
        rig.status_changed(St.FAULTED, fault=Fault.OVER_CURRENT, info="I>40A"),
    ]
    # Nothing starts on a faulted connector.
    assert rig.card("CARD2") == []
    assert rig.call("remote_start", "CARD2", 1) == (False, [])
    rig.later(5)
    assert rig.call("fault_cleared", 1, Fault.OVER_CURRENT)[1] == [
        rig.status_changed(St.FINISHING)]
    rig.unplug()
    assert rig.charging("CARD2").local_id == 2


def test_emergency_stop_at_station_level_stops_every_connector():
    rig = Rig(2)
    tx1 = rig.charging("A", 1)
    tx2 = rig.charging("B", 2)
    _, actions = rig.call("fault_raised", 0, Fault.EMERGENCY_STOP, "button")
    stops = of(TransactionStopped, actions)
    assert [(s.transaction, s.reason) for s in stops] == [
        (tx1, StopReason.EMERGENCY_STOP), (tx2, StopReason.EMERGENCY_STOP)]
    assert of(SetContactor, actions) == [SetContactor(1, False), SetContactor(2, False)]
    assert of(StatusChanged, actions) == [
        rig.status_changed(St.FAULTED, 0, Fault.EMERGENCY_STOP, "button"),
        rig.status_changed(St.FAULTED, 1, Fault.EMERGENCY_STOP, "button"),
        rig.status_changed(St.FAULTED, 2, Fault.EMERGENCY_STOP, "button"),
    ]
    _, actions = rig.call("fault_cleared", 0, None)
    assert statuses(actions, 0) == [St.AVAILABLE]
    assert statuses(actions, 1) == statuses(actions, 2) == [St.FINISHING]


def test_fault_while_waiting_for_the_car_drops_the_authorization():
    rig = Rig()
    rig.card("CARD1")
    rig.answer("CARD1")
    rig.call("fault_raised", 1, Fault.GROUND_FAILURE, "")
    rig.call("fault_cleared", 1, None)
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    assert rig.cs.transactions() == []


def test_hard_reset_stops_every_session_then_resets():
    rig = Rig(2)
    rig.meter(10.0, 1)
    rig.meter(20.0, 2)
    tx1 = rig.charging("A", 1)
    tx2 = rig.charging("B", 2)
    rig.later(9)
    _, actions = rig.call("reset", True)
    assert [type(a) for a in actions if not isinstance(a, StatusChanged)] == [
        *POWER_OFF_THEN_STOP, *POWER_OFF_THEN_STOP, ResetNow]
    assert of(TransactionStopped, actions) == [
        TransactionStopped(tx1, StopReason.HARD_RESET, T0 + 9, 10.0, None),
        TransactionStopped(tx2, StopReason.HARD_RESET, T0 + 9, 20.0, None),
    ]
    assert of(ResetNow, actions) == [ResetNow(True)]


def test_soft_reset():
    rig = Rig()
    tx = rig.charging()
    _, actions = rig.call("reset", False)
    assert only_stop(actions).reason is StopReason.SOFT_RESET
    assert only_stop(actions).transaction is tx
    assert actions.index(of(ResetNow, actions)[0]) > actions.index(only_stop(actions))


def test_reset_without_sessions_is_immediate():
    assert Rig().call("reset", False) == (None, [ResetNow(False)])
    assert Rig().call("reset", True) == (None, [ResetNow(True)])


def test_unlock_stops_the_session():
    rig = Rig()
    tx = rig.charging()
    _, actions = rig.call("unlock", 1)
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.UNLOCK_COMMAND, rig.now, 0.0, None),
        rig.status_changed(St.FINISHING),
    ]


def test_unlock_without_session_leaves_the_lock_to_the_caller():
    # The adapter drives the lock itself, to report whether it opened: the core must not
    # pulse it a second time.
    assert Rig().call("unlock", 1) == (None, [])


def test_invalid_id_in_start_confirmation_deauthorizes():
    rig = Rig()
    tx = rig.charging()
    actions = rig.confirm(1, 12, AuthStatus.BLOCKED)
    assert actions == [
        AuthCacheUpdated("CARD1", IdTagInfo(AuthStatus.BLOCKED)),
        *power_off(),
        TransactionStopped(tx, StopReason.DE_AUTHORIZED, rig.now, 0.0, None),
        rig.status_changed(St.FINISHING),
    ]
    assert tx.csms_id == 12


def test_invalid_id_suspends_when_stop_on_invalid_id_is_off():
    rig = Rig(stop_on_invalid_id=False)
    tx = rig.charging()
    actions = rig.confirm(1, 12, AuthStatus.EXPIRED)
    assert actions == [
        AuthCacheUpdated("CARD1", IdTagInfo(AuthStatus.EXPIRED)),
        *power_off(),
        rig.status_changed(St.SUSPENDED_EVSE),
    ]
    assert tx.suspended_by_csms is True
    assert rig.cs.connector(1).transaction is tx
    # The vehicle asking again gets nothing.
    assert rig.pilot(C) == []
    assert rig.pilot(B) == []
    # The driver can still end it.
    stop = only_stop(rig.card("CARD1"))
    assert (stop.reason, stop.id_tag) == (StopReason.LOCAL, "CARD1")


# ---- remote start ------------------------------------------------------------------------


def test_remote_start_authorized_first():
    rig = Rig()
    ok, actions = rig.call("remote_start", "REMOTE1", 1)
    assert ok is True
    assert actions == [RequestAuthorization("REMOTE1"), rig.status_changed(St.PREPARING)]
    assert kinds(rig.answer("REMOTE1")) == [AuthCacheUpdated]
    actions = rig.plug()
    tx = rig.cs.connector(1).transaction
    assert actions[0] == TransactionStarted(tx)
    assert (tx.id_tag, tx.remote_start) == ("REMOTE1", True)


def test_remote_start_rejected_by_authorize():
    rig = Rig()
    rig.call("remote_start", "REMOTE1", 1)
    assert rig.answer("REMOTE1", AuthStatus.INVALID)[-1] == rig.status_changed(St.AVAILABLE)


def test_remote_start_without_authorize_starts_at_once_when_plugged():
    rig = Rig(authorize_remote_start=False)
    rig.plug()
    ok, actions = rig.call("remote_start", "REMOTE1", None)
    tx = rig.cs.connector(1).transaction
    assert ok is True
    assert actions == [
        TransactionStarted(tx),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        rig.status_changed(St.CHARGING),
    ]
    assert (tx.id_tag, tx.remote_start) == ("REMOTE1", True)


def test_remote_start_without_authorize_waits_for_the_car_and_times_out():
    rig = Rig(authorize_remote_start=False, connection_timeout=30.0)
    assert rig.call("remote_start", "REMOTE1", 1) == (True, [rig.status_changed(St.PREPARING)])
    rig.later(30)
    assert rig.tick() == [rig.status_changed(St.AVAILABLE)]


def test_remote_start_refused():
    rig = Rig(2)
    rig.charging("A", 1)
    assert rig.call("remote_start", "R", 1) == (False, [])  # occupied
    assert rig.call("remote_start", "R", 3) == (False, [])  # unknown connector
    assert rig.call("remote_start", "R", 0) == (False, [])
    assert rig.call("remote_start", "R", 2)[0] is True
    assert rig.call("remote_start", "S", None) == (False, [])  # nothing free any more


# ---- ConnectionTimeOut -------------------------------------------------------------------


def test_connection_timeout_drops_an_authorized_card_without_a_car():
    rig = Rig(connection_timeout=60.0)
    rig.card("CARD1")
    rig.later(10)
    rig.answer("CARD1")  # the timeout counts from the authorization
    rig.later(59.5)
    assert rig.tick() == []
    assert rig.cs.status(1)[0] is St.PREPARING
    rig.later(0.5)
    assert rig.tick() == [rig.status_changed(St.AVAILABLE)]
    # The car that comes later finds no session waiting for it.
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    assert not of(TransactionStarted, rig.log)


def test_plugged_car_waiting_for_a_card_has_no_timeout():
    rig = Rig(connection_timeout=60.0)
    rig.plug()
    rig.later(3600)
    assert rig.tick() == []
    assert rig.cs.status(1)[0] is St.PREPARING


# ---- offline authorization and the cache -------------------------------------------------


def cached_rig(info: IdTagInfo, **settings) -> Rig:
    station = ChargingStation(1, CoreSettings(**settings), auth_cache={"CARD1": info})
    return Rig(station=station, online=False)


def test_offline_cache_hit_starts_without_asking():
    rig = cached_rig(IdTagInfo(AuthStatus.ACCEPTED, "G", T0 + 10))
    rig.plug()
    actions = rig.card("CARD1")
    assert kinds(actions)[:2] == [TransactionStarted, SetCurrentLimit]
    assert rig.cs.connector(1).transaction.parent_id_tag == "G"
    assert not of(RequestAuthorization, rig.log)


def test_offline_expired_cache_entry_is_refused():
    rig = cached_rig(IdTagInfo(AuthStatus.ACCEPTED, None, T0 - 1), allow_offline_unknown_id=True)
    assert rig.card("CARD1") == []
    assert rig.cs.connector(1).pending is None
    rig.plug()
    assert rig.cs.transactions() == []


def test_offline_blocked_cache_entry_is_refused_even_if_unknown_ids_are_allowed():
    rig = cached_rig(IdTagInfo(AuthStatus.BLOCKED), allow_offline_unknown_id=True)
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


def test_offline_cache_not_used_when_local_authorize_offline_is_off():
    rig = cached_rig(ACCEPTED, local_authorize_offline=False)
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


@pytest.mark.parametrize("allowed", [True, False])
def test_offline_unknown_id(allowed):
    rig = Rig(online=False, allow_offline_unknown_id=allowed)
    rig.plug()
    actions = rig.card("STRANGER")
    assert not of(RequestAuthorization, actions)
    if allowed:
        assert rig.cs.connector(1).transaction.id_tag == "STRANGER"
        assert rig.cs.status(1)[0] is St.CHARGING
    else:
        assert actions == []
        assert rig.cs.status(1)[0] is St.PREPARING


def test_connection_lost_during_authorize_decides_offline():
    station = ChargingStation(1, CoreSettings(), auth_cache={"CARD1": ACCEPTED})
    rig = Rig(station=station)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization("CARD1")]
    actions = rig.offline()
    assert kinds(actions)[:2] == [TransactionStarted, SetCurrentLimit]
    # The late answer (or its failure) does not start a second session.
    assert rig.answer("CARD1", None) == []
    assert len(of(TransactionStarted, rig.log)) == 1


def test_connection_lost_during_authorize_of_unknown_card_refuses():
    rig = Rig()
    rig.card("STRANGER")
    assert rig.offline() == [rig.status_changed(St.AVAILABLE)]
    assert rig.cs.connector(1).pending is None


def test_no_answer_to_authorize_decides_offline():
    rig = Rig(allow_offline_unknown_id=True)
    rig.plug()
    rig.card("STRANGER")
    assert kinds(rig.answer("STRANGER", None))[:1] == [TransactionStarted]


def test_local_pre_authorize_uses_the_cache_online():
    station = ChargingStation(1, CoreSettings(local_pre_authorize=True),
                              auth_cache={"CARD1": ACCEPTED, "OLD": IdTagInfo(
                                  AuthStatus.ACCEPTED, None, T0 - 1)})
    rig = Rig(station=station)
    rig.plug()
    actions = rig.card("CARD1")
    assert kinds(actions)[:2] == [TransactionStarted, SetCurrentLimit]
    rig.card("CARD1")
    rig.unplug()
    # An expired entry still goes to the CSMS.
    assert rig.card("OLD") == [RequestAuthorization("OLD"), rig.status_changed(St.PREPARING)]


def test_without_local_pre_authorize_the_csms_is_asked_even_for_cached_cards():
    station = ChargingStation(1, CoreSettings(), auth_cache={"CARD1": ACCEPTED})
    rig = Rig(station=station)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization("CARD1")]


def test_cache_is_bounded_and_evicts_least_recently_used():
    rig = Rig(auth_cache_size=2, online=False)
    assert rig.learn("A") == [AuthCacheUpdated("A", ACCEPTED)]
    assert rig.learn("B") == [AuthCacheUpdated("B", ACCEPTED)]
    rig.card("A")  # using A makes B the least recently used
    assert rig.learn("C") == [AuthCacheUpdated("B", None), AuthCacheUpdated("C", ACCEPTED)]
    assert len(rig.cs.cache) == 2
    assert rig.cs.cache.get("B") is None
    # Updating an entry that is present evicts nothing.
    blocked = IdTagInfo(AuthStatus.BLOCKED)
    assert rig.learn("C", AuthStatus.BLOCKED) == [AuthCacheUpdated("C", blocked)]
    assert rig.learn("D") == [AuthCacheUpdated("A", None), AuthCacheUpdated("D", ACCEPTED)]


def test_cache_loaded_beyond_capacity_keeps_the_newest():
    station = ChargingStation(1, CoreSettings(auth_cache_size=1),
                              auth_cache={"OLD": ACCEPTED, "NEW": ACCEPTED})
    assert len(station.cache) == 1
    assert station.cache.get("NEW") == ACCEPTED


def test_clear_cache():
    rig = cached_rig(ACCEPTED)
    rig.cs.clear_cache()
    assert rig.take() == []
    assert len(rig.cs.cache) == 0
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


def test_disabled_cache_neither_learns_nor_decides():
    station = ChargingStation(1, CoreSettings(auth_cache_enabled=False),
                              auth_cache={"CARD1": ACCEPTED})
    rig = Rig(station=station, online=False)
    assert rig.learn("CARD2") == []
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


# ---- parentIdTag -------------------------------------------------------------------------


def test_card_of_the_same_group_stops_the_session_via_the_cache():
    rig = Rig()
    tx = rig.charging("CARD1", parent="FLEET")
    rig.learn("CARD2", parent="FLEET")
    rig.learn("CARD3", parent="OTHERS")
    assert rig.card("CARD3") == [RequestAuthorization("CARD3")]  # not the group: ask
    assert kinds(rig.answer("CARD3", parent="OTHERS")) == [AuthCacheUpdated]
    assert rig.cs.connector(1).transaction is tx
    actions = rig.card("CARD2")
    assert actions[:3] == [*power_off(),
                           TransactionStopped(tx, StopReason.LOCAL, rig.now, 0.0, "CARD2")]
    assert not of(RequestAuthorization, actions)


def test_card_of_the_same_group_stops_the_session_online():
    rig = Rig()
    tx = rig.charging("CARD1", parent="FLEET")
    assert rig.card("CARD2") == [RequestAuthorization("CARD2")]
    actions = rig.answer("CARD2", parent="FLEET")
    assert actions == [
        AuthCacheUpdated("CARD2", IdTagInfo(AuthStatus.ACCEPTED, "FLEET")),
        *power_off(),
        TransactionStopped(tx, StopReason.LOCAL, rig.now, 0.0, "CARD2"),
        rig.status_changed(St.FINISHING),
    ]


def test_blocked_card_of_the_same_group_does_not_stop():
    rig = Rig()
    rig.charging("CARD1", parent="FLEET")
    rig.card("CARD2")
    assert kinds(rig.answer("CARD2", AuthStatus.BLOCKED, parent="FLEET")) == [AuthCacheUpdated]
    assert rig.cs.status(1)[0] is St.CHARGING


def test_group_known_only_from_start_confirmation():
    rig = Rig(online=False, allow_offline_unknown_id=True)
    rig.plug()
    rig.card("CARD1")
    tx = rig.cs.connector(1).transaction
    assert tx.parent_id_tag is None
    rig.cs.connection_changed(True, rig.now)
    rig.confirm(tx.local_id, 90, parent="FLEET")
    assert tx.parent_id_tag == "FLEET"
    rig.learn("CARD2", parent="FLEET")
    assert only_stop(rig.card("CARD2")).id_tag == "CARD2"


# ---- availability ------------------------------------------------------------------------


def test_availability_restored_from_the_store_is_not_announced_again():
    station = ChargingStation(2, CoreSettings(), operative={2: False})
    assert station.status(1) == (St.AVAILABLE, None, "")
    assert station.status(2) == (St.UNAVAILABLE, None, "")
    assert station.drain() == []
    station = ChargingStation(2, CoreSettings(), operative={0: False})
    assert [station.status(c)[0] for c in (0, 1, 2)] == [St.UNAVAILABLE] * 3


def test_connector_inoperative_and_back():
    rig = Rig(2)
    result, actions = rig.call("change_availability", 1, False)
    assert result is Availability.ACCEPTED
    assert actions == [AvailabilityChanged(1, False), rig.status_changed(St.UNAVAILABLE)]
    assert rig.plug(1) == []
    assert rig.card("CARD1", 1) == []  # unavailable: the card is for connector 1 only
    assert rig.call("remote_start", "R", 1) == (False, [])
    # The same request again changes nothing.
    assert rig.call("change_availability", 1, False) == (Availability.ACCEPTED, [])
    result, actions = rig.call("change_availability", 1, True)
    assert result is Availability.ACCEPTED
    assert actions == [AvailabilityChanged(1, True), rig.status_changed(St.PREPARING)]


def test_card_then_inoperative_drops_the_waiting_session():
    rig = Rig()
    rig.card("CARD1")
    rig.answer("CARD1")
    rig.call("change_availability", 1, False)
    rig.call("change_availability", 1, True)
    assert rig.plug() == [rig.status_changed(St.PREPARING)]


def test_connector_inoperative_during_a_session_is_scheduled():
    rig = Rig()
    tx = rig.charging()
    # Stored at once, so a restart that ends the session still applies it.
    assert rig.call("change_availability", 1, False) == (
        Availability.SCHEDULED, [AvailabilityChanged(1, False)])
    # The session goes on, pauses and resumes as usual.
    assert rig.pilot(B) == [SetContactor(1, False), rig.status_changed(St.SUSPENDED_EV)]
    assert rig.pilot(C) == [SetContactor(1, True), rig.status_changed(St.CHARGING)]
    actions = rig.card("CARD1")
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.LOCAL, rig.now, 0.0, "CARD1"),
        AvailabilityChanged(1, False),
        rig.status_changed(St.UNAVAILABLE),
    ]


def test_operative_cancels_a_scheduled_inoperative():
    rig = Rig()
    rig.charging()
    rig.call("change_availability", 1, False)
    assert rig.call("change_availability", 1, True) == (
        Availability.ACCEPTED, [AvailabilityChanged(1, True)])
    actions = rig.card("CARD1")
    assert not of(AvailabilityChanged, actions)
    assert actions[-1] == rig.status_changed(St.FINISHING)


def test_station_inoperative_and_back():
    rig = Rig(2)
    result, actions = rig.call("change_availability", 0, False)
    assert result is Availability.ACCEPTED
    assert actions == [
        AvailabilityChanged(0, False),
        AvailabilityChanged(1, False),
        AvailabilityChanged(2, False),
        rig.status_changed(St.UNAVAILABLE, 0),
        rig.status_changed(St.UNAVAILABLE, 1),
        rig.status_changed(St.UNAVAILABLE, 2),
    ]
    assert rig.card("CARD1") == []
    result, actions = rig.call("change_availability", 0, True)
    assert result is Availability.ACCEPTED
    assert actions == [
        AvailabilityChanged(0, True),
        AvailabilityChanged(1, True),
        AvailabilityChanged(2, True),
        rig.status_changed(St.AVAILABLE, 0),
        rig.status_changed(St.AVAILABLE, 1),
        rig.status_changed(St.AVAILABLE, 2),
    ]


def test_station_inoperative_during_a_session_is_scheduled_for_that_connector():
    rig = Rig(2)
    tx = rig.charging("A", 1)
    result, actions = rig.call("change_availability", 0, False)
    assert result is Availability.SCHEDULED
    assert AvailabilityChanged(2, False) in actions
    assert AvailabilityChanged(1, False) in actions  # scheduled, and stored already
    assert rig.cs.status(2)[0] is St.UNAVAILABLE
    assert rig.cs.status(1)[0] is St.CHARGING
    # The running session keeps its power until it ends.
    assert rig.pilot(B, 1) == [SetContactor(1, False), rig.status_changed(St.SUSPENDED_EV)]
    assert rig.pilot(C, 1) == [SetContactor(1, True), rig.status_changed(St.CHARGING)]
    actions = rig.card("A")
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.LOCAL, rig.now, 0.0, "A"),
        AvailabilityChanged(1, False),
        rig.status_changed(St.UNAVAILABLE),
    ]


# ---- metering ----------------------------------------------------------------------------


def test_meter_start_and_stop_with_begin_and_end_samples():
    rig = Rig(meter_sample_interval=0)
    reading_start = MeterReading(energy_wh=1000.0, power_w=0.0)
    rig.cs.meter_sample(1, reading_start)
    tx = rig.charging()
    assert tx.meter_start_wh == 1000.0
    assert tx.samples == [Sample(T0, ReadingContext.TRANSACTION_BEGIN, reading_start)]
    rig.later(1800)
    reading_end = MeterReading(energy_wh=6500.5, power_w=11000.0)
    rig.cs.meter_sample(1, reading_end)
    assert rig.tick() == []  # no periodic samples configured
    stop = only_stop(rig.card("CARD1"))
    assert stop.meter_stop_wh == 6500.5
    assert tx.samples == [
        Sample(T0, ReadingContext.TRANSACTION_BEGIN, reading_start),
        Sample(T0 + 1800, ReadingContext.TRANSACTION_END, reading_end),
    ]


def test_no_meter_reading_means_zero_and_no_samples():
    rig = Rig()
    tx = rig.charging()
    assert (tx.meter_start_wh, tx.samples) == (0.0, [])
    assert only_stop(rig.unplug()).meter_stop_wh == 0.0
    assert tx.samples == []


def test_periodic_samples():
    rig = Rig(meter_sample_interval=60.0, clock_aligned_interval=0)
    rig.meter(100.0)
    tx = rig.charging()
    rig.meter(150.0)
    rig.later(59.5)
    assert rig.tick() == []
    rig.later(0.5)
    sample = Sample(T0 + 60, ReadingContext.PERIODIC, MeterReading(150.0))
    assert rig.tick() == [MeterValuesReport(1, tx, sample)]
    assert rig.tick() == []  # once per interval, however often the clock ticks
    rig.later(60)
    assert [a.sample.timestamp for a in rig.tick()] == [T0 + 120]
    assert [s.context for s in tx.samples] == [ReadingContext.TRANSACTION_BEGIN,
                                               ReadingContext.PERIODIC, ReadingContext.PERIODIC]


def test_periodic_samples_catch_up_without_flooding():
    rig = Rig(meter_sample_interval=60.0, clock_aligned_interval=0)
    rig.meter(100.0)
    tx = rig.charging()
    rig.later(1000)  # 16 intervals missed
    actions = rig.tick()
    assert len(actions) == 1
    assert actions[0].sample.timestamp == T0 + 1000
    assert tx.next_sample_at == T0 + 1020
    rig.later(19.5)
    assert rig.tick() == []
    rig.later(0.5)
    assert len(rig.tick()) == 1
    assert tx.next_sample_at == T0 + 1080


def test_periodic_samples_stop_with_the_session_and_none_when_disabled():
    rig = Rig(meter_sample_interval=60.0, clock_aligned_interval=0)
    rig.meter(100.0)
    rig.charging()
    rig.card("CARD1")
    rig.later(600)
    assert rig.tick() == []
    rig = Rig(meter_sample_interval=0, clock_aligned_interval=0)
    rig.meter(100.0)
    rig.charging()
    rig.later(3600)
    assert rig.tick() == []


def test_no_clock_aligned_samples_without_a_trusted_clock():
    rig = Rig(clock_aligned_interval=900.0, meter_sample_interval=0)
    rig.meter(5.0)
    for _ in range(2000):
        rig.later(1)
        assert rig.tick() == []


def test_clock_aligned_samples_land_on_the_boundaries():
    rig = Rig(2, clock_aligned_interval=900.0, meter_sample_interval=0)
    reading = MeterReading(energy_wh=5.0)
    rig.cs.meter_sample(1, reading)  # connector 2 has no meter reading: no sample for it
    rig.cs.clock_synchronised(rig.now)
    first = math.ceil(T0 / 900) * 900
    reports = []
    while rig.now < first + 1900:
        rig.later(1)
        reports += rig.tick()
    assert reports == [
        MeterValuesReport(1, None, Sample(first, ReadingContext.CLOCK, reading)),
        MeterValuesReport(1, None, Sample(first + 900, ReadingContext.CLOCK, reading)),
        MeterValuesReport(1, None, Sample(first + 1800, ReadingContext.CLOCK, reading)),
    ]
    assert all(r.sample.timestamp % 900 == 0 for r in reports)


def test_clock_aligned_sample_belongs_to_the_running_session():
    rig = Rig(clock_aligned_interval=900.0, meter_sample_interval=0)
    rig.meter(5.0)
    tx = rig.charging()
    rig.cs.clock_synchronised(rig.now)
    boundary = math.ceil(T0 / 900) * 900
    rig.now = boundary - 0.5
    assert rig.tick() == []
    rig.now = boundary + 0.3
    sample = Sample(boundary, ReadingContext.CLOCK, MeterReading(5.0))
    assert rig.tick() == [MeterValuesReport(1, tx, sample)]
    assert tx.samples[-1] == sample


def test_clock_aligned_first_boundary_after_synchronisation_is_not_missed():
    rig = Rig(clock_aligned_interval=900.0, meter_sample_interval=0)
    rig.meter(5.0)
    boundary = math.ceil(T0 / 900) * 900
    rig.now = boundary - 0.2
    rig.cs.clock_synchronised(rig.now)
    rig.now = boundary + 0.8  # the first tick after the sync is already past the boundary
    assert [a.sample.timestamp for a in rig.tick()] == [boundary]


def test_clock_aligned_catch_up_after_a_gap_reports_once_at_the_latest_boundary():
    rig = Rig(clock_aligned_interval=900.0, meter_sample_interval=0)
    rig.meter(5.0)
    rig.cs.clock_synchronised(rig.now)
    boundary = math.ceil(T0 / 900) * 900
    rig.now = boundary + 4 * 900 + 12  # four boundaries went by unobserved
    assert [a.sample.timestamp for a in rig.tick()] == [boundary + 4 * 900]
    rig.now = boundary + 5 * 900 - 1
    assert rig.tick() == []
    rig.now = boundary + 5 * 900
    assert [a.sample.timestamp for a in rig.tick()] == [boundary + 5 * 900]


def test_clock_aligned_interval_change_takes_effect_at_once():
    rig = Rig(clock_aligned_interval=900.0, meter_sample_interval=0)
    rig.meter(5.0)
    rig.cs.clock_synchronised(rig.now)
    rig.later(1)
    assert rig.tick() == []
    rig.cs.settings.clock_aligned_interval = 60.0  # ChangeConfiguration
    rig.later(1)
    assert rig.tick() == []
    boundary = math.ceil(rig.now / 60) * 60
    rig.now = boundary
    assert [a.sample.timestamp for a in rig.tick()] == [boundary]
    rig.cs.settings.clock_aligned_interval = 0.0
    rig.now = boundary + 3600
    assert rig.tick() == []
    rig.cs.settings.clock_aligned_interval = 900.0
    rig.later(1)
    assert rig.tick() == []
    rig.now = math.ceil(rig.now / 900) * 900
    assert [a.sample.timestamp for a in rig.tick()] == [rig.now]


# ---- free vend ---------------------------------------------------------------------------


@pytest.mark.parametrize("online", [True, False])
def test_free_vend_starts_on_plug(online):
    rig = Rig(online=online, free_vend_id_tag="FREE")
    actions = rig.plug()
    tx = rig.cs.connector(1).transaction
    assert actions == [
        TransactionStarted(tx),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        rig.status_changed(St.CHARGING),
    ]
    assert tx.id_tag == "FREE"
    actions = rig.unplug()
    assert only_stop(actions).reason is StopReason.EV_DISCONNECTED
    assert not of(RequestAuthorization, rig.log)


# ---- restoring sessions cut short --------------------------------------------------------


def test_restore_interrupted():
    rig = Rig(station=ChargingStation(2, CoreSettings(), next_transaction_id=3))
    rig.meter(900.0, 1)
    cut1 = Transaction(7, 1, "CARD1", T0 - 3600, 500.0, csms_id=70)
    cut2 = Transaction(4, 2, "CARD2", T0 - 600, 42.0)
    _, actions = rig.call("restore_interrupted", [cut1, cut2], StopReason.POWER_LOSS)
    assert actions == [
        TransactionStopped(cut1, StopReason.POWER_LOSS, T0, 900.0, None),
        TransactionStopped(cut2, StopReason.POWER_LOSS, T0, 42.0, None),  # no reading: no energy
    ]
    assert rig.cs.transactions() == []
    assert rig.charging().local_id == 8


def test_restore_interrupted_does_not_lower_the_next_id():
    rig = Rig(station=ChargingStation(1, CoreSettings(), next_transaction_id=10))
    rig.call("restore_interrupted", [Transaction(3, 1, "X", T0 - 60, 0.0)], StopReason.REBOOT)
    assert only_stop(rig.log).reason is StopReason.REBOOT
    assert rig.charging().local_id == 10


# ---- the control pilot's own errors ------------------------------------------------------


@pytest.mark.parametrize("error", [E, F])
def test_pilot_error_faults_the_connector_until_it_returns(error):
    rig = Rig()
    tx = rig.charging()
    actions = rig.pilot(error)
    assert actions == [
        *power_off(),
        TransactionStopped(tx, StopReason.OTHER, rig.now, 0.0, None),
        UnlockConnector(1),
        rig.status_changed(St.FAULTED, fault=Fault.EV_COMMUNICATION_ERROR,
                           info=f"control pilot in state {error}"),
    ]
    assert rig.card("CARD2") == []  # faulted: nothing starts
    assert rig.pilot(B) == [rig.status_changed(St.PREPARING)]
    assert rig.cs.transactions() == []
    assert rig.pilot(error)[-1].status is St.FAULTED
    assert rig.pilot(A) == [rig.status_changed(St.AVAILABLE)]


# ---- faults that do not block charging ---------------------------------------------------


def test_reader_failure_is_reported_but_charging_goes_on():
    rig = Rig()
    tx = rig.charging()
    _, actions = rig.call("fault_raised", 1, Fault.READER_FAILURE, "no answer")
    assert actions == [rig.status_changed(St.CHARGING, fault=Fault.READER_FAILURE,
                                          info="no answer")]
    assert rig.cs.connector(1).transaction is tx and rig.cs.connector(1).contactor_closed
    # A blocking fault takes precedence in what is shown.
    _, actions = rig.call("fault_raised", 1, Fault.HIGH_TEMPERATURE, "85 C")
    assert actions[-1] == rig.status_changed(St.FAULTED, fault=Fault.HIGH_TEMPERATURE,
                                             info="85 C")
    _, actions = rig.call("fault_cleared", 1, Fault.HIGH_TEMPERATURE)
    assert actions == [rig.status_changed(St.FINISHING, fault=Fault.READER_FAILURE,
                                          info="no answer")]
    _, actions = rig.call("fault_cleared", 1, Fault.READER_FAILURE)
    assert actions == [rig.status_changed(St.FINISHING)]


def test_station_meter_failure_is_reported_everywhere_and_sessions_start():
    rig = Rig(2)
    _, actions = rig.call("fault_raised", 0, Fault.POWER_METER_FAILURE, "modbus timeout")
    assert actions == [
        rig.status_changed(St.AVAILABLE, 0, Fault.POWER_METER_FAILURE, "modbus timeout"),
        rig.status_changed(St.AVAILABLE, 1, Fault.POWER_METER_FAILURE, "modbus timeout"),
        rig.status_changed(St.AVAILABLE, 2, Fault.POWER_METER_FAILURE, "modbus timeout"),
    ]
    tx = rig.charging("CARD1", 1)
    assert rig.cs.status(1) == (St.CHARGING, Fault.POWER_METER_FAILURE, "modbus timeout")
    assert rig.cs.connector(1).transaction is tx


def test_clearing_faults_keeps_the_one_the_pilot_still_shows():
    rig = Rig()
    rig.plug()
    rig.pilot(PilotState.E)
    rig.cs.fault_cleared(1, None, rig.now)
    rig.take()
    assert rig.cs.status(1)[:2] == (St.FAULTED, Fault.EV_COMMUNICATION_ERROR)


def test_meter_stop_never_falls_below_meter_start_without_an_energy_reading():
    rig = Rig()
    rig.cs.meter_sample(1, MeterReading(energy_wh=5000.0))
    tx = rig.charging()
    rig.cs.meter_sample(1, MeterReading(energy_wh=None, power_w=0.0))
    stopped = [a for a in rig.card("CARD1") if isinstance(a, TransactionStopped)]
    assert tx.meter_start_wh == 5000.0
    assert stopped[0].meter_stop_wh == 5000.0


def test_a_session_waits_for_a_meter_that_stopped_answering():
    rig = Rig()
    rig.cs.meter_sample(1, MeterReading(energy_wh=1_234_567.0))
    rig.cs.meter_failed(1)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization("CARD1")]
    rig.answer("CARD1")
    assert rig.cs.transactions() == []  # no meterStart from a reading that may be old
    assert not rig.cs.connector(1).contactor_closed
    rig.cs.meter_sample(1, MeterReading(energy_wh=1_234_600.0), rig.now)
    actions = rig.take()
    started = of(TransactionStarted, actions)
    assert started and started[0].transaction.meter_start_wh == 1_234_600.0


def test_no_periodic_samples_from_a_stale_reading():
    rig = Rig(meter_sample_interval=10)
    rig.cs.meter_sample(1, MeterReading(energy_wh=100.0))
    rig.charging()
    rig.cs.meter_failed(1)
    rig.later(25)
    assert not of(MeterValuesReport, rig.call("tick")[1])


def test_a_start_the_store_could_not_record_never_powers_the_connector():
    rig = Rig()
    tx = rig.charging()
    rig.cs.start_not_recorded(tx.local_id, rig.now)
    actions = rig.cs.drain()  # not replayed: for the shell this session never existed
    assert actions[:2] == [SetContactor(1, False), SetCurrentLimit(1, 0.0)]
    assert rig.cs.transactions() == []
    assert rig.cs.status(1)[0] is St.PREPARING


def test_max_energy_on_invalid_id_lets_an_invalidated_session_finish_its_allowance():
    rig = Rig(stop_on_invalid_id=False, max_energy_on_invalid_id=500.0)
    rig.cs.meter_sample(1, MeterReading(energy_wh=1000.0))
    tx = rig.charging()
    rig.confirm(1, 12, AuthStatus.INVALID)
    assert rig.cs.connector(1).contactor_closed  # within the allowance
    rig.cs.meter_sample(1, MeterReading(energy_wh=1499.0), rig.now)
    assert rig.take() == []
    rig.cs.meter_sample(1, MeterReading(energy_wh=1500.0), rig.now)
    actions = rig.take()
    assert SetContactor(1, False) in actions
    assert rig.cs.status(1)[0] is St.SUSPENDED_EVSE
    assert rig.cs.transactions() == [tx]  # suspended, not stopped


def test_deadlines_and_stamps_move_with_the_clock_when_the_time_becomes_known():
    rig = Rig(meter_sample_interval=60)
    rig.cs.meter_sample(1, MeterReading(energy_wh=10.0))
    tx = rig.charging()
    began, due = tx.started_at, tx.next_sample_at
    jump = 2 * 3600.0  # the board ran two hours ahead (RTC on local time)
    rig.cs.clock_synchronised(rig.now - jump, -jump)
    rig.now -= jump
    assert tx.started_at == began - jump and tx.next_sample_at == due - jump
    assert tx.samples[0].timestamp == began - jump
    rig.later(61)
    assert of(MeterValuesReport, rig.call("tick")[1])  # not two hours late


def test_no_new_session_while_a_reset_is_under_way():
    rig = Rig(2)
    rig.charging("A", 1)
    rig.call("reset", False)
    rig.plug(2)
    assert rig.card("B", 2) == []
    assert rig.call("remote_start", "C", 2)[0] is False
    assert rig.cs.transactions() == []


def test_second_tap_while_finishing_then_unplug_is_available():
    """A card presented again on a Finishing connector belongs to the car still plugged in:
    when that car leaves, so does the waiting authorization."""
    rig = Rig()
    rig.charging("CARD1")
    rig.card("CARD1")  # stops the session: Finishing
    assert rig.cs.status(1)[0] is St.FINISHING
    assert rig.card("CARD2") == [RequestAuthorization("CARD2")]
    assert statuses(rig.unplug()) == [St.AVAILABLE]
    assert rig.cs.connector(1).pending is None
    # The late answer finds nothing to start.
    assert kinds(rig.answer("CARD2")) == [AuthCacheUpdated]
    assert rig.cs.status(1)[0] is St.AVAILABLE
