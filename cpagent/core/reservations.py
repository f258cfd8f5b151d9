"""Reservations: EVSEs kept for one driver until a time, in terms every OCPP version shares.

A reservation names one EVSE, or none: then the station keeps *some* EVSE for it, so that
however the others are taken one is left when its driver comes (1.6 connector 0, 2.0.1
without evseId). With several such reservations, and connector types that not every EVSE
has, which EVSEs that leaves to everyone else is a matching: each open station-wide
reservation needs an EVSE of its own among those nobody has claimed, one with the connector
it asked for. An EVSE is kept from a stranger, and shows Reserved, exactly when the
reservations could not all be placed without it; with plain numbers that is "every free EVSE
is Reserved once the free ones are as many as the reservations" (2.0.1 H01, the OCTT's
TC_H_14).

Who may take a kept EVSE: the reservation's token, or a token whose group (1.6 parentIdTag,
2.0.1 groupIdToken, as its authorization tells) is the reservation's group. 1.6 §5.13 words
it as "the incoming idTag or the parent idTag match the idTag or parent idTag of the
reservation"; we take the two pairs 2.0.1 H03 also names (token with token, group with
group), so a token that is plainly not the reservation's is refused without waiting for an
authorization, as the OCTT expects of a RequestStartTransaction for another token.

A reservation ends:
- used: in 1.6 when its transaction starts (§5.13 (1), StartTransaction carries its id); in
  2.0.1 as soon as its token is accepted at the EVSE (H03.FR.09), whether or not a
  transaction follows. No message says so in either version beyond the transaction's own.
- expired (§5.13 (2); 2.0.1 H04 tells the CSMS with ReservationStatusUpdate Expired);
- cancelled by the CSMS (1.6 §5.2, 2.0.1 H02: only the status tells, no update);
- removed, when the EVSE it names (or the capacity a station-wide one needs) becomes faulted
  or unavailable: 1.6 §5.13 (3) ends it then, and 2.0.1 does too and tells the CSMS with
  ReservationStatusUpdate Removed (the OCTT's TC_H_20 and TC_H_21). Once the fault clears the
  EVSE is Available, not Reserved again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cpagent.core.actions import Action, ReservationEnded, ReservationsChanged
from cpagent.core.evse import Evse, PendingAuth, Station
from cpagent.core.model import (
    CoreSettings,
    IdToken,
    Reservation,
    ReservationEnd,
    ReserveResult,
    TokenType,
)


def matches(reservation: Reservation, token: IdToken, group: IdToken | None) -> bool:
    """The token may use the reservation: it is the reservation's token, or of its group."""
    return token.same_as(reservation.token) or (
        reservation.group is not None and reservation.group.same_as(group))


def _fits(reservation: Reservation, evse_id: int) -> bool:
    return reservation.fitting_evses is None or evse_id in reservation.fitting_evses


def _unplaced(reservations: list[Reservation], evse_ids: list[int]) -> list[Reservation]:
    """The reservations that find no EVSE of their own among `evse_ids`, each EVSE serving
    one at most: a bipartite matching by augmenting paths, in the reservations' order, so
    the later ones are those left out."""
    holder: dict[int, Reservation] = {}

    def place(reservation: Reservation, tried: set[int]) -> bool:
        for evse_id in evse_ids:
            if evse_id in tried or not _fits(reservation, evse_id):
                continue
            tried.add(evse_id)
            if evse_id not in holder or place(holder[evse_id], tried):
                holder[evse_id] = reservation
                return True
        return False

    return [r for r in reservations if not place(r, set())]


