"""OCPP 2.0.1 GetBaseReport FullInventory: from the request to the last NotifyReport part,
and the size of the report, for a station of N EVSEs on the mock hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _common import median

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.devcsms import DevCsms


async def measure(evses: int, runs: int) -> tuple[list[float], int, int, int]:
    times: list[float] = []
    parts = size = variables = 0
    async with DevCsms(subprotocols=("ocpp2.0.1",)) as csms:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config({
                "charge_point": {"id": "BENCH-REPORT"},
                "csms": {"url": csms.url, "ocpp_version": "2.0.1"},
                "station": {"connectors": evses, "data_dir": tmp,
                            "control_socket": str(Path(tmp) / "c.sock")},
            })
            agent = Agent(config, clock=Clock("system"))
            task = asyncio.create_task(agent.run())
            await csms.wait_for_call("StatusNotification",
                                     predicate=lambda p: p["evseId"] == evses, timeout=20)
            for request_id in range(1, runs + 1):
                mark = csms.mark()
                began = time.monotonic()  # the clock the CSMS stamps records with
                answer = await csms.call("BENCH-REPORT", "GetBaseReport", {
                    "requestId": request_id, "reportBase": "FullInventory"})
                assert answer["status"] == "Accepted", answer
                last = await csms.wait_for_call(
                    "NotifyReport", after=mark, timeout=30,
                    predicate=lambda p, r=request_id: p["requestId"] == r and not p.get("tbc"))
                times.append(last.time - began)
                reports = [r for r in csms.calls("NotifyReport")
                           if csms.records.index(r) >= mark
                           and r.payload["requestId"] == request_id]
                parts = len(reports)
                size = sum(len(json.dumps(r.payload, separators=(",", ":"))) for r in reports)
                variables = sum(len(r.payload.get("reportData", [])) for r in reports)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return times, parts, size, variables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evses", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times, parts, size, variables = asyncio.run(measure(args.evses, args.runs))
    print(f"OCPP 2.0.1 FullInventory, {args.evses} EVSEs: {variables} variables in {parts} "
          f"NotifyReport parts, {size / 1024:.1f} KiB of payload; request to last part median "
          f"{median(times) * 1000:.1f} ms over {len(times)} runs (max "
          f"{max(times) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
