"""What the agent has to say to the CSMS, in the order it must arrive.

Three kinds of message share one sender:
- durable records (transaction events, and what an adapter wants kept) live in the store's
  outbox table and go in sequence order, across reconnects and restarts; the adapter of the
  link turns each into its messages at send time, with ids derived from the record's own;
- ordered volatile messages (StatusNotification, readings outside a transaction) wait for the
  durable records queued before them, so a CSMS never sees "Charging" before the start;
  they stop waiting when the record ahead is being retried after a refusal, so a status does
  not freeze behind one StartTransaction;
- urgent ones (Authorize, Heartbeat) go next, ahead of a replay backlog, because a driver is
  standing at the charger.
Volatile messages are not history: when the link drops they are dropped too, and the adapter
reports the current state afresh on the next connection.

Each delivered record is deleted from the store before the next but one is sent (the delete
runs while the next one travels), so a crash resends at most the last confirmed record and
the one in flight, each with its own id, never a backlog the CSMS already confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cpagent.host import Message, RetryPolicy, Undeliverable
from cpagent.logs import RateLimited
from cpagent.records import TRANSACTION_EVENT, OutboxEntry
from cpagent.rpc import CallErrorReceived, CallTimeout, ConnectionLost, RpcEndpoint, RpcError

if TYPE_CHECKING:
    from cpagent.store import AsyncStore

log = logging.getLogger(__name__)
quiet = RateLimited(log)

READ_AHEAD = 64
_ID_SPACE = uuid.UUID("6b1f6f5e-8a77-4e0e-a7f0-3c1ad1f2a9b1")


@dataclass
class _Volatile:
    action: str
    payload: dict
    watermark: int  # the last durable seq queued before this message
    future: asyncio.Future = field(repr=False)


Render = Callable[[OutboxEntry], Awaitable[list[Message]]]
Delivered = Callable[[OutboxEntry, Message, dict], Awaitable[None]]
FinalRefusal = Callable[[OutboxEntry, Message], str | None]


def message_id(entry: OutboxEntry, message: Message) -> str:
    """The record's own id for its first message; a stable derived one for any other."""
    if not message.suffix:
        return entry.unique_id
    return str(uuid.uuid5(_ID_SPACE, f"{entry.unique_id}/{message.suffix}"))


