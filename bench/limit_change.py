"""Schedule boundary (wall clock) to the pilot's new current limit, on a running agent.

Two sessions charge on a two-EVSE station (mock hardware, dev CSMS, 1.6). Each connector has a
TxDefaultProfile whose limit changes every few seconds: connector 1's schedule starts on a whole
second, as nearly every CSMS writes it; connector 2's half a second later, the worst case for
an agent that looks at the clock once a second. The mock pilot's set_current_limit is wrapped
to stamp each call, and the delay from each boundary to the call carrying the new limit is
taken. Target: p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import median, percentile

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.core.limits import MAX_PERIODS
from cpagent.devcsms import DevCsms
from hal.mock import MockPilot

TARGET_S = 1.0
OFFSETS = {1: 0.0, 2: 0.5}  # where in the second each connector's schedule starts


def wire_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def limits(count: int, connector: int) -> list[float]:
    """A different limit at each boundary, never below 6 A (no pause, no contactor)."""
    return [float(8 + (i * 5 + connector * 3) % 20) for i in range(count)]


async def measure(boundaries: int, every: int) -> dict[int, list[float]]:
    calls: list[tuple[float, int, float]] = []
    original = MockPilot.set_current_limit

    async def stamped(self: MockPilot, amps: float) -> None:
        calls.append((time.time(), self.connector_id, amps))
        await original(self, amps)

    MockPilot.set_current_limit = stamped  # the agent keeps the bound method it is built with
    delays: dict[int, list[float]] = {c: [] for c in OFFSETS}
    try:
        async with DevCsms() as csms:
            with tempfile.TemporaryDirectory() as tmp:
                config = parse_config({
                    "charge_point": {"id": "BENCH-CP"},
                    "csms": {"url": csms.url, "ocpp_version": "1.6"},
                    "station": {"connectors": 2, "data_dir": tmp, "time_source": "system",
                                "control_socket": str(Path(tmp) / "c.sock")},
                    "logging": {"level": "WARNING"},
                })
                agent = Agent(config, clock=Clock("system"))
                task = asyncio.create_task(agent.run())
                await csms.wait_for_call("StatusNotification", timeout=20,
                                         predicate=lambda p: p["connectorId"] == 2)
                mock = agent.mock
                assert mock is not None
                for connector in OFFSETS:
                    mock.plug(connector)
                    mock.swipe(f"BENCH{connector}", connector)
                    await csms.wait_for_call(
                        "StatusNotification", timeout=10, predicate=lambda p, c=connector:
                        p["connectorId"] == c and p["status"] == "Charging")
                begins = math.ceil(time.time()) + 2
                plans: dict[int, list[tuple[float, float]]] = {}
                for connector, offset in OFFSETS.items():
                    start = begins + offset
                    amps = limits(boundaries + 1, connector)
                    plans[connector] = [(start + i * every, a) for i, a in enumerate(amps)]
                    answer = await csms.call("BENCH-CP", "SetChargingProfile", {
                        "connectorId": connector, "csChargingProfiles": {
                            "chargingProfileId": connector, "stackLevel": 0,
                            "chargingProfilePurpose": "TxDefaultProfile",
                            "chargingProfileKind": "Absolute",
                            "chargingSchedule": {
                                "chargingRateUnit": "A", "startSchedule": wire_time(start),
                                "chargingSchedulePeriod": [
                                    {"startPeriod": i * every, "limit": a}
                                    for i, a in enumerate(amps)]}}})
                    if answer["status"] != "Accepted":
                        raise RuntimeError(f"connector {connector}: {answer}")
                last = max(plan[-1][0] for plan in plans.values())
                await asyncio.sleep(last - time.time() + 1.5)
                for connector, plan in plans.items():
                    # The first period is the first change from the 32 A offered before; each
                    # boundary after it is one more.
                    for boundary, amps in plan:
                        at = next((t for t, c, a in calls
                                   if c == connector and a == amps and t >= boundary - 0.001),
                                  None)
                        if at is None:
                            raise RuntimeError(f"connector {connector}: {amps} A never came "
                                               f"after {boundary:.3f}")
                        delays[connector].append(at - boundary)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        MockPilot.set_current_limit = original
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boundaries", type=int, default=32)
    parser.add_argument("--every", type=int, default=2, help="seconds between boundaries")
    args = parser.parse_args()
    if args.boundaries + 1 > MAX_PERIODS:
        parser.error(f"at most {MAX_PERIODS - 1} boundaries fit in one schedule")
    logging.basicConfig(level=logging.CRITICAL)
    delays = asyncio.run(measure(args.boundaries, args.every))
    for connector, figures in delays.items():
        ms = [d * 1000 for d in figures]
        p99 = percentile(figures, 0.99)
        print(f"schedule boundary to pilot limit, schedule starting {OFFSETS[connector]:.1f} s "
              f"into a second, over {len(figures)} boundaries every {args.every} s: median "
              f"{median(ms):.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(ms):.1f} ms; target p99 "
              f"<= {TARGET_S:.0f} s; ratio {p99 / TARGET_S:.3f} of target")


if __name__ == "__main__":
    main()
