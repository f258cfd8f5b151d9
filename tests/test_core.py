"""The charging core on its own: a fake clock (plain floats), no event loop, no I/O.

Every call goes through `Rig`, which drains the actions, replays them on a model of the
hardware and checks the safety rules on every step: a transaction is recorded before any
current is offered, the contactor closes only for a running, authorized session whose vehicle
asks for power while current is offered, it is open before (or with) every end, and each
transaction's events carry sequence numbers 0, 1, 2 ... without a gap. The simulated vehicle
follows the pilot: it asks for power (C) when current is offered and stops asking (B) when the
offer is withdrawn.

These tests run the core with the 1.6 start and stop points (the defaults); the 2.0.1 ones
are in test_core_points.py.
"""

from __future__ import annotations

import math

import pytest

from cpagent.core.actions import (
    Action,
    AuthCacheUpdated,
    AvailabilityChanged,
    MeterValuesReport,
    RequestAuthorization,
    ResetNow,
    SetContactor,
    SetCurrentLimit,
    StatusChanged,
    TransactionEvent,
    TxEventKind,
    UnlockConnector,
)
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    Availability,
    ChargingState,
    ConnectorStatus,
    CoreSettings,
    IdToken,
    ReadingContext,
    Sample,
    StopReason,
    Transaction,
    Trigger,
    TxPoint,
)
from cpagent.core.station import ChargingStation
from hal.interfaces import Fault, MeterReading, PilotState

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, not on a 900 s boundary
A, B, C, D, E, F = (PilotState(s) for s in "ABCDEF")
St = ConnectorStatus
ACCEPTED = AuthInfo(AuthStatus.ACCEPTED)
STARTED, UPDATED, ENDED = TxEventKind.STARTED, TxEventKind.UPDATED, TxEventKind.ENDED


def tok(value: str) -> IdToken:
    return IdToken(value)


def info(status: AuthStatus = AuthStatus.ACCEPTED, group: str | None = None,
         expiry: float | None = None) -> AuthInfo:
    return AuthInfo(status, tok(group) if group else None, expiry)


class Rig:
    """A ChargingStation, a fake clock, vehicles that follow the pilot, and a safety check."""

    def __init__(self, evses: int = 1, *, online: bool = True, ev_follows: bool = True,
                 station: ChargingStation | None = None, **settings) -> None:
        self.cs = station or ChargingStation(evses, CoreSettings(**settings))
        self.now = T0
        self.ev_follows = ev_follows
        self.log: list[Action] = []
        self._closed = {e: False for e in self.cs.evses}
        self._amps = {e: 0.0 for e in self.cs.evses}
        self._open_tx: dict[int, str] = {}
        self._seq: dict[str, int] = {}
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
            for e, amps in {a.evse_id: a.amps for a in actions
                            if isinstance(a, SetCurrentLimit)}.items():
                pilot = self.cs.evse(e).pilot
                if amps > 0 and pilot is B:
                    self.cs.pilot_changed(e, C, self.now)
                    actions += self.take()
                elif amps == 0 and pilot.wants_power:
                    self.cs.pilot_changed(e, B, self.now)
                    actions += self.take()
        return actions

    def _replay(self, actions: list[Action]) -> None:
        self.log += actions
        for a in actions:
            match a:
                case TransactionEvent(kind=TxEventKind.STARTED):
                    assert a.evse_id not in self._open_tx, "two sessions on one EVSE"
                    assert not self._closed[a.evse_id]
                    assert a.seq == 0
                    self._open_tx[a.evse_id] = a.ref
                    self._seq[a.ref] = 0
                case TransactionEvent():
                    if a.ref in self._seq:
                        assert a.seq == self._seq[a.ref] + 1, "a gap in the sequence"
                    self._seq[a.ref] = a.seq
                    if a.kind is ENDED and self._open_tx.get(a.evse_id) == a.ref:
                        assert not self._closed[a.evse_id], "ended with contactor closed"
                        del self._open_tx[a.evse_id]
                case SetCurrentLimit(evse_id=e, amps=amps):
                    # A session that begins with the energy is offered current first; no
                    # energy flows before the contactor closes, after the start.
                    pending = self.cs.evse(e).pending
                    energy_start = self.cs.settings.start_points == {TxPoint.ENERGY_TRANSFER} \
                        and pending is not None and pending.authorized
                    assert amps == 0 or e in self._open_tx or energy_start, \
                        "current offered without a session"
                    assert amps > 0 or not self._closed[e], "offer withdrawn before opening"
                    self._amps[e] = amps
                case SetContactor(evse_id=e, closed=closed):
                    if closed:
                        tx = self.cs.evse(e).transaction
                        assert e in self._open_tx and tx is not None, "closed without a session"
                        assert tx.authorized and not tx.suspended_by_csms
                        assert self.cs.evse(e).pilot.wants_power
                        assert self._amps[e] > 0
                    self._closed[e] = closed
        for e, evse in self.cs.evses.items():
            assert evse.contactor_closed == self._closed[e]
            assert evse.offered_amps == self._amps[e]
            assert (e in self._open_tx) == (evse.transaction is not None)

    # ---- what happens at the charger -------------------------------------------------------

    def pilot(self, state: PilotState, e: int = 1) -> list[Action]:
        self.cs.pilot_changed(e, state, self.now)
        return self.take()

    def plug(self, e: int = 1) -> list[Action]:
        return self.pilot(B, e)

    def unplug(self, e: int = 1) -> list[Action]:
        return self.pilot(A, e)

    def card(self, tag: str, e: int | None = None) -> list[Action]:
        self.cs.card_presented(tok(tag), e, self.now)
        return self.take()

    def answer(self, tag: str, status: AuthStatus | None = AuthStatus.ACCEPTED,
               parent: str | None = None, expiry: float | None = None) -> list[Action]:
        verdict = None if status is None else info(status, parent, expiry)
        self.cs.authorization_result(tok(tag), verdict, self.now)
        return self.take()

    def learn(self, tag: str, status: AuthStatus = AuthStatus.ACCEPTED,
              parent: str | None = None, expiry: float | None = None) -> list[Action]:
        self.cs.token_info_received(tok(tag), info(status, parent, expiry), self.now)
        return self.take()

    def meter(self, wh: float, e: int = 1) -> None:
        self.cs.meter_sample(e, MeterReading(energy_wh=wh))
        assert self.cs.drain() == []

    def tick(self) -> list[Action]:
        self.cs.tick(self.now)
        return self.take()

    def offline(self) -> list[Action]:
        self.cs.connection_changed(False, self.now)
        return self.take()

    def confirm(self, ref: str, status: AuthStatus = AuthStatus.ACCEPTED,
                parent: str | None = None) -> list[Action]:
        self.cs.transaction_authorization(ref, info(status, parent), self.now)
        return self.take()

    def call(self, method: str, *args, **kwargs):
        """Any other command: `rig.call("unlock", 1)` passes the rig's clock after the args."""
        result = getattr(self.cs, method)(*args, self.now, **kwargs)
        return result, self.take()

    # ---- a whole start ---------------------------------------------------------------------

    def charging(self, tag: str = "CARD1", e: int = 1, parent: str | None = None) -> Transaction:
        """Plug, tap, accept: a session that is charging now."""
        self.plug(e)
        assert self.card(tag, e) == [RequestAuthorization(tok(tag))]
        self.answer(tag, parent=parent)
        assert self.cs.status(e)[0] is St.CHARGING
        tx = self.cs.evse(e).transaction
        assert tx is not None
        return tx

    def status_changed(self, status: ConnectorStatus, e: int = 1, fault: Fault | None = None,
                       info: str = "", vehicle: bool | None = None) -> StatusChanged:
        present = self.cs.evse(e).pilot.vehicle_present if vehicle is None and e else \
            bool(vehicle)
        return StatusChanged(e, 0 if e == 0 else 1, status, fault, info, self.now, present)