class Reservations:
    """The station's open reservations, and what they allow at each EVSE."""

    def __init__(self, station: Station, settings: CoreSettings,
                 emit: Callable[[Action], None], stored: Iterable[Reservation] = ()) -> None:
        self.station = station
        self.settings = settings
        self._emit = emit
        # In the order they were made: an older station-wide reservation keeps its place.
        # One for an EVSE the station no longer has ends at the first review, as removed.
        self._open: dict[int, Reservation] = {r.id: r for r in stored}
        station.kept_for_reservation = self.keeps

    def all(self) -> list[Reservation]:
        return list(self._open.values())

    def get(self, reservation_id: int) -> Reservation | None:
        return self._open.get(reservation_id)

    # ---- the state of EVSEs, as reservations see it ------------------------------------------

    def _in_service(self, evse: Evse) -> bool:
        """Neither faulted nor unavailable: what a reservation can be for."""
        station = self.station
        return (station.operative and evse.operative
                and any(c.operative for c in evse.connectors.values())
                and not station.blocked(evse))

    @staticmethod
    def _claimed(evse: Evse) -> bool:
        """Taken by a driver: an authorized session, or an accepted card awaiting its car. A car
        plugged in without one, or a card still being checked, takes nothing."""
        tx = evse.transaction
        pending = evse.pending
        return (tx is not None and tx.authorized) or (pending is not None and pending.authorized)

    @staticmethod
    def _idle(evse: Evse) -> bool:
        return (evse.transaction is None and evse.pending is None
                and not evse.pilot.vehicle_present and not evse.finishing)

    def _held(self) -> set[int]:
        """Reservations an accepted card holds while its car is awaited: where they end only
        with the transaction (1.6) they stay open meanwhile, but are no longer waiting."""
        return {e.pending.reservation_id for e in self.station.evses.values()
                if e.pending is not None and e.pending.authorized
                and e.pending.reservation_id is not None}

    def _waiting(self, others: Mapping[int, Reservation] | None = None) \
            -> tuple[dict[int, Reservation], list[Reservation]]:
        """The reservations still waiting for their drivers: by EVSE those for one, and the
        station-wide ones in order."""
        held = self._held()
        chosen = (self._open if others is None else others).values()
        explicit = {r.evse_id: r for r in chosen if r.evse_id is not None and r.id not in held}
        wide = [r for r in chosen if r.evse_id is None and r.id not in held]
        return explicit, wide

    def _pool(self, explicit: Mapping[int, Reservation]) -> list[int]:
        """The EVSEs the station-wide reservations may count on: in service, claimed by
        nobody, and not reserved by themselves."""
        return [e.id for e in self.station.evses.values()
                if self._in_service(e) and not self._claimed(e) and e.id not in explicit]

    # ---- who may use an EVSE -----------------------------------------------------------------

    def keeps(self, evse: Evse) -> bool:
        """The EVSE is kept for a reservation and its driver has not claimed it: it shows
        Reserved, and no one else may begin charging there."""
        if not self._open or not self._in_service(evse) or self._claimed(evse):
            return False
        explicit, wide = self._waiting()
        if evse.id in explicit:
            return True
        pool = [e for e in self._pool(explicit) if e != evse.id]
        return bool(wide) and bool(_unplaced(wide, pool))

    def admit(self, evse: Evse, token: IdToken, group: IdToken | None) \
            -> tuple[bool, Reservation | None]:
        """May `token` (of `group`) take this EVSE, and with which of its reservations?"""
        if not self._open:
            return True, None
        explicit, wide = self._waiting()
        here = explicit.get(evse.id)
        if here is not None:
            return (True, here) if matches(here, token, group) else (False, None)
        mine = next((r for r in wide if matches(r, token, group) and _fits(r, evse.id)), None)
        rest = [r for r in wide if r is not mine]
        pool = [e for e in self._pool(explicit) if e != evse.id]
        return not _unplaced(rest, pool), mine

    def prospect(self, evse: Evse, token: IdToken, group: IdToken | None, *,
                 group_known: bool) -> int | None:
        """How a token presented for this EVSE stands: 0 the EVSE is reserved for it, 1 it may
        take it, 2 only if its authorization shows a reservation's group, None not at all."""
        allowed, mine = self.admit(evse, token, group)
        if allowed:
            return 0 if mine is not None and mine.evse_id == evse.id else 1
        if not group_known and any(self.admit(evse, token, r.group)[0]
                                   for r in self._open.values() if r.group is not None):
            return 2
        return None

    def claim(self, reservation: Reservation, pending: PendingAuth) -> None:
        """An accepted token takes the EVSE with its reservation. 2.0.1 considers the
        reservation used there and then (H03.FR.09); 1.6 only once the transaction starts."""
        pending.reservation_id = reservation.id
        if not self.settings.reservation_ends_at_start:
            self._end([reservation], ReservationEnd.USED)

    def started_with(self, pending: PendingAuth | None) -> int | None:
        """The reservation a transaction starting for `pending` reports (1.6
        StartTransaction.reservationId, 2.0.1 TransactionEvent reservationId); where it ends
        with the start, it ends now."""
        if pending is None or pending.reservation_id is None:
            return None
        reservation_id = pending.reservation_id
        if self.settings.reservation_ends_at_start:
            reservation = self._open.get(reservation_id)
            if reservation is None:
                return None  # expired or cancelled while its car was awaited
            self._end([reservation], ReservationEnd.USED)
        return reservation_id

    # ---- the CSMS's requests -----------------------------------------------------------------

    def reserve(self, wanted: Reservation, now: float,
                connector_types: Mapping[int, Collection[str]] | None = None) -> ReserveResult:
        """Make (or replace, by id) a reservation. `connector_types`: the types of each EVSE's
        connectors, where the caller knows them; without, any EVSE fits any type."""
        evses = self.station.evses
        if wanted.expiry <= now or (wanted.evse_id is not None and wanted.evse_id not in evses):
            return ReserveResult.REJECTED
        fitting = None
        if wanted.connector_type is not None and connector_types is not None:
            fitting = frozenset(e for e, kinds in connector_types.items()
                                if e in evses and wanted.connector_type in kinds)
        reservation = replace(wanted, fitting_evses=fitting)
        candidates = [e for e in evses.values()
                      if wanted.evse_id in (None, e.id) and _fits(reservation, e.id)]
        if not candidates:
            return ReserveResult.REJECTED  # no connector of that type (there)
        # A reservation replaced by id (1.6 §5.13, 2.0.1 H01) is not in its own way;
        # should the new one fail, the old one stays as it was.
        others = {i: r for i, r in self._open.items() if i != wanted.id}
        answer = self._judge(reservation, candidates, others)
        if answer is ReserveResult.ACCEPTED:
            self._open.pop(wanted.id, None)
            self._open[wanted.id] = reservation
            self._changed()
        return answer

    def _judge(self, reservation: Reservation, candidates: list[Evse],
               others: Mapping[int, Reservation]) -> ReserveResult:
        in_service = [e for e in candidates if self._in_service(e)]
        if not in_service:
            if all(self.station.blocked(e) for e in candidates):
                return ReserveResult.FAULTED
            return ReserveResult.UNAVAILABLE
        explicit, wide = self._waiting(others)
        # Only an EVSE free now can be reserved: nobody knows when a busy one will be.
        free = frozenset(e.id for e in in_service if self._idle(e) and e.id not in explicit)
        if not free:
            return ReserveResult.OCCUPIED  # in use, or reserved for another reservation
        pool = self._pool(explicit)
        if reservation.evse_id is not None:
            # Nor may it be the EVSE the station-wide reservations still need.
            rest = [e for e in pool if e != reservation.evse_id]
            return ReserveResult.OCCUPIED if _unplaced(wide, rest) else ReserveResult.ACCEPTED
        # Any EVSE: one free now for it, while every earlier one keeps its own.
        newcomer = replace(reservation, fitting_evses=free)
        return ReserveResult.OCCUPIED if _unplaced([*wide, newcomer], pool) \
            else ReserveResult.ACCEPTED

    def cancel(self, reservation_id: int) -> bool:
        reservation = self._open.get(reservation_id)
        if reservation is None:
            return False
        self._end([reservation], ReservationEnd.CANCELLED)
        return True

    # ---- after every input -------------------------------------------------------------------

    def review(self, now: float) -> None:
        """End what expired, and what can no longer be kept: the reserved EVSE faulted or
        unavailable, or too few EVSEs left in service for the station-wide ones."""
        if not self._open:
            return
        self._end([r for r in self._open.values() if r.expiry <= now], ReservationEnd.EXPIRED)
        explicit, _ = self._waiting()
        evses = self.station.evses
        self._end([r for e, r in explicit.items() if e not in evses or not self._in_service(
            evses[e])], ReservationEnd.REMOVED)
        explicit, wide = self._waiting()
        self._end(_unplaced(wide, self._pool(explicit)), ReservationEnd.REMOVED)

    def _end(self, reservations: list[Reservation], reason: ReservationEnd) -> None:
        for reservation in reservations:
            del self._open[reservation.id]
            self._emit(ReservationEnded(reservation.id, reason))
        if reservations:
            self._changed()

    def _changed(self) -> None:
        self._emit(ReservationsChanged(tuple(self._open.values())))


