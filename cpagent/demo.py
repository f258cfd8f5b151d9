"""`cpagent demo`: a whole charging session on the mock hardware against a local CSMS.

Needs no file and no hardware. It starts the development CSMS on 127.0.0.1, runs the agent
against it, plays plug-in -> card -> charging -> card -> unplug, and prints every OCPP message
as it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import demo_config
from cpagent.devcsms import DevCsms, Record, format_record

CARD = "04A2B3C4D5"


class _Narrator:
    def __init__(self, color: bool) -> None:
        self.color = color

    def step(self, text: str) -> None:
        mark = "\033[1;36m▶\033[0m" if self.color else "▶"
        print(f"\n{mark} {text}", flush=True)

    def record(self, record: Record) -> None:
        print(format_record(record, color=self.color), flush=True)


async def run_demo(*, pace: float = 1.0, color: bool | None = None) -> int:
    color = sys.stdout.isatty() if color is None else color
    narrator = _Narrator(color)
    with tempfile.TemporaryDirectory(prefix="cpagent-demo-") as tmp:
        async with DevCsms(on_record=narrator.record) as csms:
            config = demo_config(Path(tmp), csms.url)
            narrator.step(f"Local CSMS listening on {csms.url}; starting the charger "
                          f"{config.charge_point.id} on mock hardware (data in {tmp})")
            print(f"  (while it runs: cpagent status --socket {config.station.control_socket})")
            agent = Agent(config, clock=Clock("system"))
            task = asyncio.create_task(agent.run())
            try:
                return await _play(agent, csms, narrator, pace)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _play(agent: Agent, csms: DevCsms, narrator: _Narrator, pace: float) -> int:
    mock = agent.mock
    assert mock is not None

    def status_is(status: str):
        return lambda p: p.get("connectorId") == 1 and p.get("status") == status

    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["connectorId"] == 2)
    narrator.step("The CSMS asks for a meter reading every 2 seconds during sessions")
    await csms.call(agent.config.charge_point.id, "ChangeConfiguration",
                    {"key": "MeterValueSampleInterval", "value": "2"})
    await asyncio.sleep(0.5 * pace)

    narrator.step("A car is plugged into connector 1")
    mark = csms.mark()
    mock.plug(1)
    await csms.wait_for_call("StatusNotification", predicate=status_is("Preparing"), after=mark)
    await asyncio.sleep(0.5 * pace)

    narrator.step(f"The driver taps card {CARD}")
    mark = csms.mark()
    mock.swipe(CARD)
    start = await csms.wait_for_call("StartTransaction", after=mark)
    await csms.wait_for_call("StatusNotification", predicate=status_is("Charging"), after=mark)
    narrator.step("Charging: the contactor is closed, the meter runs")
    await csms.wait_for_call("MeterValues", after=mark, timeout=10)
    await asyncio.sleep(4.5 * pace)

    narrator.step("The driver taps the card again to stop")
    mark = csms.mark()
    mock.swipe(CARD)
    stop = await csms.wait_for_call("StopTransaction", after=mark)
    await csms.wait_for_call("StatusNotification", predicate=status_is("Finishing"), after=mark)

    narrator.step("The cable is unplugged")
    mark = csms.mark()
    mock.unplug(1)
    await csms.wait_for_call("StatusNotification", predicate=status_is("Available"), after=mark)

    energy = (stop.payload["meterStop"] - start.payload["meterStart"]) / 1000
    narrator.step(f"Session done: transaction {stop.payload['transactionId']}, "
                  f"{energy:.2f} kWh, stopped by {stop.payload.get('reason', 'Local')}; "
                  f"{len(csms.records)} OCPP frames exchanged")
    return 0


def main(pace: float = 1.0) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(asyncio.wait_for(run_demo(pace=pace), 60))
    except TimeoutError:
        print("demo did not finish within a minute", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

