"""Wall-clock time the agent can vouch for.

A board without a battery-backed clock boots in 1970 or at its last shutdown time. The agent
trusts the system clock only when the kernel says it is synchronised (NTP, GNSS, PTP); until
then it takes the CSMS's time from BootNotification.conf and keeps the difference as an
offset rather than setting the system clock (the service does not run as root). Timestamps
taken before the time was known are corrected by that offset before they are sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
# No stamp before this can be true for this software: a clock reading earlier is a board
# that booted without knowing the date.
PLAUSIBLE_FLOOR = 1_704_067_200.0  # 2024-01-01T00:00:00Z
PLAUSIBLE_CEILING = 7_258_118_400.0  # 2200-01-01T00:00:00Z
CSMS_RESOLUTION = 1.0  # many CSMSs send whole seconds: differences this small are noise
SLEW_RATE = 0.1  # a backward correction is taken in at 0.1 s per second


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
    """Time the agent can vouch for, immune to steps of the system clock.

    Until the time is known it runs on the monotonic clock from where the system clock stood
    at start. The CSMS's time is kept as an anchor plus monotonic time, so a later NTP step of
    the system clock cannot bend it either; once the kernel reports the system clock
    synchronised (auto mode), the system clock takes over. Stamps taken before the time was
    known are moved by `correction` when they are sent.
    """

    def __init__(
        self,
        source: str = "auto",
        wall: Callable[[], float] = time.time,
        synchronised: Callable[[], bool] = system_clock_synchronised,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._wall = wall
        self._monotonic = monotonic
        self._synchronised = synchronised
        self.correction = 0.0  # what to add to stamps taken before the time was known
        self._started_wall = wall()
        self._started_mono = monotonic()
        self._anchor: tuple[float, float] | None = None  # (CSMS time, monotonic) when set
        self._offset = 0.0  # corrections taken in since the anchor was set
        self._pending = 0.0  # a backward correction still to be slewed in (<= 0)
        self._slewed_at = monotonic()
        self.on_system = source == "system" or (source == "auto" and synchronised())
        self.trusted = self.on_system
        # Stamps below this were taken before the time was known (see stamp_trusted).
        self.trusted_from = float("-inf") if self.trusted else float("inf")

    def _untrusted_now(self) -> float:
        return self._started_wall + (self._monotonic() - self._started_mono)

    def process_start(self) -> float:
        """When this process started, on the best clock known now."""
        return self._started_wall + (self.correction if self.trusted else 0.0)

    def now(self) -> float:
        if self.on_system:
            return self._wall()
        if self._anchor is not None:
            true, mono = self._anchor
            now_mono = self._monotonic()
            self._slew(now_mono)
            return true + (now_mono - mono) + self._offset
        return self._untrusted_now()

    def _slew(self, now_mono: float) -> None:
        """Work a pending backward correction in gradually, so time never runs backwards."""
        elapsed = max(0.0, now_mono - self._slewed_at)
        self._slewed_at = now_mono
        if self._pending:
            step = max(self._pending, -elapsed * SLEW_RATE)
            self._offset += step
            self._pending -= step

    def stamp_trusted(self, stamp: float) -> bool:
        return self.trusted and stamp >= self.trusted_from

    def _gain_trust(self, true_now: float, why: str) -> None:
        self.correction = true_now - self._untrusted_now()
        self.trusted = True
        self.trusted_from = true_now - 0.5
        log.info("time known from %s (stamps taken before move by %+.3f s)", why,
                 self.correction)

    def check_system(self) -> float | None:
        """In auto mode, go over to the system clock once the kernel reports it synchronised.
        Returns the jump of `now()` when trust was just gained, else None."""
        if self.on_system or self.source != "auto" or not self._synchronised():
            return None
        before = self.now()
        gained = not self.trusted
        if gained:
            self._gain_trust(self._wall(), "the synchronised system clock")
        else:
            log.info("system clock synchronised: it takes over from the CSMS's time "
                     "(%+.3f s)", self._wall() - before)
        self.on_system = True
        return self.now() - before if gained else None

    def csms_time(self, csms_now: float) -> float | None:
        """Take the CSMS's time when the system clock is not synchronised; returns the jump
        of `now()` when trust was just gained, else None. A time no software of ours can run
        at (before 2024, after 2200) is ignored."""
        if self.on_system:
            return None
        if not PLAUSIBLE_FLOOR <= csms_now <= PLAUSIBLE_CEILING:
            log.warning("ignoring an implausible time from the CSMS (%.0f)", csms_now)
            return None
        if self.trusted and self._anchor is not None:
            self._correct(csms_now - self.now())
            return None
        before = self.now()
        gained = not self.trusted
        if gained:
            self._gain_trust(csms_now, "the CSMS")
        self._anchor = (csms_now, self._monotonic())
        self._offset = self._pending = 0.0
        self._slewed_at = self._anchor[1]
        return csms_now - before if gained else None

    def _correct(self, error: float) -> None:
        """A later time from the CSMS: whole-second answers jitter by up to a second, which
        is ignored; being behind is made up at once (stamps stay in order), being ahead is
        slewed out at SLEW_RATE so that no stamp is ever earlier than the one before."""
        if abs(error) <= CSMS_RESOLUTION:
            return
        if error > 0:
            self._offset += error
            self._pending = 0.0
            log.info("clock %.3f s behind the CSMS: moved forward", error)
        else:
            self._pending = error
            log.info("clock %.3f s ahead of the CSMS: slowing down to make it up", -error)


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


def system_time_zone() -> str:
    """The IANA name of the system's time zone (TZ, /etc/timezone, the /etc/localtime link),
    "UTC" when none can be found: where recurring charging profiles repeat."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        if not name:
            continue
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"
