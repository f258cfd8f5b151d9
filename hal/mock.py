"""In-memory devices and a simulated vehicle, for tests, the demo and `cpagent sim`.

The simulated vehicle behaves like a real one on the control pilot: once plugged it sits in
state B, asks for power (state C) as soon as the EVSE offers current through the PWM, and drops
back to B when the user (or the car) pauses. The meter integrates energy while the contactor is
closed and the vehicle draws power, so sessions report believable figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hal.interfaces import (
    CardPresented,
    EventSink,
    Fault,
    FaultCleared,
    FaultRaised,
    MeterError,
    MeterReading,
    PilotChanged,
    PilotState,
    StationHardware,
)

NOMINAL_VOLTAGE = 230.0


def _discard(_event: object) -> None:
    pass


@dataclass
class _Vehicle:
    plugged: bool = False
    paused: bool = False  # the car (or its owner) does not want power for now
    diode_failed: bool = False


class MockPilot:
    def __init__(self, connector_id: int, vehicle: _Vehicle) -> None:
        self.connector_id = connector_id
        self._vehicle = vehicle
        self._emit: EventSink = _discard
        self._state = PilotState.A
        self.current_limit = 0.0
        self.hung = False  # a board that stopped answering: commands wait until it answers

    async def start(self, emit: EventSink) -> None:
        self._emit = emit

    async def stop(self) -> None:
        self._emit = _discard

    def state(self) -> PilotState:
        return self._state

    async def set_current_limit(self, amps: float) -> None:
        while self.hung:
            await asyncio.sleep(0.01)
        self.current_limit = amps
        self.update()

    def update(self) -> None:
        vehicle = self._vehicle
        if not vehicle.plugged:
            new = PilotState.A
        elif vehicle.diode_failed:
            new = PilotState.E
        elif self.current_limit > 0 and not vehicle.paused:
            new = PilotState.C
        else:
            new = PilotState.B
        if new is not self._state:
            self._state = new
            self._emit(PilotChanged(self.connector_id, new))


class MockContactor:
    def __init__(self, connector_id: int) -> None:
        self.connector_id = connector_id
        self._closed = False
        self.switch_count = 0

    async def start(self, emit: EventSink) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def set_closed(self, closed: bool) -> None:
        if closed != self._closed:
            self.switch_count += 1
        self._closed = closed


class MockMeter:
    def __init__(
        self,
        connector_id: int,
        pilot: MockPilot,
        contactor: MockContactor,
        phases: int,
        clock: Callable[[], float] = time.monotonic,
        speedup: float = 1.0,
    ) -> None:
        self.connector_id = connector_id
        self._pilot = pilot
        self._contactor = contactor
        self._phases = phases
        self._clock = clock
        self.speedup = speedup  # the demo fast-forwards energy so a short session shows kWh
        self.energy_wh = 0.0
        self.failing = False
        self._last = clock()
        # Like a real meter's register, the energy outlives the process when given a file.
        self.state_file: Path | None = None

    async def start(self, emit: EventSink) -> None:
        self._last = self._clock()
        if self.state_file is not None and self.state_file.exists():
            with contextlib.suppress(ValueError, OSError):
                self.energy_wh = float(self.state_file.read_text())

    async def stop(self) -> None:
        pass

    def _persist(self) -> None:
        if self.state_file is not None:
            partial = self.state_file.with_suffix(".tmp")
            partial.write_text(repr(self.energy_wh))
            partial.replace(self.state_file)

    def power_w(self) -> float:
        if self._contactor.is_closed and self._pilot.state().wants_power:
            return self._pilot.current_limit * NOMINAL_VOLTAGE * self._phases
        return 0.0

    def _integrate(self) -> None:
        now = self._clock()
        added = self.power_w() * (now - self._last) * self.speedup / 3600.0
        self._last = now
        if added:
            self.energy_wh += added
            self._persist()

    async def read(self) -> MeterReading:
        self._integrate()
        if self.failing:
            raise MeterError("simulated meter does not answer")
        power = self.power_w()
        per_phase = power / NOMINAL_VOLTAGE / self._phases if power else 0.0
        return MeterReading(
            energy_wh=round(self.energy_wh, 1),
            power_w=round(power, 1),
            current_a=tuple(round(per_phase, 2) for _ in range(self._phases)),
            voltage_v=tuple(NOMINAL_VOLTAGE for _ in range(self._phases)),
        )


class MockCardReader:
    def __init__(self) -> None:
        self._emit: EventSink = _discard

    async def start(self, emit: EventSink) -> None:
        self._emit = emit

    async def stop(self) -> None:
        self._emit = _discard

    def present(self, uid: str, connector_id: int | None = None) -> None:
        self._emit(CardPresented(uid.strip().upper(), connector_id))


class MockLock:
    def __init__(self, connector_id: int) -> None:
        self.connector_id = connector_id
        self.unlock_count = 0
        self.jammed = False

    async def start(self, emit: EventSink) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def unlock(self) -> bool:
        self.unlock_count += 1
        return not self.jammed


@dataclass
class MockStation:
    """All mock devices of a station plus the simulated vehicles, driven by `sim_*` methods."""

    connectors: int
    phases: int = 3
    clock: Callable[[], float] = time.monotonic
    vehicles: dict[int, _Vehicle] = field(init=False)
    hardware: StationHardware = field(init=False)
    _emit: EventSink = field(init=False, default=_discard)

    def __post_init__(self) -> None:
        self.vehicles = {c: _Vehicle() for c in range(1, self.connectors + 1)}
        pilots = {c: MockPilot(c, v) for c, v in self.vehicles.items()}
        contactors = {c: MockContactor(c) for c in self.vehicles}
        meters = {
            c: MockMeter(c, pilots[c], contactors[c], self.phases, self.clock)
            for c in self.vehicles
        }
        self.hardware = StationHardware(
            pilots=pilots,
            contactors=contactors,
            meters=meters,
            card_readers=[MockCardReader()],
            locks={c: MockLock(c) for c in self.vehicles},
        )

    def attach(self, emit: EventSink) -> None:
        self._emit = emit

    def _vehicle(self, connector_id: int) -> _Vehicle:
        try:
            return self.vehicles[connector_id]
        except KeyError:
            raise ValueError(
                f"no connector {connector_id} (this station has 1..{self.connectors})"
            ) from None

    def _pilot(self, connector_id: int) -> MockPilot:
        pilot = self.hardware.pilots[connector_id]
        assert isinstance(pilot, MockPilot)
        return pilot

    def plug(self, connector_id: int = 1) -> None:
        vehicle = self._vehicle(connector_id)
        vehicle.plugged, vehicle.paused, vehicle.diode_failed = True, False, False
        self._pilot(connector_id).update()

    def unplug(self, connector_id: int = 1) -> None:
        vehicle = self._vehicle(connector_id)
        vehicle.plugged = False
        vehicle.diode_failed = False
        self._pilot(connector_id).update()

    def suspend(self, connector_id: int = 1) -> None:
        self._vehicle(connector_id).paused = True
        self._pilot(connector_id).update()

    def resume(self, connector_id: int = 1) -> None:
        self._vehicle(connector_id).paused = False
        self._pilot(connector_id).update()

    def diode_fail(self, connector_id: int = 1) -> None:
        self._vehicle(connector_id).diode_failed = True
        self._pilot(connector_id).update()
        self._emit(FaultRaised(connector_id, Fault.EV_COMMUNICATION_ERROR, "pilot diode missing"))

    def swipe(self, uid: str, connector_id: int | None = None) -> None:
        reader = self.hardware.card_readers[0]
        assert isinstance(reader, MockCardReader)
        reader.present(uid, connector_id)

    def fault(self, fault: Fault, connector_id: int = 1, info: str = "") -> None:
        if connector_id != 0:
            self._vehicle(connector_id)
        self._emit(FaultRaised(connector_id, fault, info or "simulated"))

    def clear_fault(self, connector_id: int = 1) -> None:
        if connector_id != 0:
            vehicle = self._vehicle(connector_id)
            vehicle.diode_failed = False
            self._pilot(connector_id).update()
        self._emit(FaultCleared(connector_id))

    def meter(self, connector_id: int = 1) -> MockMeter:
        meter = self.hardware.meters[connector_id]
        assert isinstance(meter, MockMeter)
        return meter
