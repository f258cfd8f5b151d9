"""The agent: one asyncio shell around the charging core.

Hardware events, the passing of time and CSMS commands all reach the core through one input
queue, handled one at a time by one worker; the actions the core returns are carried out in
order before the next input is taken. So the core never sees two things at once, and a
transaction start is durable in the store before the contactor is asked to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cpagent import __version__
from cpagent.clock import Clock, format_time
from cpagent.config import Config
from cpagent.core.model import (
    Action,
    AuthCacheUpdated,
    AuthStatus,
    AvailabilityChanged,
    CoreSettings,
    IdTagInfo,
    ResetNow,
    SetContactor,
    SetCurrentLimit,
    StopReason,
    Transaction,
    TransactionStarted,
    UnlockConnector,
)
from cpagent.core.station import ChargingStation
from cpagent.ocpp16.adapter import Ocpp16Adapter
from cpagent.outbox import Outbox
from cpagent.store import AsyncStore, Store
from cpagent.transport import Transport, TransportSettings
from hal.factory import build_hardware
from hal.interfaces import (
    CardPresented,
    FaultCleared,
    FaultRaised,
    HalEvent,
    MeterError,
    PilotChanged,
    StationHardware,
)
from hal.mock import MockStation

log = logging.getLogger(__name__)

T = TypeVar("T")
CoreCall = Callable[[ChargingStation, float], T]

METER_POLL_INTERVAL = 1.0
SOFT_RESET_DRAIN = 10.0
CACHE_FLUSH_INTERVAL = 2.0
DISK_CHECK_INTERVAL = 30.0
DEVICE_TIMEOUT = 5.0  # a device command that hangs must not stall the core
CLOCK_CHECK_TICKS = 10
MAX_ID_TAG = 20  # OCPP 1.6 IdToken


def _powers(action: Action) -> bool:
    return (isinstance(action, SetCurrentLimit) and action.amps > 0) or (
        isinstance(action, SetContactor) and action.closed)


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        on_frame: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.boot_id = uuid.uuid4().hex
        self.clock = clock or Clock(config.station.time_source)
        self.on_frame = on_frame
        data_dir = Path(config.station.data_dir)
        self.store = AsyncStore(Store(data_dir / "cpagent.db"))
        store = self.store.store
        built = build_hardware(config.hardware, config.station.connectors, config.station.phases,
                               data_dir)
        self.hardware: StationHardware = built.hardware
        self.mock: MockStation | None = built.mock
        self.inputs = built.extra  # fault inputs: emergency stop, RCD
        self.outbox = Outbox(self.store)
        self.adapter = Ocpp16Adapter(self, store.settings())
        self.registration: str | None = None
        settings = CoreSettings(
            max_current=config.station.max_current,
            free_vend_id_tag=config.station.free_vend_id_tag if config.station.free_vend else None,
        )
        stored = {c: store.state(f"operative.{c}") for c in range(config.station.connectors + 1)}
        operative = {c: bool(value) for c, value in stored.items() if value is not None}
        cache = {
            tag: IdTagInfo(AuthStatus(status), parent, expiry)
            for tag, (status, parent, expiry) in store.auth_cache().items()
        }
        self.local_list_version, listed = store.local_list()
        self.core = ChargingStation(
            config.station.connectors,
            settings,
            next_transaction_id=store.next_transaction_id(),
            operative=operative,
            auth_cache=cache,
            local_list={tag: IdTagInfo(AuthStatus(status), parent, expiry)
                        for tag, (status, parent, expiry) in listed.items()},
        )
        self.adapter.apply_settings(self.core)
        if self.clock.trusted:
            self.core.clock_synchronised(self.clock.now())
        self.transport = Transport(
            TransportSettings(
                url=config.csms.endpoint_url,
                identity=config.charge_point.id,
                versions=[config.csms.ocpp_version],
                password=config.csms.password,
                ca_file=config.csms.ca_file,
                reconnect_initial=config.csms.reconnect_initial,
                reconnect_max=config.csms.reconnect_max,
                pong_timeout=config.csms.pong_timeout,
            ),
            self._session,
            self.adapter.ping_interval,
        )
        self._inputs: asyncio.Queue[tuple[CoreCall, asyncio.Future | None]] = asyncio.Queue()
        self._reset: asyncio.Future[str] | None = None
        self.started_at = time.monotonic()
        self.last_error: str | None = None
        self.meter_stale: set[int] = set()
        self._background: set[asyncio.Future] = set()
        self.untrusted_boots: dict[str, float] = {}
        self._cache_dirty: dict[str, tuple[str, str | None, float | None] | None] = {}
        self.ready = asyncio.Event()  # devices started, the core taking inputs

    # ---- feeding the core ---------------------------------------------------------------------

    async def ask(self, fn: CoreCall[T]) -> T:
        """Run `fn(core, now)` in turn with everything else the core is told; never call this
        from code that runs inside the worker (a core action's handler), it would wait forever."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inputs.put_nowait((fn, future))
        return await future

    def submit(self, fn: CoreCall[Any]) -> None:
        self._inputs.put_nowait((fn, None))

    async def _work(self) -> None:
        while True:
            fn, future = await self._inputs.get()
            try:
                result = fn(self.core, self.clock.now())
            except Exception as exc:
                log.exception("the charging core rejected an input")
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            await self._carry_out(self.core.drain())
            if future is not None and not future.done():
                future.set_result(result)

    async def _carry_out(self, actions: list[Action]) -> None:
        while actions:
            unrecorded: list[TransactionStarted] = []
            for action in actions:
                if _powers(action) and action.connector_id in {
                        a.transaction.connector_id for a in unrecorded}:
                    continue  # no energy for a session the store could not record
                if not await self._execute(action) and isinstance(action, TransactionStarted):
                    unrecorded.append(action)
            for failed in unrecorded:
                tx = failed.transaction
                self.last_error = f"session on connector {tx.connector_id} not started: " \
                                  "it could not be recorded"
                self.core.start_not_recorded(tx.local_id, self.clock.now())
            actions = self.core.drain()

    async def _execute(self, action: Action) -> bool:
        try:
            match action:
                case SetCurrentLimit(connector_id=c, amps=amps):
                    await asyncio.wait_for(self.hardware.pilots[c].set_current_limit(amps),
                                           DEVICE_TIMEOUT)
                case SetContactor(connector_id=c, closed=closed):
                    log.info("connector %d: contactor %s", c, "closed" if closed else "open")
                    await asyncio.wait_for(self.hardware.contactors[c].set_closed(closed),
                                           DEVICE_TIMEOUT)
                case UnlockConnector(connector_id=c):
                    await self.unlock_hardware(c)
                case AuthCacheUpdated(id_tag=tag, info=info):
                    # The cache only saves a round trip: it is written in batches, off the
                    # path from a card tap to the contactor.
                    self._cache_dirty[tag] = (None if info is None else
                                              (info.status.value, info.parent_id_tag, info.expiry))
                case AvailabilityChanged(connector_id=c, operative=operative):
                    await self.store.run(self.store.store.put_state, f"operative.{c}", operative)
                case ResetNow(hard=hard):
                    self._background.add(asyncio.ensure_future(self._finish_reset(hard)))
                case _:
                    await self.adapter.handle(action)
        except Exception:
            # A device or store failure must not take the agent down; it is logged and the
            # next input is handled.
            self.last_error = f"{type(action).__name__} failed"
            log.exception("carrying out %s failed", action)
            return False
        return True

    def _hal_event(self, event: HalEvent) -> None:
        match event:
            case PilotChanged(connector_id=c, state=state):
                self.submit(lambda core, now: core.pilot_changed(c, state, now))
            case CardPresented(uid=uid, connector_id=c):
                if not uid or len(uid) > MAX_ID_TAG:
                    log.warning("ignoring card id %r: OCPP id tags have 1 to %d characters",
                                uid, MAX_ID_TAG)
                    return
                log.info("card %s presented", uid)
                self.submit(lambda core, now: core.card_presented(uid, c, now))
            case FaultRaised(connector_id=c, fault=fault, info=info):
                log.warning("connector %d: fault %s %s", c, fault.value, info)
                self.submit(lambda core, now: core.fault_raised(c, fault, info, now))
            case FaultCleared(connector_id=c, fault=fault):
                self.submit(lambda core, now: core.fault_cleared(c, fault, now))

    # ---- services for the adapter ------------------------------------------------------------

    async def _session(self, connection: Any, version: str) -> None:
        await self.adapter.session(connection)

    def offered_amps(self, connector_id: int) -> float:
        connector = self.core.connectors.get(connector_id)
        return connector.offered_amps if connector else 0.0

    def has_lock(self, connector_id: int) -> bool:
        return connector_id in self.hardware.locks

    async def unlock_hardware(self, connector_id: int) -> bool | None:
        lock = self.hardware.locks.get(connector_id)
        if lock is None:
            return None
        try:
            return await asyncio.wait_for(lock.unlock(), DEVICE_TIMEOUT)
        except Exception:
            log.exception("unlocking connector %d failed", connector_id)
            return False

    async def _finish_reset(self, hard: bool) -> None:
        if not hard:
            deadline = time.monotonic() + SOFT_RESET_DRAIN
            while self.outbox.pending and time.monotonic() < deadline and self.adapter.online:
                await asyncio.sleep(0.1)
            await self.outbox.flush()  # what was delivered is not sent again after the restart
        else:
            await asyncio.sleep(0.2)  # let the Reset answer leave
        log.warning("%s reset: restarting", "hard" if hard else "soft")
        if self._reset is not None and not self._reset.done():
            self._reset.set_result("hard" if hard else "soft")

    # ---- loops -------------------------------------------------------------------------------

    async def _tick(self) -> None:
        ticks = 0
        while True:
            # Wake just after each wall-clock second, so clock-aligned samples land on time.
            await asyncio.sleep(1.0 - (self.clock.now() % 1.0) + 0.01)
            ticks += 1
            jump = self.clock.check_system() if ticks % CLOCK_CHECK_TICKS == 0 else None
            if jump is not None:
                self.submit(lambda core, now, j=jump: core.clock_synchronised(now, j))
            self.submit(lambda core, now: core.tick(now))

    async def _flush_cache(self) -> None:
        if self._cache_dirty:
            dirty, self._cache_dirty = self._cache_dirty, {}
            await self.store.run(self.store.store.put_auth_cache, dirty)

    async def write_local_list(
        self, version: int, changes: dict[str, IdTagInfo | None], *, replace: bool
    ) -> None:
        """Persist, then tell the core: a list the CSMS was told is installed survives a
        power cut."""
        rows = {tag: None if info is None else (info.status.value, info.parent_id_tag,
                                                info.expiry)
                for tag, info in changes.items()}
        await self.store.run(lambda: self.store.store.write_local_list(version, rows,
                                                                       replace=replace))
        self.local_list_version = version
        if replace:
            await self.ask(lambda core, now: core.replace_local_list(
                {t: i for t, i in changes.items() if i is not None}))
        else:
            await self.ask(lambda core, now: core.update_local_list(changes))

    async def clear_auth_cache(self) -> None:
        await self.ask(lambda core, now: core.clear_cache())
        self._cache_dirty.clear()
        await self.store.run(self.store.store.clear_auth_cache)

    async def _keep_cache(self) -> None:
        try:
            while True:
                await asyncio.sleep(CACHE_FLUSH_INTERVAL)
                try:
                    await self._flush_cache()
                except Exception:
                    log.exception("writing the authorization cache failed; retrying later")
        finally:
            await self._flush_cache()

    async def _guard_disk(self) -> None:
        while True:
            try:
                await self.keep_within_disk_limit()
            except Exception:
                log.exception("checking the data limit failed")
            await asyncio.sleep(DISK_CHECK_INTERVAL)

    async def keep_within_disk_limit(self) -> int:
        """Drop the oldest intermediate meter values while the database is over 90 % of its
        limit; returns how many were dropped."""
        store = self.store.store
        limit = self.config.station.max_data_mb * 1024 * 1024
        dropped = 0
        while await self.store.run(store.data_bytes) > 0.9 * limit:
            batch = await self.store.run(store.drop_oldest_meter_values, 1000)
            if not batch:
                self.last_error = "database full of transaction starts and stops"
                log.critical("data limit of %d MiB reached and nothing droppable is left; "
                             "raise station.max_data_mb", self.config.station.max_data_mb)
                break
            dropped += batch
        if dropped:
            self.outbox.durable_depth = await self.store.run(store.outbox_count)
            self.last_error = f"dropped {dropped} queued meter values: data limit reached"
            log.error("data limit of %d MiB nearly reached: dropped the %d oldest queued "
                      "intermediate meter values (no start or stop)",
                      self.config.station.max_data_mb, dropped)
        return dropped

    async def _read_meters(self) -> None:
        while True:
            try:
                await self._poll_meters_once()
            except Exception:
                log.exception("polling the meters failed")
            await asyncio.sleep(METER_POLL_INTERVAL)

    async def _poll_meters_once(self) -> None:
        for connector_id, meter in self.hardware.meters.items():
            try:
                reading = await asyncio.wait_for(meter.read(), 5.0)
            except (MeterError, TimeoutError) as exc:
                if connector_id not in self.meter_stale:
                    log.warning("meter of connector %d unreadable: %s", connector_id, exc)
                    self.meter_stale.add(connector_id)
                    self.submit(lambda core, now, c=connector_id: core.meter_failed(c))
                continue
            self.meter_stale.discard(connector_id)
            self.submit(lambda core, now, c=connector_id, r=reading: core.meter_sample(c, r, now))

    async def run(self) -> str:
        """Run until a reset asks for a restart ("soft"/"hard") or the task is cancelled."""
        self._reset = asyncio.get_running_loop().create_future()
        self.untrusted_boots = await self.store.run(self.store.store.untrusted_boots)
        await self.outbox.open()
        for device in [*self.hardware.devices(), *self.inputs]:
            await device.start(self._hal_event)
        if self.mock is not None:
            self.mock.attach(self._hal_event)
        await self._poll_meters_once()
        tasks = [asyncio.create_task(self._work(), name="core")]
        await self._close_interrupted()
        from cpagent.control import ControlServer  # the control socket needs the agent built

        control = ControlServer(self, self.config.station.control_socket)
        await control.start()
        tasks += [
            asyncio.create_task(self._tick(), name="tick"),
            asyncio.create_task(self._read_meters(), name="meters"),
            asyncio.create_task(self._keep_cache(), name="cache"),
            asyncio.create_task(self._guard_disk(), name="disk"),
            asyncio.create_task(self.transport.run(), name="transport"),
        ]
        self.ready.set()
        log.info("cpagent %s running as %s, CSMS %s", __version__, self.config.charge_point.id,
                 self.config.csms.endpoint_url)
        try:
            return await self._reset
        finally:
            # The link goes first (its farewell still talks to the core), the core last.
            for task in reversed(tasks):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await control.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.outbox.flush(), 5)
            for device in [*self.hardware.devices(), *self.inputs]:
                with contextlib.suppress(Exception):
                    await device.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def _close_interrupted(self) -> None:
        """Sessions still open in the store were cut short by a crash or a power cut."""
        rows = await self.store.run(self.store.store.open_transactions)
        if not rows:
            return
        log.warning("closing %d session(s) interrupted by a power loss", len(rows))
        transactions = [
            Transaction(r.local_id, r.connector_id, r.id_tag, r.started_at, r.meter_start_wh,
                        r.parent_id_tag, r.csms_id, r.remote_start)
            for r in rows
        ]
        await self.ask(lambda core, now: core.restore_interrupted(
            transactions, StopReason.POWER_LOSS, now))

    # ---- what `cpagent status` shows ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        core = self.core
        connectors = []
        for c in core.connectors.values():
            status, fault, info = core.status(c.id)
            tx = c.transaction
            connectors.append({
                "id": c.id,
                "status": status.value,
                "error": fault.value if fault else None,
                "info": info or None,
                "pilot": c.pilot.value,
                "contactor_closed": c.contactor_closed,
                "offered_amps": c.offered_amps,
                "energy_wh": c.reading.energy_wh if c.reading else None,
                "meter_stale": c.id in self.meter_stale,
                "operative": c.operative and core.station_operative,
                "transaction": None if tx is None else {
                    "local_id": tx.local_id,
                    "transaction_id": tx.csms_id,
                    "id_tag": tx.id_tag,
                    "started_at": format_time(tx.started_at),
                    "meter_start_wh": tx.meter_start_wh,
                },
            })
        transport = self.transport
        return {
            "charge_point": self.config.charge_point.id,
            "version": __version__,
            "connection": {
                "state": transport.state,
                "url": self.config.csms.endpoint_url,
                "ocpp_version": transport.version,
                "registration": self.registration,
                "online": self.adapter.online,
                "connected_for_s": (round(time.monotonic() - transport.connected_since, 1)
                                    if transport.connected_since else None),
                "connects": transport.connect_count,
            },
            "clock_trusted": self.clock.trusted,
            "connectors": connectors,
            "queue": {"durable": self.outbox.depth,
                      "volatile": self.outbox.volatile_depth},
            "last_error": self.last_error or transport.last_error,
            "mock_hardware": self.mock is not None,
        }
