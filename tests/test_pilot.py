"""Control pilot drivers: IEC 61851 PWM and voltage thresholds, and an EVSE-WB board over Modbus.

The PWM pilot runs on gpiozero's mock pins with a simulated MCP3008 on the mock SPI bus; the
EVSE-WB board is a small Modbus TCP server on loopback that answers like the board (function
codes 3 and 16 on its holding registers) and can be made silent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pty
import struct
import tty
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from gpiozero import Device, PWMOutputDevice
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, MockSPIDevice

from hal.evse_maps import EVSE_WB
from hal.interfaces import Fault, FaultCleared, FaultRaised, HalEvent, PilotChanged, PilotState
from hal.options import DriverConfigError
from hal.pilot import (
    EvseWbPilot,
    PwmPilot,
    build_pilot,
    duty_cycle_for,
    pilot_state_for,
)

A, B, C, D, E, F = (PilotState.A, PilotState.B, PilotState.C, PilotState.D, PilotState.E,
                    PilotState.F)

# A board dividing -12..+12 V onto 0..3.3 V of a 10-bit ADC.
SCALE = 24 / 1023
OFFSET = -12.0


class BenchFactory(MockFactory):
    """Mock pins with PWM, where the SPI bus pins keep the classes the simulated chip gave them.

    MockFactory refuses to hand out a pin whose class differs in PWM support from the one
    asked for, which keeps a PWM pin and a mock SPI bus from sharing one factory.
    """

    def __init__(self) -> None:
        super().__init__(pin_class=MockPWMPin)

    def pin(self, name, pin_class=None, **kwargs):  # type: ignore[no-untyped-def]
        for _header, info in self.board_info.find_pin(name):
            if info in self.pins:
                return self.pins[info]
        return super().pin(name, pin_class, **kwargs)


class FakeMCP3008(MockSPIDevice):
    """The ADC's side of the SPI exchange: start bit, SGL/DIFF, 3 channel bits, then 12 bits out
    (sample period, null bit, 10-bit result)."""

    def __init__(self) -> None:
        for data_pin in (10, 9):  # plain bits, not PWM duty values
            Device.pin_factory.pin(data_pin, pin_class=MockPin)
        super().__init__(clock_pin=11, mosi_pin=10, miso_pin=9, select_pin=8)
        self.raw = [0] * 8
        self._phase: str | None = None

    def set_volts(self, channel: int, volts: float) -> None:
        self.raw[channel] = max(0, min(1023, round((volts - OFFSET) / SCALE)))

    def on_start(self) -> None:
        super().on_start()
        self._phase = None

    def on_bit(self) -> None:
        if self._phase is None:
            if self.rx_buf[-1]:
                self._phase, self.rx_buf = "command", []
        elif self._phase == "command" and len(self.rx_buf) == 4:
            self._phase = "result"
            self.tx_word(self.raw[self.rx_word() & 7], bits_per_word=12)


@pytest.fixture
def factory() -> Iterator[BenchFactory]:
    Device.pin_factory = BenchFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = None


@pytest.fixture
def adc(factory: BenchFactory) -> FakeMCP3008:
    chip = FakeMCP3008()
    for channel in range(8):
        chip.set_volts(channel, 12.0)
    return chip


async def until(condition: Callable[[], bool], timeout: float = 1.5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def config_errors(options: dict) -> list[str]:
    with pytest.raises(DriverConfigError) as caught:
        build_pilot(1, options)
    return caught.value.errors


# ---- IEC 61851-1 arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(("amps", "duty_percent"), [
    (6, 10.0),
    (10, 16.667),
    (16, 26.667),
    (32, 53.333),
    (51, 85.0),
    (63, 89.2),
    (80, 96.0),
    (0, 100.0),  # no PWM: steady +12 V, nothing offered
])
def test_duty_cycle(amps: float, duty_percent: float) -> None:
    assert duty_cycle_for(amps) * 100 == pytest.approx(duty_percent, abs=0.001)


def test_currents_outside_the_standard_are_clamped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert duty_cycle_for(5.9) == 1.0
        assert duty_cycle_for(1) == 1.0
    assert "below the 6 A minimum" in caplog.text
    assert duty_cycle_for(-3) == 1.0
    assert duty_cycle_for(math.nan) == 1.0
    assert duty_cycle_for(120) == pytest.approx(0.96)


@pytest.mark.parametrize(("volts", "state"), [
    (12.0, A), (11.0, A), (9.0, B), (8.0, B), (6.0, C), (5.0, C), (3.0, D), (0.0, E), (-1.0, E),
    (-12.0, F), (-6.0, E),
])
def test_voltage_to_state(volts: float, state: PilotState) -> None:
    assert pilot_state_for(volts) is state


def test_hysteresis_keeps_the_state_near_a_threshold() -> None:
    assert pilot_state_for(10.3, A) is A
    assert pilot_state_for(10.1, A) is B
    assert pilot_state_for(10.7, B) is B
    assert pilot_state_for(10.9, B) is A
    assert pilot_state_for(7.3, B) is B
    assert pilot_state_for(7.1, B) is C
    assert pilot_state_for(0.0, A, hysteresis=0.0) is E


# ---- GPIO PWM pilot ---------------------------------------------------------------------------


def pwm_options(**extra: object) -> dict:
    return {"type": "gpio_pwm", "pwm_pin": "GPIO18", "adc": "MCP3008", "adc_channel": 0,
            "adc_scale": SCALE, "adc_offset": OFFSET, "poll_interval": 0.01, **extra}


async def test_pwm_output(factory: BenchFactory, adc: FakeMCP3008) -> None:
    pilot = build_pilot(1, pwm_options())
    assert isinstance(pilot, PwmPilot)
    out = factory.pin("GPIO18")
    assert out.frequency == 1000
    assert out.state == 1.0, "steady +12 V until current is offered"
    for amps, duty in [(6, 0.10), (16, 0.26667), (32, 0.53333), (80, 0.96), (0, 1.0), (4, 1.0)]:
        await pilot.set_current_limit(amps)
        assert out.state == pytest.approx(duty, abs=1e-5), amps
        assert out.frequency == 1000
    await pilot.set_current_limit(4)
    assert pilot.current_limit == 0


async def test_pwm_output_inverted(factory: BenchFactory, adc: FakeMCP3008) -> None:
    pilot = build_pilot(1, pwm_options(pwm_active_high=False))
    out = factory.pin("GPIO18")
    await pilot.set_current_limit(16)
    assert out.state == pytest.approx(1 - 0.26667, abs=1e-5)
    assert pilot.duty_cycle == pytest.approx(0.26667, abs=1e-5)


async def test_pilot_reads_states_through_the_adc(factory: BenchFactory,
                                                  adc: FakeMCP3008) -> None:
    pilot = build_pilot(1, pwm_options())
    events: list[HalEvent] = []
    await pilot.start(events.append)
    try:
        await asyncio.sleep(0.05)
        assert pilot.state() is A and events == []
        adc.set_volts(0, 9.0)  # plugged in
        await until(lambda: pilot.state() is B)
        await pilot.set_current_limit(16)
        adc.set_volts(0, 6.0)  # the vehicle asks for power
        await until(lambda: pilot.state() is C)
        adc.set_volts(0, 12.0)  # unplugged
        await until(lambda: pilot.state() is A)
    finally:
        await pilot.stop()
    assert events == [PilotChanged(1, B), PilotChanged(1, C), PilotChanged(1, A)]
    assert factory.pin("GPIO18").state == 1.0, "stop offers nothing"


def manual_pilot(factory: BenchFactory) -> tuple[PwmPilot, list[HalEvent]]:
    """A pilot fed readings by hand through observe(), without its poll loop."""
    pilot = PwmPilot(1, PWMOutputDevice("GPIO18", frequency=1000), lambda: 12.0, lambda: -12.0)
    events: list[HalEvent] = []
    pilot._emit = events.append  # what start() would do, minus the poll task
    return pilot, events


def test_a_change_needs_two_equal_readings(factory: BenchFactory) -> None:
    pilot, events = manual_pilot(factory)
    pilot.observe(9.0)
    assert pilot.state() is A and events == []
    pilot.observe(9.0)
    assert pilot.state() is B and events == [PilotChanged(1, B)]
    pilot.observe(6.0)  # one spike
    pilot.observe(9.0)
    pilot.observe(9.1)
    assert pilot.state() is B and events == [PilotChanged(1, B)]
    pilot.observe(6.0)
    pilot.observe(3.0)  # two different readings are not two equal ones
    assert pilot.state() is B
    pilot.observe(3.0)
    assert pilot.state() is D


def test_readings_near_a_threshold_do_not_flap(factory: BenchFactory) -> None:
    pilot, events = manual_pilot(factory)
    for volts in (9.0, 9.0, 7.4, 7.6, 7.3, 7.4, 7.5):  # noisy, around the B/C threshold
        pilot.observe(volts)
    assert events == [PilotChanged(1, B)]


async def test_missing_diode_is_state_e(factory: BenchFactory) -> None:
    pilot, events = manual_pilot(factory)
    pilot.observe(9.0, -12.0)
    pilot.observe(9.0, -12.0)
    assert pilot.state() is B
    pilot.observe(9.0, 9.0)  # no PWM: the low level is not looked at
    pilot.observe(9.0, 9.0)
    assert pilot.state() is B
    await pilot.set_current_limit(16)
    pilot.observe(9.0, -11.9)
    pilot.observe(9.0, -8.0)  # the low level no longer reaches -12 V: diode shorted
    assert pilot.state() is B
    pilot.observe(9.0, -8.0)
    assert pilot.state() is E
    pilot.observe(6.0, -12.0)
    pilot.observe(6.0, -12.0)
    assert events == [PilotChanged(1, B), PilotChanged(1, E), PilotChanged(1, C)]


async def test_diode_check_through_the_adc(factory: BenchFactory, adc: FakeMCP3008) -> None:
    pilot = build_pilot(1, pwm_options(adc_low_channel=1))
    adc.set_volts(0, 9.0)
    adc.set_volts(1, -12.0)
    events: list[HalEvent] = []
    await pilot.start(events.append)
    try:
        await until(lambda: pilot.state() is B)
        await pilot.set_current_limit(10)
        adc.set_volts(1, -2.0)
        await until(lambda: pilot.state() is E)
    finally:
        await pilot.stop()
    assert events == [PilotChanged(1, B), PilotChanged(1, E)]


async def test_unreadable_adc_is_an_internal_error(factory: BenchFactory) -> None:
    broken = [True]

    def read() -> float:
        if broken[0]:
            raise OSError("SPI transfer failed")
        return 12.0

    pilot = PwmPilot(1, PWMOutputDevice("GPIO18"), read, poll_interval=0.01)
    events: list[HalEvent] = []
    await pilot.start(events.append)
    try:
        await until(lambda: len(events) == 1)
        broken[0] = False
        await until(lambda: len(events) == 2)
        await asyncio.sleep(0.05)
    finally:
        await pilot.stop()
    assert events == [FaultRaised(1, Fault.INTERNAL_ERROR, "pilot ADC unreadable: SPI transfer "
                                  "failed"), FaultCleared(1, Fault.INTERNAL_ERROR)]


def test_pwm_option_errors(factory: BenchFactory) -> None:
    assert config_errors({}) == [
        "type: required"]
    assert config_errors({"type": "gpio-pwm"}) == [
        "type: must be one of 'evse_wb', 'gpio_pwm' (got 'gpio-pwm'); did you mean 'gpio_pwm'?"]
    assert config_errors({"type": "gpio_pwm", "pwm_pin": 18, "adc": "MCP3004",
                          "adc_channel": 5, "adc_low_channel": 5, "adc_scale": 0}) == [
        "adc_channel: must be a whole number from 0 to 3 (got 5)",
        "adc_low_channel: must be a whole number from 0 to 3 (got 5)",
        "adc_scale: must not be 0 (volts per ADC count)",
        "adc_offset: required",
    ]
    assert config_errors(pwm_options(adc_low_channel=0)) == [
        "adc_low_channel: must differ from adc_channel"]
    errors = config_errors(pwm_options(pwm_pin="GPIO10"))  # taken by the SPI bus
    assert len(errors) == 1 and errors[0].startswith(("pwm_pin: ", "adc_channel: "))


# ---- EVSE-WB over Modbus ----------------------------------------------------------------------


class EvseWbBoard:
    """The board's Modbus TCP side: holding registers, function codes 3 and 16, nothing else."""

    def __init__(self) -> None:
        self.registers = {r.address: 0 for r in EVSE_WB.registers}
        self.registers[1002] = 1  # ready, no vehicle
        self.registers[1005] = 18
        self.silent = False
        self.writes: list[tuple[int, list[int]]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> EvseWbBoard:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                if self.silent:
                    continue
                answer = self._answer(pdu)
                writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _answer(self, pdu: bytes) -> bytes:
        function = pdu[0]
        if function == 3:
            address, count = struct.unpack(">HH", pdu[1:5])
            if any(a not in self.registers for a in range(address, address + count)):
                return bytes([0x83, 2])  # illegal data address
            values = [self.registers[a] for a in range(address, address + count)]
            return struct.pack(f">BB{count}H", 3, 2 * count, *values)
        if function == 16:
            address, count, _size = struct.unpack(">HHB", pdu[1:6])
            values = list(struct.unpack(f">{count}H", pdu[6:6 + 2 * count]))
            self.writes.append((address, values))
            for offset, value in enumerate(values):
                self.registers[address + offset] = value
            if address == 1000:
                self.registers[1001] = values[0]
            return struct.pack(">BHH", 16, address, count)
        return bytes([function | 0x80, 1])  # illegal function, as the board answers


@pytest.fixture
async def board() -> AsyncIterator[EvseWbBoard]:
    async with EvseWbBoard() as running:
        yield running


def wb_options(board: EvseWbBoard, **extra: object) -> dict:
    return {"type": "evse_wb", "transport": "tcp", "host": "127.0.0.1", "tcp_port": board.port,
            "poll_interval": 0.03, "timeout": 0.15, "max_missed": 2, **extra}


@pytest.fixture
async def wb(board: EvseWbBoard) -> AsyncIterator[tuple[EvseWbPilot, list[HalEvent]]]:
    pilot = build_pilot(1, wb_options(board))
    assert isinstance(pilot, EvseWbPilot)
    events: list[HalEvent] = []
    await pilot.start(events.append)
    yield pilot, events
    await pilot.stop()


async def test_board_state_changes_become_pilot_events(
    board: EvseWbBoard, wb: tuple[EvseWbPilot, list[HalEvent]],
) -> None:
    pilot, events = wb
    await asyncio.sleep(0.1)
    assert pilot.state() is A and events == []
    for code, state in [(2, B), (3, C), (4, D), (3, C), (5, E), (1, A)]:
        board.registers[1002] = code
        await until(lambda state=state: pilot.state() is state)
    assert events == [PilotChanged(1, s) for s in (B, C, D, C, E, A)]


async def test_current_limit_writes_register_1000(
    board: EvseWbBoard, wb: tuple[EvseWbPilot, list[HalEvent]],
) -> None:
    pilot, _ = wb
    for amps, register in [(16, 16), (32.7, 32), (5, 0), (6, 6), (100, 80), (0, 0)]:
        await pilot.set_current_limit(amps)
        assert board.registers[1000] == register, amps
        assert board.writes[-1] == (1000, [register])


async def test_board_setpoint_is_brought_back_to_ours(board: EvseWbBoard) -> None:
    # After a power cut the board reloads its power-up setpoint and would offer 20 A by itself.
    board.registers[1000] = 20
    pilot = build_pilot(1, wb_options(board))
    await pilot.start(lambda e: None)
    try:
        await until(lambda: board.registers[1000] == 0)
        await pilot.set_current_limit(16)
        board.registers[1000] = 20
        await until(lambda: board.registers[1000] == 16)
    finally:
        await pilot.stop()
    assert board.registers[1000] == 0, "stop withdraws the offer"


async def test_silent_board_is_an_internal_error_until_it_answers(
    board: EvseWbBoard, wb: tuple[EvseWbPilot, list[HalEvent]],
) -> None:
    pilot, events = wb
    board.registers[1002] = 2
    await until(lambda: pilot.state() is B)
    board.silent = True
    await until(lambda: len(events) == 2)
    assert events[1] == FaultRaised(1, Fault.INTERNAL_ERROR, "EVSE board not answering on Modbus")
    assert pilot.state() is B, "the last known state stays"
    await pilot.set_current_limit(16)  # fails quietly; the poll catches up later
    board.silent = False
    board.registers[1002] = 3
    await until(lambda: len(events) == 4)
    assert events[2:] == [FaultCleared(1, Fault.INTERNAL_ERROR), PilotChanged(1, C)]
    await until(lambda: board.registers[1000] == 16)


async def test_unknown_vehicle_state_is_not_trusted(
    board: EvseWbBoard, wb: tuple[EvseWbPilot, list[HalEvent]],
) -> None:
    pilot, events = wb
    board.registers[1002] = 9
    await until(lambda: len(events) == 1)
    assert events == [FaultRaised(1, Fault.INTERNAL_ERROR,
                                  "EVSE board reports unknown vehicle state 9")]
    assert pilot.state() is A
    board.registers[1002] = 2
    await until(lambda: len(events) == 3)
    assert events[1:] == [FaultCleared(1, Fault.INTERNAL_ERROR), PilotChanged(1, B)]


async def test_modbus_exception_answer_is_a_fault(
    board: EvseWbBoard, wb: tuple[EvseWbPilot, list[HalEvent]],
) -> None:
    _, events = wb
    del board.registers[1001]  # the read of 1000..1002 now gets "illegal data address"
    await until(lambda: len(events) == 1)
    assert events == [FaultRaised(1, Fault.INTERNAL_ERROR, "EVSE board rejects Modbus requests")]


def crc16(frame: bytes) -> bytes:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


class RtuLine:
    """The board on an RS-485 line, played through a pseudo-terminal: RTU frames with CRC."""

    def __init__(self, board: EvseWbBoard, unit: int = 1) -> None:
        self.board = board
        self.unit = unit
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._buffer = b""

    def __enter__(self) -> RtuLine:
        asyncio.get_running_loop().add_reader(self.master, self._readable)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self._slave)

    def _readable(self) -> None:
        self._buffer += os.read(self.master, 256)
        while len(self._buffer) >= 8:
            function = self._buffer[1]
            size = 9 + self._buffer[6] if function == 16 and len(self._buffer) > 6 else 8
            if len(self._buffer) < size:
                return
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            if crc16(frame[:-2]) != frame[-2:] or frame[0] != self.unit or self.board.silent:
                continue
            reply = bytes([self.unit]) + self.board._answer(frame[1:-2])
            os.write(self.master, reply + crc16(reply))


