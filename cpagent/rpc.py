"""OCPP-J RPC over one WebSocket connection: framing, validation, call bookkeeping.

One call of ours is outstanding at a time (OCPP-J 4.1.1); an answer whose id is not the one we
wait for is logged and dropped, never matched to another call. Calls from the CSMS are
validated against the official JSON schemas and answered with the proper CallError when they
do not fit. Error codes are read tolerantly: the 1.6 spelling `FormationViolation` and the
2.0.1 spelling `FormatViolation` occur in the field for the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.messages import get_validator

log = logging.getLogger(__name__)

CALL, CALLRESULT, CALLERROR = 2, 3, 4
_MESSAGE_TYPES = (CALL, CALLRESULT, CALLERROR)

# Canonical (2.0.1) spelling -> the spelling each version's specification uses on the wire.
_WIRE_SPELLING = {
    "1.6": {
        "FormatViolation": "FormationViolation",
        "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    },
}
_CANONICAL = {
    "FormationViolation": "FormatViolation",
    "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
}
# These 1.6 schemas carry decimals with a fixed precision that binary floats cannot meet.
_DECIMAL_SCHEMAS = {("1.6", CALL, "SetChargingProfile"), ("1.6", CALL, "RemoteStartTransaction"),
                    ("1.6", CALLRESULT, "GetCompositeSchedule")}
_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,64})"')


def canonical_error_code(code: object) -> str:
    text = str(code)
    return _CANONICAL.get(text, text)


class RpcError(Exception):
    """An error to answer a CSMS call with; `code` in canonical spelling."""

    def __init__(self, code: str, description: str = "", details: dict | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = canonical_error_code(code)
        self.description = description
        self.details = details or {}


class NoReply(Exception):
    """The call is deliberately left unanswered (OCPP 1.6 4.2: while a boot is Rejected)."""


class CallErrorReceived(RpcError):
    """The CSMS answered one of our calls with a CallError."""


class CallTimeout(Exception):
    pass


class ConnectionLost(Exception):
    pass


@dataclass(frozen=True, slots=True)
class IncomingCall:
    unique_id: str
    action: str
    payload: dict


def validate(version: str, message_type: int, action: str, payload: dict) -> None:
    """Raise RpcError with the code OCPP-J gives for a payload that breaks its schema.

    An action with no schema for this version raises NotImplemented.
    """
    as_decimal = (version, message_type, action) in _DECIMAL_SCHEMAS
    try:
        validator = get_validator(
            message_type, action, version, parse_float=decimal.Decimal if as_decimal else float
        )
    except (OSError, ValueError):
        raise RpcError("NotImplemented", f"unknown action {action!r}") from None
    if as_decimal:
        payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    error = next(iter(sorted(validator.iter_errors(payload), key=_depth)), None)
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(payload)"
    detail = {"cause": f"{where}: {error.message}"[:500]}
    if error.validator == "required":
        raise RpcError("ProtocolError", "payload incomplete", detail)
    if error.validator in ("type", "maxLength", "minLength"):
        raise RpcError("TypeConstraintViolation", "field of wrong type or size", detail)
    if error.validator in ("enum", "minimum", "maximum", "multipleOf", "pattern", "format"):
        raise RpcError("PropertyConstraintViolation", "field value not allowed", detail)
    if error.validator in ("minItems", "maxItems"):
        raise RpcError("OccurrenceConstraintViolation", "wrong number of elements", detail)
    raise RpcError("FormatViolation", "payload does not fit the schema", detail)


def _depth(error: SchemaError) -> int:
    return len(error.absolute_path)


Handler = Callable[[str, dict], Awaitable[dict]]


class RpcEndpoint:
    """The OCPP-J conversation over one connection. Feed it received text; it sends text."""

    def __init__(
        self,
        version: str,
        send: Callable[[str], Awaitable[None]],
        handler: Handler,
        *,
        call_timeout: float = 30.0,
        on_frame: Callable[[str, str], None] | None = None,
    ) -> None:
        self.version = version
        self._send = send
        self._handler = handler
        self.call_timeout = call_timeout
        self._on_frame = on_frame  # (direction, text), for the demo's message log
        self._lock = asyncio.Lock()
        self._waiting_id: str | None = None
        self._waiting_action = ""
        self._answer: asyncio.Future[tuple[int, list]] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.dropped_answers = 0
        self.last_exchange = time.monotonic()  # lets the heartbeat stay quiet on a busy link

    # ---- our calls ---------------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict, *, unique_id: str | None = None,
        timeout: float | None = None, validated: bool = False,
    ) -> dict:
        """`validated`: the payload was checked when it was queued (the replay path)."""
        if not validated:
            validate(self.version, CALL, action, payload)  # strict in what we send
        async with self._lock:
            if self._closed:
                raise ConnectionLost("connection closed")
            unique_id = unique_id or str(uuid.uuid4())
            loop = asyncio.get_running_loop()
            self._answer = loop.create_future()
            self._waiting_id, self._waiting_action = unique_id, action
            try:
                await self._transmit(json.dumps([CALL, unique_id, action, payload],
                                                 separators=(",", ":")))
                async with asyncio.timeout(timeout or self.call_timeout):
                    kind, frame = await self._answer
            except TimeoutError:
                raise CallTimeout(f"no answer to {action} within "
                                  f"{timeout or self.call_timeout:.0f} s") from None
            finally:
                self._waiting_id, self._answer = None, None
        if kind == CALLERROR:
            code, description, details = [*frame[2:5], "", "", {}][:3]
            raise CallErrorReceived(
                canonical_error_code(code), str(description),
                details if isinstance(details, dict) else {},
            )
        result = frame[2]
        try:
            validate(self.version, CALLRESULT, action, result)
        except RpcError as exc:
            # Tolerant in what we accept: the adapter reads the fields it needs defensively.
            log.warning("%s answer does not fit the schema (%s); using it anyway", action, exc)
        return result

    # ---- what the connection delivers -------------------------------------------------------

    async def receive(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.last_exchange = time.monotonic()
        if self._on_frame:
            self._on_frame("in", text)
        try:
            frame = json.loads(text)
        except ValueError:
            match = _ID_PREFIX.match(text)
            log.warning("frame is not valid JSON: %.200s", text)
            if match:
                await self._reply_error(match.group(1), "FormatViolation", "invalid JSON")
            return
        if not isinstance(frame, list) or not frame or frame[0] not in _MESSAGE_TYPES:
            log.warning("frame is not an OCPP-J message: %.200s", text)
            if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str):
                await self._reply_error(frame[1], "ProtocolError", "unknown message type")
            return
        if frame[0] == CALL:
            self._handle_call_frame(frame)
            return
        self._handle_answer(frame)

    def _handle_answer(self, frame: list) -> None:
        unique_id = frame[1] if len(frame) > 1 else None
        well_formed = (
            (frame[0] == CALLRESULT and len(frame) >= 3 and isinstance(frame[2], dict))
            or (frame[0] == CALLERROR and len(frame) >= 3)
        )
        if (
            unique_id is None
            or unique_id != self._waiting_id
            or self._answer is None
            or self._answer.done()
        ):
            self.dropped_answers += 1
            log.warning("dropping an answer to no call in flight (id %r)", unique_id)
            return
        if not well_formed:
            log.warning("malformed answer to %s: %.200s", self._waiting_action, frame)
            frame = [CALLERROR, unique_id, "FormatViolation", "malformed answer", {}]
        self._answer.set_result((frame[0], frame))

    def _handle_call_frame(self, frame: list) -> None:
        if len(frame) != 4 or not isinstance(frame[1], str) or not isinstance(frame[2], str):
            unique_id = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else None
            log.warning("malformed call: %.200s", frame)
            if unique_id:
                self._spawn(self._reply_error(unique_id, "FormatViolation", "malformed call"))
            return
        _, unique_id, action, payload = frame
        self._spawn(self._serve(IncomingCall(unique_id, action, payload)))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(coro: Awaitable[None]) -> None:
        # An answer that cannot go out because the link died is not an error of the handler.
        with contextlib.suppress(ConnectionLost):
            await coro

    async def _serve(self, call: IncomingCall) -> None:
        try:
            if not isinstance(call.payload, dict):
                raise RpcError("FormatViolation", "payload must be a JSON object")
            validate(self.version, CALL, call.action, call.payload)
            try:
                result = await self._handler(call.action, call.payload)
            except NoReply as exc:
                log.info("leaving %s %s unanswered: %s", call.action, call.unique_id, exc)
                return
            try:
                validate(self.version, CALLRESULT, call.action, result)
            except RpcError as exc:
                log.error("our answer to %s breaks the schema: %s %s", call.action, exc, result)
                raise RpcError("InternalError", "answer could not be built") from exc
        except RpcError as exc:
            log.warning("answering %s %s with %s: %s", call.action, call.unique_id, exc.code,
                        exc.details or exc.description)
            await self._reply_error(call.unique_id, exc.code, exc.description, exc.details)
            return
        except Exception:
            log.exception("handling %s failed", call.action)
            await self._reply_error(call.unique_id, "InternalError", "handler failed")
            return
        await self._transmit(json.dumps([CALLRESULT, call.unique_id, result],
                                        separators=(",", ":")))

    async def _reply_error(
        self, unique_id: str, code: str, description: str, details: dict | None = None
    ) -> None:
        wire = _WIRE_SPELLING.get(self.version, {}).get(code, code)
        await self._transmit(
            json.dumps([CALLERROR, unique_id, wire, description[:255], details or {}],
                       separators=(",", ":"))
        )

    async def _transmit(self, text: str) -> None:
        if self._closed:
            raise ConnectionLost("connection closed")
        if self._on_frame:
            self._on_frame("out", text)
        try:
            await self._send(text)
        except Exception as exc:
            raise ConnectionLost(str(exc)) from exc

    def close(self) -> None:
        """The connection is gone: the call in flight fails, handlers are abandoned."""
        self._closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionLost("connection closed"))
        for task in list(self._tasks):
            task.cancel()
