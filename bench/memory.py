"""Idle resident memory of `cpagent run` connected with 2 connectors, beside a bare Python
that imports the same third-party dependencies. Target: agent <= 1.2 x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from _common import SUBPROTOCOLS, VERSIONS, agent_command, beside, env, rss_kib, write_config

from cpagent.devcsms import DevCsms

TARGET = 1.2
# What a running agent imports beyond the standard library (the mock HAL needs no driver).
DEPENDENCIES = ["ocpp", "ocpp.v16", "ocpp.messages", "jsonschema", "websockets",
                "websockets.asyncio.client", "sqlite3"]


def bare_rss() -> int:
    code = (f"import {', '.join(DEPENDENCIES)}, sys; "
            "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])")
    return int(subprocess.check_output([sys.executable, "-c", code], text=True))


async def agent_rss(seconds: float, version: str = "1.6") -> int:
    async with DevCsms(subprotocols=(SUBPROTOCOLS[version],)) as csms:
        config = write_config(csms.url, connectors=2, version=version)
        process = await asyncio.create_subprocess_exec(*agent_command(config), env=env())
        try:
            await csms.wait_for_call("StatusNotification", predicate=lambda p: p.get(
                "evseId", p.get("connectorId")) == 2, timeout=30)
            await asyncio.sleep(seconds)
            return rss_kib(process.pid)
        finally:
            process.terminate()
            await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    bare = bare_rss()
    figures = {}
    for version in VERSIONS:
        agent = asyncio.run(agent_rss(args.seconds, version))
        figures[version] = agent / 1024
        print(f"OCPP {version}: idle RSS after {args.seconds:.0f} s connected, 2 connectors: "
              f"agent {agent / 1024:.1f} MiB, bare import of the same dependencies "
              f"{bare / 1024:.1f} MiB; ratio {agent / bare:.2f} (target <= {TARGET})")
    print(beside("idle RSS", figures, "MiB"))


if __name__ == "__main__":
    main()
