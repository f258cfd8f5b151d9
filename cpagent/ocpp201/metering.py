"""Meter readings as OCPP 2.0.1 MeterValue entries (numbers, units of measure)."""

from __future__ import annotations

from typing import Any

from cpagent.clock import format_time
from cpagent.core.model import Sample
from cpagent.ocpp201.vocabulary import CONTEXTS


def _number(value: float) -> float | int:
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded


def sampled_values(sample: Sample, measurands: list[str]) -> list[dict]:
    reading = sample.reading
    context = CONTEXTS[sample.context]
    values: list[dict[str, Any]] = []

    def add(measurand: str, value: float, unit: str, phase: str | None = None) -> None:
        entry: dict[str, Any] = {"value": _number(value), "context": context,
                                 "measurand": measurand, "location": "Outlet",
                                 "unitOfMeasure": {"unit": unit}}
        if phase:
            entry["phase"] = phase
        values.append(entry)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register" and reading.energy_wh is not None:
            add(measurand, reading.energy_wh, "Wh")
        elif measurand == "Power.Active.Import" and reading.power_w is not None:
            add(measurand, reading.power_w, "W")
        elif measurand == "Current.Import" and reading.current_a is not None:
            for n, amps in enumerate(reading.current_a, start=1):
                add(measurand, amps, "A", f"L{n}")
        elif measurand == "Voltage" and reading.voltage_v is not None:
            for n, volts in enumerate(reading.voltage_v, start=1):
                add(measurand, volts, "V", f"L{n}-N")
        elif measurand == "Current.Offered":
            add(measurand, sample.offered_amps, "A")
    return values


def meter_value(sample: Sample, measurands: list[str]) -> dict | None:
    values = sampled_values(sample, measurands)
    if not values:
        return None
    return {"timestamp": format_time(sample.timestamp), "sampledValue": values}