def of(kind: type, actions: list[Action]) -> list:
    return [a for a in actions if isinstance(a, kind)]


def kinds(actions: list[Action]) -> list:
    """Types of the actions, transaction events as (kind, trigger)."""
    return [(a.kind, a.trigger) if isinstance(a, TransactionEvent) else type(a) for a in actions]


def shape(actions: list[Action]) -> list:
    """The actions, transaction events as (kind, trigger) so lists compare readably."""
    return [(a.kind, a.trigger) if isinstance(a, TransactionEvent) else a for a in actions]


def statuses(actions: list[Action], e: int = 1) -> list[ConnectorStatus]:
    return [a.status for a in of(StatusChanged, actions) if a.evse_id == e]


def events(actions: list[Action], kind: TxEventKind | None = None) -> list[TransactionEvent]:
    return [a for a in of(TransactionEvent, actions) if kind is None or a.kind is kind]


def only_end(actions: list[Action]) -> TransactionEvent:
    ends = events(actions, ENDED)
    assert len(ends) == 1, ends
    return ends[0]


def ended(e: TransactionEvent) -> tuple:
    return e.reason, e.timestamp, e.meter_stop_wh, e.stopped_by


STATE = (UPDATED, Trigger.CHARGING_STATE_CHANGED)


def power_off(e: int = 1) -> list[Action]:
    return [SetContactor(e, False), SetCurrentLimit(e, 0.0)]


# ---- starting a session ------------------------------------------------------------------


def test_plug_then_card_online():
    rig = Rig()
    assert rig.cs.status(1) == (St.AVAILABLE, None, "")
    rig.meter(1200.0)
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    rig.later(3)
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1"))]
    rig.later(1)
    actions = rig.answer("CARD1")
    tx = rig.cs.evse(1).transaction
    assert shape(actions) == [
        AuthCacheUpdated(tok("CARD1"), ACCEPTED),
        (STARTED, Trigger.AUTHORIZED),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),  # until the vehicle reacts to the offer
        SetContactor(1, True),
        STATE,
        rig.status_changed(St.CHARGING),
    ]
    start, charging = events(actions)
    assert (start.ref, start.seq, start.evse_id, start.connector_id, start.token,
            start.started_at, start.meter_start_wh, start.authorized_now) == (
        tx.ref, 0, 1, 1, tok("CARD1"), T0 + 4, 1200.0, True)
    assert start.charging_state is ChargingState.SUSPENDED_EV
    assert [s.context for s in start.samples] == [ReadingContext.TRANSACTION_BEGIN]
    assert (charging.seq, charging.charging_state) == (1, ChargingState.CHARGING)
    assert tx.remote_start_id is None and tx.group is None
    assert rig.cs.evse(1).pilot is C


def test_card_then_plug_online():
    rig = Rig()
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1")),
                                 rig.status_changed(St.PREPARING)]
    rig.later(2)
    # Accepted, but no car yet: nothing to start, nothing to offer.
    assert rig.answer("CARD1", parent="GROUP") == [
        AuthCacheUpdated(tok("CARD1"), AuthInfo(AuthStatus.ACCEPTED, tok("GROUP")))]
    assert rig.cs.transactions() == []
    rig.later(10)
    actions = rig.plug()
    tx = rig.cs.evse(1).transaction
    assert shape(actions) == [
        (STARTED, Trigger.CABLE_PLUGGED_IN),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        STATE,
        rig.status_changed(St.CHARGING),
    ]
    assert (tx.token, tx.group, tx.started_at) == (tok("CARD1"), tok("GROUP"), T0 + 12)
    assert events(actions)[0].authorized_now is True


def test_vehicle_already_asking_for_power_closes_right_after_the_start():
    rig = Rig(ev_follows=False)
    rig.pilot(C)  # a car that goes straight to C: no current is offered, nothing closes
    assert rig.cs.evse(1).contactor_closed is False
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    assert kinds(actions) == [AuthCacheUpdated, (STARTED, Trigger.AUTHORIZED), SetCurrentLimit,
                              SetContactor, StatusChanged]
    assert actions[-2:] == [SetContactor(1, True), rig.status_changed(St.CHARGING)]
    # The start already says it charges: no second event for it.
    assert events(actions)[0].charging_state is ChargingState.CHARGING


def test_no_contactor_without_a_session():
    rig = Rig()
    assert rig.plug() == [rig.status_changed(St.PREPARING)]
    assert rig.pilot(C) == []
    assert rig.pilot(D) == []
    assert rig.cs.status(1) == (St.PREPARING, None, "")
    # A rejected card does not change that.
    rig.card("BAD")
    assert rig.answer("BAD", AuthStatus.BLOCKED) == [
        AuthCacheUpdated(tok("BAD"), AuthInfo(AuthStatus.BLOCKED))]
    assert not of(SetContactor, rig.log) and not of(SetCurrentLimit, rig.log)


def test_rejected_card_leaves_connector_free():
    rig = Rig()
    rig.card("BAD")
    assert rig.answer("BAD", AuthStatus.INVALID) == [
        AuthCacheUpdated(tok("BAD"), AuthInfo(AuthStatus.INVALID)),
        rig.status_changed(St.AVAILABLE),
    ]
    assert rig.plug() == [rig.status_changed(St.PREPARING)]


def test_full_status_sequence():
    rig = Rig()
    assert rig.cs.status(1)[0] is St.AVAILABLE
    rig.charging()
    rig.later(60)
    assert shape(rig.pilot(B)) == [SetContactor(1, False), STATE,
                                   rig.status_changed(St.SUSPENDED_EV)]
    rig.later(60)
    assert shape(rig.pilot(C)) == [SetContactor(1, True), STATE,
                                   rig.status_changed(St.CHARGING)]
    rig.later(60)
    stop = rig.card("CARD1")
    assert kinds(stop) == [SetContactor, SetCurrentLimit, (ENDED, Trigger.STOP_AUTHORIZED),
                           StatusChanged]
    assert stop[-1] == rig.status_changed(St.FINISHING)
    assert rig.cs.evse(1).pilot is B  # the vehicle saw the offer withdrawn
    rig.later(30)
    assert rig.unplug() == [UnlockConnector(1, 1), rig.status_changed(St.AVAILABLE)]
    assert statuses(rig.log) == [St.PREPARING, St.SUSPENDED_EV, St.CHARGING, St.SUSPENDED_EV,
                                 St.CHARGING, St.FINISHING, St.AVAILABLE]
    assert [e.charging_state for e in events(rig.log)] == [
        ChargingState.SUSPENDED_EV, ChargingState.CHARGING, ChargingState.SUSPENDED_EV,
        ChargingState.CHARGING, ChargingState.EV_CONNECTED]


def test_suspended_evse_when_no_current_is_offered():
    rig = Rig(max_current=0.0, ev_follows=False)
    rig.plug()
    rig.card("CARD1")
    actions = rig.answer("CARD1")
    assert kinds(actions) == [AuthCacheUpdated, (STARTED, Trigger.AUTHORIZED), StatusChanged]
    assert actions[-1] == rig.status_changed(St.SUSPENDED_EVSE)
    assert events(actions)[0].charging_state is ChargingState.SUSPENDED_EVSE
    # Even a vehicle asking for power gets no contactor while nothing is offered.
    assert rig.pilot(C) == []
    assert rig.cs.status(1)[0] is St.SUSPENDED_EVSE


