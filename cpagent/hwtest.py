"""`cpagent hw-test`: check every configured device with the installer watching.

Builds the hardware a configuration names, exactly as the agent would, and exercises each
device once, printing one line per device:

    meter (sdm630 on /dev/ttyUSB0 unit 1): FAIL — no answer within 1 s; check A/B wiring, ...

in this order: fault inputs (emergency stop, RCD), control pilot, meter, contactor, connector
lock, card reader. A FAIL line always carries a hint an installer can act on.

Safety rules, which hold whatever goes wrong (a device error, Ctrl+C):
- a contactor is closed only after the pilot offers 0 A, only while no fault input is active
  and no vehicle asks for power, and for at most `MAX_CLOSED` seconds; it is opened again in a
  `finally`, and every device is stopped at the end (a GPIO contactor's stop() drops its coil,
  an EVSE board's stop() withdraws its setpoint);
- a real contactor is closed only after the installer answers "y" on stdin; without a
  terminal (interactive=False) only simulated contactors are switched.

The agent itself must not run at the same time: it holds the GPIO pins and serial ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpagent.config import Config, ConfigError, load_config
from hal.factory import BuiltHardware, build_hardware, connector_options
from hal.interfaces import (
    CardPresented,
    Device,
    Fault,
    FaultRaised,
    HalEvent,
    MeterError,
    MeterReading,
    PilotState,
)
from hal.options import DriverConfigError

__all__ = ["EX_CONFIG", "MAX_CLOSED", "Result", "hw_test_main"]

EX_CONFIG = 78  # as `cpagent run`: sysexits.h EX_CONFIG
MAX_CLOSED = 1.0  # the longest a contactor stays closed during the test, seconds
HOLD_CLOSED = 0.5  # how long it stays closed when nothing confirms it sooner (hear the click)
MAX_ID_TAG = 20  # OCPP 1.6 idTag length
READER_READY_WAIT = 3.0  # seconds for a serial reader to open its port (a PN532 to wake)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

_FEEDBACK_POLARITY = ("or the feedback polarity is wrong (feedback_pull / feedback_active_high: "
                      "a normally-open auxiliary contact to GND with the default pull \"up\" "
                      "needs no polarity key)")

_STATE_MEANING = {
    PilotState.A: "no vehicle",
    PilotState.B: "vehicle connected",
    PilotState.C: "vehicle asks for power",
    PilotState.D: "vehicle asks for power, ventilation required",
    PilotState.E: "pilot error",
    PilotState.F: "EVSE fault",
}


@dataclass(frozen=True)
class Result:
    label: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.label}: {self.status} — {self.detail}"
        return f"{text}; {self.hint}" if self.hint else text


class _Recorder:
    """The event sink every device is started with: keeps what they report, in order."""

    def __init__(self) -> None:
        self.events: list[HalEvent] = []

    def __call__(self, event: HalEvent) -> None:
        self.events.append(event)

    def faults(self, since: int, fault: Fault, connector_id: int | None = None) -> list[str]:
        return [e.info for e in self.events[since:] if isinstance(e, FaultRaised)
                and e.fault is fault and connector_id in (None, e.connector_id)]

    def cards(self, since: int) -> list[str]:
        return [e.uid for e in self.events[since:] if isinstance(e, CardPresented)]


async def _until(condition: Callable[[], Any], timeout: float, step: float = 0.01) -> bool:
    """Wait until `condition()` is true or `timeout` passes; the final value, as a bool."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        await asyncio.sleep(step)
    return True


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("y", "yes")


