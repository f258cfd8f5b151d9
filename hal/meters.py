"""Energy meters over Modbus RTU (RS-485) and Modbus TCP, driven by the maps in `meter_maps`.

A reading fetches the map's blocks (a few requests, since a 9600-baud line is slow), decodes
each quantity by data type, word order and scale, and hands the agent a `MeterReading`. What
goes wrong on a real bus is handled here rather than in the agent:

- a timeout or a garbled answer (bad CRC: pymodbus drops the frame, which then times out) is
  retried `retries` times, and so are "busy" and a TCP gateway's "no answer from the meter";
  any other Modbus exception means the request is wrong for this meter and is not retried;
- a read that fails raises MeterError, so the agent marks readings stale instead of reporting
  zero; once the meter has given no reading for `stale_after` seconds, FaultRaised
  (POWER_METER_FAILURE) is emitted once, and FaultCleared when it answers again;
- the energy register never goes backwards in what we report (a glitch, a meter swap);
- the link is reopened after a failed read, so an RS-485 adapter that was unplugged and
  plugged back (or a TCP gateway that restarted) is picked up again without a restart.

Meters that share one RS-485 adapter (one per connector, different unit ids) or one TCP
gateway share a single client: the port can be opened only once, and the bus carries one
transaction at a time anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from hal.interfaces import EventSink, Fault, FaultCleared, FaultRaised, MeterError, MeterReading
from hal.meter_maps import (
    CURRENTS,
    METER_MAPS,
    VOLTAGES,
    DataType,
    Field,
    MeterMap,
    Quantity,
    SerialRegister,
    Table,
)
from hal.options import Options

log = logging.getLogger(__name__)

# The driver logs each failure once, naming the connector and the meter; pymodbus would add an
# error line for every timed-out request, so it is quietened unless someone configured it.
_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)

TRANSPORTS = ("rtu", "tcp")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
RTU_ONLY = ("port", "baudrate", "parity", "stopbits")
TCP_ONLY = ("host", "tcp_port")

# A drop this large is no rounding glitch: the meter was reset, swapped or misread.
SUSPICIOUS_DROP_WH = 1000.0

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}
# Exceptions that say "not now" rather than "never": a busy meter, or a TCP gateway whose
# RS-485 side got no answer (the TCP form of a timeout).
_TRY_AGAIN = frozenset({6, 10, 11})


def _discard(_event: object) -> None:
    pass


@dataclass(frozen=True, slots=True)
class MeterSettings:
    model: str
    transport: str  # "rtu" | "tcp"
    unit: int
    timeout: float
    retries: int
    stale_after: float
    port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    host: str | None = None
    tcp_port: int = 502

    @property
    def link_key(self) -> tuple[Any, ...]:
        if self.transport == "rtu":
            return ("rtu", self.port)
        return ("tcp", self.host, self.tcp_port)

    @property
    def line(self) -> str:
        return f"{self.baudrate} {self.parity}{self.stopbits}"

    @property
    def where(self) -> str:
        if self.transport == "rtu":
            return f"{self.port} unit {self.unit}"
        return f"{self.host}:{self.tcp_port} unit {self.unit}"


def build_meter(connector_id: int, options: dict) -> ModbusMeter:
    """The meter a `[hardware.meter]` table describes; DriverConfigError names each bad option."""
    transport = options.get("transport", "rtu")
    if transport == "rtu":
        unused: tuple[str, ...] = TCP_ONLY
    elif transport == "tcp":
        unused = RTU_ONLY
    else:  # only the transport itself is wrong; checking the keys of either would mislead
        unused = ()
        options = {k: v for k, v in options.items() if k not in RTU_ONLY + TCP_ONLY}
    opts = Options({k: v for k, v in options.items() if k not in unused})

    model = opts.choice("model", sorted(METER_MAPS))
    meter_map = METER_MAPS.get(model) if model is not None else None
    transport = opts.choice("transport", TRANSPORTS, "rtu")
    unit = opts.integer("unit", 1, low=1, high=247)
    timeout = opts.number("timeout", 1.0, low=0.01, high=30)
    retries = opts.integer("retries", 2, low=0, high=10)
    stale_after = opts.number("stale_after", 10.0, low=0, high=86400)
    line: dict[str, Any] = {}
    if transport == "rtu":
        port = opts.text("port", None)
        if port is None and "port" not in options:
            opts.error("port: required with transport 'rtu' (the RS-485 adapter, "
                       "e.g. /dev/ttyUSB0)")
        elif port is not None and not port.startswith("/"):
            opts.error(f"port: must be a serial device path like /dev/ttyUSB0 (got {port!r})")
        line = {
            "port": port,
            "baudrate": opts.choice("baudrate", BAUDRATES,
                                    meter_map.baudrate if meter_map else 9600),
            "parity": opts.choice("parity", PARITIES, meter_map.parity if meter_map else "N"),
            "stopbits": opts.choice("stopbits", (1, 2), 1),
        }
    elif transport == "tcp":
        host = opts.text("host", None, max_length=253)
        if host is None and "host" not in options:
            opts.error("host: required with transport 'tcp' (the meter's or gateway's address)")
        line = {"host": host, "tcp_port": opts.integer("tcp_port", 502, low=1, high=65535)}
    for key in unused:
        if key in options:
            other = "tcp" if transport == "rtu" else "rtu"
            hint = " (the TCP port is tcp_port)" if key == "port" else ""
            opts.error(f"{key}: only used with transport {other!r}{hint}")
    opts.finish()
    settings = MeterSettings(model=model, transport=transport, unit=unit, timeout=timeout,
                             retries=retries, stale_after=stale_after, **line)
    return ModbusMeter(connector_id, settings)


# --- decoding -----------------------------------------------------------------------------------


def _raw(dtype: DataType, word_order: str, words: list[int]) -> int | float:
    ordered = words if word_order == "big" else list(reversed(words))
    return struct.unpack(">" + dtype.code, struct.pack(f">{len(ordered)}H", *ordered))[0]


def _float32_exact(value: float) -> Fraction:
    """The shortest decimal that is this float32, as the meter's display would show it.

    A float32 230.1 is 230.100006103515625 as a double; reporting that would show noise the
    meter never measured. The shortest decimal that packs back to the same bits is the value.
    """
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return Fraction(Decimal(text))
    return Fraction(value)


def decode_field(field: Field, words: list[int]) -> float | None:
    """Value in Wh, W, A or V; None when the meter flags it as not available."""
    raw = _raw(field.dtype, field.word_order, words)
    if field.invalid is not None and raw == field.invalid:
        return None
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        return float(_float32_exact(raw) * field.scale)
    return float(raw * field.scale)


def decode_serial(spec: SerialRegister, words: list[int]) -> str | None:
    if spec.format == "uint32":
        number = _raw(DataType.UINT32, "big", words)
        return None if number in (0, 0xFFFF_FFFF) else str(number)
    text = struct.pack(f">{len(words)}H", *words).decode("ascii", "replace")
    text = text.replace("\x00", "").strip()
    return text or None


# --- the link: one pymodbus client per serial port or TCP endpoint -------------------------------


class _Link:
    """A pymodbus client shared by the meters on one port, opened on demand."""

    def __init__(self, settings: MeterSettings) -> None:
        self.settings = settings  # line settings of the first meter; the others must agree
        self.users: set[int] = set()
        self.lock = asyncio.Lock()  # one transaction sequence at a time on the bus
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None

    def conflict(self, settings: MeterSettings) -> str | None:
        mine = self.settings
        if settings.transport == "rtu" and settings.line != mine.line:
            return (f"{settings.port} is already used at {mine.line} by another meter; "
                    f"this one asks {settings.line}: meters on one bus need the same settings")
        return None

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        s = self.settings
        # retries=0 and reconnect_delay=0: the driver retries and reopens itself, so that a
        # dead adapter is noticed and a replugged one picked up at the next read.
        if s.transport == "rtu":
            assert s.port is not None
            return AsyncModbusSerialClient(
                s.port, framer=FramerType.RTU, baudrate=s.baudrate, bytesize=8,
                parity=s.parity, stopbits=s.stopbits, timeout=s.timeout, retries=0,
                reconnect_delay=0, name=f"meter {s.port}",
            )
        assert s.host is not None
        return AsyncModbusTcpClient(
            s.host, port=s.tcp_port, timeout=s.timeout, retries=0, reconnect_delay=0,
            name=f"meter {s.host}:{s.tcp_port}",
        )

    async def client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = self._new_client()
        if not await client.connect():
            client.close()
            target = self.settings.port if self.settings.transport == "rtu" else (
                f"{self.settings.host}:{self.settings.tcp_port}")
            raise MeterError(f"cannot open {target}")
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# Links live per event loop: tests (and a restarted agent) run several loops in one process.
_links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _Link]] = (
    weakref.WeakKeyDictionary()
)


def _acquire_link(settings: MeterSettings, user: int) -> _Link:
    links = _links.setdefault(asyncio.get_running_loop(), {})
    link = links.get(settings.link_key)
    if link is None:
        link = links[settings.link_key] = _Link(settings)
    link.users.add(user)
    return link


def _release_link(link: _Link, user: int) -> None:
    link.users.discard(user)
    if link.users:
        return
    link.close()
    for links in _links.values():
        for key, known in list(links.items()):
            if known is link:
                del links[key]


class _Refused(MeterError):
    """The meter answered with a Modbus exception: alive, but the request is wrong for it."""


# --- the driver ---------------------------------------------------------------------------------


class ModbusMeter:
    """An EnergyMeter read over Modbus, one per connector."""

    def __init__(self, connector_id: int, settings: MeterSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connector_id = connector_id
        self.settings = settings
        self.map: MeterMap = METER_MAPS[settings.model]
        self.serial_number: str | None = None
        self.requests = 0  # Modbus requests sent, retries included
        self._clock = clock
        self._emit: EventSink = _discard
        self._link: _Link | None = None
        self._last_good = clock()
        self._faulted = False
        self._failing = False
        self._serial_due = self.map.serial is not None
        self._last_energy: float | None = None
        self._held: str | None = None  # None, "glitch" or "suspicious" while energy is held

    def __repr__(self) -> str:
        return f"<ModbusMeter {self.map.model} {self.settings.where} connector {self.connector_id}>"

    # -- lifecycle --

    async def start(self, emit: EventSink) -> None:
        """Open the link and read the serial number; a meter that is absent now is no error."""
        self._emit = emit
        self._last_good = self._clock()
        link = self._get_link()
        try:
            async with link.lock:
                await self._read_serial(link)
        except MeterError as exc:
            log.warning("meter of connector %d (%s at %s) not answering at start: %s",
                        self.connector_id, self.map.model, self.settings.where, exc)

    async def stop(self) -> None:
        self._emit = _discard
        if self._link is not None:
            _release_link(self._link, id(self))
            self._link = None

    def _get_link(self) -> _Link:
        if self._link is None:
            self._link = _acquire_link(self.settings, id(self))
        return self._link

    # -- reading --

    async def read(self) -> MeterReading:
        link = self._get_link()
        try:
            problem = link.conflict(self.settings)
            if problem:
                raise MeterError(problem)
            async with link.lock:
                words = await self._read_blocks(link)
                reading = self._decode(words)
                if self._serial_due:
                    await self._read_serial(link, quiet=True)
        except MeterError as exc:
            self._failed(exc)
            raise
        except asyncio.CancelledError:
            # The agent gave up waiting (timeout x attempts longer than its patience): the
            # meter still gave no reading, and must still turn into a fault in time.
            self._failed(MeterError("read cancelled before the meter answered"))
            raise
        self._answered()
        return self._hold_energy(reading)

    async def _read_blocks(self, link: _Link) -> dict[Table, dict[int, int]]:
        words: dict[Table, dict[int, int]] = {Table.HOLDING: {}, Table.INPUT: {}}
        for block in self.map.blocks:
            values = await self._request(link, block.table, block.address, block.count)
            words[block.table].update(zip(range(block.address, block.end), values, strict=True))
        return words

    async def _request(self, link: _Link, table: Table, address: int, count: int) -> list[int]:
        what = f"{table} registers 0x{address:04X}+{count}"
        attempts = self.settings.retries + 1
        function = 4 if table is Table.INPUT else 3
        problem = "no answer"
        for attempt in range(attempts):
            if attempt and link.settings.transport == "rtu" and problem.startswith("no answer"):
                # RTU answers carry no request id: let a late answer to the timed-out request
                # land (and be dropped) before asking again, or it would pass for the new one.
                await asyncio.sleep(link.settings.timeout / 4)
            client = await link.client()
            self.requests += 1
            read = (client.read_input_registers if table is Table.INPUT
                    else client.read_holding_registers)
            try:
                response = await read(address, count=count, device_id=self.settings.unit)
            except ModbusIOException:
                problem = f"no answer within {self.settings.timeout:g} s"
                continue
            except (ConnectionException, OSError) as exc:
                problem = f"link lost ({exc})"
                link.close()
                continue
            except ModbusException as exc:
                problem = f"unusable answer ({exc})"
                continue
            if response.isError():
                code = response.exception_code
                name = _EXCEPTION_NAMES.get(code, "exception")
                if code in _TRY_AGAIN:
                    problem = f"exception {code} ({name})"
                    continue
                raise _Refused(f"meter refused {what}: code {code} ({name})")
            registers = list(response.registers)
            if response.function_code != function or len(registers) != count:
                problem = (f"answer (function {response.function_code}, {len(registers)} "
                           f"registers) that does not fit the request")
                continue
            return registers
        # Nothing usable came back: reopen the port before the next read, which is what picks
        # up an adapter that was unplugged and plugged back.
        link.close()
        raise MeterError(f"{what}: {problem} ({attempts} attempt{'s' * (attempts > 1)})")

    def _decode(self, words: dict[Table, dict[int, int]]) -> MeterReading:
        values: dict[Quantity, float | None] = {}
        for field in self.map.fields:
            table = words[field.table]
            values[field.quantity] = decode_field(
                field, [table[a] for a in range(field.address, field.end)]
            )
        energy = values.get(Quantity.ENERGY)
        if energy is None:
            raise MeterError("meter reports its energy register as not available")
        if energy < 0:
            raise MeterError(f"meter reports negative energy ({energy} Wh)")
        return MeterReading(
            energy_wh=energy,
            power_w=values.get(Quantity.POWER),
            current_a=self._per_phase(values, CURRENTS),
            voltage_v=self._per_phase(values, VOLTAGES),
        )

    def _per_phase(self, values: dict[Quantity, float | None],
                   group: tuple[Quantity, ...]) -> tuple[float, ...] | None:
        phases = [values.get(q) for q in group[: self.map.phases]]
        if any(v is None for v in phases):
            return None
        return tuple(v for v in phases if v is not None)

    async def _read_serial(self, link: _Link, quiet: bool = False) -> None:
        spec = self.map.serial
        if spec is None:
            self._serial_due = False
            return
        try:
            words = await self._request(link, spec.table, spec.address, spec.count)
        except _Refused:
            # Some firmware has no serial number register; the meter is fine without one.
            self._serial_due = False
            log.info("meter of connector %d (%s) has no readable serial number",
                     self.connector_id, self.map.model)
            return
        except MeterError:
            if quiet:  # tried again after the next good reading
                return
            raise
        self._serial_due = False
        serial = decode_serial(spec, words)
        if self.serial_number is not None and serial != self.serial_number:
            log.warning("meter of connector %d changed serial number %s -> %s: meter replaced?",
                        self.connector_id, self.serial_number, serial)
        self.serial_number = serial

    # -- health and the energy floor --

    def _failed(self, exc: MeterError) -> None:
        if not self._failing:
            # info: the agent logs the stale reading itself, with this error's text
            log.info("meter of connector %d (%s at %s) unreadable: %s",
                        self.connector_id, self.map.model, self.settings.where, exc)
            self._failing = True
            # It may come back as another meter (swapped while away): read its serial again.
            self._serial_due = self.map.serial is not None
        silent_for = self._clock() - self._last_good
        if not self._faulted and silent_for > self.settings.stale_after:
            self._faulted = True
            info = (f"{self.map.model} at {self.settings.where}: no reading for "
                    f"{silent_for:.1f} s: {exc}")
            log.error("meter of connector %d failed: %s", self.connector_id, info)
            self._emit(FaultRaised(self.connector_id, Fault.POWER_METER_FAILURE, info))

    def _answered(self) -> None:
        if self._failing:
            log.info("meter of connector %d answers again", self.connector_id)
            self._failing = False
        self._last_good = self._clock()
        if self._faulted:
            self._faulted = False
            self._emit(FaultCleared(self.connector_id, Fault.POWER_METER_FAILURE))

    def _hold_energy(self, reading: MeterReading) -> MeterReading:
        energy = reading.energy_wh
        assert energy is not None
        last = self._last_energy
        if last is not None and energy < last:
            drop = last - energy
            if drop >= SUSPICIOUS_DROP_WH and self._held != "suspicious":
                self._held = "suspicious"
                log.error("meter of connector %d: energy fell by %.0f Wh (%.0f -> %.0f): "
                          "meter reset or replaced? Reporting %.0f Wh until it catches up",
                          self.connector_id, drop, last, energy, last)
            elif self._held is None:
                self._held = "glitch"
                log.warning("meter of connector %d: energy went back %.3f Wh (%.3f -> %.3f); "
                            "keeping %.3f Wh", self.connector_id, drop, last, energy, last)
            return MeterReading(last, reading.power_w, reading.current_a, reading.voltage_v)
        if self._held is not None:
            self._held = None
            log.info("meter of connector %d: energy back above %.3f Wh", self.connector_id, last)
        self._last_energy = energy
        return reading
