"""The agent on real drivers against simulated devices: a Modbus meter on loopback, a GPIO
relay and an RCD input on gpiozero's mock pins."""

from __future__ import annotations

import asyncio

from harness import booted
from modbus_sim import SimMeter, TcpSim


async def test_rcd_trip_mid_session_on_real_drivers(csms, start_agent, pins):
    bus = TcpSim(SimMeter("sdm630", energy_wh=5_000_000.0, power_w=0.0))
    await bus.start()
    try:
        cp = await start_agent(hardware={
            "meter": {"driver": "modbus", "model": "sdm630", "transport": "tcp",
                      "host": bus.host, "tcp_port": bus.port, "timeout": 0.5},
            "contactor": {"driver": "gpio", "relay_pin": "GPIO17"},
            "inputs": {"driver": "gpio", "rcd": {"kind": "rcd", "pin": "GPIO5",
                                                "connector_id": 1}},
        })
        await booted(csms)
        boot = csms.calls("BootNotification")[0].payload
        assert boot["meterType"] == "sdm630"
        assert boot["meterSerialNumber"] == str(bus.devices[1].serial)
        relay, rcd = pins.pin(17), pins.pin(5)
        cp.mock.plug(1)
        cp.mock.swipe("04A2B3C4")
        start = await csms.wait_for_call("StartTransaction")
        assert start.payload["meterStart"] == 5_000_000  # read from the meter over Modbus
        await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                 p["status"] == "Charging")
        assert relay.state
        bus.devices[1].energy_wh = 5_012_345.0
        await cp.settle()
        await asyncio.sleep(1.2)  # a meter poll
        rcd.drive_low()  # the residual current device trips (contact to ground)
        stop = await csms.wait_for_call("StopTransaction")
        assert stop.payload["reason"] == "Other"
        assert stop.payload["meterStop"] == 5_012_345
        faulted = await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                           p["status"] == "Faulted")
        assert faulted.payload["errorCode"] == "GroundFailure"
        assert not relay.state
    finally:
        await bus.stop()
