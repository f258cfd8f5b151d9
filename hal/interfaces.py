"""The device kinds a charger is built from, as small interfaces.

Drivers push what they observe (pilot changes, card taps, faults) into an event sink given to
`start()`; the agent commands them through async methods so a driver may do I/O without
stalling the event loop. Nothing here knows about OCPP: faults are named after the physical
condition, and the protocol adapters choose the wire vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class PilotState(StrEnum):
    """IEC 61851-1 control pilot states."""

    A = "A"  # no vehicle
    B = "B"  # vehicle connected, not asking for power
    C = "C"  # vehicle asks for power
    D = "D"  # vehicle asks for power, ventilation required
    E = "E"  # pilot shorted or EVSE without power
    F = "F"  # EVSE fault / not available

    @property
    def vehicle_present(self) -> bool:
        return self in (PilotState.B, PilotState.C, PilotState.D)

    @property
    def wants_power(self) -> bool:
        return self in (PilotState.C, PilotState.D)


class Fault(StrEnum):
    """Physical fault conditions a device can report."""

    GROUND_FAILURE = "ground_failure"
    OVER_CURRENT = "over_current"
    EV_OVER_CURRENT = "ev_over_current"  # the vehicle draws more than the pilot offers
    OVER_VOLTAGE = "over_voltage"
    UNDER_VOLTAGE = "under_voltage"
    HIGH_TEMPERATURE = "high_temperature"
    POWER_SWITCH_FAILURE = "power_switch_failure"
    EV_COMMUNICATION_ERROR = "ev_communication_error"
    POWER_METER_FAILURE = "power_meter_failure"
    READER_FAILURE = "reader_failure"
    CONNECTOR_LOCK_FAILURE = "connector_lock_failure"
    EMERGENCY_STOP = "emergency_stop"
    TAMPER = "tamper"  # the enclosure opened: live parts may be within reach
    INTERNAL_ERROR = "internal_error"
    OTHER = "other"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Accept `ground_failure`, `ground-failure` or `GroundFailure`."""
        wanted = text.replace("-", "").replace("_", "").lower()
        for fault in cls:
            if fault.value.replace("_", "") == wanted:
                return fault
        allowed = ", ".join(f.value for f in cls)
        raise ValueError(f"unknown fault {text!r} (allowed: {allowed})")

    @property
    def blocks_charging(self) -> bool:
        """A reader or meter problem, or a vehicle over its offer (the breaker guards against
        real overcurrent), is reported but does not make charging unsafe."""
        return self not in (Fault.READER_FAILURE, Fault.POWER_METER_FAILURE,
                            Fault.EV_OVER_CURRENT)


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One reading of an energy meter; None where the meter does not measure a quantity."""

    energy_wh: float | None
    power_w: float | None = None
    current_a: tuple[float, ...] | None = None  # per phase L1, L2, L3
    voltage_v: tuple[float, ...] | None = None  # per phase, to neutral


@dataclass(frozen=True, slots=True)
class PilotChanged:
    connector_id: int
    state: PilotState


@dataclass(frozen=True, slots=True)
class CardPresented:
    uid: str  # upper-case hex, as read
    connector_id: int | None = None  # None when one reader serves the whole station


@dataclass(frozen=True, slots=True)
class FaultRaised:
    connector_id: int  # 0 = the whole station
    fault: Fault
    info: str = ""


@dataclass(frozen=True, slots=True)
class FaultCleared:
    connector_id: int
    fault: Fault | None = None  # None clears every fault of the connector


HalEvent = PilotChanged | CardPresented | FaultRaised | FaultCleared
EventSink = Callable[[HalEvent], None]


class MeterError(Exception):
    """The meter did not answer, or answered something unusable."""


@runtime_checkable
class Device(Protocol):
    async def start(self, emit: EventSink) -> None: ...
    async def stop(self) -> None: ...


class Pilot(Device, Protocol):
    connector_id: int

    def state(self) -> PilotState: ...

    async def set_current_limit(self, amps: float) -> None:
        """Offer `amps` to the vehicle through the PWM duty cycle; 0 offers nothing."""
        ...


class Contactor(Device, Protocol):
    connector_id: int

    @property
    def is_closed(self) -> bool: ...

    async def set_closed(self, closed: bool) -> None: ...


class EnergyMeter(Device, Protocol):
    connector_id: int

    async def read(self) -> MeterReading:
        """Raises MeterError when the meter cannot be read."""
        ...


class CardReader(Device, Protocol):
    pass


class ConnectorLock(Device, Protocol):
    connector_id: int

    async def unlock(self) -> bool:
        """Release the plug; False when the lock feedback says it did not open."""
        ...


@dataclass
class StationHardware:
    """The devices of one charging station, as built by the driver factory."""

    pilots: dict[int, Pilot]
    contactors: dict[int, Contactor]
    meters: dict[int, EnergyMeter]
    card_readers: list[CardReader]
    locks: dict[int, ConnectorLock]

    def devices(self) -> list[Device]:
        return [
            *self.pilots.values(),
            *self.contactors.values(),
            *self.meters.values(),
            *self.card_readers,
            *self.locks.values(),
        ]
