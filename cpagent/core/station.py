"""The charging core's one entry point: what happened goes in, actions come out.

The shell tells it what happened (a pilot change, a card, a CSMS answer, the passing of time)
together with the current time, and drains the actions it decided on. The decisions are made
by its parts (authorization, sessions, metering, availability, limits); this facade routes each
input to them and reports, after each one, what a CSMS should now see. It does no I/O, so
the same logic serves every OCPP version and is tested with a fake clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace

from cpagent.core.actions import (
    Action,
    ChargingProfilesChanged,
    CurrentOverrun,
    ResetEvse,
    ResetNow,
    StatusChanged,
    TxEventKind,
)
from cpagent.core.authorization import Authorizer
from cpagent.core.availability import Availabilities
from cpagent.core.evse import Connector, Evse, PendingAuth, Station, charging_state
from cpagent.core.limits import Limits
from cpagent.core.metering import Metering
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    Availability,
    ChargingState,
    ConnectorStatus,
    CoreSettings,
    IdToken,
    Reservation,
    ReserveResult,
    StopReason,
    Transaction,
    Trigger,
    TxPoint,
)
from cpagent.core.overrun import OverrunWatch
from cpagent.core.reservations import Reservations
from cpagent.core.schedules import ChargingProfile, ProfilePurpose, Segment
from cpagent.core.sessions import RemoteStartResult, Sessions
from hal.interfaces import Fault, MeterReading, PilotState

__all__ = ["ChargingStation", "RemoteStartResult"]

_PILOT_ERROR = (PilotState.E, PilotState.F)


def _counter_refs() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: str(next(counter))


class ChargingStation:
    def __init__(
        self,
        evses: int | dict[int, int],
        settings: CoreSettings,
        *,
        new_ref: Callable[[], str] | None = None,
        operative: dict[tuple[int, int], bool] | None = None,
        auth_cache: Iterable[tuple[IdToken, AuthInfo]] = (),
        local_list: Iterable[tuple[IdToken, AuthInfo]] = (),
        profiles: Iterable[ChargingProfile] = (),
        reservations: Iterable[Reservation] = (),
    ) -> None:
        """`evses`: how many EVSEs with one connector each, or {evse id: connectors}.
        `operative`: stored availability by (evse, connector), 0 naming the whole level.
        `reservations`: those stored; one that expired meanwhile ends at the first input.
        `new_ref`: makes transaction references; the shell's are unique across restarts."""
        layout = evses if isinstance(evses, dict) else {e: 1 for e in range(1, evses + 1)}
        stored = operative or {}
        self.settings = settings
        self._actions: list[Action] = []
        emit = self._actions.append
        self.station = Station(
            {e: Evse(e, stored.get((e, 0), True),
                     {c: Connector(c, stored.get((e, c), True)) for c in range(1, n + 1)})
             for e, n in layout.items()},
            stored.get((0, 0), True),
        )
        # No transaction outlives a restart (restore_interrupted ends them), so neither does
        # a transaction profile, even one a crash left in the store after its session ended.
        stored = list(profiles)
        kept = [p for p in stored if p.purpose is not ProfilePurpose.TX]
        self.limits = Limits(settings, layout, kept)
        if len(kept) != len(stored):
            self._actions.append(ChargingProfilesChanged(tuple(kept)))
        self.overrun = OverrunWatch()
        self.auth = Authorizer(settings, emit, cache=auth_cache, local_list=local_list)
        self.availability = Availabilities(self.station, emit)
        self.reservations = Reservations(self.station, settings, emit, reservations)
        self.sessions = Sessions(self.station, settings, self.limits, self.auth, emit,
                                 new_ref or _counter_refs(), self.availability,
                                 reservations=self.reservations)
        self.metering = Metering(self.station, settings, self.sessions, emit)
        # What a CSMS learns at connection time is the current status, so only changes after
        # construction are emitted.
        self.station.reported = self.station.station_status()
        for evse in self.station.evses.values():
            for connector in evse.connectors.values():
                connector.reported = self._view(evse, connector)

    # ---- output ------------------------------------------------------------------------------

    def drain(self) -> list[Action]:
        actions = list(self._actions)
        self._actions.clear()
        return actions

    # ---- queries -----------------------------------------------------------------------------

    @property
    def evses(self) -> dict[int, Evse]:
        return self.station.evses

    @property
    def online(self) -> bool:
        return self.station.online

    @property
    def local_list(self):
        return self.auth.local_list

    @property
    def cache(self):
        return self.auth.cache

    def evse(self, evse_id: int) -> Evse:
        return self.station.evse(evse_id)

    def transactions(self) -> list[Transaction]:
        return self.station.transactions()

    def find_transaction(self, ref: str) -> Transaction | None:
        evse = self.sessions.find(ref)
        return evse.transaction if evse else None

    def status(self, evse_id: int, connector_id: int = 1) \
            -> tuple[ConnectorStatus, Fault | None, str]:
        """The status a CSMS should see now: state, not history. EVSE 0 is the station."""
        if evse_id == 0:
            return self.station.station_status()
        evse = self.evse(evse_id)
        return self.station.status(evse, evse.connector(connector_id))

    def charging_state(self, evse_id: int) -> ChargingState:
        return charging_state(self.evse(evse_id))

    def blocked(self, evse_id: int) -> bool:
        return self.station.blocked(self.evse(evse_id))

    # ---- after every input: what changed for the CSMS -----------------------------------------

    def _view(self, evse: Evse, connector: Connector) -> tuple:
        return (*self.station.status(evse, connector), evse.pilot.vehicle_present)

    def _publish(self, now: float) -> None:
        """Report charging-state changes of running transactions, then every connector whose
        visible status changed."""
        self.reservations.review(now)  # expired, or no longer possible: then not Reserved
        for evse in self.station.evses.values():
            tx = evse.transaction
            if tx is None:
                continue
            state = charging_state(evse)
            if state is ChargingState.CHARGING:
                tx.energy_flowed = True
            elif tx.energy_flowed and TxPoint.ENERGY_TRANSFER in self.settings.stop_points:
                self.sessions.energy_stopped(evse, now)
                continue
            if state is not tx.charging_state:
                self.sessions.update(evse, Trigger.CHARGING_STATE_CHANGED, now)
        station = self.station.station_status()
        if station != self.station.reported:
            self.station.reported = station
            self._actions.append(StatusChanged(0, 0, *station, timestamp=now))
        for evse in self.station.evses.values():
            for connector in evse.connectors.values():
                view = self._view(evse, connector)
                if view != connector.reported:
                    connector.reported = view
                    self._actions.append(StatusChanged(evse.id, connector.id, *view[:3],
                                                       timestamp=now,
                                                       vehicle_present=view[3]))

    # ---- events from the hardware ------------------------------------------------------------

    def pilot_changed(self, evse_id: int, state: PilotState, now: float) -> None:
        evse = self.evse(evse_id)
        previous, evse.pilot = evse.pilot, state
        sessions = self.sessions
        if state in _PILOT_ERROR:
            evse.faults.setdefault(Fault.EV_COMMUNICATION_ERROR,
                                   f"control pilot in state {state}")
            self._fault_blocks(evse, Fault.EV_COMMUNICATION_ERROR, now)
        elif previous in _PILOT_ERROR:
            evse.faults.pop(Fault.EV_COMMUNICATION_ERROR, None)
        if not state.vehicle_present:
            evse.finishing = False
            sessions.power_off(evse)  # open before the plug is released
            if previous.vehicle_present:
                sessions.vehicle_left(evse, now)
                # The session being prepared left with the car, whether or not its card was
                # answered yet (a second tap while Finishing must not outlive the unplug).
                evse.pending = None
                sessions.unplugged_unlock(evse)
        elif not previous.vehicle_present:
            sessions.vehicle_arrived(evse, now)
        sessions.update_power(evse, now)
        self._publish(now)

    def card_presented(self, token: IdToken, evse_id: int | None, now: float) -> None:
        self.sessions.token_presented(token, evse_id, now)
        self._publish(now)

    def meter_sample(self, evse_id: int, reading: MeterReading, now: float | None = None) -> None:
        evse = self.evse(evse_id)
        evse.reading = reading
        was_stale, evse.reading_stale = evse.reading_stale, False
        if now is None:
            return
        if was_stale and evse.transaction is None and self.sessions.start_due(evse):
            self.sessions.start(evse, now, Trigger.AUTHORIZED)  # it waited for the meter
            self.sessions.update_power(evse, now)
        if self.overrun.check(evse, reading, now):
            fault = evse.faults.get(Fault.EV_OVER_CURRENT)
            if fault is not None:
                self._actions.append(CurrentOverrun(evse.id, fault))
        tx = evse.transaction
        if (tx is not None and tx.energy_cap_wh is not None and not tx.suspended_by_csms
                and reading.energy_wh is not None and reading.energy_wh >= tx.energy_cap_wh):
            tx.suspended_by_csms = True  # the allowance for an invalidated card is used up
            self.sessions.update_power(evse, now)
            self.sessions.update(evse, Trigger.ENERGY_LIMIT_REACHED, now)
        self._publish(now)

    def meter_failed(self, evse_id: int) -> None:
        """The meter stopped answering: no samples from an old reading, no new session."""
        self.evse(evse_id).reading_stale = True

    def fault_raised(self, evse_id: int, fault: Fault, info: str, now: float) -> None:
        if evse_id == 0:
            self.station.faults[fault] = info
            targets = list(self.station.evses.values())
        else:
            evse = self.evse(evse_id)
            evse.faults[fault] = info
            targets = [evse]
        for evse in targets:
            self._fault_blocks(evse, fault, now)
            self.sessions.update_power(evse, now)
        self._publish(now)

    def _fault_blocks(self, evse: Evse, fault: Fault, now: float) -> None:
        if not fault.blocks_charging:
            return
        if evse.transaction is not None:
            self.sessions.forced_end(evse, fault, now)
        evse.pending = None
        self.sessions.power_off(evse)

    def fault_cleared(self, evse_id: int, fault: Fault | None, now: float) -> None:
        faults = self.station.faults if evse_id == 0 else self.evse(evse_id).faults
        if fault is None:
            faults.clear()
        else:
            faults.pop(fault, None)
        if evse_id != 0:
            evse = self.evse(evse_id)
            if evse.pilot in _PILOT_ERROR:
                # Clearing an input does not clear what the pilot still shows.
                evse.faults.setdefault(Fault.EV_COMMUNICATION_ERROR,
                                       f"control pilot in state {evse.pilot}")
        self._publish(now)

    # ---- authorization -----------------------------------------------------------------------

    def authorization_result(self, token: IdToken, info: AuthInfo | None, now: float) -> None:
        """The CSMS's answer to an authorization request; None when no answer could be had."""
        self.sessions.authorization_result(token, info, now)
        self._publish(now)

    def token_info_received(self, token: IdToken, info: AuthInfo, now: float) -> None:
        """Any verdict of the CSMS on a token refreshes the cache."""
        self.auth.learn(token, info, now)

    def transaction_authorization(self, ref: str, info: AuthInfo, now: float) -> None:
        self.sessions.transaction_authorization(ref, info, now)
        self._publish(now)

    def replace_local_list(self, entries: Iterable[tuple[IdToken, AuthInfo]]) -> None:
        self.auth.replace_list(entries)

    def update_local_list(self, changes: Iterable[tuple[IdToken, AuthInfo | None]]) -> None:
        self.auth.update_list(changes)

    def clear_cache(self) -> None:
        self.auth.clear_cache()

    # ---- the CSMS's commands -----------------------------------------------------------------

    def remote_start(self, token: IdToken, evse_id: int | None, now: float,
                     remote_start_id: int | None = None,
                     profile: ChargingProfile | None = None) -> RemoteStartResult:
        """`profile`: a transaction profile for the session this start begins (its
        transaction and EVSE are filled in when it does)."""
        if evse_id is not None and evse_id not in self.station.evses:
            return RemoteStartResult(False)
        target = self.sessions.pick_evse(evse_id, token, now)
        if target is None:
            return RemoteStartResult(False)
        running = target.transaction.ref if target.transaction is not None else None
        target.pending = PendingAuth(token, now, remote=True, remote_start_id=remote_start_id,
                                     profile=profile)
        known = self.auth.known(token, now)
        # Taken as accepted; its group, where the local list or cache knows it.
        accepted = AuthInfo(AuthStatus.ACCEPTED, known.group if known else None)
        if self.settings.authorize_remote_start or (
                known is None and not self.reservations.admit(target, token, None)[0]):
            # Also without AuthorizeRemoteTxRequests: only the CSMS can tell whether the token
            # is of the group a reserved EVSE is kept for (1.6 §5.13, 2.0.1 H03).
            self.sessions.authorize(target, now)
        else:
            self.sessions.authorized(target, accepted, now)
        self._publish(now)
        return RemoteStartResult(True, running)

    def remote_stop(self, ref: str, now: float) -> bool:
        evse = self.sessions.find(ref)
        if evse is None:
            return False
        tx = evse.transaction
        assert tx is not None
        if tx.stopping is None:
            self.sessions.deauthorize(evse, StopReason.REMOTE, Trigger.REMOTE_STOP, now)
        self.sessions.update_power(evse, now)
        self._publish(now)
        return True

    def unlock(self, evse_id: int, now: float, connector_id: int | None = None) -> None:
        """End the session before the CSMS's unlock releases the plug; the caller drives the
        lock itself, since it must report whether the lock opened."""
        evse = self.evse(evse_id)
        self.sessions.unlock(evse, connector_id or evse.active_connector, now)
        self.sessions.update_power(evse, now)
        self._publish(now)

    def change_availability(self, evse_id: int, operative: bool, now: float,
                            connector_id: int | None = None) -> Availability:
        answer, touched = self.availability.change(evse_id, connector_id, operative)
        for evse in touched:
            if not self.station.usable(evse) and evse.pending is not None and \
                    evse.transaction is None:
                evse.pending = None  # a card waiting on what is now unavailable
            self.sessions.update_power(evse, now)
        self._publish(now)
        return answer

    def reset(self, hard: bool, now: float, *, evse_id: int | None = None,
              on_idle: bool = False) -> Availability:
        """End the sessions (now, or as they end by themselves when `on_idle`), then reset the
        station or one EVSE. Returns SCHEDULED when the reset waits for sessions."""
        reason = StopReason.HARD_RESET if hard else StopReason.SOFT_RESET
        targets = list(self.station.evses.values()) if evse_id is None else [self.evse(evse_id)]
        running = [e for e in targets if e.transaction is not None]
        if evse_id is None:
            self.station.reset_pending = hard
        else:
            targets[0].reset_pending = True
        for evse in [] if on_idle else running:
            self.sessions.end(evse, reason, Trigger.RESET_COMMAND, now)  # the last one resets
        if not running:
            if evse_id is None:
                self._actions.append(ResetNow(hard))
            else:
                targets[0].reset_pending = False
                self._actions.append(ResetEvse(evse_id))
        for evse in targets:
            self.sessions.update_power(evse, now)
        self._publish(now)
        return Availability.SCHEDULED if on_idle and running else Availability.ACCEPTED

    def start_not_recorded(self, ref: str, now: float) -> None:
        """The shell could not store a session start: it never happened, no energy flows."""
        evse = self.sessions.find(ref)
        if evse is not None:
            evse.transaction = None
            evse.pending = None
            self.remove_profiles(self.limits.bound_to(ref), now)
            self.sessions.update_power(evse, now)
        self._publish(now)

    def restore_interrupted(self, transactions: list[Transaction], reason: StopReason,
                            now: float) -> None:
        """Close the sessions a crash or power cut left open, at the meter's current reading."""
        for tx in transactions:
            evse = self.station.evses.get(tx.evse_id)
            meter_stop = evse.energy(tx.meter_start_wh) if evse is not None else \
                tx.meter_start_wh
            holder = evse or Evse(tx.evse_id, True, {tx.connector_id: Connector(
                tx.connector_id, True)})
            self.sessions.event(TxEventKind.ENDED, holder, tx, now, Trigger.ABNORMAL_CONDITION,
                                reason=reason, meter_stop_wh=max(meter_stop,
                                                                 tx.meter_start_wh))
        # (Their transaction profiles went at construction: none outlives a restart.)

    def shutdown(self, now: float) -> None:
        """The agent is stopping (SIGTERM): every session ends now, at its real reading."""
        for evse in self.station.evses.values():
            if evse.transaction is not None:
                self.sessions.end(evse, StopReason.REBOOT, Trigger.ABNORMAL_CONDITION, now)
        self._publish(now)

    def trigger_meter_values(self, evse_ids: list[int] | None, now: float,
                             in_transaction: bool = False) -> int:
        ids = list(self.station.evses) if evse_ids is None else evse_ids
        made = self.metering.triggered(ids, now, in_transaction)
        self._publish(now)
        return made

    def storage_low(self, low: bool) -> None:
        """Storage is short: intermediate readings are not reported until it recovers."""
        self.metering.storage_low = low

    def set_local_limit(self, evse_id: int, amps: float | None, now: float) -> None:
        self.limits.set_local(evse_id, amps)
        self.sessions.update_power(self.evse(evse_id), now)
        self._publish(now)

    # ---- reservations ------------------------------------------------------------------------

    def reserve(self, reservation: Reservation, now: float,
                connector_types: Mapping[int, Collection[str]] | None = None) -> ReserveResult:
        """Make, or replace by its id, a reservation. `connector_types`: each EVSE's
        connector types, where the caller knows them."""
        answer = self.reservations.reserve(reservation, now, connector_types)
        self._publish(now)
        return answer

    def cancel_reservation(self, reservation_id: int, now: float) -> bool:
        cancelled = self.reservations.cancel(reservation_id)
        self._publish(now)
        return cancelled

    # ---- charging profiles -------------------------------------------------------------------

    @property
    def profiles(self) -> list[ChargingProfile]:
        return list(self.limits.profiles.values())

    def install_profile(self, profile: ChargingProfile, now: float,
                        replacing: Iterable[int] = ()) -> None:
        """Install (or replace, by id) a profile the adapter has checked, in place of the
        `replacing` ones, and apply it now."""
        self.limits.remove(replacing)
        self.limits.install(profile)
        self._profiles_changed(now)

    def remove_profiles(self, ids: Iterable[int], now: float) -> list[ChargingProfile]:
        removed = self.limits.remove(ids)
        if removed:
            self._profiles_changed(now)
        return removed

    def clear_profiles(self, now: float, *, profile_id: int | None = None,
                       evse_id: int | None = None, purpose: ProfilePurpose | None = None,
                       stack_level: int | None = None) -> list[ChargingProfile]:
        """ClearChargingProfile in both versions: the profile of that id, else every profile
        that meets all the criteria given (none given: all). External constraints are the
        station's own and never cleared by the CSMS (2.0.1 K10.FR.06)."""
        def matches(p: ChargingProfile) -> bool:
            if p.purpose is ProfilePurpose.EXTERNAL:
                return False
            if profile_id is not None:
                return p.id == profile_id
            return ((evse_id is None or p.evse_id == evse_id)
                    and (purpose is None or p.purpose is purpose)
                    and (stack_level is None or p.stack_level == stack_level))

        return self.remove_profiles([p.id for p in self.profiles if matches(p)], now)

    def _profiles_changed(self, now: float) -> None:
        self._actions.append(ChargingProfilesChanged(tuple(self.limits.profiles.values())))
        self.sessions.refresh_power(now)
        self._publish(now)

    def composite_schedule(self, evse_id: int, start: float, duration: float) -> list[Segment]:
        """The limits an EVSE will have over the coming `duration` seconds, as the profiles
        installed now and its running transaction make them; for 0, what the station as a
        whole is expected to draw (every EVSE's, within the supply's)."""
        shares = {e.id: e.offered_amps for e in self.station.evses.values()
                  if e.share_cut and e.transaction is not None}
        if evse_id == 0:
            sessions = {tx.evse_id: (tx.ref, tx.started_at) for tx in self.transactions()}
            return self.limits.grid_schedule(start, start + duration, sessions, shares)
        tx = self.evse(evse_id).transaction
        return self.limits.schedule(evse_id, start, start + duration,
                                    tx.ref if tx else None, tx.started_at if tx else None,
                                    share=shares.get(evse_id))

    # ---- connection and clock ----------------------------------------------------------------

    def connection_changed(self, online: bool, now: float) -> None:
        self.station.online = online
        if not online:
            self.sessions.connection_lost(now)
            self._publish(now)

    def clock_synchronised(self, now: float, jump: float = 0.0) -> None:
        """The time is known; `now` moved by `jump` against the time the core ran on so far,
        and every deadline and stamp the core holds moves with it."""
        self.station.clock_trusted = True
        self.limits.changed()  # schedules are laid on the clock
        if jump:
            for evse in self.station.evses.values():
                if evse.pending is not None:
                    evse.pending.since += jump
                tx = evse.transaction
                if tx is not None:
                    tx.started_at += jump
                    tx.next_update_at += jump
                    tx.next_history_at += jump
                    tx.history = [replace(s, timestamp=s.timestamp + jump) for s in tx.history]
        self.metering.clock_known(now)
        # Offers planned on the untrusted clock: planned again on the true one.
        self.sessions.refresh_power(now)
        self._publish(now)

    def tick(self, now: float) -> None:
        timeout = self.settings.connection_timeout
        for evse in self.station.evses.values():
            pending = evse.pending
            if (pending is not None and pending.authorized and not evse.pilot.vehicle_present
                    and now - pending.since >= timeout):
                evse.pending = None  # the driver never plugged in
            tx = evse.transaction
            if (tx is not None and tx.authorized and not evse.pilot.vehicle_present
                    and not tx.vehicle_seen and now - tx.started_at >= timeout):
                # Began with the card; no car came (2.0.1 EVConnectionTimeOut).
                self.sessions.end(evse, StopReason.TIMEOUT, Trigger.EV_CONNECT_TIMEOUT, now)
        expired = self.limits.expired(now)
        if expired:
            self.limits.remove(expired)
            self._actions.append(ChargingProfilesChanged(tuple(self.limits.profiles.values())))
        if expired or now >= self.limits.next_change():
            self.limits.looked(now)
            self.sessions.refresh_power(now)  # a schedule boundary: the offers change
        self.metering.tick(now)
        self._publish(now)
