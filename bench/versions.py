"""OCPP 2.0.1 beside 1.6 in one run: cold start, idle RSS, card tap to contactor and queue
replay, each with its ratio (2.0.1 must stay within 1.1 x the 1.6 figure)."""

from __future__ import annotations

import argparse
import asyncio

import durable_queue
import memory
import startup
import tap_to_contactor
from _common import VERSIONS, beside, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="cold starts per version")
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time before RSS")
    parser.add_argument("--taps", type=int, default=200)
    parser.add_argument("--replay", type=int, default=5000)
    args = parser.parse_args()
    starts, rss, taps, replay = {}, {}, {}, {}
    # Interleaved, so that a busy machine weighs on both versions alike.
    for version in VERSIONS:
        starts[version] = median(asyncio.run(startup.measure(args.runs, version)))
        rss[version] = asyncio.run(memory.agent_rss(args.seconds, version)) / 1024
        taps[version] = median(asyncio.run(tap_to_contactor.measure(args.taps, version))[0])
        replay[version] = asyncio.run(durable_queue.replay_figures(args.replay, version))[0]
    print(beside("cold start to BootNotification, median", starts, "s"))
    print(beside("idle RSS, 2 connectors", rss, "MiB"))
    print(beside("card tap to contactor closed, median", taps, "ms"))
    print(beside(f"replay of {args.replay} queued readings", replay, "msg/s",
                 lower_is_better=False))


if __name__ == "__main__":
    main()
