"""Builds the devices a configuration names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hal.interfaces import StationHardware
from hal.mock import MockStation


class DeviceChoice(Protocol):
    driver: str
    options: dict


class HardwareChoice(Protocol):
    pilot: DeviceChoice
    contactor: DeviceChoice
    meter: DeviceChoice
    card_reader: DeviceChoice


@dataclass
class BuiltHardware:
    hardware: StationHardware
    mock: MockStation | None  # present when any device is simulated, for `cpagent sim`


def build_hardware(
    choice: HardwareChoice, connectors: int, phases: int, state_dir: Path | None = None
) -> BuiltHardware:
    drivers = {choice.pilot.driver, choice.contactor.driver, choice.meter.driver,
               choice.card_reader.driver}
    if drivers != {"mock"}:
        raise ValueError(f"this build drives only the mock devices (asked for {sorted(drivers)})")
    mock = MockStation(connectors, phases)
    speedup = choice.meter.options.get("speedup", 1.0)
    for connector_id in mock.hardware.meters:
        meter = mock.meter(connector_id)
        meter.speedup = float(speedup)
        if state_dir is not None:
            meter.state_file = state_dir / f"mock-meter-{connector_id}"
    return BuiltHardware(mock.hardware, mock)
