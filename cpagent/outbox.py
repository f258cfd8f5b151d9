"""What the agent has to say to the CSMS, in the order it must arrive.

Three kinds of message share one sender:
- durable ones (transaction messages) live in the store's outbox table and go in sequence
  order, across reconnects and restarts, with the unique id they were given when queued;
- ordered volatile ones (StatusNotification, MeterValues outside a transaction) wait for the
  durable messages queued before them, so a CSMS never sees "Charging" before the start;
- urgent ones (Authorize, Heartbeat, DataTransfer) go next, ahead of a replay backlog, because
  a driver is standing at the charger.
Volatile messages are not history: when the link drops they are dropped too, and the adapter
reports the current state afresh on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cpagent.rpc import CallErrorReceived, CallTimeout, ConnectionLost, RpcEndpoint
from cpagent.store import AsyncStore, OutboxEntry

log = logging.getLogger(__name__)

READ_AHEAD = 64


@dataclass
class _Volatile:
    action: str
    payload: dict
    watermark: int  # the last durable seq queued before this message
    future: asyncio.Future = field(repr=False)


@dataclass
class RetryPolicy:
    attempts: Callable[[], int]
    interval: Callable[[], float]


class Outbox:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._urgent: deque[_Volatile] = deque()
        self._ordered: deque[_Volatile] = deque()
        self._wakeup = asyncio.Event()
        self.last_durable_seq = 0
        self.durable_depth = 0
        self._done_upto = 0
        self.sent_upto = 0  # every durable entry up to this seq is finished with
        self._deleting: asyncio.Future | None = None

    async def open(self) -> None:
        self.durable_depth = await self._store.run(self._store.store.outbox_count)
        self.last_durable_seq = await self._store.run(self._store.store.outbox_last_seq)

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
        """About how many durable messages wait (exact unless the disk guard raced a read)."""
        return max(self.durable_depth, 1) if self.pending else 0

    @property
    def pending(self) -> bool:
        """Durable messages are waiting to be sent."""
        return self.sent_upto < self.last_durable_seq

    @property
    def volatile_depth(self) -> int:
        return len(self._urgent) + len(self._ordered)

    async def run(
        self,
        rpc: RpcEndpoint,
        prepare: Callable[[OutboxEntry], Awaitable[dict | None]],
        delivered: Callable[[OutboxEntry, dict], Awaitable[None]],
        policy: RetryPolicy,
    ) -> None:
        """Send until the connection fails. `prepare` turns a stored entry into the payload
        to send now (None: cannot be sent, drop it); `delivered` takes the CSMS's answer."""
        # Entries are read ahead in small batches and deleted in batches behind the cursor:
        # one store round trip per batch, not two per message. A crash before a delete
        # commits only resends delivered messages with their own ids, which a CSMS
        # recognises; it never loses one.
        ahead: deque[OutboxEntry] = deque()
        cursor = self.sent_upto  # delivered on an earlier link, maybe not yet deleted
        retry_at: dict[int, float] = {}  # seq -> when a failed entry may go again
        try:
            while True:
                if self._urgent:
                    await self._send_volatile(rpc, self._urgent.popleft())
                    continue
                if not ahead and cursor < self.last_durable_seq:
                    # The sequence numbers decide what is left, not a count: the disk guard
                    # may delete queued readings at any time.
                    queued_upto = self.last_durable_seq
                    ahead.extend(await self._store.run(self._store.store.outbox_after,
                                                       cursor, READ_AHEAD))
                    if not ahead:
                        cursor = self.sent_upto = max(cursor, queued_upto)
                        self.durable_depth = 0
                head = ahead[0] if ahead else None
                if self._ordered and (head is None or self._ordered[0].watermark < head.seq):
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
                    again_in = await self._send_durable(rpc, head, prepare, delivered, policy)
                    if again_in is None:
                        ahead.popleft()
                        retry_at.pop(head.seq, None)
                        cursor = self.sent_upto = head.seq
                        self.durable_depth = max(0, self.durable_depth - 1)
                        if not ahead or cursor - self._done_upto >= READ_AHEAD:
                            self._forget_upto(cursor)
                    else:
                        retry_at[head.seq] = time.monotonic() + again_in
                        ahead.clear()  # read again: its attempt count changed
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            if cursor:
                self._forget_upto(cursor)

    def _forget_upto(self, seq: int) -> None:
        self._done_upto = max(self._done_upto, seq)
        if self._deleting is None or self._deleting.done():
            self._deleting = asyncio.ensure_future(self._delete_behind())

    async def _delete_behind(self) -> None:
        deleted = 0
        while deleted < self._done_upto:
            deleted = self._done_upto
            await self._store.run(self._store.store.outbox_done_upto, deleted)

    async def flush(self) -> None:
        """Wait until delivered entries are deleted from the store."""
        while self._deleting is not None and not self._deleting.done():
            await asyncio.shield(self._deleting)

    async def _send_volatile(self, rpc: RpcEndpoint, message: _Volatile) -> None:
        try:
            result = await rpc.call(message.action, message.payload)
        except ConnectionLost as exc:
            message.future.set_exception(exc)
            raise
        except Exception as exc:
            if not message.future.done():
                message.future.set_exception(exc)
            return
        if not message.future.done():
            message.future.set_result(result)

    async def _send_durable(
        self,
        rpc: RpcEndpoint,
        entry: OutboxEntry,
        prepare: Callable[[OutboxEntry], Awaitable[dict | None]],
        delivered: Callable[[OutboxEntry, dict], Awaitable[None]],
        policy: RetryPolicy,
    ) -> float | None:
        """None when the entry is finished with (delivered, or given up as the specification
        allows); else the seconds to wait before it is tried again."""
        payload = await prepare(entry)
        if payload is None:
            return None
        try:
            result = await rpc.call(entry.action, payload, unique_id=entry.unique_id,
                                    validated=True)
        except CallTimeout:
            # No answer is not a refusal: the link is presumed dead. The entry stays, keeps
            # its id and its attempts, and goes again on the next connection.
            log.warning("no answer to %s %s: dropping the link to try again on a new one",
                        entry.action, entry.unique_id)
            raise
        except CallErrorReceived as exc:
            await self._store.run(self._store.store.outbox_attempted, entry.seq)
            attempts = entry.attempts + 1
            if attempts >= policy.attempts():
                # OCPP 1.6 4.10: after TransactionMessageAttempts the message is discarded.
                log.error("the CSMS refused %s %s %d times (%s): discarded", entry.action,
                          entry.unique_id, attempts, exc)
                return None
            wait = policy.interval() * attempts
            log.warning("the CSMS refused %s %s (%s); attempt %d of %d in %.0f s",
                        entry.action, entry.unique_id, exc, attempts + 1, policy.attempts(),
                        wait)
            return wait
        await delivered(entry, result)
        return None
