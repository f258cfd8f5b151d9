"""Control pilot drivers: a Modbus-controlled EVSE board, or our own PWM plus an ADC.

`build_pilot(connector_id, options)` reads `type`, then that type's keys:

type = "evse_wb"  (EVSE-WB / EVSE-DIN board, register map in hal.evse_maps)
    transport = "rtu" | "tcp"; rtu: port (serial device, required), baudrate = 9600,
    parity = "N", stopbits = 1; tcp: host (required), tcp_port = 502;
    unit_id = 1, timeout = 0.5 (s), poll_interval = 0.5 (s), max_missed = 3 (polls)
type = "gpio_pwm"  (1 kHz PWM on a pin into the ±12 V pilot stage, pilot read back by an SPI ADC)
    pwm_pin (required), pwm_active_high = true, adc = "MCP3008" (gpiozero MCP3xxx class name),
    adc_channel = 0 (the pilot's high level, e.g. through a peak detector),
    adc_low_channel (optional: the low level, enables the diode check),
    adc_scale, adc_offset (required: volts = raw * adc_scale + adc_offset, since boards divide
    ±12 V into the ADC's range), spi_port = 0, spi_device = 0, poll_interval = 0.05 (s),
    hysteresis = 0.3 (V)

Both report PilotChanged on every change of state and offer current per IEC 61851-1: 0 A or
6..80 A; a request between 0 and 6 A offers nothing, one above 80 A offers 80 A.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import gpiozero
from gpiozero import PWMOutputDevice
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from hal.evse_maps import EVSE_WB, EvseBoardMap
from hal.gpio import DeviceOpener, FaultFlag, GpioOptions
from hal.interfaces import EventSink, Fault, HalEvent, PilotChanged, PilotState
from hal.options import DriverConfigError

log = logging.getLogger(__name__)

PILOT_TYPES = ("evse_wb", "gpio_pwm")

MIN_AMPS = 6.0
MAX_AMPS = 80.0

# High-level bands of IEC 61851-1 (nominal 12, 9, 6, 3, 0, -12 V), split halfway between levels.
_BANDS: dict[PilotState, tuple[float, float]] = {
    PilotState.A: (10.5, math.inf),
    PilotState.B: (7.5, 10.5),
    PilotState.C: (4.5, 7.5),
    PilotState.D: (1.5, 4.5),
    PilotState.E: (-1.5, 1.5),
    PilotState.F: (-math.inf, -10.5),
}
# The low level of the PWM is -12 V only through the vehicle's diode; above this it is missing.
DIODE_LOW_MAX = -10.5

_ADC_CHANNELS = {"MCP3002": 2, "MCP3004": 4, "MCP3008": 8, "MCP3202": 2, "MCP3204": 4,
                 "MCP3208": 8, "MCP3302": 4, "MCP3304": 8}


def _discard(_event: HalEvent) -> None:
    pass


def allowed_amps(amps: float, low: float = MIN_AMPS, high: float = MAX_AMPS) -> float:
    """What may be offered for a request: 0, or low..high."""
    if not math.isfinite(amps) or amps <= 0:
        if not math.isfinite(amps):
            log.warning("current limit %r is not a number; offering nothing", amps)
        return 0.0
    if amps < low:
        log.warning("%.1f A is below the %g A minimum of IEC 61851-1; offering nothing", amps, low)
        return 0.0
    if amps > high:
        log.warning("%.1f A is above the %g A maximum; offering %g A", amps, high, high)
        return high
    return float(amps)


def duty_cycle_for(amps: float) -> float:
    """PWM duty (0..1) that offers `amps` per IEC 61851-1; 1.0 is steady +12 V, no offer."""
    amps = allowed_amps(amps)
    if amps == 0:
        return 1.0
    if amps <= 51:
        return amps / 0.6 / 100
    return (amps / 2.5 + 64) / 100


def pilot_state_for(volts: float, previous: PilotState | None = None,
                    hysteresis: float = 0.3) -> PilotState:
    """State for the pilot's high level; a reading near a boundary keeps `previous`."""
    if previous is not None:
        low, high = _BANDS[previous]
        if low - hysteresis <= volts < high + hysteresis:
            return previous
    for state, (low, high) in _BANDS.items():
        if low <= volts < high:
            return state
    return PilotState.E  # between -10.5 and -1.5 V no state is defined: an error


