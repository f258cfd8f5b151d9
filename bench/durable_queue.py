"""The durable queue: enqueue cost, replay speed after an outage, memory with a deep queue.

Durability: SQLite in WAL mode with synchronous=FULL, so every enqueue is fsynced to the WAL
before it returns and survives a power cut (NORMAL would survive only a process crash).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import agent_command, env, median, percentile

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import parse_config
from cpagent.store import QueuedMessage, Store

METER_VALUES = {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-23T10:00:00.000Z",
                "sampledValue": [{"value": "12345.6", "context": "Sample.Periodic",
                                  "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}


def enqueue_figures(count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "q.db")
        times = []
        for _ in range(count):
            began = time.perf_counter()
            store.enqueue(QueuedMessage("MeterValues", METER_VALUES, 1, time.time(), True, "b"))
            times.append((time.perf_counter() - began) * 1000)
        store.close()
    return median(times), percentile(times, 0.99)


def prefill(db_path: Path, count: int, csms_id: int | None = 7) -> None:
    """Queue `count` meter values of one transaction, as a long outage would leave them."""
    Store(db_path).close()  # schema
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO transactions (local_id, connector_id, id_tag, started_at,"
               " meter_start_wh, csms_id, stopped_at, meter_stop_wh, stop_reason)"
               " VALUES (1, 1, 'BENCH', ?, 0, ?, ?, 1, 'Local')",
               (time.time(), csms_id, time.time()))
    payload = json.dumps(METER_VALUES, separators=(",", ":"))
    now = time.time()
    rows = ((str(uuid.uuid4()), "MeterValues", payload, 1, now, 1, "old") for _ in range(count))
    db.executemany("INSERT INTO outbox (unique_id, action, payload, tx_local_id, created_at,"
                   " clock_trusted, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()


async def replay_figures(count: int) -> tuple[float, float]:
    """Against a CSMS in its own process that answers everything at once (bench/_fast_csms)."""
    peer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_fast_csms.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(peer.stdout.readline())  # type: ignore[union-attr]
        sent: list[float] = []
        answered: list[float] = []

        def on_frame(direction: str, text: str) -> None:
            if direction == "out" and '"MeterValues"' in text[:60]:
                sent.append(time.perf_counter())
            elif direction == "in":
                answered.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp:
            prefill(Path(tmp) / "cpagent.db", count)
            config = parse_config({"charge_point": {"id": "BENCH-Q"},
                                   "csms": {"url": f"ws://127.0.0.1:{port}/ocpp"},
                                   "station": {"data_dir": tmp,
                                               "control_socket": f"{tmp}/c.sock"}})
            agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
            task = asyncio.create_task(agent.run())
            while not sent:
                await asyncio.sleep(0.001)
            while agent.outbox.pending:
                await asyncio.sleep(0.005)
            rate = count / (answered[-1] - sent[0])
            rpc = agent.adapter.rpc
            assert rpc is not None
            trips = []
            for _ in range(500):
                began = time.perf_counter()
                await rpc.call("Heartbeat", {})
                trips.append(time.perf_counter() - began)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        peer.communicate("")
    return rate, 1 / median(trips)


def rss_with_queue(count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prefill(folder / "cpagent.db", count)
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
    rate, bound = asyncio.run(replay_figures(args.replay))
    print(f"replay of {args.replay} queued messages: {rate:.0f} msg/s; round-trip bound "
          f"(1 / median Heartbeat round trip) {bound:.0f} msg/s; ratio {rate / bound:.2f} "
          f"(target >= 0.8)")
    for depth in (int(d) for d in args.depths.split(",")):
        rss, ready = rss_with_queue(depth)
        print(f"resident memory with {depth:>9,} queued messages: {rss:.1f} MiB "
              f"(start-up to control socket {ready:.2f} s)")


if __name__ == "__main__":
    sys.exit(main())
