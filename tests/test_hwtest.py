"""`cpagent hw-test` against mock hardware, simulated Modbus devices and gpiozero's mock pins.

hw_test_main runs its own event loop (asyncio.run), so the simulated Modbus meters and the EVSE
board run on a loop in a thread of their own, the way a real device answers from outside.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockConnectedPin, MockFactory
from modbus_sim import ModbusSim, RtuSim, SimMeter, TcpSim
from test_card_readers import CARD_A, PtyDevice, rdm_frame
from test_pilot import EvseWbBoard

import hal.factory as hwtest
from cpagent.config import load_config
from cpagent.hwtest import EX_CONFIG, hw_test_main

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
HEADER = "hw-test of "
SUMMARY = "hw-test: "


class InThread:
    """Runs an async context manager (a simulated device) on an event loop in a thread."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(5)

    def __enter__(self) -> Any:
        self.thread.start()
        self.call(self.device.__aenter__())
        return self.device

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.device.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_config(folder: Path, hardware: dict[str, dict[str, Any]] | None = None,
                 **station: Any) -> Path:
    lines = [
        '[charge_point]\nid = "HW-TEST"\n',
        '[csms]\nurl = "ws://127.0.0.1:9/ocpp"\n',
        "[station]",
        f'data_dir = "{folder}"',
        # a short path: AF_UNIX paths are limited to 107 bytes, tmp_path may be longer
        f'control_socket = "/tmp/cpagent-hwtest-{os.getpid()}.sock"',
        *(f"{key} = {toml_value(value)}" for key, value in station.items()),
        "",
    ]
    for kind, table in (hardware or {}).items():
        lines.append(f"[hardware.{kind}]")
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if k not in subtables]
        for name, sub in subtables.items():
            lines.append(f"[hardware.{kind}.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
        lines.append("")
    path = folder / "cpagent.toml"
    path.write_text("\n".join(lines))
    return path


def device_lines(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line and not line.startswith((HEADER, SUMMARY, "note:", "hint:", "  "))]


def line_for(out: str, prefix: str) -> str:
    found = [line for line in device_lines(out) if line.startswith(prefix)]
    assert len(found) == 1, (prefix, out)
    return found[0]


# ---- all mock ----------------------------------------------------------------------------------


def test_all_mock_station_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, connectors=2)
    assert hw_test_main(str(config), interactive=False) == 0
    out = capsys.readouterr().out
    lines = device_lines(out)
    assert lines, out
    for line in lines:
        assert ": PASS — " in line or ": SKIP — " in line, line
    for kind in ("pilot", "meter", "contactor", "lock"):
        for connector in (1, 2):
            assert ": PASS — " in line_for(out, f"{kind} of connector {connector} (mock)")
    assert "idTag HWTEST" in line_for(out, "card reader (mock)")
    assert "hw-test: 9 passed, 0 failed, 1 skipped" in out