def test_card_goes_to_the_evse_where_a_car_waits():
    rig = Rig(2)
    rig.plug(2)
    rig.card("CARD1")
    rig.answer("CARD1")
    assert rig.cs.evse(2).transaction is not None
    assert rig.cs.evse(1).transaction is None
    assert rig.cs.status(1)[0] is St.AVAILABLE


def test_same_card_twice_while_waiting_for_the_car_reserves_one_evse():
    rig = Rig(2)
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1")),
                                 rig.status_changed(St.PREPARING)]
    assert rig.card("CARD1") == []
    assert rig.card("card1") == []  # identifiers match ignoring case
    assert rig.cs.evse(2).pending is None
    rig.answer("CARD1")
    rig.plug(1)
    assert rig.cs.evse(1).transaction.token == tok("CARD1")
    assert rig.cs.status(2)[0] is St.AVAILABLE


def test_transaction_references_are_distinct_and_can_be_found():
    rig = Rig(2)
    tx1 = rig.charging("A", 1)
    tx2 = rig.charging("B", 2)
    assert tx1.ref != tx2.ref
    assert rig.cs.find_transaction(tx1.ref) is tx1
    assert rig.cs.find_transaction(tx2.ref) is tx2
    assert rig.cs.find_transaction("no-such") is None
    assert rig.cs.transactions() == [tx1, tx2]


def test_references_come_from_the_shell():
    refs = iter(["6f1c-first", "6f1c-second"])
    rig = Rig(station=ChargingStation(1, CoreSettings(), new_ref=lambda: next(refs)))
    assert rig.charging().ref == "6f1c-first"
    rig.card("CARD1")
    rig.unplug()
    assert rig.charging().ref == "6f1c-second"


# ---- stopping a session ------------------------------------------------------------------


def test_stop_by_the_same_card():
    rig = Rig()
    rig.meter(100.0)
    tx = rig.charging()
    rig.meter(2600.0)
    rig.later(3600)
    actions = rig.card("card1")  # the same card, read in another case
    assert shape(actions)[:3] == [*power_off(), (ENDED, Trigger.STOP_AUTHORIZED)]
    end = events(actions)[0]
    assert ended(end) == (StopReason.LOCAL, T0 + 3600, 2600.0, tok("card1"))
    assert end.ref == tx.ref and end.meter_start_wh == 100.0
    assert actions[3] == rig.status_changed(St.FINISHING)
    assert rig.cs.transactions() == []
    assert not of(RequestAuthorization, actions)


def test_another_card_does_not_stop_a_session_without_a_group():
    rig = Rig()
    rig.charging("CARD1")
    assert rig.card("OTHER") == []  # no free EVSE, no group to ask about
    assert rig.cs.status(1)[0] is St.CHARGING


def test_stop_by_unplug():
    rig = Rig()
    rig.meter(10.0)
    tx = rig.charging()
    rig.meter(510.0)
    rig.later(100)
    actions = rig.unplug()
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.EV_COMMUNICATION_LOST),
        UnlockConnector(1, 1),
        rig.status_changed(St.AVAILABLE),
    ]
    end = events(actions)[0]
    assert ended(end) == (StopReason.EV_DISCONNECTED, T0 + 100, 510.0, None)
    assert (end.ref, end.charging_state) == (tx.ref, ChargingState.IDLE)


def test_unplug_without_unlock_on_disconnect():
    rig = Rig(unlock_on_ev_disconnect=False)
    rig.charging()
    actions = rig.unplug()
    assert kinds(actions) == [SetContactor, SetCurrentLimit,
                              (ENDED, Trigger.EV_COMMUNICATION_LOST), StatusChanged]


def test_unplug_keeps_the_session_when_stop_on_ev_disconnect_is_off():
    rig = Rig(stop_on_ev_disconnect=False)
    tx = rig.charging()
    actions = rig.unplug()
    assert shape(actions) == [*power_off(), (UPDATED, Trigger.EV_COMMUNICATION_LOST),
                              UnlockConnector(1, 1), rig.status_changed(St.SUSPENDED_EVSE)]
    assert events(actions)[0].charging_state is ChargingState.IDLE
    assert rig.cs.evse(1).transaction is tx
    rig.later(20)
    actions = rig.plug()
    assert shape(actions) == [
        SetCurrentLimit(1, 32.0),
        (UPDATED, Trigger.CABLE_PLUGGED_IN),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        STATE,
        rig.status_changed(St.CHARGING),
    ]
    assert rig.cs.evse(1).transaction is tx


def test_remote_stop():
    rig = Rig()
    tx = rig.charging()
    assert rig.confirm(tx.ref) == [AuthCacheUpdated(tok("CARD1"), ACCEPTED)]
    assert rig.call("remote_stop", "unknown") == (False, [])
    ok, actions = rig.call("remote_stop", tx.ref)
    assert ok is True
    assert shape(actions)[:3] == [*power_off(), (ENDED, Trigger.REMOTE_STOP)]
    assert ended(events(actions)[0]) == (StopReason.REMOTE, rig.now, 0.0, None)
    assert actions[3] == rig.status_changed(St.FINISHING)


def test_stop_by_fault_and_recovery():
    rig = Rig()
    tx = rig.charging()
    rig.later(5)
    actions = rig.call("fault_raised", 1, Fault.OVER_CURRENT, "I>40A")[1]
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.ABNORMAL_CONDITION),
        rig.status_changed(St.FAULTED, fault=Fault.OVER_CURRENT, info="I>40A"),
    ]
    end = events(actions)[0]
    assert ended(end) == (StopReason.FAULT, T0 + 5, 0.0, None)
    assert (end.ref, end.cause) == (tx.ref, Fault.OVER_CURRENT)
    # Nothing starts on a faulted EVSE.
    assert rig.card("CARD2") == []
    assert rig.call("remote_start", tok("CARD2"), 1)[0].accepted is False
    rig.later(5)
    assert rig.call("fault_cleared", 1, Fault.OVER_CURRENT)[1] == [
        rig.status_changed(St.FINISHING)]
    rig.unplug()
    assert rig.charging("CARD2").ref != tx.ref


def test_emergency_stop_at_station_level_stops_every_evse():
    rig = Rig(2)
    tx1 = rig.charging("A", 1)
    tx2 = rig.charging("B", 2)
    _, actions = rig.call("fault_raised", 0, Fault.EMERGENCY_STOP, "button")
    assert [(e.ref, e.reason, e.cause) for e in events(actions, ENDED)] == [
        (tx1.ref, StopReason.EMERGENCY_STOP, Fault.EMERGENCY_STOP),
        (tx2.ref, StopReason.EMERGENCY_STOP, Fault.EMERGENCY_STOP)]
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
    off_then_end = [SetContactor, SetCurrentLimit, (ENDED, Trigger.RESET_COMMAND)]
    assert [k for k in kinds(actions) if k is not StatusChanged] == [
        *off_then_end, *off_then_end, ResetNow]
    assert [(e.ref, *ended(e)) for e in events(actions)] == [
        (tx1.ref, StopReason.HARD_RESET, T0 + 9, 10.0, None),
        (tx2.ref, StopReason.HARD_RESET, T0 + 9, 20.0, None),
    ]
    assert of(ResetNow, actions) == [ResetNow(True)]