def _ask(prompt: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:  # no terminal: nobody said yes
        print()
        return False
    if not sys.stdin.isatty():  # piped in: show it, so the output reads as a dialogue
        print(answer)
    return _yes(answer)


# ---- the test run ------------------------------------------------------------------------------


class HardwareTest:
    def __init__(self, config: Config, built: BuiltHardware, *, card_wait: float,
                 interactive: bool, ask: Callable[[str], bool] = _ask) -> None:
        self.config = config
        self.built = built
        self.hw = built.hardware
        self.card_wait = card_wait
        self.interactive = interactive
        self.ask = ask
        self.connectors = config.station.connectors
        self.rec = _Recorder()
        self.results: list[Result] = []
        self.started: list[Device] = []
        self.active_inputs: list[str] = []  # fault inputs found active: no contactor test then
        self.pilot_states: dict[int, PilotState | None] = {}

    # -- helpers --

    def driver(self, kind: str) -> str:
        return getattr(self.config.hardware, kind).driver

    def options(self, kind: str, connector_id: int) -> dict[str, Any]:
        return connector_options(getattr(self.config.hardware, kind).options, connector_id,
                                 self.connectors)

    def name(self, kind: str, connector_id: int) -> str:
        return kind if self.connectors == 1 else f"{kind} of connector {connector_id}"

    def report(self, label: str, status: str, detail: str, hint: str = "") -> Result:
        result = Result(label, status, detail, hint)
        self.results.append(result)
        print(result.line(), flush=True)
        return result

    async def start(self, device: Device) -> None:
        self.started.append(device)
        await device.start(self.rec)

    # -- the steps --

    async def run(self) -> list[Result]:
        try:
            await self.check_inputs()
            for connector_id, pilot in self.hw.pilots.items():
                await self.check_pilot(connector_id, pilot)
            for connector_id, meter in self.hw.meters.items():
                await self.check_meter(connector_id, meter)
            for connector_id, contactor in self.hw.contactors.items():
                await self.check_contactor(connector_id, contactor)
            await self.check_locks()
            await self.check_card_readers()
        finally:
            await self.shutdown()
        return self.results

    async def shutdown(self) -> None:
        """Open every contactor, then stop every device (and the EVSE boards we never started)."""
        for contactor in self.hw.contactors.values():
            with contextlib.suppress(Exception):
                await contactor.set_closed(False)
        devices = list(self.started)
        if self.driver("pilot") == "evse_wb":  # read directly, never started: stop withdraws 0 A
            devices += [p for p in self.hw.pilots.values() if p not in devices]
        for device in reversed(devices):
            try:
                await asyncio.wait_for(device.stop(), 5.0)
            except Exception as exc:  # report, and go on stopping the others
                print(f"warning: stopping {device!r} failed: {exc}", file=sys.stderr)

    # fault inputs

    async def check_inputs(self) -> None:
        if not self.built.extra:
            self.report("fault inputs", SKIP, "none configured (no emergency stop or RCD input; "
                        "[hardware.inputs] driver = \"gpio\" adds them)")
            return
        tables = self.config.hardware.inputs.options
        for device in self.built.extra:
            name = getattr(device, "name", "input")
            table = tables.get(name, {}) if isinstance(tables.get(name), dict) else {}
            kind = table.get("kind", "fault")
            label = f"input {name} ({kind} on {table.get('pin', '?')})"
            since = len(self.rec.events)
            await self.start(device)
            fault = getattr(device, "fault", None)
            active = bool(getattr(device, "is_active", False)) or bool(
                self.rec.events[since:])
            if not active:
                self.report(label, PASS, "not active")
                continue
            self.active_inputs.append(name)
            polarity = ("if it is not, the input's polarity is wrong: check pull and "
                        "active_high against the wiring (a normally-closed contact to GND with "
                        "pull = \"up\" needs active_high = true)")
            if fault is Fault.EMERGENCY_STOP:
                self.report(label, FAIL, "emergency stop pressed",
                            f"release it and run again; {polarity}")
            elif fault is Fault.GROUND_FAILURE:
                self.report(label, FAIL, "residual current device tripped",
                            f"find the cause and reset the RCD; {polarity}")
            else:
                self.report(label, FAIL, f"input active ({fault or 'fault'})",
                            f"clear the condition it signals; {polarity}")

    # control pilot

    def pilot_description(self, connector_id: int) -> str:
        driver = self.driver("pilot")
        opts = self.options("pilot", connector_id)
        if driver == "evse_wb":
            unit = opts.get("unit_id", 1)
            if opts.get("transport", "rtu") == "tcp":
                return f"EVSE-WB unit {unit} at {opts.get('host')}:{opts.get('tcp_port', 502)}"
            return f"EVSE-WB unit {unit} on {opts.get('port')}"
        if driver == "gpio_pwm":
            return (f"PWM on {opts.get('pwm_pin')}, {opts.get('adc', 'MCP3008')} channel "
                    f"{opts.get('adc_channel', 0)}")
        return driver

    async def check_pilot(self, connector_id: int, pilot: Any) -> None:
        driver = self.driver("pilot")
        label = f"{self.name('pilot', connector_id)} ({self.pilot_description(connector_id)})"
        self.pilot_states[connector_id] = None
        if driver == "evse_wb":
            state = await self._read_board(connector_id, pilot, label)
            if state is None:
                return
            detail = f"board answers, state {state} ({_STATE_MEANING[state]})"
        else:
            since = len(self.rec.events)
            await self.start(pilot)
            if driver == "gpio_pwm":  # it reports a state after two agreeing ADC readings
                poll = float(self.options("pilot", connector_id).get("poll_interval", 0.05))
                await asyncio.sleep(4 * poll + 0.05)
            adc = self.rec.faults(since, Fault.INTERNAL_ERROR, connector_id)
            if adc:
                self.report(label, FAIL, adc[-1],
                            "check that SPI is enabled (raspi-config > Interface Options > "
                            "SPI), the ADC's wiring and supply, and spi_port/spi_device")
                return
            state = pilot.state()
            detail = f"state {state} ({_STATE_MEANING[state]})"
        self.pilot_states[connector_id] = state
        with contextlib.suppress(Exception):
            await pilot.set_current_limit(0)  # offer nothing for the rest of the test
        if state is PilotState.E:
            if driver == "evse_wb":
                hint = ("the board sees a pilot error: check the CP wire from the board to the "
                        "socket or cable and its PE; with a vehicle or tester plugged in, its "
                        "diode; unplug and run again")
            else:
                hint = ("the pilot reads about 0 V: check the ±12 V supply of the pilot stage, "
                        "the CP wire (a short to PE), and adc_scale/adc_offset (volts = raw x "
                        "adc_scale + adc_offset); with a vehicle plugged in, its diode")
            self.report(label, FAIL, detail, hint)
        elif state is PilotState.F:
            self.report(label, FAIL, detail,
                        "the pilot reads about -12 V: the pilot stage's +12 V supply is missing "
                        "or the PWM output is inverted (pwm_active_high)")
        else:
            note = "" if state is PilotState.A or driver == "mock" else (
                " — a vehicle or tester is plugged in")
            self.report(label, PASS, detail + note)

    async def _read_board(self, connector_id: int, pilot: Any,
                          label: str) -> PilotState | None:
        """One read of the board's setpoint and vehicle state, without its poll loop, so that
        'answers' is told apart from 'not polled yet'."""
        from hal.pilot import BoardError

        opts = self.options("pilot", connector_id)
        rtu = opts.get("transport", "rtu") == "rtu"
        try:
            configured, state = await asyncio.wait_for(
                pilot._read(), float(opts.get("timeout", 0.5)) + 2.0)
        except (BoardError, TimeoutError) as exc:
            info = getattr(exc, "info", "EVSE board not answering on Modbus")
            why = str(exc) or "timed out"
            if "reject" in info:
                hint = ("the board answers but refuses: enable Modbus control on the board "
                        "(register 2001 = 1, see its manual) and check unit_id")
            elif "unknown vehicle state" in info:
                hint = "the device at this unit_id is not an EVSE-WB/EVSE-DIN board: check unit_id"
            elif rtu:
                hint = (f"check the RS-485 adapter on {opts.get('port')}, A/B wiring, "
                        f"{opts.get('baudrate', 9600)} 8{opts.get('parity', 'N')}"
                        f"{opts.get('stopbits', 1)}, unit_id {opts.get('unit_id', 1)}, the "
                        "board's supply, and that no other device or program uses this port "
                        "(the meter needs its own adapter)")
            else:
                hint = "check the gateway's address, tcp_port and unit_id"
            self.report(label, FAIL, f"{info} ({why})", hint)
            return None
        if configured:
            print(f"  (the board offered {configured} A; set to 0 A for the test)", flush=True)
        return state

    # meter

    def meter_description(self, meter: Any) -> str:
        settings = getattr(meter, "settings", None)
        if settings is not None and hasattr(settings, "where"):
            return f"{settings.model} on {settings.where}"
        return self.driver("meter")

    async def check_meter(self, connector_id: int, meter: Any) -> None:
        label = f"{self.name('meter', connector_id)} ({self.meter_description(meter)})"
        settings = getattr(meter, "settings", None)
        patience = 5.0
        if settings is not None:
            blocks = len(getattr(getattr(meter, "map", None), "blocks", ())) or 2
            patience = settings.timeout * (settings.retries + 1) * (blocks + 1) + 2.0
        try:
            await asyncio.wait_for(self.start(meter), patience)
            reading = await asyncio.wait_for(meter.read(), patience)
        except (MeterError, TimeoutError) as exc:
            self.report(label, FAIL, *self._meter_failure(str(exc) or "timed out", settings))
            return
        serial = getattr(meter, "serial_number", None)
        detail = _format_reading(reading)
        if serial:
            detail += f", serial {serial}"
        if self.driver("meter") == "mock":
            detail += " (simulated)"
        self.report(label, PASS, detail)

    def _meter_failure(self, text: str, settings: Any) -> tuple[str, str]:
        if settings is None:
            return text, "check the meter"
        unit = settings.unit
        rtu = settings.transport == "rtu"
        line = f"{settings.baudrate} 8{settings.parity}{settings.stopbits}"
        if "cannot open" in text or "link lost" in text:
            if rtu:
                shared = ""
                pilot = self.config.hardware.pilot
                if pilot.driver == "evse_wb" and pilot.options.get("port") == settings.port:
                    shared = ("; the EVSE board is configured on the same port, and one "
                              "adapter cannot be shared between the board and the meter: "
                              "give the meter its own RS-485 adapter")
                return (f"cannot open {settings.port}",
                        "check that the RS-485 adapter is plugged in and the port name "
                        "(ls -l /dev/serial/by-id/), that this user may open it (group "
                        f"dialout) and that no other program (cpagent itself?) holds it{shared}")
            return (f"cannot connect to {settings.host}:{settings.tcp_port}",
                    "check the meter's or gateway's IP address, tcp_port, the network "
                    "cable and that it answers ping")
        if "no answer" in text or "gateway" in text:
            if rtu:
                return (f"no answer within {settings.timeout:g} s",
                        f"check A/B wiring (swap A and B if unsure), baud rate {line} and unit "
                        f"id {unit} (set on the meter's display), the meter's supply, and "
                        "120 Ω termination at both ends of a long bus")
            return (f"no answer within {settings.timeout:g} s",
                    f"the gateway is reachable but the meter behind it stays silent: check "
                    f"unit id {unit}, the gateway's serial settings (the meter wants {line}) "
                    "and its RS-485 wiring")
        if "refused" in text:
            return (text, f"a device answers at unit {unit} but not with the {settings.model} "
                          "register map: check model and that this unit id is the meter, not "
                          "another device on the bus")
        if "does not fit" in text or "unusable" in text:
            return (text, f"answers are garbled: check baud rate {line}, that nothing else "
                          "polls this bus, A/B wiring and termination")
        if "not available" in text or "negative energy" in text:
            return (text, f"the meter answers but not as a {settings.model}: check model")
        return (text, f"check the meter's wiring and settings ({line}, unit id {unit})")

    # contactor

    def contactor_description(self, connector_id: int) -> str:
        driver = self.driver("contactor")
        if driver == "gpio":
            opts = self.options("contactor", connector_id)
            text = f"relay on {opts.get('relay_pin')}"
            if opts.get("feedback_pin") is not None:
                text += f", feedback on {opts.get('feedback_pin')}"
            return text
        if driver == "none":
            return "switched by the EVSE board"
        return driver

    async def check_contactor(self, connector_id: int, contactor: Any) -> None:
        driver = self.driver("contactor")
        label = (f"{self.name('contactor', connector_id)} "
                 f"({self.contactor_description(connector_id)})")
        if driver == "none":
            self.report(label, SKIP, "the EVSE board switches it itself when a vehicle asks "
                        "for power; check it with a vehicle or an EV simulator")
            return
        unsafe = self.unsafe_to_close(connector_id)
        if unsafe:
            self.report(label, SKIP, unsafe)
            return
        await self.start(contactor)
        if driver == "mock":
            await self._switch_mock(label, contactor)
            return
        opts = self.options("contactor", connector_id)
        if getattr(contactor, "feedback_closed", None):  # before asking: seen, not switched
            self.report(label, FAIL, "feedback reads closed while the coil is off",
                        f"the contactor is welded, {_FEEDBACK_POLARITY}; do not use the "
                        "charger until this is understood")
            return
        if not self.interactive:
            self.report(label, SKIP, "a real contactor is switched only when the installer "
                        "confirms (run hw-test without --yes)")
            return
        if not self.ask(f"Close contactor of connector {connector_id} for 1 s? [y/N] "):
            self.report(label, SKIP, "not confirmed")
            return
        unsafe = self.unsafe_to_close(connector_id)  # again: the answer may have taken a while
        if unsafe:
            self.report(label, SKIP, unsafe)
            return
        await self._switch_real(label, contactor, opts)

    def unsafe_to_close(self, connector_id: int) -> str | None:
        """Why the contactor must stay open now, or None."""
        active = self.active_inputs + [
            getattr(d, "name", "fault") for d in self.built.extra
            if getattr(d, "is_active", False) and getattr(d, "name", "fault")
            not in self.active_inputs]
        if active:
            return f"not switched while input {active[0]} is active"
        pilot = self.hw.pilots.get(connector_id)
        state = self.pilot_states.get(connector_id)
        if pilot is not None and self.driver("pilot") != "evse_wb":
            state = pilot.state()
        if state is not None and state.wants_power:
            return "a vehicle asks for power: unplug it and run again"
        return None

    async def _switch_mock(self, label: str, contactor: Any) -> None:
        try:
            await contactor.set_closed(True)
            closed = contactor.is_closed
        finally:
            await contactor.set_closed(False)
        if closed and not contactor.is_closed:
            self.report(label, PASS, "closed and opened (simulated)")
        else:
            self.report(label, FAIL, "the simulated contactor did not follow the commands")

    async def _switch_real(self, label: str, contactor: Any, opts: dict[str, Any]) -> None:
        feedback = getattr(contactor, "feedback_closed", None)
        relay, aux = opts.get("relay_pin"), opts.get("feedback_pin")
        polarity = _FEEDBACK_POLARITY
        timeout = float(opts.get("feedback_timeout", 0.5))
        since = len(self.rec.events)
        began = time.monotonic()
        confirmed = False
        try:
            await contactor.set_closed(True)
            if feedback is None:
                await asyncio.sleep(HOLD_CLOSED)
            else:
                confirmed = await _until(
                    lambda: contactor.feedback_closed
                    or self.rec.faults(since, Fault.POWER_SWITCH_FAILURE), MAX_CLOSED)
                confirmed = bool(contactor.feedback_closed) and not self.rec.faults(
                    since, Fault.POWER_SWITCH_FAILURE)
                if confirmed:  # long enough to hear it, never longer than MAX_CLOSED
                    await asyncio.sleep(max(0.0, min(HOLD_CLOSED, MAX_CLOSED) -
                                            (time.monotonic() - began)))
        except Exception as exc:  # PowerSwitchError (welded before), a pin error
            self.report(label, FAIL, f"could not be closed: {exc}",
                        "check the relay wiring; restart after a welded contactor is replaced")
            return
        finally:
            await contactor.set_closed(False)
            if contactor.is_closed:  # belt and braces: stop() drops the coil whatever happens
                await contactor.stop()
        if feedback is None:
            self.report(label, PASS, "closed for 0.5 s and opened; no feedback input to verify "
                        "(did you hear it click?)")
            return
        if not confirmed:
            self.report(label, FAIL, f"did not close: the feedback stayed open for "
                        f"{min(timeout, MAX_CLOSED):g} s",
                        f"check the coil supply, the relay on {relay} (active_high), and the "
                        f"auxiliary contact on {aux}, {polarity}")
            return
        opened = await _until(lambda: contactor.feedback_closed is False, timeout + 0.3)
        if not opened or getattr(contactor, "welded", False):
            self.report(label, FAIL, "welded: the feedback still reads closed after opening",
                        f"do not use the charger: check the contactor's main contacts, {polarity}")
            return
        self.report(label, PASS, "closed and opened; the feedback followed both ways")

    # lock

    async def check_locks(self) -> None:
        if not self.hw.locks:
            self.report("lock", SKIP, "none configured (tethered cable)")
            return
        driver = self.driver("lock")
        for connector_id, lock in self.hw.locks.items():
            opts = self.options("lock", connector_id)
            if driver == "gpio":
                desc = f"{opts.get('type', 'pulse')} lock, unlock on {opts.get('unlock_pin')}"
                if opts.get("feedback_pin") is not None:
                    desc += f", feedback on {opts.get('feedback_pin')}"
            else:
                desc = driver
            label = f"{self.name('lock', connector_id)} ({desc})"
            await self.start(lock)
            patience = opts.get("pulse_ms", 500) / 1000 + float(opts.get("unlock_timeout", 1.0))
            try:
                released = await asyncio.wait_for(lock.unlock(), patience + 2.0)
            except Exception as exc:
                self.report(label, FAIL, f"unlock failed: {exc}", "check the lock's wiring")
                continue
            if not released:
                self.report(label, FAIL, "did not unlock: the feedback still reads locked",
                            f"check the actuator's supply and the output on "
                            f"{opts.get('unlock_pin')} (it should move audibly), and the "
                            "feedback polarity (feedback_pull / feedback_active_high; "
                            "active = locked)")
            elif driver == "mock":
                self.report(label, PASS, "unlocked (simulated)")
            elif opts.get("feedback_pin") is None:
                self.report(label, PASS, "unlock pulse sent; no feedback input to verify "
                            "(did the actuator move?)")
            else:
                self.report(label, PASS, "unlocked; the feedback confirms it")

    # card reader

    async def check_card_readers(self) -> None:
        if not self.hw.card_readers:
            self.report("card reader", SKIP, "none configured")
            return
        for reader in self.hw.card_readers:
            await self.check_card_reader(reader)

    async def check_card_reader(self, reader: Any) -> None:
        driver = self.driver("card_reader")
        port = getattr(reader, "port", None)
        model = getattr(reader, "model", driver)
        label = f"card reader ({model} on {port})" if port else f"card reader ({driver})"
        since = len(self.rec.events)

        def failed() -> list[str]:
            return self.rec.faults(since, Fault.READER_FAILURE)

        await self.start(reader)
        if driver == "mock":
            present = getattr(reader, "present", None)
            if present is not None:
                present("HWTEST")
            cards = self.rec.cards(since)
            if cards:
                self.report(label, PASS, f"simulated tap delivered idTag {cards[0]}")
            else:
                self.report(label, FAIL, "the simulated reader delivered nothing")
            return
        await _until(lambda: getattr(reader, "ready", True) or failed(),
                     READER_READY_WAIT if self.interactive else 1.0)
        if failed():
            self.report(label, FAIL, failed()[-1], _reader_hint(model, port))
            return
        if not self.interactive or self.card_wait <= 0:
            self.report(label, SKIP, "port open; no card asked for without an installer "
                        "(run hw-test without --yes)")
            return
        print(f"  {label}: tap a card now… (waiting up to {self.card_wait:g} s)", flush=True)
        await _until(lambda: self.rec.cards(since) or failed(), self.card_wait, 0.02)
        cards = self.rec.cards(since)
        if cards:
            uid = cards[0]
            if len(uid) > MAX_ID_TAG:
                self.report(label, FAIL, f"card {uid} read, but its id has {len(uid)} "
                            f"characters and an OCPP 1.6 idTag at most {MAX_ID_TAG}",
                            "use cards with shorter UIDs")
            else:
                self.report(label, PASS, f"card read: idTag {uid} (register this id in the "
                            "CSMS)")
        elif failed():
            self.report(label, FAIL, failed()[-1], _reader_hint(model, port))
        else:
            self.report(label, FAIL, f"no card read within {self.card_wait:g} s",
                        _reader_hint(model, port, silent=True))


def _reader_hint(model: str, port: str | None, silent: bool = False) -> str:
    hints = []
    if silent:
        hints.append("hold the card flat on the antenna for a second")
    if model == "rdm6300":
        hints.append("an RDM6300 needs 5 V and its TX to the Pi's RX (GPIO15) through a "
                     "divider to 3.3 V; it reads 125 kHz EM4100 cards only")
    elif model == "pn532":
        hints.append("set the PN532's interface switches to HSU (UART), power it with 3.3 V or "
                     "5 V as the board says, and cross TX/RX; it reads 13.56 MHz ISO 14443A")
    else:
        hints.append("check the reader's baudrate and that it prints one id per line")
    if port and port.startswith(("/dev/serial0", "/dev/ttyAMA", "/dev/ttyS")):
        hints.append("on a Raspberry Pi enable the serial port and disable the login console "
                     "on it (raspi-config > Interface Options > Serial Port)")
    else:
        hints.append("check the port name (ls -l /dev/serial/by-id/)")
    hints.append("the user needs the dialout group")
    return "; ".join(hints)


def _format_reading(reading: MeterReading) -> str:
    parts = []
    if reading.energy_wh is not None:
        parts.append(f"{reading.energy_wh / 1000:.3f} kWh")
    if reading.power_w is not None:
        parts.append(f"{reading.power_w:.1f} W")
    currents = reading.current_a or ()
    voltages = reading.voltage_v or ()
    for phase in range(max(len(currents), len(voltages))):
        values = []
        if phase < len(currents):
            values.append(f"{currents[phase]:g} A")
        if phase < len(voltages):
            values.append(f"{voltages[phase]:g} V")
        parts.append(f"L{phase + 1} " + " ".join(values))
    return ", ".join(parts)


# ---- entry point -------------------------------------------------------------------------------


def _agent_running(config: Config) -> bool:
    from cpagent.control import request

    try:
        return bool(request(config.station.control_socket, {"cmd": "status"}, timeout=1.0))
    except (OSError, ValueError):
        return False


async def _run(config: Config, card_wait: float, interactive: bool) -> list[Result]:
    try:
        built = build_hardware(config.hardware, config.station.connectors,
                               config.station.phases)
    except DriverConfigError as exc:
        errors = exc.errors
    except Exception as exc:  # a pin factory or bus that cannot be opened at all
        errors = [f"{type(exc).__name__}: {exc}"]
    else:
        return await HardwareTest(config, built, card_wait=card_wait,
                                  interactive=interactive).run()
    results = []
    for error in errors:
        where, _, what = error.partition(": ")
        result = Result(where if what else "hardware", FAIL,
                        f"cannot be opened: {what or where}")
        print(result.line(), flush=True)
        results.append(result)
    text = " ".join(errors)
    if "pin factory" in text:
        hint = ("this machine offers no GPIO to gpiozero: run hw-test on the charger's own "
                "Raspberry Pi, with python3-lgpio installed")
    else:
        hint = ("is another program (the cpagent service?) using these pins or ports? Run "
                "hw-test as a user in the gpio and dialout groups")
    print(f"hint: {hint}")
    return results


def hw_test_main(config_path: str, *, card_wait: float = 20.0, interactive: bool = True) -> int:
    """`cpagent hw-test --config FILE`: 0 when every device passes, 1 otherwise, 78 when the
    configuration is invalid."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(*exc.errors, sep="\n")
        return EX_CONFIG
    if _agent_running(config):
        print(f"cpagent is running (its control socket {config.station.control_socket} "
              "answers) and holds the devices: stop it first (sudo systemctl stop cpagent)")
        return 1
    hw = config.hardware
    print(f"hw-test of {os.fspath(config_path)}: {config.station.connectors} connector(s), "
          + " ".join(f"{kind}={getattr(hw, kind).driver}" for kind in
                     ("pilot", "contactor", "meter", "card_reader", "lock", "inputs")),
          flush=True)
    # The lines printed here say what the drivers would log; keep their log lines out of the
    # installer's way unless logging was configured by the caller.
    root = logging.getLogger()
    quiet = None
    if not root.handlers:
        quiet = logging.NullHandler()
        root.addHandler(quiet)
    try:
        results = asyncio.run(_run(config, card_wait, interactive))
    except KeyboardInterrupt:
        print("\ninterrupted: every device was switched off")
        return 1
    finally:
        if quiet is not None:
            root.removeHandler(quiet)
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    real = any(getattr(hw, k).driver not in ("mock", "none") for k in
               ("pilot", "contactor", "meter", "card_reader", "lock", "inputs"))
    simulated = [k for k in ("pilot", "contactor", "meter", "card_reader", "lock")
                 if getattr(hw, k).driver == "mock"]
    if real and simulated:
        print(f"note: {', '.join(simulated)} use the mock driver: simulated, not real hardware")
    print(f"hw-test: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return 1 if counts[FAIL] or not results else 0
