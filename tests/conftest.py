"""Shared fixtures: a real CSMS on loopback and agents on the mock hardware."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms


@pytest.fixture(params=["1.6", "2.0.1"])
async def peer(request) -> AsyncIterator[DevCsms]:
    """A dev CSMS speaking one OCPP version (`peer.version`); the test runs for each."""
    from dialects import DIALECTS

    async with DevCsms(subprotocols=(DIALECTS[request.param].subprotocol,)) as server:
        server.version = request.param
        yield server


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """gpiozero's mock pins, for the real GPIO drivers."""
    previous = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    yield factory
    factory.reset()
    Device.pin_factory = previous


@pytest.fixture
async def csms() -> AsyncIterator[DevCsms]:
    async with DevCsms() as server:
        yield server


@pytest.fixture
async def start_agent(tmp_path: Path, csms: DevCsms) -> AsyncIterator[Callable[..., Any]]:
    """`await start_agent(station={...}, csms={...})` -> a RunningAgent connected to `csms`."""
    running: list[RunningAgent] = []

    async def start(*, clock: Clock | None = None, url: str | None = None,
                    data_dir: Path | None = None, **sections: dict[str, Any]) -> RunningAgent:
        config = make_config(data_dir or tmp_path / f"agent{len(running)}", url or csms.url,
                             **sections)
        agent = RunningAgent(config, clock)
        running.append(agent)
        return await agent.start()

    yield start
    for agent in running:
        await agent.stop()

