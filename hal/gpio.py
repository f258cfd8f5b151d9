"""gpiozero drivers: the main contactor, fault inputs (emergency stop, RCD) and the connector lock.

Builders, each taking the keys of its config table:

- `build_contactor(connector_id, options)` -> `GpioContactor`
    relay_pin (required), active_high = true,
    feedback_pin, feedback_active_high, feedback_pull = "up", feedback_timeout = 0.5 (s)
- `build_inputs(options)` -> list of `GpioFaultInput`, one per named sub-table:
    [hardware.inputs.estop]  kind = "emergency_stop" | "rcd" | "fault", pin (required),
    active_high, pull = "up", bounce_time (s), connector_id = 0 (0 = the whole station),
    fault (a Fault name; only and required for kind = "fault")
- `build_lock(connector_id, options)` -> `GpioConnectorLock`
    type = "pulse" | "motor", unlock_pin (required), lock_pin (motor only, required there),
    active_high = true, pulse_ms = 500, feedback_pin (active = locked), feedback_active_high,
    feedback_pull = "up", unlock_timeout = 1.0 (s)

Pins are gpiozero pin names ("GPIO17", "BCM17", "BOARD11", "J8:11", "WPI0") or BCM numbers.
For every input, `pull` is "up", "down" or "none" and `active_high` defaults to the opposite of
the pull (a contact to ground with a pull-up reads active when low), so the common wiring needs
no polarity key at all.

gpiozero calls back on its own threads; every callback only schedules work on the event loop
(`call_soon_threadsafe`), where all state lives, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from gpiozero import DigitalInputDevice, DigitalOutputDevice, GPIOZeroError

from hal.interfaces import EventSink, Fault, FaultCleared, FaultRaised, HalEvent
from hal.options import DriverConfigError, Options

log = logging.getLogger(__name__)

T = TypeVar("T")

_PIN_NAME = re.compile(r"(GPIO|BCM|BOARD|WPI)?\d{1,2}|J8:\d{1,2}", re.IGNORECASE)
_PULLS = ("up", "down", "none")


def _discard(_event: HalEvent) -> None:
    pass


class GpioOptions(Options):
    """`Options` plus the value kinds GPIO drivers share: pins and input wiring."""

    def pin(self, key: str, *, required: bool = True) -> int | str | None:
        value = self._get(key, None)
        if value is None:
            if required:
                self.errors.append(f"{key}: required")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 53:
            return value
        if isinstance(value, str) and _PIN_NAME.fullmatch(value.strip()):
            return value.strip()
        self.errors.append(f"{key}: must be a GPIO pin like 'GPIO17', 'BOARD11' or 17 "
                           f"(got {value!r})")
        return None

    def input_wiring(self, prefix: str = "") -> InputWiring:
        pull = self.choice(f"{prefix}pull", _PULLS, "up")
        active_high = self.boolean(f"{prefix}active_high", pull != "up")
        return InputWiring(active_high=bool(active_high), pull=pull or "up")

    def refuse(self, key: str, why: str) -> None:
        """Name a key that the rest of the table makes meaningless, instead of 'unknown'."""
        if self._get(key, None) is not None:
            self.errors.append(f"{key}: {why}")


class InputWiring:
    def __init__(self, *, active_high: bool, pull: str, bounce_time: float | None = None):
        self.active_high = active_high
        self.pull = pull
        self.bounce_time = bounce_time

    def open(self, pin: int | str) -> DigitalInputDevice:
        # gpiozero ties polarity to the pull resistor; open the pin floating with an explicit
        # polarity, then set the pull, so every combination an installer may wire is possible.
        device = DigitalInputDevice(pin, pull_up=None, active_state=self.active_high,
                                    bounce_time=self.bounce_time)
        if self.pull != "none":
            try:
                device.pin.pull = self.pull
            except GPIOZeroError:
                device.close()
                raise
        return device


class DeviceOpener:
    """Opens gpiozero devices, turning pin errors into config errors that name the option."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.opened: list[Any] = []

    def __call__(self, key: str, make: Callable[[], T]) -> T | None:
        try:
            device = make()
        except GPIOZeroError as exc:
            self.errors.append(f"{key}: {exc}")
            return None
        self.opened.append(device)
        return device

    def finish(self) -> None:
        if self.errors:
            for device in self.opened:
                device.close()
            raise DriverConfigError(self.errors)


