"""Meter readings: periodic transaction updates, the samples kept for a transaction's end,
clock-aligned readings, and readings asked for.

Four schedules run side by side because 2.0.1 sets each apart (TxUpdatedInterval,
TxEndedInterval, AlignedDataCtrlr.Interval and its TxEndedInterval); 1.6 sets two of them
from one key. After a gap a schedule reports once, for its latest due time, instead of
catching up: the reading is of now, not of the gap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cpagent.core.actions import Action, MeterValuesReport
from cpagent.core.evse import Evse, Station
from cpagent.core.model import CoreSettings, ReadingContext, Trigger
from cpagent.core.sessions import Sessions


class _Aligned:
    """The next boundary of a clock-aligned interval, once the clock can be trusted."""

    def __init__(self, interval: Callable[[], float]) -> None:
        self._interval = interval
        self.next_at: float | None = None
        self._aligned_with = 0.0  # the interval next_at was computed with

    def align(self, now: float) -> None:
        interval = self._aligned_with = self._interval()
        self.next_at = (math.floor(now / interval) + 1) * interval if interval > 0 else None

    def due(self, now: float, trusted: bool) -> float | None:
        """The boundary just passed, if one was; None otherwise."""
        interval = self._interval()
        if interval <= 0 or not trusted:
            # Without a trusted clock the boundaries would be fiction; report none.
            self.next_at = None
            return None
        if self.next_at is None or interval != self._aligned_with:
            self.align(now)  # first trusted tick, or the interval was changed
            return None
        if now < self.next_at:
            return None
        boundary = math.floor(now / interval) * interval
        self.align(now)
        return boundary


class Metering:
    def __init__(self, station: Station, settings: CoreSettings, sessions: Sessions,
                 emit: Callable[[Action], None]) -> None:
        self.station = station
        self.settings = settings
        self.sessions = sessions
        self._emit = emit
        self.storage_low = False  # intermediate readings are the first thing to give up
        self.reports = _Aligned(lambda: settings.aligned_interval)
        self.history = _Aligned(lambda: settings.aligned_history_interval)

    def clock_known(self, now: float) -> None:
        # The first boundary after this moment is due even if no tick comes before it passes.
        self.reports.align(now)
        self.history.align(now)

    def fresh(self, evse: Evse) -> bool:
        return evse.reading is not None and not evse.reading_stale

    def tick(self, now: float) -> None:
        settings = self.settings
        for evse in self.station.evses.values():
            tx = evse.transaction
            if tx is None:
                continue
            if settings.update_interval > 0 and now >= tx.next_update_at:
                if self.fresh(evse) and not self.storage_low:
                    assert evse.reading is not None
                    sample = evse.sample(now, ReadingContext.PERIODIC)
                    self.sessions.update(evse, Trigger.METER_VALUE_PERIODIC, now,
                                         samples=(sample,))
                tx.next_update_at = _next(tx.next_update_at, now, settings.update_interval)
            if settings.history_interval > 0 and now >= tx.next_history_at:
                if self.fresh(evse):
                    assert evse.reading is not None
                    tx.history.append(evse.sample(now, ReadingContext.PERIODIC))
                tx.next_history_at = _next(tx.next_history_at, now, settings.history_interval)
        trusted = self.station.clock_trusted
        boundary = self.history.due(now, trusted)
        if boundary is not None:
            for evse in self.station.evses.values():
                if evse.transaction is not None and self.fresh(evse):
                    assert evse.reading is not None
                    evse.transaction.history.append(
                        evse.sample(boundary, ReadingContext.CLOCK))
        boundary = self.reports.due(now, trusted)
        if boundary is not None:
            for evse in self.station.evses.values():
                if not self.fresh(evse):
                    continue
                assert evse.reading is not None
                sample = evse.sample(boundary, ReadingContext.CLOCK)
                if evse.transaction is None:
                    self._emit(MeterValuesReport(evse.id, sample))
                elif settings.aligned_during_transaction and not self.storage_low:
                    self.sessions.update(evse, Trigger.METER_VALUE_CLOCK, now,
                                         samples=(sample,))

    def triggered(self, evse_ids: list[int], now: float, in_transaction: bool) -> int:
        """Readings the CSMS asked for: a transaction update for each running transaction
        when `in_transaction`, else a plain report. Returns how many were made."""
        made = 0
        for evse_id in evse_ids:
            evse = self.station.evse(evse_id)
            if not self.fresh(evse):
                continue
            assert evse.reading is not None
            sample = evse.sample(now, ReadingContext.TRIGGER)
            if in_transaction:
                if evse.transaction is not None:
                    self.sessions.update(evse, Trigger.TRIGGER, now, samples=(sample,))
                    made += 1
            else:
                self._emit(MeterValuesReport(evse.id, sample))
                made += 1
        return made


def _next(due: float, now: float, interval: float) -> float:
    missed = math.floor((now - due) / interval)
    return due + (missed + 1) * interval
