"""Idle resident memory of `cpagent run` connected with 2 connectors, beside a bare Python
that imports the same third-party dependencies. Target: agent <= 1.2 x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from _common import agent_command, env, write_config

from cpagent.devcsms import DevCsms

TARGET = 1.2
# What a running agent imports beyond the standard library (the mock HAL needs no driver).
DEPENDENCIES = ["ocpp", "ocpp.v16", "ocpp.messages", "jsonschema", "websockets",
                "websockets.asyncio.client", "sqlite3"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def bare_rss() -> int:
    code = (f"import {', '.join(DEPENDENCIES)}, sys; "
            "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])")
    return int(subprocess.check_output([sys.executable, "-c", code], text=True))


async def agent_rss(seconds: float) -> int:
    async with DevCsms() as csms:
        config = write_config(csms.url, connectors=2)
        process = await asyncio.create_subprocess_exec(*agent_command(config), env=env())
        try:
            await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                     p["connectorId"] == 2, timeout=30)
            await asyncio.sleep(seconds)
            return rss_kib(process.pid)
        finally:
            process.terminate()
            await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    agent = asyncio.run(agent_rss(args.seconds))
    bare = bare_rss()
    print(f"idle RSS after {args.seconds:.0f} s connected, 2 connectors: agent {agent / 1024:.1f} "
          f"MiB, bare import of the same dependencies {bare / 1024:.1f} MiB; ratio "
          f"{agent / bare:.2f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
