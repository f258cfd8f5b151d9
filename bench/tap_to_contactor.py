"""Card tap to contactor closed, with the CSMS answering Authorize at once.

The overhead is what the agent adds over the Authorize round trip itself: the core's
decision, the durable StartTransaction write, offering current, the vehicle's answer on the
(simulated) pilot and the contactor command. Target: p99 overhead <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _common import SUBPROTOCOLS, VERSIONS, beside, median, percentile

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.devcsms import DevCsms

TARGET_MS = 10.0


def _stopped(version: str, tag: str):
    if version == "1.6":
        return "StopTransaction", lambda p: p.get("idTag") == tag
    return "TransactionEvent", lambda p: p["eventType"] == "Ended" and p.get(
        "idToken", {}).get("idToken") == tag


async def measure(taps: int, version: str = "1.6") -> tuple[list[float], list[float]]:
    totals, overheads = [], []
    frames: dict[str, float] = {}

    def on_frame(direction: str, text: str) -> None:
        frame = json.loads(text)
        if direction == "out" and frame[0] == 2 and frame[2] == "Authorize":
            frames["sent"], frames["id"] = time.perf_counter(), frame[1]
        elif direction == "in" and frame[0] == 3 and frame[1] == frames.get("id"):
            frames["answered"] = time.perf_counter()

    async with DevCsms(subprotocols=(SUBPROTOCOLS[version],)) as csms:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config({
                "charge_point": {"id": "BENCH-TAP"},
                "csms": {"url": csms.url, "ocpp_version": version},
                "station": {"data_dir": tmp, "control_socket": str(Path(tmp) / "c.sock")},
            })
            agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
            task = asyncio.create_task(agent.run())
            await csms.wait_for_call("StatusNotification", predicate=lambda p: p.get(
                "connectorId", p.get("evseId")) == 1)
            mock = agent.mock
            assert mock is not None
            closed_at: list[float] = []

            def applied(closed: bool) -> None:  # the relay command has returned
                if closed:
                    closed_at.append(time.perf_counter())

            agent.lanes.contactor[1].on_applied = applied
            for n in range(taps):
                tag = f"TAG{n:05d}"
                mock.plug(1)
                await asyncio.sleep(0.01)
                closed_at.clear()
                frames.clear()
                began = time.perf_counter()
                mock.swipe(tag)
                while not closed_at:
                    await asyncio.sleep(0.0005)
                total = closed_at[0] - began
                round_trip = frames["answered"] - frames["sent"]
                totals.append(total * 1000)
                overheads.append((total - round_trip) * 1000)
                mock.swipe(tag)  # stop
                mock.unplug(1)
                action, stopped = _stopped(version, tag)
                await csms.wait_for_call(action, predicate=stopped)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return totals, overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--taps", type=int, default=200)
    args = parser.parse_args()
    figures = {}
    for version in VERSIONS:
        totals, overheads = asyncio.run(measure(args.taps, version))
        p99 = percentile(overheads, 0.99)
        figures[version] = median(totals)
        print(f"OCPP {version}: card tap to contactor closed over {len(totals)} taps: total "
              f"median {median(totals):.2f} ms, p99 {percentile(totals, 0.99):.2f} ms; overhead "
              f"over the Authorize round trip median {median(overheads):.2f} ms, p99 "
              f"{p99:.2f} ms; target p99 <= {TARGET_MS} ms; ratio {p99 / TARGET_MS:.2f} of "
              "target")
    print(beside("card tap to contactor, median", figures, "ms"))


if __name__ == "__main__":
    main()
