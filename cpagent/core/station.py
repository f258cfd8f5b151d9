"""The charging core: connectors, sessions, authorization and metering, free of I/O.

The shell feeds it what happened (a pilot change, a card, a CSMS answer, the passing of time)
together with the current time, and drains the actions it decided on. Every decision is made
here, so the same logic serves OCPP 1.6 and 2.0.1 and is tested with a fake clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

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
from hal.interfaces import Fault, MeterReading, PilotState


@dataclass
class _PendingAuth:
    id_tag: str
    since: float
    authorized: bool = False
    parent_id_tag: str | None = None
    remote: bool = False


class _Connector:
    def __init__(self, connector_id: int, operative: bool) -> None:
        self.id = connector_id
        self.pilot = PilotState.A
        self.operative = operative
        self.scheduled_operative: bool | None = None  # ChangeAvailability waiting for a session end
        self.faults: dict[Fault, str] = {}
        self.pending: _PendingAuth | None = None
        self.transaction: Transaction | None = None
        self.finishing = False
        self.contactor_closed = False
        self.offered_amps = 0.0
        self.reading: MeterReading | None = None
        self.reading_stale = False  # the meter stopped answering: its last reading is old
        self.reported: tuple[ConnectorStatus, Fault | None, str] | None = None


class AuthCache:
    """Id tags the CSMS told us about, most recently used last, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, IdTagInfo] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, id_tag: str) -> IdTagInfo | None:
        info = self._entries.get(id_tag)
        if info is not None:
            self._entries.move_to_end(id_tag)
        return info

    def put(self, id_tag: str, info: IdTagInfo) -> list[str]:
        """Store an entry; returns the tags evicted to make room."""
        self._entries[id_tag] = info
        self._entries.move_to_end(id_tag)
        evicted = []
        while len(self._entries) > self.capacity:
            evicted.append(self._entries.popitem(last=False)[0])
        return evicted

    def remove(self, id_tag: str) -> None:
        self._entries.pop(id_tag, None)

    def clear(self) -> None:
        self._entries.clear()


