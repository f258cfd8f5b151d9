"""The agent: one asyncio shell around the charging core.

Hardware events, the passing of time and CSMS commands all reach the core through one input
queue, handled one at a time by one worker; the actions the core returns are carried out in
order before the next input is taken. So the core never sees two things at once, and a
transaction start is durable in the store before the contactor is asked to close.

Device commands do not run in the worker: each device has a lane of its own (see
`cpagent.lanes`), and a fault that blocks charging opens the contactor from the hardware event
itself, before the core, the store or the network hear of it.

The protocol adapters see the agent only through `_Host` (see `cpagent.host`); which one
speaks on a link is decided by the subprotocol the CSMS agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cpagent import __version__
from cpagent.clock import PLAUSIBLE_FLOOR, Clock, format_time, parse_time, system_time_zone
from cpagent.config import Config
from cpagent.control import ControlServer
from cpagent.core.actions import (
    Action,
    AuthCacheUpdated,
    AvailabilityChanged,
    ChargingLimitChanged,
    ChargingProfilesChanged,
    CurrentOverrun,
    MeterValuesReport,
    RequestAuthorization,
    ReservationEnded,
    ReservationsChanged,
    ResetEvse,
    ResetNow,
    SetContactor,
    SetCurrentLimit,
    StatusChanged,
    TransactionEvent,
    TxEventKind,
    UnlockConnector,
)
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    ConnectorStatus,
    CoreSettings,
    IdToken,
    StopReason,
    TokenType,
    Transaction,
)
from cpagent.core.reservations import reservation_of, reservation_record
from cpagent.core.schedules import ChargingProfile
from cpagent.core.station import ChargingStation
from cpagent.host import (
    BootReason,
    CoreCall,
    Endpoint,
    EvseInfo,
    LinkInfo,
    ProtocolAdapter,
    StationInfo,
)
from cpagent.identity import ChargerIdentity
from cpagent.lanes import DEVICE_TIMEOUT, PowerLanes
from cpagent.outbox import Outbox
from cpagent.protocols import PREFERRED, SUBPROTOCOLS, adapter_for
from cpagent.recorder import Recorder, StartRefused
from cpagent.records import (
    SECURITY_EVENT,
    OutboxEntry,
    TransactionRow,
    profile_from_json,
    profile_to_json,
)
from cpagent.renewal import CertificateRenewal
from cpagent.security_events import SecurityEvent, SecurityLog, event_record
from cpagent.session import BootGate, OcppSession, SessionServices
from cpagent.settings import SharedSettings, password_bytes, password_key
from cpagent.store import AsyncStore, NewRecord, Store, TokenRow
from cpagent.transport import Transport, TransportSettings, security_profile
from cpagent.trust import Trust
from hal.factory import build_hardware
from hal.interfaces import (
    CardPresented,
    Fault,
    FaultCleared,
    FaultRaised,
    HalEvent,
    MeterError,
    PilotChanged,
    PilotState,
    StationHardware,
)
from hal.mock import MockStation

log = logging.getLogger(__name__)

T = TypeVar("T")

METER_POLL_INTERVAL = 1.0
SOFT_RESET_DRAIN = 10.0
SHUTDOWN_DRAIN = 5.0  # seconds a SIGTERM gives the CSMS to receive the final records
CACHE_FLUSH_INTERVAL = 2.0
DISK_CHECK_INTERVAL = 30.0
EVENT_WRITE_WAIT = 2.0  # how long the worker waits for an event (not a start) to be durable
CLOCK_CHECK_TICKS = 10
INVALID_MESSAGES_WINDOW = 600.0  # seconds: one InvalidMessages event at most in each
_KERNEL_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _powers(action: Action) -> bool:
    return (isinstance(action, SetCurrentLimit) and action.amps > 0) or (
        isinstance(action, SetContactor) and action.closed)


def token_row(token: IdToken, info: AuthInfo, learned_at: float | None = None) -> TokenRow:
    return TokenRow(token.value, token.type.value if token.type else None, info.status.value,
                    info.group.value if info.group else None,
                    info.group.type.value if info.group and info.group.type else None,
                    info.expiry, info.evse_ids, learned_at)


def token_of(row: TokenRow) -> tuple[IdToken, AuthInfo]:
    def kind(value: str | None) -> TokenType | None:
        return TokenType(value) if value else None

    group = IdToken(row.group_token, kind(row.group_type)) if row.group_token else None
    return (IdToken(row.token, kind(row.token_type)),
            AuthInfo(AuthStatus(row.status), group, row.expiry, row.evse_ids))


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
        built = build_hardware(config.hardware, config.station.connectors, config.station.phases,
                               data_dir)
        self.hardware: StationHardware = built.hardware
        self.mock: MockStation | None = built.mock
        self.inputs = built.extra  # fault inputs: emergency stop, RCD
        self.lanes = PowerLanes(
            {e: c.set_closed for e, c in self.hardware.contactors.items()},
            {e: p.set_current_limit for e, p in self.hardware.pilots.items()})
        self.outbox = Outbox(self.store)
        self.recorder = Recorder(self.store, self.outbox.durable_added, self._storage_health)
        self.gate = BootGate()
        self.info = self._station_info()
        self.transport = Transport(
            TransportSettings(
                url=config.csms.endpoint_url,
                identity=config.charge_point.id,
                versions=[],  # decided once the stored agreement is read (see run)
                password=config.csms.password,
                ca_file=config.csms.ca_file,
                client_cert=config.csms.client_cert,
                client_key=config.csms.client_key,
                reconnect_initial=config.csms.reconnect_initial,
                reconnect_max=config.csms.reconnect_max,
                pong_timeout=config.csms.pong_timeout,
                max_frame_bytes=config.csms.max_frame_kb * 1024,
                compression=config.csms.compression,
            ),
            self._session,
            lambda: self.adapter.ping_interval(),
            extra_roots=lambda: self.trust.csms_roots(),
        )
        self.trust = Trust(self.store, self._known_time, self.transport.peer_certificate)
        csms = config.csms
        self.identity = ChargerIdentity(
            data_dir / "identity", config.charge_point.id,
            (csms.client_cert, csms.client_key)
            if csms.client_cert is not None and csms.client_key is not None else None,
            self._trusted_roots, self._known_time)
        self.transport.identity = self.identity
        self.renewal = CertificateRenewal(
            self.identity, lambda: self.adapter.request_certificate(), lambda: self.shared,
            self._known_time, lambda known: self.store.put_state("charger_certificates", known))
        self.transport.on_security_problem = self.security_event
        self.security_log = SecurityLog(data_dir / "security.log")
        self._invalid_told_at = -INVALID_MESSAGES_WINDOW
        self._invalid_count = 0
        self._inputs: asyncio.Queue[tuple[CoreCall, asyncio.Future | None]] = asyncio.Queue()
        self._reset: asyncio.Future[str] | None = None
        self.started_at = time.monotonic()
        self.last_error: str | None = None
        self.storage_problem: str | None = None
        self.meter_stale: set[int] = set()
        self._background: set[asyncio.Future] = set()
        self.untrusted_boots: dict[str, float] = {}
        self._cache_dirty: dict[str, TokenRow | None] = {}
        self.ready = asyncio.Event()  # devices started, the core taking inputs
        self.session: OcppSession | None = None
        self.adapters: dict[str, ProtocolAdapter] = {}
        self.active_version = ""
        self.boot_reason = BootReason.POWER_UP
        self.local_list_version = 0
        self._core: ChargingStation | None = None
        self.stopping = False

    # ---- what the station is ------------------------------------------------------------------

    def _station_info(self) -> StationInfo:
        identity = self.config.charge_point
        station = self.config.station
        meter = self.hardware.meters.get(1)
        model = getattr(getattr(meter, "settings", None), "model", None)
        serial = getattr(meter, "serial_number", None)
        return StationInfo(
            identity=identity.id, vendor=identity.vendor, model=identity.model,
            serial=identity.serial, firmware_version=identity.firmware_version,
            meter_type=model if isinstance(model, str) else None,
            meter_serial=serial if isinstance(serial, str) and serial else None,
            evses={e: EvseInfo(e, 1, station.phases, station.max_current,
                               e in self.hardware.locks)
                   for e in range(1, station.connectors + 1)},
            agent_version=__version__,
        )

    @property
    def core(self) -> ChargingStation:
        assert self._core is not None, "the agent is not running"
        return self._core

    @property
    def adapter(self) -> ProtocolAdapter:
        return self.adapters[self.active_version]

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
            refused_evses: set[int] = set()
            refused_refs: set[str] = set()
            for action in actions:
                if _powers(action) and action.evse_id in refused_evses:
                    continue  # no energy for a session the store could not record
                if isinstance(action, TransactionEvent) and action.ref in refused_refs:
                    continue
                if not await self._execute(action) and isinstance(action, TransactionEvent) \
                        and action.kind is TxEventKind.STARTED:
                    refused_evses.add(action.evse_id)
                    refused_refs.add(action.ref)
                    self.core.start_not_recorded(action.ref, self.clock.now())
            actions = self.core.drain()

    async def _execute(self, action: Action) -> bool:
        try:
            match action:
                case SetCurrentLimit(evse_id=e, amps=amps):
                    self.lanes.pilot[e].set(amps)
                case SetContactor(evse_id=e, closed=closed):
                    log.info("EVSE %d: contactor %s", e, "closed" if closed else "open")
                    self.lanes.contactor[e].set(closed)
                case TransactionEvent():
                    return await self._record(action)
                case UnlockConnector(evse_id=e, connector_id=c):
                    self._spawn(self.unlock_hardware(e, c))
                case AuthCacheUpdated(token=token, info=info):
                    # The cache only saves a round trip: it is written in batches, off the
                    # path from a card tap to the contactor.
                    self._cache_dirty[token.key] = None if info is None else token_row(
                        token, info, self.clock.now())
                case AvailabilityChanged(evse_id=e, connector_id=c, operative=operative):
                    await self.store.put_state(f"availability.{e}.{c}", operative)
                case ReservationsChanged(reservations=reservations):
                    # Kept across restarts as the CSMS was told: Accepted means kept.
                    await self.store.put_state(
                        "reservations", [reservation_record(r) for r in reservations])
                case ChargingProfilesChanged(profiles=profiles):
                    # Written before the CSMS hears Accepted: a profile it was told is
                    # installed survives a power cut.
                    await self.store.put_state("charging_profiles",
                                               [profile_to_json(p) for p in profiles])
                case CurrentOverrun(evse_id=e, info=info):
                    log.warning("EVSE %d: %s; the limit is not kept", e, info)
                case ChargingLimitChanged(evse_id=e, amps=amps, source=source):
                    log.info("EVSE %d: %.1f A, set by the %s limit", e, amps, source.value)
                    if self.active_version:
                        await self.adapter.handle(action)
                case ResetNow(hard=hard):
                    self._spawn(self._finish_reset(hard))
                case ResetEvse(evse_id=e):
                    self._spawn(self._reset_evse(e))
                case StatusChanged() | RequestAuthorization() | MeterValuesReport() | \
                        ReservationEnded():
                    if self.active_version:
                        await self.adapter.handle(action)
        except Exception:
            # A device or store failure must not take the agent down; it is logged and the
            # next input is handled.
            self.last_error = f"{type(action).__name__} failed"
            log.exception("carrying out %s failed", action)
            return False
        return True

    async def _record(self, event: TransactionEvent) -> bool:
        """Durable before anything that follows it; False when a start cannot be."""
        future = self.recorder.record(event, self.active_version, event.timestamp,
                                      self.clock.stamp_trusted(event.timestamp), self.boot_id)
        if event.kind is TxEventKind.STARTED:
            try:
                await self.recorder.start_recorded(future)
            except StartRefused as exc:
                self.last_error = (f"session on EVSE {event.evse_id} not started: it could not "
                                   f"be recorded ({exc})")
                log.error("%s", self.last_error)
                return False
            return True
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self.recorder.problem is None:
            # Normally durable before the next action; while the store is failing the
            # recorder keeps it and the station goes on (its status must not freeze).
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(future), EVENT_WRITE_WAIT)
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- hardware events, and the safety trip ------------------------------------------------

    def _trip(self, evse_ids: list[int], why: str) -> list[int]:
        ids = [e for e in evse_ids if e in self.lanes.contactor or e in self.lanes.pilot]
        self.lanes.trip(ids)
        log.warning("%s: opening the contactor of EVSE %s now", why,
                    ", ".join(map(str, ids)) or "-")
        return ids

    def _hal_event(self, event: HalEvent) -> None:
        match event:
            case PilotChanged(connector_id=e, state=state):
                tripped = (self._trip([e], f"control pilot of EVSE {e} in state {state}")
                           if state in (PilotState.E, PilotState.F) else [])
                self._submit_acknowledging(
                    tripped, lambda core, now: core.pilot_changed(e, state, now))
            case CardPresented(uid=uid, connector_id=e):
                limit = self.adapter.max_token_length if self.active_version else 20
                if not uid or len(uid) > limit:
                    log.warning("ignoring card id %r: identifiers of OCPP %s have 1 to %d "
                                "characters", uid, self.active_version, limit)
                    return
                token = IdToken(uid, TokenType.ISO14443)
                log.info("card %s presented", uid)
                self.submit(lambda core, now: core.card_presented(token, e, now))
            case FaultRaised(connector_id=e, fault=fault, info=info):
                log.warning("EVSE %d: fault %s %s", e, fault.value, info)
                tripped = []
                if fault.blocks_charging:
                    targets = list(self.lanes.contactor) if e == 0 else [e]
                    tripped = self._trip(targets, f"fault {fault.value}")
                if fault is Fault.TAMPER:  # after the trip: safety first, then the report
                    self.security_event(SecurityEvent.TAMPER_DETECTION,
                                        f"EVSE {e}: {info or 'tamper input active'}")
                self._submit_acknowledging(
                    tripped, lambda core, now: core.fault_raised(e, fault, info, now))
            case FaultCleared(connector_id=e, fault=fault):
                self.submit(lambda core, now: core.fault_cleared(e, fault, now))

    def _submit_acknowledging(self, tripped: list[int], fn: CoreCall[None]) -> None:
        def step(core: ChargingStation, now: float) -> None:
            try:
                fn(core, now)
            finally:
                self.lanes.acknowledged(tripped)  # the core knows now: its state holds

        self.submit(step)

    async def unlock_hardware(self, evse_id: int, connector_id: int = 1) -> bool | None:
        lock = self.hardware.locks.get(evse_id)
        if lock is None:
            return None
        try:
            return await asyncio.wait_for(lock.unlock(), DEVICE_TIMEOUT)
        except Exception:
            log.exception("unlocking EVSE %d connector %d failed", evse_id, connector_id)
            return False

    async def _reset_evse(self, evse_id: int) -> None:
        """An EVSE reset: its devices start afresh, the rest of the station charges on."""
        devices = [d for d in self.hardware.devices()
                   if getattr(d, "connector_id", None) == evse_id]
        log.warning("resetting EVSE %d (%d devices)", evse_id, len(devices))
        for device in devices:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.stop(), DEVICE_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.start(self._hal_event), DEVICE_TIMEOUT)

    # ---- time --------------------------------------------------------------------------------

    async def _take_time(self, text: Any) -> None:
        if not isinstance(text, str):
            return
        try:
            csms_now = parse_time(text)
        except ValueError:
            log.warning("ignoring unreadable currentTime %.40r", text)
            return
        jump = self.clock.csms_time(csms_now)
        if jump is not None:
            await self.ask(lambda core, now: core.clock_synchronised(now, jump))
            self.security_event(SecurityEvent.SETTING_SYSTEM_TIME,
                                f"time taken from the CSMS (moved by {jump:+.1f} s)")

    def time_correction(self, entry: OutboxEntry) -> float:
        """How far to move the stamps of a record queued before the time was known."""
        clock = self.clock
        if entry.clock_trusted or not clock.trusted:
            return 0.0
        if entry.boot_id == self.boot_id:
            return clock.correction
        # Queued by an earlier run that never learnt the time. Its stamps are kept as they
        # are when they could be true; a 1970-style or future clock is moved so its last stamp
        # falls just before this run started, keeping the order and spacing of its events.
        last = self.untrusted_boots.get(entry.boot_id)
        started = clock.process_start()
        if last is None or PLAUSIBLE_FLOOR <= last <= started:
            return 0.0
        return started - 1.0 - last

    # ---- the link ----------------------------------------------------------------------------

    def _versions(self, agreed: str | None) -> list[str]:
        wanted = self.config.csms.ocpp_version
        if wanted != "auto":
            return [wanted]
        first = agreed if agreed in PREFERRED else PREFERRED[0]
        return [first, *(v for v in PREFERRED if v != first)]

    async def _session(self, connection: Any, version: str) -> None:
        adapter = self.adapters[version]
        if version != self.active_version:
            log.warning("the CSMS agreed OCPP %s (until now %s)", version,
                        self.active_version or "none")
            self.active_version = version
            await self.ask(lambda core, now: self.apply_settings())
        await self.store.put_state("ocpp_version", version)
        services = SessionServices(
            outbox=self.outbox, gate=self.gate, online=self._set_online,
            take_time=self._take_time,
            render=lambda entry: adapter.render(entry, self.time_correction(entry)),
            note=self._note_link, call_timeout=self.config.csms.call_timeout,
            on_frame=self.on_frame, on_invalid=self._invalid_message)
        self.session = OcppSession(adapter, connection, services)
        try:
            await self.session.run()
        finally:
            self.session = None

    def _invalid_message(self, what: str) -> None:
        """InvalidMessages, told at most once per INVALID_MESSAGES_WINDOW: a CSMS (or someone
        in its place) sending garbage must not flood the queue and the security log."""
        now = time.monotonic()
        self._invalid_count += 1
        if now - self._invalid_told_at < INVALID_MESSAGES_WINDOW:
            return
        more = self._invalid_count - 1
        self._invalid_told_at, self._invalid_count = now, 0
        self.security_event(SecurityEvent.INVALID_MESSAGES, f"the CSMS sent {what}" + (
            f" (and {more} more invalid messages since the last report)" if more else ""))

    async def _set_online(self, online: bool) -> None:
        if online:
            await self.renewal.keep_metadata()  # a certificate on trial may have been proven
            self.renewal.check()
        await self.ask(lambda core, now: core.connection_changed(online, now))

    def _note_link(self, problem: str | None) -> None:
        self.transport.note(problem)

    @property
    def online(self) -> bool:
        return self.session is not None and self.session.online

    # ---- settings ----------------------------------------------------------------------------

    def apply_settings(self) -> None:
        """Every setting onto the core: the shared ones, then the active version's own."""
        settings = self.core.settings
        self.shared.apply_to(settings)
        self.adapter.tune(settings)
        if self.session is not None:
            self.session.heartbeat_changed.set()

    async def put_shared(self, name: str, value: str) -> None:
        await self.store.put_shared_setting(name, value)
        self.shared.values[name] = value
        await self.ask(lambda core, now: self.apply_settings())

    # ---- authorization data ------------------------------------------------------------------

    async def write_local_list(self, version: int, changes: Mapping[IdToken, AuthInfo | None],
                               *, replace: bool) -> None:
        """Persist, then tell the core: a list the CSMS was told is installed survives a
        power cut."""
        rows = {t.key: None if i is None else token_row(t, i) for t, i in changes.items()}
        await self.store.write_local_list(version, rows, replace=replace)
        self.local_list_version = version
        if replace:
            await self.ask(lambda core, now: core.replace_local_list(
                [(t, i) for t, i in changes.items() if i is not None]))
        else:
            await self.ask(lambda core, now: core.update_local_list(list(changes.items())))

    async def clear_auth_cache(self) -> None:
        await self.ask(lambda core, now: core.clear_cache())
        self._cache_dirty.clear()
        await self.store.clear_auth_cache()

    async def _flush_cache(self) -> None:
        if self._cache_dirty:
            dirty, self._cache_dirty = self._cache_dirty, {}
            await self.store.put_auth_cache(dirty)

    async def _keep_cache(self) -> None:
        try:
            while True:
                await asyncio.sleep(CACHE_FLUSH_INTERVAL)
                try:
                    await self._flush_cache()
                except Exception:
                    log.exception("writing the authorization cache failed; retrying later")
        finally:
            with contextlib.suppress(Exception):
                await self._flush_cache()

    def _trusted_roots(self) -> str:
        """Every root the charger trusts for the CSMS's side: configured and installed."""
        configured = ""
        if self.config.csms.ca_file is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                configured = self.config.csms.ca_file.read_text("ascii")
        return configured + self.trust.csms_roots()

    def _known_time(self) -> float | None:
        """The time, when the charger knows it (certificate validity is judged by it)."""
        return self.clock.now() if self.clock.trusted else None

    # ---- storage -----------------------------------------------------------------------------

    def _storage_health(self, problem: str | None) -> None:
        self.storage_problem = problem
        full = self.recorder.full
        self.submit(lambda core, now: core.storage_low(full))
        if problem is not None:
            log.critical("storage: %s", problem)
            if full and self.active_version and self.online:
                self._spawn(self._tell_disk_full())

    async def _tell_disk_full(self) -> None:
        # Not through the queue: the disk it would be written to is what is full.
        text = "disk full: the database cannot grow"
        self.security_log.write(SecurityEvent.MEMORY_EXHAUSTION, self.clock.now(), text)
        with contextlib.suppress(Exception):
            await self.adapter.station_event(SecurityEvent.MEMORY_EXHAUSTION, text)

    def security_event(self, event: SecurityEvent, info: str) -> None:
        """Into the local security log now, and durably queued for the CSMS."""
        now = self.clock.now()
        cleared = self.security_log.write(event, now, info)
        log.warning("security event %s: %s", event.value, info)
        self._spawn(self._queue_security_event(event, now, info))
        if cleared:
            self.security_event(SecurityEvent.SECURITY_LOG_CLEARED,
                                f"the oldest security log entries were discarded to keep the "
                                f"log within {self.security_log.limit // 1024} KiB")

    async def _queue_security_event(self, event: SecurityEvent, now: float, info: str) -> None:
        try:
            entry = await self.store.enqueue(NewRecord(
                SECURITY_EVENT, self.active_version, event_record(event, now, info), None,
                now, self.clock.stamp_trusted(now), self.boot_id))
        except Exception as exc:  # storage trouble: say it now rather than never
            log.error("security event %s not queued (%s): sending it unqueued", event, exc)
            with contextlib.suppress(Exception):
                await self.adapter.station_event(event, info)
            return
        self.outbox.durable_added(entry)

    async def _guard_disk(self) -> None:
        while True:
            try:
                await self.keep_within_disk_limit()
                await self.recorder.watch_space()
            except Exception:
                log.exception("checking the data limit failed")
            await asyncio.sleep(DISK_CHECK_INTERVAL)

    async def keep_within_disk_limit(self) -> int:
        """Drop the oldest intermediate meter values while the database is over 90 % of its
        limit; returns how many were dropped."""
        limit = self.config.station.max_data_mb * 1024 * 1024
        dropped = 0
        while await self.store.data_bytes() > 0.9 * limit:
            batch = await self.store.drop_oldest_meter_values(1000)
            if not batch:
                self.last_error = "database full of transaction starts and ends"
                log.critical("data limit of %d MiB reached and nothing droppable is left; "
                             "raise station.max_data_mb", self.config.station.max_data_mb)
                break
            dropped += batch
        if dropped:
            self.outbox.durable_depth = await self.store.outbox_count()
            self.last_error = f"dropped {dropped} queued meter values: data limit reached"
            log.error("data limit of %d MiB nearly reached: dropped the %d oldest queued "
                      "intermediate meter values (no start or end)",
                      self.config.station.max_data_mb, dropped)
        return dropped

    async def dead_letter_list(self) -> list[dict[str, Any]]:
        return [{"seq": e.seq, "kind": e.kind, "protocol": e.protocol, "transaction": e.tx_ref,
                 "event": e.record.get("kind"), "reason": reason,
                 "failed_at": format_time(failed_at)}
                for e, reason, failed_at in await self.store.dead_letters()]

    async def requeue_dead_letters(self) -> int:
        """`cpagent queue retry`: what the CSMS refused for good goes back in the queue."""
        entries = await self.store.requeue_dead_letters()
        self.outbox.requeued(entries)
        log.warning("%d dead letter(s) put back in the queue by the operator", len(entries))
        return len(entries)

    # ---- meters ------------------------------------------------------------------------------

    async def _read_meters(self) -> None:
        while True:
            try:
                await self._poll_meters_once()
            except Exception:
                log.exception("polling the meters failed")
            await asyncio.sleep(METER_POLL_INTERVAL)

    async def _poll_meters_once(self) -> None:
        # Each meter on its own: one that hangs delays no other EVSE's reading.
        await asyncio.gather(*(self._poll_meter(e, m) for e, m in self.hardware.meters.items()))

    async def _poll_meter(self, evse_id: int, meter: Any) -> None:
        try:
            reading = await asyncio.wait_for(meter.read(), DEVICE_TIMEOUT)
        except (MeterError, TimeoutError) as exc:
            if evse_id not in self.meter_stale:
                log.warning("meter of EVSE %d unreadable: %s", evse_id, exc)
                self.meter_stale.add(evse_id)
                self.submit(lambda core, now: core.meter_failed(evse_id))
            return
        self.meter_stale.discard(evse_id)
        self.submit(lambda core, now: core.meter_sample(evse_id, reading, now))

    # ---- loops -------------------------------------------------------------------------------

    async def _tick(self) -> None:
        ticks = 0
        while True:
            # Wake just after each wall-clock second, so clock-aligned samples land on time,
            # and at a charging schedule's boundary, so the pilot follows it within ms.
            now = self.clock.now()
            wake = 1.0 - (now % 1.0) + 0.01
            if self._core is not None:
                # (never sooner than 50 ms: a boundary it cannot pass must not spin the loop)
                wake = max(0.05, min(wake, self._core.limits.next_change() - now + 0.001))
            await asyncio.sleep(wake)
            ticks += 1
            jump = self.clock.check_system() if ticks % CLOCK_CHECK_TICKS == 0 else None
            if jump is not None:
                self.submit(lambda core, now, j=jump: core.clock_synchronised(now, j))
            self.submit(lambda core, now: core.tick(now))

    # ---- starting and stopping ---------------------------------------------------------------

    async def _load(self) -> None:
        store = self.store
        stored = await store.shared_settings()
        if stored.get("basic_auth_password") and not stored.get("basic_auth_key"):
            # Written as text by an earlier build: one stored form now, the password's bytes.
            stored["basic_auth_key"] = password_key(stored.pop("basic_auth_password"))
            await store.put_shared_setting("basic_auth_key", stored["basic_auth_key"])
            await store.put_shared_setting("basic_auth_password", "")
        self.shared = SharedSettings(stored,
                                     {"ping_interval": str(self.config.csms.ping_interval)})
        versions = self._versions(await store.state("ocpp_version"))
        self.transport.settings.versions = versions
        password = password_bytes(self.shared["basic_auth_key"]) or (
            self.config.csms.password.encode() if self.config.csms.password else None)
        url = self.config.csms.endpoint_url
        self.transport.base = await self._base_endpoint(url, password)
        self.transport.use_endpoints([self.transport.base], 3)
        self.boot_reason = await self._boot_reason()
        hosts = {v: _Host(self, v) for v in versions}
        self.adapters = {v: adapter_for(v, hosts[v]) for v in versions}
        for adapter in self.adapters.values():
            await adapter.load()
        self.active_version = versions[0]
        # Queued once the version is known: the record carries the protocol it was made in.
        self.security_event(
            SecurityEvent.STARTUP if self.boot_reason is BootReason.POWER_UP
            else SecurityEvent.RESET_OR_REBOOT, f"cpagent {__version__} started "
            f"({self.boot_reason.value})")
        operative = {}
        for e in [0, *range(1, self.config.station.connectors + 1)]:
            for c in (0, 1):
                value = await store.state(f"availability.{e}.{c}")
                if value is not None:
                    operative[(e, c)] = bool(value)
        self.local_list_version, listed = await store.local_list()
        station = self.config.station
        settings = CoreSettings(
            max_current=station.max_current,
            voltage=station.voltage,
            phases=station.phases,
            site_limit=station.site_limit,
            time_zone=station.time_zone or system_time_zone(),
            free_vend_token=IdToken(station.free_vend_id_tag, TokenType.NO_AUTHORIZATION)
            if station.free_vend else None,
        )
        self._core = ChargingStation(
            station.connectors, settings, new_ref=lambda: str(uuid.uuid4()),
            operative=operative, auth_cache=[token_of(r) for r in await store.auth_cache()],
            local_list=[token_of(r) for r in listed],
            profiles=await self._stored_profiles(),
            reservations=[r for d in await store.state("reservations") or []
                          if (r := reservation_of(d)) is not None])
        self.apply_settings()
        if self.clock.trusted:
            self._core.clock_synchronised(self.clock.now())

    async def _stored_profiles(self) -> list[ChargingProfile]:
        profiles = []
        stored = await self.store.state("charging_profiles") or []
        for d in stored if isinstance(stored, list) else []:
            try:
                profiles.append(profile_from_json(d))
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # Skipped rather than trusted: the CSMS sees it gone when it lists the
                # profiles (GetChargingProfiles, GetCompositeSchedule) and can set it again.
                log.error("a stored charging profile is unreadable and is not applied: %s",
                          exc)
        return profiles

    async def _base_endpoint(self, url: str, password: bytes | None) -> Endpoint:
        """The configured endpoint, or the one a security profile raised over OCPP made of
        it. A raise belongs to the URL it was made from: an installer who configures another
        CSMS starts from what the file says (lowering is done there, never over OCPP)."""
        configured = Endpoint(url, password, security_profile(self.transport.settings))
        raised = await self.store.state("raised_profile")
        if not raised:
            return configured
        if raised.get("from") != url:
            log.warning("csms.url changed since the CSMS raised the security profile to %s; "
                        "the configuration file's settings apply", raised.get("profile"))
            await self.store.put_state("raised_profile", None)
            return configured
        return Endpoint(raised["url"], password, int(raised["profile"]),
                        f"security profile {raised['profile']} set by the CSMS")

    async def adopt_endpoint(self, endpoint: Endpoint) -> None:
        if endpoint.security_profile <= self.transport.base.security_profile:
            return
        try:
            await self.store.put_state("raised_profile", {
                "profile": endpoint.security_profile, "url": endpoint.url,
                "from": self.config.csms.endpoint_url})
        except Exception as exc:  # storage trouble must not end the session that proved it
            log.error("the raised security profile is used but could not be kept for the "
                      "next start (%s)", exc)
        self.transport.base = Endpoint(
            endpoint.url, endpoint.password, endpoint.security_profile,
            f"security profile {endpoint.security_profile} set by the CSMS")
        log.warning("security profile %d is in use from now on (%s)",
                    endpoint.security_profile, endpoint.url)

    def profile_problem(self, profile: int) -> str | None:
        if profile not in (1, 2, 3):
            return f"security profile {profile} is not one this charger offers (1, 2 or 3)"
        # A link already on TLS trusts its CSMS somehow (perhaps by the system's roots);
        # moving onto TLS needs a root of the operator's (2.0.1 A05.FR.02).
        if profile >= 2 and not self.transport.base.url.startswith("wss://") and \
                not self._trusted_roots().strip():
            return ("no CSMS root certificate is installed (InstallCertificate it first, or "
                    "set csms.ca_file)")
        if profile >= 3 and self.transport.client_credentials() is None:
            return ("the charger has no certificate of its own yet (SignCertificate and "
                    "CertificateSigned first, or csms.client_cert)")
        if profile == 2 and not self.transport.base.password:
            return (f"security profile {profile} authenticates with a password and none is "
                    "set (AuthorizationKey / BasicAuthPassword, or csms.password)")
        return None

    def secure_url(self) -> str:
        base = self.transport.base.url
        return base if base.startswith("wss://") else self.config.csms.secure_endpoint_url

    async def _boot_reason(self) -> BootReason:
        """Why this run began: what the last run said it would restart for, else whether the
        board rebooted (power up) or only the agent did (a crash, or a local restart)."""
        planned = await self.store.state("boot_reason")
        last = await self.store.state("last_run") or {}
        kernel = _read(_KERNEL_BOOT_ID)
        await self.store.put_state("last_run", {"kernel_boot": kernel, "clean": False})
        if planned:
            await self.store.put_state("boot_reason", None)
            with contextlib.suppress(ValueError):
                return BootReason(planned)
        if not last or last.get("kernel_boot") != kernel or not kernel:
            return BootReason.POWER_UP
        return BootReason.LOCAL_RESET if last.get("clean") else BootReason.APPLICATION_RESET

    async def run(self) -> str:
        """Run until a reset asks for a restart ("soft"/"hard"), `stop()` is called
        ("stopped"), or the task is cancelled (as a crash would: no goodbye)."""
        self._reset = asyncio.get_running_loop().create_future()
        await self._load()
        await self.trust.load()
        self.untrusted_boots = await self.store.untrusted_boots()
        await self.outbox.open()
        for device in [*self.hardware.devices(), *self.inputs]:
            await device.start(self._hal_event)
        if self.mock is not None:
            self.mock.attach(self._hal_event)
        self.lanes.start()
        self.recorder.start()
        await self._poll_meters_once()
        self.info = self._station_info()  # a meter read once knows its serial number
        tasks = [asyncio.create_task(self._work(), name="core")]
        await self._close_interrupted()
        self._report_recovery()
        control = ControlServer(self, self.config.station.control_socket)
        await control.start()
        tasks += [
            asyncio.create_task(self._tick(), name="tick"),
            asyncio.create_task(self._read_meters(), name="meters"),
            asyncio.create_task(self._keep_cache(), name="cache"),
            asyncio.create_task(self._guard_disk(), name="disk"),
            asyncio.create_task(self.renewal.watch(), name="renewal"),
            asyncio.create_task(self.transport.run(), name="transport"),
        ]
        await self.renewal.keep_metadata()
        self.ready.set()
        log.info("cpagent %s running as %s, CSMS %s, OCPP %s (boot reason %s)", __version__,
                 self.config.charge_point.id, self.config.csms.endpoint_url,
                 "/".join(self.transport.settings.versions), self.boot_reason.value)
        try:
            return await self._reset
        finally:
            # The link goes first (its farewell still talks to the core), the core last.
            for task in reversed(tasks):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self.renewal.stop()
            await control.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.outbox.flush(), 5)
            await self.recorder.stop(wait=0.0 if not self.stopping else 2.0)
            await self.lanes.stop()
            for device in [*self.hardware.devices(), *self.inputs]:
                with contextlib.suppress(Exception):
                    await device.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def stop(self, why: str = "stopped") -> None:
        """A clean stop (SIGTERM, systemd stop): every running session ends now with reason
        Reboot at its real time and reading, the CSMS gets a few seconds to receive it, and
        the link is closed with a normal close code."""
        if self.stopping or self._reset is None or self._reset.done():
            return
        self.stopping = True
        log.warning("stopping (%s): ending running sessions", why)
        await self.ask(lambda core, now: core.shutdown(now))
        await self.lanes.idle()
        await self.recorder.stop(wait=SHUTDOWN_DRAIN)
        deadline = time.monotonic() + SHUTDOWN_DRAIN
        while self.outbox.pending and self.online and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.outbox.flush()
        await self.store.put_state("last_run", {"kernel_boot": _read(_KERNEL_BOOT_ID),
                                                "clean": True})
        await self.transport.close("charging station shutting down")
        if not self._reset.done():
            self._reset.set_result(why)

    async def _finish_reset(self, hard: bool) -> None:
        await self.store.put_state("boot_reason", BootReason.REMOTE_RESET.value)
        if not hard:
            deadline = time.monotonic() + SOFT_RESET_DRAIN
            while self.outbox.pending and time.monotonic() < deadline and self.online:
                await asyncio.sleep(0.1)
            await self.outbox.flush()  # what was delivered is not sent again after the restart
        else:
            await asyncio.sleep(0.2)  # let the Reset answer leave
        await self.lanes.idle()
        with contextlib.suppress(Exception):
            await self.recorder.stop(wait=2.0)
        log.warning("%s reset: restarting", "hard" if hard else "soft")
        await self.transport.close("reset")
        if self._reset is not None and not self._reset.done():
            self._reset.set_result("hard" if hard else "soft")

    async def _close_interrupted(self) -> None:
        """Sessions still open in the store were cut short by a crash or a power cut."""
        rows = await self.store.open_transactions()
        if not rows:
            return
        log.warning("closing %d session(s) interrupted by a power loss", len(rows))
        transactions = [_transaction_of(r) for r in rows]
        await self.ask(lambda core, now: core.restore_interrupted(
            transactions, StopReason.POWER_LOSS, now))

    def _report_recovery(self) -> None:
        recovery = self.store.recovery
        if recovery is None:
            return
        self.storage_problem = recovery.describe()
        self._spawn(self._tell_recovery(recovery.describe()))

    async def _tell_recovery(self, text: str) -> None:
        self.security_event(SecurityEvent.STORAGE_DAMAGED, text)

    # ---- what `cpagent status` shows ---------------------------------------------------------

    def _certificate_status(self) -> dict[str, Any] | None:
        """The charger's own certificate (security profile 3), never its key."""
        try:
            known = self.identity.describe()
        except Exception:  # an unreadable file must not break `status`
            return None
        shown = known.get("current") or known.get("configured")
        if shown is None and "next" not in known:
            return None
        return {"subject": shown["subject"] if shown else None,
                "serial": shown["serial"] if shown else None,
                "valid_until": format_time(shown["not_after"]) if shown else None,
                "next_on_trial": "next" in known,
                "renewal": self.renewal.last_outcome}

    def snapshot(self) -> dict[str, Any]:
        core = self.core
        evses = []
        for evse in core.evses.values():
            status, fault, info = core.status(evse.id)
            tx = evse.transaction
            evses.append({
                "id": evse.id,
                "status": _SHOWN[status],
                "error": fault.value if fault else None,
                "info": info or None,
                "pilot": evse.pilot.value,
                "contactor_closed": evse.contactor_closed,
                "contactor_applied": self.lanes.contactor[evse.id].applied
                if evse.id in self.lanes.contactor else None,
                "offered_amps": evse.offered_amps,
                "limited_by": evse.limit_source.value,
                "energy_wh": evse.reading.energy_wh if evse.reading else None,
                "meter_stale": evse.id in self.meter_stale,
                "operative": evse.operative and core.station.operative,
                "transaction": None if tx is None else {
                    "ref": tx.ref,
                    "transaction_id": self.adapter.wire_transaction_id(tx.ref),
                    "id_tag": tx.token.value if tx.token else None,
                    "started_at": format_time(tx.started_at),
                    "meter_start_wh": tx.meter_start_wh,
                    "charging_state": tx.charging_state.value,
                },
            })
        transport = self.transport
        return {
            "charge_point": self.config.charge_point.id,
            "version": __version__,
            "connection": {
                "state": transport.state,
                "url": transport.endpoint.url,  # after a raised profile, not the file's
                "security_profile": _Link(self).info().security_profile,
                "ocpp_version": transport.version or self.active_version or None,
                "offered": [SUBPROTOCOLS[v] for v in transport.settings.versions],
                "registration": (self.gate.of(self.active_version).value
                                 if self.gate.of(self.active_version) else None),
                "online": self.online,
                "connected_for_s": (round(time.monotonic() - transport.connected_since, 1)
                                    if transport.connected_since else None),
                "connects": transport.connect_count,
                "last_error": transport.last_error,
            },
            "certificate": self._certificate_status(),
            "boot_reason": self.boot_reason.value,
            "clock_trusted": self.clock.trusted,
            "connectors": evses,
            "charging_profiles": len(core.profiles),
            "site_limit_amps": core.settings.site_limit,
            "queue": {"durable": self.outbox.depth,
                      "volatile": self.outbox.volatile_depth,
                      "dead_letters": self.outbox.dead_letters,
                      "unwritten": self.recorder.backlog},
            "storage": {"problem": self.storage_problem,
                        "disk_full": self.recorder.full,
                        "reserve_held": self.store.store.reserve.held,
                        "free_bytes": _free_bytes(Path(self.config.station.data_dir))},
            "last_error": self.storage_problem or self.last_error or transport.last_error,
            "mock_hardware": self.mock is not None,
        }