class FaultFlag:
    """One fault condition of a device: reported when it appears, cleared once when it goes."""

    def __init__(self, connector_id: int, fault: Fault) -> None:
        self.connector_id = connector_id
        self.fault = fault
        self.emit: EventSink = _discard
        self.info: str | None = None

    @property
    def active(self) -> bool:
        return self.info is not None

    def set(self, info: str) -> None:
        if info != self.info:
            self.info = info
            self.emit(FaultRaised(self.connector_id, self.fault, info))

    def clear(self) -> None:
        if self.info is not None:
            self.info = None
            self.emit(FaultCleared(self.connector_id, self.fault))


def _to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> Callable[[], None]:
    def callback() -> None:
        # RuntimeError: the loop closed while a pin was still changing.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)

    return callback


# ---- contactor --------------------------------------------------------------------------------


class PowerSwitchError(RuntimeError):
    """The contactor refuses a command because it is known to be unsafe."""


class GpioContactor:
    """A relay output driving the contactor coil, checked against an auxiliary contact.

    Whenever the auxiliary contact disagrees with the command for longer than
    `feedback_timeout`, the contactor has failed:
    - commanded closed, still open: "did not close"; the coil is switched off again, so a
      contactor that may close late never closes unobserved. The fault clears when a later
      close is confirmed.
    - commanded open, still closed: "contactor welded". Power cannot be switched off here, so
      the driver refuses every further close (set_closed(True) raises PowerSwitchError) until
      the agent restarts, even if the auxiliary contact later reads open: a contact that welded
      once is damaged and may weld again, and a feedback that came back proves nothing about
      the main contacts. A restart is the deliberate reset; it re-checks the feedback at start,
      so a contactor that is still welded is caught again.
    Without a feedback pin nothing is checked and the command is trusted.
    """

    def __init__(
        self,
        connector_id: int,
        relay: DigitalOutputDevice,
        feedback: DigitalInputDevice | None = None,
        feedback_timeout: float = 0.5,
    ) -> None:
        self.connector_id = connector_id
        self._relay = relay
        self._feedback = feedback
        self._timeout = feedback_timeout
        self._fault = FaultFlag(connector_id, Fault.POWER_SWITCH_FAILURE)
        self._welded = False
        self._confirmed = False  # the feedback agreed with the current command at least once
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_closed(self) -> bool:
        """What the coil is told; a disagreeing feedback shows up as a fault, not here."""
        return bool(self._relay.is_active)

    @property
    def feedback_closed(self) -> bool | None:
        return None if self._feedback is None else bool(self._feedback.is_active)

    @property
    def welded(self) -> bool:
        return self._welded

    async def start(self, emit: EventSink) -> None:
        self._loop = asyncio.get_running_loop()
        self._fault.emit = emit
        if self._feedback is not None:
            changed = _to_loop(self._loop, self._check)
            self._feedback.when_activated = changed
            self._feedback.when_deactivated = changed
            self._check()  # a contactor already closed at boot with the coil off is welded

    async def stop(self) -> None:
        self._relay.off()
        if self._feedback is not None:
            self._feedback.when_activated = None
            self._feedback.when_deactivated = None
        self._cancel_timer()
        self._fault.emit = _discard

    async def set_closed(self, closed: bool) -> None:
        if closed and self._welded:
            raise PowerSwitchError(
                f"connector {self.connector_id}: contactor welded, closing refused until restart")
        if closed == self.is_closed:
            return
        if closed:
            self._relay.on()
        else:
            self._relay.off()
        # The deadline runs from the latest command, not from an earlier disagreement.
        self._confirmed = False
        self._cancel_timer()
        self._check()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        if self._feedback is None or self._loop is None:
            return
        if bool(self._feedback.is_active) == self.is_closed:
            self._cancel_timer()
            if self.is_closed:
                self._confirmed = True
                if not self._welded:
                    self._fault.clear()
            elif self._welded:
                log.warning("connector %d: contactor feedback reads open again; closing stays "
                            "refused until the agent restarts", self.connector_id)
            return
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        assert self._feedback is not None
        if bool(self._feedback.is_active) == self.is_closed:
            return
        if self.is_closed:
            info = ("contactor opened while closed" if self._confirmed
                    else "contactor did not close")
            self._relay.off()
            log.error("connector %d: %s; coil switched off", self.connector_id, info)
            self._fault.set(info)
        elif not self._welded:
            self._welded = True
            log.critical("connector %d: contactor welded (feedback still closed %.2f s after "
                         "opening); closing refused until restart", self.connector_id,
                         self._timeout)
            self._fault.set("contactor welded")


