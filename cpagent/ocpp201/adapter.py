"""OCPP 2.0.1: the charging core's events as 2.0.1 messages, and 2.0.1 calls as core commands.

The core's transaction reference is the charger-made transactionId 2.0.1 wants (a UUID, 36
characters), and its event sequence numbers are the seqNo: every queued event renders as one
TransactionEvent. Settings are device-model variables (see `device_model`); those that mean
what a 1.6 key means are the same stored value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from cpagent.clock import format_time
from cpagent.core.actions import (
    Action,
    ChargingLimitChanged,
    MeterValuesReport,
    RequestAuthorization,
    ReservationEnded,
    StatusChanged,
    TransactionEvent,
    TxEventKind,
)
from cpagent.core.model import (
    AuthInfo,
    ConnectorStatus,
    CoreSettings,
    IdToken,
    ReadingContext,
    TokenType,
    Trigger,
)
from cpagent.core.station import ChargingStation, RemoteStartResult
from cpagent.host import (
    AdapterHost,
    BootAnswer,
    Endpoint,
    Handler,
    Message,
    Registration,
    RetryPolicy,
    Undeliverable,
)
from cpagent.logs import RateLimited
from cpagent.ocpp201 import certificates, reservations
from cpagent.ocpp201.device_model import (
    BYTES_PER_MESSAGE,
    ITEMS_PER_MESSAGE,
    LOCAL_LIST_MAX,
    NETWORK_SLOTS,
    SEND_LOCAL_LIST_BYTES,
    SEND_LOCAL_LIST_ITEMS,
    VALUE_SIZE,
    Address,
    DeviceModel,
    InvalidValue,
    split_parts,
)
from cpagent.ocpp201.metering import meter_value
from cpagent.ocpp201.smart_charging import SmartCharging
from cpagent.ocpp201.vocabulary import (
    BOOT_REASONS,
    CHARGING_STATES,
    MAX_ID_TOKEN,
    SECURITY_EVENTS,
    TRIGGERS,
    TX_POINTS,
    connector_status,
    id_token_info,
    stopped_reason,
    token_from_wire,
    token_to_wire,
)
from cpagent.records import (
    SECURITY_EVENT,
    TRANSACTION_EVENT,
    OutboxEntry,
    event_from_json,
    shifted,
)
from cpagent.rpc import ConnectionLost, RpcError
from cpagent.schedule_wire import InvalidProfile
from cpagent.security_events import SecurityEvent, notification
from cpagent.settings import password_bytes, password_key, password_problem
from hal.interfaces import Fault

log = logging.getLogger(__name__)
quiet = RateLimited(log, every=30.0)

VERSION = "2.0.1"
STATUS_RETRY = 10.0
TRIGGER_DELAY = 0.05  # a triggered message follows the answer to TriggerMessage
# While the boot is Pending the CSMS may configure and inspect the station, nothing more.
ALLOWED_WHILE_PENDING = frozenset({
    "GetVariables", "SetVariables", "GetBaseReport", "GetReport", "TriggerMessage",
    "SetNetworkProfile", "Reset", "DataTransfer", "ChangeAvailability", "ClearCache",
    "GetLocalListVersion", "SendLocalList", "GetTransactionStatus",
    # Answered, with Rejected: no transaction begins or ends by the CSMS's word before then.
    "RequestStartTransaction", "RequestStopTransaction",
})
_METER_TRIGGERS = {Trigger.METER_VALUE_PERIODIC, Trigger.METER_VALUE_CLOCK, Trigger.TRIGGER}
_SECURITY_PROFILES = {1, 2}  # 3 (client certificates) arrives with certificate management


def _size(entry: Any) -> int:
    return len(json.dumps(entry, separators=(",", ":")))


class _Live:
    """The live values of the device model, read from the station as they are now."""

    def __init__(self, adapter: Ocpp201Adapter) -> None:
        self._adapter = adapter

    def station_status(self) -> tuple[str, bool]:
        status, fault, _ = self._adapter.host.core.status(0)
        return connector_status(status, False), fault is not None

    def value(self, name: str, evse_id: int, connector_id: int) -> str:
        host = self._adapter.host
        info = host.info
        core = host.core
        match name:
            case "availability_state" | "problem":
                if evse_id == 0:
                    state, problem = self.station_status()
                else:
                    status, fault, _ = core.status(evse_id, connector_id or 1)
                    vehicle = core.evse(evse_id).pilot.vehicle_present
                    state, problem = connector_status(status, vehicle), fault is not None
                if name == "problem":
                    return "true" if problem else "false"
                return state
            case "supply_phases":
                return str(next(iter(info.evses.values())).phases if evse_id == 0
                           else info.evses[evse_id].phases)
            case "power":
                evse = info.evses[evse_id]
                return f"{evse.max_current * evse.voltage * evse.phases:g}"
            case "connector_type":
                # A socket with a lock takes the driver's cable; without one the cable is
                # fixed to the station.
                return "sType2" if info.evses[evse_id].has_lock else "cType2"
            case "model":
                return info.model
            case "vendor":
                return info.vendor
            case "identity":
                return info.identity
            case "date_time":
                return format_time(host.clock.now())
            case "security_profile":
                return str(host.link.info().security_profile)
            case "certificate_entries":
                return str(len(host.certificates.installed()))
            case "local_list_entries":
                return str(len(core.local_list))
            case "active_network_profile":
                return str(self._adapter.active_slot)
            case "file_transfer_protocols":
                return ""  # no file transfer in this build yet
            case "message_timeout":
                return str(round(self._adapter.call_timeout))
            case "backoff_random_range":
                return "0"
            case "backoff_repeat_times":
                return "10"
            case "backoff_wait_minimum":
                return "1"
            case "charging_profile_entries":
                return str(len(core.profiles))
            case "rate_units":
                return "A,W"
        raise KeyError(name)


class Ocpp201Adapter:
    version: ClassVar[str] = VERSION
    subprotocol: ClassVar[str] = "ocpp2.0.1"
    max_token_length: ClassVar[int] = MAX_ID_TOKEN

    def __init__(self, host: AdapterHost) -> None:
        self.host = host
        self.call_timeout = 30.0
        self.model = DeviceModel({e: i.connectors for e, i in host.info.evses.items()},
                                 host.shared, _Live(self))
        self.registration: Registration | None = None
        self.is_online = False
        self.active_slot = 1
        self._slots: dict[str, dict] = {}
        self._raise_told: set[str] = set()  # slots whose failed raise was reported
        self._tasks: set[asyncio.Task] = set()
        self._delivered_any: set[str] = set()  # transactions this CSMS has heard of
        self._held: dict[str, str] = {}  # transaction -> its event the CSMS refused for good
        self._statuses_sent: dict[tuple[int, int], str] = {}
        self._problems: dict[tuple[int, int], tuple[Fault | None, str]] = {}
        self._status_retries: dict[tuple[int, int], asyncio.TimerHandle] = {}
        self._event_ids = 0
        self.smart_charging = SmartCharging(host, self.model)
        self.handlers: Mapping[str, Handler] = {
            "GetVariables": self._get_variables,
            "SetVariables": self._set_variables,
            "GetBaseReport": self._get_base_report,
            "GetReport": self._get_report,
            "ChangeAvailability": self._change_availability,
            "Reset": self._reset,
            "RequestStartTransaction": self._request_start,
            "RequestStopTransaction": self._request_stop,
            "GetTransactionStatus": self._get_transaction_status,
            "TriggerMessage": self._trigger_message,
            "UnlockConnector": self._unlock_connector,
            "ClearCache": self._clear_cache,
            "SendLocalList": self._send_local_list,
            "GetLocalListVersion": self._get_local_list_version,
            "DataTransfer": self._data_transfer,
            "SetNetworkProfile": self._set_network_profile,
            "SetChargingProfile": self.smart_charging.set_charging_profile,
            "GetChargingProfiles": self.smart_charging.get_charging_profiles,
            "ClearChargingProfile": self.smart_charging.clear_charging_profile,
            "GetCompositeSchedule": self.smart_charging.get_composite_schedule,
            "InstallCertificate": lambda p: certificates.install_certificate(self.host, p),
            "DeleteCertificate": lambda p: certificates.delete_certificate(self.host, p),
            "GetInstalledCertificateIds":
                lambda p: certificates.get_installed_certificate_ids(self.host, p),
            "CertificateSigned": lambda p: certificates.certificate_signed(self.host, p),
            "ReserveNow": lambda p: reservations.reserve_now(self, p),
            "CancelReservation": lambda p: reservations.cancel_reservation(self, p),
        }

    # ---- settings ---------------------------------------------------------------------------

    async def load(self) -> None:
        known = {a.key for a in self.model.addresses}
        self.model.own = {k: v for k, v in (await self.host.storage.variables()).items()
                          if k in known}
        self._delivered_any = set(await self.host.storage.states("tx"))
        self._held = {ref: uid for ref, uid in (await self.host.storage.states("held")).items()}
        self._slots = await self.host.storage.states("network")
        self._apply_network()

    def tune(self, core: CoreSettings) -> None:
        model = self.model
        core.start_points = frozenset(TX_POINTS[p] for p in model.items("TxCtrlr",
                                                                         "TxStartPoint")
                                      if p in TX_POINTS) or core.start_points
        core.stop_points = frozenset(TX_POINTS[p] for p in model.items("TxCtrlr", "TxStopPoint")
                                     if p in TX_POINTS) or core.stop_points
        sampled = model.flag("SampledDataCtrlr", "Enabled")
        aligned = model.flag("AlignedDataCtrlr", "Enabled")
        if not sampled:
            core.update_interval = 0.0
        core.history_interval = float(model.integer("SampledDataCtrlr", "TxEndedInterval")) \
            if sampled and model.items("SampledDataCtrlr", "TxEndedMeasurands") else 0.0
        if not aligned:
            core.aligned_interval = 0.0
        core.aligned_history_interval = float(model.integer("AlignedDataCtrlr",
                                                            "TxEndedInterval")) \
            if aligned and model.items("AlignedDataCtrlr", "TxEndedMeasurands") else 0.0
        core.aligned_during_transaction = not model.flag("AlignedDataCtrlr", "SendDuringIdle")
        core.limit_change_significance = float(model.text("SmartChargingCtrlr",
                                                          "LimitChangeSignificance"))
        core.report_rate_changes = True
        lifetime = model.integer("AuthCacheCtrlr", "LifeTime")
        core.auth_cache_lifetime = float(lifetime) if lifetime > 0 else None
        core.reservation_ends_at_start = False  # used once its token is accepted (H03.FR.09)
        if not model.flag("AuthCtrlr", "Enabled"):
            # No authorization at all: every plug-in charges (2.0.1 NoAuthorization).
            core.free_vend_token = IdToken("", TokenType.NO_AUTHORIZATION)

    def ping_interval(self) -> float:
        return float(self.model.integer("OCPPCommCtrlr", "WebSocketPingInterval"))

    def heartbeat_interval(self) -> float:
        return float(self.model.integer("OCPPCommCtrlr", "HeartbeatInterval"))

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=lambda: self.model.integer("OCPPCommCtrlr",
                                                "MessageAttemptsTransactionEvent"),
            interval=lambda: float(self.model.integer(
                "OCPPCommCtrlr", "MessageAttemptIntervalTransactionEvent")))

    def wire_transaction_id(self, ref: str) -> str:
        return ref

    # ---- boot --------------------------------------------------------------------------------

    def boot_request(self, reason: str | None = None) -> dict:
        info = self.host.info
        station: dict[str, Any] = {"model": info.model[:20], "vendorName": info.vendor[:50],
                                   "firmwareVersion": info.firmware_version[:50]}
        if info.serial:
            station["serialNumber"] = info.serial[:25]
        return {"reason": reason or BOOT_REASONS[self.host.boot_reason],
                "chargingStation": station}

    def read_boot_answer(self, answer: dict) -> BootAnswer:
        status = answer.get("status")
        interval = answer.get("interval")
        return BootAnswer(
            Registration(status) if status in ("Accepted", "Pending", "Rejected") else None,
            float(interval) if isinstance(interval, int) and interval > 0 else 0.0,
            answer.get("currentTime") if isinstance(answer.get("currentTime"), str) else None)

    async def boot_accepted(self, answer: BootAnswer) -> None:
        self.registration = Registration.ACCEPTED
        if answer.interval > 0:
            await self.host.put_shared("heartbeat_interval", str(int(answer.interval)))
        log.info("BootNotification accepted; heartbeat every %s s", self.heartbeat_interval())

    def gate(self, action: str, registration: Registration | None) -> Exception | None:
        self.registration = registration
        if registration is Registration.ACCEPTED:
            return None
        if registration is Registration.REJECTED:
            return RpcError("SecurityError", "the CSMS rejected this station's "
                                             "BootNotification")
        if action not in ALLOWED_WHILE_PENDING:
            return RpcError("SecurityError", f"{action} is not allowed before the "
                                             "BootNotification is accepted")
        return None

    # ---- a connection ------------------------------------------------------------------------

    async def online(self) -> None:
        self.is_online = True
        await self._profile_settled()
        self._statuses_sent.clear()
        views = await self.host.ask(lambda core, now: [
            (e.id, c, *core.status(e.id, c), e.pilot.vehicle_present)
            for e in core.evses.values() for c in e.connectors] + [(0, 0, *core.status(0),
                                                                    False)])
        now = self.host.clock.now()
        for evse_id, connector_id, status, fault, info, vehicle in views:
            if evse_id:
                self._status_notification(evse_id, connector_id, status, vehicle, now)
            self._problem(evse_id, connector_id, fault, info, now, force=fault is not None)

    async def offline(self) -> None:
        self.is_online = False
        for handle in self._status_retries.values():
            handle.cancel()
        self._status_retries.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, action: str, payload: dict, *, urgent: bool = False) -> asyncio.Future:
        future = self.host.queue.send(action, payload, urgent=urgent)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    def _status_notification(self, evse_id: int, connector_id: int, status: ConnectorStatus,
                             vehicle: bool, timestamp: float) -> None:
        wire = connector_status(status, vehicle)
        key = (evse_id, connector_id)
        if self._statuses_sent.get(key) == wire:
            return  # a change 2.0.1 has no word for (SuspendedEV and Charging are Occupied)
        self._statuses_sent[key] = wire
        future = self.host.queue.send("StatusNotification", {
            "timestamp": format_time(timestamp), "connectorStatus": wire, "evseId": evse_id,
            "connectorId": connector_id})
        future.add_done_callback(lambda f, k=key: self._status_sent(k, f))

    def _status_sent(self, key: tuple[int, int], future: asyncio.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if not isinstance(exc, RpcError) or not self.is_online:
            return
        # Status is state, not history: the CSMS must end up with the status as it is now.
        self._statuses_sent.pop(key, None)
        quiet.warning(f"status-{key}", "the CSMS refused StatusNotification of EVSE %d "
                      "connector %d (%s); sending the current status again in %g s",
                      *key, exc, STATUS_RETRY)
        old = self._status_retries.pop(key, None)
        if old is not None:
            old.cancel()
        self._status_retries[key] = asyncio.get_running_loop().call_later(
            STATUS_RETRY, lambda: self._spawn(self._resend_status(key)))

    async def _resend_status(self, key: tuple[int, int], force: bool = False) -> None:
        self._status_retries.pop(key, None)
        if not self.is_online:
            return
        if force:  # asked for: sent even though nothing changed
            self._statuses_sent.pop(key, None)
        evse_id, connector_id = key
        status, vehicle = await self.host.ask(lambda core, now: (
            core.status(evse_id, connector_id)[0], core.evse(evse_id).pilot.vehicle_present))
        self._status_notification(evse_id, connector_id, status, vehicle,
                                  self.host.clock.now())

    def _problem(self, evse_id: int, connector_id: int, fault: Fault | None, info: str,
                 timestamp: float, force: bool = False) -> None:
        """Hardware faults the 2.0.1 way: a NotifyEvent on the component's Problem variable
        when one appears, and again, cleared, when it goes."""
        key = (evse_id, connector_id)
        before = self._problems.get(key, (None, ""))
        if (fault, info) == before and not force:
            return
        self._problems[key] = (fault, info)
        if fault is None and before[0] is None:
            return
        if evse_id == 0:
            component: dict[str, Any] = {"name": "ChargingStation"}
        else:
            component = {"name": "Connector", "evse": {"id": evse_id,
                                                       "connectorId": connector_id}}
        self._event_ids += 1
        event: dict[str, Any] = {
            "eventId": self._event_ids, "timestamp": format_time(timestamp),
            "trigger": "Delta", "actualValue": "true" if fault else "false",
            "eventNotificationType": "HardWiredNotification", "component": component,
            "variable": {"name": "Problem"}, "cleared": fault is None}
        shown = fault or before[0]
        if shown is not None:
            event["techCode"] = shown.value[:50]
        if fault is not None and info:
            event["techInfo"] = info[:500]
        self._send("NotifyEvent", {"generatedAt": format_time(timestamp), "seqNo": 0,
                                   "tbc": False, "eventData": [event]})

    # ---- core actions -----------------------------------------------------------------------

    async def handle(self, action: Action) -> None:
        match action:
            case StatusChanged():
                if not self.is_online:
                    return
                if action.evse_id:
                    self._status_notification(action.evse_id, action.connector_id,
                                              action.status, action.vehicle_present,
                                              action.timestamp)
                self._problem(action.evse_id, action.connector_id, action.fault, action.info,
                              action.timestamp)
            case RequestAuthorization(token=token):
                self._spawn(self._authorize(token))
            case ReservationEnded():
                await reservations.report_end(self.host, action)
            case ChargingLimitChanged():
                self.smart_charging.limit_changed(action, tell=self.is_online)
            case MeterValuesReport(evse_id=evse_id, sample=sample):
                if self.is_online:
                    measurands = ("AlignedDataCtrlr", "Measurands") \
                        if sample.context is ReadingContext.CLOCK else \
                        ("SampledDataCtrlr", "TxUpdatedMeasurands")
                    value = meter_value(sample, self.model.items(*measurands))
                    if value is not None:
                        self._send("MeterValues", {"evseId": evse_id, "meterValue": [value]})

    def _security_event_message(self, record: dict, shift: float) -> Message:
        return Message("SecurityEventNotification", notification(
            SECURITY_EVENTS, record.get("event", ""), float(record["timestamp"]) + shift,
            str(record.get("tech_info", ""))))

    async def station_event(self, event: SecurityEvent, text: str) -> None:
        future = self.host.queue.send("SecurityEventNotification", notification(
            SECURITY_EVENTS, event, self.host.clock.now(), text), urgent=True)
        with contextlib.suppress(Exception):
            await future

    async def _authorize(self, token: IdToken) -> None:
        info: AuthInfo | None = None
        if self.is_online:
            try:
                answer = await self.host.queue.send("Authorize",
                                                    {"idToken": token_to_wire(token)},
                                                    urgent=True)
                info = id_token_info(answer.get("idTokenInfo"))
            except Exception as exc:  # no answer of any kind: decide with what we know
                log.warning("Authorize %s got no answer (%s); deciding offline", token, exc)
        await self.host.ask(lambda core, now: core.authorization_result(token, info, now))

    # ---- the durable queue: each event is one TransactionEvent -------------------------------

    async def render(self, entry: OutboxEntry, shift: float) -> list[Message]:
        if entry.kind == SECURITY_EVENT:
            return [self._security_event_message(entry.record, shift)]
        if entry.kind == reservations.RESERVATION_UPDATE:
            return [reservations.update_message(entry.record)]
        if entry.kind != TRANSACTION_EVENT:
            log.warning("no OCPP 2.0.1 message for a queued %s record; skipped", entry.kind)
            return []
        held = self._held.get(entry.tx_ref) if entry.tx_ref is not None else None
        if held == entry.unique_id:
            # The operator sent the refused event back (`cpagent queue retry`): the ones
            # behind it may follow once it is through.
            del self._held[entry.tx_ref]
            await self.host.storage.put_state("held", entry.tx_ref, None)
        elif held is not None:
            # seqNo order: an event never overtakes its transaction's refused one.
            raise Undeliverable(f"transaction {entry.tx_ref} waits behind its event "
                                f"{held}, which the CSMS refused")
        event = shifted(event_from_json(entry.record), shift)
        return [Message("TransactionEvent", self._transaction_event(event))]

    def _transaction_event(self, event: TransactionEvent) -> dict:
        kind = {TxEventKind.STARTED: "Started", TxEventKind.UPDATED: "Updated",
                TxEventKind.ENDED: "Ended"}[event.kind]
        info: dict[str, Any] = {"transactionId": event.ref,
                                "chargingState": CHARGING_STATES[event.charging_state]}
        if event.kind is TxEventKind.ENDED:
            info["stoppedReason"] = stopped_reason(event.reason, event.cause)
        if event.remote_start_id is not None and (event.trigger is Trigger.REMOTE_START or (
                event.kind is TxEventKind.STARTED and event.authorized_now)):
            info["remoteStartId"] = event.remote_start_id
        payload: dict[str, Any] = {
            "eventType": kind, "timestamp": format_time(event.timestamp),
            "triggerReason": TRIGGERS[event.trigger], "seqNo": event.seq,
            "transactionInfo": info,
        }
        if event.offline:
            payload["offline"] = True
        first_here = event.ref not in self._delivered_any
        if event.kind is TxEventKind.STARTED or first_here or \
                event.trigger is Trigger.CABLE_PLUGGED_IN:
            payload["evse"] = {"id": event.evse_id, "connectorId": event.connector_id}
        if event.kind is TxEventKind.STARTED:
            phases = self.host.info.evses.get(event.evse_id)
            if phases is not None:
                payload["numberOfPhasesUsed"] = phases.phases
        # On the event that used the reservation: the start, or the authorization of a
        # transaction the cable began.
        if event.reservation_id is not None and (event.kind is TxEventKind.STARTED
                                                 or event.authorized_now):
            payload["reservationId"] = event.reservation_id
        token = event.token
        if event.stopped_by is not None:
            payload["idToken"] = token_to_wire(event.stopped_by)  # the card that ended it
        elif token is not None and (event.authorized_now or (
                first_here and event.kind is not TxEventKind.STARTED)):
            payload["idToken"] = token_to_wire(token)
        values = self._meter_values(event)
        if values:
            payload["meterValue"] = values
        return payload

    def _meter_values(self, event: TransactionEvent) -> list[dict]:
        model = self.model
        if event.kind is TxEventKind.STARTED:
            pairs = [(s, model.items("SampledDataCtrlr", "TxStartedMeasurands"))
                     for s in event.samples]
        elif event.kind is TxEventKind.ENDED:
            pairs = [(s, model.items("AlignedDataCtrlr", "TxEndedMeasurands")
                      if s.context is ReadingContext.CLOCK
                      else model.items("SampledDataCtrlr", "TxEndedMeasurands"))
                     for s in event.samples]
        elif event.trigger in _METER_TRIGGERS:
            pairs = [(s, model.items("AlignedDataCtrlr", "Measurands")
                      if s.context is ReadingContext.CLOCK
                      else model.items("SampledDataCtrlr", "TxUpdatedMeasurands"))
                     for s in event.samples]
        else:
            pairs = []
        values = [meter_value(sample, measurands) for sample, measurands in pairs]
        return [v for v in values if v is not None]

    async def delivered(self, entry: OutboxEntry, message: Message, answer: dict) -> None:
        ref = entry.tx_ref
        if ref is None:
            return
        if ref not in self._delivered_any:
            self._delivered_any.add(ref)
            await self.host.storage.put_state("tx", ref, {"delivered": True})
        if "idTokenInfo" in answer:
            info = id_token_info(answer["idTokenInfo"])
            await self.host.ask(lambda core, now: core.transaction_authorization(ref, info,
                                                                                  now))

    def final_refusal(self, entry: OutboxEntry, message: Message) -> str | None:
        if entry.tx_ref is None:
            return "kept for the operator"
        if entry.tx_ref not in self._held:
            # Remembered, also across restarts, so that the transaction's later events wait
            # with it in the dead letters and go out after it, in seqNo order.
            self._held[entry.tx_ref] = entry.unique_id
            self._spawn(self.host.storage.put_state("held", entry.tx_ref, entry.unique_id))
        return "its transaction's later events wait with it"

    # ---- device model ------------------------------------------------------------------------

    def _check_limits(self, items: list, kind: str) -> None:
        if len(items) > ITEMS_PER_MESSAGE[kind]:
            raise RpcError("OccurrenceConstraintViolation",
                           f"more than ItemsPerMessage{kind} ({ITEMS_PER_MESSAGE[kind]}) items")
        if _size(items) > BYTES_PER_MESSAGE[kind]:
            raise RpcError("FormatViolation",
                           f"larger than BytesPerMessage{kind} ({BYTES_PER_MESSAGE[kind]})")

    async def _get_variables(self, payload: dict) -> dict:
        requests = payload["getVariableData"]
        self._check_limits(requests, "GetVariables")
        results = []
        for item in requests:
            attribute = item.get("attributeType", "Actual")
            result: dict[str, Any] = {"component": item["component"],
                                      "variable": item["variable"],
                                      "attributeType": attribute}
            status, address = self.model.find(item["component"], item["variable"])
            if address is not None and attribute != "Actual":
                status = "NotSupportedAttributeType"
            elif address is not None:
                value = self.model.reported_value(address)
                if value is None:
                    status = "Rejected"  # write-only: never read back
                    result["attributeStatusInfo"] = {"reasonCode": "WriteOnly"}
                else:
                    result["attributeValue"] = value
            result["attributeStatus"] = status
            results.append(result)
        return {"getVariableResult": results}

    async def _set_variables(self, payload: dict) -> dict:
        requests = payload["setVariableData"]
        self._check_limits(requests, "SetVariables")
        results = []
        for item in requests:
            attribute = item.get("attributeType", "Actual")
            result: dict[str, Any] = {"component": item["component"],
                                      "variable": item["variable"],
                                      "attributeType": attribute}
            status, address = self.model.find(item["component"], item["variable"])
            if address is not None:
                status, why = await self._set(address, attribute, item["attributeValue"])
                if why:
                    result["attributeStatusInfo"] = {"reasonCode": why[0],
                                                     "additionalInfo": why[1][:512]}
            result["attributeStatus"] = status
            results.append(result)
        return {"setVariableResult": results}

    async def _set(self, address: Address, attribute: str,
                   value: str) -> tuple[str, tuple[str, str] | None]:
        variable = address.variable
        if attribute != "Actual":
            return "NotSupportedAttributeType", None
        if not variable.writable:
            return "Rejected", ("ReadOnly", f"{variable.name} cannot be set")
        if len(value) > VALUE_SIZE:
            return "Rejected", ("ValueTooLarge", f"values take at most {VALUE_SIZE} characters")
        try:
            canonical = variable.normalise(value)
            self._check_value(address, canonical)
        except InvalidValue as exc:
            return "Rejected", ("InvalidValue", f"{variable.name} {exc}")
        secret = variable.name == "BasicAuthPassword"
        # The stored form of the password is its bytes in hex, not a value of the variable.
        previous = self.host.shared[variable.shared] if secret and variable.shared else \
            self.model.value(address)
        if variable.shared is not None:
            await self.host.put_shared(variable.shared,
                                       password_key(canonical) if secret else canonical)
        else:
            self.model.own[address.key] = canonical
            await self.host.storage.put_variable(address.key, canonical)
            self.host.settings_changed()
        await self._applied(address, previous)
        if variable.reboot:
            return "RebootRequired", None
        return "Accepted", None

    def _check_value(self, address: Address, value: str) -> None:
        name = address.variable.name
        if name == "BasicAuthPassword" and (problem := password_problem(value)) is not None:
            raise InvalidValue(problem)
        if name in ("TxStartPoint", "TxStopPoint") and not value:
            raise InvalidValue("needs at least one point")
        if name == "NetworkConfigurationPriority":
            slots = [s for s in value.split(",") if s]
            missing = [s for s in slots if s != "1" and s not in self._slots]
            if missing or not value:
                raise InvalidValue(f"names slots with no profile ({','.join(missing)})")
            current = self.host.link.info().security_profile
            lower = [s for s in slots if self._slot_profile(s) < current]
            if lower:  # A05.FR.03: never back to a lower security profile
                raise InvalidValue(f"names slots with a security profile lower than the "
                                   f"present {current} ({','.join(lower)})")

    async def _applied(self, address: Address, previous: str) -> None:
        name = address.variable.name
        if name == "BasicAuthPassword":
            self.host.security_event(SecurityEvent.RECONFIGURATION,
                                     "BasicAuthPassword changed by the CSMS")
            # The new password is used from the next connection on; should it be refused,
            # the previous one is tried after NetworkProfileConnectionAttempts.
            self._apply_network(previous_password=password_bytes(previous) or
                                self.host.link.base_endpoint().password)
            self._spawn(self._reconnect_later("the BasicAuthPassword was changed"))
        elif name == "NetworkConfigurationPriority":
            self._apply_network()
            self._spawn(self._reconnect_later("the network configuration priority changed"))
        elif name == "NetworkProfileConnectionAttempts":
            self._apply_network()

    async def _reconnect_later(self, why: str) -> None:
        await asyncio.sleep(0.5)  # the answer goes out first
        self.host.link.reconnect(why)

    async def _get_base_report(self, payload: dict) -> dict:
        addresses = self.model.base_report(payload["reportBase"])
        self._spawn(self._notify_report(payload["requestId"], addresses))
        return {"status": "Accepted"}

    async def _get_report(self, payload: dict) -> dict:
        addresses = self.model.select(payload.get("componentVariable"),
                                      payload.get("componentCriteria"))
        if not addresses:
            return {"status": "EmptyResultSet"}
        self._spawn(self._notify_report(payload["requestId"], addresses))
        return {"status": "Accepted"}

    async def _notify_report(self, request_id: int, addresses: list[Address]) -> None:
        await asyncio.sleep(TRIGGER_DELAY)
        entries = [self.model.report_entry(a) for a in addresses]
        parts = split_parts(entries, ITEMS_PER_MESSAGE["GetReport"],
                            BYTES_PER_MESSAGE["GetReport"] - 512, _size)
        generated = format_time(self.host.clock.now())
        for number, part in enumerate(parts):
            report = {"requestId": request_id, "generatedAt": generated, "seqNo": number,
                      "tbc": number < len(parts) - 1, "reportData": part}
            try:
                # Outside the queue: a report may be asked for while the boot is Pending.
                await self.host.queue.call_now("NotifyReport", report)
            except (ConnectionLost, RpcError) as exc:
                log.warning("report %d ended after part %d: %s", request_id, number, exc)
                return

    # ---- availability and reset --------------------------------------------------------------

    def _evse_known(self, evse: dict | None) -> bool:
        if not evse:
            return True
        info = self.host.info.evses.get(evse.get("id", -1))
        if evse.get("id") == 0 and "connectorId" not in evse:
            return True
        return info is not None and 1 <= evse.get("connectorId", 1) <= info.connectors

    async def _change_availability(self, payload: dict) -> dict:
        evse = payload.get("evse")
        if not self._evse_known(evse):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        operative = payload["operationalStatus"] == "Operative"
        evse_id = evse["id"] if evse else 0
        connector = evse.get("connectorId") if evse else None
        status = await self.host.ask(lambda core, now: core.change_availability(
            evse_id, operative, now, connector_id=connector))
        return {"status": status.value.capitalize()}

    async def _reset(self, payload: dict) -> dict:
        evse_id = payload.get("evseId")
        if evse_id is not None and evse_id not in self.host.info.evses:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        on_idle = payload["type"] == "OnIdle"
        busy = await self.host.ask(lambda core, now: any(
            evse_id is None or t.evse_id == evse_id for t in core.transactions()))
        self._spawn(self._reset_after_answer(evse_id, on_idle))
        return {"status": "Scheduled" if on_idle and busy else "Accepted"}

    async def _reset_after_answer(self, evse_id: int | None, on_idle: bool) -> None:
        await asyncio.sleep(TRIGGER_DELAY)
        await self.host.ask(lambda core, now: core.reset(False, now, evse_id=evse_id,
                                                         on_idle=on_idle))

    # ---- transactions from afar --------------------------------------------------------------

    async def _request_start(self, payload: dict) -> dict:
        if self.registration is not Registration.ACCEPTED:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "NotAccepted"}}
        token = token_from_wire(payload["idToken"])
        evse_id = payload.get("evseId")
        if token is None or (evse_id is not None and evse_id not in self.host.info.evses):
            return {"status": "Rejected"}
        remote_start_id = payload["remoteStartId"]
        wire_profile = payload.get("chargingProfile")

        def start(core: ChargingStation, now: float) -> RemoteStartResult | str:
            profile = None
            if wire_profile is not None:
                try:
                    profile = self.smart_charging.request_start_profile(wire_profile,
                                                                        evse_id, now)
                except InvalidProfile as exc:
                    # Charging past the CSMS's limit would break its load balancing.
                    return str(exc)
            return core.remote_start(token, evse_id, now, remote_start_id=remote_start_id,
                                     profile=profile)

        result = await self.host.ask(start)
        if isinstance(result, str):
            log.info("RequestStartTransaction rejected: its charging profile: %s", result)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidProfile",
                                                         "additionalInfo": result[:512]}}
        answer: dict[str, Any] = {"status": "Accepted" if result.accepted else "Rejected"}
        if result.accepted and result.ref is not None:
            answer["transactionId"] = result.ref
        return answer

    async def _request_stop(self, payload: dict) -> dict:
        if self.registration is not Registration.ACCEPTED:
            return {"status": "Rejected"}
        ref = payload["transactionId"]
        stopped = await self.host.ask(lambda core, now: core.remote_stop(ref, now))
        return {"status": "Accepted" if stopped else "Rejected"}

    async def _get_transaction_status(self, payload: dict) -> dict:
        ref = payload.get("transactionId")
        queued = await self.host.queue.pending(ref)
        answer: dict[str, Any] = {"messagesInQueue": queued > 0}
        if ref is not None:
            answer["ongoingIndicator"] = await self.host.ask(
                lambda core, now: core.find_transaction(ref) is not None)
        return answer

    async def _unlock_connector(self, payload: dict) -> dict:
        evse_id, connector_id = payload["evseId"], payload["connectorId"]
        info = self.host.info.evses.get(evse_id)
        if info is None or not 1 <= connector_id <= info.connectors:
            return {"status": "UnknownConnector"}

        def authorized_session(core: ChargingStation, now: float) -> bool:
            tx = core.evse(evse_id).transaction
            return tx is not None and tx.authorized and tx.connector_id == connector_id

        if await self.host.ask(authorized_session):
            return {"status": "OngoingAuthorizedTransaction"}
        await self.host.ask(lambda core, now: core.unlock(evse_id, now, connector_id))
        unlocked = await self.host.unlock(evse_id, connector_id)
        if unlocked is None:
            return {"status": "UnlockFailed",
                    "statusInfo": {"reasonCode": "NoLock",
                                   "additionalInfo": "the cable is fixed to the station"}}
        return {"status": "Unlocked" if unlocked else "UnlockFailed"}

    async def _trigger_message(self, payload: dict) -> dict:
        wanted = payload["requestedMessage"]
        evse = payload.get("evse")
        if not self._evse_known(evse):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        evse_ids = [evse["id"]] if evse and evse.get("id") else None
        match wanted:
            case "BootNotification":
                if self.registration is Registration.ACCEPTED:
                    self._spawn(self._triggered_boot())
                else:
                    self.host.link.reconnect("BootNotification requested")
            case "Heartbeat":
                self._spawn(self._later(lambda: self._send("Heartbeat", {}, urgent=True)))
            case "StatusNotification":
                if evse is None or "connectorId" not in evse:
                    return {"status": "Rejected",
                            "statusInfo": {"reasonCode": "MissingParam",
                                           "additionalInfo": "evse with connectorId needed"}}
                key = (evse["id"], evse["connectorId"])
                self._spawn(self._later(lambda: self._spawn(self._resend_status(key,
                                                                                force=True))))
            case "MeterValues":
                self._spawn(self._later(lambda: self.host.submit(
                    lambda core, now: core.trigger_meter_values(evse_ids, now))))
            case "SignChargingStationCertificate":
                self._spawn(self._later(lambda: self.host.renew_certificate(
                    "the CSMS asked")))
            case "TransactionEvent":
                running = await self.host.ask(lambda core, now: [
                    t.evse_id for t in core.transactions()
                    if evse_ids is None or t.evse_id in evse_ids])
                if not running:
                    return {"status": "Rejected",
                            "statusInfo": {"reasonCode": "NoTransaction"}}
                self._spawn(self._later(lambda: self.host.submit(
                    lambda core, now: core.trigger_meter_values(running, now, True))))
            case _:
                return {"status": "NotImplemented"}
        return {"status": "Accepted"}

    async def _later(self, fn: Any) -> None:
        await asyncio.sleep(TRIGGER_DELAY)
        if self.is_online or self.registration is not None:
            fn()

    async def request_certificate(self) -> str:
        return await certificates.send_signing_request(
            self.host, self.model.text("SecurityCtrlr", "OrganizationName"))

    async def _triggered_boot(self) -> None:
        await asyncio.sleep(TRIGGER_DELAY)
        future = self.host.queue.send("BootNotification", self.boot_request("Triggered"),
                                      urgent=True)
        with contextlib.suppress(Exception):
            answer = await future
            verdict = self.read_boot_answer(answer)
            if verdict.status is not Registration.ACCEPTED:
                log.warning("the triggered BootNotification was answered %s",
                            verdict.status)

    # ---- authorization data ------------------------------------------------------------------

    async def _clear_cache(self, payload: dict) -> dict:
        if not self.model.flag("AuthCacheCtrlr", "Enabled"):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "Disabled"}}
        await self.host.clear_auth_cache()
        return {"status": "Accepted"}

    async def _get_local_list_version(self, payload: dict) -> dict:
        empty = not len(self.host.core.local_list)
        return {"versionNumber": 0 if empty else self.host.local_list_version}

    async def _send_local_list(self, payload: dict) -> dict:
        version = payload["versionNumber"]
        entries = payload.get("localAuthorizationList") or []
        full = payload["updateType"] == "Full"
        if len(entries) > SEND_LOCAL_LIST_ITEMS or _size(entries) > SEND_LOCAL_LIST_BYTES:
            return {"status": "Failed", "statusInfo": {"reasonCode": "TooManyItems"}}
        if not full and version <= self.host.local_list_version:
            return {"status": "VersionMismatch"}
        changes: dict[IdToken, AuthInfo | None] = {}
        for e in entries:
            token = token_from_wire(e["idToken"])
            if token is not None:
                changes[token] = id_token_info(e["idTokenInfo"]) if "idTokenInfo" in e \
                    else None
        current = set() if full else {t.key for t in self.host.core.local_list.tokens()}
        after = (current | {t.key for t, i in changes.items() if i is not None}) - {
            t.key for t, i in changes.items() if i is None}
        if len(after) > LOCAL_LIST_MAX:
            return {"status": "Failed", "statusInfo": {"reasonCode": "ListFull"}}
        await self.host.write_local_list(version, changes, replace=full)
        return {"status": "Accepted"}

    async def _data_transfer(self, payload: dict) -> dict:
        log.info("DataTransfer from vendor %.40r ignored: no vendor extension is installed",
                 payload.get("vendorId"))
        return {"status": "UnknownVendorId"}

    # ---- network profiles --------------------------------------------------------------------

    async def _set_network_profile(self, payload: dict) -> dict:
        slot = str(payload["configurationSlot"])
        data = payload["connectionData"]
        problem = self._profile_problem(slot, data)
        if problem is not None:
            log.warning("SetNetworkProfile for slot %s rejected: %s", slot, problem)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidProfile",
                                                         "additionalInfo": problem[:512]}}
        stored = {"url": data["ocppCsmsUrl"], "security_profile": data["securityProfile"],
                  "message_timeout": data["messageTimeout"],
                  "interface": data["ocppInterface"]}
        try:
            await self.host.storage.put_state("network", slot, stored)
        except Exception as exc:
            return {"status": "Failed", "statusInfo": {"reasonCode": "StorageFailed",
                                                       "additionalInfo": str(exc)[:512]}}
        self._slots[slot] = stored
        self._raise_told.discard(slot)
        self._apply_network()
        self.host.security_event(SecurityEvent.RECONFIGURATION,
                                 f"network profile slot {slot} set by the CSMS: security "
                                 f"profile {data['securityProfile']}, {data['ocppCsmsUrl']}")
        return {"status": "Accepted"}

    def _profile_problem(self, slot: str, data: dict) -> str | None:
        if slot not in NETWORK_SLOTS:
            return f"configuration slots are {', '.join(NETWORK_SLOTS)}"
        if data["ocppVersion"] != "OCPP20" or data["ocppTransport"] != "JSON":
            return "only OCPP 2.0.1 over JSON is supported here"
        profile = data["securityProfile"]
        current = self.host.link.info().security_profile
        if profile not in _SECURITY_PROFILES:
            return f"security profile {profile} is not supported by this build"
        if profile < current:
            return f"security profile {profile} is lower than the present {current}"
        if profile > current:
            problem = self.host.link.profile_problem(profile)
            if problem is not None:  # A05.FR.02
                return f"security profile {profile}: {problem}"
        parts = urlsplit(data["ocppCsmsUrl"])
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            return "ocppCsmsUrl must be a ws:// or wss:// URL"
        if profile >= 2 and parts.scheme != "wss":
            return f"security profile {profile} needs a wss:// URL"
        if self.active_slot == int(slot) and self.is_online:
            return "the slot in use cannot be replaced while connected through it"
        return None

    def _slot_profile(self, slot: str) -> int:
        if slot in self._slots:
            return int(self._slots[slot]["security_profile"])
        return self.host.link.base_endpoint().security_profile

    async def _profile_settled(self) -> None:
        """A05.FR.06: connected with a higher security profile than before, the charger
        keeps it (in every version, across restarts) and forgets the lower profiles."""
        link = self.host.link
        base = link.base_endpoint()
        label = link.info().extra.get("profile", "")
        slot = label.rpartition(" ")[2] if label.startswith("network profile slot ") else "1"
        order = self.model.items("OCPPCommCtrlr", "NetworkConfigurationPriority")
        profile = self._slot_profile(slot)
        wanted = order[0] if order else "1"
        if self._slot_profile(wanted) > profile and wanted not in self._raise_told:
            self._raise_told.add(wanted)
            why = (f"security profile {self._slot_profile(wanted)} (slot {wanted}) could not "
                   f"connect: back on security profile {profile} (slot {slot})")
            log.error("%s", why)
            self.host.security_event(SecurityEvent.RECONFIGURATION, why)
        if slot not in self._slots or profile <= base.security_profile:
            return
        kept = [s for s in order if self._slot_profile(s) >= profile]
        endpoint = self._endpoint(slot, None)
        assert endpoint is not None
        await link.adopt(endpoint)
        if kept != order:
            address = self.model.by_name("OCPPCommCtrlr", "NetworkConfigurationPriority")
            value = ",".join(kept)
            self.model.own[address.key] = value
            await self.host.storage.put_variable(address.key, value)
            log.warning("security profile %d connected: the profiles of lower security "
                        "(slots %s) are no longer used", profile,
                        ",".join(s for s in order if s not in kept))
            self._apply_network()

    def _endpoint(self, slot: str, password: bytes | None) -> Endpoint | None:
        base = self.host.link.base_endpoint()
        if slot not in self._slots:
            if slot != "1":
                return None
            return Endpoint(base.url, password or base.password, base.security_profile,
                            base.label)
        data = self._slots[slot]
        url = str(data["url"]).rstrip("/") + "/" + quote(self.host.info.identity, safe="")
        return Endpoint(url, password if password is not None else base.password,
                        int(data["security_profile"]), f"network profile slot {slot}")

    def _apply_network(self, previous_password: bytes | None = None) -> None:
        """NetworkConfigurationPriority as the link's order of profiles to try."""
        new_password = password_bytes(self.host.shared["basic_auth_key"])
        endpoints: list[Endpoint] = []
        for slot in self.model.items("OCPPCommCtrlr", "NetworkConfigurationPriority"):
            endpoint = self._endpoint(slot, new_password)
            if endpoint is not None:
                endpoints.append(endpoint)
        if previous_password is not None and endpoints:
            first = endpoints[0]
            endpoints.insert(1, Endpoint(first.url, previous_password, first.security_profile,
                                         f"{first.label} with the previous password"))
        if not endpoints:
            endpoints = [self.host.link.base_endpoint()]
        self.active_slot = int(self.model.items("OCPPCommCtrlr",
                                                "NetworkConfigurationPriority")[0] or 1)
        self.host.link.use_endpoints(
            endpoints, self.model.integer("OCPPCommCtrlr", "NetworkProfileConnectionAttempts"))