def test_soft_reset():
    rig = Rig()
    tx = rig.charging()
    _, actions = rig.call("reset", False)
    assert only_end(actions).reason is StopReason.SOFT_RESET
    assert only_end(actions).ref == tx.ref
    assert actions.index(of(ResetNow, actions)[0]) > actions.index(only_end(actions))


def test_reset_without_sessions_is_immediate():
    assert Rig().call("reset", False) == (Availability.ACCEPTED, [ResetNow(False)])
    assert Rig().call("reset", True) == (Availability.ACCEPTED, [ResetNow(True)])


def test_unlock_stops_the_session():
    rig = Rig()
    tx = rig.charging()
    _, actions = rig.call("unlock", 1)
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.UNLOCK_COMMAND),
        rig.status_changed(St.FINISHING),
    ]
    assert (events(actions)[0].ref, events(actions)[0].reason) == (tx.ref,
                                                                   StopReason.UNLOCK_COMMAND)


def test_unlock_without_session_leaves_the_lock_to_the_caller():
    # The adapter drives the lock itself, to report whether it opened: the core must not
    # pulse it a second time.
    assert Rig().call("unlock", 1) == (None, [])


def test_invalid_id_in_start_confirmation_deauthorizes():
    rig = Rig()
    tx = rig.charging()
    actions = rig.confirm(tx.ref, AuthStatus.BLOCKED)
    assert shape(actions) == [
        AuthCacheUpdated(tok("CARD1"), AuthInfo(AuthStatus.BLOCKED)),
        *power_off(),
        (ENDED, Trigger.DEAUTHORIZED),
        rig.status_changed(St.FINISHING),
    ]
    assert ended(events(actions)[0]) == (StopReason.DE_AUTHORIZED, rig.now, 0.0, None)


def test_invalid_id_suspends_when_stop_on_invalid_id_is_off():
    rig = Rig(stop_on_invalid_id=False)
    tx = rig.charging()
    actions = rig.confirm(tx.ref, AuthStatus.EXPIRED)
    assert shape(actions) == [
        AuthCacheUpdated(tok("CARD1"), AuthInfo(AuthStatus.EXPIRED)),
        *power_off(),
        (UPDATED, Trigger.DEAUTHORIZED),
        rig.status_changed(St.SUSPENDED_EVSE),
    ]
    assert events(actions)[0].charging_state is ChargingState.SUSPENDED_EVSE
    assert tx.suspended_by_csms is True
    assert rig.cs.evse(1).transaction is tx
    # The vehicle asking again gets nothing.
    assert rig.pilot(C) == []
    assert rig.pilot(B) == []
    # The driver can still end it.
    stop = only_end(rig.card("CARD1"))
    assert (stop.reason, stop.stopped_by) == (StopReason.LOCAL, tok("CARD1"))


# ---- remote start ------------------------------------------------------------------------


def test_remote_start_authorized_first():
    rig = Rig()
    result, actions = rig.call("remote_start", tok("REMOTE1"), 1, remote_start_id=77)
    assert (result.accepted, result.ref) == (True, None)
    assert actions == [RequestAuthorization(tok("REMOTE1")), rig.status_changed(St.PREPARING)]
    assert kinds(rig.answer("REMOTE1")) == [AuthCacheUpdated]
    actions = rig.plug()
    tx = rig.cs.evse(1).transaction
    assert shape(actions)[0] == (STARTED, Trigger.CABLE_PLUGGED_IN)
    assert (tx.token, tx.remote_start_id) == (tok("REMOTE1"), 77)
    assert events(actions)[0].remote_start_id == 77


def test_remote_start_rejected_by_authorize():
    rig = Rig()
    rig.call("remote_start", tok("REMOTE1"), 1)
    assert rig.answer("REMOTE1", AuthStatus.INVALID)[-1] == rig.status_changed(St.AVAILABLE)


def test_remote_start_without_authorize_starts_at_once_when_plugged():
    rig = Rig(authorize_remote_start=False)
    rig.plug()
    result, actions = rig.call("remote_start", tok("REMOTE1"), None)
    tx = rig.cs.evse(1).transaction
    assert result.accepted is True
    assert shape(actions) == [
        (STARTED, Trigger.REMOTE_START),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        STATE,
        rig.status_changed(St.CHARGING),
    ]
    assert tx.token == tok("REMOTE1")


def test_remote_start_without_authorize_waits_for_the_car_and_times_out():
    rig = Rig(authorize_remote_start=False, connection_timeout=30.0)
    result, actions = rig.call("remote_start", tok("REMOTE1"), 1)
    assert result.accepted and actions == [rig.status_changed(St.PREPARING)]
    rig.later(30)
    assert rig.tick() == [rig.status_changed(St.AVAILABLE)]


def test_remote_start_refused():
    rig = Rig(2)
    rig.charging("A", 1)
    assert rig.call("remote_start", tok("R"), 1)[0].accepted is False  # occupied
    assert rig.call("remote_start", tok("R"), 3)[0].accepted is False  # unknown EVSE
    assert rig.call("remote_start", tok("R"), 0)[0].accepted is False
    assert rig.call("remote_start", tok("R"), 2)[0].accepted is True
    result, actions = rig.call("remote_start", tok("S"), None)  # nothing free any more
    assert (result.accepted, actions) == (False, [])


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
    assert not events(rig.log)


def test_plugged_car_waiting_for_a_card_has_no_timeout():
    rig = Rig(connection_timeout=60.0)
    rig.plug()
    rig.later(3600)
    assert rig.tick() == []
    assert rig.cs.status(1)[0] is St.PREPARING


# ---- offline authorization and the cache -------------------------------------------------


def cached_rig(entry: AuthInfo, **settings) -> Rig:
    station = ChargingStation(1, CoreSettings(**settings), auth_cache=[(tok("CARD1"), entry)])
    return Rig(station=station, online=False)


def test_offline_cache_hit_starts_without_asking():
    rig = cached_rig(info(AuthStatus.ACCEPTED, "G", T0 + 10))
    rig.plug()
    actions = rig.card("CARD1")
    assert kinds(actions)[:2] == [(STARTED, Trigger.AUTHORIZED), SetCurrentLimit]
    assert events(actions)[0].offline is True
    assert rig.cs.evse(1).transaction.group == tok("G")
    assert not of(RequestAuthorization, rig.log)


def test_offline_expired_cache_entry_is_refused():
    rig = cached_rig(info(AuthStatus.ACCEPTED, None, T0 - 1), allow_offline_unknown_id=True)
    assert rig.card("CARD1") == []
    assert rig.cs.evse(1).pending is None
    rig.plug()
    assert rig.cs.transactions() == []


def test_offline_blocked_cache_entry_is_refused_even_if_unknown_ids_are_allowed():
    rig = cached_rig(AuthInfo(AuthStatus.BLOCKED), allow_offline_unknown_id=True)
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


def test_offline_cache_not_used_when_local_authorize_offline_is_off():
    rig = cached_rig(ACCEPTED, local_authorize_offline=False)
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


def test_cache_entry_older_than_its_lifetime_is_not_trusted_offline():
    station = ChargingStation(1, CoreSettings(auth_cache_lifetime=3600.0))
    rig = Rig(station=station)
    rig.learn("CARD1")
    rig.offline()
    rig.plug()
    rig.later(3601)
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


@pytest.mark.parametrize("allowed", [True, False])
def test_offline_unknown_id(allowed):
    rig = Rig(online=False, allow_offline_unknown_id=allowed)
    rig.plug()
    actions = rig.card("STRANGER")
    assert not of(RequestAuthorization, actions)
    if allowed:
        assert rig.cs.evse(1).transaction.token == tok("STRANGER")
        assert rig.cs.status(1)[0] is St.CHARGING
    else:
        assert actions == []
        assert rig.cs.status(1)[0] is St.PREPARING


