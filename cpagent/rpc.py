"""OCPP-J RPC over one WebSocket connection: framing, validation, call bookkeeping.

One call of ours is outstanding at a time (OCPP-J 4.1.1); an answer whose id is not the one we
wait for is logged and dropped, never matched to another call. Calls from the CSMS are
validated against the official JSON schemas and answered with the proper CallError when they
do not fit. Error codes are read tolerantly: the 1.6 spelling `FormationViolation` and the
2.0.1 spelling `FormatViolation` occur in the field for the same thing.

Nothing a peer sends may drop the link or grow memory: a frame nested deeper than any OCPP
message is refused before it is parsed, an action name is looked up among the version's own
actions before it can reach a schema file or a cache, non-finite and out-of-range numbers are
refused, so are strings that are not Unicode text (a lone surrogate escape), message ids
longer than OCPP-J allows are never echoed, binary frames are not taken for text, and repeated
complaints are logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.messages import get_validator

from cpagent.logs import RateLimited

log = logging.getLogger(__name__)
quiet = RateLimited(log, every=30.0)

CALL, CALLRESULT, CALLERROR = 2, 3, 4
_MESSAGE_TYPES = (CALL, CALLRESULT, CALLERROR)
MAX_ID_LENGTH = 36  # OCPP-J: a message id holds at most 36 characters (a UUID)
MAX_DEPTH = 24  # the deepest OCPP payload nests about 8 levels; nothing needs 24
MAX_NUMBER = 2.0**53  # beyond this JSON numbers are not exact (I-JSON, RFC 7493)
UNKNOWN_ID = "-1"  # the id to answer with when the call's own cannot be echoed

# Canonical (2.0.1) spelling -> the spelling each version's specification uses on the wire.
_WIRE_SPELLING = {
    "1.6": {
        "FormatViolation": "FormationViolation",
        "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
        "RpcFrameworkError": "ProtocolError",
        "MessageTypeNotSupported": "NotImplemented",
    },
}
_CANONICAL = {
    "FormationViolation": "FormatViolation",
    "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
}
# These 1.6 schemas carry decimals with a fixed precision that binary floats cannot meet.
_DECIMAL_SCHEMAS = {("1.6", CALL, "SetChargingProfile"), ("1.6", CALL, "RemoteStartTransaction"),
                    ("1.6", CALLRESULT, "GetCompositeSchedule")}
_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"\s*,')
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800 to \udfff in JSON text
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # what json.loads leaves of an unpaired one


def _known_actions() -> dict[str, frozenset[str]]:
    """Each version's actions, from the schemas the `ocpp` package ships."""
    root = Path(ocpp.__file__).parent
    known = {}
    for version, folder, suffix in (("1.6", "v16", ""), ("2.0.1", "v201", "Request")):
        names = {p.stem for p in (root / folder / "schemas").glob("*.json")}
        known[version] = frozenset(
            n[: len(n) - len(suffix)] if suffix else n for n in names
            if not n.endswith("Response") and n.endswith(suffix))
    return known


KNOWN_ACTIONS = _known_actions()


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


class FrameRefused(ValueError):
    """A frame that is not acceptable OCPP-J; `code` says which CallError fits."""

    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True, slots=True)
class IncomingCall:
    unique_id: str
    action: str
    payload: dict


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether brackets nest deeper than `limit`, outside strings (checked before parsing,
    since the parser and everything after it recurse)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot nest that deep: the common case costs two counts
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _reject_constant(name: str) -> float:
    raise FrameRefused("FormatViolation", f"{name} is not a JSON number")


