"""Safety outranks everything: a fault that blocks charging opens the contactor at once, from
the input edge, whatever another EVSE's devices, the network or the store are doing — on the
real GPIO drivers against gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import time

from harness import booted

from cpagent.lanes import DEVICE_TIMEOUT

BOUND = 0.1  # seconds from the input edge to the relay open: the target


GPIO_STATION = {
    "contactor": {"driver": "gpio", "connector_1": {"relay_pin": "GPIO17"},
                  "connector_2": {"relay_pin": "GPIO18"}},
    "inputs": {"driver": "gpio",
               "estop": {"kind": "emergency_stop", "pin": "GPIO5", "connector_id": 1}},
}


async def until_pin(pin, state: bool, timeout: float) -> float:
    """Seconds until the pin reads `state`."""
    began = time.perf_counter()
    while bool(pin.state) is not state:
        if time.perf_counter() - began > timeout:
            raise AssertionError(f"pin still {pin.state} after {timeout} s")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - began


async def test_an_emergency_stop_opens_its_contactor_at_once_while_another_pilot_hangs(
        csms, start_agent, pins):
    cp = await start_agent(station={"connectors": 2}, hardware=GPIO_STATION)
    await booted(csms, connectors=2)
    relay1, relay2, estop = pins.pin(17), pins.pin(18), pins.pin(5)
    for evse in (1, 2):
        cp.mock.plug(evse)
        cp.mock.swipe(f"CARD{evse}", evse)
        await csms.wait_for_call("StatusNotification", predicate=lambda p, e=evse:
                                 p["connectorId"] == e and p["status"] == "Charging")
    await cp.settle()
    assert relay1.state and relay2.state

    # EVSE 2's pilot stops answering: its next command hangs for the whole device timeout.
    cp.agent.hardware.pilots[2].hung = True
    # The CSMS ends EVSE 2's session: the core withdraws its offer, into the hung pilot.
    assert await csms.call("CP-TEST", "RemoteStopTransaction", {"transactionId": 2}) == {
        "status": "Accepted"}
    while cp.agent.lanes.pilot[2].busy_since is None:
        await asyncio.sleep(0.001)
    await until_pin(relay2, False, 1)  # its own contactor does not wait for its pilot either
    csms.pause("CP-TEST")  # and the CSMS stops reading: nothing sent is answered

    estop.drive_low()  # the button is pressed (normally closed to GND, pulled up)
    opened_in = await until_pin(relay1, False, DEVICE_TIMEOUT)
    assert opened_in < BOUND, f"contactor 1 opened {opened_in * 1000:.0f} ms after the edge"

    # The core learnt of it afterwards, and the CSMS hears of it once it reads again.
    csms.resume("CP-TEST")
    stop = await csms.wait_for_call("StopTransaction", predicate=lambda p:
                                    p["reason"] == "EmergencyStop", timeout=10)
    assert stop.payload["transactionId"] == 1
    faulted = await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                       p["connectorId"] == 1 and p["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "OtherError"
    # While the button is held, nothing closes contactor 1 again.
    cp.mock.swipe("CARD1", 1)
    await asyncio.sleep(0.5)
    assert not relay1.state
    cp.agent.hardware.pilots[2].hung = False
