"""`cpagent demo`: a whole charging session on the mock hardware against a local CSMS.

In OCPP 1.6 or 2.0.1 (`--ocpp`): the same session, told in each version's messages.

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


class _Script:
    """What the session looks like on the wire in one OCPP version."""

    subprotocol: str

    def __init__(self, csms: DevCsms, identity: str) -> None:
        self.csms = csms
        self.identity = identity

    async def wait(self, action: str, predicate=None, after: int = 0, timeout: float = 10):
        call = await self.csms.wait_for_call(action, predicate=predicate, after=after,
                                             timeout=timeout)
        # Let the CSMS's answer print before the next step's heading.
        for _ in range(50):
            if any(r.unique_id == call.unique_id and r.kind != "call"
                   for r in self.csms.records[-4:]):
                break
            await asyncio.sleep(0.01)
        return call


class _Script16(_Script):
    subprotocol = "ocpp1.6"

    def status(self, status: str, connector: int = 1):
        return lambda p: p.get("connectorId") == connector and p.get("status") == status

    async def ask_for_samples(self) -> None:
        await self.csms.call(self.identity, "ChangeConfiguration",
                             {"key": "MeterValueSampleInterval", "value": "2"})

    async def plugged(self, mark: int) -> None:
        await self.wait("StatusNotification", self.status("Preparing"), mark)

    async def started(self, mark: int):
        start = await self.wait("StartTransaction", after=mark)
        await self.wait("StatusNotification", self.status("Charging"), mark)
        return start

    async def sampled(self, mark: int) -> None:
        await self.wait("MeterValues", after=mark)

    async def stopped(self, mark: int):
        stop = await self.wait("StopTransaction", after=mark)
        await self.wait("StatusNotification", self.status("Finishing"), mark)
        return stop

    async def unplugged(self, mark: int) -> None:
        await self.wait("StatusNotification", self.status("Available"), mark)

    def summary(self, start, stop) -> str:
        energy = (stop.payload["meterStop"] - start.payload["meterStart"]) / 1000
        return (f"transaction {stop.payload['transactionId']}, {energy:.2f} kWh, "
                f"stopped by {stop.payload.get('reason', 'Local')}")


class _Script201(_Script):
    subprotocol = "ocpp2.0.1"

    def status(self, status: str, evse: int = 1):
        return lambda p: p.get("evseId") == evse and p.get("connectorStatus") == status

    @staticmethod
    def event(kind: str, state: str | None = None, trigger: str | None = None):
        def match(p: dict) -> bool:
            return (p["eventType"] == kind
                    and (state is None or p["transactionInfo"].get("chargingState") == state)
                    and (trigger is None or p["triggerReason"] == trigger))
        return match

    async def ask_for_samples(self) -> None:
        await self.csms.call(self.identity, "SetVariables", {"setVariableData": [{
            "component": {"name": "SampledDataCtrlr"},
            "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "2"}]})

    async def plugged(self, mark: int) -> None:
        await self.wait("StatusNotification", self.status("Occupied"), mark)

    async def started(self, mark: int):
        start = await self.wait("TransactionEvent", self.event("Started"), mark)
        await self.wait("TransactionEvent", lambda p: p["transactionInfo"].get(
            "chargingState") == "Charging", mark)
        return start

    async def sampled(self, mark: int) -> None:
        await self.wait("TransactionEvent", self.event("Updated", trigger="MeterValuePeriodic"),
                        mark)

    async def stopped(self, mark: int):
        # TxStopPoint is EVConnected,Authorized: the card ends the transaction.
        return await self.wait("TransactionEvent", self.event("Ended"), mark)

    async def unplugged(self, mark: int) -> None:
        await self.wait("StatusNotification", self.status("Available"), mark)

    @staticmethod
    def _energy(record) -> float:
        """The last energy register reading: Ended carries Transaction.Begin before .End."""
        readings = [float(sampled["value"])
                    for value in record.payload.get("meterValue", [])
                    for sampled in value["sampledValue"]
                    if sampled.get("measurand", "Energy.Active.Import.Register")
                    == "Energy.Active.Import.Register"]
        return readings[-1] if readings else 0.0

    def summary(self, start, stop) -> str:
        info = stop.payload["transactionInfo"]
        energy = (self._energy(stop) - self._energy(start)) / 1000
        return (f"transaction {info['transactionId']}, {energy:.2f} kWh, "
                f"stopped by {info.get('stoppedReason', 'Local')}")


SCRIPTS: dict[str, type[_Script]] = {"1.6": _Script16, "2.0.1": _Script201}


async def run_demo(*, pace: float = 1.0, color: bool | None = None,
                   version: str = "1.6") -> int:
    color = sys.stdout.isatty() if color is None else color
    narrator = _Narrator(color)
    script_class = SCRIPTS[version]
    with tempfile.TemporaryDirectory(prefix="cpagent-demo-") as tmp:
        async with DevCsms(on_record=narrator.record,
                           subprotocols=(script_class.subprotocol,)) as csms:
            config = demo_config(Path(tmp), csms.url, ocpp_version=version)
            narrator.step(f"Local OCPP {version} CSMS listening on {csms.url}; starting the "
                          f"charger {config.charge_point.id} on mock hardware (data in {tmp})")
            print(f"  (while it runs: cpagent status --socket {config.station.control_socket})")
            agent = Agent(config, clock=Clock("system"))
            task = asyncio.create_task(agent.run())
            try:
                script = script_class(csms, config.charge_point.id)
                return await _play(agent, script, narrator, pace)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _play(agent: Agent, script: _Script, narrator: _Narrator, pace: float) -> int:
    mock = agent.mock
    assert mock is not None
    csms = script.csms

    await script.wait("StatusNotification", script.status("Available", 2))
    narrator.step("The CSMS asks for a meter reading every 2 seconds during sessions")
    await script.ask_for_samples()
    await asyncio.sleep(0.5 * pace)

    narrator.step("A car is plugged into connector 1")
    mark = csms.mark()
    mock.plug(1)
    await script.plugged(mark)
    await asyncio.sleep(0.5 * pace)

    narrator.step(f"The driver taps card {CARD}")
    mark = csms.mark()
    mock.swipe(CARD)
    start = await script.started(mark)
    narrator.step("Charging: the contactor is closed, the meter runs")
    await script.sampled(mark)
    await asyncio.sleep(4.5 * pace)

    narrator.step("The driver taps the card again to stop")
    mark = csms.mark()
    mock.swipe(CARD)
    stop = await script.stopped(mark)

    narrator.step("The cable is unplugged")
    mark = csms.mark()
    mock.unplug(1)
    await script.unplugged(mark)

    narrator.step(f"Session done: {script.summary(start, stop)}; "
                  f"{len(csms.records)} OCPP frames exchanged")
    return 0


def main(pace: float = 1.0, version: str = "1.6") -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(asyncio.wait_for(run_demo(pace=pace, version=version), 60))
    except TimeoutError:
        print("demo did not finish within a minute", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

