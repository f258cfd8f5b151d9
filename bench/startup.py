"""Cold start: from spawning `cpagent run` to the CSMS receiving its BootNotification.

Target: median of 10 <= 0.8 s on the development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import SUBPROTOCOLS, VERSIONS, agent_command, beside, env, median, write_config

from cpagent.devcsms import DevCsms

TARGET = 0.8


async def measure(runs: int, version: str = "1.6") -> list[float]:
    figures = []
    async with DevCsms(subprotocols=(SUBPROTOCOLS[version],)) as csms:
        for n in range(runs):
            config = write_config(csms.url, identity=f"BENCH-{n}", version=version)
            mark = csms.mark()
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(*agent_command(config), env=env())
            try:
                record = await csms.wait_for_call("BootNotification", identity=f"BENCH-{n}",
                                                  after=mark, timeout=30)
                figures.append(record.time - began)
            finally:
                process.terminate()
                await process.wait()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    medians = {}
    for version in VERSIONS:
        figures = asyncio.run(measure(args.runs, version))
        value = medians[version] = median(figures)
        print(f"OCPP {version}: cold start to BootNotification: median {value:.3f} s over "
              f"{len(figures)} runs (min {min(figures):.3f}, max {max(figures):.3f}); target "
              f"<= {TARGET} s; ratio {value / TARGET:.2f} of target")
    print(beside("cold start", medians, "s"))


if __name__ == "__main__":
    main()
