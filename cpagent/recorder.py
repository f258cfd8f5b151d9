"""Transaction events into the store, in order, and never lost to a full disk or a lock.

Every event is written in the order the core emitted it. A start that cannot be written is
refused at once (its session never powers the EVSE); every other event is kept in memory and
written again until it succeeds, so the true end of a session (its real time, reason and
meter value) reaches the CSMS once space returns, without a restart. On the first "disk full"
the reserve held beside the database is released, which leaves room for the ends of the
sessions running now; while space is short no start is taken and no intermediate reading is
kept, and the log, `cpagent status` and the CSMS are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cpagent.core.actions import TransactionEvent, TxEventKind
from cpagent.logs import RateLimited
from cpagent.records import TRANSACTION_EVENT, OutboxEntry, event_to_json
from cpagent.store import AsyncStore, NewRecord, StorageBusy, StorageFull

log = logging.getLogger(__name__)
quiet = RateLimited(log, every=60.0)

RETRY_INITIAL = 0.5
RETRY_MAX = 15.0
START_WAIT = 10.0  # a start waits this long for a slow (locked) database, then is refused


class StartRefused(Exception):
    """The start could not be recorded: its session must not begin."""


@dataclass
class _Pending:
    item: NewRecord
    event: TransactionEvent
    done: asyncio.Future = field(repr=False)
    in_flight: bool = False
    abandoned: bool = False


class Recorder:
    def __init__(self, store: AsyncStore, on_entry: Callable[[OutboxEntry], None],
                 on_health: Callable[[str | None], None]) -> None:
        self._store = store
        self._on_entry = on_entry
        self._on_health = on_health  # None: healthy; else the problem, in words
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.problem: str | None = None
        self.full = False
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def stop(self, wait: float = 5.0) -> int:
        """Give waiting events `wait` seconds to be written; returns how many were not."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while self._queue:
                    await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = [p for p in self._queue if not p.abandoned]
        for p in left:
            log.critical("transaction event %s #%d of %s could not be written before exit; "
                         "the session will be closed as PowerLoss at the next start",
                         p.event.kind, p.event.seq, p.event.ref)
        return len(left)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def backlog_for(self, ref: str) -> int:
        return sum(1 for p in self._queue if p.event.ref == ref and not p.abandoned)

    def record(self, event: TransactionEvent, protocol: str, created_at: float,
               clock_trusted: bool, boot_id: str) -> asyncio.Future:
        """Queue an event for writing; the future gives its queue entry once durable."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        if event.kind is TxEventKind.STARTED and self.full:
            done.set_exception(StartRefused(f"no session starts while {self.problem}"))
            return done
        item = NewRecord(TRANSACTION_EVENT, protocol, event_to_json(event), event.ref,
                         created_at, clock_trusted, boot_id)
        self._queue.append(_Pending(item, event, done))
        self._wakeup.set()
        return done

    async def start_recorded(self, future: asyncio.Future) -> OutboxEntry:
        """Wait for a start to be durable; StartRefused when it will not be in time."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), START_WAIT)
        except TimeoutError:
            pending = next((p for p in self._queue if p.done is future), None)
            if pending is not None and not pending.in_flight:
                pending.abandoned = True
                raise StartRefused(f"the database did not take the start within "
                                   f"{START_WAIT:.0f} s ({self.problem or 'busy'})") from None
            return await future  # being written right now: its outcome decides

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            if head.abandoned:
                self._queue.popleft()
                continue
            head.in_flight = True
            try:
                entry = await self._store.record_event(head.item)
            except StorageFull as exc:
                head.in_flight = False
                if await self._disk_full(head, exc):
                    continue
            except (StorageBusy, OSError) as exc:
                head.in_flight = False
                self._unhealthy(f"the database cannot be written ({exc})")
            except Exception as exc:  # a bug or a broken file: keep the data, say so
                head.in_flight = False
                self._unhealthy(f"writing a transaction event failed: {exc!r}")
                log.exception("writing %s failed", head.event)
            else:
                self._queue.popleft()
                self.written += 1
                delay = RETRY_INITIAL
                self._on_entry(entry)
                if not head.done.done():
                    head.done.set_result(entry)
                if self.problem is not None and not self._queue:
                    await self._recovered()
                continue
            if head.event.kind is TxEventKind.STARTED:
                # A start that is not on record must not power anything: refuse it now.
                self._queue.popleft()
                if not head.done.done():
                    head.done.set_exception(StartRefused(self.problem or "not recorded"))
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _disk_full(self, head: _Pending, exc: Exception) -> bool:
        """True when the write may be tried again at once (the reserve was released)."""
        first = not self.full
        self.full = True
        self._unhealthy("disk full: the database cannot grow")
        if first:
            log.critical("disk full while writing %s of transaction %s (%s)",
                         head.event.kind, head.event.ref, exc)
        if await self._store.release_reserve():
            log.critical("disk full: released the disk reserve so that running sessions can "
                         "still be closed; no new session starts until space is freed")
            return True
        return False

    def _unhealthy(self, problem: str) -> None:
        if problem != self.problem:
            self.problem = problem
            self._on_health(problem)
        quiet.error("recorder", "%s; %d transaction event(s) held in memory, retrying",
                    problem, len(self._queue))

    async def _recovered(self) -> None:
        if self.full and not await self._store.retake_reserve():
            return  # written, but space stays short: keep refusing starts
        log.warning("the database takes writes again (%s is over)", self.problem)
        self.full = False
        self.problem = None
        self._on_health(None)

    async def watch_space(self) -> None:
        """While space is short, try now and then to take the reserve back."""
        if self.full and not self._queue and await self._store.retake_reserve():
            await self._recovered()