def parse_frame(text: str) -> object:
    """JSON text to a value, refusing what OCPP-J cannot mean; FrameRefused says why."""
    if too_deep(text):
        raise FrameRefused("FormatViolation", f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except FrameRefused:
        raise
    except (ValueError, RecursionError) as exc:
        raise FrameRefused("FormatViolation", f"invalid JSON: {exc}") from None
    # OCPP-J is UTF-8 text: an unpaired surrogate escape makes a string no encoding can hold,
    # which would fail wherever it is stored or sent on (RFC 7493 2.1 forbids it).
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise FrameRefused("FormatViolation", "a string holds an unpaired UTF-16 surrogate")
    return value


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_numbers(value: object) -> None:
    """Refuse numbers no OCPP field can hold: they would overflow or lose precision in
    every later step (PropertyConstraintViolation names a value out of range)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float | int) and not isinstance(item, bool) and (
                (isinstance(item, float) and not math.isfinite(item))
                or abs(item) > MAX_NUMBER):
            raise RpcError("PropertyConstraintViolation", f"number {item!r:.40} is out of range")


def check_action(version: str, action: str) -> None:
    """NotImplemented for an action this version does not have."""
    if action not in KNOWN_ACTIONS.get(version, ()):
        raise RpcError("NotImplemented", f"unknown action {action[:40]!r}")


def validate(version: str, message_type: int, action: str, payload: dict) -> None:
    """Raise RpcError with the code OCPP-J gives for a payload that breaks its schema.

    An action this version does not have raises NotImplemented, before any schema is looked
    for: the name comes from the peer and must not build a file path or a cache key.
    """
    check_action(version, action)
    as_decimal = (version, message_type, action) in _DECIMAL_SCHEMAS
    validator = get_validator(
        message_type, action, version, parse_float=decimal.Decimal if as_decimal else float
    )
    if as_decimal:
        payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    else:
        try:
            _compiled(version, message_type, action, validator.schema)(payload)
            return
        except fastjsonschema.JsonSchemaException:
            pass  # jsonschema has the last word, and names the error precisely
    error = next(iter(sorted(validator.iter_errors(payload), key=_depth)), None)
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(payload)"
    detail = {"cause": f"{where}: {error.message}"[:500]}
    if error.validator == "required":
        raise RpcError("ProtocolError" if version == "1.6" else "OccurrenceConstraintViolation",
                       "payload incomplete", detail)
    if error.validator in ("type", "maxLength", "minLength"):
        raise RpcError("TypeConstraintViolation", "field of wrong type or size", detail)
    if error.validator in ("enum", "minimum", "maximum", "multipleOf", "pattern", "format"):
        raise RpcError("PropertyConstraintViolation", "field value not allowed", detail)
    if error.validator in ("minItems", "maxItems"):
        raise RpcError("OccurrenceConstraintViolation", "wrong number of elements", detail)
    raise RpcError("FormatViolation", "payload does not fit the schema", detail)


# The same schemas compiled to Python (fastjsonschema): a valid payload, which nearly every
# payload is, is confirmed some 20 times faster than jsonschema's interpreter walks the
# schema, which bounded the replay of a long queue. Keys are known actions only.
_COMPILED: dict[tuple[str, int, str], Callable[[Any], Any]] = {}


def _compiled(version: str, message_type: int, action: str,
              schema: dict) -> Callable[[Any], Any]:
    key = (version, message_type, action)
    check = _COMPILED.get(key)
    if check is None:
        # Formats are not checked, as jsonschema's Draft4Validator does not check them, and
        # defaults are not filled in: what we send is what we built.
        check = _COMPILED[key] = fastjsonschema.compile(schema, use_formats=False,
                                                        use_default=False)
    return check


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
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        self.version = version
        self._on_invalid = on_invalid  # told of each frame refused as not valid OCPP
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
        self.refused_frames = 0
        self.last_exchange = time.monotonic()  # lets the heartbeat stay quiet on a busy link

    # ---- our calls ---------------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict, *, unique_id: str | None = None,
        timeout: float | None = None,
    ) -> dict:
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
                canonical_error_code(code), str(description)[:255],
                details if isinstance(details, dict) else {},
            )
        result = frame[2]
        try:
            check_numbers(result)
            validate(self.version, CALLRESULT, action, result)
        except RpcError as exc:
            # Tolerant in what we accept: the adapter reads the fields it needs defensively.
            quiet.warning(f"answer-{action}", "%s answer does not fit the schema (%s); "
                          "using it anyway", action, exc)
        return result

    # ---- what the connection delivers -------------------------------------------------------

    async def receive(self, text: str | bytes) -> None:
        self.last_exchange = time.monotonic()
        if isinstance(text, bytes):
            # OCPP-J messages are text frames; a binary one is not read as one.
            self._refused("a binary frame")
            quiet.warning("binary", "refusing a binary WebSocket frame (%d bytes): OCPP-J "
                          "messages are text frames", len(text))
            prefix = _ID_PREFIX.match(text[:80].decode("utf-8", "replace"))
            if prefix:
                await self._reply_error(prefix.group(1), "FormatViolation",
                                        "binary frames are not OCPP-J messages")
            return
        if self._on_frame:
            self._on_frame("in", text)
        try:
            frame = parse_frame(text)
        except FrameRefused as exc:
            self._refused(f"a frame that is not valid JSON-RPC ({exc})")
            quiet.warning("parse", "refusing a frame: %s: %.120s", exc, text)
            match = _ID_PREFIX.match(text)
            if match:
                await self._reply_error(match.group(1), exc.code, str(exc))
            return
        if not isinstance(frame, list) or not frame or frame[0] not in _MESSAGE_TYPES:
            self._refused("a frame of no OCPP-J message type")
            quiet.warning("type", "frame is not an OCPP-J message: %.120s", text)
            if isinstance(frame, list) and len(frame) > 1 and self._echoable(frame[1]):
                await self._reply_error(frame[1], "MessageTypeNotSupported",
                                        "unknown message type")
            return
        if frame[0] == CALL:
            await self._handle_call_frame(frame, text)
            return
        self._handle_answer(frame)

    def _refused(self, what: str) -> None:
        self.refused_frames += 1
        if self._on_invalid is not None:
            self._on_invalid(what)

    @staticmethod
    def _echoable(unique_id: object) -> bool:
        return isinstance(unique_id, str) and 0 < len(unique_id) <= MAX_ID_LENGTH

    def _handle_answer(self, frame: list) -> None:
        unique_id = frame[1] if len(frame) > 1 else None
        well_formed = (
            (frame[0] == CALLRESULT and len(frame) >= 3 and isinstance(frame[2], dict))
            or (frame[0] == CALLERROR and len(frame) >= 3)
        )
        if (
            not isinstance(unique_id, str)
            or unique_id != self._waiting_id
            or self._answer is None
            or self._answer.done()
        ):
            self.dropped_answers += 1
            quiet.warning("stray", "dropping an answer to no call in flight (id %.40r)",
                          unique_id)
            return
        if not well_formed:
            quiet.warning("malformed-answer", "malformed answer to %s: %.120s",
                          self._waiting_action, json.dumps(frame)[:120])
            frame = [CALLERROR, unique_id, "FormatViolation", "malformed answer", {}]
        self._answer.set_result((frame[0], frame))

    async def _handle_call_frame(self, frame: list, text: str) -> None:
        unique_id = frame[1] if len(frame) > 1 else None
        if not self._echoable(unique_id):
            self._refused("a call with an invalid message id")
            shown = unique_id if not isinstance(unique_id, str) else f"{len(unique_id)} chars"
            quiet.warning("bad-id", "refusing a call whose message id is not 1 to %d "
                          "characters (%.40s)", MAX_ID_LENGTH, shown)
            await self._reply_error(UNKNOWN_ID, "RpcFrameworkError",
                                    f"message id must be a string of 1 to {MAX_ID_LENGTH} "
                                    "characters")
            return
        assert isinstance(unique_id, str)
        if len(frame) != 4 or not isinstance(frame[2], str):
            self._refused("a malformed call")
            quiet.warning("malformed-call", "malformed call: %.120s", text)
            await self._reply_error(unique_id, "FormatViolation", "malformed call")
            return
        _, _, action, payload = frame
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
            check_action(self.version, call.action)
            # Numbers before the schema: a decimal multipleOf cannot take an infinite or
            # huge one (decimal.InvalidOperation), which must not become an InternalError.
            check_numbers(call.payload)
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
            quiet.warning(f"refused-{exc.code}", "answering %.40s %s with %s: %s", call.action,
                          call.unique_id, exc.code, exc.details or exc.description)
            if exc.code not in ("NotImplemented", "NotSupported", "InternalError"):
                # An action we lack is no fault of the message; a payload off the schema is.
                self._refused(f"{call.action[:40]} refused with {exc.code}")
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
