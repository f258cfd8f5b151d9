"""kill -9 at random moments under running sessions: the CSMS's ledger must equal the charger's.

A real `cpagent run` process is killed again and again while sessions start, charge and
report; after the last restart every transaction the charger recorded must have been started
and stopped exactly once at the CSMS (duplicates in effect removed the way a CSMS can: by
message id), with the meter readings the charger recorded, and each start before its stop.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from cpagent.control import request
from cpagent.core.model import StopReason
from cpagent.devcsms import DevCsms
from cpagent.ocpp16.vocabulary import stop_reason

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("CPAGENT_KILLS", "50"))


def config_text(folder: Path, url: str, sock: Path) -> str:
    return (
        f'[charge_point]\nid = "CRASH-CP"\n\n'
        f'[csms]\nurl = "{url}"\nreconnect_initial = 0.1\nreconnect_max = 1\n\n'
        f'[station]\ndata_dir = "{folder}"\ncontrol_socket = "{sock}"\ntime_source = "system"\n'
        '[hardware.meter]\ndriver = "mock"\nspeedup = 50\n\n[logging]\nlevel = "WARNING"\n'
    )


async def control(sock: Path, **payload) -> dict:
    return await asyncio.get_running_loop().run_in_executor(None, request, sock, payload)


async def start_agent(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cpagent", "run", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def wait_ready(sock: Path, process: asyncio.subprocess.Process) -> None:
    for _ in range(400):
        if process.returncode is not None:
            raise AssertionError("the agent died on its own")
        try:
            status = await control(sock, cmd="status")
            if status["connection"]["online"]:
                return
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.025)
    raise AssertionError("the agent did not come online")


@pytest.mark.timeout(600)
async def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("CPAGENT_SEED", "1")))
    sock = Path(f"/tmp/cpagent-crash-{os.getpid()}.sock")
    async with DevCsms() as csms:
        config = tmp_path / "cpagent.toml"
        config.write_text(config_text(tmp_path, csms.url, sock))
        for round_ in range(KILLS):
            agent = await start_agent(config)
            try:
                await wait_ready(sock, agent)
                if round_ == 0:
                    await csms.call("CRASH-CP", "ChangeConfiguration",
                                    {"key": "MeterValueSampleInterval", "value": "1"})
                await control(sock, cmd="sim", action="plug")
                await control(sock, cmd="sim", action="swipe", value=f"CARD{round_ % 7}")
                # Die anywhere: before the start is written, mid-send, while charging, while
                # a stop or meter values are in flight.
                await asyncio.sleep(rng.uniform(0.0, 1.2))
                if rng.random() < 0.3:
                    await control(sock, cmd="sim", action="unplug")
                    await asyncio.sleep(rng.uniform(0.0, 0.2))
            finally:
                agent.send_signal(signal.SIGKILL)
                await agent.wait()
        # One last life, long enough to close what the last kill left open and drain the queue.
        agent = await start_agent(config)
        try:
            await wait_ready(sock, agent)
            for _ in range(400):
                status = await control(sock, cmd="status")
                if status["queue"]["durable"] == 0:
                    break
                await asyncio.sleep(0.025)
            assert status["queue"]["durable"] == 0
        finally:
            agent.terminate()
            await agent.wait()

        # The charger's ledger: its transactions, and the 1.6 id the CSMS gave each.
        rows = sqlite3.connect(tmp_path / "cpagent.db").execute(
            "SELECT t.ref, json_extract(a.value, '$.transaction_id'), t.meter_start_wh,"
            " t.meter_stop_wh, t.stop_reason FROM transactions t LEFT JOIN adapter_state a"
            " ON a.protocol = '1.6' AND a.kind = 'tx' AND a.key = t.ref"
            " ORDER BY t.started_at").fetchall()
        charger = [(ref, tx_id, start, stop, stop_reason(StopReason(reason)) if reason
                    else None) for ref, tx_id, start, stop, reason in rows]
        # The CSMS side, with resent messages (same id) counted once.
        starts: dict[str, object] = {}
        stops: dict[str, object] = {}
        for record in csms.calls():
            if record.action == "StartTransaction":
                starts.setdefault(record.unique_id, record)
            elif record.action == "StopTransaction":
                stops.setdefault(record.unique_id, record)
        started = {csms.transaction_ids[uid]: r for uid, r in starts.items()}
        stopped: dict[int, list] = {}
        for record in stops.values():
            stopped.setdefault(record.payload["transactionId"], []).append(record)

    assert len(charger) >= KILLS // 3, "too few sessions got going to mean anything"
    assert sorted(started) == sorted(row[1] for row in charger)
    for local_id, csms_id, meter_start, meter_stop, reason in charger:
        assert csms_id is not None, f"transaction {local_id} never reached the CSMS"
        assert meter_stop is not None, f"transaction {local_id} was never stopped"
        assert len(stopped.get(csms_id, [])) == 1, f"transaction {csms_id} stopped " \
                                                   f"{len(stopped.get(csms_id, []))} times"
        stop = stopped[csms_id][0]
        assert started[csms_id].payload["meterStart"] == round(meter_start)
        assert stop.payload["meterStop"] == round(meter_stop)
        assert stop.payload["meterStop"] >= started[csms_id].payload["meterStart"]
        assert stop.payload["reason"] == reason
        assert csms.records.index(started[csms_id]) < csms.records.index(stop)
    assert any(row[4] == "PowerLoss" for row in charger)
