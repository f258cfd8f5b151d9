"""The Modbus meter drivers against simulated meters on a pty (RTU) and on loopback TCP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from modbus_sim import ModbusSim, RtuSim, SimMeter, TcpSim

from hal.interfaces import (
    EnergyMeter,
    Fault,
    FaultCleared,
    FaultRaised,
    HalEvent,
    MeterError,
    MeterReading,
)
from hal.meter_maps import METER_MAPS, Quantity, Table, check_map
from hal.meters import ModbusMeter, build_meter, decode_field, decode_serial
from hal.options import DriverConfigError

MODELS = sorted(METER_MAPS)

# Values every model can carry exactly at its resolution (EM340: 0.1 kWh, 0.1 W, 0.1 V, 1 mA;
# ABB: 0.01 A): "equal" below means equal, not close.
THREE = {"energy_wh": 1_234_500.0, "power_w": 7_345.6, "currents": (10.12, 9.87, 11.05),
         "voltages": (230.1, 229.8, 231.4)}
# Exporting (negative power) and an energy that needs every register of its type.
BIG = {"sdm630": 98_765_430.0, "sdm120": 98_765_430.0, "sdm230": 98_765_430.0,
       "abb_b23": 42_949_685_300.0, "em340": 1_234_567_800.0}


def values_for(model: str, **overrides: Any) -> dict[str, Any]:
    phases = METER_MAPS[model].phases
    values = {**THREE, "currents": THREE["currents"][:phases],
              "voltages": THREE["voltages"][:phases]}
    return {**values, **overrides}


@pytest.fixture(params=["rtu", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_sim(tmp_path: Path) -> Callable[..., Any]:
    """`async with make_sim(transport, *meters) as sim:` a running simulated bus."""

    def make(transport: str, *meters: SimMeter | str) -> ModbusSim:
        return RtuSim(*meters, folder=tmp_path) if transport == "rtu" else TcpSim(*meters)

    return make


class Started:
    """A started driver and the events it emitted."""

    def __init__(self, meter: ModbusMeter) -> None:
        self.meter = meter
        self.events: list[HalEvent] = []


@pytest.fixture
async def start_meter() -> AsyncIterator[Callable[..., Any]]:
    started: list[Started] = []

    async def start(options: dict[str, Any], connector_id: int = 1) -> Started:
        meter = build_meter(connector_id, options)
        handle = Started(meter)
        started.append(handle)
        await meter.start(handle.events.append)
        return handle

    yield start
    for handle in started:
        await handle.meter.stop()


# --- the maps themselves ------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_map_is_consistent_and_cites_its_source(model: str) -> None:
    meter_map = METER_MAPS[model]
    check_map(meter_map)
    assert meter_map.source and meter_map.title
    assert meter_map.field(Quantity.ENERGY) is not None
    assert meter_map.field(Quantity.POWER) is not None
    assert len(meter_map.blocks) <= 2  # few requests: the line is slow


def test_raw_encodings_match_the_manuals() -> None:
    """The simulator's registers, hand-checked against each manual's data format."""
    sdm = SimMeter("sdm630", voltages=(230.0, 230.0, 230.0), energy_wh=1_000_000.0)
    assert sdm.registers(Table.INPUT, 0x0000, 2) == [0x4366, 0x0000]  # float32 230.0, MSW first
    assert sdm.registers(Table.INPUT, 0x0048, 2) == [0x447A, 0x0000]  # 1000.0 kWh
    assert sdm.registers(Table.HOLDING, 0xFC00, 2) == [0x015F, 0x94D2]  # 23041234
    # ABB: uint64 in 0.01 kWh, most significant word first; 2**32 + 1234 units
    abb = SimMeter("abb_b23", energy_wh=(2**32 + 1234) * 10.0, power_w=-1500.25)
    assert abb.registers(Table.HOLDING, 0x5000, 4) == [0x0000, 0x0001, 0x0000, 0x04D2]
    assert abb.registers(Table.HOLDING, 0x5B14, 2) == [0xFFFD, 0xB5F7]  # int32 -150025
    # EM340: INT32 least significant word first; kWh x10
    em = SimMeter("em340", energy_wh=1_234_567_800.0, serial="KY123")
    assert em.registers(Table.INPUT, 0x0034, 2) == [0x614E, 0x00BC]  # 12345678
    assert em.registers(Table.HOLDING, 0x5000, 7) == [0x4B59, 0x3132, 0x3300, 0, 0, 0, 0]
    # Outside what a meter serves: exception 02, as from the real one.
    assert sdm.registers(Table.INPUT, 0x0100, 2) is None


def test_driver_decodes_hand_made_registers() -> None:
    em_energy = METER_MAPS["em340"].field(Quantity.ENERGY)
    abb_energy = METER_MAPS["abb_b23"].field(Quantity.ENERGY)
    abb_power = METER_MAPS["abb_b23"].field(Quantity.POWER)
    sdm_voltage = METER_MAPS["sdm630"].field(Quantity.VOLTAGE_L1)
    assert em_energy and abb_energy and abb_power and sdm_voltage
    assert decode_field(em_energy, [0x614E, 0x00BC]) == 1_234_567_800.0
    assert decode_field(abb_energy, [0, 1, 0, 0x04D2]) == (2**32 + 1234) * 10.0
    assert decode_field(abb_power, [0xFFFD, 0xB5F7]) == -1500.25
    assert decode_field(abb_energy, [0xFFFF] * 4) is None  # ABB's "not available"
    assert decode_field(sdm_voltage, [0x4366, 0x199A]) == 230.1  # not 230.10000610351562
    assert decode_field(sdm_voltage, [0x7FC0, 0x0000]) is None  # NaN
    em_serial = METER_MAPS["em340"].serial
    assert em_serial is not None
    assert decode_serial(em_serial, [0x4B59, 0x3132, 0x3300, 0, 0, 0, 0]) == "KY123"


# --- reading each model over each transport -----------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
async def test_reads_what_the_meter_holds(model: str, transport: str,
                                          make_sim: Callable[..., Any],
                                          start_meter: Callable[..., Any]) -> None:
    sim_meter = SimMeter(model, **values_for(model))
    async with make_sim(transport, sim_meter) as sim:
        handle = await start_meter(sim.options())
        meter = handle.meter
        assert isinstance(meter, EnergyMeter)
        assert meter.serial_number == sim_meter.serial
        sent = sim.requests
        reading = await meter.read()
        assert reading == MeterReading(1_234_500.0, 7_345.6, values_for(model)["currents"],
                                       values_for(model)["voltages"])
        # One request per block of the map, nothing more.
        assert sim.requests - sent == len(METER_MAPS[model].blocks)

        sim_meter.energy_wh = BIG[model]
        sim_meter.power_w = -1_500.5  # exporting: signed types must stay signed
        reading = await meter.read()
        assert reading.energy_wh == BIG[model]
        assert reading.power_w == -1_500.5
        assert handle.events == []


@pytest.mark.parametrize("model", ["sdm630", "em340"])
async def test_a_meter_without_serial_number_is_read_all_the_same(
        model: str, make_sim: Callable[..., Any], start_meter: Callable[..., Any]) -> None:
    async with make_sim("rtu", SimMeter(model, serial=None, energy_wh=5_000.0)) as sim:
        handle = await start_meter(sim.options())
        assert handle.meter.serial_number is None
        assert (await handle.meter.read()).energy_wh == 5_000.0
        requests = sim.requests
        await handle.meter.read()
        assert sim.requests - requests == len(METER_MAPS[model].blocks)  # not asked again


async def test_values_the_meter_flags_unavailable(make_sim: Callable[..., Any],
                                                  start_meter: Callable[..., Any]) -> None:
    sim_meter = SimMeter("abb_b23", energy_wh=10_000.0, currents=(5.0, None, 5.0))
    async with make_sim("rtu", sim_meter) as sim:
        handle = await start_meter(sim.options())
        reading = await handle.meter.read()
        assert reading.energy_wh == 10_000.0 and reading.current_a is None
        sim_meter.energy_wh = None
        with pytest.raises(MeterError, match="not available"):
            await handle.meter.read()


async def test_a_wrong_model_is_refused_not_retried(make_sim: Callable[..., Any],
                                                    start_meter: Callable[..., Any]) -> None:
    async with make_sim("rtu", SimMeter("abb_b23")) as sim:
        handle = await start_meter(sim.options(model="sdm630", retries=3))
        requests = sim.requests
        with pytest.raises(MeterError, match=r"refused input registers 0x0000\+12: code 2"):
            await handle.meter.read()
        assert sim.requests - requests == 1


# --- a difficult bus ----------------------------------------------------------------------------


async def test_a_lost_answer_is_retried(transport: str, make_sim: Callable[..., Any],
                                        start_meter: Callable[..., Any]) -> None:
    async with make_sim(transport, SimMeter("sdm630", energy_wh=2_000.0)) as sim:
        handle = await start_meter(sim.options(retries=1, timeout=0.05))
        requests = sim.requests
        sim.drop_next = 1
        assert (await handle.meter.read()).energy_wh == 2_000.0
        assert sim.requests - requests == 2 + 1


async def test_timeout_then_recovery(transport: str, make_sim: Callable[..., Any],
                                     start_meter: Callable[..., Any]) -> None:
    async with make_sim(transport, SimMeter("em340", energy_wh=3_000.0)) as sim:
        handle = await start_meter(sim.options(retries=1, timeout=0.05))
        sim.silent = True
        with pytest.raises(MeterError, match=r"no answer within 0.05 s \(2 attempts\)"):
            await handle.meter.read()
        sim.silent = False
        assert (await handle.meter.read()).energy_wh == 3_000.0


async def test_crc_errors_are_retried(make_sim: Callable[..., Any],
                                      start_meter: Callable[..., Any]) -> None:
    async with make_sim("rtu", SimMeter("abb_b23", energy_wh=4_000.0)) as sim:
        handle = await start_meter(sim.options(retries=2, timeout=0.05))
        requests = sim.requests
        sim.corrupt_next = 2
        assert (await handle.meter.read()).energy_wh == 4_000.0
        assert sim.requests - requests == 2 + 2

        none = await start_meter(sim.options(retries=0, timeout=0.05), connector_id=2)
        sim.corrupt_next = 1
        with pytest.raises(MeterError, match="no answer"):
            await none.meter.read()


async def test_a_gateway_without_answer_from_its_meter_is_retried(
        make_sim: Callable[..., Any], start_meter: Callable[..., Any]) -> None:
    async with make_sim("tcp", SimMeter("em340", energy_wh=5_500.0)) as sim:
        handle = await start_meter(sim.options(retries=1))
        requests = sim.requests
        sim.refuse_next = [11]  # gateway target device failed to respond
        assert (await handle.meter.read()).energy_wh == 5_500.0
        assert sim.requests - requests == 2 + 1
        sim.refuse_next = [11, 11]
        with pytest.raises(MeterError, match=r"exception 11 \(gateway target"):
            await handle.meter.read()


async def test_a_read_the_agent_gives_up_on_still_counts_as_silence(
        make_sim: Callable[..., Any], start_meter: Callable[..., Any]) -> None:
    async with make_sim("rtu", SimMeter("sdm630", energy_wh=1_500.0)) as sim:
        handle = await start_meter(sim.options(retries=3, timeout=0.5, stale_after=0))
        sim.silent = True
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handle.meter.read(), 0.05)
        assert [type(e) for e in handle.events] == [FaultRaised]
        sim.silent = False
        assert (await handle.meter.read()).energy_wh == 1_500.0
        assert [type(e) for e in handle.events] == [FaultRaised, FaultCleared]


async def test_a_silent_meter_raises_power_meter_failure_once(
        transport: str, make_sim: Callable[..., Any], start_meter: Callable[..., Any]) -> None:
    async with make_sim(transport, SimMeter("sdm120", energy_wh=6_000.0)) as sim:
        handle = await start_meter(sim.options(retries=0, timeout=0.03, stale_after=0.2),
                                   connector_id=2)
        meter = handle.meter
        assert (await meter.read()).energy_wh == 6_000.0
        sim.silent = True
        with pytest.raises(MeterError):
            await meter.read()
        assert handle.events == []  # not yet stale_after: readings are stale, no fault
        await asyncio.sleep(0.2)
        for _ in range(3):
            with pytest.raises(MeterError):
                await meter.read()
        assert len(handle.events) == 1
        event = handle.events[0]
        assert isinstance(event, FaultRaised)
        assert (event.connector_id, event.fault) == (2, Fault.POWER_METER_FAILURE)
        assert "sdm120" in event.info and "no reading for" in event.info

        sim.silent = False
        assert (await meter.read()).energy_wh == 6_000.0
        assert handle.events[1:] == [FaultCleared(2, Fault.POWER_METER_FAILURE)]
        await meter.read()
        assert len(handle.events) == 2


async def test_energy_never_goes_backwards(make_sim: Callable[..., Any],
                                           start_meter: Callable[..., Any],
                                           caplog: pytest.LogCaptureFixture) -> None:
    sim_meter = SimMeter("em340", energy_wh=10_000.0)
    async with make_sim("tcp", sim_meter) as sim:
        handle = await start_meter(sim.options())
        meter = handle.meter
        reported = [(await meter.read()).energy_wh]
        with caplog.at_level(logging.WARNING, logger="hal.meters"):
            # a glitch, a big drop (meter swapped?), recovery, a second glitch
            for energy in (9_900.0, 9_800.0, 2_000.0, 10_100.0, 10_000.0, 10_200.0):
                sim_meter.energy_wh = energy
                reported.append((await meter.read()).energy_wh)
        assert reported == [10_000.0, 10_000.0, 10_000.0, 10_000.0, 10_100.0, 10_100.0,
                            10_200.0]
        warnings = [r for r in caplog.records if r.name == "hal.meters"]
        assert [r.levelno for r in warnings] == [logging.WARNING, logging.ERROR, logging.WARNING]
        assert "went back 100" in warnings[0].getMessage()
        assert "fell by 8000 Wh" in warnings[1].getMessage()
        assert "went back 100" in warnings[2].getMessage()


# --- unplugged and back -------------------------------------------------------------------------


async def test_serial_adapter_unplugged_and_back(make_sim: Callable[..., Any],
                                                 start_meter: Callable[..., Any]) -> None:
    sim_meter = SimMeter("sdm630", energy_wh=7_000.0)
    async with make_sim("rtu", sim_meter) as sim:
        handle = await start_meter(sim.options(retries=0, timeout=0.05, stale_after=0.1))
        meter = handle.meter
        assert (await meter.read()).energy_wh == 7_000.0
        await sim.vanish()
        with pytest.raises(MeterError):
            await meter.read()
        await asyncio.sleep(0.12)
        with pytest.raises(MeterError, match="cannot open"):
            await meter.read()
        assert [type(e) for e in handle.events] == [FaultRaised]

        sim_meter.serial = "23049999"  # a replacement meter, and it has counted less
        sim_meter.energy_wh = 50.0
        await sim.reappear()
        reading = await meter.read()
        assert reading.energy_wh == 7_000.0
        assert meter.serial_number == "23049999"
        assert handle.events[1:] == [FaultCleared(1, Fault.POWER_METER_FAILURE)]


async def test_tcp_gateway_down_and_back(make_sim: Callable[..., Any],
                                         start_meter: Callable[..., Any]) -> None:
    async with make_sim("tcp", SimMeter("abb_b23", energy_wh=8_000.0)) as sim:
        handle = await start_meter(sim.options(retries=0, timeout=0.05))
        assert (await handle.meter.read()).energy_wh == 8_000.0
        await sim.vanish()
        with pytest.raises(MeterError):
            await handle.meter.read()
        with pytest.raises(MeterError, match="cannot open"):
            await handle.meter.read()
        await sim.reappear()
        assert (await handle.meter.read()).energy_wh == 8_000.0


async def test_a_meter_absent_at_start_is_picked_up_later(
        make_sim: Callable[..., Any], start_meter: Callable[..., Any]) -> None:
    async with make_sim("rtu", SimMeter("em340", energy_wh=9_000.0)) as sim:
        sim.silent = True
        handle = await start_meter(sim.options(retries=0, timeout=0.05))
        assert handle.meter.serial_number is None
        sim.silent = False
        assert (await handle.meter.read()).energy_wh == 9_000.0
        assert handle.meter.serial_number == sim.meter.serial


async def test_meters_of_two_connectors_share_one_bus(make_sim: Callable[..., Any],
                                                      start_meter: Callable[..., Any]) -> None:
    one = SimMeter("sdm630", energy_wh=1_000.0)
    two = SimMeter("sdm630", energy_wh=2_000.0, serial="23040002")
    async with make_sim("rtu", one, two) as sim:
        first = await start_meter(sim.options(unit=1), connector_id=1)
        second = await start_meter(sim.options(unit=2), connector_id=2)
        assert second.meter.serial_number == "23040002"
        for _ in range(3):
            a, b = await asyncio.gather(first.meter.read(), second.meter.read())
            assert (a.energy_wh, b.energy_wh) == (1_000.0, 2_000.0)

        other = await start_meter(sim.options(unit=2, baudrate=19200), connector_id=3)
        with pytest.raises(MeterError, match="same settings"):
            await other.meter.read()


# --- configuration ------------------------------------------------------------------------------


def test_defaults_per_model_and_transport() -> None:
    sdm120 = build_meter(1, {"model": "sdm120", "port": "/dev/ttyUSB0"}).settings
    assert (sdm120.transport, sdm120.baudrate, sdm120.parity, sdm120.stopbits) == (
        "rtu", 2400, "N", 1)
    assert (sdm120.unit, sdm120.timeout, sdm120.retries, sdm120.stale_after) == (1, 1.0, 2, 10.0)
    assert build_meter(1, {"model": "sdm630", "port": "/dev/ttyUSB0"}).settings.baudrate == 9600
    tcp = build_meter(2, {"driver": "modbus", "model": "em340", "transport": "tcp",
                          "host": "meter.local"}).settings
    assert (tcp.host, tcp.tcp_port) == ("meter.local", 502)


@pytest.mark.parametrize(("options", "expected"), [
    ({"port": "/dev/ttyUSB0"}, ["model: required"]),
    ({"model": "sdm360", "port": "/dev/ttyUSB0"}, ["model: must be one of", "did you mean"]),
    ({"model": "sdm630"}, ["port: required with transport 'rtu'"]),
    ({"model": "sdm630", "port": "COM3"},
     ["port: must be a serial device path like /dev/ttyUSB0 (got 'COM3')"]),
    ({"model": "sdm630", "transport": "tcp"}, ["host: required with transport 'tcp'"]),
    ({"model": "sdm630", "transport": "tcp", "host": "10.0.0.9", "port": 502},
     ["port: only used with transport 'rtu' (the TCP port is tcp_port)"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "host": "10.0.0.9"},
     ["host: only used with transport 'tcp'"]),
    ({"model": "sdm630", "transport": "udp", "port": "/dev/ttyUSB0"},
     ["transport: must be one of 'rtu', 'tcp'"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "unit": 0},
     ["unit: must be a whole number from 1 to 247 (got 0)"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "baudrate": "9600"}, ["baudrate: must be one"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "parity": "even"}, ["parity: must be one of"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "stopbits": 3}, ["stopbits: must be one of"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "timeout": 0}, ["timeout: must be a number"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "retries": -1}, ["retries: must be a whole"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "stale_after": "10s"},
     ["stale_after: must be a number"]),
    ({"model": "sdm630", "transport": "tcp", "host": "h", "tcp_port": 70000},
     ["tcp_port: must be a whole number from 1 to 65535"]),
    ({"model": "sdm630", "port": "/dev/ttyUSB0", "baud": 9600},
     ["baud: unknown option (did you mean 'baudrate'?)"]),
])
def test_bad_options_are_named(options: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(DriverConfigError) as caught:
        build_meter(1, options)
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message
    assert len(caught.value.errors) == 1, caught.value.errors


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(DriverConfigError) as caught:
        build_meter(1, {"model": "x", "port": "tty", "unit": 300, "colour": "red"})
    keys = [error.split(":")[0] for error in caught.value.errors]
    assert keys == ["model", "unit", "port", "colour"]

