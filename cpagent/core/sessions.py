"""Transactions: where they begin and end, what they report, and when power may flow.

A transaction begins at the first of the configured start points that comes true (a cable
plugged in, an authorization, both, or the first energy) and ends when one of the configured
stop points ceases to hold, or when something forces it (a fault, a reset, an unlock, a
timeout). Each step in between is a transaction event with the next sequence number. The
rules of the power path live here too: offer current only to an authorized session whose
vehicle is plugged in, close only when it asks for power, and record a start before any of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from cpagent.core.actions import (
    Action,
    ChargingLimitChanged,
    ChargingProfilesChanged,
    RequestAuthorization,
    ResetEvse,
    ResetNow,
    SetContactor,
    SetCurrentLimit,
    TransactionEvent,
    TxEventKind,
    UnlockConnector,
)
from cpagent.core.authorization import Authorizer
from cpagent.core.availability import Availabilities
from cpagent.core.evse import Evse, PendingAuth, Station, charging_state
from cpagent.core.limits import FOLLOW_TIME, MIN_OFFER, Demand, Limits, LimitSource, Offer
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    ChargingState,
    CoreSettings,
    IdToken,
    ReadingContext,
    Sample,
    StopReason,
    Transaction,
    Trigger,
    TxPoint,
)
from cpagent.core.reservations import Reservations
from hal.interfaces import Fault

# Stop points a deauthorization ends a transaction at; at EV_CONNECTED alone it waits for
# the unplug.
_ENDS_ON_DEAUTHORIZATION = {TxPoint.AUTHORIZED, TxPoint.POWER_PATH_CLOSED,
                            TxPoint.ENERGY_TRANSFER}
_ENDS_ON_UNPLUG = {TxPoint.EV_CONNECTED, TxPoint.POWER_PATH_CLOSED, TxPoint.ENERGY_TRANSFER}


@dataclass(frozen=True, slots=True)
class RemoteStartResult:
    accepted: bool
    ref: str | None = None  # the transaction already running on that EVSE, if any


class Sessions:
    def __init__(
        self,
        station: Station,
        settings: CoreSettings,
        limits: Limits,
        authorizer: Authorizer,
        emit: Callable[[Action], None],
        new_ref: Callable[[], str],
        availability: Availabilities,
        *,
        reservations: Reservations,
    ) -> None:
        self.availability = availability
        self.reservations = reservations
        self.station = station
        self.settings = settings
        self.limits = limits
        self.auth = authorizer
        self._emit = emit
        self._new_ref = new_ref
        self._stop_requests: dict[str, int] = {}  # token being authorized -> EVSE to stop

    # ---- events ------------------------------------------------------------------------------

    def event(
        self, kind: TxEventKind, evse: Evse, tx: Transaction, now: float, trigger: Trigger,
        *, authorized_now: bool = False, samples: tuple[Sample, ...] = (),
        reason: StopReason | None = None, cause: Fault | None = None,
        stopped_by: IdToken | None = None, meter_stop_wh: float | None = None,
    ) -> None:
        # As it will be once this step's power decision is carried out.
        state = charging_state(evse, self.plan(evse, now)) if kind is not TxEventKind.ENDED else (
            ChargingState.EV_CONNECTED if evse.pilot.vehicle_present else ChargingState.IDLE)
        tx.charging_state = state
        seq, tx.next_seq = tx.next_seq, tx.next_seq + 1
        self._emit(TransactionEvent(
            kind=kind, ref=tx.ref, seq=seq, evse_id=evse.id, connector_id=tx.connector_id,
            timestamp=now, trigger=trigger, charging_state=state, started_at=tx.started_at,
            meter_start_wh=tx.meter_start_wh, token=tx.token, group=tx.group,
            authorized_now=authorized_now, samples=samples,
            remote_start_id=tx.remote_start_id, reservation_id=tx.reservation_id,
            offline=not self.station.online, reason=reason, cause=cause,
            stopped_by=stopped_by, meter_stop_wh=meter_stop_wh,
        ))

    def update(self, evse: Evse, trigger: Trigger, now: float, **kwargs) -> None:
        assert evse.transaction is not None
        self.event(TxEventKind.UPDATED, evse, evse.transaction, now, trigger, **kwargs)

    # ---- the power path ----------------------------------------------------------------------

    def _set_offer(self, evse: Evse, amps: float) -> None:
        if amps != evse.offered_amps:
            evse.offered_amps = amps
            self._emit(SetCurrentLimit(evse.id, amps))

    def _set_contactor(self, evse: Evse, closed: bool) -> None:
        if closed != evse.contactor_closed:
            evse.contactor_closed = closed
            self._emit(SetContactor(evse.id, closed))

    def power_off(self, evse: Evse) -> None:
        # Open first: the contactor must never carry current the pilot no longer offers.
        self._set_contactor(evse, False)
        self._set_offer(evse, 0.0)

    def _may_offer(self, evse: Evse) -> bool:
        tx = evse.transaction
        pending = evse.pending
        if self.station.blocked(evse) or not evse.pilot.vehicle_present:
            return False
        if tx is not None:
            return tx.authorized and tx.stopping is None and not tx.suspended_by_csms
        # A session that begins with the first energy: the vehicle must be offered current
        # before it can ask for it.
        return pending is not None and pending.authorized and self._starts_at_energy()

    def offers(self, now: float) -> dict[int, Offer]:
        """What each EVSE that may draw current is offered now, the station's supply shared."""
        demands = []
        for evse in self.station.evses.values():
            if not self._may_offer(evse):
                continue
            tx = evse.transaction
            if tx is not None:
                demands.append(Demand(evse.id, tx.ref, tx.started_at, tx.started_at))
            else:
                assert evse.pending is not None
                demands.append(Demand(evse.id, None, None, evse.pending.since))
        return self.limits.allocate(demands, now)

    def plan(self, evse: Evse, now: float,
             offers: dict[int, Offer] | None = None) -> tuple[float, bool]:
        """The offer and contactor position the rules call for now."""
        if not self._may_offer(evse):
            return 0.0, False
        offer = (offers if offers is not None else self.offers(now))[evse.id].amps
        return offer, evse.pilot.wants_power and offer > 0

    def update_power(self, evse: Evse, now: float) -> None:
        """Offer current only to an authorized session whose vehicle is plugged in, close only
        when it asks for power; open in every other case. Every EVSE is looked at, since a
        change on one moves the others' shares of the supply."""
        self.refresh_power(now)

    def refresh_power(self, now: float) -> None:
        for _ in range(3):  # a session that starts here may bring its own limit (TxProfile)
            offers = self.offers(now)
            evses = list(self.station.evses.values())
            planned = {e.id: self.plan(e, now, offers) for e in evses}
            # Lowered offers first: the sessions' sum stays within the supply between steps.
            evses.sort(key=lambda e: planned[e.id][0] >= e.offered_amps)
            started = False
            for evse in evses:
                had = evse.transaction
                plan = self._within_supply(evse, planned[evse.id], now)
                self._apply(evse, now, plan, offers.get(evse.id))
                started = started or (had is None and evse.transaction is not None)
            if not started:
                return

    def _within_supply(self, evse: Evse, plan: tuple[float, bool],
                       now: float) -> tuple[float, bool]:
        """A raise waits while vehicles just offered less may still draw their old current
        (IEC 61851-1 gives them FOLLOW_TIME): the supply is not exceeded even then."""
        amps, close = plan
        if amps <= evse.offered_amps or len(self.station.evses) == 1:
            return plan
        others = [e for e in self.station.evses.values() if e is not evse]
        # An open contactor carries nothing, whatever the vehicle was offered before.
        drawn = sum(max(e.offered_amps, e.former_offer
                        if now < e.former_until and e.contactor_closed else 0.0)
                    for e in others)
        room = self.limits.at(0, now).amps - drawn
        if amps <= room + 1e-6:  # shares are sums of floats
            return plan
        waiting = [e.former_until for e in others if now < e.former_until]
        if waiting:
            # When those vehicles' time to follow is up, the raise can be made. (With none
            # waiting, the others' offers themselves leave no room: any change to them comes
            # with an input that plans again.)
            self.limits.look_again_at(min(waiting))
        held = max(evse.offered_amps, room)
        if held < MIN_OFFER:
            return 0.0, False
        return held, close and held > 0

    def _apply(self, evse: Evse, now: float, plan: tuple[float, bool],
               offer: Offer | None) -> None:
        amps, close = plan
        source = offer.source if offer is not None else LimitSource.HARDWARE
        evse.share_cut = offer is not None and offer.cut
        if source is not evse.limit_source:
            # Also when its session ends: what limited it no longer does (2.0.1
            # ClearedChargingLimit).
            evse.limit_source = source
            self._emit(ChargingLimitChanged(evse.id, offer.amps if offer else 0.0, source))
        if amps <= 0:
            self.power_off(evse)
            return
        if close and evse.transaction is None:
            self.start(evse, now, Trigger.CHARGING_STATE_CHANGED)
            if evse.transaction is None:
                self.power_off(evse)  # the start could not be made (a stale meter)
            # Closed on the next pass of refresh_power, planned with the profile the start
            # may have brought (a remote start's TxProfile): never on this plan.
            return
        before = evse.offered_amps
        if amps < before:
            # Its vehicle may go on drawing `before` for a while: remembered for the others.
            if now >= evse.former_until:
                evse.former_offer = 0.0
            evse.former_offer = max(evse.former_offer, before)
            evse.former_until = now + FOLLOW_TIME
        self._set_offer(evse, amps)
        self._set_contactor(evse, close)
        if evse.transaction is not None and before > 0 and self.settings.report_rate_changes \
                and self._significant(before, amps):
            self.update(evse, Trigger.CHARGING_RATE_CHANGED, now)

    def _significant(self, before: float, after: float) -> bool:
        return abs(after - before) > before * self.settings.limit_change_significance / 100

    # ---- start points ------------------------------------------------------------------------

    def _starts_at_energy(self) -> bool:
        return self.settings.start_points <= {TxPoint.ENERGY_TRANSFER}

    def start_due(self, evse: Evse) -> bool:
        points = self.settings.start_points
        plugged = evse.pilot.vehicle_present
        authorized = evse.pending is not None and evse.pending.authorized
        return (
            (TxPoint.EV_CONNECTED in points and plugged)
            or (TxPoint.AUTHORIZED in points and authorized)
            or (TxPoint.POWER_PATH_CLOSED in points and plugged and authorized)
        )

    def start(self, evse: Evse, now: float, trigger: Trigger) -> None:
        if evse.reading_stale:
            # No session without a meter start the meter really showed: wait for a reading.
            return
        pending = evse.pending
        authorized = pending is not None and pending.authorized
        tx = Transaction(
            ref=self._new_ref(), evse_id=evse.id, connector_id=evse.active_connector,
            started_at=now, meter_start_wh=evse.energy(),
            token=pending.token if authorized and pending else None,
            group=pending.group if authorized and pending else None,
            authorized=authorized,
            remote_start_id=pending.remote_start_id if authorized and pending else None,
            reservation_id=self.reservations.started_with(pending) if authorized else None,
        )
        tx.vehicle_seen = evse.pilot.vehicle_present
        tx.next_update_at = now + self.settings.update_interval
        tx.next_history_at = now + self.settings.history_interval
        samples: tuple[Sample, ...] = ()
        if evse.reading is not None:
            begin = evse.sample(now, ReadingContext.TRANSACTION_BEGIN)
            tx.history.append(begin)
            samples = (begin,)
        if authorized and pending is not None:
            self._bind_profile(pending, tx, evse)
        if authorized:
            evse.pending = None
        evse.finishing = False
        evse.transaction = tx
        # Recorded (durably, by the shell) before any current is offered.
        self.event(TxEventKind.STARTED, evse, tx, now, trigger, authorized_now=authorized,
                   samples=samples)

    def _bind_profile(self, pending: PendingAuth, tx: Transaction, evse: Evse) -> None:
        """The profile a remote start carried is its transaction's from now on."""
        if pending.profile is not None:
            self.limits.install(replace(pending.profile, transaction=tx.ref, evse_id=evse.id))
            self._emit(ChargingProfilesChanged(tuple(self.limits.profiles.values())))

    # ---- authorization of a session ----------------------------------------------------------

    def authorize(self, evse: Evse, now: float) -> None:
        """Decide on the token waiting at this EVSE, or ask the CSMS."""
        assert evse.pending is not None
        token = evse.pending.token
        if self.station.online:
            known = self.auth.pre_authorized(token, now, evse.id)
            if known is not None:
                self.authorized(evse, known, now)
            else:
                self._emit(RequestAuthorization(token))
            return
        self.decide_offline(evse, now)

    def decide_offline(self, evse: Evse, now: float) -> None:
        assert evse.pending is not None
        verdict = self.auth.offline_verdict(evse.pending.token, now, evse.id)
        if verdict.valid_at(now, evse.id):
            self.authorized(evse, verdict, now)
        else:
            self.rejected(evse, now)

    def authorized(self, evse: Evse, info: AuthInfo, now: float) -> None:
        pending = evse.pending
        assert pending is not None
        # Only now is the token's group known, which may be what lets it use a reserved EVSE.
        allowed, reservation = self.reservations.admit(evse, pending.token, info.group)
        if not allowed:
            self.rejected(evse, now)  # the EVSE is kept for another driver's reservation
            return
        pending.authorized = True
        pending.group = info.group
        pending.since = now  # the connection timeout counts from the authorization
        if reservation is not None:
            self.reservations.claim(reservation, pending)
        trigger = Trigger.REMOTE_START if pending.remote else Trigger.AUTHORIZED
        tx = evse.transaction
        if tx is not None and not tx.authorized and tx.stopping is None:
            # The session began with the plug; now it is someone's.
            tx.token, tx.group, tx.authorized = pending.token, pending.group, True
            tx.remote_start_id = pending.remote_start_id
            tx.reservation_id = self.reservations.started_with(pending)
            self._bind_profile(pending, tx, evse)
            evse.pending = None
            self.update(evse, trigger, now, authorized_now=True)
        elif tx is None and self.start_due(evse):
            self.start(evse, now, trigger)
        self.update_power(evse, now)

    def rejected(self, evse: Evse, now: float) -> None:
        evse.pending = None
        self.update_power(evse, now)

    def pick_evse(self, wanted: int | None, token: IdToken | None = None,
                  now: float = 0.0) -> Evse | None:
        """Where a token presented at the station (or for an EVSE) goes: where a car already
        waits for a card, else an idle EVSE. Reservations narrow that for `token`: an EVSE
        reserved for it comes before one free for anyone, and one only its group may open
        (known once its authorization is) after both."""
        evses = self.station.evses
        candidates = [evses[wanted]] if wanted in evses else list(evses.values())
        free = [e for e in candidates if self.station.usable(e) and (
            e.transaction is None or (not e.transaction.authorized
                                      and e.transaction.stopping is None))]
        known = self.auth.known(token, now) if token is not None else None
        ranked: list[tuple[int, int, Evse]] = []
        for e in free:
            if e.pilot.vehicle_present and e.pending is None:
                place = 0  # a car already waits for a card here
            elif e.pending is None and not e.pilot.vehicle_present and not e.finishing:
                place = 1
            else:
                continue
            standing = 1 if token is None else self.reservations.prospect(
                e, token, known.group if known else None, group_known=known is not None)
            if standing is not None:
                ranked.append((place, standing, e))
        return min(ranked, key=lambda r: r[:2])[2] if ranked else None

    def token_presented(self, token: IdToken, evse_id: int | None, now: float) -> None:
        # A second tap of the card (or one of its group) ends that card's session.
        for evse in self.station.evses.values():
            tx = evse.transaction
            if tx is not None and tx.authorized and tx.stopping is None and \
                    token.same_as(tx.token):
                self.deauthorize(evse, StopReason.LOCAL, Trigger.STOP_AUTHORIZED, now,
                                 by=token)
                return
        grouped = [e for e in self.station.evses.values() if e.transaction is not None
                   and e.transaction.authorized and e.transaction.group is not None
                   and e.transaction.stopping is None]
        if grouped:
            known = self.auth.known(token, now)
            if known is not None and known.valid_at(now) and known.group is not None:
                for evse in grouped:
                    assert evse.transaction is not None
                    if known.group.same_as(evse.transaction.group):
                        self.deauthorize(evse, StopReason.LOCAL, Trigger.STOP_AUTHORIZED, now,
                                         by=token)
                        return
        if any(e.pending is not None and e.pending.token.same_as(token)
               for e in self.station.evses.values()):
            return  # the same card again while we wait for the car: nothing new
        target = self.pick_evse(evse_id, token, now)
        if target is None:
            if grouped and self.station.online:
                # Only the CSMS knows whether this card shares a group with a running session.
                self._stop_requests[token.key] = grouped[0].id
                self._emit(RequestAuthorization(token))
            return
        target.pending = PendingAuth(token, now)
        self.authorize(target, now)

    def authorization_result(self, token: IdToken, info: AuthInfo | None, now: float) -> None:
        """The CSMS's answer to an authorization request; None when none could be had."""
        if info is not None:
            self.auth.learn(token, info, now)
        stop_evse = self._stop_requests.pop(token.key, None)
        if stop_evse is not None:
            evse = self.station.evses[stop_evse]
            tx = evse.transaction
            if (tx is not None and info is not None and info.status is AuthStatus.ACCEPTED
                    and info.group is not None and info.group.same_as(tx.group)):
                self.deauthorize(evse, StopReason.LOCAL, Trigger.STOP_AUTHORIZED, now,
                                 by=token)
        for evse in self.station.evses.values():
            pending = evse.pending
            if pending is None or pending.authorized or not pending.token.same_as(token):
                continue
            if info is None:
                self.decide_offline(evse, now)
            elif info.valid_at(now, evse.id):
                self.authorized(evse, info, now)
            else:
                self.rejected(evse, now)

    def connection_lost(self, now: float) -> None:
        # Authorization requests in flight will not be answered: decide with what we know.
        for evse in self.station.evses.values():
            if evse.pending is not None and not evse.pending.authorized:
                self.decide_offline(evse, now)
        self._stop_requests.clear()

    def transaction_authorization(self, ref: str, info: AuthInfo, now: float) -> None:
        """The CSMS's verdict on the token of a running transaction (1.6
        StartTransaction.conf, 2.0.1 TransactionEventResponse)."""
        evse = self.find(ref)
        if evse is None or evse.transaction is None:
            return
        tx = evse.transaction
        if info.group is not None:
            tx.group = info.group  # a session started offline learns its card's group now
        if tx.token is not None:
            self.auth.learn(tx.token, info, now)
        if info.status is AuthStatus.ACCEPTED or tx.suspended_by_csms or tx.stopping:
            return
        allowance = self.settings.max_energy_on_invalid_id
        cap = tx.meter_start_wh + (allowance or 0.0)
        if self.settings.stop_on_invalid_id:
            self.deauthorize(evse, StopReason.DE_AUTHORIZED, Trigger.DEAUTHORIZED, now)
        elif allowance and evse.energy(tx.meter_start_wh) < cap:
            tx.energy_cap_wh = cap  # MaxEnergyOnInvalidId: the rest it may still take
        else:
            tx.suspended_by_csms = True
            self.update_power(evse, now)
            self.update(evse, Trigger.DEAUTHORIZED, now)

    def find(self, ref: str) -> Evse | None:
        for evse in self.station.evses.values():
            if evse.transaction is not None and evse.transaction.ref == ref:
                return evse
        return None

    # ---- stop points -------------------------------------------------------------------------

    def deauthorize(self, evse: Evse, reason: StopReason, trigger: Trigger, now: float,
                    by: IdToken | None = None) -> None:
        """Charging is no longer allowed; the transaction ends now, or at the unplug when it
        stops only where the vehicle leaves."""
        tx = evse.transaction
        assert tx is not None
        if self.settings.stop_points & _ENDS_ON_DEAUTHORIZATION or not evse.pilot.vehicle_present:
            self.end(evse, reason, trigger, now, by=by)
            return
        tx.stopping = (reason, by)
        self.refresh_power(now)  # off here; its share of the supply goes to the others
        self.update(evse, trigger, now)

    def vehicle_left(self, evse: Evse, now: float) -> None:
        tx = evse.transaction
        if tx is None:
            return
        points = self.settings.stop_points
        if tx.stopping is not None:
            reason, by = tx.stopping
            self.end(evse, reason, Trigger.EV_COMMUNICATION_LOST, now, by=by)
        elif points & _ENDS_ON_UNPLUG or (TxPoint.AUTHORIZED in points
                                          and self.settings.stop_on_ev_disconnect):
            self.end(evse, StopReason.EV_DISCONNECTED, Trigger.EV_COMMUNICATION_LOST, now)
        else:
            self.power_off(evse)
            self.update(evse, Trigger.EV_COMMUNICATION_LOST, now)

    def vehicle_arrived(self, evse: Evse, now: float) -> None:
        tx = evse.transaction
        if tx is not None:
            # A session that began with the card (or survived an unplug) has its car now.
            tx.vehicle_seen = True
            self.update_power(evse, now)
            self.update(evse, Trigger.CABLE_PLUGGED_IN, now)
            return
        if not self.station.usable(evse):
            return
        token = self.settings.free_vend_token
        # Free vend charges whoever plugs in, except on an EVSE kept for a reservation: there
        # only the reservation's own token, presented, opens it.
        if evse.pending is None and token is not None and \
                self.reservations.admit(evse, token, None) == (True, None):
            evse.pending = PendingAuth(token, now, authorized=True)
        if self.start_due(evse):
            self.start(evse, now, Trigger.CABLE_PLUGGED_IN)

    def energy_stopped(self, evse: Evse, now: float) -> None:
        """For a transaction that ends with the energy transfer (stop point ENERGY_TRANSFER)."""
        tx = evse.transaction
        assert tx is not None
        reason = StopReason.STOPPED_BY_EV if evse.pilot.vehicle_present else \
            StopReason.EV_DISCONNECTED
        self.end(evse, reason, Trigger.CHARGING_STATE_CHANGED, now)

    def end(
        self, evse: Evse, reason: StopReason, trigger: Trigger, now: float,
        cause: Fault | None = None, by: IdToken | None = None,
    ) -> None:
        tx = evse.transaction
        assert tx is not None
        evse.transaction = None
        end_samples: list[Sample] = []
        if evse.reading is not None and not evse.reading_stale:
            # Before the power goes off: the sample shows what the session was offered.
            end_samples.append(evse.sample(now, ReadingContext.TRANSACTION_END))
        self.power_off(evse)
        evse.finishing = evse.pilot.vehicle_present
        # Without a reading the register cannot have gone below where the session began.
        meter_stop = max(evse.energy(default=tx.meter_start_wh), tx.meter_start_wh)
        self.event(TxEventKind.ENDED, evse, tx, now, trigger,
                   samples=(*tx.history, *end_samples), reason=reason, cause=cause,
                   stopped_by=by, meter_stop_wh=meter_stop)
        if self.limits.remove(self.limits.bound_to(tx.ref)):
            # A transaction profile ends with its transaction (1.6 3.13.4, 2.0.1 K01.FR.05).
            self._emit(ChargingProfilesChanged(tuple(self.limits.profiles.values())))
        self.after_session(evse, now)
        self.refresh_power(now)  # its share of the supply goes to the sessions left

    def after_session(self, evse: Evse, now: float) -> None:
        """What waited for the session's end: an availability change, a reset."""
        if self.availability.apply_scheduled(evse):
            evse.pending = None
            self.update_power(evse, now)
        if evse.reset_pending:
            evse.reset_pending = False
            self._emit(ResetEvse(evse.id))
        if self.station.reset_pending is not None and not self.station.transactions():
            self._emit(ResetNow(self.station.reset_pending))

    def forced_end(self, evse: Evse, fault: Fault, now: float) -> None:
        reason = StopReason.EMERGENCY_STOP if fault is Fault.EMERGENCY_STOP else StopReason.FAULT
        self.end(evse, reason, Trigger.ABNORMAL_CONDITION, now, cause=fault)

    def unlock(self, evse: Evse, connector_id: int, now: float) -> None:
        if evse.transaction is not None and evse.transaction.connector_id == connector_id:
            self.end(evse, StopReason.UNLOCK_COMMAND, Trigger.UNLOCK_COMMAND, now)

    def unplugged_unlock(self, evse: Evse) -> None:
        if self.settings.unlock_on_ev_disconnect:
            self._emit(UnlockConnector(evse.id, evse.active_connector))
