"""A whole charging session against the local CSMS, both orders of card and plug."""

from __future__ import annotations

from harness import booted


async def test_plug_then_card_charges_and_stops(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    cp.mock.plug(1)
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Preparing")
    cp.mock.swipe("04A2B3C4")
    start = await csms.wait_for_call("StartTransaction")
    assert start.payload["idTag"] == "04A2B3C4"
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Charging")
    assert cp.agent.hardware.contactors[1].is_closed
    cp.mock.swipe("04A2B3C4")
    stop = await csms.wait_for_call("StopTransaction")
    assert stop.payload["transactionId"] == 1
    assert stop.payload["reason"] == "Local"
    assert stop.payload["meterStop"] >= start.payload["meterStart"]
    assert not cp.agent.hardware.contactors[1].is_closed
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Finishing")
    cp.mock.unplug(1)
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Available",
                             after=csms.mark() - 1)


async def test_card_then_plug_charges(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    cp.mock.swipe("CARD1")
    await csms.wait_for_call("Authorize")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Preparing")
    assert not csms.calls("StartTransaction")
    cp.mock.plug(1)
    await csms.wait_for_call("StartTransaction")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Charging")


async def test_free_vend_starts_on_plug_without_a_card(csms, start_agent):
    cp = await start_agent(station={"free_vend": True, "free_vend_id_tag": "HOME"})
    await booted(csms)
    cp.mock.plug(1)
    start = await csms.wait_for_call("StartTransaction")
    assert start.payload["idTag"] == "HOME"
    assert not csms.calls("Authorize")
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Charging")
    cp.mock.unplug(1)
    stop = await csms.wait_for_call("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
