"""A small but real OCPP central system (CSMS), 1.6J and 2.0.1, for tests and ``cpagent demo``.

It is built on the ``ocpp`` package's server side so that every message is
JSON-schema validated in both directions by the same library a production
CSMS might use, and it records every frame exactly as it crossed the wire so
tests can assert on the conversation rather than on our own interpretation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from ocpp import v201
from ocpp.charge_point import camel_to_snake_case
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call as _v16_call
from ocpp.v16 import call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["CsmsCallError", "DevCsms", "Record", "format_record"]

log = logging.getLogger(__name__)

CP_TO_CSMS = "cp->csms"
CSMS_TO_CP = "csms->cp"

_CALL, _RESULT, _ERROR = 2, 3, 4


@dataclass
class Record:
    direction: str  # "cp->csms" or "csms->cp"
    identity: str
    kind: str  # "call" | "result" | "error"
    action: str  # for result/error: the action of the call it answers ("" if unknown)
    unique_id: str
    payload: dict
    time: float


class CsmsCallError(Exception):
    """The charger answered a CSMS-initiated call with a CallError."""

    def __init__(self, code: str, description: str, details: dict | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details if details is not None else {}


def utc_timestamp() -> str:
    """UTC ISO 8601 with milliseconds and "Z": the form most CSMSs send and chargers parse."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _snake_key(key: str) -> str:
    return next(iter(camel_to_snake_case({key: None})))


