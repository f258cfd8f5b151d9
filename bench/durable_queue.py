"""The durable queue: enqueue cost, replay speed after an outage, memory with a deep queue.

Durability: SQLite in WAL mode with synchronous=FULL, so every enqueue is fsynced to the WAL
before it returns and survives a power cut (NORMAL would survive only a process crash).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import VERSIONS, agent_command, beside, env, median, percentile
from _records import prefill

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.records import TRANSACTION_EVENT
from cpagent.store import NewRecord, Store

RECORD = {"kind": "updated", "ref": "bench", "seq": 1, "evse_id": 1, "connector_id": 1,
          "timestamp": 1.0, "trigger": "meter_value_periodic", "charging_state": "charging",
          "started_at": 0.0, "meter_start_wh": 0.0, "samples": [
              {"timestamp": 1.0, "context": "periodic", "reading": {"energy_wh": 12345.6}}]}


def enqueue_figures(count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "q.db")
        times = []
        for _ in range(count):
            began = time.perf_counter()
            store.enqueue(NewRecord(TRANSACTION_EVENT, "1.6", RECORD, "bench", time.time(), True,
                                    "b"))
            times.append((time.perf_counter() - began) * 1000)
        store.close()
    return median(times), percentile(times, 0.99)


async def replay_figures(count: int, version: str = "1.6") -> tuple[float, float]:
    """Against a CSMS in its own process that answers everything at once (bench/_fast_csms)."""
    peer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_fast_csms.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(peer.stdout.readline())  # type: ignore[union-attr]
        sent: list[float] = []
        answered: list[float] = []

        def on_frame(direction: str, text: str) -> None:
            if direction == "out" and ('"MeterValues"' in text[:60]
                                       or '"TransactionEvent"' in text[:60]):
                sent.append(time.perf_counter())
            elif direction == "in":
                answered.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp:
            prefill(Path(tmp) / "cpagent.db", count, version)
            config = parse_config({"charge_point": {"id": "BENCH-Q"},
                                   "csms": {"url": f"ws://127.0.0.1:{port}/ocpp",
                                            "ocpp_version": version},
                                   "station": {"data_dir": tmp,
                                               "control_socket": f"{tmp}/c.sock"}})
            agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
            task = asyncio.create_task(agent.run())
            while not sent:
                await asyncio.sleep(0.001)
            while agent.outbox.pending:
                await asyncio.sleep(0.005)
            rate = count / (answered[-1] - sent[0])
            trips = []
            for _ in range(500):
                began = time.perf_counter()
                await agent.session.call("Heartbeat", {})
                trips.append(time.perf_counter() - began)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        peer.communicate("")
    return rate, 1 / median(trips)


def rss_with_queue(count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prefill(folder / "cpagent.db", count, "1.6")
        config = folder / "cpagent.toml"
        config.write_text(f'[charge_point]\nid = "BENCH-M"\n[csms]\nurl = "ws://127.0.0.1:9/x"\n'
                          f'[station]\ndata_dir = "{folder}"\ncontrol_socket = "{folder}/c.sock"\n'
                          f'max_data_mb = 4096\n[logging]\nlevel = "ERROR"\n')
        began = time.monotonic()
        process = subprocess.Popen(agent_command(config), env=env())
        try:
            while not (folder / "c.sock").exists():
                time.sleep(0.01)
            ready = time.monotonic() - began
            time.sleep(3)
            with open(f"/proc/{process.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        finally:
            process.terminate()
            process.wait()
    return rss / 1024, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--enqueues", type=int, default=2000)
    parser.add_argument("--replay", type=int, default=10_000)
    parser.add_argument("--depths", default="0,100000,1000000")
    args = parser.parse_args()
    mid, p99 = enqueue_figures(args.enqueues)
    print(f"durable enqueue (WAL, synchronous=FULL: fsynced per commit, survives power loss): "
          f"median {mid:.2f} ms, p99 {p99:.2f} ms over {args.enqueues}")
    rates = {}
    for version in VERSIONS:
        rate, bound = asyncio.run(replay_figures(args.replay, version))
        rates[version] = rate
        print(f"OCPP {version}: replay of {args.replay} queued readings: {rate:.0f} msg/s; "
              f"round-trip bound (1 / median Heartbeat round trip) {bound:.0f} msg/s; ratio "
              f"{rate / bound:.2f} (target >= 0.8)")
    print(beside("queue replay rate", rates, "msg/s", lower_is_better=False))
    for depth in (int(d) for d in args.depths.split(",")):
        rss, ready = rss_with_queue(depth)
        print(f"resident memory with {depth:>9,} queued messages: {rss:.1f} MiB "
              f"(start-up to control socket {ready:.2f} s)")


if __name__ == "__main__":
    sys.exit(main())
