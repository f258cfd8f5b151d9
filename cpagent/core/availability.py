"""Availability at three levels: the station, an EVSE, a connector.

A change to inoperative waits for a running session to end (Scheduled) but is stored at once,
so a restart that ends the session (PowerLoss) applies it; a change back before the session
ends cancels it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cpagent.core.actions import Action, AvailabilityChanged
from cpagent.core.evse import Evse, Station
from cpagent.core.model import Availability


class _Level(Protocol):
    operative: bool
    scheduled_operative: bool | None


class Availabilities:
    def __init__(self, station: Station, emit: Callable[[Action], None]) -> None:
        self.station = station
        self._emit = emit

    def change(self, evse_id: int, connector_id: int | None, operative: bool) \
            -> tuple[Availability, list[Evse]]:
        """Returns the answer and the EVSEs whose power and pending cards must be reviewed."""
        station = self.station
        if evse_id == 0:
            busy = bool(station.transactions())
            if station.operative != operative:
                station.operative = operative
                self._emit(AvailabilityChanged(0, 0, operative))
            for evse in station.evses.values():
                if evse.transaction is not None and not operative:
                    self._schedule(evse, evse.id, 0, operative)
                else:
                    self._apply(evse, evse.id, 0, operative)
            answer = Availability.SCHEDULED if busy and not operative else Availability.ACCEPTED
            return answer, list(station.evses.values())
        evse = station.evse(evse_id)
        level: _Level = evse if connector_id in (None, 0) else evse.connector(connector_id)
        connector = 0 if connector_id is None else connector_id
        in_use = evse.transaction is not None and (
            connector == 0 or evse.transaction.connector_id == connector)
        if in_use and not operative:
            self._schedule(level, evse_id, connector, operative)
            return Availability.SCHEDULED, [evse]
        self._apply(level, evse_id, connector, operative)
        return Availability.ACCEPTED, [evse]

    def _schedule(self, level: _Level, evse_id: int, connector_id: int,
                  operative: bool) -> None:
        level.scheduled_operative = operative
        # Stored now: a restart ends the session (PowerLoss), and the change then applies.
        self._emit(AvailabilityChanged(evse_id, connector_id, operative))

    def _apply(self, level: _Level, evse_id: int, connector_id: int, operative: bool) -> None:
        stored_differs = level.scheduled_operative is not None and \
            level.scheduled_operative != operative
        level.scheduled_operative = None
        if stored_differs and level.operative == operative:
            self._emit(AvailabilityChanged(evse_id, connector_id, operative))  # cancelled
        if level.operative != operative:
            level.operative = operative
            self._emit(AvailabilityChanged(evse_id, connector_id, operative))

    def apply_scheduled(self, evse: Evse) -> bool:
        """At a session's end: apply what waited for it; True when something changed."""
        changed = False
        levels: list[tuple[_Level, int]] = [
            (evse, 0), *((c, c.id) for c in evse.connectors.values())]
        for level, connector_id in levels:
            if level.scheduled_operative is not None:
                self._apply(level, evse.id, connector_id, level.scheduled_operative)
                changed = True
        return changed
