"""Is the vehicle drawing more than the pilot offers? Told, not ignored, when it persists.

IEC 61851-1 gives a vehicle 5 s to follow a lower pilot offer. A vehicle that keeps drawing
clearly more afterwards (by 1 A, or 10 % of the offer, whichever is more: meters and chargers
round) defeats the load balancing the limit serves, so after a further grace the EVSE reports
a non-blocking EV_OVER_CURRENT fault, which every version reports as it reports faults, and
clears it once the vehicle complies. Tripping for real overcurrent is the breaker's job.
"""

from __future__ import annotations

from cpagent.core.evse import Evse
from cpagent.core.limits import FOLLOW_TIME
from hal.interfaces import Fault, MeterReading

GRACE = 10.0  # seconds an overrun must last, after that, before it is reported
MARGIN_AMPS = 1.0
MARGIN_SHARE = 0.10


class OverrunWatch:
    def __init__(self) -> None:
        self._since: dict[int, float] = {}  # EVSE -> when its overrun began
        self._offer: dict[int, tuple[float, float]] = {}  # EVSE -> (offer, since when)

    def check(self, evse: Evse, reading: MeterReading, now: float) -> bool:
        """Update the EVSE's EV_OVER_CURRENT fault from this reading; True when it changed."""
        offer = evse.offered_amps if evse.contactor_closed else 0.0
        known, since = self._offer.get(evse.id, (None, now))
        if known != offer:
            self._offer[evse.id] = (offer, now)
            since = now
        measured = max(reading.current_a) if reading.current_a else None
        over = (measured is not None and offer > 0 and now - since >= FOLLOW_TIME
                and measured > offer + max(MARGIN_AMPS, offer * MARGIN_SHARE))
        if not over:
            self._since.pop(evse.id, None)
            return evse.faults.pop(Fault.EV_OVER_CURRENT, None) is not None
        began = self._since.setdefault(evse.id, now)
        if now - began < GRACE or Fault.EV_OVER_CURRENT in evse.faults:
            return False
        evse.faults[Fault.EV_OVER_CURRENT] = (
            f"the vehicle draws {measured:.1f} A of {offer:.1f} A offered")
        return True
