"""Simulated Modbus energy meters, for the driver tests and the benchmark: no hardware needed.

A `SimMeter` holds what a meter measures (energy, power, per-phase currents and voltages, serial
number) and serves it as the real meter would: the addresses of its map in `hal.meter_maps`,
each value encoded with the model's data type, word order and scale. The encoding goes through
pymodbus's own `convert_to_registers`, not through the driver's decoder, so a word-order or
scaling mistake in the driver cannot cancel out against the same mistake here. Reads outside the
areas a meter serves get exception 02 (illegal data address), as from a real one.

A bus of meters (one or several unit ids) is put on the wire by
- `RtuSim`: a pseudo-terminal pair; the driver opens the slave end through a symlink
  (`sim.path`), which survives `vanish()`/`reappear()` like /dev/ttyUSB0 does an unplug;
  requests are framed and CRC-checked with pymodbus's RTU framer helpers;
- `TcpSim`: Modbus TCP (MBAP) on 127.0.0.1.

Faults to play: `silent` (no answers), `drop_next` (ignore n requests), `corrupt_next` (n
answers with a broken CRC, RTU), `refuse_next` (exception codes to answer with),
`vanish()`/`reappear()` (adapter unplugged / gateway down).
`pace_baudrate` makes each answer wait for the time the exchange would take on a real line,
since a pty delivers bytes instantly whatever baud rate the port is set to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import tty
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.framer.rtu import FramerRTU

from hal.meter_maps import CURRENTS, METER_MAPS, VOLTAGES, Field, MeterMap, Quantity, Table

_convert = ModbusTcpClient.convert_to_registers
_DATATYPE = ModbusTcpClient.DATATYPE

FILLER = 0x7E7E  # registers we serve but do not model: a misplaced decode reads nonsense
BITS_PER_CHAR = 11  # Modbus RTU: start, 8 data, parity (or a 2nd stop bit), stop
REQUEST_BYTES = 8  # unit, function, address, count, CRC: every request a meter driver sends


def line_time(chars: float, baudrate: int) -> float:
    return chars * BITS_PER_CHAR / baudrate


def exchange_time(request: int, response: int, baudrate: int) -> float:
    """Seconds a request/response pair occupies a real RS-485 line: both frames, each followed
    by the 3.5-character silence that ends an RTU frame."""
    return line_time(request + response + 2 * 3.5, baudrate)


def _default_serial(meter_map: MeterMap) -> str | None:
    if meter_map.serial is None:
        return None
    return "KY2304500123" if meter_map.serial.format == "ascii" else "23041234"


class SimMeter:
    """One meter's measurements, served at its model's addresses."""

    def __init__(self, model: str, *, energy_wh: float = 0.0, power_w: float = 0.0,
                 currents: tuple[float | None, ...] | None = None,
                 voltages: tuple[float | None, ...] | None = None,
                 serial: str | bool | None = True) -> None:
        self.map = METER_MAPS[model]
        phases = self.map.phases
        self.energy_wh: float | None = energy_wh
        self.power_w: float | None = power_w
        self.currents: tuple[float | None, ...] = currents or (0.0,) * phases
        self.voltages: tuple[float | None, ...] = voltages or (230.0,) * phases
        # True: a plausible default; None: the meter has no serial number register
        self.serial: str | None = _default_serial(self.map) if serial is True else (
            serial or None)
        self.silent = False

    @property
    def model(self) -> str:
        return self.map.model

    def value(self, quantity: Quantity) -> float | None:
        if quantity is Quantity.ENERGY:
            return self.energy_wh
        if quantity is Quantity.POWER:
            return self.power_w
        if quantity in CURRENTS:
            return self.currents[CURRENTS.index(quantity)]
        return self.voltages[VOLTAGES.index(quantity)]

    def encode(self, field: Field) -> list[int]:
        value = self.value(field.quantity)
        if value is None:  # the meter's "not available"
            raw: int | float = field.invalid if field.invalid is not None else 0
        elif field.dtype.name == "FLOAT32":
            raw = value / float(field.scale)
        else:
            raw = round(Fraction(Decimal(repr(value))) / field.scale)
        words = _convert(raw, _DATATYPE[field.dtype.name], word_order=field.word_order)
        assert len(words) == field.dtype.words
        return words

    def serial_words(self) -> list[int] | None:
        spec = self.map.serial
        if spec is None or self.serial is None:
            return None
        if spec.format == "uint32":
            return _convert(int(self.serial), _DATATYPE.UINT32)
        data = self.serial.encode("ascii")[: 2 * spec.count].ljust(2 * spec.count, b"\0")
        return list(struct.unpack(f">{spec.count}H", data))

    def registers(self, table: Table, address: int, count: int) -> list[int] | None:
        """The registers a read returns; None where the meter would answer exception 02."""
        served: dict[int, int] = {}
        for block in self.map.blocks:
            if block.table == table:
                served.update(dict.fromkeys(range(block.address, block.end), FILLER))
        for field in self.map.fields:
            if field.table == table:
                served.update(zip(range(field.address, field.end), self.encode(field),
                                  strict=True))
        spec = self.map.serial
        serial = self.serial_words()
        if spec is not None and serial is not None and spec.table == table:
            served.update(zip(range(spec.address, spec.address + spec.count), serial,
                              strict=True))
        wanted = range(address, address + count)
        if not all(a in served for a in wanted):
            return None
        return [served[a] for a in wanted]


class ModbusSim:
    """A bus of simulated meters and the faults it can play; subclasses give it a wire."""

    def __init__(self, *meters: SimMeter | str, first_unit: int = 1) -> None:
        self.devices: dict[int, SimMeter] = {
            first_unit + i: m if isinstance(m, SimMeter) else SimMeter(m)
            for i, m in enumerate(meters)
        }
        self.silent = False
        self.drop_next = 0
        self.corrupt_next = 0
        self.refuse_next: list[int] = []  # exception codes for the next requests
        self.pace_baudrate: int | None = None
        self.turnaround = 0.0  # the meter's own delay before answering, seconds
        self.requests = 0
        self.exchanges: list[tuple[int, int]] = []  # (request bytes, response bytes)

    @property
    def meter(self) -> SimMeter:
        return next(iter(self.devices.values()))

    @property
    def unit(self) -> int:
        return next(iter(self.devices))

    def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The response PDU, or None when the addressed meter stays quiet."""
        self.requests += 1
        device = self.devices.get(unit)
        if device is None or self.silent or device.silent:
            return None
        if self.drop_next:
            self.drop_next -= 1
            return None
        function = pdu[0]
        if self.refuse_next:
            return bytes([function | 0x80, self.refuse_next.pop(0)])
        if function not in (3, 4) or len(pdu) != 5:
            return bytes([function | 0x80, 1])
        address, count = struct.unpack(">HH", pdu[1:])
        if not 1 <= count <= 125:
            return bytes([function | 0x80, 3])
        table = Table.HOLDING if function == 3 else Table.INPUT
        registers = device.registers(table, address, count)
        if registers is None:
            return bytes([function | 0x80, 2])
        return bytes([function, 2 * count]) + struct.pack(f">{count}H", *registers)

    def delay_for(self, request: int, response: int) -> float:
        delay = self.turnaround
        if self.pace_baudrate:
            delay += exchange_time(request, response, self.pace_baudrate)
        return delay

    def options(self, unit: int | None = None, **extra: Any) -> dict[str, Any]:
        unit = unit or self.unit
        return {"model": self.devices[unit].model, "unit": unit, "timeout": 0.1, "retries": 1,
                **self._wire_options(), **extra}

    def _wire_options(self) -> dict[str, Any]:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> ModbusSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class RtuSim(ModbusSim):
    """The bus on a pty: the driver opens `path`, a symlink to the pty's slave end."""

    def __init__(self, *meters: SimMeter | str, folder: Path | None = None,
                 first_unit: int = 1) -> None:
        super().__init__(*meters, first_unit=first_unit)
        folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="modbus-sim-"))
        self.path = folder / "ttyMETER"
        self._master: int | None = None
        self._slave: int | None = None
        self._buffer = bytearray()
        self._generation = 0

    def _wire_options(self) -> dict[str, Any]:
        return {"transport": "rtu", "port": str(self.path), "baudrate": 9600}

    async def start(self) -> None:
        self._open()

    async def stop(self) -> None:
        await self.vanish()

    async def vanish(self) -> None:
        """Unplug: the open port hangs up and the device path disappears."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def reappear(self) -> None:
        """Plug back in: a new device behind the same path."""
        self._open()

    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before the driver configures the port
        os.set_blocking(master, False)
        # Our own slave fd stays open so the master never reads EIO while the driver has the
        # port closed between reconnects.
        self._master, self._slave = master, slave
        link = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        os.replace(link, self.path)
        self._buffer.clear()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _close(self) -> None:
        self._generation += 1
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:  # nothing after all, or the pty is going away
            return
        self._buffer.extend(data)
        while len(self._buffer) >= REQUEST_BYTES:
            frame = bytes(self._buffer[:REQUEST_BYTES])
            crc = int.from_bytes(frame[-2:], "big")
            if not FramerRTU.check_CRC(frame[:-2], crc):
                del self._buffer[0]  # noise: hunt for a frame start, as a slave does
                continue
            del self._buffer[:REQUEST_BYTES]
            self._request(frame)

    def _request(self, frame: bytes) -> None:
        unit = frame[0]
        response = self.answer(unit, frame[1:-2])
        if response is None or unit == 0:
            return
        body = bytes([unit]) + response
        crc = FramerRTU.compute_CRC(body)
        if self.corrupt_next:
            self.corrupt_next -= 1
            crc ^= 0xFFFF
        answer = body + crc.to_bytes(2, "big")
        self.exchanges.append((len(frame), len(answer)))
        delay = self.delay_for(len(frame), len(answer))
        if delay <= 0:
            self._write(answer)
        else:
            asyncio.get_running_loop().call_later(delay, self._write_if_current,
                                                  self._generation, answer)

    def _write_if_current(self, generation: int, data: bytes) -> None:
        # An answer timed before an unplug must not go to the next pty (or a reused fd).
        if generation == self._generation:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._master, data)


class TcpSim(ModbusSim):
    """The bus behind a Modbus TCP server on 127.0.0.1 (a TCP meter or an RTU gateway)."""

    host = "127.0.0.1"

    def __init__(self, *meters: SimMeter | str, first_unit: int = 1) -> None:
        super().__init__(*meters, first_unit=first_unit)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    def _wire_options(self) -> dict[str, Any]:
        return {"transport": "tcp", "host": self.host, "tcp_port": self.port}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.vanish()

    async def vanish(self) -> None:
        """The gateway goes down: connections drop and new ones are refused."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            # Let each connection's handler see its end, so none is left for the loop to cancel.
            await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 2)
            await self._server.wait_closed()
            self._server = None

    async def reappear(self) -> None:
        await self.start()  # the same port: the meter's address does not change

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                transaction, _protocol, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                response = self.answer(unit, pdu)
                if response is None:
                    continue
                answer = struct.pack(">HHHB", transaction, 0, len(response) + 1, unit) + response
                self.exchanges.append((len(header) + len(pdu), len(answer)))
                delay = self.delay_for(len(header) + len(pdu), len(answer))
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
