"""One full meter read per model over a simulated RS-485 line at 9600 baud.

The bound is what the line itself costs: every byte of the requests and responses at 11 bits
per character (Modbus RTU: start, 8 data, parity or second stop, stop), plus the 3.5-character
silence that ends each frame. A pty moves bytes instantly whatever baud rate is set, so the
simulated meter holds each answer back by exactly that line time; the wall time of a read is
then the line time plus what the driver, pymodbus, the pty and the event loop add.
Target: wall <= 1.5 x the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from _common import ROOT, median  # puts the project on the path

sys.path.insert(0, str(ROOT / "tests"))  # the simulator lives with the tests that use it

from modbus_sim import BITS_PER_CHAR, RtuSim, SimMeter, exchange_time

from hal.meter_maps import METER_MAPS
from hal.meters import build_meter

BAUD = 9600
TARGET_RATIO = 1.5
# One model per register layout: the SDM230 shares the SDM120's map.
MODELS = ("sdm630", "sdm120", "abb_b23", "em340")


async def measure(model: str, reads: int) -> tuple[list[float], list[tuple[int, int]]]:
    phases = METER_MAPS[model].phases
    sim_meter = SimMeter(model, energy_wh=1_234_500.0, power_w=7_345.6,
                         currents=(10.12, 9.87, 11.05)[:phases],
                         voltages=(230.1, 229.8, 231.4)[:phases])
    async with RtuSim(sim_meter) as sim:
        sim.pace_baudrate = BAUD
        meter = build_meter(1, sim.options(baudrate=BAUD, timeout=1.0, retries=0))
        await meter.start(lambda _event: None)  # opens the port, reads the serial number
        walls: list[float] = []
        exchanges: list[tuple[int, int]] = []
        for _ in range(reads):
            sim.exchanges.clear()
            began = time.perf_counter()
            await meter.read()
            walls.append(time.perf_counter() - began)
            exchanges = list(sim.exchanges)
        await meter.stop()
    return walls, exchanges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=5, help="reads per model (median shown)")
    args = parser.parse_args()
    print(f"meter read over simulated Modbus RTU at {BAUD} baud, {BITS_PER_CHAR} bits/char; "
          "the pty does not enforce the baud rate, so the simulator paces each answer at the "
          "line rate (request + response bytes and two 3.5-char gaps)")
    print(f"{'model':<9} {'requests':>8} {'bytes':>6} {'bound ms':>9} {'wall ms':>8} "
          f"{'ratio':>6}  target <= {TARGET_RATIO}")
    worst = 0.0
    for model in MODELS:
        walls, exchanges = asyncio.run(measure(model, args.reads))
        sent = sum(request + response for request, response in exchanges)
        bound = sum(exchange_time(request, response, BAUD) for request, response in exchanges)
        wall = median(walls)
        ratio = wall / bound
        worst = max(worst, ratio)
        print(f"{model:<9} {len(exchanges):>8} {sent:>6} {bound * 1000:>9.1f} "
              f"{wall * 1000:>8.1f} {ratio:>6.2f}  {'ok' if ratio <= TARGET_RATIO else 'OVER'}")
    print(f"worst ratio {worst:.2f} of the line bound (target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