def build_contactor(connector_id: int, options: dict[str, Any]) -> GpioContactor:
    opts = GpioOptions(options)
    relay_pin = opts.pin("relay_pin")
    active_high = opts.boolean("active_high", True)
    feedback_pin = opts.pin("feedback_pin", required=False)
    wiring = opts.input_wiring("feedback_")
    timeout = opts.number("feedback_timeout", 0.5, low=0.05, high=10.0)
    if feedback_pin is None:
        for key in ("feedback_active_high", "feedback_pull", "feedback_timeout"):
            opts.refuse(key, "needs feedback_pin")
    opts.finish()

    open_ = DeviceOpener()
    # initial_value=False: the coil must be off from the first instant the pin is driven.
    relay = open_("relay_pin", lambda: DigitalOutputDevice(
        relay_pin, active_high=active_high, initial_value=False))
    feedback = None
    if feedback_pin is not None:
        feedback = open_("feedback_pin", lambda: wiring.open(feedback_pin))
    open_.finish()
    assert relay is not None
    return GpioContactor(connector_id, relay, feedback, timeout)


# ---- fault inputs -----------------------------------------------------------------------------

_INPUT_KINDS: dict[str, tuple[Fault | None, str]] = {
    "emergency_stop": (Fault.EMERGENCY_STOP, "emergency stop pressed"),
    "rcd": (Fault.GROUND_FAILURE, "residual current device tripped"),
    "tamper": (Fault.TAMPER, "enclosure opened (tamper switch)"),
    "fault": (None, ""),
}


class GpioFaultInput:
    """A digital input whose active level is a fault: raised while active, cleared on release.

    An RCD trip therefore stays raised (and charging blocked) for as long as the device holds
    its trip contact, which for a mechanical RCD means until someone resets it by hand.
    """

    def __init__(self, name: str, device: DigitalInputDevice, connector_id: int, fault: Fault,
                 info: str) -> None:
        self.name = name
        self.connector_id = connector_id
        self._device = device
        self._info = info
        self._fault = FaultFlag(connector_id, fault)

    @property
    def fault(self) -> Fault:
        return self._fault.fault

    @property
    def is_active(self) -> bool:
        return bool(self._device.is_active)

    async def start(self, emit: EventSink) -> None:
        self._fault.emit = emit
        changed = _to_loop(asyncio.get_running_loop(), self._sync)
        self._device.when_activated = changed
        self._device.when_deactivated = changed
        self._sync()  # an emergency stop already pressed at boot counts

    async def stop(self) -> None:
        self._device.when_activated = None
        self._device.when_deactivated = None
        self._fault.emit = _discard

    def _sync(self) -> None:
        # Reads the pin now rather than trusting the edge: contact bounce may deliver edges
        # out of order, the present level is what matters.
        if self.is_active:
            if not self._fault.active:
                log.warning("input %s: %s", self.name, self._info)
            self._fault.set(self._info)
        elif self._fault.active:
            log.info("input %s: released", self.name)
            self._fault.clear()


def build_inputs(options: dict[str, Any]) -> list[GpioFaultInput]:
    """One input per sub-table; the table names appear in errors and logs."""
    errors: list[str] = []
    wanted: list[tuple[str, int | str, InputWiring, int, Fault, str]] = []
    for name, table in options.items():
        if name == "driver":
            continue
        if not isinstance(table, dict):
            errors.append(f"{name}: must be a table with at least kind and pin "
                          f"(got {table!r})")
            continue
        opts = GpioOptions(table)
        kind = opts.choice("kind", list(_INPUT_KINDS))
        pin = opts.pin("pin")
        wiring = opts.input_wiring()
        wiring.bounce_time = opts.number("bounce_time", None, low=0.0, high=1.0)
        connector_id = opts.integer("connector_id", 0, low=0, high=64)
        fault, info = _INPUT_KINDS.get(kind, (None, ""))
        if kind == "fault":
            text = opts.text("fault")
            if text is not None:
                try:
                    fault = Fault.parse(text)
                except ValueError as exc:
                    opts.error(f"fault: {exc}")
                info = f"input {name} active"
        else:
            opts.refuse("fault", "only for kind = 'fault'")
        try:
            opts.finish()
        except DriverConfigError as exc:
            errors += [f"{name}.{e}" for e in exc.errors]
            continue
        assert pin is not None and fault is not None
        wanted.append((name, pin, wiring, connector_id, fault, info))
    if errors:
        raise DriverConfigError(errors)

    open_ = DeviceOpener()
    inputs = []
    for name, pin, wiring, connector_id, fault, info in wanted:
        device = open_(f"{name}.pin", lambda pin=pin, wiring=wiring: wiring.open(pin))
        if device is not None:
            inputs.append(GpioFaultInput(name, device, connector_id, fault, info))
    open_.finish()
    return inputs


