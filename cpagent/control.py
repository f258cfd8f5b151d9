"""The local control socket: JSON lines over a Unix socket.

`cpagent status` and `cpagent sim` talk to a running agent through it, and so can any test
harness of an operator's. A request is one JSON object on one line; so is the answer:
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Protocol

from hal.interfaces import Fault
from hal.mock import MockStation

log = logging.getLogger(__name__)

SIM_ACTIONS = ("plug", "unplug", "swipe", "suspend", "resume", "fault", "clear-fault",
               "diode-fail", "network")
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    pass


class _Network(Protocol):
    def set_network(self, up: bool) -> None: ...


class ControlTarget(Protocol):
    """What the control socket needs of the agent."""

    mock: MockStation | None
    transport: _Network

    def snapshot(self) -> dict[str, Any]: ...
    async def requeue_dead_letters(self) -> int: ...
    async def dead_letter_list(self) -> list[dict[str, Any]]: ...


async def handle_request(agent: ControlTarget, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise ControlError("a request is a JSON object")
    command = request.get("cmd")
    if command == "status":
        return agent.snapshot()
    if command == "sim":
        return _simulate(agent, request)
    if command == "queue":
        action = request.get("action")
        if action == "retry":
            return {"requeued": await agent.requeue_dead_letters()}
        if action == "dead-letters":
            return {"dead_letters": await agent.dead_letter_list()}
        raise ControlError(f"unknown queue action {action!r} (allowed: retry, dead-letters)")
    raise ControlError(f"unknown command {command!r} (allowed: status, sim, queue)")


def _simulate(agent: ControlTarget, request: dict) -> dict[str, Any]:
    mock = agent.mock
    if mock is None:
        raise ControlError("sim commands need the mock hardware (hardware drivers = \"mock\")")
    action = request.get("action")
    connector = request.get("connector")
    value = request.get("value")
    if connector is not None and not isinstance(connector, int):
        raise ControlError("connector must be a number")
    target = connector if connector is not None else 1
    try:
        match action:
            case "plug":
                mock.plug(target)
            case "unplug":
                mock.unplug(target)
            case "suspend":
                mock.suspend(target)
            case "resume":
                mock.resume(target)
            case "diode-fail":
                mock.diode_fail(target)
            case "swipe":
                # The length an identifier may have is the OCPP version's to say (20 in 1.6,
                # 36 in 2.0.1); the agent checks it against the version of the link.
                if not isinstance(value, str) or not value.strip() or len(value) > 255:
                    raise ControlError("swipe needs a card id")
                mock.swipe(value, connector)
            case "fault":
                mock.fault(Fault.parse(str(value or "")), target)
            case "clear-fault":
                mock.clear_fault(target)
            case "network":
                if value not in ("up", "down"):
                    raise ControlError("network takes up or down")
                agent.transport.set_network(value == "up")
            case _:
                raise ControlError(f"unknown sim action {action!r} (allowed: "
                                   f"{', '.join(SIM_ACTIONS)})")
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    return {"done": action}


class ControlServer:
    def __init__(self, agent: ControlTarget, path: Path) -> None:
        self.agent = agent
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left behind by a previous run
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=MAX_REQUEST)
        # bandit B103: 0660 reaches root and the service's group only, whom `cpagent status`
        # serves (the unit's UMask and StateDirectoryMode keep others out of the directory);
        # sim commands exist only with the mock hardware.
        os.chmod(self.path, 0o660)  # nosec B103

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = {"ok": True,
                              **await handle_request(self.agent, json.loads(line))}
                except (ControlError, ValueError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("control client dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def request(path: Path, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One blocking request, for the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