# How `cpagent status` names a connector's state: the detailed words installers know.
_SHOWN = {
    ConnectorStatus.AVAILABLE: "Available", ConnectorStatus.PREPARING: "Preparing",
    ConnectorStatus.CHARGING: "Charging", ConnectorStatus.SUSPENDED_EV: "SuspendedEV",
    ConnectorStatus.SUSPENDED_EVSE: "SuspendedEVSE", ConnectorStatus.FINISHING: "Finishing",
    ConnectorStatus.RESERVED: "Reserved", ConnectorStatus.UNAVAILABLE: "Unavailable",
    ConnectorStatus.FAULTED: "Faulted",
}


def _transaction_of(r: TransactionRow) -> Transaction:
    def token(value: str | None, kind: str | None) -> IdToken | None:
        return IdToken(value, TokenType(kind) if kind else None) if value else None

    return Transaction(r.ref, r.evse_id, r.connector_id, r.started_at, r.meter_start_wh,
                       token(r.token, r.token_type), token(r.group_token, r.group_type),
                       r.authorized, r.remote_start_id, r.reservation_id, r.next_seq)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


class _Host:
    """The agent as one adapter sees it (see `cpagent.host.AdapterHost`)."""

    def __init__(self, agent: Agent, version: str) -> None:
        self._agent = agent
        self.version = version
        self.clock = agent.clock
        self.boot_id = agent.boot_id
        self.queue = _Queue(agent, version)
        self.storage = _Storage(agent.store, version)
        self.link = _Link(agent)
        self.certificates = agent.trust
        self.identity = agent.identity

    @property
    def info(self) -> StationInfo:
        return self._agent.info

    @property
    def boot_reason(self) -> BootReason:
        return self._agent.boot_reason

    @property
    def shared(self) -> SharedSettings:
        return self._agent.shared

    @property
    def core(self) -> ChargingStation:
        return self._agent.core

    @property
    def local_list_version(self) -> int:
        return self._agent.local_list_version

    async def ask(self, fn: CoreCall[T]) -> T:
        return await self._agent.ask(fn)

    def submit(self, fn: CoreCall[Any]) -> None:
        self._agent.submit(fn)

    async def put_shared(self, name: str, value: str) -> None:
        await self._agent.put_shared(name, value)

    def settings_changed(self) -> None:
        self._agent.submit(lambda core, now: self._agent.apply_settings())

    async def unlock(self, evse_id: int, connector_id: int) -> bool | None:
        return await self._agent.unlock_hardware(evse_id, connector_id)

    async def write_local_list(self, version: int, changes: Mapping[IdToken, AuthInfo | None],
                               *, replace: bool) -> None:
        await self._agent.write_local_list(version, changes, replace=replace)

    async def clear_auth_cache(self) -> None:
        await self._agent.clear_auth_cache()

    def note(self, problem: str | None) -> None:
        self._agent.last_error = problem

    def security_event(self, event: SecurityEvent, info: str) -> None:
        self._agent.security_event(event, info)

    async def take_time(self, text: Any) -> None:
        await self._agent._take_time(text)

    def renew_certificate(self, why: str) -> None:
        self._agent.renewal.renew(why)