# ---- connector lock ---------------------------------------------------------------------------


class GpioConnectorLock:
    """A socket outlet's plug lock: pulsed actuator outputs and a feedback input (active = locked).

    type "pulse": one output pulsed to release, the lock re-engages by itself (spring/bistable).
    type "motor": a motor driven one way or the other by pulsing lock_pin or unlock_pin.
    Without feedback the outcome cannot be known and unlock() reports success after the pulse.
    """

    _POLL = 0.02

    def __init__(
        self,
        connector_id: int,
        unlock_output: DigitalOutputDevice,
        lock_output: DigitalOutputDevice | None = None,
        feedback: DigitalInputDevice | None = None,
        pulse_s: float = 0.5,
        unlock_timeout: float = 1.0,
    ) -> None:
        self.connector_id = connector_id
        self._unlock = unlock_output
        self._lock_out = lock_output
        self._feedback = feedback
        self._pulse = pulse_s
        self._timeout = unlock_timeout
        self._fault = FaultFlag(connector_id, Fault.CONNECTOR_LOCK_FAILURE)
        self._busy = asyncio.Lock()

    @property
    def is_locked(self) -> bool | None:
        return None if self._feedback is None else bool(self._feedback.is_active)

    async def start(self, emit: EventSink) -> None:
        self._fault.emit = emit

    async def stop(self) -> None:
        self._unlock.off()
        if self._lock_out is not None:
            self._lock_out.off()
        self._fault.emit = _discard

    async def unlock(self) -> bool:
        async with self._busy:
            if self.is_locked is False:
                self._fault.clear()
                return True
            await self._pulse_on(self._unlock)
            if await self._settles(locked=False):
                self._fault.clear()
                return True
            log.error("connector %d: lock did not open within %.1f s", self.connector_id,
                      self._pulse + self._timeout)
            self._fault.set("connector did not unlock")
            return False

    async def lock(self) -> bool:
        """Engage the lock (motor type drives it; a pulse-type lock engages by itself)."""
        async with self._busy:
            if self._lock_out is not None and self.is_locked is not True:
                await self._pulse_on(self._lock_out)
            if await self._settles(locked=True):
                return True
            log.error("connector %d: lock did not engage", self.connector_id)
            self._fault.set("connector did not lock")
            return False

    async def _pulse_on(self, output: DigitalOutputDevice) -> None:
        output.on()
        try:
            await asyncio.sleep(self._pulse)
        finally:
            output.off()  # a stalled actuator must not stay powered, even when cancelled

    async def _settles(self, *, locked: bool) -> bool:
        if self._feedback is None:
            return True
        deadline = asyncio.get_running_loop().time() + self._timeout
        while self.is_locked is not locked:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(self._POLL)
        return True


def build_lock(connector_id: int, options: dict[str, Any]) -> GpioConnectorLock:
    opts = GpioOptions(options)
    kind = opts.choice("type", ("pulse", "motor"), "pulse")
    unlock_pin = opts.pin("unlock_pin")
    lock_pin = opts.pin("lock_pin", required=kind == "motor")
    if kind == "pulse" and lock_pin is not None:
        opts.error("lock_pin: only for type = 'motor' (a pulse lock engages by itself)")
    active_high = opts.boolean("active_high", True)
    pulse_ms = opts.integer("pulse_ms", 500, low=10, high=5000)
    feedback_pin = opts.pin("feedback_pin", required=False)
    wiring = opts.input_wiring("feedback_")
    timeout = opts.number("unlock_timeout", 1.0, low=0.05, high=30.0)
    if feedback_pin is None:
        for key in ("feedback_active_high", "feedback_pull", "unlock_timeout"):
            opts.refuse(key, "needs feedback_pin")
    opts.finish()

    open_ = DeviceOpener()

    def output(pin: int | str) -> DigitalOutputDevice:
        return DigitalOutputDevice(pin, active_high=active_high, initial_value=False)

    unlock = open_("unlock_pin", lambda: output(unlock_pin))
    lock = open_("lock_pin", lambda: output(lock_pin)) if lock_pin is not None else None
    feedback = None
    if feedback_pin is not None:
        feedback = open_("feedback_pin", lambda: wiring.open(feedback_pin))
    open_.finish()
    assert unlock is not None
    return GpioConnectorLock(connector_id, unlock, lock, feedback, pulse_ms / 1000, timeout)
