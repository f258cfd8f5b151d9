"""OCPP 1.6 Remote Trigger profile: TriggerMessage, and the cases ExtendedTriggerMessage shares.

The answer goes out first, the message asked for after it (1.6 §5.17). Once the CSMS accepted
the boot, what is asked for takes the adapter's usual paths (the queue, the status bookkeeping,
the core's readings); while it is Pending the queue is closed, and 1.6 §4.2 lets the charge
point send just what a TriggerMessage asks for, so those go on the link as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cpagent.core.model import ConnectorStatus
from cpagent.core.station import ChargingStation
from cpagent.host import AdapterHost, BootAnswer, Registration
from cpagent.rpc import CallErrorReceived, CallTimeout, ConnectionLost
from hal.interfaces import Fault

log = logging.getLogger(__name__)

TRIGGER_DELAY = 0.05  # the answer to the trigger goes out before the message it asked for
# When a Pending/Rejected answer gives no interval: the session's wait at boot (its
# BOOT_RETRY_DEFAULT; adapters do not import the session).
BOOT_RETRY = 30.0

StatusPayload = Callable[[int, ConnectorStatus, Fault | None, str, float], dict]


class RemoteTrigger:
    """Serves TriggerMessage for one adapter; the adapter lends the pieces that are its own:
    its registration as it stands, its BootNotification words, its status bookkeeping."""

    def __init__(self, host: AdapterHost, *,
                 registration: Callable[[], Registration | None],
                 boot_request: Callable[[], dict],
                 read_boot_answer: Callable[[dict], BootAnswer],
                 boot_accepted: Callable[[BootAnswer], Awaitable[None]],
                 resend_status: Callable[[int], Awaitable[None]],
                 status_payload: StatusPayload) -> None:
        self.host = host
        self.connectors = len(host.info.evses)
        self._registration = registration
        self._boot_request = boot_request
        self._read_boot_answer = read_boot_answer
        self._boot_accepted = boot_accepted
        self._resend_status = resend_status  # forced: sent even when unchanged
        self._status_payload = status_payload
        self._tasks: set[asyncio.Task] = set()
        # A triggered BootNotification answered other than Accepted: this charge point is
        # not accepted any more, whatever the session's gate says, until a later one is.
        self._rebooting = False
        self._answered: Registration | None = None
        self._boot_task: asyncio.Task | None = None
        self._boot_now = asyncio.Event()

    def registration(self, session_view: Registration | None) -> Registration | None:
        """The registration the CSMS's calls are judged by."""
        return self._answered if self._rebooting else session_view

    # ---- the calls ------------------------------------------------------------------------

    async def trigger_message(self, payload: dict) -> dict:
        wanted = payload["requestedMessage"]
        connector_id = payload.get("connectorId")
        if connector_id is not None and not 0 <= connector_id <= self.connectors:
            return {"status": "Rejected"}  # no such connector on this charge point
        accepted = self._registration() is Registration.ACCEPTED
        match wanted:
            case "BootNotification":
                self._boot()
            case "DiagnosticsStatusNotification":
                self._later(wanted, lambda: self._send(
                    wanted, {"status": self._diagnostics_status()}))
            case "FirmwareStatusNotification":
                self._later(wanted, lambda: self._send(
                    wanted, {"status": self._firmware_status()}))
            case "Heartbeat":
                self._later(wanted, self.heartbeat)
            case "MeterValues":
                if connector_id == 0:
                    # Connector 0 is the main meter (1.6 §7.31); this station has none, only
                    # the meters of its connectors.
                    return {"status": "Rejected"}
                if not accepted:
                    # The core's readings reach the CSMS through the queue, which opens once
                    # the boot is accepted.
                    return {"status": "Rejected"}
                wanted_ids = [connector_id] if connector_id else list(self.host.info.evses)
                readable = await self.host.ask(lambda core, now: _readable(core, wanted_ids))
                if not readable:
                    return {"status": "Rejected"}  # no meter reading to send
                self._later(wanted, lambda: self._meter_values(readable))
            case "StatusNotification":
                ids = [connector_id] if connector_id is not None else \
                    list(range(self.connectors + 1))
                self._later(wanted, lambda: self._statuses(ids))
            case _:
                return {"status": "NotImplemented"}
        return {"status": "Accepted"}

    def _later(self, what: str, send: Callable[[], Awaitable[Any]]) -> None:
        async def after_the_answer() -> None:
            await asyncio.sleep(TRIGGER_DELAY)
            try:
                await send()
            except Exception as exc:
                # Asked for once: not queued again (a CSMS that wants it asks again).
                log.info("the triggered %s was not delivered: %s", what, exc)

        self._spawn(after_the_answer())

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _send(self, action: str, payload: dict, *, urgent: bool = False) -> Awaitable[dict]:
        if self._registration() is Registration.ACCEPTED:
            return self.host.queue.send(action, payload, urgent=urgent)
        return self.host.queue.call_now(action, payload)

    # ---- the messages ---------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Also ExtendedTriggerMessage's; the answer's time is taken as the regular
        heartbeat's is."""
        answer = await self._send("Heartbeat", {}, urgent=True)
        await self.host.take_time(answer.get("currentTime"))

    def _diagnostics_status(self) -> str:
        # Uploads (GetDiagnostics) are not built yet, so none is running: Idle. The upload's
        # state is to be read here once they are.
        return "Idle"

    def _firmware_status(self) -> str:
        # 1.6 §7.26: Idle while no firmware update is in progress, and this build runs none
        # (UpdateFirmware comes with the Firmware Management profile).
        return "Idle"

    async def _meter_values(self, connector_ids: list[int]) -> None:
        def trigger(core: ChargingStation, now: float) -> None:
            # Where a transaction runs the reading is one of its messages (MeterValues with
            # its transactionId, queued durably like its other readings); elsewhere a plain
            # MeterValues. Context Trigger either way.
            running = {t.evse_id for t in core.transactions()}
            core.trigger_meter_values([c for c in connector_ids if c in running], now, True)
            core.trigger_meter_values([c for c in connector_ids if c not in running], now)

        self.host.submit(trigger)

    async def _statuses(self, connector_ids: list[int]) -> None:
        for connector_id in connector_ids:
            if self._registration() is Registration.ACCEPTED:
                await self._resend_status(connector_id)
                continue
            status, fault, info = await self.host.ask(
                lambda core, now, c=connector_id: core.status(c))
            await self.host.queue.call_now("StatusNotification", self._status_payload(
                connector_id, status, fault, info, self.host.clock.now()))

    # ---- BootNotification -----------------------------------------------------------------

    def _boot(self) -> None:
        if self._boot_task is not None and not self._boot_task.done():
            self._boot_now.set()  # one asked for already waits, or is on its way: now
        elif self._registration() is Registration.ACCEPTED or self._rebooting:
            self._boot_task = self._spawn(self._boot_until_accepted())
        else:
            # Pending at the session's boot: the session's boot gate sends BootNotification
            # at once on a new connection and honours its answer; the CSMS gets its answer
            # to the trigger first.
            self._later("BootNotification", self._reconnect)

    async def _reconnect(self) -> None:
        self.host.link.reconnect("the CSMS asked for a BootNotification")

    async def _boot_until_accepted(self) -> None:
        """A BootNotification now, and again as the answers say, as at boot: its interval
        and time are taken when accepted; Pending or Rejected take effect on the CSMS's
        calls, and the charge point boots again after the interval it gives."""
        await asyncio.sleep(TRIGGER_DELAY)
        while True:
            self._boot_now.clear()
            try:
                answer = await self.host.queue.call_now("BootNotification", self._boot_request())
            except (CallErrorReceived, CallTimeout, ConnectionLost) as exc:
                if not self._rebooting:
                    log.info("the triggered BootNotification got no answer (%s); the "
                             "registration stands", exc)
                    return
                wait = BOOT_RETRY
                log.warning("BootNotification not answered (%s); trying again in %.0f s",
                            exc, wait)
            else:
                verdict = self._read_boot_answer(answer)
                await self.host.take_time(verdict.current_time)
                if verdict.status is Registration.ACCEPTED:
                    self._rebooting, self._answered = False, None
                    self.host.note(None)
                    await self._boot_accepted(verdict)
                    return
                self._rebooting, self._answered = True, verdict.status
                wait = verdict.interval if verdict.interval > 0 else BOOT_RETRY
                said = verdict.status.value if verdict.status else "an unreadable status"
                self.host.note(f"the triggered BootNotification was answered {said}; "
                               f"trying again in {wait:.0f} s")
                log.warning("the triggered BootNotification was answered %s; trying again "
                            "in %.0f s", said, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._boot_now.wait(), wait)


def _readable(core: ChargingStation, connector_ids: list[int]) -> list[int]:
    """The connectors whose meter has a reading fresh enough to send."""
    return [c for c in connector_ids if core.metering.fresh(core.evse(c))]
