"""OCPP 1.6J: the charging core's events as 1.6 messages, and 1.6 calls as core commands."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import websockets

from cpagent.clock import PLAUSIBLE_FLOOR, format_time, parse_time
from cpagent.core.model import (
    Action,
    AuthStatus,
    IdTagInfo,
    MeterValuesReport,
    ReadingContext,
    RequestAuthorization,
    StatusChanged,
    StopReason,
    TransactionStarted,
    TransactionStopped,
)
from cpagent.ocpp16.configuration import KEYS, Configuration, InvalidValue, canonical_key
from cpagent.ocpp16.metering import meter_value
from cpagent.outbox import RetryPolicy
from cpagent.rpc import (
    CALL,
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    NoReply,
    RpcEndpoint,
    RpcError,
    validate,
)
from cpagent.store import OutboxEntry, QueuedMessage, TransactionRow
from hal.interfaces import Fault

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from cpagent.agent import Agent
    from cpagent.core.station import ChargingStation

log = logging.getLogger(__name__)

VERSION = "1.6"

ERROR_CODES = {
    Fault.GROUND_FAILURE: "GroundFailure",
    Fault.OVER_CURRENT: "OverCurrentFailure",
    Fault.OVER_VOLTAGE: "OverVoltage",
    Fault.UNDER_VOLTAGE: "UnderVoltage",
    Fault.HIGH_TEMPERATURE: "HighTemperature",
    Fault.POWER_SWITCH_FAILURE: "PowerSwitchFailure",
    Fault.EV_COMMUNICATION_ERROR: "EVCommunicationError",
    Fault.POWER_METER_FAILURE: "PowerMeterFailure",
    Fault.READER_FAILURE: "ReaderFailure",
    Fault.CONNECTOR_LOCK_FAILURE: "ConnectorLockFailure",
    Fault.INTERNAL_ERROR: "InternalError",
}
BOOT_RETRY_DEFAULT = 30.0  # when a Pending/Rejected answer gives no interval of its own


def id_tag_info(data: Any) -> IdTagInfo:
    """Read an idTagInfo tolerantly: an unknown status counts as Invalid, a bad date as none."""
    if not isinstance(data, dict):
        return IdTagInfo(AuthStatus.INVALID)
    try:
        status = AuthStatus(data.get("status"))
    except ValueError:
        status = AuthStatus.INVALID
    expiry = None
    if isinstance(data.get("expiryDate"), str):
        try:
            expiry = parse_time(data["expiryDate"])
        except ValueError:
            log.warning("ignoring unreadable expiryDate %r", data["expiryDate"])
    parent = data.get("parentIdTag") if isinstance(data.get("parentIdTag"), str) else None
    return IdTagInfo(status, parent, expiry)


class Ocpp16Adapter:
    version = VERSION

    def __init__(self, agent: Agent, stored_settings: dict[str, str]) -> None:
        self.agent = agent
        self.configuration = Configuration.load(agent.config.station.connectors, stored_settings,
                                                {"WebSocketPingInterval":
                                                 str(agent.config.csms.ping_interval)})
        self.registration: str | None = None  # the last BootNotification verdict
        self.online = False
        self.rpc: RpcEndpoint | None = None
        self._heartbeat_changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._csms_ids: dict[int, int] = {}
        # Set once the StartTransaction being sent has been answered and its transactionId
        # handed to the core (or can no longer be): a RemoteStop may name that id meanwhile.
        self._start_in_flight: asyncio.Event | None = None
        self._handlers: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "ChangeAvailability": self._change_availability,
            "ChangeConfiguration": self._change_configuration,
            "ClearCache": self._clear_cache,
            "DataTransfer": self._data_transfer,
            "GetConfiguration": self._get_configuration,
            "RemoteStartTransaction": self._remote_start,
            "RemoteStopTransaction": self._remote_stop,
            "Reset": self._reset,
            "UnlockConnector": self._unlock_connector,
            "GetLocalListVersion": self._get_local_list_version,
            "SendLocalList": self._send_local_list,
        }

    # ---- settings ---------------------------------------------------------------------------

    def ping_interval(self) -> float:
        return float(self.configuration.integer("WebSocketPingInterval"))

    def apply_settings(self, core: ChargingStation) -> None:
        self.configuration.apply_to(core.settings)

    # ---- a connection -----------------------------------------------------------------------

    async def session(self, connection: ClientConnection) -> None:
        agent = self.agent
        rpc = RpcEndpoint(VERSION, connection.send, self._on_call,
                          call_timeout=agent.config.csms.call_timeout, on_frame=agent.on_frame)
        self.rpc = rpc
        reader = asyncio.create_task(self._read(connection, rpc), name="ocpp16-reader")
        talker = asyncio.create_task(self._converse(rpc), name="ocpp16-talker")
        try:
            done, _ = await asyncio.wait({reader, talker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if isinstance(exc, ConnectionLost | websockets.ConnectionClosed):
                        log.info("connection closed: %s", exc)
                    else:
                        log.error("OCPP session failed", exc_info=exc)
        finally:
            rpc.close()
            for task in (reader, talker):
                task.cancel()
            await asyncio.gather(reader, talker, return_exceptions=True)
            self.rpc = None
            self.online = False
            self._start_settled()
            agent.outbox.drop_volatile("connection closed")
            agent.submit(lambda core, now: core.connection_changed(False, now))

    async def _read(self, connection: ClientConnection, rpc: RpcEndpoint) -> None:
        async for text in connection:
            await rpc.receive(text)

    async def _converse(self, rpc: RpcEndpoint) -> None:
        await self._boot(rpc)
        self.online = True
        await self.agent.ask(lambda core, now: core.connection_changed(True, now))
        await self._report_all_statuses()
        policy = RetryPolicy(
            attempts=lambda: self.configuration.integer("TransactionMessageAttempts"),
            interval=lambda: float(self.configuration.integer("TransactionMessageRetryInterval")),
        )
        sender = asyncio.create_task(
            self.agent.outbox.run(rpc, self._prepare, self._delivered, policy), name="outbox"
        )
        heart = asyncio.create_task(self._heartbeat(rpc), name="heartbeat")
        try:
            await asyncio.gather(sender, heart)
        finally:
            sender.cancel()
            heart.cancel()
            await asyncio.gather(sender, heart, return_exceptions=True)

    async def _boot(self, rpc: RpcEndpoint) -> None:
        """BootNotification once per start of the agent, until the CSMS accepts it."""
        if self.registration == "Accepted":
            return
        identity = self.agent.config.charge_point
        payload = {"chargePointVendor": identity.vendor, "chargePointModel": identity.model,
                   "firmwareVersion": identity.firmware_version}
        if identity.serial:
            payload["chargePointSerialNumber"] = identity.serial
        # The meter of connector 1 identifies the station's metering to the operator.
        meter = self.agent.hardware.meters.get(1)
        model = getattr(getattr(meter, "settings", None), "model", None)
        serial = getattr(meter, "serial_number", None)
        if isinstance(model, str):
            payload["meterType"] = model[:25]
        if isinstance(serial, str) and serial:
            payload["meterSerialNumber"] = serial[:25]
        while True:
            try:
                answer = await rpc.call("BootNotification", payload)
            except (CallErrorReceived, CallTimeout) as exc:
                log.warning("BootNotification failed: %s; retrying in %.0f s", exc,
                            BOOT_RETRY_DEFAULT)
                await asyncio.sleep(BOOT_RETRY_DEFAULT)
                continue
            await self._take_time(answer.get("currentTime"))
            status = answer.get("status")
            interval = answer.get("interval") if isinstance(answer.get("interval"), int) else 0
            self.registration = status if status in ("Accepted", "Pending", "Rejected") else None
            self.agent.registration = self.registration
            if status == "Accepted":
                if interval > 0:
                    heartbeat = min(interval, KEYS["HeartbeatInterval"].maximum)
                    await self._store_setting("HeartbeatInterval", str(heartbeat))
                log.info("BootNotification accepted; heartbeat every %s s",
                         self.configuration.integer("HeartbeatInterval"))
                return
            wait = float(interval) if interval > 0 else BOOT_RETRY_DEFAULT
            log.warning("BootNotification %s; trying again in %.0f s", status, wait)
            await asyncio.sleep(wait)

    async def _take_time(self, text: Any) -> None:
        if not isinstance(text, str):
            return
        try:
            csms_now = parse_time(text)
        except ValueError:
            log.warning("ignoring unreadable currentTime %r", text)
            return
        jump = self.agent.clock.csms_time(csms_now)
        if jump is not None:
            await self.agent.ask(lambda core, now: core.clock_synchronised(now, jump))

    async def _heartbeat(self, rpc: RpcEndpoint) -> None:
        while True:
            interval = self.configuration.integer("HeartbeatInterval")
            self._heartbeat_changed.clear()
            if interval <= 0:
                await self._heartbeat_changed.wait()
                continue
            # Any exchange proves the link, so the heartbeat waits for a quiet interval.
            quiet_for = time.monotonic() - rpc.last_exchange
            if quiet_for < interval:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._heartbeat_changed.wait(), interval - quiet_for)
                continue
            try:
                answer = await self.agent.outbox.put("Heartbeat", {}, urgent=True)
            except CallErrorReceived as exc:
                # An answer, if not the one we wanted, still proves the link.
                log.warning("the CSMS answered Heartbeat with %s", exc.code)
                continue
            await self._take_time(answer.get("currentTime"))

    async def _report_all_statuses(self) -> None:
        statuses = await self.agent.ask(
            lambda core, now: [(c, *core.status(c)) for c in range(len(core.connectors) + 1)]
        )
        now = self.agent.clock.now()
        for connector_id, status, fault, info in statuses:
            self._status_notification(connector_id, status.value, fault, info, now)

    def _status_notification(self, connector_id: int, status: str, fault: Fault | None,
                             info: str, timestamp: float) -> None:
        payload: dict[str, Any] = {
            "connectorId": connector_id,
            "errorCode": ERROR_CODES.get(fault, "OtherError") if fault else "NoError",
            "status": status,
            "timestamp": format_time(timestamp),
        }
        if fault is not None and fault not in ERROR_CODES:
            payload["vendorErrorCode"] = fault.value[:50]
        if info:
            payload["info"] = info[:50]
        self._fire(self.agent.outbox.put("StatusNotification", payload, urgent=False))

    def _fire(self, future: asyncio.Future) -> None:
        # Volatile messages may die with the link; their loss is expected, not an error.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    # ---- core actions -----------------------------------------------------------------------

    async def handle(self, action: Action) -> None:
        match action:
            case StatusChanged():
                if self.online:
                    self._status_notification(action.connector_id, action.status.value,
                                              action.fault, action.info, action.timestamp)
            case RequestAuthorization(id_tag=id_tag):
                self._spawn(self._authorize(id_tag))
            case TransactionStarted():
                await self._record_start(action)
            case TransactionStopped():
                await self._record_stop(action)
            case MeterValuesReport():
                await self._meter_values(action)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _authorize(self, id_tag: str) -> None:
        info: IdTagInfo | None = None
        if self.online:
            try:
                answer = await self.agent.outbox.put("Authorize", {"idTag": id_tag}, urgent=True)
                info = id_tag_info(answer.get("idTagInfo"))
            except Exception as exc:  # no answer of any kind: decide with what we know
                log.warning("Authorize %s got no answer (%s); deciding offline", id_tag, exc)
        await self.agent.ask(lambda core, now: core.authorization_result(id_tag, info, now))

    def _queued(self, action: str, payload: dict, tx_local_id: int | None,
                stamped_at: float) -> QueuedMessage:
        # Checked once here, where a bug can still be logged next to its cause; the replay
        # path then sends without checking again. The transactionId comes at send time.
        check = payload if action == "StartTransaction" else {**payload, "transactionId": 0}
        try:
            validate(VERSION, CALL, action, check)
        except RpcError as exc:
            # Refused here, where its cause is: a start then never powers the connector, an
            # unrecorded stop is closed again (PowerLoss) at the next start of the agent.
            log.critical("%s built for transaction %s is not valid OCPP: %s %s", action,
                         tx_local_id, exc.details or exc, payload)
            raise
        return QueuedMessage(action, payload, tx_local_id, stamped_at,
                             self.agent.clock.stamp_trusted(stamped_at), self.agent.boot_id)

    async def _record_start(self, action: TransactionStarted) -> None:
        tx = action.transaction
        payload: dict[str, Any] = {
            "connectorId": tx.connector_id,
            "idTag": tx.id_tag,
            "meterStart": round(tx.meter_start_wh),
            "timestamp": format_time(tx.started_at),
        }
        if action.reservation_id is not None:
            payload["reservationId"] = action.reservation_id
        row = TransactionRow(tx.local_id, tx.connector_id, tx.id_tag, tx.parent_id_tag,
                             tx.started_at, tx.meter_start_wh, tx.remote_start, None, None,
                             None, None)
        store = self.agent.store
        entry = await store.run(store.store.record_start, row,
                                self._queued("StartTransaction", payload, tx.local_id,
                                             tx.started_at))
        self.agent.outbox.durable_added(entry)

    async def _record_stop(self, action: TransactionStopped) -> None:
        tx = action.transaction
        payload: dict[str, Any] = {
            "meterStop": round(action.meter_stop_wh),
            "timestamp": format_time(action.stopped_at),
            "reason": action.reason.value,
        }
        if action.id_tag:
            payload["idTag"] = action.id_tag
        data = self._transaction_data(action)
        if data:
            payload["transactionData"] = data
        store = self.agent.store
        entry = await store.run(store.store.record_stop, tx.local_id, action.stopped_at,
                                action.meter_stop_wh, action.reason.value,
                                self._queued("StopTransaction", payload, tx.local_id,
                                             action.stopped_at))
        self.agent.outbox.durable_added(entry)

    def _transaction_data(self, action: TransactionStopped) -> list[dict]:
        sampled = self.configuration.items("StopTxnSampledData")
        aligned = self.configuration.items("StopTxnAlignedData")
        offered = self.agent.offered_amps(action.transaction.connector_id)
        values = []
        for sample in action.transaction.samples:
            measurands = aligned if sample.context is ReadingContext.CLOCK else sampled
            if measurands:
                value = meter_value(sample, measurands, offered)
                if value["sampledValue"]:
                    values.append(value)
        return values

    async def _meter_values(self, action: MeterValuesReport) -> None:
        key = ("MeterValuesAlignedData" if action.sample.context is ReadingContext.CLOCK
               else "MeterValuesSampledData")
        measurands = self.configuration.items(key)
        value = meter_value(action.sample, measurands,
                            self.agent.offered_amps(action.connector_id))
        if not value["sampledValue"]:
            return
        payload = {"connectorId": action.connector_id, "meterValue": [value]}
        tx = action.transaction
        if tx is None:
            if self.online:  # readings outside a session are not worth keeping for later
                self._fire(self.agent.outbox.put("MeterValues", payload, urgent=False))
            return
        store = self.agent.store
        entry = await store.run(store.store.enqueue,
                                self._queued("MeterValues", payload, tx.local_id,
                                             action.sample.timestamp))
        self.agent.outbox.durable_added(entry)

    # ---- the durable queue's hooks -----------------------------------------------------------

    async def _prepare(self, entry: OutboxEntry) -> dict | None:
        self._start_settled()  # one durable message at a time: whatever went before is over
        starting = entry.action == "StartTransaction"
        if starting and entry.tx_local_id is not None and (
            await self._csms_id(entry.tx_local_id) is not None
        ):
            # Confirmed before a crash hid the answer from the queue: sending it again would
            # open a second session at a CSMS that does not deduplicate by message id.
            return None
        if starting:
            self._start_in_flight = asyncio.Event()
        shift = self._time_correction(entry)
        if shift:
            payload = copy.deepcopy(entry.payload)
            _shift_timestamps(payload, shift)
        else:
            payload = dict(entry.payload)  # only top-level keys change below
        if entry.tx_local_id is not None and not starting:
            csms_id = await self._csms_id(entry.tx_local_id)
            if csms_id is None:
                log.error("%s for local transaction %d cannot be sent: the CSMS never gave "
                          "it an id; dropped", entry.action, entry.tx_local_id)
                return None
            payload["transactionId"] = csms_id
        return payload

    def _time_correction(self, entry: OutboxEntry) -> float:
        """How far to move the stamps of a message queued before the time was known."""
        clock = self.agent.clock
        if entry.clock_trusted or not clock.trusted:
            return 0.0
        if entry.boot_id == self.agent.boot_id:
            return clock.correction
        # Queued by an earlier run that never learnt the time. Its stamps are kept as they
        # are when they could be true; a 1970-style or future clock is moved so its last stamp
        # falls just before this run started, keeping the order and spacing of its events.
        last = self.agent.untrusted_boots.get(entry.boot_id)
        started = clock.process_start()
        if last is None or PLAUSIBLE_FLOOR <= last <= started:
            return 0.0
        return started - 1.0 - last

    async def _csms_id(self, local_id: int) -> int | None:
        if local_id not in self._csms_ids:
            store = self.agent.store
            row = await store.run(store.store.transaction, local_id)
            if row is None or row.csms_id is None:
                return None
            self._csms_ids[local_id] = row.csms_id
        return self._csms_ids[local_id]

    async def _delivered(self, entry: OutboxEntry, answer: dict) -> None:
        if entry.action == "StartTransaction":
            # Shielded: once the id is stored the start is never sent again, so the core must
            # hear of it even if the link dies halfway.
            try:
                await asyncio.shield(self._start_confirmed(entry, answer))
            finally:
                self._start_settled()
        elif entry.action == "StopTransaction" and "idTagInfo" in answer:
            id_tag = entry.payload.get("idTag")
            if id_tag:
                info = id_tag_info(answer["idTagInfo"])
                await self.agent.ask(
                    lambda core, now: core.id_tag_info_received(id_tag, info, now)
                )

    async def _start_confirmed(self, entry: OutboxEntry, answer: dict) -> None:
        assert entry.tx_local_id is not None
        local_id = entry.tx_local_id
        csms_id = answer.get("transactionId")
        if not isinstance(csms_id, int):
            log.error("StartTransaction.conf without a usable transactionId: %s", answer)
            return
        info = id_tag_info(answer.get("idTagInfo"))
        store = self.agent.store
        await store.run(store.store.set_csms_id, local_id, csms_id)
        self._csms_ids[local_id] = csms_id
        await self.agent.ask(
            lambda core, now: core.transaction_confirmed(local_id, csms_id, info, now)
        )

    def _start_settled(self) -> None:
        if self._start_in_flight is not None:
            self._start_in_flight.set()
            self._start_in_flight = None

    # ---- calls from the CSMS -----------------------------------------------------------------

    async def _on_call(self, action: str, payload: dict) -> dict:
        handler = self._handlers.get(action)
        if handler is None:
            raise RpcError("NotSupported", f"{action} is not supported by this charge point")
        if self.registration == "Rejected":
            # OCPP 1.6 4.2: while Rejected the charge point does not respond to the CSMS.
            raise NoReply("the central system rejected this station's BootNotification")
        return await handler(payload)

    def _connector_ok(self, connector_id: int, *, station: bool) -> bool:
        low = 0 if station else 1
        return low <= connector_id <= self.agent.config.station.connectors

    async def _change_availability(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        if not self._connector_ok(connector_id, station=True):
            return {"status": "Rejected"}
        operative = payload["type"] == "Operative"
        status = await self.agent.ask(
            lambda core, now: core.change_availability(connector_id, operative, now)
        )
        return {"status": status.value}

    async def _change_configuration(self, payload: dict) -> dict:
        name, value = canonical_key(payload["key"]), payload["value"]
        if name is None:
            return {"status": "NotSupported"}
        try:
            canonical = self.configuration.change(name, value)
        except PermissionError:
            return {"status": "Rejected"}
        except InvalidValue as exc:
            log.info("ChangeConfiguration rejected: %s", exc)
            return {"status": "Rejected"}
        await self._store_setting(name, canonical)
        return {"status": "Accepted"}

    async def _store_setting(self, name: str, value: str) -> None:
        self.configuration.values[name] = value
        store = self.agent.store
        await store.run(store.store.put_setting, name, value)
        await self.agent.ask(lambda core, now: self.apply_settings(core))
        if name == "HeartbeatInterval":
            self._heartbeat_changed.set()

    async def _get_configuration(self, payload: dict) -> dict:
        wanted = payload.get("key")
        names = list(KEYS) if not wanted else list(dict.fromkeys(wanted))
        known = list(dict.fromkeys(k for n in names if (k := canonical_key(n)) is not None))
        unknown = [n for n in names if canonical_key(n) is None]
        answer: dict[str, Any] = {
            "configurationKey": [
                {"key": n, "readonly": KEYS[n].readonly, "value": self.configuration.values[n]}
                for n in known
            ]
        }
        if unknown:
            answer["unknownKey"] = unknown
        return answer

    async def _clear_cache(self, payload: dict) -> dict:
        await self.agent.clear_auth_cache()
        return {"status": "Accepted"}

    async def _get_local_list_version(self, payload: dict) -> dict:
        # OCPP 1.6 5.10: 0 stands for an empty list, whatever version emptied it.
        empty = not self.agent.core.local_list
        return {"listVersion": 0 if empty else self.agent.local_list_version}

    async def _send_local_list(self, payload: dict) -> dict:
        version = payload["listVersion"]
        entries = payload.get("localAuthorizationList") or []
        full = payload["updateType"] == "Full"
        if len(entries) > self.configuration.integer("SendLocalListMaxLength"):
            log.warning("SendLocalList with %d entries exceeds SendLocalListMaxLength",
                        len(entries))
            return {"status": "Failed"}
        if not full and version <= self.agent.local_list_version:
            return {"status": "VersionMismatch"}
        changes = {e["idTag"]: id_tag_info(e["idTagInfo"]) if "idTagInfo" in e else None
                   for e in entries}
        current = set() if full else set(self.agent.core.local_list)
        after = (current | {t for t, i in changes.items() if i is not None}) - {
            t for t, i in changes.items() if i is None}
        if len(after) > self.configuration.integer("LocalAuthListMaxLength"):
            log.warning("SendLocalList would hold %d entries, more than LocalAuthListMaxLength",
                        len(after))
            return {"status": "Failed"}
        await self.agent.write_local_list(version, changes, replace=full)
        log.info("local list %s update to version %d: %d entries now", payload["updateType"],
                 version, len(after))
        return {"status": "Accepted"}

    async def _data_transfer(self, payload: dict) -> dict:
        log.info("DataTransfer from vendor %r ignored: no vendor extension is installed",
                 payload.get("vendorId"))
        return {"status": "UnknownVendorId"}

    async def _remote_start(self, payload: dict) -> dict:
        connector_id = payload.get("connectorId")
        if self.registration != "Accepted":
            return {"status": "Rejected"}  # OCPP 1.6 4.2.1: not while Pending
        if connector_id is not None and not self._connector_ok(connector_id, station=False):
            return {"status": "Rejected"}
        if "chargingProfile" in payload:
            # Accepting the start and charging past the CSMS's limit would break its load
            # balancing: refuse until the limit can be applied (Smart Charging profile).
            log.warning("RemoteStartTransaction rejected: it carries a charging profile and "
                        "this build does not support Smart Charging yet")
            return {"status": "Rejected"}
        id_tag = payload["idTag"]
        started = await self.agent.ask(
            lambda core, now: core.remote_start(id_tag, connector_id, now)
        )
        return {"status": "Accepted" if started else "Rejected"}

    async def _remote_stop(self, payload: dict) -> dict:
        if self.registration != "Accepted":
            return {"status": "Rejected"}
        transaction_id = payload["transactionId"]

        def stop(core: ChargingStation, now: float) -> bool:
            return core.stop_transaction(transaction_id, StopReason.REMOTE, now)

        stopped = await self.agent.ask(stop)
        in_flight = self._start_in_flight
        if not stopped and in_flight is not None:
            # The id may be the one a StartTransaction.conf just brought, still on its way to
            # the core (the answer and this call can arrive back to back): look again once it
            # is there, waiting no longer than that call may take.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(in_flight.wait(), self.agent.config.csms.call_timeout)
            stopped = await self.agent.ask(stop)
        return {"status": "Accepted" if stopped else "Rejected"}

    async def _reset(self, payload: dict) -> dict:
        hard = payload["type"] == "Hard"
        # Answer first; the sessions stop and the agent restarts once the answer is out.
        self._spawn(self._reset_after_answer(hard))
        return {"status": "Accepted"}

    async def _reset_after_answer(self, hard: bool) -> None:
        await asyncio.sleep(0.05)
        await self.agent.ask(lambda core, now: core.reset(hard, now))

    async def _unlock_connector(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        if not self._connector_ok(connector_id, station=False) or not self.agent.has_lock(
                connector_id):
            return {"status": "NotSupported"}  # a tethered cable has nothing to unlock
        await self.agent.ask(lambda core, now: core.unlock(connector_id, now))
        unlocked = await self.agent.unlock_hardware(connector_id)
        if unlocked is None:
            return {"status": "NotSupported"}
        return {"status": "Unlocked" if unlocked else "UnlockFailed"}


def _shift_timestamps(payload: Any, seconds: float) -> None:
    """Correct the stamps taken before the clock was known (every queued date is a
    `timestamp` field in 1.6 transaction messages)."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "timestamp" and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    payload[key] = format_time(parse_time(value) + seconds)
            else:
                _shift_timestamps(value, seconds)
    elif isinstance(payload, list):
        for item in payload:
            _shift_timestamps(item, seconds)
