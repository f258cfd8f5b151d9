"""Hostile and broken frames over a real WebSocket, in 1.6 and 2.0.1: whatever the CSMS sends,
the link stays up (one connection, no close code), the agent keeps running, caches do not grow
with names a peer makes up, every call whose id can be read is answered exactly once, and
malformed input is never answered InternalError. Complaints are logged at a bounded rate.

The CSMS is the dev CSMS; frames it cannot send through `send_raw` (binary ones, and frames
nested deeper than its own JSON parser goes) go straight to its side of the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from dialects import DIALECTS
from harness import RunningAgent, make_config
from ocpp.messages import _validators as ocpp_validators

from cpagent import rpc
from cpagent.clock import Clock
from cpagent.devcsms import CP_TO_CSMS, DevCsms, Record
from cpagent.logs import RateLimited

CP = "CP-TEST"
# Canonical (2.0.1) error code -> the spelling each version's specification uses on the wire.
SPELLING = {
    "1.6": {"FormatViolation": "FormationViolation", "RpcFrameworkError": "ProtocolError",
            "MessageTypeNotSupported": "NotImplemented"},
    "2.0.1": {},
}
# A harmless call each version answers with a CallResult.
PROBE = {
    "1.6": ("GetConfiguration", {"key": ["HeartbeatInterval"]}),
    "2.0.1": ("GetVariables", {"getVariableData": [{
        "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
}
# The start of a call whose message id can be read without parsing the frame.
READABLE_ID = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"\s*,')


@dataclass
class Link:
    version: str
    csms: DevCsms
    charger: RunningAgent
    probes: int = 0

    def code(self, canonical: str) -> str:
        return SPELLING[self.version].get(canonical, canonical)

    @property
    def ws(self) -> Any:
        """The CSMS's side of the WebSocket, for frames `send_raw` cannot send."""
        return self.csms._sessions[CP].ws

    async def send(self, text: str) -> None:
        await self.csms.send_raw(CP, text)

    def answers(self, after: int) -> list[Record]:
        return [r for r in self.csms.records[after:]
                if r.direction == CP_TO_CSMS and r.kind != "call"]

    async def until(self, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def answered(self, after: int, count: int, timeout: float = 10.0) -> list[Record]:
        """The first `count` answers since `after`, once they are there."""
        await self.until(lambda: len(self.answers(after)) >= count, f"{count} answers", timeout)
        return self.answers(after)[:count]

    async def probe(self) -> Record:
        """A well-formed call, answered once the frames sent before it were read (frames are
        read in order and refused ones answered on the spot)."""
        self.probes += 1
        unique_id = f"probe-{self.probes}"
        mark = self.csms.mark()
        action, payload = PROBE[self.version]
        await self.send(json.dumps([2, unique_id, action, payload]))
        await self.until(lambda: any(r.unique_id == unique_id for r in self.answers(mark)),
                         f"the answer to {unique_id}")
        answer = next(r for r in self.answers(mark) if r.unique_id == unique_id)
        assert answer.kind == "result", answer
        return answer

    async def assert_alive(self) -> None:
        """The same connection still carries calls both ways, and the agent runs on."""
        assert self.charger.task is not None and not self.charger.task.done()
        agent = self.charger.agent
        assert agent is not None
        assert agent.transport.connect_count == 1
        assert self.csms.is_connected(CP) and not self.csms.close_codes.get(CP)
        # The `ocpp` package keeps every answer it did not ask for and discards them one
        # recursion level each at its next call: forget them first.
        stale = self.csms._sessions[CP].cp._response_queue
        while not stale.empty():
            stale.get_nowait()
        mark = self.csms.mark()
        if self.version == "1.6":
            answer = await self.csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
            assert [k["key"] for k in answer["configurationKey"]] == ["HeartbeatInterval"]
        else:
            answer = await self.csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"})
            assert answer == {"status": "Accepted"}
            await self.csms.wait_for_call("Heartbeat", identity=CP, after=mark, timeout=5)
        assert agent.transport.connect_count == 1 and not self.csms.close_codes.get(CP)
        assert not self.charger.task.done()


@pytest.fixture(params=["1.6", "2.0.1"])
async def link(request, tmp_path) -> AsyncIterator[Link]:
    version = request.param
    async with DevCsms(subprotocols=(DIALECTS[version].subprotocol,)) as csms:
        charger = RunningAgent(make_config(tmp_path, csms.url, csms={"ocpp_version": version}),
                               Clock("system"))
        await charger.start()
        try:
            await DIALECTS[version](csms).wait_status("Available")
            yield Link(version, csms, charger)
        finally:
            await charger.stop()


def error_code(record: Record) -> str:
    assert record.kind == "error", record
    return record.payload["errorCode"]


# ---- nesting ------------------------------------------------------------------------------


async def test_deeply_nested_frames_are_refused_and_the_link_stays(link):
    mark = link.csms.mark()
    refused = []
    for depth in (1000, 100_000):
        arrays = "[" * depth + "]" * depth
        objects = '{"a":' * depth + "0" + "}" * depth
        for kind, nested in (("arrays", arrays), ("objects", objects)):
            unique_id = f"deep-{kind}-{depth}"
            refused.append(unique_id)
            # Deeper than the dev CSMS's own parser goes: straight onto the socket.
            await link.ws.send(
                f'[2,"{unique_id}","DataTransfer",{{"vendorId":"x","data":{nested}}}]')
            await link.ws.send(nested)  # the whole frame: no id to answer with
            await link.ws.send(f'[2,{nested},"DataTransfer",{{}}]')  # nor here
    # Brackets inside a string are text, not nesting.
    flat = "[{" * 50_000
    await link.send(f'[2,"flat-1","DataTransfer",{{"vendorId":"x","data":"{flat}"}}]')
    probe = await link.probe()
    answers = {r.unique_id: r for r in link.answers(mark)}
    assert sorted(answers) == sorted([*refused, "flat-1", probe.unique_id])
    for unique_id in refused:
        assert error_code(answers[unique_id]) == link.code("FormatViolation")
    assert answers["flat-1"].kind == "result"
    assert answers["flat-1"].payload == {"status": "UnknownVendorId"}
    await link.assert_alive()


# ---- message ids --------------------------------------------------------------------------


async def test_message_ids_longer_than_ocpp_j_allows_are_never_echoed(link):
    action, payload = PROBE[link.version]
    too_long = ["x" * 37, "y" * 100, "z" * 100_000, "ü" * 37, "a-" * 19]
    unusable: list[Any] = [*too_long, "", 42, None, ["a"], {"id": "a"}, True]
    mark = link.csms.mark()
    for unique_id in unusable:
        await link.send(json.dumps([2, unique_id, action, payload]))
    longest = "b" * 36  # a UUID's length is allowed
    await link.send(json.dumps([2, longest, action, payload]))
    # Unparseable and its id too long to be read: nothing to answer with.
    await link.send(f'[2,"{"c" * 37}","{action}",{{')
    answers = await link.answered(mark, len(unusable) + 1)
    probe = await link.probe()
    answers = link.answers(mark)
    assert [r.unique_id for r in answers] == ["-1"] * len(unusable) + [longest,
                                                                       probe.unique_id]
    for answer in answers[:len(unusable)]:
        assert error_code(answer) == link.code("RpcFrameworkError")
    assert answers[len(unusable)].kind == "result"
    assert not any(len(r.unique_id) > 36 for r in link.csms.records if r.direction == CP_TO_CSMS)
    await link.assert_alive()


# ---- binary frames ------------------------------------------------------------------------


async def test_binary_frames_are_refused_not_executed_and_the_link_stays(link):
    mark = link.csms.mark()
    trigger = {"requestedMessage": "Heartbeat"}
    await link.ws.send(json.dumps([2, "bin-1", "TriggerMessage", trigger]).encode())
    await link.ws.send(b"")
    await link.ws.send(bytes(range(256)) * 256)
    await link.ws.send(b'[2,"bin-2",' + b"\xff\xfe" * 100)
    await link.ws.send(b"\xff\xfe" + json.dumps([2, "bin-3", "Heartbeat", {}]).encode())
    probe = await link.probe()
    await asyncio.sleep(0.3)  # a triggered Heartbeat would follow its answer within 0.05 s
    answers = {r.unique_id: r for r in link.answers(mark)}
    assert sorted(answers) == sorted(["bin-1", "bin-2", probe.unique_id])
    assert error_code(answers["bin-1"]) == link.code("FormatViolation")
    assert error_code(answers["bin-2"]) == link.code("FormatViolation")
    sent = [r.action for r in link.csms.records[mark:] if r.kind == "call"
            and r.direction == CP_TO_CSMS]
    # No Heartbeat, nor anything else but the one InvalidMessages security event.
    assert set(sent) <= {"SecurityEventNotification"} and len(sent) <= 1, sent
    await link.assert_alive()


# ---- compression --------------------------------------------------------------------------


async def test_no_compression_so_small_frames_cannot_inflate_to_big_ones(link):
    # With permessage-deflate a few kilobytes on the wire inflate to many megabytes before
    # flow control stops the reader: the agent does not offer it.
    assert "Sec-WebSocket-Extensions" not in link.ws.request.headers
    assert link.ws.protocol.extensions == []
    big = "A" * 1_000_000  # under the 1 MiB frame limit
    mark = link.csms.mark()
    for n in range(20):
        await link.ws.send(f'[2,"big-{n}","DataTransfer",{{"vendorId":"x","data":"{big}"}}]')
    answers = await link.answered(mark, 20)
    assert [(r.unique_id, r.payload) for r in answers] == [
        (f"big-{n}", {"status": "UnknownVendorId"}) for n in range(20)]
    await link.assert_alive()


# ---- action names -------------------------------------------------------------------------

BOGUS_ACTIONS = ["../../x", "%2e%2e/etc/passwd", "..\\..\\win.ini", "/etc/passwd", "", " ",
                 "Reset/../../x", "v16/schemas/Reset", "v201/schemas/ResetRequest",
                 "Heartbeat\u0000", "heartbeat", "RESET", "Reset ", "ResetRequest",
                 "ResetResponse", "__class__", "Ünïcødé", "x" * 10_000]


def random_actions(version: str, count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "./%_-"
    names: set[str] = set()
    while len(names) < count:
        name = "".join(rng.choices(alphabet, k=rng.randint(4, 24)))
        if name not in rpc.KNOWN_ACTIONS[version]:
            names.add(name)
    return sorted(names)


async def test_bogus_action_names_are_not_implemented_and_cache_nothing(link):
    await link.probe()  # what a normal call caches is cached now
    cached = set(ocpp_validators)
    compiled = set(getattr(rpc, "_COMPILED", {}))
    names = [*BOGUS_ACTIONS, *random_actions(link.version, 20_000)]
    mark = link.csms.mark()
    for n, name in enumerate(names):
        await link.send(json.dumps([2, f"b{n}", name, {}]))
    answers = await link.answered(mark, len(names), timeout=15)
    assert [r.unique_id for r in answers] == [f"b{n}" for n in range(len(names))]
    assert Counter(error_code(r) for r in answers) == {"NotImplemented": len(names)}
    assert set(ocpp_validators) == cached
    assert set(getattr(rpc, "_COMPILED", {})) == compiled
    await link.assert_alive()


# ---- numbers ------------------------------------------------------------------------------

NUMBERS = {
    "NaN": "FormatViolation", "Infinity": "FormatViolation", "-Infinity": "FormatViolation",
    "1e308": "PropertyConstraintViolation", "1e999": "PropertyConstraintViolation",
    "-1e999": "PropertyConstraintViolation",
    "1.7976931348623157e308": "PropertyConstraintViolation",
    "123456789012345678901234567890": "PropertyConstraintViolation",
    "-9007199254740993": "PropertyConstraintViolation",
    "1" * 5000: "FormatViolation",  # more digits than Python parses into an int
}
PROFILE16 = ('{"connectorId":1,"csChargingProfiles":{"chargingProfileId":1,"stackLevel":0,'
             '"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":"Absolute",'
             '"chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":'
             '[{"startPeriod":0,"limit":NUM}]}}}')
PROFILE201 = ('{"evseId":1,"chargingProfile":{"id":1,"stackLevel":0,'
              '"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":"Absolute",'
              '"chargingSchedule":[{"id":1,"chargingRateUnit":"A","chargingSchedulePeriod":'
              '[{"startPeriod":0,"limit":NUM}]}]}}')
NUMBER_CALLS = {
    "1.6": [("SetChargingProfile", PROFILE16),
            ("RemoteStartTransaction", '{"idTag":"T1","connectorId":NUM}'),
            ("TriggerMessage", '{"requestedMessage":"Heartbeat","connectorId":NUM}'),
            ("ChangeAvailability", '{"connectorId":NUM,"type":"Operative"}'),
            ("RemoteStopTransaction", '{"transactionId":NUM}')],
    "2.0.1": [("GetVariables", '{"getVariableData":[{"component":{"name":"OCPPCommCtrlr",'
                               '"evse":{"id":NUM}},"variable":{"name":"HeartbeatInterval"}}]}'),
              ("SetVariables", '{"setVariableData":[{"attributeValue":"1","component":'
                               '{"name":"OCPPCommCtrlr","evse":{"id":NUM}},'
                               '"variable":{"name":"HeartbeatInterval"}}]}'),
              ("SetChargingProfile", PROFILE201),
              ("TriggerMessage", '{"requestedMessage":"Heartbeat","evse":{"id":NUM}}')],
}


async def test_non_finite_and_huge_numbers_are_refused_with_the_proper_code(link):
    expected = {}
    mark = link.csms.mark()
    for action, template in NUMBER_CALLS[link.version]:
        for n, (literal, code) in enumerate(NUMBERS.items()):
            unique_id = f"{action[:20]}-{n}"
            expected[unique_id] = link.code(code)
            await link.send(f'[2,"{unique_id}","{action}",{template.replace("NUM", literal)}]')
    answers = await link.answered(mark, len(expected))
    assert {r.unique_id: error_code(r) for r in answers} == expected
    await link.assert_alive()


# ---- text ---------------------------------------------------------------------------------

TEXT_CALLS = {
    "1.6": [("SendLocalList", '{"listVersion":3,"updateType":"Full","localAuthorizationList":'
                              '[{"idTag":"STR","idTagInfo":{"status":"Accepted"}}]}'),
            ("ChangeConfiguration", '{"key":"STR","value":"STR"}')],
    "2.0.1": [("SendLocalList", '{"versionNumber":3,"updateType":"Full","localAuthorizationList":'
                                '[{"idToken":{"idToken":"STR","type":"Central"},'
                                '"idTokenInfo":{"status":"Accepted"}}]}'),
              ("SetVariables", '{"setVariableData":[{"attributeValue":"STR","component":'
                               '{"name":"STR"},"variable":{"name":"HeartbeatInterval"}}]}')],
}


async def test_strings_that_are_not_unicode_text_are_refused_not_stored(link):
    # An unpaired surrogate escape is JSON but no UTF-8 text: it cannot be stored or sent on.
    unpaired = ["\\ud800", "\\udfff\\ud800", "A\\uDBFFB"]
    expected = {}
    mark = link.csms.mark()
    for action, template in TEXT_CALLS[link.version]:
        for n, escape in enumerate(unpaired):
            unique_id = f"{action[:20]}-{n}"
            expected[unique_id] = link.code("FormatViolation")
            await link.send(f'[2,"{unique_id}","{action}",{template.replace("STR", escape)}]')
    answers = await link.answered(mark, len(expected))
    assert {r.unique_id: error_code(r) for r in answers} == expected
    # A surrogate pair is one character, and welcome.
    action, template = TEXT_CALLS[link.version][0]
    mark = link.csms.mark()
    pair = template.replace("STR", "\\ud83d\\ude00")
    await link.send(f'[2,"pair-1","{action}",{pair}]')
    (answer,) = await link.answered(mark, 1)
    assert (answer.kind, answer.payload) == ("result", {"status": "Accepted"})
    await link.assert_alive()


# ---- fuzzing ------------------------------------------------------------------------------

SEEDS: dict[str, list[list[Any]]] = {
    "1.6": [
        [2, "", "GetConfiguration", {"key": ["HeartbeatInterval", "MeterValueSampleInterval"]}],
        [2, "", "GetConfiguration", {}],
        [2, "", "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "60"}],
        [2, "", "DataTransfer", {"vendorId": "com.example", "messageId": "m", "data": "hi"}],
        [2, "", "GetLocalListVersion", {}],
        [2, "", "ClearCache", {}],
        [2, "", "RemoteStopTransaction", {"transactionId": 987654}],
        [2, "", "SendLocalList", {"listVersion": 3, "updateType": "Differential",
                                  "localAuthorizationList": [{"idTag": "TAG1", "idTagInfo": {
                                      "status": "Accepted",
                                      "expiryDate": "2030-01-01T00:00:00Z"}}]}],
        [2, "", "TriggerMessage", {"requestedMessage": "Heartbeat"}],
        [2, "", "SetChargingProfile", json.loads(PROFILE16.replace("NUM", "16.0"))],
        [3, "", {"currentTime": "2030-01-01T00:00:00Z"}],
        [4, "", "InternalError", "nothing", {}],
    ],
    "2.0.1": [
        [2, "", *PROBE["2.0.1"]],
        [2, "", "GetTransactionStatus", {}],
        [2, "", "GetLocalListVersion", {}],
        [2, "", "ClearCache", {}],
        [2, "", "DataTransfer", {"vendorId": "com.example", "messageId": "m", "data": [1, {}]}],
        [2, "", "TriggerMessage", {"requestedMessage": "Heartbeat"}],
        [2, "", "RequestStopTransaction", {"transactionId": "nope"}],
        [2, "", "SendLocalList", {"versionNumber": 3, "updateType": "Differential",
                                  "localAuthorizationList": [{
                                      "idToken": {"idToken": "TAG1", "type": "ISO14443"},
                                      "idTokenInfo": {"status": "Accepted"}}]}],
        [2, "", "SetChargingProfile", json.loads(PROFILE201.replace("NUM", "16.0"))],
        [3, "", {"currentTime": "2030-01-01T00:00:00Z"}],
        [4, "", "InternalError", "nothing", {}],
    ],
}
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 2**40, 1e308, -(2**63), "", "x",
                         "\u0000", [], {}, [[]], {"a": None}, "2030-13-45T99:99:99Z", "\ud800",
                         "é" * 300]


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into a JSON value."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, (*path, index))
    return found


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def mutate(rng: random.Random, frame: list, serial: int) -> str:
    """One hostile variant of a valid frame; calls carry id f<serial>, answers s<serial>."""
    frame = [frame[0], f"{'f' if frame[0] == 2 else 's'}{serial}", *frame[2:]]
    text = json.dumps(frame, ensure_ascii=rng.random() < 0.5)
    at = rng.randrange(len(text))
    how = rng.randrange(14)
    if how == 0:  # drop a character
        return text[:at] + text[at + 1:]
    if how == 1:  # duplicate one
        return text[:at] + text[at] + text[at:]
    if how == 2:  # swap two
        return text[:at] + text[at + 1:at + 2] + text[at] + text[at + 2:]
    if how == 3:  # truncate
        return text[:at]
    if how == 4:  # insert syntax
        return text[:at] + rng.choice('[]{}",:0\\ e-') + text[at:]
    if how == 5:  # a value of the wrong type anywhere in the payload
        path = rng.choice(_nodes(frame[-1]))
        return json.dumps(_replace(frame, (len(frame) - 1, *path), rng.choice(ODD_VALUES)))
    if how == 6:  # a huge string
        path = rng.choice(_nodes(frame[-1]))
        huge = rng.choice(string.printable) * rng.choice([1000, 100_000])
        return json.dumps(_replace(frame, (len(frame) - 1, *path), huge))
    if how == 7:  # an unknown or mistyped message type
        return json.dumps([rng.choice([0, 1, 5, 99, -1, "2", 2.5, None, True, [2], 2**70]),
                           *frame[1:]])
    if how == 8:  # too few or too many elements
        cut = frame[:rng.randrange(len(frame))]
        return json.dumps(cut if rng.random() < 0.7 else [*frame, {}])
    if how == 9:  # an answer to nothing we asked
        stray = f"s{serial}"
        return json.dumps(rng.choice([[3, stray, {}], [3, stray, "x"], [3, stray],
                                      [4, stray, "GenericError", "", {}], [4, stray],
                                      [4, stray, 5, None, []], [3, None, {}]]))
    if how == 10:  # an unusable message id
        return json.dumps([frame[0], rng.choice([*ODD_VALUES, "i" * 37]), *frame[2:]])
    if how == 11:  # a payload that is not an object
        return json.dumps([*frame[:-1], rng.choice(ODD_VALUES)])
    if how == 12:  # a number no field can hold where a number belongs
        numbers = [path for path in _nodes(frame[-1]) if isinstance(
            _get(frame[-1], path), int | float) and not isinstance(_get(frame[-1], path), bool)]
        path = rng.choice(numbers or [()])
        huge = rng.choice([1e308, -1e300, 2**64, 2**53 + 1, 1.7976931348623157e308])
        return json.dumps(_replace(frame, (len(frame) - 1, *path), huge))
    nested = frame[-1]  # deeper than any OCPP message
    for _ in range(rng.randint(20, 60)):
        nested = rng.choice([[nested], {"k": nested}])
    return json.dumps([*frame[:-1], nested])


def expected_answers(text: str) -> tuple[str | None, bool]:
    """(the id an answer may carry, whether one is owed), read independently of the agent:
    a call with a readable id is owed exactly one answer; so is a frame of an unknown type
    with a usable id (2.0.1: MessageTypeNotSupported). A frame that is no JSON text may be
    answered with the id its start shows."""
    try:
        frame = json.loads(text)
        json.dumps(frame, ensure_ascii=False).encode()  # an unpaired surrogate is not text
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        match = READABLE_ID.match(text)
        return (match.group(1) if match else None), False
    if not isinstance(frame, list) or not frame:
        return None, False
    kind, unique_id = frame[0], frame[1] if len(frame) > 1 else None
    usable = isinstance(unique_id, str) and 0 < len(unique_id) <= 36
    if kind == 2 and not isinstance(kind, bool):
        return (unique_id if usable else "-1"), True
    if kind not in (3, 4) or isinstance(kind, bool):
        return (unique_id, True) if usable else (None, False)
    return None, False


async def test_fuzzed_frames_never_drop_the_link_or_crash_the_agent(link):
    rng = random.Random(20240601)
    owed: Counter[str] = Counter()
    allowed: Counter[str] = Counter()
    mark = link.csms.mark()
    began = time.monotonic()
    sent = 0
    while sent < 3000 and time.monotonic() - began < 5:
        text = mutate(rng, rng.choice(SEEDS[link.version]), sent)
        unique_id, is_owed = expected_answers(text)
        if unique_id is not None:
            allowed[unique_id] += 1
            if is_owed:
                owed[unique_id] += 1
        await link.ws.send(text)  # some are deeper than the dev CSMS's parser goes
        sent += 1
    assert sent >= 1000

    def settled() -> bool:
        got = Counter(r.unique_id for r in link.answers(mark))
        return all(got[unique_id] >= count for unique_id, count in owed.items())

    await link.until(settled, "an answer to every call", timeout=15)
    probe = await link.probe()
    await asyncio.sleep(0.2)  # room for a second answer to anything, which would be wrong
    answers = [r for r in link.answers(mark) if r.unique_id != probe.unique_id]
    got = Counter(r.unique_id for r in answers)
    # Exactly one answer per call; a mutated id may match another frame's, which then may
    # have its own answer.
    for unique_id, count in got.items():
        assert owed[unique_id] <= count <= allowed[unique_id], (unique_id, count)
    assert all(got[unique_id] >= count for unique_id, count in owed.items())
    internal = [r for r in answers if r.kind == "error"
                and r.payload["errorCode"] == "InternalError"]
    assert internal == []
    await link.assert_alive()


# ---- logging ------------------------------------------------------------------------------


async def test_a_flood_of_identical_bad_frames_logs_a_handful_of_lines(link, caplog,
                                                                       monkeypatch):
    monkeypatch.setattr(rpc, "quiet", RateLimited(rpc.log, every=30.0))  # nothing said yet
    action, payload = PROBE[link.version]
    answered = {
        '[2,"same-1","GetConfiguration",{': 1,  # unparseable
        '[2,"same-2","../../x",{}]': 1,  # no such action
        json.dumps([2, "x" * 40, action, payload]): 1,  # an id too long
        '[5,"same-3",{}]': 1,  # no such message type
        '[2,"same-4","' + action + '",' + "[" * 30 + "]" * 30 + "]": 1,  # too deep
        '[3,"nobody",{}]': 0,  # an answer to nothing asked
        '{"hello": "world"}': 0,  # not a message
    }
    mark = link.csms.mark()
    with caplog.at_level(logging.WARNING):
        for text in answered:
            for _ in range(1000):
                await link.send(text)
        for _ in range(1000):
            await link.ws.send(b"\x00\x01")
        await link.answered(mark, 1000 * sum(answered.values()), timeout=15)
        await link.probe()
    ours = [r for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith("cpagent") and r.name != "cpagent.devcsms"]
    # A line for the first of a kind (some kinds share one); the rest wait for the next report.
    assert 0 < len(ours) <= len(answered) + 1, [r.getMessage() for r in ours]
    await link.assert_alive()