def _parse_frame(text: str) -> tuple[str, str, str | None, dict] | None:
    """(kind, unique_id, action or None, payload) for a well-formed OCPP-J frame, else None."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
        return None
    if msg[0] == _CALL and len(msg) == 4 and isinstance(msg[2], str) and isinstance(msg[3], dict):
        return "call", msg[1], msg[2], msg[3]
    if msg[0] == _RESULT and len(msg) == 3 and isinstance(msg[2], dict):
        return "result", msg[1], None, msg[2]
    if msg[0] == _ERROR and len(msg) == 5:
        payload = {"errorCode": msg[2], "errorDescription": msg[3], "errorDetails": msg[4]}
        return "error", msg[1], None, payload
    return None


class _Session:
    """State of one live charger connection."""

    def __init__(self, identity: str, ws: ServerConnection) -> None:
        self.identity = identity
        self.ws = ws
        self.cp: _OcppChargePoint | v201.ChargePoint | None = None
        # Set while reading is allowed; see DevCsms.pause().
        self.readable = asyncio.Event()
        self.readable.set()
        self.closed = asyncio.Event()
        # Results/errors for our own calls, keyed by unique id, so DevCsms.call()
        # can return the payload exactly as sent instead of ocpp's lossy
        # camel->snake->dataclass->camel round trip.
        self.answers: dict[str, Record] = {}
        # Unique ids DevCsms.call() is waiting on; late answers are not kept.
        self.awaiting: set[str] = set()

    def abort(self) -> None:
        # A paused reader would never see the closure, so let it read on and find it.
        self.readable.set()
        self.ws.transport.abort()


class _RecordingConnection:
    """The connection object given to ocpp's ChargePoint.

    Sitting between ocpp and websockets is the only place that sees frames
    exactly as on the wire, including CallErrors that ocpp generates itself.
    """

    def __init__(self, csms: DevCsms, session: _Session) -> None:
        self._csms = csms
        self._session = session

    async def recv(self) -> str:
        session = self._session
        while True:
            # Don't hand over frames websockets already buffered while paused;
            # otherwise draining that buffer would make websockets resume the
            # transport behind pause()'s back.
            await session.readable.wait()
            frame = await session.ws.recv()
            if isinstance(frame, bytes):
                log.warning("%s: ignoring binary frame (%d bytes)", session.identity, len(frame))
                continue
            record = self._csms._record(CP_TO_CSMS, session.identity, frame)
            if record is None:
                # Still routed: ocpp logs it, and answers a CallError where it can.
                return frame
            if record.kind == "call" and not self._csms.respond:
                continue
            if record.kind == "call" and self._csms.fail_calls.get(record.action, 0) > 0:
                # A CSMS that cannot process the message right now answers with an error.
                self._csms.fail_calls[record.action] -= 1
                await self.send(json.dumps([4, record.unique_id, "InternalError",
                                            "simulated failure", {}]))
                continue
            if record.kind != "call" and record.unique_id in session.awaiting:
                session.answers[record.unique_id] = record
            return frame

    async def send(self, frame: str) -> None:
        # Recorded before sending so that a fast answer can never be recorded
        # ahead of the frame it answers.
        self._csms._record(CSMS_TO_CP, self._session.identity, frame)
        await self._session.ws.send(frame)


def _id_tag_info(csms: DevCsms, id_tag: str) -> IdTagInfo:
    if id_tag in csms.rejected_tags:
        status = "Invalid"
    elif id_tag.startswith("BLOCKED"):
        status = "Blocked"
    elif id_tag.startswith("EXPIRED"):
        status = "Expired"
    else:
        status = "Accepted"
    return IdTagInfo(status=status, parent_id_tag=csms.parent_id_tags.get(id_tag))


class _CsmsChargePoint(_OcppChargePoint):
    """Routing for CP->CSMS calls; ocpp validates requests and our answers."""

    def __init__(self, identity: str, connection: _RecordingConnection, csms: DevCsms) -> None:
        # DevCsms.call() enforces its own per-call timeout; this is only a backstop.
        super().__init__(identity, connection, response_timeout=3600, logger=log)
        self._csms = csms

    @on(Action.boot_notification)
    def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        return call_result.BootNotification(
            current_time=utc_timestamp(),
            interval=self._csms.heartbeat_interval,
            status=self._csms.boot_status,
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=utc_timestamp())

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=_id_tag_info(self._csms, id_tag))

    @on(Action.start_transaction)
    def on_start_transaction(
        self, id_tag: str, call_unique_id: str, **_: Any
    ) -> call_result.StartTransaction:
        # A charger resends a start whose answer it lost with the same message id: a CSMS
        # that keys on that id counts the session once and gives the same transactionId.
        csms = self._csms
        if call_unique_id not in csms.transaction_ids:
            csms._last_transaction_id += 1
            csms.transaction_ids[call_unique_id] = csms._last_transaction_id
        return call_result.StartTransaction(
            transaction_id=csms.transaction_ids[call_unique_id],
            id_tag_info=_id_tag_info(csms, id_tag),
        )

    @on(Action.stop_transaction)
    def on_stop_transaction(
        self, id_tag: str | None = None, **_: Any
    ) -> call_result.StopTransaction:
        info = _id_tag_info(self._csms, id_tag) if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.meter_values)
    def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.status_notification)
    def on_status_notification(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.data_transfer)
    def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.security_event_notification)
    def on_security_event(self, **_: Any) -> call_result.SecurityEventNotification:
        return call_result.SecurityEventNotification()

    @on(Action.sign_certificate)
    def on_sign_certificate(self, **_: Any) -> call_result.SignCertificate:
        return call_result.SignCertificate(status=self._csms.sign_status)

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(
        self, **_: Any
    ) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()


def _token_info(csms: DevCsms, token: dict | None) -> dict:
    # ocpp hands nested payloads over with snake_case keys.
    value = (token or {}).get("id_token", (token or {}).get("idToken", ""))
    if value in csms.rejected_tags:
        status = "Invalid"
    elif value.startswith("BLOCKED"):
        status = "Blocked"
    elif value.startswith("EXPIRED"):
        status = "Expired"
    else:
        status = "Accepted"
    info: dict[str, Any] = {"status": status}
    group = csms.parent_id_tags.get(value)
    if group:
        info["groupIdToken"] = {"idToken": group, "type": "Central"}
    return info


class _CsmsChargePoint201(v201.ChargePoint):
    """Routing for a 2.0.1 charging station's calls; ocpp validates requests and answers."""

    def __init__(self, identity: str, connection: _RecordingConnection, csms: DevCsms) -> None:
        super().__init__(identity, connection, response_timeout=3600, logger=log)
        self._csms = csms

    @on(Action201.boot_notification)
    def on_boot_notification(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(current_time=utc_timestamp(),
                                          interval=self._csms.heartbeat_interval,
                                          status=self._csms.boot_status)

    @on(Action201.heartbeat)
    def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=utc_timestamp())

    @on(Action201.authorize)
    def on_authorize(self, id_token: dict, **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info=_token_info(self._csms, id_token))

    @on(Action201.transaction_event)
    def on_transaction_event(self, id_token: dict | None = None,
                             **_: Any) -> result201.TransactionEvent:
        if id_token is None:
            return result201.TransactionEvent()
        return result201.TransactionEvent(id_token_info=_token_info(self._csms, id_token))

    @on(Action201.status_notification)
    def on_status_notification(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @on(Action201.meter_values)
    def on_meter_values(self, **_: Any) -> result201.MeterValues:
        return result201.MeterValues()

    @on(Action201.notify_report)
    def on_notify_report(self, **_: Any) -> result201.NotifyReport:
        return result201.NotifyReport()

    @on(Action201.notify_event)
    def on_notify_event(self, **_: Any) -> result201.NotifyEvent:
        return result201.NotifyEvent()

    @on(Action201.sign_certificate)
    def on_sign_certificate(self, **_: Any) -> result201.SignCertificate:
        # The CSR is in the records; a test signs it and sends CertificateSigned itself.
        return result201.SignCertificate(status=self._csms.sign_status)

    @on(Action201.security_event_notification)
    def on_security_event(self, **_: Any) -> result201.SecurityEventNotification:
        return result201.SecurityEventNotification()

    @on(Action201.data_transfer)
    def on_data_transfer(self, **_: Any) -> result201.DataTransfer:
        return result201.DataTransfer(status="UnknownVendorId")

    @on(Action201.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> result201.FirmwareStatusNotification:
        return result201.FirmwareStatusNotification()

    @on(Action201.log_status_notification)
    def on_log_status(self, **_: Any) -> result201.LogStatusNotification:
        return result201.LogStatusNotification()

    @on(Action201.reservation_status_update)
    def on_reservation_status_update(self, **_: Any) -> result201.ReservationStatusUpdate:
        return result201.ReservationStatusUpdate()

    @on(Action201.notify_charging_limit)
    def on_notify_charging_limit(self, **_: Any) -> result201.NotifyChargingLimit:
        return result201.NotifyChargingLimit()

    @on(Action201.cleared_charging_limit)
    def on_cleared_charging_limit(self, **_: Any) -> result201.ClearedChargingLimit:
        return result201.ClearedChargingLimit()

    @on(Action201.report_charging_profiles)
    def on_report_charging_profiles(self, **_: Any) -> result201.ReportChargingProfiles:
        return result201.ReportChargingProfiles()


class DevCsms:
    """An OCPP 1.6J central system for one test or demo run.

    Chargers connect to ``<url>/<identity>``. Behaviour is steered through the
    public attributes (``boot_status``, ``rejected_tags``, ``respond``, ...),
    which are read when each message arrives, so a test can change them
    mid-conversation.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ocpp",
        ssl_context: ssl.SSLContext | None = None,
        subprotocols: tuple[str, ...] | list[str] = ("ocpp1.6",),  # in the server's preference
        on_record: Callable[[Record], None] | None = None,
        basic_auth: dict[str, str | bytes] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.ssl_context = ssl_context
        self.subprotocols = tuple(subprotocols)
        self.on_record = on_record
        self.basic_auth = basic_auth
        self.url = ""
        self.records: list[Record] = []
        self.boot_status = "Accepted"
        self.heartbeat_interval = 300
        self.rejected_tags: set[str] = set()
        self.parent_id_tags: dict[str, str] = {}
        self.respond = True
        self.sign_status = "Accepted"  # the answer to a charger's SignCertificate
        self._last_transaction_id = 0
        self.transaction_ids: dict[str, int] = {}  # StartTransaction message id -> its id
        self.fail_calls: dict[str, int] = {}  # action -> how many to answer with a CallError
        # identity -> the close code each ended connection got from the charger (1006: none)
        self.close_codes: dict[str, list[int | None]] = {}
        self._server: Server | None = None
        self._sessions: dict[str, _Session] = {}
        # (identity, direction of the call, unique id) -> action, to name results/errors.
        self._call_actions: dict[tuple[str, str, str], str] = {}
        # Replaced on every change (record or connection) so waiters wake up
        # without polling; see _notify().
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await serve(
            self._handle_connection,
            self.host,
            self.port,
            ssl=self.ssl_context,
            subprotocols=list(self.subprotocols),
            process_request=self._process_request,
            # Our own keepalive would close a paused link by itself and make
            # half-open tests depend on its timing; detecting dead links is the
            # charger's job here.
            ping_interval=None,
            close_timeout=2,
        )
        self.port = port = self._server.sockets[0].getsockname()[1]
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{scheme}://{host}:{port}{self.path}"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # A paused link can't complete a close handshake, so don't let it hold
        # up the shutdown for close_timeout.
        for session in list(self._sessions.values()):
            if not session.readable.is_set():
                session.abort()
        server.close()
        await server.wait_closed()

    async def __aenter__(self) -> DevCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- connection handling -----------------------------------------------

    def _identity_from_path(self, raw_path: str) -> str | None:
        path = urlsplit(raw_path).path
        prefix = self.path + "/"
        if not path.startswith(prefix):
            return None
        rest = path[len(prefix) :].strip("/")
        if not rest:
            return None
        return unquote(rest.rsplit("/", 1)[-1]) or None

    def _authorized(self, identity: str, headers: Headers) -> bool:
        assert self.basic_auth is not None
        expected = self.basic_auth.get(identity)
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if expected is None or scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Compare bytes: OCPP AuthorizationKeys need not be valid UTF-8 on the wire.
        return (
            bool(sep)
            and user == identity.encode()
            and hmac.compare_digest(password, expected.encode() if isinstance(expected, str)
                                    else expected)
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = self._identity_from_path(request.path)
        if identity is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "Expected <path>/<identity>\n")
        if self.basic_auth is not None and not self._authorized(identity, request.headers):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="devcsms", charset="UTF-8"'
            return response
        # Returning None lets websockets negotiate the subprotocol, which
        # answers 400 when the client offers none we support.
        return None

    async def _handle_connection(self, ws: ServerConnection) -> None:
        identity = self._identity_from_path(ws.request.path) if ws.request else None
        if identity is None:  # pragma: no cover - _process_request already refused it
            return
        session = _Session(identity, ws)
        old = self._sessions.get(identity)
        if old is not None:
            # Like a real CSMS, the newest connection for an identity wins; the
            # old one is typically a half-open link the charger has given up on.
            log.info("%s: new connection replaces the old one", identity)
            old.abort()
        cp_class = _CsmsChargePoint201 if ws.subprotocol == "ocpp2.0.1" else _CsmsChargePoint
        cp = cp_class(identity, _RecordingConnection(self, session), self)
        session.cp = cp
        self._sessions[identity] = session
        log.info("%s: connected (subprotocol %s)", identity, ws.subprotocol)
        self._notify()
        try:
            while True:
                try:
                    frame = await cp._connection.recv()
                    await cp.route_message(frame)
                except ConnectionClosed:
                    break
                except Exception:
                    # Whatever a charger sends must not take the CSMS down.
                    log.exception("%s: error while handling a frame", identity)
        finally:
            if self._sessions.get(identity) is session:
                del self._sessions[identity]
            self.close_codes.setdefault(identity, []).append(ws.close_code)
            session.closed.set()
            log.info("%s: disconnected", identity)
            self._notify()

    def _session(self, identity: str) -> _Session:
        try:
            return self._sessions[identity]
        except KeyError:
            raise ConnectionError(f"charge point {identity!r} is not connected") from None

    # -- records -----------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, direction: str, identity: str, frame: str) -> Record | None:
        parsed = _parse_frame(frame)
        if parsed is None:
            log.warning("%s: %s frame is not OCPP-J: %.200s", identity, direction, frame)
            return None
        kind, unique_id, action, payload = parsed
        if kind == "call":
            assert action is not None
            self._call_actions[(identity, direction, unique_id)] = action
        else:
            call_direction = CSMS_TO_CP if direction == CP_TO_CSMS else CP_TO_CSMS
            action = self._call_actions.get((identity, call_direction, unique_id), "")
        record = Record(direction, identity, kind, action, unique_id, payload, time.monotonic())
        self.records.append(record)
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:
                log.exception("on_record callback failed")
        self._notify()
        return record

    def mark(self) -> int:
        return len(self.records)

    def calls(self, action: str | None = None, identity: str | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if r.direction == CP_TO_CSMS
            and r.kind == "call"
            and (action is None or r.action == action)
            and (identity is None or r.identity == identity)
        ]

    async def wait_for_call(
        self,
        action: str,
        *,
        identity: str | None = None,
        predicate: Callable[[dict], bool] | None = None,
        timeout: float = 10.0,
        after: int = 0,
    ) -> Record:
        index = after
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    while index < len(self.records):
                        r = self.records[index]
                        index += 1
                        if (
                            r.direction == CP_TO_CSMS
                            and r.kind == "call"
                            and r.action == action
                            and (identity is None or r.identity == identity)
                            and (predicate is None or predicate(r.payload))
                        ):
                            return r
                    await changed.wait()
        except TimeoutError:
            who = f" from {identity}" if identity else ""
            raise TimeoutError(f"no matching {action}{who} within {timeout}s") from None

    # -- connections -------------------------------------------------------

    def is_connected(self, identity: str) -> bool:
        return identity in self._sessions

    async def wait_connected(self, identity: str, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while identity not in self._sessions:
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{identity} did not connect within {timeout}s") from None

    def subprotocol(self, identity: str) -> str | None:
        session = self._sessions.get(identity)
        return session.ws.subprotocol if session else None

    async def drop(self, identity: str) -> None:
        session = self._session(identity)
        session.abort()
        # Return only once the CSMS itself has noticed, so is_connected() is
        # already False for the caller.
        await session.closed.wait()

    def pause(self, identity: str) -> None:
        session = self._session(identity)
        session.readable.clear()
        # Pongs are sent by websockets when it reads a ping, so not reading is
        # what makes the link look silent to the charger.
        session.ws.transport.pause_reading()

    def resume(self, identity: str) -> None:
        session = self._session(identity)
        if session.readable.is_set():
            return
        session.readable.set()
        session.ws.transport.resume_reading()

    # -- CSMS-initiated messages -------------------------------------------

    async def send_raw(self, identity: str, text: str) -> None:
        session = self._session(identity)
        assert session.cp is not None
        await session.cp._connection.send(text)

    @staticmethod
    def _request(action: str, payload: dict, version: str = "1.6") -> Any:
        module = v201.call if version == "2.0.1" else _v16_call
        cls = getattr(module, action, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"unknown OCPP {version} action {action!r}")
        # Only top-level keys become snake_case: ocpp converts nested dicts back
        # key by key, and leaving them camelCase keeps that a no-op.
        kwargs = {_snake_key(k): v for k, v in payload.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad {action} payload {payload!r}: {exc}") from exc

    async def call(self, identity: str, action: str, payload: dict, timeout: float = 10.0) -> dict:
        session = self._session(identity)
        assert session.cp is not None
        version = "2.0.1" if session.ws.subprotocol == "ocpp2.0.1" else "1.6"
        request = self._request(action, payload, version)
        unique_id = str(uuid.uuid4())
        session.awaiting.add(unique_id)
        call_task = asyncio.ensure_future(
            session.cp.call(request, suppress=False, unique_id=unique_id)
        )
        closed_task = asyncio.ensure_future(session.closed.wait())
        done: set[asyncio.Future] = set()
        try:
            done, _ = await asyncio.wait(
                {call_task, closed_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            pending = [t for t in (call_task, closed_task) if not t.done()]
            for task in pending:
                task.cancel()
            # Reap them here so no task outlives the call (or the event loop).
            await asyncio.gather(*pending, return_exceptions=True)
            session.awaiting.discard(unique_id)
        answer = session.answers.pop(unique_id, None)
        if call_task not in done:
            if closed_task in done:
                raise ConnectionError(f"{identity} disconnected during {action}")
            raise TimeoutError(f"{identity} did not answer {action} within {timeout}s")
        exc = call_task.exception()
        if answer is not None and answer.kind == "error":
            p = answer.payload
            details = p["errorDetails"] if isinstance(p["errorDetails"], dict) else {}
            raise CsmsCallError(str(p["errorCode"]), str(p["errorDescription"]), details) from exc
        if exc is not None:
            # Schema validation of our request or of the charger's answer.
            raise exc
        if answer is None:  # pragma: no cover - ocpp only returns after routing the answer
            raise RuntimeError(f"answer to {action} {unique_id} was not recorded")
        return answer.payload


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_COLORS = {"call": "\033[36m", "result": "\033[32m", "error": "\033[1;31m"}
_DIM, _RESET = "\033[2m", "\033[0m"


def format_record(record: Record, *, color: bool = False) -> str:
    """One line per frame for `cpagent demo`."""
    if record.direction == CP_TO_CSMS:
        arrow = f"{record.identity} → CSMS"
    else:
        arrow = f"CSMS → {record.identity}"
    action = record.action or "?"
    if record.kind == "call":
        label, body = f"{action} ", _compact(record.payload)
    elif record.kind == "result":
        label, body = f"{action}.conf", _compact(record.payload)
    else:
        p = record.payload
        label = f"{action}.CALLERROR"
        body = f"{p.get('errorCode')}: {p.get('errorDescription')} " + _compact(
            p.get("errorDetails")
        )
    if color:
        label = f"{_COLORS.get(record.kind, '')}{label}{_RESET}"
        body = body if record.kind == "error" else f"{_DIM}{body}{_RESET}"
    return f"  {arrow}  {label} {body}"
