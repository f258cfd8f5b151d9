"""Nothing lost, whatever the CSMS answers or the operator does — in 1.6 and in 2.0.1: a
refused status comes back until the CSMS has the true one, transaction messages the CSMS
refused for good wait as dead letters until the operator sends them again, and a clean stop
ends running sessions with their real time and reading."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
import time

from dialects import DIALECTS, Dialect
from harness import ROOT, RunningAgent, acpagent, make_config, write_config

import cpagent.ocpp16.adapter
import cpagent.ocpp201.adapter
from cpagent.clock import Clock, parse_time
from cpagent.devcsms import DevCsms

CLI = "CLI-CP"


def transaction_action(version: str) -> str:
    return "StartTransaction" if version == "1.6" else "TransactionEvent"


async def answer_to(peer: DevCsms, call) -> str:
    """How the call was answered: "result" or "error"."""
    for _ in range(200):
        kinds = [r.kind for r in peer.records if r.unique_id == call.unique_id
                 and r.kind != "call"]
        if kinds:
            return kinds[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{call.action} {call.unique_id} was never answered")


async def test_a_refused_status_is_logged_and_the_current_one_sent_again(
        peer, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cpagent.ocpp16.adapter, "STATUS_RETRY", 0.3)
    monkeypatch.setattr(cpagent.ocpp201.adapter, "STATUS_RETRY", 0.3)
    say: Dialect = DIALECTS[peer.version](peer)
    charger = RunningAgent(make_config(tmp_path, peer.url, csms={"ocpp_version": peer.version}),
                           Clock("system"))
    await charger.start()
    try:
        await say.wait_status("Available")
        # Some CSMSs allow one call in flight per station in either direction and answer
        # anything else with a CallError.
        peer.fail_calls["StatusNotification"] = 1
        mark = peer.mark()
        with caplog.at_level(logging.WARNING):
            charger.mock.plug(1)
            refused = await say.wait_status("Preparing", after=mark)
            assert await answer_to(peer, refused) == "error"
            again = await say.wait_status("Preparing", after=peer.records.index(refused) + 1,
                                          timeout=3)
        assert again.unique_id != refused.unique_id
        assert any("refused StatusNotification" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        # What went again is the status as it is now, and the CSMS accepted it.
        assert await answer_to(peer, again) == "result"
    finally:
        await charger.stop()


async def _run_agent(config_path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cpagent", "run", "--config", str(config_path), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def _status(config_path) -> dict:
    code, out, err = await acpagent("status", "--json", "--config", str(config_path))
    assert code == 0, err
    return json.loads(out)


async def test_refused_transaction_messages_wait_as_dead_letters_for_the_operator(
        peer, tmp_path):
    say: Dialect = DIALECTS[peer.version](peer, identity=CLI)
    action = transaction_action(peer.version)
    config = write_config(tmp_path, peer.url, ocpp_version=peer.version)
    agent = await _run_agent(config)
    via = ("--config", str(config))
    try:
        await say.wait_status("Available", 2, timeout=20)
        await say.set_attempts(1)
        peer.fail_calls[action] = 1  # the first transaction message is refused, for good
        mark = peer.mark()
        assert (await acpagent("sim", "plug", *via))[0] == 0
        assert (await acpagent("sim", "swipe", "DEADBEEF", *via))[0] == 0
        refused = await peer.wait_for_call(action, after=mark)
        await say.wait_status("Charging", after=mark)
        assert (await acpagent("sim", "swipe", "DEADBEEF", *via))[0] == 0
        assert (await acpagent("sim", "unplug", *via))[0] == 0
        await say.wait_status("Available", after=mark)
        await asyncio.sleep(0.5)
        # Nothing of the session went out after its start was refused ...
        assert [r for r in peer.calls() if r.action in ("StartTransaction", "StopTransaction",
                                                        "TransactionEvent", "MeterValues")
                and peer.records.index(r) > peer.records.index(refused)] == []
        status = await _status(config)
        letters = status["queue"]["dead_letters"]
        # ... it all waits: the start and what followed it (1.6: the stop; 2.0.1: every event).
        assert isinstance(letters, int) and letters >= 2
        assert status["queue"]["durable"] == 0
        code, out, _ = await acpagent("queue", "dead-letters", "--json", *via)
        listed = json.loads(out)["dead_letters"]
        assert code == 0 and len(listed) == letters
        assert "refused 1 times" in listed[0]["reason"]
        code, out, _ = await acpagent("queue", "dead-letters", *via)
        assert f"#{listed[0]['seq']}" in out
        # The operator sends them again, in order, and the CSMS takes them.
        mark = peer.mark()
        code, out, _ = await acpagent("queue", "retry", *via)
        assert code == 0 and f"{letters} dead letter(s) put back" in out
        end = await say.wait_end(after=mark)
        resent = [r for r in peer.calls() if peer.records.index(r) >= mark
                  and r.action in ("StartTransaction", "StopTransaction", "TransactionEvent")]
        assert resent[0].unique_id == refused.unique_id  # the CSMS may know it by its id
        if peer.version == "2.0.1":
            assert [r.payload["seqNo"] for r in resent] == list(range(len(resent)))
            assert say.transaction_of(end) == say.transaction_id(refused)
        else:
            assert say.transaction_of(end) == say.transaction_id(resent[0])
        assert all(r.kind == "result" for r in peer.records[mark:]
                   if r.direction == "csms->cp" and r.action == end.action)
        status = await _status(config)
        assert status["queue"]["dead_letters"] == 0 and status["queue"]["durable"] == 0
    finally:
        agent.terminate()
        await agent.wait()


async def test_sigterm_mid_session_ends_it_with_reboot_at_the_real_time(peer, tmp_path):
    say: Dialect = DIALECTS[peer.version](peer, identity=CLI)
    config = write_config(tmp_path, peer.url, ocpp_version=peer.version)
    agent = await _run_agent(config)
    via = ("--config", str(config))
    try:
        await say.wait_status("Available", 2, timeout=20)
        mark = peer.mark()
        assert (await acpagent("sim", "plug", *via))[0] == 0
        assert (await acpagent("sim", "swipe", "04A2B3C4", *via))[0] == 0
        start = await say.wait_start(after=mark)
        await say.wait_charging(after=mark)
        await asyncio.sleep(1)
        reading = (await _status(config))["connectors"][0]["energy_wh"]
        mark = peer.mark()
        sent_at = time.time()
        agent.send_signal(signal.SIGTERM)
        end = await say.wait_end(after=mark)
        assert await asyncio.wait_for(agent.wait(), 15) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
    assert say.end_reason(end) == "Reboot"
    # Stamped now, not at the next boot.
    assert sent_at - 1 <= parse_time(end.payload["timestamp"]) <= sent_at + 5
    # The reading at the stop, not the one at the last sample (1.6 meterStop is whole Wh).
    assert say.meter_stop(end) >= math.floor(reading) and reading >= say.meter_start(start)
    await asyncio.sleep(0.1)
    assert peer.close_codes[CLI][-1] == 1000  # a normal close, not 1011 or a dropped link