def test_connection_lost_during_authorize_decides_offline():
    station = ChargingStation(1, CoreSettings(), auth_cache=[(tok("CARD1"), ACCEPTED)])
    rig = Rig(station=station)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1"))]
    actions = rig.offline()
    assert kinds(actions)[:2] == [(STARTED, Trigger.AUTHORIZED), SetCurrentLimit]
    # The late answer (or its failure) does not start a second session.
    assert rig.answer("CARD1", None) == []
    assert len(events(rig.log, STARTED)) == 1


def test_connection_lost_during_authorize_of_unknown_card_refuses():
    rig = Rig()
    rig.card("STRANGER")
    assert rig.offline() == [rig.status_changed(St.AVAILABLE)]
    assert rig.cs.evse(1).pending is None


def test_no_answer_to_authorize_decides_offline():
    rig = Rig(allow_offline_unknown_id=True)
    rig.plug()
    rig.card("STRANGER")
    assert kinds(rig.answer("STRANGER", None))[:1] == [(STARTED, Trigger.AUTHORIZED)]


def test_local_pre_authorize_uses_the_cache_online():
    station = ChargingStation(1, CoreSettings(local_pre_authorize=True),
                              auth_cache=[(tok("CARD1"), ACCEPTED),
                                          (tok("OLD"), info(expiry=T0 - 1))])
    rig = Rig(station=station)
    rig.plug()
    actions = rig.card("CARD1")
    assert kinds(actions)[:2] == [(STARTED, Trigger.AUTHORIZED), SetCurrentLimit]
    rig.card("CARD1")
    rig.unplug()
    # An expired entry still goes to the CSMS.
    assert rig.card("OLD") == [RequestAuthorization(tok("OLD")),
                               rig.status_changed(St.PREPARING)]


def test_without_local_pre_authorize_the_csms_is_asked_even_for_cached_cards():
    station = ChargingStation(1, CoreSettings(), auth_cache=[(tok("CARD1"), ACCEPTED)])
    rig = Rig(station=station)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1"))]


def test_cache_is_bounded_and_evicts_least_recently_used():
    rig = Rig(auth_cache_size=2, online=False)
    assert rig.learn("A") == [AuthCacheUpdated(tok("A"), ACCEPTED)]
    assert rig.learn("B") == [AuthCacheUpdated(tok("B"), ACCEPTED)]
    rig.card("A")  # using A makes B the least recently used
    assert rig.learn("C") == [AuthCacheUpdated(tok("B"), None),
                              AuthCacheUpdated(tok("C"), ACCEPTED)]
    assert len(rig.cs.cache) == 2
    assert rig.cs.cache.get(tok("B")) is None
    # Updating an entry that is present evicts nothing.
    blocked = AuthInfo(AuthStatus.BLOCKED)
    assert rig.learn("C", AuthStatus.BLOCKED) == [AuthCacheUpdated(tok("C"), blocked)]
    assert rig.learn("D") == [AuthCacheUpdated(tok("A"), None),
                              AuthCacheUpdated(tok("D"), ACCEPTED)]


def test_cache_loaded_beyond_capacity_keeps_the_newest():
    station = ChargingStation(1, CoreSettings(auth_cache_size=1),
                              auth_cache=[(tok("OLD"), ACCEPTED), (tok("NEW"), ACCEPTED)])
    assert len(station.cache) == 1
    assert station.cache.get(tok("NEW")) == ACCEPTED


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
                              auth_cache=[(tok("CARD1"), ACCEPTED)])
    rig = Rig(station=station, online=False)
    assert rig.learn("CARD2") == []
    rig.plug()
    assert rig.card("CARD1") == []
    assert rig.cs.transactions() == []


def test_tokens_of_different_types_are_different_identifiers():
    from cpagent.core.model import TokenType

    station = ChargingStation(1, CoreSettings(), auth_cache=[
        (IdToken("1234", TokenType.KEY_CODE), ACCEPTED)])
    rig = Rig(station=station, online=False)
    rig.plug()
    rig.cs.card_presented(IdToken("1234", TokenType.ISO14443), None, rig.now)
    assert rig.take() == []  # a card with the number of a key code is not that key code
    rig.cs.card_presented(IdToken("1234"), None, rig.now)  # a version that gives no type
    assert kinds(rig.take())[0] == (STARTED, Trigger.AUTHORIZED)


def test_local_list_entry_valid_only_on_some_evses():
    station = ChargingStation(2, CoreSettings(), local_list=[
        (tok("CARD1"), AuthInfo(AuthStatus.ACCEPTED, evse_ids=(2,)))])
    rig = Rig(station=station, online=False)
    rig.plug(1)
    assert rig.card("CARD1", 1) == []
    rig.plug(2)
    assert kinds(rig.card("CARD1", 2))[0] == (STARTED, Trigger.AUTHORIZED)


# ---- groups ------------------------------------------------------------------------------


def test_card_of_the_same_group_stops_the_session_via_the_cache():
    rig = Rig()
    tx = rig.charging("CARD1", parent="FLEET")
    rig.learn("CARD2", parent="FLEET")
    rig.learn("CARD3", parent="OTHERS")
    assert rig.card("CARD3") == [RequestAuthorization(tok("CARD3"))]  # not the group: ask
    assert kinds(rig.answer("CARD3", parent="OTHERS")) == [AuthCacheUpdated]
    assert rig.cs.evse(1).transaction is tx
    actions = rig.card("CARD2")
    assert shape(actions)[:3] == [*power_off(), (ENDED, Trigger.STOP_AUTHORIZED)]
    assert ended(events(actions)[0]) == (StopReason.LOCAL, rig.now, 0.0, tok("CARD2"))
    assert not of(RequestAuthorization, actions)


def test_card_of_the_same_group_stops_the_session_online():
    rig = Rig()
    rig.charging("CARD1", parent="FLEET")
    assert rig.card("CARD2") == [RequestAuthorization(tok("CARD2"))]
    actions = rig.answer("CARD2", parent="FLEET")
    assert shape(actions) == [
        AuthCacheUpdated(tok("CARD2"), AuthInfo(AuthStatus.ACCEPTED, tok("FLEET"))),
        *power_off(),
        (ENDED, Trigger.STOP_AUTHORIZED),
        rig.status_changed(St.FINISHING),
    ]
    assert ended(events(actions)[0]) == (StopReason.LOCAL, rig.now, 0.0, tok("CARD2"))


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
    tx = rig.cs.evse(1).transaction
    assert tx.group is None
    rig.cs.connection_changed(True, rig.now)
    rig.confirm(tx.ref, parent="FLEET")
    assert tx.group == tok("FLEET")
    rig.learn("CARD2", parent="FLEET")
    assert only_end(rig.card("CARD2")).stopped_by == tok("CARD2")


# ---- availability ------------------------------------------------------------------------


def test_availability_restored_from_the_store_is_not_announced_again():
    station = ChargingStation(2, CoreSettings(), operative={(2, 0): False})
    assert station.status(1) == (St.AVAILABLE, None, "")
    assert station.status(2) == (St.UNAVAILABLE, None, "")
    assert station.drain() == []
    station = ChargingStation(2, CoreSettings(), operative={(0, 0): False})
    assert [station.status(e)[0] for e in (0, 1, 2)] == [St.UNAVAILABLE] * 3
    station = ChargingStation(2, CoreSettings(), operative={(1, 1): False})
    assert [station.status(e)[0] for e in (1, 2)] == [St.UNAVAILABLE, St.AVAILABLE]