class _Queue:
    def __init__(self, agent: Agent, version: str) -> None:
        self._agent = agent
        self._version = version

    def send(self, action: str, payload: dict, *, urgent: bool = False) -> asyncio.Future:
        return self._agent.outbox.put(action, payload, urgent=urgent)

    async def call_now(self, action: str, payload: dict) -> dict:
        session = self._agent.session
        if session is None:
            from cpagent.rpc import ConnectionLost

            raise ConnectionLost("not connected")
        return await session.call(action, payload)

    async def enqueue(self, kind: str, record: dict, *, tx_ref: str | None = None) -> None:
        agent = self._agent
        now = agent.clock.now()
        entry = await agent.store.enqueue(NewRecord(kind, self._version, record, tx_ref, now,
                                                    agent.clock.stamp_trusted(now),
                                                    agent.boot_id))
        agent.outbox.durable_added(entry)

    async def pending(self, tx_ref: str | None = None) -> int:
        unwritten = self._agent.recorder.backlog if tx_ref is None else \
            self._agent.recorder.backlog_for(tx_ref)
        return await self._agent.store.outbox_pending_for(tx_ref) + unwritten


class _Storage:
    def __init__(self, store: AsyncStore, version: str) -> None:
        self._store = store
        self._version = version

    async def settings(self) -> dict[str, str]:
        return await self._store.adapter_settings(self._version)

    async def put_setting(self, name: str, value: str) -> None:
        await self._store.put_adapter_setting(self._version, name, value)

    async def state(self, kind: str, key: str) -> Any:
        return await self._store.adapter_state(self._version, kind, key)

    async def states(self, kind: str) -> dict[str, Any]:
        return await self._store.adapter_states(self._version, kind)

    async def put_state(self, kind: str, key: str, value: Any) -> None:
        await self._store.put_adapter_state(self._version, kind, key, value)

    async def variables(self) -> dict[tuple, str]:
        return await self._store.variables()

    async def put_variable(self, key: tuple, value: str) -> None:
        await self._store.put_variable(key, value)

    async def transaction(self, ref: str) -> TransactionRow | None:
        return await self._store.transaction(ref)


class _Link:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def info(self) -> LinkInfo:
        transport = self._agent.transport
        endpoint = transport.endpoint
        # Told as it is: without a password a plain ws:// link has no profile at all, and a
        # wss:// one is profile 3 only when the charger shows a client certificate and the
        # endpoint is not one of profile 2 (where the password is the credential).
        if endpoint.url.startswith("wss://"):
            shows = transport.client_credentials() is not None
            profile = 3 if shows and endpoint.security_profile != 2 else 2
        else:
            profile = 1 if endpoint.password else 0
        return LinkInfo(endpoint.url, transport.state, transport.version, profile,
                        transport.last_error, {"profile": endpoint.label})

    def base_endpoint(self) -> Endpoint:
        return self._agent.transport.base

    def use_endpoints(self, endpoints: list[Endpoint], attempts: int) -> None:
        self._agent.transport.use_endpoints(endpoints, attempts)

    def profile_problem(self, profile: int) -> str | None:
        return self._agent.profile_problem(profile)

    def secure_url(self) -> str:
        return self._agent.secure_url()

    async def adopt(self, endpoint: Endpoint) -> None:
        await self._agent.adopt_endpoint(endpoint)

    def reconnect(self, why: str) -> None:
        self._agent.transport.abort(why)

