"""Test helpers: configs, agents that run in the test's loop, waiting for a boot."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cpagent.agent import Agent
from cpagent.clock import Clock
from cpagent.config import Config, parse_config
from cpagent.devcsms import DevCsms
from cpagent.ocpp16.vocabulary import STATUS
from hal.mock import MockStation

ROOT = Path(__file__).resolve().parent.parent


def cpagent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpagent", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


async def acpagent(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cpagent", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


def write_config(folder: Path, url: str, extra: str = "", ocpp_version: str = "1.6") -> Path:
    """A configuration file for a `cpagent run` process; `extra` goes after [station]."""
    path = folder / "cpagent.toml"
    path.write_text(
        f'[charge_point]\nid = "CLI-CP"\n\n[csms]\nurl = "{url}"\nreconnect_initial = 0.2\n'
        f'ocpp_version = "{ocpp_version}"\n\n'
        f'[station]\nconnectors = 2\ndata_dir = "{folder}"\n'
        f'control_socket = "/tmp/cpagent-cli-{os.getpid()}.sock"\ntime_source = "system"\n'
        + extra
    )
    return path


def make_config(data_dir: Path, url: str, **sections: dict[str, Any]) -> Config:
    """A valid config for tests: `make_config(d, url, station={"connectors": 2})` merges."""
    data: dict[str, Any] = {
        "charge_point": {"id": "CP-TEST"},
        "csms": {"url": url, "call_timeout": 5, "reconnect_initial": 0.1, "reconnect_max": 1},
        # a short socket path: AF_UNIX paths are limited to 107 bytes
        "station": {"connectors": 1, "data_dir": os.fspath(data_dir),
                    "control_socket": f"/tmp/cpagent-test-{os.getpid()}-{id(data_dir)}.sock"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


class RunningAgent:
    """An agent running in the test's event loop, restartable on the same data directory."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock
        self.agent: Agent | None = None
        self.task: asyncio.Task | None = None

    @property
    def mock(self) -> MockStation:
        assert self.agent is not None and self.agent.mock is not None
        return self.agent.mock

    async def start(self) -> RunningAgent:
        self.agent = Agent(self.config, clock=self.clock or Clock("system"))
        self.task = asyncio.create_task(self.agent.run())
        ready = asyncio.ensure_future(self.agent.ready.wait())
        await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            self.task.result()  # the agent failed to start: show why
        return self

    async def stop(self) -> None:
        """Stop the way a crash does: no goodbye, whatever is in flight stays in flight."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def restart(self) -> RunningAgent:
        await self.stop()
        return await self.start()

    async def status(self, connector_id: int = 1) -> str:
        """The connector's status in 1.6 words (the detailed ones)."""
        assert self.agent is not None
        status = await self.agent.ask(lambda core, now: core.status(connector_id))
        return STATUS[status[0]]

    async def go_offline(self) -> None:
        """Cut the link (as `cpagent sim network down`) and wait until the core knows."""
        assert self.agent is not None
        self.agent.transport.set_network(False)
        while self.agent.core.online:
            await asyncio.sleep(0.005)
        await self.settle()

    async def settle(self) -> None:
        """Wait until the core has handled everything submitted so far, including what the
        devices reported while it carried out its own actions (a pilot answering a PWM), and
        the devices have done what they were told."""
        agent = self.agent
        assert agent is not None
        while True:
            # Judged inside the worker: nothing else was waiting when this input came up.
            while not await agent.ask(lambda core, now: agent._inputs.empty()):
                pass
            await agent.lanes.idle()
            await asyncio.sleep(0)
            if agent._inputs.empty():
                return


async def booted(csms: DevCsms, identity: str = "CP-TEST", connectors: int = 1) -> None:
    """Wait until the agent has booted and reported every connector's status."""
    await csms.wait_for_call("BootNotification", identity=identity)
    await csms.wait_for_call("StatusNotification", identity=identity,
                             predicate=lambda p: p["connectorId"] == connectors)


def self_signed(tmp_path: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)