# ---- GPIO PWM + ADC ---------------------------------------------------------------------------


class PwmPilot:
    """Generates the 1 kHz pilot PWM and reads the state back from the pilot voltage.

    A change is reported only after two consecutive readings agree, so one sample taken
    during a transition or a spike does not start or stop a session. The default 50 ms poll
    keeps that within the ~100 ms IEC 61851-1 gives the EVSE to react to the vehicle leaving C.
    """

    def __init__(
        self,
        connector_id: int,
        pwm: PWMOutputDevice,
        read_high: Callable[[], float],
        read_low: Callable[[], float] | None = None,
        poll_interval: float = 0.05,
        hysteresis: float = 0.3,
    ) -> None:
        self.connector_id = connector_id
        self._pwm = pwm
        self._read_high = read_high
        self._read_low = read_low
        self._interval = poll_interval
        self._hysteresis = hysteresis
        self._state = PilotState.A
        self._candidate: PilotState | None = None
        self._emit: EventSink = _discard
        self._adc_fault = FaultFlag(connector_id, Fault.INTERNAL_ERROR)
        self._task: asyncio.Task[None] | None = None
        self.current_limit = 0.0
        pwm.frequency = 1000
        pwm.value = 1.0

    @property
    def duty_cycle(self) -> float:
        return float(self._pwm.value)

    @property
    def pwm_active(self) -> bool:
        return 0 < self._pwm.value < 1

    def state(self) -> PilotState:
        return self._state

    async def start(self, emit: EventSink) -> None:
        self._emit = emit
        self._adc_fault.emit = emit
        self._task = asyncio.create_task(self._poll(), name=f"pilot{self.connector_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._pwm.value = 1.0
        self._emit = self._adc_fault.emit = _discard

    async def set_current_limit(self, amps: float) -> None:
        self.current_limit = allowed_amps(amps)
        self._pwm.value = duty_cycle_for(amps)

    def observe(self, high: float, low: float | None = None) -> None:
        """One reading of the pilot's high (and low) level, in volts; the poll loop calls this."""
        seen = pilot_state_for(high, self._state, self._hysteresis)
        if (low is not None and self.pwm_active and seen.vehicle_present
                and low > DIODE_LOW_MAX):
            seen = PilotState.E
        if seen is self._state:
            self._candidate = None
        elif seen is not self._candidate:
            self._candidate = seen
        else:
            self._candidate = None
            self._state = seen
            self._emit(PilotChanged(self.connector_id, seen))

    def _sample(self) -> tuple[float, float | None]:
        high = self._read_high()
        return high, None if self._read_low is None else self._read_low()

    async def _poll(self) -> None:
        while True:
            try:
                # SPI may be bit-banged when no hardware SPI is free: keep it off the loop.
                high, low = await asyncio.to_thread(self._sample)
            except Exception as exc:
                if not self._adc_fault.active:
                    log.error("connector %d: pilot ADC read failed: %s", self.connector_id, exc)
                self._adc_fault.set(f"pilot ADC unreadable: {exc}")
            else:
                self._adc_fault.clear()
                self.observe(high, low)
            await asyncio.sleep(self._interval)


def adc_volts(adc: Any, scale: float, offset: float) -> Callable[[], float]:
    """A reader for a gpiozero ADC channel, scaled back to pilot volts."""
    return lambda: adc.raw_value * scale + offset


# ---- Modbus EVSE board ------------------------------------------------------------------------


class BoardError(Exception):
    """The EVSE board did not answer, or answered something unusable."""

    def __init__(self, detail: str, info: str = "EVSE board not answering on Modbus") -> None:
        super().__init__(detail)
        self.info = info  # what the fault says: stable, so a flapping detail is not re-raised


class EvseWbPilot:
    """An EVSE-WB/EVSE-DIN board that generates the pilot itself, driven over Modbus.

    Each poll reads the setpoint and the vehicle state in one request and writes the setpoint
    again when it differs from ours, so a board that rebooted (and reloaded its power-up
    setpoint) offers exactly what the agent decided within one poll. A board that stops
    answering for `max_missed` polls raises INTERNAL_ERROR — the fault is ours, not the
    vehicle's — and the last known pilot state stays reported until it answers again.
    """

    def __init__(
        self,
        connector_id: int,
        make_client: Callable[[], Any],
        unit_id: int = 1,
        poll_interval: float = 0.5,
        max_missed: int = 3,
        board: EvseBoardMap = EVSE_WB,
    ) -> None:
        self.connector_id = connector_id
        self._make_client = make_client  # pymodbus' async clients need the running loop
        self._client: Any = None
        self._unit = unit_id
        self._interval = poll_interval
        self._max_missed = max_missed
        self._board = board
        self._setpoint = board["configured_amps"].address
        self._vehicle = board["vehicle_state"].address
        self._state = PilotState.A
        self._wanted = 0
        self._missed = 0
        self._emit: EventSink = _discard
        self._fault = FaultFlag(connector_id, Fault.INTERNAL_ERROR)
        self._task: asyncio.Task[None] | None = None
        self.current_limit = 0.0

    def state(self) -> PilotState:
        return self._state

    async def start(self, emit: EventSink) -> None:
        self._emit = emit
        self._fault.emit = emit
        self._task = asyncio.create_task(self._poll(), name=f"evse{self.connector_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # The board keeps its setpoint (and drives its own contactor) without us: withdraw it.
        self._wanted = 0
        try:
            await self._write(0)
        except BoardError as exc:
            log.warning("connector %d: could not withdraw the EVSE board's setpoint: %s",
                        self.connector_id, exc)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._emit = self._fault.emit = _discard

    async def set_current_limit(self, amps: float) -> None:
        offered = allowed_amps(amps, self._board.min_amps, self._board.max_amps)
        self.current_limit = float(math.floor(offered))  # whole amperes, never more than asked
        self._wanted = int(self.current_limit)
        try:
            await self._write(self._wanted)
        except BoardError as exc:
            log.warning("connector %d: setting %d A on the EVSE board failed (%s); the next "
                        "poll retries", self.connector_id, self._wanted, exc)

    async def poll_once(self) -> None:
        try:
            configured, state = await self._read()
        except BoardError as exc:
            self._missed += 1
            log.debug("connector %d: EVSE board poll failed: %s", self.connector_id, exc)
            if self._missed >= self._max_missed:
                if not self._fault.active:
                    log.error("connector %d: EVSE board not answering: %s",
                              self.connector_id, exc)
                self._fault.set(exc.info)
            return
        self._missed = 0
        self._fault.clear()
        if state is not self._state:
            self._state = state
            self._emit(PilotChanged(self.connector_id, state))
        if configured != self._wanted:
            log.info("connector %d: EVSE board offers %d A, setting %d A", self.connector_id,
                     configured, self._wanted)
            with contextlib.suppress(BoardError):
                await self._write(self._wanted)

    async def _poll(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    async def _call(self, request: Callable[[], Any]) -> Any:
        if self._client is None:
            self._client = self._make_client()
        try:
            if not self._client.connected and not await self._client.connect():
                raise BoardError("cannot connect")
            response = await request()
        except (TimeoutError, ModbusException, OSError) as exc:
            raise BoardError(str(exc) or type(exc).__name__) from exc
        if response.isError():
            raise BoardError(f"answered {response}", "EVSE board rejects Modbus requests")
        return response

    async def _read(self) -> tuple[int, PilotState]:
        count = self._vehicle - self._setpoint + 1
        response = await self._call(lambda: self._client.read_holding_registers(
            self._setpoint, count=count, device_id=self._unit))
        registers = list(response.registers)
        if len(registers) != count:
            raise BoardError(f"answered {len(registers)} registers for {count}")
        code = registers[-1]
        state = self._board.vehicle_states.get(code)
        if state is None:
            raise BoardError(f"unknown vehicle state {code}",
                             f"EVSE board reports unknown vehicle state {code}")
        return registers[0], state

    async def _write(self, amps: int) -> None:
        await self._call(lambda: self._client.write_registers(
            self._setpoint, [amps], device_id=self._unit))


# ---- builders ---------------------------------------------------------------------------------


def build_pilot(connector_id: int, options: dict[str, Any]) -> PwmPilot | EvseWbPilot:
    opts = GpioOptions(options)
    kind = opts.choice("type", PILOT_TYPES)
    if kind == "evse_wb":
        return _build_evse_wb(connector_id, opts)
    if kind == "gpio_pwm":
        return _build_gpio_pwm(connector_id, opts)
    raise DriverConfigError(opts.errors)  # the other keys mean nothing without a type


def _build_evse_wb(connector_id: int, opts: GpioOptions) -> EvseWbPilot:
    transport = opts.choice("transport", ("rtu", "tcp"), "rtu")
    unit_id = opts.integer("unit_id", 1, low=1, high=247)
    timeout = opts.number("timeout", 0.5, low=0.05, high=5.0)
    poll_interval = opts.number("poll_interval", 0.5, low=0.02, high=10.0)
    max_missed = opts.integer("max_missed", 3, low=1, high=100)
    if transport == "tcp":
        host = opts.text("host", max_length=253)
        tcp_port = opts.integer("tcp_port", 502, low=1, high=65535)
        for key in ("port", "baudrate", "parity", "stopbits"):
            opts.refuse(key, "only for transport = 'rtu'")
    else:
        port = opts.text("port")
        if port is not None and not port.startswith("/dev/"):
            opts.error(f"port: must be a serial device path like /dev/ttyUSB0 (got {port!r})")
        baudrate = opts.choice("baudrate", (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200),
                               9600)
        parity = opts.choice("parity", ("N", "E", "O"), "N")
        stopbits = opts.choice("stopbits", (1, 2), 1)
        for key in ("host", "tcp_port"):
            opts.refuse(key, "only for transport = 'tcp'")
    opts.finish()
    # retries=0: a missed poll is counted by the driver, which decides when it is a fault.
    def make_client() -> Any:
        if transport == "tcp":
            return AsyncModbusTcpClient(host, port=tcp_port, timeout=timeout, retries=0)
        return AsyncModbusSerialClient(port, baudrate=baudrate, parity=parity,
                                       stopbits=stopbits, bytesize=8, timeout=timeout,
                                       retries=0)

    return EvseWbPilot(connector_id, make_client, unit_id, poll_interval, max_missed)


def _build_gpio_pwm(connector_id: int, opts: GpioOptions) -> PwmPilot:
    pwm_pin = opts.pin("pwm_pin")
    pwm_active_high = opts.boolean("pwm_active_high", True)
    adc_name = opts.choice("adc", list(_ADC_CHANNELS), "MCP3008")
    last = _ADC_CHANNELS.get(adc_name, 8) - 1
    channel = opts.integer("adc_channel", 0, low=0, high=last)
    low_channel = opts.integer("adc_low_channel", None, low=0, high=last)
    if low_channel is not None and low_channel == channel:
        opts.error("adc_low_channel: must differ from adc_channel")
    scale = opts.number("adc_scale", low=-1.0, high=1.0)
    if scale == 0:
        opts.error("adc_scale: must not be 0 (volts per ADC count)")
    offset = opts.number("adc_offset", low=-50.0, high=50.0)
    spi_port = opts.integer("spi_port", 0, low=0, high=1)
    spi_device = opts.integer("spi_device", 0, low=0, high=1)
    poll_interval = opts.number("poll_interval", 0.05, low=0.01, high=1.0)
    hysteresis = opts.number("hysteresis", 0.3, low=0.0, high=1.0)
    opts.finish()

    adc_class = getattr(gpiozero, adc_name)
    open_ = DeviceOpener()
    # initial_value=1.0: steady +12 V, so a vehicle is detected but offered nothing.
    pwm = open_("pwm_pin", lambda: PWMOutputDevice(
        pwm_pin, active_high=pwm_active_high, initial_value=1.0, frequency=1000))
    high = open_("adc_channel", lambda: adc_class(channel=channel, port=spi_port,
                                                  device=spi_device))
    low = None
    if low_channel is not None:
        low = open_("adc_low_channel", lambda: adc_class(channel=low_channel, port=spi_port,
                                                         device=spi_device))
    open_.finish()
    assert pwm is not None and high is not None
    return PwmPilot(
        connector_id,
        pwm,
        adc_volts(high, scale, offset),
        None if low is None else adc_volts(low, scale, offset),
        poll_interval,
        hysteresis,
    )
