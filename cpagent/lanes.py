"""Device commands, one lane per device, and the safety trip that overtakes everything.

Each device (a pilot, a contactor) gets a lane of its own that applies the latest desired
value, one command at a time, each bounded in time: a pilot that hangs holds up only its own
lane, never another EVSE's contactor, never the core. The core's commands are carried out in
the order it gave them per device; an older value still waiting is replaced by a newer one,
since only the last position of a contactor matters.

A fault that blocks charging trips the EVSE at once, from the hardware event itself and before
the core hears of it: its contactor lane is told to open and its pilot lane to offer nothing,
and both are latched so that no command the core issued before it learnt of the fault can
close the contactor again. The latch is released once the core has taken the fault in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cpagent.logs import RateLimited

log = logging.getLogger(__name__)
quiet = RateLimited(log, every=30.0)

DEVICE_TIMEOUT = 5.0  # a device command that hangs must not hold its lane forever


class Lane:
    """The latest desired value for one device, applied in order."""

    def __init__(self, name: str, apply: Callable[[Any], Awaitable[None]],
                 *, safe: Any, timeout: float = DEVICE_TIMEOUT) -> None:
        self.name = name
        self._apply = apply
        self.safe = safe  # the value a trip forces (contactor open, no current)
        self.timeout = timeout
        self._wanted: Any = None
        self._has_wanted = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.latched = False
        self.applied: Any = None
        self.busy_since: float | None = None
        self.failures = 0
        self.on_applied: Callable[[Any], None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lane-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def set(self, value: Any) -> None:
        """Ask for `value`; a latched lane takes only its safe value."""
        if self.latched and value != self.safe:
            quiet.warning(f"latched-{self.name}", "%s: %r refused while a fault trip holds it",
                          self.name, value)
            return
        self._wanted, self._has_wanted = value, True
        self._wakeup.set()

    def trip(self) -> None:
        self.latched = True
        self._wanted, self._has_wanted = self.safe, True
        self._wakeup.set()

    def release(self) -> None:
        self.latched = False

    async def idle(self) -> None:
        """Wait until every value asked for has been applied (for tests and shutdown)."""
        while self._has_wanted or self.busy_since is not None:
            await asyncio.sleep(0.001)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._has_wanted:
                continue
            value, self._has_wanted = self._wanted, False
            self.busy_since = time.monotonic()
            try:
                await asyncio.wait_for(self._apply(value), self.timeout)
                self.applied = value
                self.failures = 0
                if self.on_applied is not None:
                    self.on_applied(value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
                quiet.error(f"fail-{self.name}", "%s: setting %r %s", self.name, value, what)
                if value == self.safe and not self._has_wanted:
                    # The safe position must be reached: keep trying.
                    self._wanted, self._has_wanted = value, True
                    self._wakeup.set()
                    await asyncio.sleep(0.05)
            finally:
                self.busy_since = None


class PowerLanes:
    """The contactor and pilot lanes of every EVSE, and the trip across them."""

    def __init__(self, contactors: dict[int, Callable[[bool], Awaitable[None]]],
                 pilots: dict[int, Callable[[float], Awaitable[None]]],
                 timeout: float = DEVICE_TIMEOUT) -> None:
        self.contactor = {e: Lane(f"contactor-{e}", fn, safe=False, timeout=timeout)
                          for e, fn in contactors.items()}
        self.pilot = {e: Lane(f"pilot-{e}", fn, safe=0.0, timeout=timeout)
                      for e, fn in pilots.items()}
        self._unacknowledged: dict[int, int] = {}  # evse -> trips the core has not taken in

    def start(self) -> None:
        for lane in [*self.contactor.values(), *self.pilot.values()]:
            lane.start()

    async def stop(self) -> None:
        for lane in [*self.contactor.values(), *self.pilot.values()]:
            await lane.stop()

    def trip(self, evse_ids: list[int]) -> None:
        for e in evse_ids:
            self._unacknowledged[e] = self._unacknowledged.get(e, 0) + 1
            if e in self.contactor:
                self.contactor[e].trip()
            if e in self.pilot:
                self.pilot[e].trip()

    def acknowledged(self, evse_ids: list[int]) -> None:
        """The core has taken in one trip of each of these EVSEs: once it knows of every
        trip, its own state keeps the power off for as long as the fault lasts."""
        for e in evse_ids:
            left = self._unacknowledged.get(e, 0) - 1
            if left > 0:
                self._unacknowledged[e] = left
                continue
            self._unacknowledged.pop(e, None)
            for lanes in (self.contactor, self.pilot):
                if e in lanes:
                    lanes[e].release()

    async def idle(self) -> None:
        for lane in [*self.contactor.values(), *self.pilot.values()]:
            await lane.idle()