def test_mock_contactor_is_not_asked_about(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # reading would answer "no"
    assert hw_test_main(str(write_config(tmp_path)), card_wait=0.1) == 0
    out = capsys.readouterr().out
    assert "[y/N]" not in out
    assert "closed and opened (simulated)" in line_for(out, "contactor (mock)")


# ---- a Modbus meter ----------------------------------------------------------------------------


def make_sim(transport: str, folder: Path) -> ModbusSim:
    meter = SimMeter("sdm630", energy_wh=1_234_500.0, power_w=7_345.6,
                     currents=(10.12, 9.87, 11.05), voltages=(230.1, 229.8, 231.4))
    return TcpSim(meter) if transport == "tcp" else RtuSim(meter, folder=folder)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_modbus_meter_values_then_silence(tmp_path: Path, transport: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    sim = make_sim(transport, tmp_path)
    with InThread(sim):
        options = sim.options(timeout=0.1, retries=0)
        config = write_config(tmp_path, {"meter": {"driver": "modbus", **options}})
        assert hw_test_main(str(config), interactive=False) == 0
        out = capsys.readouterr().out
        where = (f"127.0.0.1:{sim.port}" if transport == "tcp" else str(sim.path))
        line = line_for(out, f"meter (sdm630 on {where} unit 1)")
        assert line.endswith(": PASS — 1234.500 kWh, 7345.6 W, L1 10.12 A 230.1 V, "
                             "L2 9.87 A 229.8 V, L3 11.05 A 231.4 V, serial 23041234"), line
        assert "note: pilot, contactor, card_reader, lock use the mock driver" in out

        sim.silent = True
        assert hw_test_main(str(config), interactive=False) == 1
        out = capsys.readouterr().out
    line = line_for(out, "meter (sdm630")
    assert ": FAIL — no answer within 0.1 s; " in line
    if transport == "rtu":
        assert "check A/B wiring" in line and "baud rate 9600 8N1 and unit id 1" in line
    else:
        assert "check unit id 1" in line
    # the other devices are still tested and pass
    assert "hw-test: 4 passed, 1 failed, 1 skipped" in out


def test_modbus_meter_port_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"meter": {
        "driver": "modbus", "model": "sdm120", "port": str(tmp_path / "ttyNONE"),
        "timeout": 0.1, "retries": 0}})
    assert hw_test_main(str(config), interactive=False) == 1
    line = line_for(capsys.readouterr().out, "meter (sdm120")
    assert f": FAIL — cannot open {tmp_path / 'ttyNONE'}; check that the RS-485 adapter" in line


# ---- an EVSE-WB board --------------------------------------------------------------------------


def board_config(folder: Path, board: EvseWbBoard) -> Path:
    return write_config(folder, {"pilot": {
        "driver": "evse_wb", "transport": "tcp", "host": "127.0.0.1", "tcp_port": board.port,
        "timeout": 0.15}})


