"""One OCPP connection's conversation: what every version shares, written once.

The reader feeds frames to the RPC endpoint; the boot gate sends BootNotification until the
CSMS accepts it (waiting the interval it gives while Pending or Rejected, and letting through
only the calls the version allows meanwhile); then the station's current state is reported,
the durable queue is replayed and the heartbeat kept. The adapter supplies the words: what the
BootNotification says, which calls are allowed while pending, how a queued record reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from cpagent.host import BootAnswer, Message, ProtocolAdapter, Registration, RetryPolicy
from cpagent.outbox import Outbox
from cpagent.records import OutboxEntry
from cpagent.rpc import (
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    RpcEndpoint,
    RpcError,
)

log = logging.getLogger(__name__)

BOOT_RETRY_DEFAULT = 30.0  # when a Pending/Rejected answer gives no interval of its own


@dataclass
class BootGate:
    """The registration of this run of the agent, per OCPP version: BootNotification is sent
    once per start, not once per connection."""

    status: dict[str, Registration | None] = field(default_factory=dict)

    def of(self, version: str) -> Registration | None:
        return self.status.get(version)


@dataclass
class SessionServices:
    outbox: Outbox
    gate: BootGate
    online: Callable[[bool], Awaitable[None]]  # tell the core
    take_time: Callable[[Any], Awaitable[None]]  # a currentTime from the CSMS
    render: Callable[[OutboxEntry], Awaitable[list[Message]]]  # stamps already corrected
    note: Callable[[str | None], None]  # what `status` shows as the last problem
    call_timeout: float = 30.0
    on_frame: Callable[[str, str], None] | None = None
    on_invalid: Callable[[str], None] | None = None  # a frame refused as not valid OCPP
    boot_retry: float = BOOT_RETRY_DEFAULT


class OcppSession:
    def __init__(self, adapter: ProtocolAdapter, connection: Any,
                 services: SessionServices) -> None:
        self.adapter = adapter
        self.connection = connection
        self.services = services
        self.rpc = RpcEndpoint(adapter.version, connection.send, self._on_call,
                               call_timeout=services.call_timeout, on_frame=services.on_frame,
                               on_invalid=services.on_invalid)
        self.online = False
        self.heartbeat_changed = asyncio.Event()

    @property
    def registration(self) -> Registration | None:
        return self.services.gate.of(self.adapter.version)

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="ocpp-reader")
        talker = asyncio.create_task(self._converse(), name="ocpp-talker")
        try:
            done, _ = await asyncio.wait({reader, talker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if isinstance(exc, ConnectionLost | websockets.ConnectionClosed):
                    log.info("connection closed: %s", exc)
                elif isinstance(exc, CallTimeout):
                    self.services.note(f"the CSMS stopped answering ({exc})")
                    log.warning("ending the OCPP session: %s", exc)
                elif exc is not None:
                    log.error("OCPP session failed", exc_info=exc)
        finally:
            self.rpc.close()
            for task in (reader, talker):
                task.cancel()
            await asyncio.gather(reader, talker, return_exceptions=True)
            was_online, self.online = self.online, False
            self.services.outbox.drop_volatile("connection closed")
            if was_online:
                await self.services.online(False)
                await self.adapter.offline()

    async def _read(self) -> None:
        async for text in self.connection:
            await self.rpc.receive(text)

    async def call(self, action: str, payload: dict) -> dict:
        """A call outside the queue (while pending: answers the CSMS asked for)."""
        return await self.rpc.call(action, payload)

    # ---- calls from the CSMS -----------------------------------------------------------------

    async def _on_call(self, action: str, payload: dict) -> dict:
        handler = self.adapter.handlers.get(action)
        if handler is None:
            raise RpcError("NotSupported", f"{action} is not supported by this charging station")
        refusal = self.adapter.gate(action, self.registration)
        if refusal is not None:
            raise refusal
        return await handler(payload)

    # ---- our side ----------------------------------------------------------------------------

    async def _converse(self) -> None:
        await self._boot()
        self.online = True
        await self.services.online(True)
        await self.adapter.online()
        adapter = self.adapter
        sender = asyncio.create_task(
            self.services.outbox.run(self.rpc, self.services.render, adapter.delivered,
                                     adapter.final_refusal, adapter.retry_policy()),
            name="outbox")
        heart = asyncio.create_task(self._heartbeat(), name="heartbeat")
        try:
            await asyncio.gather(sender, heart)
        finally:
            sender.cancel()
            heart.cancel()
            await asyncio.gather(sender, heart, return_exceptions=True)

    async def _boot(self) -> None:
        """BootNotification once per start of the agent, until the CSMS accepts it."""
        version = self.adapter.version
        gate = self.services.gate
        if gate.of(version) is Registration.ACCEPTED:
            self.services.note(None)
            return
        while True:
            try:
                answer = await self.rpc.call("BootNotification", self.adapter.boot_request())
            except (CallErrorReceived, CallTimeout) as exc:
                why = ("unanswered" if isinstance(exc, CallTimeout) else f"refused ({exc})")
                self.services.note(f"BootNotification {why}; trying again in "
                                   f"{self.services.boot_retry:.0f} s")
                log.warning("BootNotification %s; retrying in %.0f s", why,
                            self.services.boot_retry)
                await asyncio.sleep(self.services.boot_retry)
                continue
            verdict: BootAnswer = self.adapter.read_boot_answer(answer)
            await self.services.take_time(verdict.current_time)
            gate.status[version] = verdict.status
            if verdict.status is Registration.ACCEPTED:
                self.services.note(None)
                await self.adapter.boot_accepted(verdict)
                return
            wait = verdict.interval if verdict.interval > 0 else self.services.boot_retry
            status = verdict.status.value if verdict.status else "an unreadable status"
            self.services.note(f"BootNotification answered {status}; trying again in "
                               f"{wait:.0f} s")
            log.warning("BootNotification %s; trying again in %.0f s", status, wait)
            await asyncio.sleep(wait)

    async def _heartbeat(self) -> None:
        while True:
            interval = self.adapter.heartbeat_interval()
            self.heartbeat_changed.clear()
            if interval <= 0:
                await self.heartbeat_changed.wait()
                continue
            # Any exchange proves the link, so the heartbeat waits for a quiet interval.
            quiet_for = time.monotonic() - self.rpc.last_exchange
            if quiet_for < interval:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.heartbeat_changed.wait(), interval - quiet_for)
                continue
            try:
                answer = await self.services.outbox.put("Heartbeat", {}, urgent=True)
            except CallErrorReceived as exc:
                # An answer, if not the one we wanted, still proves the link.
                log.warning("the CSMS answered Heartbeat with %s", exc.code)
                continue
            await self.services.take_time(answer.get("currentTime"))


__all__ = ["BOOT_RETRY_DEFAULT", "BootGate", "OcppSession", "RetryPolicy", "SessionServices"]
