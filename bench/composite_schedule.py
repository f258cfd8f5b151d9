"""GetCompositeSchedule for a whole day with the station full of charging profiles.

A two-EVSE station holds as many profiles as it reports it takes (MaxChargingProfilesInstalled),
each with as many periods as it takes (ChargingScheduleMaxPeriods), in the mix a site sees:
daily off-peak calendars (Recurring), one-off grid requests (Absolute, with and without a
validity window), station maxima, defaults for every connector and for each one, in amps and
in watts, on every stack level. A composite for 24 h is then asked for, connector 0, 1 and 2 in
turn:

(a) the core alone: ChargingStation.composite_schedule, as the adapters call it;
(b) the whole answer: GetCompositeSchedule from the dev CSMS to a running agent and back on
    loopback (1.6), timed at the CSMS, and the agent's own share of it (the request frame in
    to the answer frame out).

Target: p99 <= 10 ms for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import median, percentile

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.core.limits import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from cpagent.core.model import CoreSettings
from cpagent.core.station import ChargingStation
from cpagent.devcsms import DevCsms
from cpagent.ocpp16.smart_charging import profile_of

TARGET_MS = 10.0
DAY = 86400
ZONE = "Europe/Berlin"
SITE_LIMIT = 48.0  # amps per phase for both EVSEs together, below their 2 x 32 A
WATTS_PER_AMP = 230 * 3


def wire_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def profile_mix(now: float) -> list[tuple[int, dict]]:
    """(connectorId, csChargingProfiles) for MAX_PROFILES distinct profiles of MAX_PERIODS
    periods each; no two share a connector, purpose and stack level, so none replaces another."""
    midnight = math.floor(now / DAY) * DAY
    levels = range(MAX_STACK_LEVEL + 1)
    slots = [(0, "ChargePointMaxProfile", level) for level in levels]
    slots += [(0, "TxDefaultProfile", level) for level in levels]
    slots += [(connector, "TxDefaultProfile", level)
              for level in levels for connector in (1, 2)]
    mix = []
    for n, (connector, purpose, level) in enumerate(slots[:MAX_PROFILES], start=1):
        station = purpose == "ChargePointMaxProfile"
        in_watts = n % 3 == 0
        low, high = (24, 64) if station else (6, 32)

        def limit(i: int, low: int = low, high: int = high, in_watts: bool = in_watts,
                  n: int = n) -> float:
            amps = low + (i * 7 + n * 5) % (high - low + 1)
            return float(amps * WATTS_PER_AMP if in_watts else amps)

        profile: dict = {"chargingProfileId": n, "stackLevel": level,
                         "chargingProfilePurpose": purpose}
        if level == 0 or n % 4 == 1:
            # A day in half-hours, every day from local midnight (the installer's zone).
            step, start, duration = DAY // MAX_PERIODS, midnight - 2 * 3600, None
            profile |= {"chargingProfileKind": "Recurring", "recurrencyKind": "Daily"}
        else:
            # A one-off request over a few hours around now, with a gap after it.
            step = 300 + 60 * level
            start, duration = now - 3600 * (level % 3), step * MAX_PERIODS
            profile["chargingProfileKind"] = "Absolute"
            if n % 2:
                profile |= {"validFrom": wire_time(now - 600),
                            "validTo": wire_time(now + 20 * 3600)}
        schedule: dict = {
            "chargingRateUnit": "W" if in_watts else "A", "startSchedule": wire_time(start),
            "chargingSchedulePeriod": [{"startPeriod": i * step, "limit": limit(i)}
                                       for i in range(MAX_PERIODS)]}
        if duration is not None:
            schedule["duration"] = duration
        profile["chargingSchedule"] = schedule
        mix.append((connector, profile))
    return mix


def summary(name: str, figures: list[float], extra: str = "") -> str:
    p99 = percentile(figures, 0.99)
    return (f"{name} over {len(figures)} calls{extra}: median {median(figures):.3f} ms, p99 "
            f"{p99:.3f} ms, max {max(figures):.3f} ms; target p99 <= {TARGET_MS:.0f} ms; ratio "
            f"{p99 / TARGET_MS:.3f} of target")


def by_connector(figures: list[float]) -> str:
    """Median / p99 of each connector's calls (they were asked 0, 1, 2 in turn)."""
    parts = []
    for connector in range(3):
        mine = figures[connector::3]
        parts.append(f"connector {connector} {median(mine):.2f} / "
                     f"{percentile(mine, 0.99):.2f} ms")
    return "      median / p99 by connector: " + ", ".join(parts)