class ChargingStation:
    def __init__(
        self,
        connectors: int,
        settings: CoreSettings,
        *,
        next_transaction_id: int = 1,
        operative: dict[int, bool] | None = None,
        auth_cache: dict[str, IdTagInfo] | None = None,
        local_list: dict[str, IdTagInfo] | None = None,
    ) -> None:
        operative = operative or {}
        self.settings = settings
        self.station_operative = operative.get(0, True)
        self.connectors = {
            c: _Connector(c, operative.get(c, True)) for c in range(1, connectors + 1)
        }
        self.station_faults: dict[Fault, str] = {}
        self.online = False
        self.clock_trusted = False
        self.local_list: dict[str, IdTagInfo] = dict(local_list or {})
        self.cache = AuthCache(settings.auth_cache_size)
        for tag, info in (auth_cache or {}).items():
            self.cache.put(tag, info)
        self._next_tx_id = next_transaction_id
        self._next_aligned_at: float | None = None
        self._aligned_interval = 0.0  # the interval _next_aligned_at was computed with
        self._reset_pending: bool | None = None
        self._stop_requests: dict[str, int] = {}  # id tag being authorized -> connector to stop
        self._actions: list[Action] = []
        # What a CSMS learns at connection time is the current status, so only changes after
        # construction are emitted.
        self._station_reported = self._station_status()
        for c in self.connectors.values():
            c.reported = self.status(c.id)

    # ---- output ------------------------------------------------------------------------------

    def drain(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    # ---- queries -----------------------------------------------------------------------------

    def connector(self, connector_id: int) -> _Connector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise ValueError(f"no connector {connector_id}") from None

    def transactions(self) -> list[Transaction]:
        return [c.transaction for c in self.connectors.values() if c.transaction]

    def find_transaction(self, *, local_id: int | None = None, csms_id: int | None = None):
        for tx in self.transactions():
            if (local_id is not None and tx.local_id == local_id) or (
                csms_id is not None and tx.csms_id == csms_id
            ):
                return tx
        return None

    def status(self, connector_id: int) -> tuple[ConnectorStatus, Fault | None, str]:
        """The status a CSMS should see now: state, not history."""
        if connector_id == 0:
            return self._station_status()
        c = self.connector(connector_id)
        faults = {**self.station_faults, **c.faults}
        blocking = [f for f in faults if f.blocks_charging]
        shown = blocking[0] if blocking else next(iter(faults), None)
        info = faults.get(shown, "") if shown else ""
        if blocking:
            return ConnectorStatus.FAULTED, shown, info
        tx = c.transaction
        if tx is not None:
            if c.contactor_closed:
                status = ConnectorStatus.CHARGING
            elif c.offered_amps <= 0 or not c.pilot.vehicle_present:
                status = ConnectorStatus.SUSPENDED_EVSE
            else:
                status = ConnectorStatus.SUSPENDED_EV
        elif not (c.operative and self.station_operative):
            status = ConnectorStatus.UNAVAILABLE
        elif c.finishing:
            status = ConnectorStatus.FINISHING
        elif c.pilot.vehicle_present or c.pending is not None:
            status = ConnectorStatus.PREPARING
        else:
            status = ConnectorStatus.AVAILABLE
        return status, shown, info

    def _station_status(self) -> tuple[ConnectorStatus, Fault | None, str]:
        blocking = [f for f in self.station_faults if f.blocks_charging]
        shown = blocking[0] if blocking else next(iter(self.station_faults), None)
        info = self.station_faults.get(shown, "") if shown else ""
        if blocking:
            return ConnectorStatus.FAULTED, shown, info
        if not self.station_operative:
            return ConnectorStatus.UNAVAILABLE, shown, info
        return ConnectorStatus.AVAILABLE, shown, info

    def _publish(self, now: float) -> None:
        """Emit a StatusChanged for every connector whose visible status changed."""
        station = self._station_status()
        if station != self._station_reported:
            self._station_reported = station
            self._emit(StatusChanged(0, *station, timestamp=now))
        for c in self.connectors.values():
            current = self.status(c.id)
            if current != c.reported:
                c.reported = current
                self._emit(StatusChanged(c.id, *current, timestamp=now))

    def _blocked(self, c: _Connector) -> bool:
        return any(f.blocks_charging for f in {**self.station_faults, **c.faults})

    def _usable(self, c: _Connector) -> bool:
        # Once a reset is under way no new session may start before the restart.
        return (c.operative and self.station_operative and not self._blocked(c)
                and self._reset_pending is None)

    # ---- the power path ----------------------------------------------------------------------

    def _set_offer(self, c: _Connector, amps: float) -> None:
        if amps != c.offered_amps:
            c.offered_amps = amps
            self._emit(SetCurrentLimit(c.id, amps))

    def _set_contactor(self, c: _Connector, closed: bool) -> None:
        if closed != c.contactor_closed:
            c.contactor_closed = closed
            self._emit(SetContactor(c.id, closed))

    def _update_power(self, c: _Connector) -> None:
        """Close only for an authorized session whose vehicle asks for power; else open."""
        tx = c.transaction
        # Availability is not checked: a change to Inoperative waits for the session's end
        # (Scheduled), and no session starts on an unavailable connector.
        may_charge = (
            tx is not None
            and not tx.suspended_by_csms
            and not self._blocked(c)
            and c.pilot.vehicle_present
        )
        if not may_charge:
            # Open first: the contactor must never carry current the pilot no longer offers.
            self._set_contactor(c, False)
            self._set_offer(c, 0.0)
            return
        self._set_offer(c, self.settings.max_current)
        self._set_contactor(c, c.pilot.wants_power and c.offered_amps > 0)

    # ---- events from the hardware ------------------------------------------------------------

    def pilot_changed(self, connector_id: int, state: PilotState, now: float) -> None:
        c = self.connector(connector_id)
        previous, c.pilot = c.pilot, state
        if state in (PilotState.E, PilotState.F):
            c.faults.setdefault(Fault.EV_COMMUNICATION_ERROR, f"control pilot in state {state}")
            self._on_fault(c, Fault.EV_COMMUNICATION_ERROR, now)
        elif previous in (PilotState.E, PilotState.F):
            c.faults.pop(Fault.EV_COMMUNICATION_ERROR, None)
        if not state.vehicle_present:
            c.finishing = False
            if c.transaction is not None and self.settings.stop_on_ev_disconnect:
                self._stop(c, StopReason.EV_DISCONNECTED, now)
            if c.pending is not None and previous.vehicle_present:
                # The session being prepared left with the car, whether or not its card was
                # answered yet (a second tap while Finishing must not outlive the unplug).
                c.pending = None
            self._update_power(c)  # open before the plug is released
            if previous.vehicle_present and self.settings.unlock_on_ev_disconnect:
                self._emit(UnlockConnector(c.id))
        elif not previous.vehicle_present:
            self._on_plugged(c, now)
        self._update_power(c)
        self._publish(now)

    def _on_plugged(self, c: _Connector, now: float) -> None:
        if c.transaction is not None or not self._usable(c):
            return
        if c.pending is not None:
            if c.pending.authorized:
                self._start(c, now)
            return
        if self.settings.free_vend_id_tag:
            c.pending = _PendingAuth(self.settings.free_vend_id_tag, now, authorized=True)
            self._start(c, now)

    def card_presented(self, id_tag: str, connector_id: int | None, now: float) -> None:
        # A second tap of the card (or one of its group) ends that card's session.
        for c in self.connectors.values():
            tx = c.transaction
            if tx is not None and tx.id_tag == id_tag:
                self._stop(c, StopReason.LOCAL, now, stopped_by=id_tag)
                self._update_power(c)
                self._publish(now)
                return
        parent_sessions = [
            c for c in self.connectors.values() if c.transaction and c.transaction.parent_id_tag
        ]
        if parent_sessions:
            known = self._local_decision(id_tag, now)
            if known is not None and known.valid_at(now) and known.parent_id_tag:
                for c in parent_sessions:
                    assert c.transaction is not None
                    if c.transaction.parent_id_tag == known.parent_id_tag:
                        self._stop(c, StopReason.LOCAL, now, stopped_by=id_tag)
                        self._update_power(c)
                        self._publish(now)
                        return
        if any(c.pending is not None and c.pending.id_tag == id_tag
               for c in self.connectors.values()):
            return  # the same card again while we wait for the car: nothing new
        target = self._pick_connector(connector_id)
        if target is None:
            if parent_sessions and self.online:
                # Only the CSMS knows whether this card shares a group with a running session.
                self._stop_requests[id_tag] = parent_sessions[0].id
                self._emit(RequestAuthorization(id_tag))
            return
        target.pending = _PendingAuth(id_tag, now)
        self._authorize(target, now)
        self._publish(now)

    def _pick_connector(self, wanted: int | None) -> _Connector | None:
        if wanted in self.connectors:
            candidates = [self.connectors[wanted]]
        else:
            candidates = list(self.connectors.values())
        free = [c for c in candidates if c.transaction is None and self._usable(c)]
        # Prefer the connector where a car already waits for a card.
        for c in free:
            if c.pilot.vehicle_present and c.pending is None:
                return c
        for c in free:
            if c.pending is None and not c.pilot.vehicle_present and not c.finishing:
                return c
        return None

    def _local_decision(self, id_tag: str, now: float) -> IdTagInfo | None:
        """What the charger knows of a card without asking: the local list is authoritative,
        the cache only remembers."""
        if self.settings.local_list_enabled and id_tag in self.local_list:
            return self.local_list[id_tag]
        if not self.settings.auth_cache_enabled:
            return None
        return self.cache.get(id_tag)

    def _authorize(self, c: _Connector, now: float) -> None:
        assert c.pending is not None
        tag = c.pending.id_tag
        local = self._local_decision(tag, now)
        if self.online:
            if self.settings.local_pre_authorize and local is not None and local.valid_at(now):
                self._authorized(c, local, now)
            else:
                self._emit(RequestAuthorization(tag))
            return
        self._decide_offline(c, local, now)

    def _decide_offline(self, c: _Connector, local: IdTagInfo | None, now: float) -> None:
        if local is not None:
            if self.settings.local_authorize_offline and local.valid_at(now):
                self._authorized(c, local, now)
            else:
                self._rejected(c, now)
        elif self.settings.allow_offline_unknown_id:
            self._authorized(c, IdTagInfo(AuthStatus.ACCEPTED), now)
        else:
            self._rejected(c, now)

    def _authorized(self, c: _Connector, info: IdTagInfo, now: float) -> None:
        assert c.pending is not None
        c.pending.authorized = True
        c.pending.parent_id_tag = info.parent_id_tag
        c.pending.since = now  # ConnectionTimeOut counts from the authorization
        if c.pilot.vehicle_present:
            self._start(c, now)
        self._update_power(c)

    def _rejected(self, c: _Connector, now: float) -> None:
        c.pending = None
        self._update_power(c)

    def authorization_result(self, id_tag: str, info: IdTagInfo | None, now: float) -> None:
        """The CSMS's answer to an Authorize; None when no answer could be had."""
        if info is not None:
            self.id_tag_info_received(id_tag, info, now)
        stop_connector = self._stop_requests.pop(id_tag, None)
        if stop_connector is not None:
            c = self.connectors[stop_connector]
            tx = c.transaction
            if (
                tx is not None
                and info is not None
                and info.status is AuthStatus.ACCEPTED
                and info.parent_id_tag
                and info.parent_id_tag == tx.parent_id_tag
            ):
                self._stop(c, StopReason.LOCAL, now, stopped_by=id_tag)
                self._update_power(c)
        for c in self.connectors.values():
            if c.pending is None or c.pending.id_tag != id_tag or c.pending.authorized:
                continue
            if info is None:
                self._decide_offline(c, self._local_decision(id_tag, now), now)
            elif info.status is AuthStatus.ACCEPTED:
                self._authorized(c, info, now)
            else:
                self._rejected(c, now)
        self._publish(now)

    def id_tag_info_received(self, id_tag: str, info: IdTagInfo, now: float) -> None:
        """Every idTagInfo the CSMS sends refreshes the authorization cache."""
        if not self.settings.auth_cache_enabled or id_tag in self.local_list:
            return  # OCPP 1.6 3.5.1: cards of the local list are not cached
        for evicted in self.cache.put(id_tag, info):
            self._emit(AuthCacheUpdated(evicted, None))
        self._emit(AuthCacheUpdated(id_tag, info))

    def replace_local_list(self, entries: dict[str, IdTagInfo]) -> None:
        self.local_list = dict(entries)
        self._forget_listed()

    def update_local_list(self, changes: dict[str, IdTagInfo | None]) -> None:
        for tag, info in changes.items():
            if info is None:
                self.local_list.pop(tag, None)
            else:
                self.local_list[tag] = info
        self._forget_listed()

    def meter_failed(self, connector_id: int) -> None:
        """The meter stopped answering: no samples from an old reading, no new session."""
        self.connector(connector_id).reading_stale = True

    def start_not_recorded(self, local_id: int, now: float) -> None:
        """The shell could not store a session start: it never happened, no energy flows."""
        for c in self.connectors.values():
            if c.transaction is not None and c.transaction.local_id == local_id:
                c.transaction = None
                c.pending = None
                self._update_power(c)
        self._publish(now)

    def _forget_listed(self) -> None:
        for tag in [t for t in self.local_list if self.cache.get(t) is not None]:
            self.cache.remove(tag)
            self._emit(AuthCacheUpdated(tag, None))

    def clear_cache(self) -> None:
        self.cache.clear()

    def fault_raised(self, connector_id: int, fault: Fault, info: str, now: float) -> None:
        if connector_id == 0:
            self.station_faults[fault] = info
            targets = list(self.connectors.values())
        else:
            c = self.connector(connector_id)
            c.faults[fault] = info
            targets = [c]
        for c in targets:
            self._on_fault(c, fault, now)
            self._update_power(c)
        self._publish(now)

    def _on_fault(self, c: _Connector, fault: Fault, now: float) -> None:
        if not fault.blocks_charging:
            return
        reason = StopReason.EMERGENCY_STOP if fault is Fault.EMERGENCY_STOP else StopReason.OTHER
        if c.transaction is not None:
            self._stop(c, reason, now)
        c.pending = None
        self._update_power(c)

    def fault_cleared(self, connector_id: int, fault: Fault | None, now: float) -> None:
        faults = self.station_faults if connector_id == 0 else self.connector(connector_id).faults
        if fault is None:
            faults.clear()
        else:
            faults.pop(fault, None)
        if connector_id != 0:
            c = self.connector(connector_id)
            if c.pilot in (PilotState.E, PilotState.F):
                # Clearing an input does not clear what the pilot still shows.
                c.faults.setdefault(Fault.EV_COMMUNICATION_ERROR,
                                    f"control pilot in state {c.pilot}")
        self._publish(now)

    def meter_sample(
        self, connector_id: int, reading: MeterReading, now: float | None = None
    ) -> None:
        c = self.connector(connector_id)
        c.reading = reading
        was_stale, c.reading_stale = c.reading_stale, False
        pending = c.pending
        if (
            was_stale
            and now is not None
            and c.transaction is None
            and pending is not None
            and pending.authorized
            and c.pilot.vehicle_present
        ):
            self._start(c, now)  # the session that waited for the meter
            self._update_power(c)
            self._publish(now)
        tx = c.transaction
        if (
            tx is not None
            and tx.energy_cap_wh is not None
            and not tx.suspended_by_csms
            and reading.energy_wh is not None
            and reading.energy_wh >= tx.energy_cap_wh
        ):
            tx.suspended_by_csms = True  # the allowance for an invalidated card is used up
            self._update_power(c)
            if now is not None:
                self._publish(now)

    # ---- connection and clock ----------------------------------------------------------------

    def connection_changed(self, online: bool, now: float) -> None:
        self.online = online
        if not online:
            # Authorize calls in flight will not be answered: decide with what we know.
            for c in self.connectors.values():
                if c.pending is not None and not c.pending.authorized:
                    self._decide_offline(c, self._local_decision(c.pending.id_tag, now), now)
            self._stop_requests.clear()
            self._publish(now)

    def clock_synchronised(self, now: float, jump: float = 0.0) -> None:
        """The time is known; `now` moved by `jump` against the time the core ran on so far,
        and every deadline and stamp the core holds moves with it."""
        self.clock_trusted = True
        if jump:
            for c in self.connectors.values():
                if c.pending is not None:
                    c.pending.since += jump
                tx = c.transaction
                if tx is not None:
                    tx.started_at += jump
                    tx.next_sample_at += jump
                    tx.samples = [replace(s, timestamp=s.timestamp + jump) for s in tx.samples]
        # The first boundary after this moment is due even if no tick comes before it passes.
        self._align(now)

    # ---- transactions ------------------------------------------------------------------------

    def _energy(self, c: _Connector, default: float = 0.0) -> float:
        if c.reading is None or c.reading.energy_wh is None:
            return default
        return c.reading.energy_wh

    def _start(self, c: _Connector, now: float) -> None:
        assert c.pending is not None and c.pending.authorized
        if c.reading_stale:
            # No session without a meterStart the meter really showed: wait for a reading.
            return
        tx = Transaction(
            local_id=self._next_tx_id,
            connector_id=c.id,
            id_tag=c.pending.id_tag,
            started_at=now,
            meter_start_wh=self._energy(c),
            parent_id_tag=c.pending.parent_id_tag,
            remote_start=c.pending.remote,
        )
        self._next_tx_id += 1
        tx.next_sample_at = now + self.settings.meter_sample_interval
        if c.reading is not None:
            tx.samples.append(Sample(now, ReadingContext.TRANSACTION_BEGIN, c.reading))
        c.pending = None
        c.finishing = False
        c.transaction = tx
        # The start is recorded (durably, by the shell) before any current is offered.
        self._emit(TransactionStarted(tx))
        self._update_power(c)

    def _stop(
        self, c: _Connector, reason: StopReason, now: float, stopped_by: str | None = None
    ) -> None:
        tx = c.transaction
        assert tx is not None
        c.transaction = None
        self._set_contactor(c, False)
        self._set_offer(c, 0.0)
        if c.reading is not None:
            tx.samples.append(Sample(now, ReadingContext.TRANSACTION_END, c.reading))
        c.finishing = c.pilot.vehicle_present
        # Without a reading the register cannot have gone below where the session began.
        meter_stop = max(self._energy(c, default=tx.meter_start_wh), tx.meter_start_wh)
        self._emit(TransactionStopped(tx, reason, now, meter_stop, stopped_by))
        if c.scheduled_operative is not None:
            self._apply_availability(c, c.scheduled_operative)
        if self._reset_pending is not None and not self.transactions():
            self._emit(ResetNow(self._reset_pending))

    def transaction_confirmed(
        self, local_id: int, csms_id: int, info: IdTagInfo, now: float
    ) -> None:
        """StartTransaction.conf: the CSMS's id for our session and its verdict on the card."""
        for c in self.connectors.values():
            tx = c.transaction
            if tx is None or tx.local_id != local_id:
                continue
            tx.csms_id = csms_id
            if info.parent_id_tag:
                # A session started offline learns its card's group only now.
                tx.parent_id_tag = info.parent_id_tag
            self.id_tag_info_received(tx.id_tag, info, now)
            if info.status is not AuthStatus.ACCEPTED:
                allowance = self.settings.max_energy_on_invalid_id
                cap = tx.meter_start_wh + (allowance or 0.0)  # MaxEnergyOnInvalidId
                if self.settings.stop_on_invalid_id:
                    self._stop(c, StopReason.DE_AUTHORIZED, now)
                elif allowance and self._energy(c, tx.meter_start_wh) < cap:
                    tx.energy_cap_wh = cap
                else:
                    tx.suspended_by_csms = True
                self._update_power(c)
        self._publish(now)

    def stop_transaction(self, csms_id: int, reason: StopReason, now: float) -> bool:
        for c in self.connectors.values():
            if c.transaction is not None and c.transaction.csms_id == csms_id:
                self._stop(c, reason, now)
                self._update_power(c)
                self._publish(now)
                return True
        return False

    def remote_start(self, id_tag: str, connector_id: int | None, now: float) -> bool:
        if connector_id is not None and connector_id not in self.connectors:
            return False
        target = self._pick_connector(connector_id)
        if target is None:
            return False
        target.pending = _PendingAuth(id_tag, now, remote=True)
        if self.settings.authorize_remote_start:
            self._authorize(target, now)
        else:
            self._authorized(target, IdTagInfo(AuthStatus.ACCEPTED), now)
        self._publish(now)
        return True

    def unlock(self, connector_id: int, now: float) -> None:
        """Stop the session before the CSMS's UnlockConnector releases the plug; the caller
        drives the lock itself, since it must report whether the lock opened."""
        c = self.connector(connector_id)
        if c.transaction is not None:
            self._stop(c, StopReason.UNLOCK_COMMAND, now)
            self._update_power(c)
        self._publish(now)

    def change_availability(self, connector_id: int, operative: bool, now: float) -> Availability:
        if connector_id == 0:
            busy = bool(self.transactions())
            if self.station_operative != operative:
                self.station_operative = operative
                self._emit(AvailabilityChanged(0, operative))
            for c in self.connectors.values():
                if c.transaction is not None and not operative:
                    self._schedule_availability(c, operative)
                else:
                    self._apply_availability(c, operative)
            self._publish(now)
            return Availability.SCHEDULED if busy and not operative else Availability.ACCEPTED
        c = self.connector(connector_id)
        if c.transaction is not None and not operative:
            self._schedule_availability(c, operative)
            return Availability.SCHEDULED
        self._apply_availability(c, operative)
        self._publish(now)
        return Availability.ACCEPTED

    def _schedule_availability(self, c: _Connector, operative: bool) -> None:
        c.scheduled_operative = operative
        # Stored now: a restart ends the session (PowerLoss), and the change then applies.
        self._emit(AvailabilityChanged(c.id, operative))

    def _apply_availability(self, c: _Connector, operative: bool) -> None:
        stored_differs = c.scheduled_operative is not None and c.scheduled_operative != operative
        c.scheduled_operative = None
        if stored_differs and c.operative == operative:
            self._emit(AvailabilityChanged(c.id, operative))  # a cancelled schedule
        if not operative:
            c.pending = None
        if c.operative != operative:
            c.operative = operative
            self._emit(AvailabilityChanged(c.id, operative))
        self._update_power(c)

    def reset(self, hard: bool, now: float) -> None:
        reason = StopReason.HARD_RESET if hard else StopReason.SOFT_RESET
        self._reset_pending = hard
        running = [c for c in self.connectors.values() if c.transaction is not None]
        for c in running:
            self._stop(c, reason, now)  # the last stop emits ResetNow
            self._update_power(c)
        if not running:
            self._emit(ResetNow(hard))
        self._publish(now)

    def restore_interrupted(self, transactions: list[Transaction], reason: StopReason, now: float):
        """Close the sessions a crash or power cut left open, at the meter's current reading."""
        for tx in transactions:
            c = self.connectors.get(tx.connector_id)
            reading = c.reading if c else None
            meter_stop = (
                reading.energy_wh
                if reading and reading.energy_wh is not None
                else tx.meter_start_wh
            )
            self._emit(TransactionStopped(tx, reason, now, meter_stop, None))
            self._next_tx_id = max(self._next_tx_id, tx.local_id + 1)

    # ---- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        settings = self.settings
        for c in self.connectors.values():
            pending = c.pending
            if (
                pending is not None
                and pending.authorized
                and not c.pilot.vehicle_present
                and now - pending.since >= settings.connection_timeout
            ):
                c.pending = None  # the driver never plugged in
            tx = c.transaction
            if tx is not None and settings.meter_sample_interval > 0 and now >= tx.next_sample_at:
                if c.reading is not None and not c.reading_stale:
                    sample = Sample(now, ReadingContext.PERIODIC, c.reading)
                    tx.samples.append(sample)
                    self._emit(MeterValuesReport(c.id, tx, sample))
                missed = math.floor((now - tx.next_sample_at) / settings.meter_sample_interval)
                tx.next_sample_at += (missed + 1) * settings.meter_sample_interval
        self._tick_aligned(now)
        self._publish(now)

    def _tick_aligned(self, now: float) -> None:
        interval = self.settings.clock_aligned_interval
        if interval <= 0 or not self.clock_trusted:
            # Without a trusted clock the boundaries would be fiction; report none.
            self._next_aligned_at = None
            return
        if self._next_aligned_at is None or interval != self._aligned_interval:
            self._align(now)  # first trusted tick, or ClockAlignedDataInterval was changed
            return
        if now < self._next_aligned_at:
            return
        # After a gap, one sample, for the latest boundary: the reading is of now, not of the gap.
        boundary = math.floor(now / interval) * interval
        for c in self.connectors.values():
            if c.reading is None or c.reading_stale:
                continue
            sample = Sample(boundary, ReadingContext.CLOCK, c.reading)
            if c.transaction is not None:
                c.transaction.samples.append(sample)
            self._emit(MeterValuesReport(c.id, c.transaction, sample))
        self._align(now)

    def _align(self, now: float) -> None:
        """Aim at the first boundary of the configured interval after `now`."""
        interval = self._aligned_interval = self.settings.clock_aligned_interval
        self._next_aligned_at = None
        if interval > 0:
            self._next_aligned_at = (math.floor(now / interval) + 1) * interval
