"""A charging limit reaching a real pilot driver: the EVSE-WB board's current setpoint
(holding register 1000) on a simulated board over Modbus TCP, in both OCPP versions."""

from __future__ import annotations

import asyncio
import time

import pytest
from dialects import DIALECTS
from harness import RunningAgent, make_config
from test_pilot import EvseWbBoard

from cpagent.clock import Clock, format_time
from cpagent.devcsms import DevCsms


@pytest.fixture(params=["1.6", "2.0.1"])
async def peer(request):
    async with DevCsms(subprotocols=(DIALECTS[request.param].subprotocol,)) as csms:
        csms.version = request.param
        yield csms


async def until(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def test_a_profile_moves_the_boards_setpoint_and_pauses_below_six_amps(peer, tmp_path):
    say = DIALECTS[peer.version](peer)
    async with EvseWbBoard() as board:
        config = make_config(tmp_path / "agent", peer.url, csms={"ocpp_version": peer.version},
                             hardware={"pilot": {
                                 "driver": "evse_wb", "transport": "tcp", "host": "127.0.0.1",
                                 "tcp_port": board.port, "poll_interval": 0.03,
                                 "timeout": 0.3}})
        cp = await RunningAgent(config, Clock("system")).start()
        try:
            await say.wait_status("Available", 1)
            # Nothing before `begin` (the hardware's 32 A); then 16 A, from 2 s on 4 A (below
            # the pilot's 6 A), from 4 s on 12 A again.
            begin = float(int(time.time()) + 3)
            answer = await say.call(*_profile(say.version, begin, [(0, 16), (2, 4), (4, 12)]))
            assert answer["status"] == "Accepted"
            board.registers[1002] = 2  # B: a vehicle is plugged in
            cp.mock.swipe("04A2B3C4", 1)
            await until(lambda: board.registers[1000] == 32, "the hardware's 32 A before it")
            board.registers[1002] = 3  # C: it asks for power
            await until(lambda: cp.agent.hardware.contactors[1].is_closed, "charging")
            await until(lambda: board.registers[1000] == 16, "16 A from the profile", 5)
            assert time.time() >= begin - 0.1
            await until(lambda: board.registers[1000] == 0, "paused at 4 A", 4)
            assert time.time() >= begin + 2 - 0.1
            assert board.writes[-1] == (1000, [0])
            await until(lambda: not cp.agent.hardware.contactors[1].is_closed, "open", 1)
            await until(lambda: board.registers[1000] == 12, "12 A again", 4)
            assert time.time() >= begin + 4 - 0.1
            assert cp.agent.core.evse(1).transaction is not None  # paused, never ended
        finally:
            await cp.stop()


def _profile(version: str, begin: float, periods: list[tuple[int, float]]):
    """A TxDefaultProfile for connector / EVSE 1 from `begin`, periods (seconds, amps)."""
    schedule = {"chargingRateUnit": "A", "startSchedule": format_time(begin),
                "chargingSchedulePeriod": [{"startPeriod": s, "limit": a} for s, a in periods]}
    if version == "1.6":
        return "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": schedule}}
    return "SetChargingProfile", {"evseId": 1, "chargingProfile": {
        "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": [{"id": 1, **schedule}]}}