def test_evse_inoperative_and_back():
    rig = Rig(2)
    result, actions = rig.call("change_availability", 1, False)
    assert result is Availability.ACCEPTED
    assert actions == [AvailabilityChanged(1, 0, False), rig.status_changed(St.UNAVAILABLE)]
    assert rig.plug(1) == [rig.status_changed(St.UNAVAILABLE, vehicle=True)]
    assert rig.card("CARD1", 1) == []  # unavailable: the card is for EVSE 1 only
    assert rig.call("remote_start", tok("R"), 1)[0].accepted is False
    # The same request again changes nothing.
    assert rig.call("change_availability", 1, False) == (Availability.ACCEPTED, [])
    result, actions = rig.call("change_availability", 1, True)
    assert result is Availability.ACCEPTED
    assert actions == [AvailabilityChanged(1, 0, True), rig.status_changed(St.PREPARING)]


def test_connector_inoperative_and_back():
    rig = Rig(2)
    result, actions = rig.call("change_availability", 1, False, connector_id=1)
    assert result is Availability.ACCEPTED
    assert actions == [AvailabilityChanged(1, 1, False), rig.status_changed(St.UNAVAILABLE)]
    assert rig.card("CARD1", 1) == []
    result, actions = rig.call("change_availability", 1, True, connector_id=1)
    assert actions == [AvailabilityChanged(1, 1, True), rig.status_changed(St.AVAILABLE)]


def test_card_then_inoperative_drops_the_waiting_session():
    rig = Rig()
    rig.card("CARD1")
    rig.answer("CARD1")
    rig.call("change_availability", 1, False)
    rig.call("change_availability", 1, True)
    assert rig.plug() == [rig.status_changed(St.PREPARING)]


def test_evse_inoperative_during_a_session_is_scheduled():
    rig = Rig()
    tx = rig.charging()
    # Stored at once, so a restart that ends the session still applies it.
    assert rig.call("change_availability", 1, False) == (
        Availability.SCHEDULED, [AvailabilityChanged(1, 0, False)])
    # The session goes on, pauses and resumes as usual.
    assert shape(rig.pilot(B)) == [SetContactor(1, False), STATE,
                                   rig.status_changed(St.SUSPENDED_EV)]
    assert shape(rig.pilot(C)) == [SetContactor(1, True), STATE,
                                   rig.status_changed(St.CHARGING)]
    actions = rig.card("CARD1")
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.STOP_AUTHORIZED),
        AvailabilityChanged(1, 0, False),
        rig.status_changed(St.UNAVAILABLE),
    ]
    assert events(actions)[0].ref == tx.ref


def test_operative_cancels_a_scheduled_inoperative():
    rig = Rig()
    rig.charging()
    rig.call("change_availability", 1, False)
    assert rig.call("change_availability", 1, True) == (
        Availability.ACCEPTED, [AvailabilityChanged(1, 0, True)])
    actions = rig.card("CARD1")
    assert not of(AvailabilityChanged, actions)
    assert actions[-1] == rig.status_changed(St.FINISHING)


def test_station_inoperative_and_back():
    rig = Rig(2)
    result, actions = rig.call("change_availability", 0, False)
    assert result is Availability.ACCEPTED
    assert actions == [
        AvailabilityChanged(0, 0, False),
        AvailabilityChanged(1, 0, False),
        AvailabilityChanged(2, 0, False),
        rig.status_changed(St.UNAVAILABLE, 0),
        rig.status_changed(St.UNAVAILABLE, 1),
        rig.status_changed(St.UNAVAILABLE, 2),
    ]
    assert rig.card("CARD1") == []
    result, actions = rig.call("change_availability", 0, True)
    assert result is Availability.ACCEPTED
    assert actions == [
        AvailabilityChanged(0, 0, True),
        AvailabilityChanged(1, 0, True),
        AvailabilityChanged(2, 0, True),
        rig.status_changed(St.AVAILABLE, 0),
        rig.status_changed(St.AVAILABLE, 1),
        rig.status_changed(St.AVAILABLE, 2),
    ]


def test_station_inoperative_during_a_session_is_scheduled_for_that_evse():
    rig = Rig(2)
    tx = rig.charging("A", 1)
    result, actions = rig.call("change_availability", 0, False)
    assert result is Availability.SCHEDULED
    assert AvailabilityChanged(2, 0, False) in actions
    assert AvailabilityChanged(1, 0, False) in actions  # scheduled, and stored already
    assert rig.cs.status(2)[0] is St.UNAVAILABLE
    assert rig.cs.status(1)[0] is St.CHARGING
    # The running session keeps its power until it ends.
    assert shape(rig.pilot(B, 1)) == [SetContactor(1, False), STATE,
                                      rig.status_changed(St.SUSPENDED_EV)]
    assert shape(rig.pilot(C, 1)) == [SetContactor(1, True), STATE,
                                      rig.status_changed(St.CHARGING)]
    actions = rig.card("A")
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.STOP_AUTHORIZED),
        AvailabilityChanged(1, 0, False),
        rig.status_changed(St.UNAVAILABLE),
    ]
    assert events(actions)[0].ref == tx.ref


# ---- metering ----------------------------------------------------------------------------


def test_meter_start_and_stop_with_begin_and_end_samples():
    rig = Rig(update_interval=0)
    reading_start = MeterReading(energy_wh=1000.0, power_w=0.0)
    rig.cs.meter_sample(1, reading_start)
    tx = rig.charging()
    assert tx.meter_start_wh == 1000.0
    assert tx.history == [Sample(T0, ReadingContext.TRANSACTION_BEGIN, reading_start)]
    rig.later(1800)
    reading_end = MeterReading(energy_wh=6500.5, power_w=11000.0)
    rig.cs.meter_sample(1, reading_end)
    assert rig.tick() == []  # no periodic samples configured
    stop = only_end(rig.card("CARD1"))
    assert stop.meter_stop_wh == 6500.5
    assert stop.samples == (
        Sample(T0, ReadingContext.TRANSACTION_BEGIN, reading_start),
        # What the session was offered up to its end, not the zero the stop sets.
        Sample(T0 + 1800, ReadingContext.TRANSACTION_END, reading_end, offered_amps=32.0),
    )


def test_no_meter_reading_means_zero_and_no_samples():
    rig = Rig()
    tx = rig.charging()
    assert (tx.meter_start_wh, tx.history) == (0.0, [])
    end = only_end(rig.unplug())
    assert (end.meter_stop_wh, end.samples) == (0.0, ())


def test_periodic_samples():
    rig = Rig(update_interval=60.0, history_interval=60.0, aligned_interval=0)
    rig.meter(100.0)
    tx = rig.charging()
    rig.meter(150.0)
    rig.later(59.5)
    assert rig.tick() == []
    rig.later(0.5)
    sample = Sample(T0 + 60, ReadingContext.PERIODIC, MeterReading(150.0), 32.0)
    actions = rig.tick()
    assert shape(actions) == [(UPDATED, Trigger.METER_VALUE_PERIODIC)]
    assert (actions[0].ref, actions[0].samples) == (tx.ref, (sample,))
    assert rig.tick() == []  # once per interval, however often the clock ticks
    rig.later(60)
    assert [a.samples[0].timestamp for a in rig.tick()] == [T0 + 120]
    assert [s.context for s in tx.history] == [ReadingContext.TRANSACTION_BEGIN,
                                               ReadingContext.PERIODIC, ReadingContext.PERIODIC]