def core_alone(calls: int) -> tuple[list[float], list[int]]:
    now = time.time()
    settings = CoreSettings(site_limit=SITE_LIMIT, time_zone=ZONE)
    profiles = [profile_of(d, connector, None, now) for connector, d in profile_mix(now)]
    station = ChargingStation(2, settings, profiles=profiles)
    figures, segments = [], []
    for n in range(calls):
        evse = n % 3
        began = time.perf_counter()
        found = station.composite_schedule(evse, math.floor(time.time()), DAY)
        figures.append((time.perf_counter() - began) * 1000)
        segments.append(len(found))
    return figures, segments


async def through_the_agent(calls: int) -> tuple[list[float], list[float], list[int],
                                                  list[float]]:
    turnaround: list[float] = []
    arrived: dict[str, float] = {}

    def on_frame(direction: str, text: str) -> None:
        frame = json.loads(text)
        if direction == "in" and frame[0] == 2 and frame[2] == "GetCompositeSchedule":
            arrived[frame[1]] = time.perf_counter()
        elif direction == "out" and frame[0] == 3 and frame[1] in arrived:
            turnaround.append((time.perf_counter() - arrived.pop(frame[1])) * 1000)

    round_trips, periods = [], []
    async with DevCsms() as csms:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config({
                "charge_point": {"id": "BENCH-CP"},
                "csms": {"url": csms.url, "ocpp_version": "1.6"},
                "station": {"connectors": 2, "data_dir": tmp, "site_limit": SITE_LIMIT,
                            "time_zone": ZONE, "control_socket": str(Path(tmp) / "c.sock")},
                "logging": {"level": "WARNING"},
            })
            agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
            task = asyncio.create_task(agent.run())
            await csms.wait_for_call("StatusNotification", timeout=20,
                                     predicate=lambda p: p["connectorId"] == 2)
            for connector, profile in profile_mix(time.time()):
                answer = await csms.call("BENCH-CP", "SetChargingProfile", {
                    "connectorId": connector, "csChargingProfiles": profile})
                if answer["status"] != "Accepted":
                    raise RuntimeError(f"profile {profile['chargingProfileId']} {answer}")
            for n in range(calls):
                request = {"connectorId": n % 3, "duration": DAY,
                           "chargingRateUnit": "A" if n % 2 else "W"}
                began = time.perf_counter()
                answer = await csms.call("BENCH-CP", "GetCompositeSchedule", request)
                round_trips.append((time.perf_counter() - began) * 1000)
                periods.append(len(answer["chargingSchedule"]["chargingSchedulePeriod"]))
            # The same call with nothing installed: what the link and the dev CSMS cost alone.
            await csms.call("BENCH-CP", "ClearChargingProfile", {})
            empty = []
            for n in range(calls):
                began = time.perf_counter()
                await csms.call("BENCH-CP", "GetCompositeSchedule",
                                {"connectorId": n % 3, "duration": DAY})
                empty.append((time.perf_counter() - began) * 1000)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return round_trips, turnaround[:calls], periods, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    print(f"composite schedule for {DAY // 3600} h, {MAX_PROFILES} profiles x {MAX_PERIODS} "
          f"periods on 2 EVSEs (connectors 0, 1, 2 in turn)")
    figures, segments = core_alone(args.calls)
    print(summary("  (a) core composite_schedule", figures,
                  f", {min(segments)}..{max(segments)} segments"))
    print(by_connector(figures))
    round_trips, turnaround, periods, empty = asyncio.run(through_the_agent(args.calls))
    print(summary("  (b) GetCompositeSchedule round trip, dev CSMS <-> agent", round_trips,
                  f", {min(periods)}..{max(periods)} periods"))
    print(by_connector(round_trips))
    print(summary("      of which the agent (request in to answer out)", turnaround))
    print(summary("      for comparison, the round trip with no profile (1 period)", empty))


if __name__ == "__main__":
    main()
