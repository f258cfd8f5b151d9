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

from _common import median, percentile

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.devcsms import DevCsms

TARGET_MS = 10.0


async def measure(taps: int) -> tuple[list[float], list[float]]:
    totals, overheads = [], []
    frames: dict[str, float] = {}

    def on_frame(direction: str, text: str) -> None:
        frame = json.loads(text)
        if direction == "out" and frame[0] == 2 and frame[2] == "Authorize":
            frames["sent"], frames["id"] = time.perf_counter(), frame[1]
        elif direction == "in" and frame[0] == 3 and frame[1] == frames.get("id"):
            frames["answered"] = time.perf_counter()

    async with DevCsms() as csms:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config({
                "charge_point": {"id": "BENCH-TAP"},
                "csms": {"url": csms.url},
                "station": {"data_dir": tmp, "control_socket": str(Path(tmp) / "c.sock")},
            })
            agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
            task = asyncio.create_task(agent.run())
            await csms.wait_for_call("StatusNotification",
                                     predicate=lambda p: p["connectorId"] == 1)
            mock = agent.mock
            assert mock is not None
            contactor = agent.hardware.contactors[1]
            closed_at: list[float] = []
            original = contactor.set_closed

            async def timed(closed: bool) -> None:
                await original(closed)
                if closed:
                    closed_at.append(time.perf_counter())

            contactor.set_closed = timed  # type: ignore[method-assign]
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
                await csms.wait_for_call("StopTransaction", predicate=lambda p, t=tag:
                                         p.get("idTag") == t)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return totals, overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--taps", type=int, default=200)
    args = parser.parse_args()
    totals, overheads = asyncio.run(measure(args.taps))
    p99 = percentile(overheads, 0.99)
    print(f"card tap to contactor closed over {len(totals)} taps: total median "
          f"{median(totals):.2f} ms, p99 {percentile(totals, 0.99):.2f} ms; overhead over the "
          f"Authorize round trip median {median(overheads):.2f} ms, p99 {p99:.2f} ms; "
          f"target p99 <= {TARGET_MS} ms; ratio {p99 / TARGET_MS:.2f} of target")


if __name__ == "__main__":
    main()