def test_history_keeps_its_own_interval():
    rig = Rig(update_interval=60.0, history_interval=300.0, aligned_interval=0)
    rig.meter(100.0)
    tx = rig.charging()
    for _ in range(10):
        rig.later(60)
        rig.tick()
    assert len(events(rig.log, UPDATED)) == 11  # the charging state, then 10 readings
    assert [s.timestamp for s in tx.history] == [T0, T0 + 300, T0 + 600]


def test_periodic_samples_catch_up_without_flooding():
    rig = Rig(update_interval=60.0, aligned_interval=0)
    rig.meter(100.0)
    tx = rig.charging()
    rig.later(1000)  # 16 intervals missed
    actions = rig.tick()
    assert len(actions) == 1
    assert actions[0].samples[0].timestamp == T0 + 1000
    assert tx.next_update_at == T0 + 1020
    rig.later(19.5)
    assert rig.tick() == []
    rig.later(0.5)
    assert len(rig.tick()) == 1
    assert tx.next_update_at == T0 + 1080


def test_periodic_samples_stop_with_the_session_and_none_when_disabled():
    rig = Rig(update_interval=60.0, aligned_interval=0)
    rig.meter(100.0)
    rig.charging()
    rig.card("CARD1")
    rig.later(600)
    assert rig.tick() == []
    rig = Rig(update_interval=0, aligned_interval=0)
    rig.meter(100.0)
    rig.charging()
    rig.later(3600)
    assert rig.tick() == []


def test_no_periodic_updates_while_storage_is_low_but_the_end_keeps_its_history():
    rig = Rig(update_interval=60.0, history_interval=60.0, aligned_interval=0)
    rig.meter(100.0)
    rig.charging()
    rig.cs.storage_low(True)
    rig.later(60)
    assert rig.tick() == []
    end = only_end(rig.card("CARD1"))
    assert [s.context for s in end.samples] == [
        ReadingContext.TRANSACTION_BEGIN, ReadingContext.PERIODIC,
        ReadingContext.TRANSACTION_END]


def test_no_clock_aligned_samples_without_a_trusted_clock():
    rig = Rig(aligned_interval=900.0, update_interval=0)
    rig.meter(5.0)
    for _ in range(2000):
        rig.later(1)
        assert rig.tick() == []


def test_clock_aligned_samples_land_on_the_boundaries():
    rig = Rig(2, aligned_interval=900.0, update_interval=0)
    reading = MeterReading(energy_wh=5.0)
    rig.cs.meter_sample(1, reading)  # EVSE 2 has no meter reading: no sample for it
    rig.cs.clock_synchronised(rig.now)
    first = math.ceil(T0 / 900) * 900
    reports = []
    while rig.now < first + 1900:
        rig.later(1)
        reports += rig.tick()
    assert reports == [
        MeterValuesReport(1, Sample(first, ReadingContext.CLOCK, reading)),
        MeterValuesReport(1, Sample(first + 900, ReadingContext.CLOCK, reading)),
        MeterValuesReport(1, Sample(first + 1800, ReadingContext.CLOCK, reading)),
    ]
    assert all(r.sample.timestamp % 900 == 0 for r in reports)


def test_clock_aligned_sample_belongs_to_the_running_session():
    rig = Rig(aligned_interval=900.0, aligned_history_interval=900.0, update_interval=0)
    rig.meter(5.0)
    tx = rig.charging()
    rig.cs.clock_synchronised(rig.now)
    boundary = math.ceil(T0 / 900) * 900
    rig.now = boundary - 0.5
    assert rig.tick() == []
    rig.now = boundary + 0.3
    sample = Sample(boundary, ReadingContext.CLOCK, MeterReading(5.0), offered_amps=32.0)
    actions = rig.tick()
    assert shape(actions) == [(UPDATED, Trigger.METER_VALUE_CLOCK)]
    assert actions[0].samples == (sample,)
    assert tx.history[-1] == sample


def test_clock_aligned_reports_can_be_kept_out_of_transactions():
    rig = Rig(aligned_interval=900.0, update_interval=0, aligned_during_transaction=False)
    rig.meter(5.0)
    rig.charging()
    rig.cs.clock_synchronised(rig.now)
    rig.now = math.ceil(T0 / 900) * 900 + 1
    assert rig.tick() == []


def test_clock_aligned_first_boundary_after_synchronisation_is_not_missed():
    rig = Rig(aligned_interval=900.0, update_interval=0)
    rig.meter(5.0)
    boundary = math.ceil(T0 / 900) * 900
    rig.now = boundary - 0.2
    rig.cs.clock_synchronised(rig.now)
    rig.now = boundary + 0.8  # the first tick after the sync is already past the boundary
    assert [a.sample.timestamp for a in rig.tick()] == [boundary]


def test_clock_aligned_catch_up_after_a_gap_reports_once_at_the_latest_boundary():
    rig = Rig(aligned_interval=900.0, update_interval=0)
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
    rig = Rig(aligned_interval=900.0, update_interval=0)
    rig.meter(5.0)
    rig.cs.clock_synchronised(rig.now)
    rig.later(1)
    assert rig.tick() == []
    rig.cs.settings.aligned_interval = 60.0  # ChangeConfiguration
    rig.later(1)
    assert rig.tick() == []
    boundary = math.ceil(rig.now / 60) * 60
    rig.now = boundary
    assert [a.sample.timestamp for a in rig.tick()] == [boundary]
    rig.cs.settings.aligned_interval = 0.0
    rig.now = boundary + 3600
    assert rig.tick() == []
    rig.cs.settings.aligned_interval = 900.0
    rig.later(1)
    assert rig.tick() == []
    rig.now = math.ceil(rig.now / 900) * 900
    assert [a.sample.timestamp for a in rig.tick()] == [rig.now]


def test_triggered_readings():
    rig = Rig(2, update_interval=0, aligned_interval=0)
    rig.meter(5.0, 1)
    rig.meter(7.0, 2)
    tx = rig.charging("A", 2)
    _, actions = rig.call("trigger_meter_values", None)
    assert [(a.evse_id, a.sample.context) for a in actions] == [
        (1, ReadingContext.TRIGGER), (2, ReadingContext.TRIGGER)]
    _, actions = rig.call("trigger_meter_values", None, True)
    assert shape(actions) == [(UPDATED, Trigger.TRIGGER)]
    assert actions[0].ref == tx.ref


# ---- free vend ---------------------------------------------------------------------------


@pytest.mark.parametrize("online", [True, False])
def test_free_vend_starts_on_plug(online):
    rig = Rig(online=online, free_vend_token=tok("FREE"))
    actions = rig.plug()
    tx = rig.cs.evse(1).transaction
    assert shape(actions) == [
        (STARTED, Trigger.CABLE_PLUGGED_IN),
        SetCurrentLimit(1, 32.0),
        rig.status_changed(St.SUSPENDED_EV),
        SetContactor(1, True),
        STATE,
        rig.status_changed(St.CHARGING),
    ]
    assert tx.token == tok("FREE")
    actions = rig.unplug()
    assert only_end(actions).reason is StopReason.EV_DISCONNECTED
    assert not of(RequestAuthorization, rig.log)


# ---- restoring sessions cut short --------------------------------------------------------


