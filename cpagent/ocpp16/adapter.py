"""OCPP 1.6J: the charging core's events as 1.6 messages, and 1.6 calls as core commands.

A transaction is known to the core by the charger's reference; 1.6 knows it by the integer
the CSMS gives in StartTransaction.conf. That mapping is this adapter's own, persisted with
its other data, and filled in at send time: a session started offline never goes out with -1,
also across a reboot. Transaction events become StartTransaction (the event that carries the
authorization), MeterValues (periodic and clock-aligned readings) and StopTransaction; the
rest (charging-state changes) have no 1.6 message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from cpagent.clock import format_time
from cpagent.core.actions import (
    Action,
    MeterValuesReport,
    RequestAuthorization,
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
    Trigger,
    TxPoint,
)
from cpagent.core.station import ChargingStation
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
from cpagent.ocpp16 import certificates, reservations
from cpagent.ocpp16.configuration import (
    KEYS,
    Configuration,
    InvalidValue,
    canonical_key,
)
from cpagent.ocpp16.metering import meter_value
from cpagent.ocpp16.smart_charging import SmartCharging
from cpagent.ocpp16.triggers import RemoteTrigger
from cpagent.ocpp16.vocabulary import (
    ERROR_CODES,
    MAX_ID_TAG,
    SECURITY_EVENTS,
    STATUS,
    id_tag,
    id_tag_info,
    stop_reason,
)
from cpagent.records import (
    SECURITY_EVENT,
    TRANSACTION_EVENT,
    OutboxEntry,
    event_from_json,
    shifted,
)
from cpagent.rpc import CallErrorReceived, NoReply
from cpagent.schedule_wire import InvalidProfile
from cpagent.security_events import SecurityEvent, notification
from cpagent.settings import password_bytes
from hal.interfaces import Fault

log = logging.getLogger(__name__)
quiet = RateLimited(log, every=30.0)

VERSION = "1.6"
STATUS_RETRY = 10.0  # a StatusNotification the CSMS refused is sent again this much later
_METER_TRIGGERS = {Trigger.METER_VALUE_PERIODIC, Trigger.METER_VALUE_CLOCK, Trigger.TRIGGER}


class Ocpp16Adapter:
    version: ClassVar[str] = VERSION
    subprotocol: ClassVar[str] = "ocpp1.6"
    max_token_length: ClassVar[int] = MAX_ID_TAG

    def __init__(self, host: AdapterHost) -> None:
        self.host = host
        self.connectors = len(host.info.evses)
        self.configuration = Configuration(self.connectors, host.shared, {})
        self.registration: Registration | None = None
        self.is_online = False
        self._tasks: set[asyncio.Task] = set()
        # ref -> the CSMS's transactionId, and back; from the adapter's persisted state.
        self._ids: dict[str, int] = {}
        self._refs: dict[int, str] = {}
        self._state: dict[str, dict] = {}
        # Set once the StartTransaction being sent has been answered and its transactionId
        # handed to the core (or can no longer be): a RemoteStop may name that id meanwhile.
        self._start_in_flight: asyncio.Event | None = None
        self._status_retries: dict[int, asyncio.TimerHandle] = {}
        self._statuses_sent: dict[int, tuple] = {}  # on this link, per connector
        self._raising: Endpoint | None = None  # a SecurityProfile raise not yet connected
        self.triggers = RemoteTrigger(
            host, registration=lambda: self.registration, boot_request=self.boot_request,
            read_boot_answer=self.read_boot_answer, boot_accepted=self.boot_accepted,
            resend_status=lambda c: self._resend_status(c, force=True),
            status_payload=self._status_payload)
        self.smart_charging = SmartCharging(host, self._refs.get)
        self.handlers: Mapping[str, Handler] = {
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
            "InstallCertificate": lambda p: certificates.install_certificate(self.host, p),
            "DeleteCertificate": lambda p: certificates.delete_certificate(self.host, p),
            "GetInstalledCertificateIds":
                lambda p: certificates.get_installed_certificate_ids(self.host, p),
            "CertificateSigned": lambda p: certificates.certificate_signed(self.host, p),
            "ExtendedTriggerMessage": self._extended_trigger,
            "ReserveNow": lambda p: reservations.reserve_now(self, p),
            "CancelReservation": lambda p: reservations.cancel_reservation(self, p),
            "TriggerMessage": self.triggers.trigger_message,
            "SetChargingProfile": self.smart_charging.set_charging_profile,
            "ClearChargingProfile": self.smart_charging.clear_charging_profile,
            "GetCompositeSchedule": self.smart_charging.get_composite_schedule,
        }

    # ---- settings ---------------------------------------------------------------------------

    async def load(self) -> None:
        own = await self.host.storage.settings()
        self.configuration = Configuration(self.connectors, self.host.shared, own, {
            "SecurityProfile": lambda: str(self.host.link.info().security_profile)})
        self._state = await self.host.storage.states("tx")
        for ref, state in self._state.items():
            tx_id = state.get("transaction_id")
            if isinstance(tx_id, int):
                self._ids[ref], self._refs[tx_id] = tx_id, ref

    def tune(self, core: CoreSettings) -> None:
        config = self.configuration
        # 1.6 transactions begin once a card is accepted and the car plugged in, and end when
        # the authorization does (StopTransactionOnEVSideDisconnect makes an unplug one).
        core.start_points = frozenset({TxPoint.POWER_PATH_CLOSED})
        core.report_rate_changes = False  # 1.6 has no message for it: nothing to record
        core.stop_points = frozenset({TxPoint.AUTHORIZED})
        core.history_interval = float(config.integer("MeterValueSampleInterval")) \
            if config.items("StopTxnSampledData") else 0.0
        core.aligned_history_interval = float(config.integer("ClockAlignedDataInterval")) \
            if config.items("StopTxnAlignedData") else 0.0
        core.aligned_during_transaction = True
        core.auth_cache_lifetime = None
        core.reservation_ends_at_start = True  # §5.13: terminated when a transaction starts

    def ping_interval(self) -> float:
        return float(self.configuration.integer("WebSocketPingInterval"))

    def heartbeat_interval(self) -> float:
        return float(self.configuration.integer("HeartbeatInterval"))

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=lambda: self.configuration.integer("TransactionMessageAttempts"),
            interval=lambda: float(self.configuration.integer("TransactionMessageRetryInterval")),
        )

    def wire_transaction_id(self, ref: str) -> int | None:
        return self._ids.get(ref)

    # ---- boot --------------------------------------------------------------------------------

    def boot_request(self) -> dict:
        info = self.host.info
        payload: dict[str, Any] = {"chargePointVendor": info.vendor,
                                   "chargePointModel": info.model,
                                   "firmwareVersion": info.firmware_version}
        if info.serial:
            payload["chargePointSerialNumber"] = info.serial
        # The meter of the first EVSE identifies the station's metering to the operator.
        if info.meter_type:
            payload["meterType"] = info.meter_type[:25]
        if info.meter_serial:
            payload["meterSerialNumber"] = info.meter_serial[:25]
        return payload

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
            heartbeat = min(int(answer.interval), KEYS["HeartbeatInterval"].maximum)
            await self.host.put_shared("heartbeat_interval", str(heartbeat))
        log.info("BootNotification accepted; heartbeat every %s s",
                 self.configuration.integer("HeartbeatInterval"))

    def gate(self, action: str, registration: Registration | None) -> Exception | None:
        self.registration = registration = self.triggers.registration(registration)
        if registration is Registration.REJECTED:
            # OCPP 1.6 4.2: while Rejected the charge point does not respond to the CSMS.
            return NoReply("the central system rejected this station's BootNotification")
        return None

    # ---- a connection ------------------------------------------------------------------------

    async def online(self) -> None:
        self.is_online = True
        await self._raise_settled()
        self._statuses_sent.clear()
        await self._report_all_statuses()

    async def offline(self) -> None:
        self.is_online = False
        self._start_settled()
        for handle in self._status_retries.values():
            handle.cancel()
        self._status_retries.clear()

    async def _report_all_statuses(self) -> None:
        statuses = await self.host.ask(
            lambda core, now: [(e, *core.status(e)) for e in range(len(core.evses) + 1)])
        now = self.host.clock.now()
        for evse_id, status, fault, info in statuses:
            self._status_notification(evse_id, status, fault, info, now)

    def _status_notification(self, connector_id: int, status: ConnectorStatus,
                             fault: Fault | None, info: str, timestamp: float) -> None:
        payload = self._status_payload(connector_id, status, fault, info, timestamp)
        said = (payload["status"], payload["errorCode"], payload.get("info"))
        if self._statuses_sent.get(connector_id) == said:
            return  # the core saw a change 1.6 has no word for (a car behind Unavailable)
        self._statuses_sent[connector_id] = said
        future = self.host.queue.send("StatusNotification", payload)
        future.add_done_callback(lambda f, c=connector_id: self._status_sent(c, f))

    def _status_payload(self, connector_id: int, status: ConnectorStatus,
                        fault: Fault | None, info: str, timestamp: float) -> dict:
        payload: dict[str, Any] = {
            "connectorId": connector_id,
            "errorCode": ERROR_CODES.get(fault, "OtherError") if fault else "NoError",
            "status": STATUS[status],
            "timestamp": format_time(timestamp),
        }
        if fault is not None and fault not in ERROR_CODES:
            payload["vendorErrorCode"] = fault.value[:50]
        if info:
            payload["info"] = info[:50]
        return payload

    def _status_sent(self, connector_id: int, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if not isinstance(exc, CallErrorReceived) or not self.is_online:
            return  # delivered, or lost with the link (the next one reports afresh)
        # Status is state, not history: whatever the CSMS refused, it must end up knowing
        # the connector's status as it is now.
        self._statuses_sent.pop(connector_id, None)
        quiet.warning(f"status-{connector_id}", "the CSMS refused StatusNotification of "
                      "connector %d (%s); sending the current status again in %g s",
                      connector_id, exc, STATUS_RETRY)
        old = self._status_retries.pop(connector_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._status_retries[connector_id] = loop.call_later(
            STATUS_RETRY, lambda: self._spawn(self._resend_status(connector_id)))

    async def _resend_status(self, connector_id: int, force: bool = False) -> None:
        retry = self._status_retries.pop(connector_id, None)
        if retry is not None:
            retry.cancel()  # sent now: a retry still waiting would only repeat it
        if not self.is_online:
            return
        if force:  # asked for: sent even though nothing changed
            self._statuses_sent.pop(connector_id, None)
        status, fault, info = await self.host.ask(lambda core, now: core.status(connector_id))
        self._status_notification(connector_id, status, fault, info, self.host.clock.now())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- core actions -----------------------------------------------------------------------

    async def handle(self, action: Action) -> None:
        match action:
            case StatusChanged():
                if self.is_online and action.connector_id in (0, 1):
                    self._status_notification(action.evse_id, action.status, action.fault,
                                              action.info, action.timestamp)
            case RequestAuthorization(token=token):
                self._spawn(self._authorize(token))
            case MeterValuesReport():
                if self.is_online:  # readings outside a session are not worth keeping
                    value = self._meter_value(action.sample)
                    if value is not None:
                        future = self.host.queue.send(
                            "MeterValues", {"connectorId": action.evse_id, "meterValue": [value]})
                        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _security_event_message(self, record: dict, shift: float) -> Message:
        return Message("SecurityEventNotification", notification(
            SECURITY_EVENTS, record.get("event", ""), float(record["timestamp"]) + shift,
            str(record.get("tech_info", ""))))

    async def station_event(self, event: SecurityEvent, text: str) -> None:
        """The security whitepaper's SecurityEventNotification; a CSMS without it answers
        NotImplemented, which costs nothing."""
        future = self.host.queue.send("SecurityEventNotification", notification(
            SECURITY_EVENTS, event, self.host.clock.now(), text), urgent=True)
        with contextlib.suppress(Exception):
            await future

    async def _authorize(self, token: IdToken) -> None:
        info: AuthInfo | None = None
        if self.is_online:
            try:
                answer = await self.host.queue.send("Authorize", {"idTag": token.value},
                                                    urgent=True)
                info = id_tag_info(answer.get("idTagInfo"))
            except Exception as exc:  # no answer of any kind: decide with what we know
                log.warning("Authorize %s got no answer (%s); deciding offline", token, exc)
        await self.host.ask(lambda core, now: core.authorization_result(token, info, now))

    def _meter_value(self, sample: Any, measurands_key: str | None = None) -> dict | None:
        key = measurands_key or ("MeterValuesAlignedData"
                                 if sample.context is ReadingContext.CLOCK
                                 else "MeterValuesSampledData")
        value = meter_value(sample, self.configuration.items(key))
        return value if value["sampledValue"] else None

    # ---- the durable queue: records become 1.6 messages at send time -------------------------

    async def render(self, entry: OutboxEntry, shift: float) -> list[Message]:
        if entry.kind == SECURITY_EVENT:
            return [self._security_event_message(entry.record, shift)]
        if entry.kind != TRANSACTION_EVENT:
            log.warning("no OCPP 1.6 message for a queued %s record; skipped", entry.kind)
            return []
        self._start_settled()  # one durable message at a time: whatever went before is over
        event = shifted(event_from_json(entry.record), shift)
        ref = event.ref
        state = self._state.get(ref, {})
        starting = event.kind is TxEventKind.STARTED or (
            event.authorized_now and state.get("start") in (None, entry.unique_id))
        if starting:
            if event.token is None:
                return []  # begun with the cable: 1.6's session starts when authorized
            if "transaction_id" in state:
                # Confirmed before a crash hid the answer from the queue: sending it again
                # would open a second session at a CSMS that does not deduplicate by id.
                return []
            return [await self._start_message(entry, event)]
        if "start" not in state:
            if event.kind is TxEventKind.ENDED and event.token is not None:
                # Its start went out under another version (or never could): the 1.6 CSMS
                # gets the whole session, start first, from what the store holds of it.
                start = await self._start_message(entry, event, from_record=True)
                return [start, self._stop_message(event, transaction_id=0)]
            return []
        if state.get("stopped"):
            return []  # confirmed before a crash hid the answer: not again
        transaction_id = self._ids.get(ref)
        if transaction_id is None:
            raise Undeliverable("the CSMS never accepted this session's StartTransaction, so "
                                "1.6 has no transactionId for it")
        if event.kind is TxEventKind.ENDED:
            return [self._stop_message(event, transaction_id)]
        if event.trigger in _METER_TRIGGERS and event.samples:
            values = [v for s in event.samples if (v := self._meter_value(s)) is not None]
            if values:
                return [Message("MeterValues", {"connectorId": event.evse_id,
                                                "transactionId": transaction_id,
                                                "meterValue": values})]
        return []

    async def _start_message(self, entry: OutboxEntry, event: TransactionEvent, *,
                             from_record: bool = False) -> Message:
        assert event.token is not None
        if from_record:
            # The start of the session, as the store keeps it.
            row = await self.host.storage.transaction(event.ref)
            timestamp = row.started_at if row else event.started_at
            meter_start = row.meter_start_wh if row else event.meter_start_wh
        elif event.kind is TxEventKind.STARTED:
            timestamp, meter_start = event.started_at, event.meter_start_wh
        else:
            # Authorized after it began (a 2.0.1 cable start): 1.6's session begins here.
            timestamp = event.timestamp
            begin = next((s for s in event.samples), None)
            energy = begin.reading.energy_wh if begin is not None else None
            meter_start = energy if energy is not None else event.meter_start_wh
        payload: dict[str, Any] = {
            "connectorId": event.evse_id,
            "idTag": event.token.value,
            "meterStart": round(meter_start),
            "timestamp": format_time(timestamp),
        }
        if event.reservation_id is not None:
            payload["reservationId"] = event.reservation_id
        self._state[event.ref] = {"start": entry.unique_id}
        self._start_in_flight = asyncio.Event()
        return Message("StartTransaction", payload, suffix="start" if from_record else "")

    def _stop_message(self, event: TransactionEvent, transaction_id: int) -> Message:
        payload: dict[str, Any] = {
            "transactionId": transaction_id,
            "meterStop": round(event.meter_stop_wh or event.meter_start_wh),
            "timestamp": format_time(event.timestamp),
            "reason": stop_reason(event.reason),
        }
        if event.stopped_by is not None:
            payload["idTag"] = event.stopped_by.value
        data = self._transaction_data(event)
        if data:
            payload["transactionData"] = data
        return Message("StopTransaction", payload)

    def _transaction_data(self, event: TransactionEvent) -> list[dict]:
        sampled = self.configuration.items("StopTxnSampledData")
        aligned = self.configuration.items("StopTxnAlignedData")
        values = []
        for sample in event.samples:
            measurands = aligned if sample.context is ReadingContext.CLOCK else sampled
            if measurands:
                value = meter_value(sample, measurands)
                if value["sampledValue"]:
                    values.append(value)
        return values

    async def delivered(self, entry: OutboxEntry, message: Message, answer: dict) -> None:
        if message.action == "StartTransaction":
            # Shielded: once the id is stored the start is never sent again, so the core must
            # hear of it even if the link dies halfway.
            try:
                await asyncio.shield(self._start_confirmed(entry, answer))
            finally:
                self._start_settled()
        elif message.action == "StopTransaction":
            ref = entry.tx_ref
            if ref is not None:
                self._state.setdefault(ref, {})["stopped"] = True
                await self.host.storage.put_state("tx", ref, self._state[ref])
            token = id_tag(message.payload.get("idTag"))
            if token is not None and "idTagInfo" in answer:
                info = id_tag_info(answer["idTagInfo"])
                await self.host.ask(lambda core, now: core.token_info_received(token, info,
                                                                                now))

    async def _start_confirmed(self, entry: OutboxEntry, answer: dict) -> None:
        ref = entry.tx_ref
        assert ref is not None
        transaction_id = answer.get("transactionId")
        if not isinstance(transaction_id, int):
            log.error("StartTransaction.conf without a usable transactionId: %.200s", answer)
            return
        info = id_tag_info(answer.get("idTagInfo"))
        state = self._state.setdefault(ref, {"start": entry.unique_id})
        state["transaction_id"] = transaction_id
        await self.host.storage.put_state("tx", ref, state)
        self._ids[ref], self._refs[transaction_id] = transaction_id, ref
        await self.host.ask(lambda core, now: core.transaction_authorization(ref, info, now))

    def final_refusal(self, entry: OutboxEntry, message: Message) -> str | None:
        self._start_settled()
        if message.action == "StartTransaction" and entry.tx_ref is not None:
            # Remembered, so that the session's later messages follow it to the dead letters
            # (also after a restart) instead of going out without a transactionId.
            state = self._state.setdefault(entry.tx_ref, {"start": entry.unique_id})
            self._spawn(self.host.storage.put_state("tx", entry.tx_ref, dict(state)))
            return "its session's later messages wait with it"
        return "kept for the operator"

    def _start_settled(self) -> None:
        if self._start_in_flight is not None:
            self._start_in_flight.set()
            self._start_in_flight = None

    # ---- calls from the CSMS -----------------------------------------------------------------

    def _connector_ok(self, connector_id: int, *, station: bool) -> bool:
        low = 0 if station else 1
        return low <= connector_id <= self.connectors

    async def _change_availability(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        if not self._connector_ok(connector_id, station=True):
            return {"status": "Rejected"}
        operative = payload["type"] == "Operative"
        status = await self.host.ask(
            lambda core, now: core.change_availability(connector_id, operative, now))
        return {"status": status.value.capitalize()}

    async def _change_configuration(self, payload: dict) -> dict:
        name, value = canonical_key(payload["key"]), payload["value"]
        if name is None:
            return {"status": "NotSupported"}
        if name == "SecurityProfile":
            return self._raise_security_profile(value)
        try:
            canonical = self.configuration.check(name, value)
        except PermissionError:
            return {"status": "Rejected"}
        except InvalidValue as exc:
            log.info("ChangeConfiguration rejected: %s", exc)
            return {"status": "Rejected"}
        key = KEYS[name]
        previous = self.host.shared[key.shared] if key.shared is not None else None
        if key.shared is not None:
            await self.host.put_shared(key.shared, canonical)
        else:
            self.configuration.own[name] = canonical
            await self.host.storage.put_setting(name, canonical)
            self.host.settings_changed()
        if name == "AuthorizationKey":
            self._new_password(bytes.fromhex(canonical), password_bytes(previous or ""))
        return {"status": "Accepted"}

    async def _extended_trigger(self, payload: dict) -> dict:
        match payload["requestedMessage"]:
            case "SignChargePointCertificate":
                self._spawn(self._later(lambda: self._renew("the Central System asked")))
            case "Heartbeat":
                self._spawn(self._later(self.triggers.heartbeat))
            case _:
                return {"status": "NotImplemented"}
        return {"status": "Accepted"}

    async def _later(self, send: Any) -> None:
        await asyncio.sleep(0.05)  # the answer to the trigger goes out first
        with contextlib.suppress(Exception):
            await send()

    async def _renew(self, why: str) -> None:
        self.host.renew_certificate(why)

    async def request_certificate(self) -> str:
        return await certificates.send_signing_request(
            self.host, self.configuration.value("CpoName"))

    def _new_password(self, new: bytes, previous: bytes | None) -> None:
        """Used from the next connection on; should the CSMS refuse it, the previous one is
        tried after three failed connections, and the link says so."""
        base = self.host.link.base_endpoint()
        endpoints = [Endpoint(base.url, new, base.security_profile, "AuthorizationKey")]
        if previous or base.password:
            endpoints.append(Endpoint(base.url, previous or base.password,
                                      base.security_profile, "the previous AuthorizationKey"))
        self.host.link.use_endpoints(endpoints, 3)
        log.warning("AuthorizationKey changed by the CSMS: reconnecting with it")
        self.host.security_event(SecurityEvent.RECONFIGURATION,
                                 "AuthorizationKey changed by the Central System")
        self._spawn(self._reconnect_soon("the AuthorizationKey was changed"))

    def _raise_security_profile(self, value: str) -> dict:
        """Whitepaper 1.3: the CSMS may raise the profile, never lower it. The new profile is
        tried from the next connection; should it not connect (three attempts), the charger
        falls back to the profile it had, and says so (see `_raise_settled`)."""
        try:
            wanted = int(KEYS["SecurityProfile"].normalise(value, self.connectors))
        except InvalidValue as exc:
            log.info("ChangeConfiguration rejected: %s", exc)
            return {"status": "Rejected"}
        link = self.host.link
        current = link.info().security_profile
        if wanted == current:
            return {"status": "Accepted"}
        problem = (f"lower than the present {current}: lowering is done at the charger, "
                   "never over OCPP" if wanted < current else link.profile_problem(wanted))
        if problem is not None:
            log.warning("ChangeConfiguration SecurityProfile %d rejected: %s", wanted, problem)
            return {"status": "Rejected"}
        base = link.base_endpoint()
        trial = Endpoint(link.secure_url() if wanted >= 2 else base.url, base.password,
                         wanted, f"SecurityProfile {wanted}")
        self._raising = trial
        link.use_endpoints([trial, base], 3)
        log.warning("SecurityProfile %d set by the Central System: reconnecting with it to %s",
                    wanted, trial.url)
        self.host.security_event(SecurityEvent.RECONFIGURATION,
                                 f"SecurityProfile {current} -> {wanted} set by the "
                                 "Central System")
        self._spawn(self._reconnect_soon(f"the security profile was raised to {wanted}"))
        return {"status": "Accepted"}

    async def _raise_settled(self) -> None:
        """On the first connection after a raise: keep the new profile if it is the one that
        connected, else report the fall back to the old one."""
        trial, self._raising = self._raising, None
        if trial is None:
            return
        link = self.host.link
        if link.info().extra.get("profile") == trial.label:
            await link.adopt(trial)
        else:
            why = (f"SecurityProfile {trial.security_profile} could not connect to "
                   f"{trial.url}: back on security profile {link.info().security_profile}")
            log.error("%s", why)
            self.host.security_event(SecurityEvent.RECONFIGURATION, why)
        link.use_endpoints([link.base_endpoint()], 3)

    async def _reconnect_soon(self, why: str) -> None:
        await asyncio.sleep(0.5)  # the answer goes out first
        self.host.link.reconnect(why)

    async def _get_configuration(self, payload: dict) -> dict:
        wanted = payload.get("key")
        names = list(KEYS) if not wanted else list(dict.fromkeys(wanted))
        known = list(dict.fromkeys(k for n in names if (k := canonical_key(n)) is not None))
        unknown = [n for n in names if canonical_key(n) is None]
        answer: dict[str, Any] = {
            "configurationKey": [
                {"key": n, "readonly": KEYS[n].readonly, "value": self.configuration.value(n)}
                if not KEYS[n].write_only else {"key": n, "readonly": False}  # no value
                for n in known
            ]
        }
        if unknown:
            answer["unknownKey"] = unknown
        return answer

    async def _clear_cache(self, payload: dict) -> dict:
        await self.host.clear_auth_cache()
        return {"status": "Accepted"}

    async def _get_local_list_version(self, payload: dict) -> dict:
        # OCPP 1.6 5.10: 0 stands for an empty list, whatever version emptied it.
        empty = not len(self.host.core.local_list)
        return {"listVersion": 0 if empty else self.host.local_list_version}

    async def _send_local_list(self, payload: dict) -> dict:
        version = payload["listVersion"]
        entries = payload.get("localAuthorizationList") or []
        full = payload["updateType"] == "Full"
        if len(entries) > self.configuration.integer("SendLocalListMaxLength"):
            log.warning("SendLocalList with %d entries exceeds SendLocalListMaxLength",
                        len(entries))
            return {"status": "Failed"}
        if not full and version <= self.host.local_list_version:
            return {"status": "VersionMismatch"}
        changes: dict[IdToken, AuthInfo | None] = {}
        for e in entries:
            token = IdToken(e["idTag"])
            changes[token] = id_tag_info(e["idTagInfo"]) if "idTagInfo" in e else None
        current = set() if full else {t.key for t in self.host.core.local_list.tokens()}
        after = (current | {t.key for t, i in changes.items() if i is not None}) - {
            t.key for t, i in changes.items() if i is None}
        if len(after) > self.configuration.integer("LocalAuthListMaxLength"):
            log.warning("SendLocalList would hold %d entries, more than LocalAuthListMaxLength",
                        len(after))
            return {"status": "Failed"}
        await self.host.write_local_list(version, changes, replace=full)
        log.info("local list %s update to version %d: %d entries now", payload["updateType"],
                 version, len(after))
        return {"status": "Accepted"}

    async def _data_transfer(self, payload: dict) -> dict:
        log.info("DataTransfer from vendor %.40r ignored: no vendor extension is installed",
                 payload.get("vendorId"))
        return {"status": "UnknownVendorId"}

    async def _remote_start(self, payload: dict) -> dict:
        connector_id = payload.get("connectorId")
        if self.registration is not Registration.ACCEPTED:
            return {"status": "Rejected"}  # OCPP 1.6 4.2.1: not while Pending
        if connector_id is not None and not self._connector_ok(connector_id, station=False):
            return {"status": "Rejected"}
        token = IdToken(payload["idTag"])
        wire_profile = payload.get("chargingProfile")

        def start(core: ChargingStation, now: float):
            profile = None
            if wire_profile is not None:
                try:
                    profile = self.smart_charging.remote_start_profile(wire_profile,
                                                                       connector_id, now)
                except InvalidProfile as exc:
                    # Charging past the CSMS's limit would break its load balancing.
                    log.info("RemoteStartTransaction rejected: its charging profile: %s", exc)
                    return None
            return core.remote_start(token, connector_id, now, profile=profile)

        result = await self.host.ask(start)
        if result is None:
            return {"status": "Rejected"}
        return {"status": "Accepted" if result.accepted else "Rejected"}

    async def _remote_stop(self, payload: dict) -> dict:
        if self.registration is not Registration.ACCEPTED:
            return {"status": "Rejected"}
        transaction_id = payload["transactionId"]

        def stop(core: ChargingStation, now: float) -> bool:
            ref = self._refs.get(transaction_id)
            return ref is not None and core.remote_stop(ref, now)

        stopped = await self.host.ask(stop)
        in_flight = self._start_in_flight
        if not stopped and in_flight is not None:
            # The id may be the one a StartTransaction.conf just brought, still on its way to
            # the core (the answer and this call can arrive back to back): look again once it
            # is there, waiting no longer than that call may take.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(in_flight.wait(), 30.0)
            stopped = await self.host.ask(stop)
        return {"status": "Accepted" if stopped else "Rejected"}

    async def _reset(self, payload: dict) -> dict:
        hard = payload["type"] == "Hard"
        # Answer first; the sessions stop and the agent restarts once the answer is out.
        self._spawn(self._reset_after_answer(hard))
        return {"status": "Accepted"}

    async def _reset_after_answer(self, hard: bool) -> None:
        await asyncio.sleep(0.05)
        await self.host.ask(lambda core, now: core.reset(hard, now))

    async def _unlock_connector(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        if not self._connector_ok(connector_id, station=False) or \
                not self.host.info.evses[connector_id].has_lock:
            return {"status": "NotSupported"}  # a tethered cable has nothing to unlock
        await self.host.ask(lambda core, now: core.unlock(connector_id, now))
        unlocked = await self.host.unlock(connector_id, 1)
        if unlocked is None:
            return {"status": "NotSupported"}
        return {"status": "Unlocked" if unlocked else "UnlockFailed"}

