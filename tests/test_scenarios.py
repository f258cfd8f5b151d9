"""Charging sessions played against two CSMSs that share no code with each other or with us:
the dev CSMS on the `ocpp` package, and the npm package ocpp-rpc in strict mode, which checks
every frame against the official schemas (date-time formats included) — each in OCPP 1.6 and
in 2.0.1, from one scenario per session (see `dialects`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dialects import DIALECTS, Dialect
from harness import RunningAgent, make_config
from ocpp_rpc_csms import OcppRpcCsms, ocpp_rpc_available

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from hal.interfaces import Fault


@pytest.fixture(params=[("dev", "1.6"), ("dev", "2.0.1"), ("ocpp-rpc", "1.6"),
                        ("ocpp-rpc", "2.0.1")], ids=lambda p: f"{p[0]}-{p[1]}")
async def peer(request) -> AsyncIterator[DevCsms | OcppRpcCsms]:
    server, version = request.param
    subprotocols = (DIALECTS[version].subprotocol,)
    if server == "dev":
        async with DevCsms(subprotocols=subprotocols) as csms:
            csms.version = version
            yield csms
        return
    missing = ocpp_rpc_available()
    if missing:
        pytest.skip(f"ocpp-rpc CSMS unavailable: {missing}")
    async with OcppRpcCsms(subprotocols=subprotocols) as csms:
        csms.version = version
        yield csms
        # The independent CSMS must have found nothing wrong with anything we sent.
        assert csms.bad_frames == []


@pytest.fixture
def say(peer) -> Dialect:
    return DIALECTS[peer.version](peer)


@pytest.fixture
async def charger(peer, say, tmp_path: Path) -> AsyncIterator[RunningAgent]:
    config = make_config(tmp_path / "agent", peer.url, station={"connectors": 2},
                         csms={"ocpp_version": peer.version})
    agent = RunningAgent(config, Clock("system"))
    await agent.start()
    await say.wait_status("Available", 2)
    yield agent
    await agent.stop()


async def charge(say, charger, tag: str = "04A2B3C4", evse: int = 1):
    mark = say.peer.mark()
    charger.mock.plug(evse)
    charger.mock.swipe(tag, evse)
    start = await say.wait_start(after=mark)
    await say.wait_charging(evse, after=mark)
    return start


async def test_card_then_plug_then_card_then_unplug(say, charger):
    mark = say.peer.mark()
    charger.mock.swipe("04A2B3C4")
    await say.peer.wait_for_call("Authorize", after=mark)
    charger.mock.plug(1)
    start = await say.wait_start(after=mark)
    await say.wait_charging(after=mark)
    charger.mock.swipe("04A2B3C4")
    end = await say.wait_end(after=mark)
    assert say.end_reason(end) == "Local"
    assert say.meter_stop(end) >= say.meter_start(start)
    charger.mock.unplug(1)
    await say.wait_status("Available", after=say.peer.mark() - 1)


async def test_unplug_mid_session_stops_with_ev_disconnected(say, charger):
    start = await charge(say, charger)
    charger.mock.unplug(1)
    end = await say.wait_end()
    assert say.end_reason(end) == "EVDisconnected"
    assert say.transaction_of(end) == say.transaction_id(start)


async def test_ev_suspends_and_resumes(say, charger):
    await charge(say, charger)
    mark = say.peer.mark()
    charger.mock.suspend(1)
    await say.wait_state("SuspendedEV", after=mark)
    await charger.settle()
    assert not charger.agent.hardware.contactors[1].is_closed
    charger.mock.resume(1)
    await say.wait_state("Charging", after=mark)
    await charger.settle()
    assert charger.agent.hardware.contactors[1].is_closed


async def test_invalid_id_tag_never_starts(say, charger):
    say.peer.rejected_tags = {"STOLEN"}
    mark = say.peer.mark()
    charger.mock.plug(1)
    charger.mock.swipe("STOLEN")
    await say.peer.wait_for_call("Authorize", after=mark)
    await charger.settle()
    starts = [r for r in say.peer.calls() if r.action in ("StartTransaction",)
              or (r.action == "TransactionEvent" and r.payload.get("idToken"))]
    assert not starts
    assert not charger.agent.hardware.contactors[1].is_closed
    assert await charger.status(1) == "Preparing"


@pytest.mark.parametrize("fault", [Fault.GROUND_FAILURE, Fault.EMERGENCY_STOP])
async def test_fault_mid_session(say, charger, fault):
    await charge(say, charger)
    mark = say.peer.mark()
    charger.mock.fault(fault, 1)
    end = await say.wait_end(after=mark)
    assert say.end_reason(end) == say.fault_reason(fault)
    await say.wait_fault(fault, after=mark)
    assert not charger.agent.hardware.contactors[1].is_closed


async def test_remote_start_and_stop_on_the_second_evse(say, charger):
    charger.mock.plug(2)
    await say.wait_status("Preparing", 2)
    answer = await say.remote_start("REMOTE1", 2)
    assert answer["status"] == "Accepted"
    start = await say.wait_start(evse=2)
    await say.wait_charging(2)
    busy = await say.remote_start("REMOTE2", 2, remote_id=2)
    assert busy["status"] == "Rejected"
    answer = await say.remote_stop(say.transaction_id(start))
    assert answer == {"status": "Accepted"}
    end = await say.wait_end()
    assert say.end_reason(end) == "Remote"


async def test_reset_during_a_session_stops_it_first(say, charger):
    await charge(say, charger)
    answer = await say.reset()
    assert answer == {"status": "Accepted"}
    end = await say.wait_end()
    assert say.end_reason(end) == say.reset_reason()
    assert await charger.task == "soft"


async def test_meter_values_during_a_session(say, charger):
    await say.sample_every_second()
    await charge(say, charger)
    sampled = await say.wait_meter_values()
    assert {s["measurand"] for s in sampled} == {"Energy.Active.Import.Register",
                                                 "Power.Active.Import"}


async def test_a_charging_limit_mid_session_reaches_the_pilot(say, charger):
    await charge(say, charger)
    assert charger.agent.core.evse(1).offered_amps == 32.0
    assert await say.set_default_limit(10) == {"status": "Accepted"}
    await charger.settle()
    assert charger.agent.core.evse(1).offered_amps == 10.0
    assert charger.agent.hardware.pilots[1].current_limit == 10.0
    # 10 A x 230 V x 3 phases = 6900 W; both EVSEs together at most 2 x 10 A.
    assert await say.composite_limits(1) == [10.0]
    assert await say.composite_limits(1, "W") == [6900.0]
    assert await say.composite_limits(0) == [20.0]
    assert await say.clear_limits() == {"status": "Accepted"}
    await charger.settle()
    assert charger.agent.hardware.pilots[1].current_limit == 32.0


async def test_a_reserved_evse_waits_for_its_card(say, charger):
    expiry = datetime.fromtimestamp(time.time() + 600, UTC).isoformat().replace("+00:00", "Z")
    mark = say.peer.mark()
    assert await say.reserve(7, "RESERVED1", 1, expiry) == {"status": "Accepted"}
    await say.wait_status("Reserved", 1, after=mark)
    charger.mock.plug(1)
    charger.mock.swipe("STRANGER", 1)
    await charger.settle()
    assert charger.agent.core.evse(1).transaction is None
    charger.mock.swipe("RESERVED1", 1)
    start = await say.wait_start(after=mark)
    assert say.reservation_of(start) == 7
    await say.wait_charging(after=mark)


async def test_a_triggered_status_comes_after_the_answer(say, charger):
    mark = say.peer.mark()
    assert (await say.trigger_status(2))["status"] == "Accepted"
    await say.wait_status("Available", 2, after=mark)
