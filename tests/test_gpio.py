"""gpiozero drivers on gpiozero's mock pins: contactor with feedback, fault inputs, plug lock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from hal.gpio import PowerSwitchError, build_contactor, build_inputs, build_lock
from hal.interfaces import Fault, FaultCleared, FaultRaised, HalEvent
from hal.options import DriverConfigError

TIMEOUT = 0.1  # feedback timeout used by the tests, so each runs in well under a second


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = None


def pin(factory: MockFactory, name: str) -> MockPin:
    return factory.pin(name)


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def settle(seconds: float = 0.0) -> None:
    """Let callbacks handed to the loop (call_soon_threadsafe) and timers run."""
    await asyncio.sleep(seconds)
    await asyncio.sleep(0)


# ---- contactor --------------------------------------------------------------------------------


async def test_relay_active_high(factory: MockFactory) -> None:
    contactor = build_contactor(1, {"relay_pin": "GPIO17"})
    relay = pin(factory, "GPIO17")
    assert relay.state is False and not contactor.is_closed
    await contactor.start(lambda e: None)
    await contactor.set_closed(True)
    assert relay.state is True and contactor.is_closed
    await contactor.set_closed(False)
    assert relay.state is False and not contactor.is_closed


async def test_relay_active_low(factory: MockFactory) -> None:
    contactor = build_contactor(1, {"relay_pin": 17, "active_high": False})
    relay = pin(factory, "GPIO17")
    assert relay.state is True, "an active-low relay rests with its pin high"
    await contactor.start(lambda e: None)
    await contactor.set_closed(True)
    assert relay.state is False and contactor.is_closed
    await contactor.stop()
    assert relay.state is True, "stop opens the contactor"


def feedback_contactor(**extra: object):
    # Auxiliary contact to ground with the default pull-up: closed contact = pin low.
    return build_contactor(1, {"relay_pin": "GPIO17", "feedback_pin": "GPIO27",
                               "feedback_timeout": TIMEOUT, **extra})


async def test_feedback_follows_command(factory: MockFactory) -> None:
    contactor = feedback_contactor()
    aux = pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    assert contactor.feedback_closed is False
    await contactor.set_closed(True)
    aux.drive_low()  # the contacts close some milliseconds after the coil
    await settle(TIMEOUT * 2)
    assert contactor.feedback_closed is True
    await contactor.set_closed(False)
    aux.drive_high()
    await settle(TIMEOUT * 2)
    assert events == []
    assert contactor.is_closed is False and not contactor.welded


async def test_feedback_polarity_options(factory: MockFactory) -> None:
    # An opto input that reads high when the contacts are closed, with a pull-down.
    contactor = feedback_contactor(feedback_pull="down", feedback_active_high=True)
    aux = pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await contactor.set_closed(True)
    aux.drive_high()
    await settle(TIMEOUT * 2)
    assert contactor.feedback_closed is True and events == []


async def test_welded_contactor_is_reported_once_and_never_closed_again(
    factory: MockFactory,
) -> None:
    contactor = feedback_contactor()
    relay, aux = pin(factory, "GPIO17"), pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await contactor.set_closed(True)
    aux.drive_low()
    await settle()
    await contactor.set_closed(False)  # the aux contact stays closed: welded
    await settle(TIMEOUT * 0.5)
    assert events == [], "no verdict before the timeout"
    await settle(TIMEOUT)
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE, "contactor welded")]
    assert contactor.welded

    with pytest.raises(PowerSwitchError):
        await contactor.set_closed(True)
    assert relay.state is False
    await contactor.set_closed(False)
    await settle(TIMEOUT * 2)
    assert len(events) == 1, "reported once"

    aux.drive_high()  # even if the feedback opens again, closing stays refused
    await settle(TIMEOUT * 2)
    with pytest.raises(PowerSwitchError):
        await contactor.set_closed(True)
    assert relay.state is False
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE, "contactor welded")]


async def test_welded_at_boot(factory: MockFactory) -> None:
    contactor = feedback_contactor()
    pin(factory, "GPIO27").drive_low()  # closed while the coil has never been powered
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await settle(TIMEOUT * 2)
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE, "contactor welded")]
    with pytest.raises(PowerSwitchError):
        await contactor.set_closed(True)


async def test_contactor_that_does_not_close_is_switched_off(factory: MockFactory) -> None:
    contactor = feedback_contactor()
    relay, aux = pin(factory, "GPIO17"), pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await contactor.set_closed(True)
    assert relay.state is True
    await settle(TIMEOUT * 2)
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE, "contactor did not close")]
    assert relay.state is False and not contactor.is_closed
    assert not contactor.welded

    # Not welded: a later close that the feedback confirms clears the fault.
    await contactor.set_closed(True)
    aux.drive_low()
    await settle(TIMEOUT * 2)
    assert events[1:] == [FaultCleared(1, Fault.POWER_SWITCH_FAILURE)]
    assert contactor.is_closed


async def test_contactor_dropping_out_while_closed(factory: MockFactory) -> None:
    contactor = feedback_contactor()
    relay, aux = pin(factory, "GPIO17"), pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await contactor.set_closed(True)
    aux.drive_low()
    await settle(TIMEOUT * 2)
    aux.drive_high()  # e.g. the coil supply failed
    await settle(TIMEOUT * 2)
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE,
                                  "contactor opened while closed")]
    assert relay.state is False


async def test_feedback_from_another_thread(factory: MockFactory) -> None:
    # gpiozero calls back on its own threads on real hardware; only that callback can notice
    # a drop-out, since nothing was commanded.
    contactor = feedback_contactor()
    aux = pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await contactor.set_closed(True)
    await asyncio.to_thread(aux.drive_low)
    await settle(TIMEOUT * 2)
    assert events == [] and contactor.feedback_closed
    await asyncio.to_thread(aux.drive_high)
    await settle(TIMEOUT * 2)
    assert events == [FaultRaised(1, Fault.POWER_SWITCH_FAILURE,
                                  "contactor opened while closed")]


def config_errors(build: Callable[[], object]) -> list[str]:
    with pytest.raises(DriverConfigError) as caught:
        build()
    return caught.value.errors


def test_contactor_option_errors(factory: MockFactory) -> None:
    assert config_errors(lambda: build_contactor(1, {})) == ["relay_pin: required"]
    errors = config_errors(lambda: build_contactor(1, {
        "relay_pin": "GPIO 17", "feedback_timeout": 0.3, "active_high": "yes"}))
    assert errors == [
        "relay_pin: must be a GPIO pin like 'GPIO17', 'BOARD11' or 17 (got 'GPIO 17')",
        "active_high: must be true or false (got 'yes')",
        "feedback_timeout: needs feedback_pin",
    ]
    errors = config_errors(lambda: build_contactor(1, {"relay_pin": "GPIO17",
                                                       "feedback_pin": "BCM17"}))
    assert len(errors) == 1 and errors[0].startswith("feedback_pin: ")
    errors = config_errors(lambda: build_contactor(1, {"relay_pin": "GPIO99"}))
    assert len(errors) == 1 and errors[0].startswith("relay_pin: ")
    assert config_errors(lambda: build_contactor(1, {"relay_pin": 17, "relay_pn": 3})) == [
        "relay_pn: unknown option (did you mean 'relay_pin'?)"]


# ---- fault inputs -----------------------------------------------------------------------------


async def test_emergency_stop_raises_while_pressed(factory: MockFactory) -> None:
    # A normally-closed mushroom button to ground with the pull-up: pressed = open = high.
    [estop] = build_inputs({"estop": {"kind": "emergency_stop", "pin": "GPIO5",
                                      "active_high": True}})
    button = pin(factory, "GPIO5")
    button.drive_low()
    events: list[HalEvent] = []
    await estop.start(events.append)
    await settle()
    assert events == []
    button.drive_high()
    await settle()
    assert events == [FaultRaised(0, Fault.EMERGENCY_STOP, "emergency stop pressed")]
    button.drive_low()
    await settle()
    assert events[1:] == [FaultCleared(0, Fault.EMERGENCY_STOP)]


async def test_emergency_stop_pressed_at_boot(factory: MockFactory) -> None:
    [estop] = build_inputs({"estop": {"kind": "emergency_stop", "pin": "GPIO5"}})
    pin(factory, "GPIO5").drive_low()  # default wiring: contact to ground, active low
    events: list[HalEvent] = []
    await estop.start(events.append)
    assert events == [FaultRaised(0, Fault.EMERGENCY_STOP, "emergency stop pressed")]


async def test_rcd_trip_mid_session_latches_until_reset(factory: MockFactory) -> None:
    contactor = feedback_contactor()
    [rcd] = build_inputs({"rcd1": {"kind": "rcd", "pin": "GPIO6", "connector_id": 1,
                                   "pull": "down", "bounce_time": 0.01}})
    trip, aux = pin(factory, "GPIO6"), pin(factory, "GPIO27")
    events: list[HalEvent] = []
    await contactor.start(events.append)
    await rcd.start(events.append)
    await contactor.set_closed(True)  # charging
    aux.drive_low()
    await settle(TIMEOUT * 2)
    assert events == []

    await asyncio.to_thread(trip.drive_high)  # the RCM trips, reported from gpiozero's thread
    await settle()
    assert events == [FaultRaised(1, Fault.GROUND_FAILURE, "residual current device tripped")]
    await settle(TIMEOUT * 2)
    assert len(events) == 1, "stays raised while the trip contact is held"
    trip.drive_low()  # reset by hand
    await settle()
    assert events[1:] == [FaultCleared(1, Fault.GROUND_FAILURE)]


async def test_generic_fault_input_and_bounce(factory: MockFactory) -> None:
    inputs = build_inputs({
        "overtemp": {"kind": "fault", "fault": "HighTemperature", "pin": 12, "connector_id": 2},
        "estop": {"kind": "emergency_stop", "pin": 13},
    })
    assert [i.name for i in inputs] == ["overtemp", "estop"]
    overtemp = inputs[0]
    assert overtemp.fault is Fault.HIGH_TEMPERATURE
    events: list[HalEvent] = []
    await overtemp.start(events.append)
    contact = pin(factory, "GPIO12")
    for _ in range(3):  # contact bounce, delivered before the loop gets to run
        contact.drive_low()
        contact.drive_high()
    contact.drive_low()
    await settle()
    assert events == [FaultRaised(2, Fault.HIGH_TEMPERATURE, "input overtemp active")]


def test_input_option_errors(factory: MockFactory) -> None:
    errors = config_errors(lambda: build_inputs({
        "a": {"kind": "fault", "pin": "GPIO5", "fault": "toasty"},
        "b": {"pin": "GPIO6"},
        "c": {"kind": "rcd", "pin": "GPIO7", "fault": "ground_failure", "pull": "sideways"},
        "d": "GPIO8",
    }))
    assert errors[0].startswith("a.fault: unknown fault 'toasty'")
    assert errors[1:] == [
        "b.kind: required",
        "c.pull: must be one of 'up', 'down', 'none' (got 'sideways')",
        "c.fault: only for kind = 'fault'",
        "d: must be a table with at least kind and pin (got 'GPIO8')",
    ]
    errors = config_errors(lambda: build_inputs({
        "a": {"kind": "rcd", "pin": "GPIO5"}, "b": {"kind": "emergency_stop", "pin": 5}}))
    assert len(errors) == 1 and errors[0].startswith("b.pin: ")


# ---- connector lock ---------------------------------------------------------------------------


def pulse_lock(**extra: object):
    # Feedback: a switch to ground closed while locked (pull-up, active low).
    return build_lock(1, {"unlock_pin": "GPIO22", "feedback_pin": "GPIO23", "pulse_ms": 40,
                          "unlock_timeout": TIMEOUT, **extra})


async def test_unlock_success(factory: MockFactory) -> None:
    lock = pulse_lock()
    actuator, switch = pin(factory, "GPIO22"), pin(factory, "GPIO23")
    switch.drive_low()
    events: list[HalEvent] = []
    await lock.start(events.append)
    assert lock.is_locked is True
    asyncio.get_running_loop().call_later(0.02, switch.drive_high)  # the latch releases
    assert await lock.unlock() is True
    assert actuator.state is False, "the pulse ended"
    assert [s.state for s in actuator.states] == [False, True, False]
    assert 0.03 <= actuator.states[2].timestamp < 0.2, "pulse lasted pulse_ms"
    assert events == []
    assert await lock.unlock() is True, "already open: no pulse"
    assert len(actuator.states) == 3


async def test_unlock_failure_raises_lock_fault(factory: MockFactory,
                                                caplog: pytest.LogCaptureFixture) -> None:
    lock = pulse_lock()
    actuator, switch = pin(factory, "GPIO22"), pin(factory, "GPIO23")
    switch.drive_low()  # jammed: stays locked
    events: list[HalEvent] = []
    await lock.start(events.append)
    with caplog.at_level(logging.ERROR):
        assert await lock.unlock() is False
    assert actuator.state is False
    assert events == [FaultRaised(1, Fault.CONNECTOR_LOCK_FAILURE, "connector did not unlock")]
    assert "lock did not open" in caplog.text

    asyncio.get_running_loop().call_later(0.01, switch.drive_high)
    assert await lock.unlock() is True
    assert events[1:] == [FaultCleared(1, Fault.CONNECTOR_LOCK_FAILURE)]


async def test_motor_lock(factory: MockFactory) -> None:
    lock = build_lock(1, {"type": "motor", "unlock_pin": 22, "lock_pin": 24, "pulse_ms": 20,
                          "feedback_pin": 23, "feedback_pull": "down",
                          "feedback_active_high": True, "unlock_timeout": TIMEOUT})
    lock_out, switch = pin(factory, "GPIO24"), pin(factory, "GPIO23")
    await lock.start(lambda e: None)
    asyncio.get_running_loop().call_later(0.01, switch.drive_high)
    assert await lock.lock() is True
    assert [s.state for s in lock_out.states] == [False, True, False]
    asyncio.get_running_loop().call_later(0.01, switch.drive_low)
    assert await lock.unlock() is True


async def test_lock_without_feedback_trusts_the_pulse(factory: MockFactory) -> None:
    lock = build_lock(1, {"unlock_pin": "GPIO22", "pulse_ms": 10})
    await lock.start(lambda e: None)
    assert lock.is_locked is None
    assert await lock.unlock() is True
    assert [s.state for s in pin(factory, "GPIO22").states] == [False, True, False]


def test_lock_option_errors(factory: MockFactory) -> None:
    assert config_errors(lambda: build_lock(1, {"type": "motor", "unlock_pin": 22})) == [
        "lock_pin: required"]
    assert config_errors(lambda: build_lock(1, {"unlock_pin": 22, "lock_pin": 24,
                                                "pulse_ms": 0})) == [
        "lock_pin: only for type = 'motor' (a pulse lock engages by itself)",
        "pulse_ms: must be a whole number from 10 to 5000 (got 0)",
    ]
    assert config_errors(lambda: build_lock(1, {"unlock_pin": 22, "unlock_timeout": 2})) == [
        "unlock_timeout: needs feedback_pin"]