def test_restore_interrupted():
    rig = Rig(2)
    rig.meter(900.0, 1)
    cut1 = Transaction("r-7", 1, 1, T0 - 3600, 500.0, tok("CARD1"), authorized=True,
                       next_seq=4)
    cut2 = Transaction("r-4", 2, 1, T0 - 600, 42.0, tok("CARD2"), authorized=True, next_seq=1)
    _, actions = rig.call("restore_interrupted", [cut1, cut2], StopReason.POWER_LOSS)
    assert [(e.ref, e.seq, *ended(e)) for e in events(actions)] == [
        ("r-7", 4, StopReason.POWER_LOSS, T0, 900.0, None),
        ("r-4", 1, StopReason.POWER_LOSS, T0, 42.0, None),  # no reading: no energy
    ]
    assert all(e.trigger is Trigger.ABNORMAL_CONDITION for e in events(actions))
    assert rig.cs.transactions() == []


def test_shutdown_ends_every_session_at_its_reading():
    rig = Rig(2)
    rig.meter(10.0, 1)
    rig.charging("A", 1)
    rig.meter(12.5, 1)
    rig.later(30)
    _, actions = rig.call("shutdown")
    assert ended(only_end(actions)) == (StopReason.REBOOT, T0 + 30, 12.5, None)
    assert not rig.cs.evse(1).contactor_closed


# ---- the control pilot's own errors ------------------------------------------------------


@pytest.mark.parametrize("error", [E, F])
def test_pilot_error_faults_the_evse_until_it_returns(error):
    rig = Rig()
    tx = rig.charging()
    actions = rig.pilot(error)
    assert shape(actions) == [
        *power_off(),
        (ENDED, Trigger.ABNORMAL_CONDITION),
        UnlockConnector(1, 1),
        rig.status_changed(St.FAULTED, fault=Fault.EV_COMMUNICATION_ERROR,
                           info=f"control pilot in state {error}"),
    ]
    end = events(actions)[0]
    assert (end.ref, end.reason, end.cause) == (tx.ref, StopReason.FAULT,
                                                Fault.EV_COMMUNICATION_ERROR)
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
    assert rig.cs.evse(1).transaction is tx and rig.cs.evse(1).contactor_closed
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
    assert rig.cs.evse(1).transaction is tx


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
    stopped = events(rig.card("CARD1"), ENDED)
    assert tx.meter_start_wh == 5000.0
    assert stopped[0].meter_stop_wh == 5000.0


def test_a_session_waits_for_a_meter_that_stopped_answering():
    rig = Rig()
    rig.cs.meter_sample(1, MeterReading(energy_wh=1_234_567.0))
    rig.cs.meter_failed(1)
    rig.plug()
    assert rig.card("CARD1") == [RequestAuthorization(tok("CARD1"))]
    rig.answer("CARD1")
    assert rig.cs.transactions() == []  # no meter start from a reading that may be old
    assert not rig.cs.evse(1).contactor_closed
    rig.cs.meter_sample(1, MeterReading(energy_wh=1_234_600.0), rig.now)
    started = events(rig.take(), STARTED)
    assert started and started[0].meter_start_wh == 1_234_600.0


def test_no_periodic_samples_from_a_stale_reading():
    rig = Rig(update_interval=10)
    rig.cs.meter_sample(1, MeterReading(energy_wh=100.0))
    rig.charging()
    rig.cs.meter_failed(1)
    rig.later(25)
    assert not events(rig.call("tick")[1])


def test_a_start_the_store_could_not_record_never_powers_the_evse():
    rig = Rig()
    tx = rig.charging()
    rig.cs.start_not_recorded(tx.ref, rig.now)
    actions = rig.cs.drain()  # not replayed: for the shell this session never existed
    assert actions[:2] == [SetContactor(1, False), SetCurrentLimit(1, 0.0)]
    assert not events(actions)
    assert rig.cs.transactions() == []
    assert rig.cs.status(1)[0] is St.PREPARING


def test_max_energy_on_invalid_id_lets_an_invalidated_session_finish_its_allowance():
    rig = Rig(stop_on_invalid_id=False, max_energy_on_invalid_id=500.0)
    rig.cs.meter_sample(1, MeterReading(energy_wh=1000.0))
    tx = rig.charging()
    rig.confirm(tx.ref, AuthStatus.INVALID)
    assert rig.cs.evse(1).contactor_closed  # within the allowance
    rig.cs.meter_sample(1, MeterReading(energy_wh=1499.0), rig.now)
    assert rig.take() == []
    rig.cs.meter_sample(1, MeterReading(energy_wh=1500.0), rig.now)
    actions = rig.take()
    assert SetContactor(1, False) in actions
    assert (UPDATED, Trigger.ENERGY_LIMIT_REACHED) in shape(actions)
    assert rig.cs.status(1)[0] is St.SUSPENDED_EVSE
    assert rig.cs.transactions() == [tx]  # suspended, not stopped


def test_deadlines_and_stamps_move_with_the_clock_when_the_time_becomes_known():
    rig = Rig(update_interval=60)
    rig.cs.meter_sample(1, MeterReading(energy_wh=10.0))
    tx = rig.charging()
    began, due = tx.started_at, tx.next_update_at
    jump = 2 * 3600.0  # the board ran two hours ahead (RTC on local time)
    rig.cs.clock_synchronised(rig.now - jump, -jump)
    rig.now -= jump
    assert tx.started_at == began - jump and tx.next_update_at == due - jump
    assert tx.history[0].timestamp == began - jump
    rig.later(61)
    assert events(rig.call("tick")[1])  # not two hours late


def test_no_new_session_while_a_reset_is_under_way():
    rig = Rig(2)
    rig.charging("A", 1)
    rig.call("reset", False)
    rig.plug(2)
    assert rig.card("B", 2) == []
    assert rig.call("remote_start", tok("C"), 2)[0].accepted is False
    assert rig.cs.transactions() == []


def test_reset_on_idle_waits_for_the_sessions_and_lets_none_begin():
    rig = Rig(2)
    tx = rig.charging("A", 1)
    assert rig.call("reset", False, on_idle=True) == (Availability.SCHEDULED, [])
    rig.plug(2)
    assert rig.card("B", 2) == []
    assert rig.cs.transactions() == [tx]
    actions = rig.card("A")
    assert only_end(actions).reason is StopReason.LOCAL  # it ended by itself
    assert actions.index(of(ResetNow, actions)[0]) > actions.index(only_end(actions))


def test_evse_reset():
    from cpagent.core.actions import ResetEvse

    rig = Rig(2)
    tx = rig.charging("A", 1)
    rig.charging("B", 2)
    _, actions = rig.call("reset", False, evse_id=1)
    assert only_end(actions).ref == tx.ref
    assert only_end(actions).trigger is Trigger.RESET_COMMAND
    assert of(ResetEvse, actions) == [ResetEvse(1)] and not of(ResetNow, actions)
    assert rig.cs.evse(2).contactor_closed  # the other EVSE charges on
    rig.unplug(1)
    assert rig.charging("C", 1)  # usable again once reset


def test_second_tap_while_finishing_then_unplug_is_available():
    """A card presented again on a Finishing connector belongs to the car still plugged in:
    when that car leaves, so does the waiting authorization."""
    rig = Rig()
    rig.charging("CARD1")
    rig.card("CARD1")  # stops the session: Finishing
    assert rig.cs.status(1)[0] is St.FINISHING
    assert rig.card("CARD2") == [RequestAuthorization(tok("CARD2"))]
    assert statuses(rig.unplug()) == [St.AVAILABLE]
    assert rig.cs.evse(1).pending is None
    # The late answer finds nothing to start.
    assert kinds(rig.answer("CARD2")) == [AuthCacheUpdated]
    assert rig.cs.status(1)[0] is St.AVAILABLE
