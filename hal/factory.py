"""Builds the devices a configuration names.

Each `[hardware.<kind>]` table names a driver and gives its options; options for one
connector only go in a `connector_N` sub-table (`[hardware.meter.connector_2] unit = 2`),
merged over the shared ones. Drivers import their libraries only when chosen, so a station on
mock hardware never loads gpiozero or pymodbus.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hal.interfaces import Device, StationHardware
from hal.mock import MockStation
from hal.options import DriverConfigError

# Drivers per device kind; the first is the default.
DRIVERS: dict[str, tuple[str, ...]] = {
    "pilot": ("mock", "evse_wb", "gpio_pwm"),
    "contactor": ("mock", "gpio", "none"),
    "meter": ("mock", "modbus"),
    "card_reader": ("mock", "rdm6300", "pn532", "line", "none"),
    "lock": ("mock", "gpio", "none"),
    "inputs": ("none", "gpio"),
}
_CONNECTOR_TABLE = re.compile(r"^connector_(\d+)$")


class DeviceChoice(Protocol):
    driver: str
    options: dict


class HardwareChoice(Protocol):
    pilot: DeviceChoice
    contactor: DeviceChoice
    meter: DeviceChoice
    card_reader: DeviceChoice
    lock: DeviceChoice
    inputs: DeviceChoice


@dataclass
class BuiltHardware:
    hardware: StationHardware
    mock: MockStation | None  # present when any device is simulated, for `cpagent sim`
    extra: list[Device] = field(default_factory=list)  # fault inputs and the like


class BoardContactor:
    """For EVSE boards that switch their own contactor: only remembers what was asked."""

    def __init__(self, connector_id: int) -> None:
        self.connector_id = connector_id
        self._closed = False

    async def start(self, emit: Any) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def set_closed(self, closed: bool) -> None:
        self._closed = closed


def connector_options(options: dict, connector_id: int, connectors: int) -> dict:
    """The shared options with connector N's own merged over them."""
    merged = {k: v for k, v in options.items() if not _CONNECTOR_TABLE.match(k)}
    for key, value in options.items():
        match = _CONNECTOR_TABLE.match(key)
        if not match:
            continue
        if not isinstance(value, dict) or not 1 <= int(match[1]) <= connectors:
            raise DriverConfigError([f"{key}: must be a table for a connector 1..{connectors}"])
        if int(match[1]) == connector_id:
            merged.update(value)
    return merged


def _per_connector(kind: str, driver: str) -> Callable[[int, dict], Device] | None:
    """The builder of a real driver, imported on demand."""
    if kind == "pilot":
        from hal.pilot import build_pilot

        return lambda c, o: build_pilot(c, {**o, "type": driver})
    if kind == "contactor" and driver == "gpio":
        from hal.gpio import build_contactor

        return build_contactor
    if kind == "contactor" and driver == "none":
        return lambda c, o: BoardContactor(c)
    if kind == "meter":
        from hal.meters import build_meter

        return build_meter
    if kind == "lock" and driver == "gpio":
        from hal.gpio import build_lock

        return build_lock
    return None


def build_hardware(
    choice: HardwareChoice, connectors: int, phases: int, state_dir: Path | None = None
) -> BuiltHardware:
    """Raises DriverConfigError with every problem, each prefixed by its table."""
    mock = MockStation(connectors, phases)
    hardware = mock.hardware
    errors: list[str] = []
    speedup = choice.meter.options.get("speedup", 1.0) if choice.meter.driver == "mock" else 1
    for connector_id in hardware.meters:
        meter = mock.meter(connector_id)
        meter.speedup = float(speedup)
        if state_dir is not None:
            meter.state_file = state_dir / f"mock-meter-{connector_id}"
    targets: dict[str, dict[int, Any]] = {
        "pilot": hardware.pilots,
        "contactor": hardware.contactors,
        "meter": hardware.meters,
        "lock": hardware.locks,
    }
    for kind, devices in targets.items():
        device = getattr(choice, kind)
        if device.driver == "mock":
            continue
        if device.driver == "none" and kind == "lock":
            devices.clear()  # a tethered cable: nothing to lock
            continue
        builder = _per_connector(kind, device.driver)
        assert builder is not None, (kind, device.driver)
        for connector_id in list(devices):
            try:
                options = connector_options(device.options, connector_id, connectors)
                devices[connector_id] = builder(connector_id, options)
            except DriverConfigError as exc:
                errors += [f"hardware.{kind}.{e}" for e in exc.errors]
                break
    reader = choice.card_reader
    if reader.driver == "none":
        hardware.card_readers.clear()
    elif reader.driver != "mock":
        from hal.card_readers import build_card_reader

        try:
            hardware.card_readers[:] = [build_card_reader({**reader.options,
                                                           "model": reader.driver})]
        except DriverConfigError as exc:
            errors += [f"hardware.card_reader.{e}" for e in exc.errors]
    extra: list[Device] = []
    if choice.inputs.driver == "gpio":
        from hal.gpio import build_inputs

        try:
            extra = list(build_inputs(choice.inputs.options))
        except DriverConfigError as exc:
            errors += [f"hardware.inputs.{e}" for e in exc.errors]
    errors += _shared_ports(choice, connectors)
    if errors:
        raise DriverConfigError(errors)
    return BuiltHardware(hardware, mock if _any_mock(choice) else None, extra)


def _shared_ports(choice: HardwareChoice, connectors: int) -> list[str]:
    """Meters share one RS-485 adapter among themselves, but every EVSE board poller, the
    meters' link and a card reader each open a serial port exclusively: say so at load, not
    at the first read."""
    users: dict[str, tuple[str, str]] = {}  # port -> (kind, where)
    errors = []
    for kind in ("pilot", "meter", "card_reader"):
        device = getattr(choice, kind)
        if device.driver in ("mock", "none"):
            continue
        ids = range(1, connectors + 1) if kind != "card_reader" else [0]
        for connector_id in ids:
            try:
                options = connector_options(device.options, connector_id, connectors)
            except DriverConfigError:
                continue  # reported by the builder
            port = options.get("port")
            if not isinstance(port, str) or options.get("transport", "rtu") != "rtu":
                continue
            where = f"hardware.{kind}" + (f" (connector {connector_id})" if connector_id else "")
            if port in users:
                other_kind, other = users[port]
                if not (kind == other_kind == "meter"):
                    errors.append(f"hardware.{kind}.port: {port} is also used by {other}; this "
                                  f"build opens a serial port from one driver only, so give "
                                  f"each its own adapter")
                continue
            users[port] = (kind, where)
    return errors


def _any_mock(choice: HardwareChoice) -> bool:
    return any(getattr(choice, kind).driver == "mock" for kind in
               ("pilot", "contactor", "meter", "card_reader"))


def check_hardware(choice: HardwareChoice, connectors: int, phases: int) -> list[str]:
    """Validate every driver's options without touching hardware: GPIO devices are built on
    gpiozero's mock pins, serial ports and Modbus links are only opened by start()."""
    from gpiozero import Device as GpioDevice
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    previous = GpioDevice.pin_factory
    GpioDevice.pin_factory = MockFactory(pin_class=MockPWMPin)
    try:
        build_hardware(choice, connectors, phases)
    except DriverConfigError as exc:
        return exc.errors
    except Exception as exc:  # a driver that cannot even be tried here: say so, precisely
        return [f"hardware: the drivers could not be checked here ({type(exc).__name__}: "
                f"{exc})"]
    finally:
        GpioDevice.pin_factory = previous
    return []