class Outbox:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._urgent: deque[_Volatile] = deque()
        self._ordered: deque[_Volatile] = deque()
        self._wakeup = asyncio.Event()
        self.last_durable_seq = 0
        self.durable_depth = 0
        self.sent_upto = 0  # every durable entry up to this seq is finished with
        self._deleting: asyncio.Future | None = None
        self.dead_letters = 0

    async def open(self) -> None:
        self.durable_depth = await self._store.outbox_count()
        self.last_durable_seq = await self._store.outbox_last_seq()
        self.dead_letters = await self._store.dead_letter_count()

    def durable_added(self, entry: OutboxEntry) -> None:
        self.last_durable_seq = max(self.last_durable_seq, entry.seq)
        self.durable_depth += 1
        self._wakeup.set()

    def put(self, action: str, payload: dict, *, urgent: bool) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        message = _Volatile(action, payload, self.last_durable_seq, future)
        (self._urgent if urgent else self._ordered).append(message)
        self._wakeup.set()
        return future

    def drop_volatile(self, why: str) -> None:
        for queue in (self._urgent, self._ordered):
            while queue:
                message = queue.popleft()
                if not message.future.done():
                    message.future.set_exception(ConnectionLost(why))

    @property
    def depth(self) -> int:
        """How many durable records wait (exact unless the disk guard raced a read)."""
        return max(self.durable_depth, 1) if self.pending else 0

    @property
    def pending(self) -> bool:
        """Durable records are waiting to be sent."""
        return self.sent_upto < self.last_durable_seq

    @property
    def volatile_depth(self) -> int:
        return len(self._urgent) + len(self._ordered)

    async def run(self, rpc: RpcEndpoint, render: Render, delivered: Delivered,
                  final_refusal: FinalRefusal, policy: RetryPolicy) -> None:
        """Send until the connection fails."""
        # Entries are read ahead in small batches: one store round trip per batch.
        ahead: deque[OutboxEntry] = deque()
        cursor = self.sent_upto
        retry_at: dict[int, float] = {}  # seq -> when a refused entry may go again
        while True:
            if self._urgent:
                await self._send_volatile(rpc, self._urgent.popleft())
                continue
            if not ahead and cursor < self.last_durable_seq:
                # The sequence numbers decide what is left, not a count: the disk guard
                # may delete queued readings at any time.
                queued_upto = self.last_durable_seq
                ahead.extend(await self._store.outbox_after(cursor, READ_AHEAD))
                if not ahead:
                    cursor = self.sent_upto = max(cursor, queued_upto)
                    self.durable_depth = 0
            head = ahead[0] if ahead else None
            waiting = head is not None and retry_at.get(head.seq, 0.0) > time.monotonic()
            if self._ordered and (head is None or waiting
                                  or self._ordered[0].watermark < head.seq):
                await self._send_volatile(rpc, self._ordered.popleft())
                continue
            if head is not None:
                pause = retry_at.get(head.seq, 0.0) - time.monotonic()
                if pause > 0:
                    # Waiting to retry must not hold up a driver's Authorize.
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), pause)
                    continue
                again_in = await self._send_durable(rpc, head, render, delivered,
                                                    final_refusal, policy)
                if again_in is None:
                    ahead.popleft()
                    retry_at.pop(head.seq, None)
                    cursor = self.sent_upto = head.seq
                    self.durable_depth = max(0, self.durable_depth - 1)
                    await self._forget(head.seq)
                else:
                    retry_at[head.seq] = time.monotonic() + again_in
                    ahead.clear()  # read again: its attempt count changed
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _forget(self, seq: int) -> None:
        # One delete in flight: the previous one is durable before this one starts, so at
        # most the entry just finished can be sent again after a crash. The delete is
        # scheduled before the first await, so a cancelled sender (the link closing) cannot
        # lose it; flush() waits for the chain.
        previous = self._deleting

        async def delete() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await self._store.outbox_done_upto(seq)

        self._deleting = asyncio.ensure_future(delete())
        if previous is not None:
            await asyncio.shield(previous)

    async def flush(self) -> None:
        """Wait until delivered entries are deleted from the store."""
        if self._deleting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._deleting)

    async def _send_volatile(self, rpc: RpcEndpoint, message: _Volatile) -> None:
        try:
            result = await rpc.call(message.action, message.payload)
        except (ConnectionLost, CallTimeout) as exc:
            if not message.future.done():
                message.future.set_exception(exc)
            raise
        except Exception as exc:
            if not message.future.done():
                message.future.set_exception(exc)
            return
        if not message.future.done():
            message.future.set_result(result)

    async def _send_durable(self, rpc: RpcEndpoint, entry: OutboxEntry, render: Render,
                            delivered: Delivered, final_refusal: FinalRefusal,
                            policy: RetryPolicy) -> float | None:
        """None when the entry is finished with (delivered, kept as a dead letter, or given
        up as the specification allows); else the seconds to wait before trying again."""
        try:
            messages = await render(entry)
        except Undeliverable as exc:
            await self._dead_letter(entry, str(exc))
            return None
        for message in messages:
            try:
                result = await rpc.call(message.action, message.payload,
                                        unique_id=message_id(entry, message))
            except CallTimeout:
                # No answer is not a refusal: the link is presumed dead. The entry stays,
                # keeps its id and its attempts, and goes again on the next connection.
                log.warning("no answer to %s %s: dropping the link to try again on a new one",
                            message.action, entry.unique_id)
                raise
            except CallErrorReceived as exc:
                return await self._refused(entry, message, exc, final_refusal, policy)
            except RpcError as exc:
                # Our own message breaks the schema: a bug, never silently dropped.
                log.critical("%s for record %s does not fit the OCPP schema: %s %s",
                             message.action, entry.unique_id, exc, message.payload)
                await self._dead_letter(entry, f"{message.action} does not fit the schema: "
                                               f"{exc}")
                return None
            await delivered(entry, message, result)
        return None

    async def _refused(self, entry: OutboxEntry, message: Message, exc: CallErrorReceived,
                       final_refusal: FinalRefusal, policy: RetryPolicy) -> float | None:
        if entry.kind != TRANSACTION_EVENT and exc.code in ("NotImplemented", "NotSupported"):
            # A CSMS without the message (many 1.6 ones lack the security extension) will
            # never take it: retrying would only hold up the transaction records behind it.
            quiet.warning(f"unsupported-{message.action}", "the CSMS does not take %s (%s): "
                          "not sent again", message.action, exc.code)
            return None
        await self._store.outbox_attempted(entry.seq)
        attempts = entry.attempts + 1
        if attempts >= policy.attempts():
            reason = final_refusal(entry, message)
            if reason is None:
                log.error("the CSMS refused %s %s %d times (%s): given up", message.action,
                          entry.unique_id, attempts, exc)
                return None
            await self._dead_letter(entry, f"{message.action} refused {attempts} times "
                                           f"({exc.code}): {reason}")
            return None
        wait = policy.interval() * attempts
        log.warning("the CSMS refused %s %s (%s); attempt %d of %d in %.0f s", message.action,
                    entry.unique_id, exc, attempts + 1, policy.attempts(), wait)
        return wait

    async def _dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        log.error("keeping %s record %s of transaction %s as a dead letter: %s (deliver it "
                  "later with `cpagent queue retry`)", entry.kind, entry.unique_id,
                  entry.tx_ref, reason)
        await self._store.dead_letter(entry.seq, reason)
        self.dead_letters += 1

    def requeued(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            self.durable_added(entry)
        self.dead_letters = 0