# ---- as stored: plain JSON values -----------------------------------------------------------


def _token_record(token: IdToken | None) -> dict | None:
    if token is None:
        return None
    return {"value": token.value, "type": token.type.value if token.type else None}


def _token_of(data: Any) -> IdToken | None:
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        return None
    kind = data.get("type")
    return IdToken(data["value"], TokenType(kind) if kind else None)


def reservation_record(reservation: Reservation) -> dict:
    return {
        "id": reservation.id, "expiry": reservation.expiry,
        "token": _token_record(reservation.token), "group": _token_record(reservation.group),
        "evse_id": reservation.evse_id, "connector_type": reservation.connector_type,
        "fitting_evses": None if reservation.fitting_evses is None
        else sorted(reservation.fitting_evses),
    }


def reservation_of(record: Any) -> Reservation | None:
    """A stored reservation, or None for a record that cannot be one (written by a build that
    stored something else): losing it is better than not starting."""
    try:
        token = _token_of(record["token"])
        if token is None:
            return None
        fitting = record.get("fitting_evses")
        return Reservation(
            int(record["id"]), float(record["expiry"]), token, _token_of(record.get("group")),
            None if record.get("evse_id") is None else int(record["evse_id"]),
            record.get("connector_type"),
            None if fitting is None else frozenset(int(e) for e in fitting))
    except (KeyError, TypeError, ValueError):
        return None
