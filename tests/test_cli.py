"""The `cpagent` command as an installer and an outside test harness use it: real processes."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from harness import ROOT, acpagent, cpagent, write_config

from cpagent import __version__
from cpagent.cli import EX_CONFIG
from cpagent.devcsms import DevCsms


def test_version_and_help_on_every_command():
    assert cpagent("--version").stdout.strip() == f"cpagent {__version__}"
    for command in ([], ["run"], ["demo"], ["status"], ["sim"], ["queue"], ["hw-test"],
                    ["config"],
                    ["config", "check"]):
        result = cpagent(*command, "--help")
        assert result.returncode == 0, command
        assert "usage: cpagent" in result.stdout


def test_config_check_names_every_bad_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[charge_point]\nid = "CP 1"\n[csms]\nurl = "http://x"\n'
                    '[station]\nconnectors = 0\n')
    result = cpagent("config", "check", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("csms.url: must start with ws:// or wss://" in line for line in lines)
    assert any("station.connectors" in line and "(got 0)" in line for line in lines)
    assert any(line.startswith(f"{path}: charge_point.id") for line in lines)
    good = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    result = cpagent("config", "check", str(good))
    assert result.returncode == 0 and "OK" in result.stdout


def test_run_with_a_broken_config_exits_78_for_systemd(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[csms\n")
    result = cpagent("run", "--config", str(path))
    assert result.returncode == EX_CONFIG
    assert "TOML syntax error at line 1" in result.stderr


def test_status_without_an_agent_says_so(tmp_path):
    result = cpagent("status", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 1
    assert "no agent is listening" in result.stderr


async def test_an_outside_harness_plays_a_session_through_sim_and_status(tmp_path):
    async with DevCsms() as csms:
        config = write_config(tmp_path, csms.url)
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cpagent", "run", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                     p["connectorId"] == 2, timeout=20)
            via = ["--config", str(config)]
            assert (await acpagent("sim", "plug", "--connector", "2", *via))[0] == 0
            assert (await acpagent("sim", "swipe", "04A2B3C4", *via))[0] == 0
            start = await csms.wait_for_call("StartTransaction")
            assert start.payload["connectorId"] == 2
            await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                     p["status"] == "Charging")
            code, out, _ = await acpagent("status", "--json", *via)
            assert code == 0
            status = json.loads(out)
            assert status["connection"]["state"] == "connected"
            assert status["connection"]["ocpp_version"] == "1.6"
            second = status["connectors"][1]
            assert second["status"] == "Charging"
            assert second["contactor_closed"] is True
            assert second["transaction"]["id_tag"] == "04A2B3C4"
            assert second["transaction"]["transaction_id"] == 1
            code, out, _ = await acpagent("status", *via)
            assert "Charging" in out and "CLI-CP" in out
            code, _, err = await acpagent("sim", "fault", "NoSuchFault", *via)
            assert code == 1 and "unknown fault" in err
            assert (await acpagent("sim", "network", "down", *via))[0] == 0
            await asyncio.sleep(0.3)
            code, out, _ = await acpagent("status", "--json", *via)
            assert json.loads(out)["connection"]["state"] != "connected"
            assert (await acpagent("sim", "network", "up", *via))[0] == 0
            await csms.wait_connected("CLI-CP")
            assert (await acpagent("sim", "unplug", "--connector", "2", *via))[0] == 0
            stop = await csms.wait_for_call("StopTransaction", timeout=15)
            assert stop.payload["reason"] == "EVDisconnected"
        finally:
            agent.terminate()
            await agent.wait()
        assert agent.returncode == 0  # SIGTERM is a clean stop


@pytest.mark.timeout(90)
def test_demo_runs_a_session_and_exits_0_within_a_minute():
    result = cpagent("demo", "--fast", timeout=60)
    assert result.returncode == 0, result.stderr
    for action in ("BootNotification", "Authorize", "StartTransaction", "MeterValues",
                   "StopTransaction"):
        assert action in result.stdout
    assert "Session done: transaction 1" in result.stdout


@pytest.mark.timeout(90)
def test_demo_in_2_0_1_plays_the_same_session_in_transaction_events():
    result = cpagent("demo", "--fast", "--ocpp", "2.0.1", timeout=60)
    assert result.returncode == 0, result.stderr
    for text in ("BootNotification", "SetVariables", "Authorize", '"eventType":"Started"',
                 '"triggerReason":"MeterValuePeriodic"', '"eventType":"Ended"'):
        assert text in result.stdout
    assert "StartTransaction" not in result.stdout
    done = [line for line in result.stdout.splitlines() if "Session done" in line]
    assert done and "stopped by Local" in done[0] and " 0.00 kWh" not in done[0]
