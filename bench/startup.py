"""Cold start: from spawning `cpagent run` to the CSMS receiving its BootNotification.

Target: median of 10 <= 0.8 s on the development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import agent_command, env, median, write_config

from cpagent.devcsms import DevCsms

TARGET = 0.8


async def measure(runs: int) -> list[float]:
    figures = []
    async with DevCsms() as csms:
        for n in range(runs):
            config = write_config(csms.url, identity=f"BENCH-{n}")
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
    figures = asyncio.run(measure(args.runs))
    value = median(figures)
    print(f"cold start to BootNotification: median {value:.3f} s over {len(figures)} runs "
          f"(min {min(figures):.3f}, max {max(figures):.3f}); target <= {TARGET} s; "
          f"ratio {value / TARGET:.2f} of target")


if __name__ == "__main__":
    main()
