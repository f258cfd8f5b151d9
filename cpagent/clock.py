"""Wall-clock time the agent can vouch for.

A board without a battery-backed clock boots in 1970 or at its last shutdown time. The agent
trusts the system clock only when the kernel says it is synchronised (NTP, GNSS, PTP); until
then it takes the CSMS's time from BootNotification.conf and keeps the difference as an
offset rather than setting the system clock (the service does not run as root). Timestamps
taken before the time was known are corrected by that offset before they are sent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
# No stamp before this can be true for this software: a clock reading earlier is a board
# that booted without knowing the date.
PLAUSIBLE_FLOOR = 1_704_067_200.0  # 2024-01-01T00:00:00Z


def system_clock_synchronised() -> bool:
    """Ask the kernel (adjtimex with no modification) whether NTP has the clock in sync."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # larger than any struct timex; modes = 0
        state = libc.adjtimex(buffer)
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR)


class Clock:
    def __init__(
        self,
        source: str = "auto",
        wall: Callable[[], float] = time.time,
        synchronised: Callable[[], bool] = system_clock_synchronised,
    ) -> None:
        self.source = source
        self._wall = wall
        self.offset = 0.0
        self.correction = 0.0  # what to add to stamps taken before the time was known
        self.trusted = source == "system" or (source == "auto" and synchronised())
        self._started_wall = wall()

    def process_start(self) -> float:
        """When this process started, on the best clock known now."""
        return self._started_wall + (self.correction if self.trusted else 0.0)

    def now(self) -> float:
        return self._wall() + self.offset

    def csms_time(self, csms_now: float) -> bool:
        """Take the CSMS's time when ours is not trusted; True when trust was just gained."""
        if self.source == "system" or (self.trusted and self.source == "auto"):
            return False
        offset = csms_now - self._wall()
        gained = not self.trusted
        if gained:
            self.correction = offset - self.offset
            log.info("clock set from the CSMS (offset %+.3f s)", offset)
        self.offset = offset
        self.trusted = True
        return gained


def format_time(ts: float) -> str:
    """UTC, millisecond precision, with the Z every CSMS parses."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> float:
    """Read an OCPP date-time tolerantly (Z or offset, with or without fractions)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a CSMS that forgot the zone almost always means UTC
    return moment.timestamp()