def test_evse_board_answers_and_gets_zero_amps(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with InThread(EvseWbBoard()) as board:
        board.registers[1000] = 16  # left over from before: the test offers nothing
        board.registers[1002] = 2  # a vehicle (or tester) is plugged in
        assert hw_test_main(str(board_config(tmp_path, board)), interactive=False) == 0
        out = capsys.readouterr().out
        line = line_for(out, f"pilot (EVSE-WB unit 1 at 127.0.0.1:{board.port})")
        assert ": PASS — board answers, state B (vehicle connected)" in line
        assert board.registers[1000] == 0
        assert "the board offered 16 A; set to 0 A" in out


def test_evse_board_pilot_error_and_silence(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with InThread(EvseWbBoard()) as board:
        config = board_config(tmp_path, board)
        board.registers[1002] = 5  # state E: e.g. the diode check failed
        assert hw_test_main(str(config), interactive=False) == 1
        line = line_for(capsys.readouterr().out, "pilot (EVSE-WB")
        assert ": FAIL — board answers, state E (pilot error); " in line
        assert "diode" in line
        board.silent = True
        assert hw_test_main(str(config), interactive=False) == 1
        line = line_for(capsys.readouterr().out, "pilot (EVSE-WB")
        assert ": FAIL — EVSE board not answering on Modbus" in line
        assert "check the gateway's address" in line


# ---- GPIO devices on mock pins -----------------------------------------------------------------


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = None


def after_build(monkeypatch: pytest.MonkeyPatch, wire: Callable[[], None]) -> None:
    """Run `wire` once hw-test has built the devices: opening an input sets its pull, which
    drives a mock pin, so an input's level can only be played after that."""

    def build(*args: Any, **kwargs: Any) -> Any:
        built = hwtest.build_hardware(*args, **kwargs)
        wire()
        return built

    monkeypatch.setattr("cpagent.hwtest.build_hardware", build)


def gpio_contactor(folder: Path, **extra: Any) -> Path:
    # The auxiliary contact closes to 3.3 V here (pull down, active high), so a relay pin that
    # drives the feedback pin directly plays a contactor that follows its coil.
    return write_config(folder, {"contactor": {
        "driver": "gpio", "relay_pin": "GPIO17", "feedback_pin": "GPIO27",
        "feedback_pull": "down", "feedback_timeout": 0.1, **extra}})


def test_real_contactor_is_switched_only_when_confirmed(
    tmp_path: Path, pins: MockFactory, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = gpio_contactor(tmp_path)
    relay = pins.pin("GPIO17", pin_class=MockConnectedPin, input_pin=pins.pin("GPIO27"))
    assert hw_test_main(str(config), interactive=False) == 0
    line = line_for(capsys.readouterr().out, "contactor (relay on GPIO17, feedback on GPIO27)")
    assert ": SKIP — a real contactor is switched only when the installer confirms" in line
    assert relay.states[-1].state is False and len(relay.states) <= 2  # never switched on

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert hw_test_main(str(config), card_wait=0.1) == 0
    out = capsys.readouterr().out
    assert "Close contactor of connector 1 for 1 s? [y/N]" in out
    assert ": SKIP — not confirmed" in line_for(out, "contactor (relay")


def test_real_contactor_with_feedback_passes(tmp_path: Path, pins: MockFactory,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = gpio_contactor(tmp_path)
    relay = pins.pin("GPIO17", pin_class=MockConnectedPin, input_pin=pins.pin("GPIO27"))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert hw_test_main(str(config), card_wait=0.1) == 0
    line = line_for(capsys.readouterr().out, "contactor (relay")
    assert ": PASS — closed and opened; the feedback followed both ways" in line
    on = [s.timestamp for s in relay.states if s.state]
    off = [s.timestamp for s in relay.states if not s.state and s.timestamp > on[0]]
    assert len(on) == 1 and off and off[0] - on[0] <= 1.0
    assert relay.state is False  # nothing left energised


def test_contactor_that_does_not_close_fails(tmp_path: Path, pins: MockFactory,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = gpio_contactor(tmp_path)  # GPIO27 is not connected: the feedback stays open
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert hw_test_main(str(config), card_wait=0.1) == 1
    line = line_for(capsys.readouterr().out, "contactor (relay")
    assert ": FAIL — did not close: the feedback stayed open" in line
    assert "check the coil supply, the relay on GPIO17" in line
    assert pins.pin("GPIO17").state is False


def test_welded_contactor_is_not_closed(tmp_path: Path, pins: MockFactory,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = gpio_contactor(tmp_path)
    # the auxiliary contact reads closed with the coil off
    after_build(monkeypatch, pins.pin("GPIO27").drive_high)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert hw_test_main(str(config), card_wait=0.1) == 1
    out = capsys.readouterr().out
    assert "[y/N]" not in out
    assert ": FAIL — feedback reads closed while the coil is off; the contactor is welded" in (
        line_for(out, "contactor (relay"))
    assert all(not s.state for s in pins.pin("GPIO17").states)


def test_emergency_stop_pressed_fails_and_blocks_the_contactor(
    tmp_path: Path, pins: MockFactory, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, {
        "contactor": {"driver": "gpio", "relay_pin": "GPIO17"},
        "inputs": {"driver": "gpio",
                   "estop": {"kind": "emergency_stop", "pin": "GPIO5", "active_high": True},
                   "rcd": {"kind": "rcd", "pin": "GPIO6"}},
    })

    def wire() -> None:
        pins.pin("GPIO5").drive_high()  # normally-closed button pressed: the circuit is open
        pins.pin("GPIO6").drive_high()  # RCD aux contact open: not tripped

    after_build(monkeypatch, wire)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert hw_test_main(str(config), card_wait=0.1) == 1
    out = capsys.readouterr().out
    assert ": FAIL — emergency stop pressed; " in line_for(out, "input estop (emergency_stop "
                                                               "on GPIO5)")
    assert ": PASS — not active" in line_for(out, "input rcd (rcd on GPIO6)")
    assert ": SKIP — not switched while input estop is active" in line_for(out, "contactor (")
    assert all(not s.state for s in pins.pin("GPIO17").states)


def test_lock_with_feedback(tmp_path: Path, pins: MockFactory,
                            capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"lock": {
        "driver": "gpio", "unlock_pin": "GPIO23", "pulse_ms": 20, "feedback_pin": "GPIO24",
        "unlock_timeout": 0.1}})
    # position switch closed to GND: locked, and it stays so (the actuator does not move)
    after_build(monkeypatch, pins.pin("GPIO24").drive_low)
    assert hw_test_main(str(config), interactive=False) == 1
    line = line_for(capsys.readouterr().out, "lock (pulse lock, unlock on GPIO23, feedback on "
                                             "GPIO24)")
    assert ": FAIL — did not unlock: the feedback still reads locked; " in line
    after_build(monkeypatch, lambda: None)  # the pull-up reads released
    assert hw_test_main(str(config), interactive=False) == 0
    assert ": PASS — unlocked; the feedback confirms it" in line_for(
        capsys.readouterr().out, "lock (")


# ---- a serial card reader ----------------------------------------------------------------------


def reader_config(folder: Path, port: Path) -> Path:
    return write_config(folder, {"card_reader": {"driver": "rdm6300", "port": str(port),
                                                 "reopen_interval": 0.05}})


def test_card_tapped_on_a_real_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    device = PtyDevice(tmp_path / "ttyRFID")
    held = threading.Event()

    def hold_card() -> None:  # an RDM6300 repeats the frame while the card is in its field
        while not held.wait(0.05):
            device.write(rdm_frame(CARD_A))

    thread = threading.Thread(target=hold_card, daemon=True)
    thread.start()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    try:
        assert hw_test_main(str(reader_config(tmp_path, device.path)), card_wait=2) == 0
    finally:
        held.set()
        thread.join(1)
        device.close()
    out = capsys.readouterr().out
    assert f"card reader (rdm6300 on {device.path}): tap a card now… (waiting up to 2 s)" in out
    assert ": PASS — card read: idTag 0A00BC614E" in line_for(out, "card reader (rdm6300")


def test_card_reader_silent_missing_or_not_asked(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    device = PtyDevice(tmp_path / "ttyRFID")
    config = reader_config(tmp_path, device.path)
    try:
        assert hw_test_main(str(config), interactive=False) == 0
        line = line_for(capsys.readouterr().out, "card reader (rdm6300")
        assert ": SKIP — port open; no card asked for" in line
        assert hw_test_main(str(config), card_wait=0.2) == 1
        line = line_for(capsys.readouterr().out, "card reader (rdm6300")
        assert ": FAIL — no card read within 0.2 s; hold the card flat" in line
    finally:
        device.close()
    assert hw_test_main(str(config), interactive=False) == 1  # unplugged
    line = line_for(capsys.readouterr().out, "card reader (rdm6300")
    assert ": FAIL — " in line and "No such file or directory" in line
    assert "check the port name" in line


# ---- config errors, a running agent, the profiles -----------------------------------------------


def test_config_error_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[charge_point]\nid = "X"\n[hardware.meter]\ndriver = "modbus"\n'
                    'model = "sdm999"\n')
    assert hw_test_main(str(path), interactive=False) == EX_CONFIG
    out = capsys.readouterr().out
    assert "csms.url: required" in out
    assert "hardware.meter" not in out or "model" in out
    assert hw_test_main(str(tmp_path / "missing.toml")) == EX_CONFIG
    assert "file not found" in capsys.readouterr().out


def test_refuses_while_the_agent_runs(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    path = str(load_config(config).station.control_socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        if os.path.exists(path):
            os.unlink(path)
        server.bind(path)
        server.listen(1)

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b'{"ok": true, "connectors": []}\n')

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            assert hw_test_main(str(config), interactive=False) == 1
        finally:
            thread.join(2)
            os.unlink(path)
    assert "cpagent is running" in capsys.readouterr().out


def test_every_profile_loads() -> None:
    profiles = sorted(PROFILES.glob("*.toml"))
    assert len(profiles) >= 3
    for path in profiles:
        config = load_config(path)
        assert config.hardware.pilot.driver != "mock", path
        assert config.hardware.meter.driver == "modbus", path