async def test_evse_wb_over_rtu(board: EvseWbBoard) -> None:
    with RtuLine(board, unit=3) as line:
        pilot = build_pilot(1, {"type": "evse_wb", "port": line.path, "unit_id": 3,
                                "poll_interval": 0.03, "timeout": 0.2})
        events: list[HalEvent] = []
        await pilot.start(events.append)
        try:
            board.registers[1002] = 2
            await until(lambda: pilot.state() is B)
            await pilot.set_current_limit(13)
            assert board.registers[1000] == 13
        finally:
            await pilot.stop()
    assert events == [PilotChanged(1, B)]
    assert board.registers[1000] == 0


def test_evse_wb_option_errors() -> None:
    assert config_errors({"type": "evse_wb", "port": "COM3", "tcp_port": 502}) == [
        "port: must be a serial device path like /dev/ttyUSB0 (got 'COM3')",
        "tcp_port: only for transport = 'tcp'",
    ]
    assert config_errors({"type": "evse_wb", "transport": "tcp", "baudrate": 9600,
                          "unit_id": 300}) == [
        "unit_id: must be a whole number from 1 to 247 (got 300)",
        "host: required",
        "baudrate: only for transport = 'rtu'",
    ]
    assert config_errors({"type": "evse_wb", "port": "/dev/ttyUSB0", "baudrate": 9601}) == [
        "baudrate: must be one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200 "
        "(got 9601)"]


def test_evse_wb_rtu_builds_without_opening_the_port() -> None:
    pilot = build_pilot(2, {"type": "evse_wb", "port": "/dev/ttyUSB7", "baudrate": 19200,
                            "parity": "E", "unit_id": 3})
    assert isinstance(pilot, EvseWbPilot)
    assert pilot.connector_id == 2 and pilot.state() is A
