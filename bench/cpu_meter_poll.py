"""CPU use of a running agent that polls a Modbus meter every second during a session.

A real `cpagent run` process talks to a local CSMS (cpagent.devcsms) and reads an SDM630 served
over Modbus TCP on loopback by the meter simulator of the tests; pilot, contactor and card
reader are the mock drivers, so the session is played through the control socket (plug, then
a card). The CSMS and the simulator run in this (the bench) process, so their work is not
counted: the figure is the agent process's own user + system CPU time from /proc/PID/stat
over the measuring window, as a percentage of one core. Target: <= 2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, agent_command, env  # puts the project on the path

sys.path.insert(0, str(ROOT / "tests"))  # the simulator lives with the tests that use it

from modbus_sim import SimMeter, TcpSim

from cpagent.control import request
from cpagent.devcsms import DevCsms

TARGET_PERCENT = 2.0
IDENTITY = "BENCH-METER"
TAG = "BENCHTAG01"
POWER_W = 11_040.0  # 3 x 16 A at 230 V
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may contain spaces and parentheses: split after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / TICKS


def write_config(folder: Path, url: str, meter_port: int) -> Path:
    path = folder / "cpagent.toml"
    path.write_text(
        f'[charge_point]\nid = "{IDENTITY}"\n\n'
        f'[csms]\nurl = "{url}"\n\n'
        f'[station]\nconnectors = 1\ndata_dir = "{folder}"\n'
        f'control_socket = "{folder}/c.sock"\ntime_source = "system"\n\n'
        '[hardware.meter]\ndriver = "modbus"\nmodel = "sdm630"\ntransport = "tcp"\n'
        f'host = "127.0.0.1"\ntcp_port = {meter_port}\nunit = 1\ntimeout = 1.0\n\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return path


async def control(folder: Path, payload: dict) -> dict:
    return await asyncio.to_thread(request, folder / "c.sock", payload)


async def wait_for_socket(folder: Path, agent: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode}")
        with contextlib.suppress(OSError, ValueError):
            if (await control(folder, {"cmd": "status"})).get("ok"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the agent's control socket did not answer")
        await asyncio.sleep(0.1)


async def run_meter(meter: SimMeter) -> None:
    """The simulated car draws POWER_W: the meter's energy register grows accordingly."""
    meter.power_w = POWER_W
    meter.currents = (16.0, 16.0, 16.0)
    while True:
        await asyncio.sleep(0.5)
        meter.energy_wh = (meter.energy_wh or 0.0) + POWER_W * 0.5 / 3600


async def measure(seconds: float, sample_interval: int | None) -> dict:
    sim_meter = SimMeter("sdm630", energy_wh=1_234_500.0, power_w=0.0,
                         voltages=(230.1, 229.8, 231.4))
    async with DevCsms() as csms, TcpSim(sim_meter) as sim:
        folder = Path(tempfile.mkdtemp(prefix="cpagent-bench-cpu-"))
        config = write_config(folder, csms.url, sim.port)
        log = (folder / "agent.log").open("wb")
        agent = subprocess.Popen(agent_command(config), env=env(), cwd=ROOT,
                                 stdout=log, stderr=subprocess.STDOUT)
        grow = asyncio.create_task(run_meter(sim_meter))
        failed = True
        try:
            await csms.wait_connected(IDENTITY, timeout=30)
            await wait_for_socket(folder, agent)
            if sample_interval is not None:
                answer = await csms.call(IDENTITY, "ChangeConfiguration", {
                    "key": "MeterValueSampleInterval", "value": str(sample_interval)})
                assert answer.get("status") == "Accepted", answer
            # A card is taken only once the CSMS has accepted the boot: wait for the status
            # report that follows it, then plug in and wait for Preparing before the card.
            await csms.wait_for_call("StatusNotification", identity=IDENTITY, timeout=15,
                                     predicate=lambda p: p.get("connectorId") == 1)
            mark = csms.mark()
            await control(folder, {"cmd": "sim", "action": "plug"})
            await csms.wait_for_call("StatusNotification", identity=IDENTITY, timeout=15,
                                     after=mark,
                                     predicate=lambda p: p.get("status") == "Preparing")
            await control(folder, {"cmd": "sim", "action": "swipe", "value": TAG})
            await csms.wait_for_call("StartTransaction", identity=IDENTITY, timeout=15)
            await csms.wait_for_call("StatusNotification", identity=IDENTITY, timeout=15,
                                     predicate=lambda p: p.get("status") == "Charging")
            await asyncio.sleep(2.0)  # let start-up work (imports, first writes) settle

            values_before = len(csms.calls("MeterValues", IDENTITY))
            requests_before = sim.requests
            cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
            await asyncio.sleep(seconds)
            cpu_after, wall_after = cpu_seconds(agent.pid), time.monotonic()
            requests = sim.requests - requests_before
            meter_values = len(csms.calls("MeterValues", IDENTITY)) - values_before
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode} while measured")
            status = await control(folder, {"cmd": "status"})
            tx = status["connectors"][0]["transaction"]

            await control(folder, {"cmd": "sim", "action": "swipe", "value": TAG})
            await csms.wait_for_call("StopTransaction", identity=IDENTITY, timeout=15)
            failed = False
        finally:
            grow.cancel()
            agent.terminate()
            try:
                await asyncio.to_thread(agent.wait, 15)
            except subprocess.TimeoutExpired:
                agent.kill()
                await asyncio.to_thread(agent.wait)
            log.close()
            if failed or agent.returncode not in (0, -15):
                print(f"agent exit code {agent.returncode}; the end of its log "
                      f"({folder / 'agent.log'}):", file=sys.stderr)
                print((folder / "agent.log").read_text()[-3000:], file=sys.stderr)
    wall = wall_after - wall_before
    cpu = cpu_after - cpu_before
    return {"wall": wall, "cpu": cpu, "percent": 100 * cpu / wall, "requests": requests,
            "meter_values": meter_values, "in_session": tx is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window (60)")
    parser.add_argument("--sample-interval", type=int, default=None,
                        help="set MeterValueSampleInterval (s) through ChangeConfiguration "
                             "first; default: the agent's own default")
    args = parser.parse_args()
    r = asyncio.run(measure(args.seconds, args.sample_interval))
    print(f"agent CPU while polling a Modbus TCP SDM630 each second in a session: "
          f"{r['cpu']:.2f} s CPU over {r['wall']:.1f} s = {r['percent']:.2f} % of one core; "
          f"target <= {TARGET_PERCENT:g} %; ratio {r['percent'] / TARGET_PERCENT:.2f} of "
          f"target ({r['requests']} Modbus requests, {r['requests'] / r['wall']:.2f}/s "
          f"= 2 per reading, "
          f"{r['meter_values']} MeterValues sent, session "
          f"{'running' if r['in_session'] else 'NOT running'})")


if __name__ == "__main__":
    main()
