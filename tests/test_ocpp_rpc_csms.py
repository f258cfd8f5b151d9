"""The ocpp-rpc strict-mode CSMS wrapper, driven by a bare OCPP-J 1.6 client.

The client below is deliberately nothing but JSON arrays over websockets, so
these tests exercise ocpp-rpc's own validation rather than any of our code.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ocpp_rpc_csms
import pytest
from ocpp_rpc_csms import (
    CsmsCallError,
    CsmsInvalidResponse,
    OcppRpcCsms,
    Record,
    ocpp_rpc_available,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

OCPP16 = Subprotocol("ocpp1.6")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_utc_z(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value).tzinfo is not None


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    # Node reports a frame on stdout after putting it on the socket, so the
    # charger may see an answer a moment before Python has recorded it.
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class RawCp:
    """A bare OCPP-J 1.6 charger: JSON arrays over a websocket, nothing more."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.incoming: asyncio.Queue[list] = asyncio.Queue()  # CSMS-initiated calls
        self.closed: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()
        self._answers: dict[str, asyncio.Future[list]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, subprotocols: list[Subprotocol] | None = [OCPP16]) -> RawCp:  # noqa: B006
        # None sends no Sec-WebSocket-Protocol header at all.
        return cls(await connect(url, subprotocols=subprotocols, open_timeout=5))

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    self.incoming.put_nowait(frame)
                elif (fut := self._answers.pop(frame[1], None)) is not None:
                    fut.set_result(frame)
        except ConnectionClosed as exc:
            self.closed.set_result(exc)
        else:
            self.closed.set_result(None)
        for fut in self._answers.values():
            fut.set_exception(ConnectionError("closed"))

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def call(
        self, action: str, payload: dict, *, unique_id: str | None = None, timeout: float = 5.0
    ) -> list:
        """Send a CALL and return the whole answer frame ([3, id, payload] or [4, id, ...])."""
        unique_id = unique_id or str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self._answers[unique_id] = fut
        await self.send([2, unique_id, action, payload])
        async with asyncio.timeout(timeout):
            return await fut

    async def result(self, action: str, payload: dict) -> dict:
        frame = await self.call(action, payload)
        assert frame[0] == 3, f"{action} answered with {frame}"
        return frame[2]

    async def next_call(self, timeout: float = 5.0) -> list:
        async with asyncio.timeout(timeout):
            return await self.incoming.get()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@pytest.fixture
async def csms():
    async with OcppRpcCsms() as server:
        yield server


@pytest.fixture
async def cp(csms):
    charger = await RawCp.connect(f"{csms.url}/CP1")
    await csms.wait_connected("CP1")
    yield charger
    await charger.close()


def start_tx(id_tag: str = "TAG1", **overrides: Any) -> dict:
    payload = {"connectorId": 1, "idTag": id_tag, "meterStart": 0, "timestamp": now()}
    payload.update(overrides)
    return payload


# --------------------------------------------------------------------------- availability


def test_available_here():
    # Node is part of this project's toolchain; say so loudly if it is missing.
    reason = ocpp_rpc_available()
    if reason is not None:
        pytest.skip(reason)


def test_unavailable_reason_names_node(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = ocpp_rpc_csms._check_availability()
    assert reason is not None and "node" in reason.lower()


def _fake_exe(directory, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_unavailable_reason_names_npm(monkeypatch, tmp_path):
    _fake_exe(tmp_path, "node", "echo v20.1.0\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ocpp_rpc_csms, "_installed", lambda: False)
    reason = ocpp_rpc_csms._check_availability()
    assert reason is not None and "npm not found" in reason


def test_unavailable_reason_quotes_npm_failure(monkeypatch, tmp_path):
    _fake_exe(tmp_path, "node", "echo v20.1.0\n")
    _fake_exe(tmp_path, "npm", "echo 'npm error code E404 no such package' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ocpp_rpc_csms, "_installed", lambda: False)
    reason = ocpp_rpc_csms._check_availability()
    assert reason is not None
    assert "npm ci" in reason and "exit 1" in reason and "E404 no such package" in reason


def test_unavailable_reason_names_old_node(monkeypatch, tmp_path):
    _fake_exe(tmp_path, "node", "echo v16.20.0\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = ocpp_rpc_csms._check_availability()
    assert reason is not None and "16.20" in reason and "too old" in reason


# --------------------------------------------------------------------------- lifecycle


async def test_start_is_quick_and_stop_reaps_node():
    server = OcppRpcCsms()
    started = time.monotonic()
    await server.start()
    startup = time.monotonic() - started
    assert server.url.startswith("ws://127.0.0.1:") and server.url.endswith("/ocpp")
    assert server.ocpp_rpc_version == "2.2.1"
    proc = server._proc
    assert proc is not None
    await server.stop()
    # Exit status 0, not -9: Node left by itself when its stdin closed, which
    # is also what happens if the test process dies.
    assert proc.returncode == 0
    assert startup < 5, f"starting took {startup:.2f}s"
    await server.stop()  # idempotent


async def test_node_exits_when_stdin_closes(csms):
    proc = csms._proc
    proc.stdin.close()
    async with asyncio.timeout(5):
        assert await proc.wait() == 0
    with pytest.raises(ConnectionError):
        await csms.wait_connected("nobody", timeout=5)


# --------------------------------------------------------------------------- charger calls


async def test_core_conversation(csms, cp):
    boot = await cp.result(
        "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "One"}
    )
    assert boot["status"] == "Accepted"
    assert boot["interval"] == csms.heartbeat_interval == 300
    assert is_utc_z(boot["currentTime"])

    beat = await cp.result("Heartbeat", {})
    assert is_utc_z(beat["currentTime"])

    assert await cp.result("Authorize", {"idTag": "TAG1"}) == {"idTagInfo": {"status": "Accepted"}}
    first = await cp.result("StartTransaction", start_tx("TAG1"))
    second = await cp.result("StartTransaction", start_tx("TAG2", connectorId=2))
    assert (first["transactionId"], second["transactionId"]) == (1, 2)
    assert first["idTagInfo"] == {"status": "Accepted"}

    assert (
        await cp.result(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": 1,
                "meterValue": [{"timestamp": now(), "sampledValue": [{"value": "1234"}]}],
            },
        )
        == {}
    )
    assert (
        await cp.result(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": now()},
        )
        == {}
    )
    stop = {"transactionId": 1, "meterStop": 1500, "timestamp": now()}
    assert await cp.result("StopTransaction", stop) == {}
    assert await cp.result("StopTransaction", {**stop, "transactionId": 2, "idTag": "TAG2"}) == {
        "idTagInfo": {"status": "Accepted"}
    }
    assert await cp.result("DataTransfer", {"vendorId": "com.acme", "data": "x"}) == {
        "status": "UnknownVendorId"
    }
    assert await cp.result("DiagnosticsStatusNotification", {"status": "Idle"}) == {}
    assert await cp.result("FirmwareStatusNotification", {"status": "Idle"}) == {}

    assert csms.bad_frames == []
    assert [r.action for r in csms.calls()] == [
        "BootNotification",
        "Heartbeat",
        "Authorize",
        "StartTransaction",
        "StartTransaction",
        "MeterValues",
        "StatusNotification",
        "StopTransaction",
        "StopTransaction",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ]
    assert len(csms.calls("StartTransaction", identity="CP1")) == 2
    assert csms.calls(identity="CP2") == []

    await eventually(lambda: len(csms.records) == 24)
    boot_call, boot_result = csms.records[:2]
    assert boot_call.direction == "cp->csms" and boot_call.kind == "call"
    assert boot_call.payload == {"chargePointVendor": "Acme", "chargePointModel": "One"}
    assert boot_result == Record(
        direction="csms->cp",
        identity="CP1",
        kind="result",
        action="BootNotification",
        unique_id=boot_call.unique_id,
        payload=boot,
        time=boot_result.time,
    )
    assert boot_call.time <= boot_result.time


async def test_tag_rules(csms, cp):
    csms.rejected_tags = {"STOLEN"}
    csms.parent_id_tags["CHILD"] = "FAMILY"  # mutation in place reaches Node too

    async def status(tag: str) -> dict:
        return (await cp.result("Authorize", {"idTag": tag}))["idTagInfo"]

    assert await status("STOLEN") == {"status": "Invalid"}
    assert await status("BLOCKED-7") == {"status": "Blocked"}
    assert await status("EXPIRED-7") == {"status": "Expired"}
    assert await status("CHILD") == {"status": "Accepted", "parentIdTag": "FAMILY"}
    assert await status("ANYONE") == {"status": "Accepted"}

    csms.rejected_tags.add("ANYONE")
    assert await status("ANYONE") == {"status": "Invalid"}
    csms.rejected_tags.discard("ANYONE")
    assert await status("ANYONE") == {"status": "Accepted"}

    started = await cp.result("StartTransaction", start_tx("BLOCKED-1"))
    assert started["idTagInfo"] == {"status": "Blocked"}
    stopped = await cp.result(
        "StopTransaction",
        {"transactionId": 1, "meterStop": 1, "timestamp": now(), "idTag": "CHILD"},
    )
    assert stopped == {"idTagInfo": {"status": "Accepted", "parentIdTag": "FAMILY"}}
    assert csms.bad_frames == []


async def test_settings_before_and_after_start():
    server = OcppRpcCsms()
    server.boot_status = "Pending"
    server.heartbeat_interval = 42
    async with server:
        charger = await RawCp.connect(f"{server.url}/CP1")
        boot = {"chargePointVendor": "Acme", "chargePointModel": "One"}
        assert (await charger.result("BootNotification", boot))["status"] == "Pending"
        server.boot_status = "Rejected"
        server.heartbeat_interval = 7
        answer = await charger.result("BootNotification", boot)
        assert (answer["status"], answer["interval"]) == ("Rejected", 7)
        await charger.close()
    with pytest.raises(ValueError):
        server.boot_status = "Maybe"


async def test_respond_false_leaves_calls_unanswered(csms, cp):
    csms.respond = False
    with pytest.raises(TimeoutError):
        await cp.call("Heartbeat", {}, timeout=0.5)
    assert [r.action for r in csms.calls()] == ["Heartbeat"]
    csms.respond = True
    assert is_utc_z((await cp.result("Heartbeat", {}))["currentTime"])


async def test_unknown_action_is_not_implemented_but_not_a_bad_frame(csms, cp):
    answer = await cp.call("SecurityEventNotification", {"type": "X", "timestamp": now()})
    assert answer[0] == 4 and answer[2] == "NotImplemented"
    assert csms.bad_frames == []


# --------------------------------------------------------------------------- strict mode


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-23 10:00:00",  # space and no zone: stock ocpp-rpc accepts this
        "2026-11-23T10:00:00",  # local time: stock ocpp-rpc accepts this
        "2026-11-23 10:00:00Z",  # space separator: stock ocpp-rpc accepts this
        "2026-11-23T10:00:00+0100",  # offset without colon: stock ocpp-rpc accepts this
        "2026-02-30T10:00:00Z",
        "2026-11-23T10:00Z",
        "23.11.2026 10:00:00",
        "",
    ],
)
async def test_bad_timestamp_is_rejected(csms, cp, timestamp):
    unique_id = str(uuid.uuid4())
    answer = await cp.call("StartTransaction", start_tx(timestamp=timestamp), unique_id=unique_id)
    assert answer[:3] == [4, unique_id, "FormationViolation"]
    assert "timestamp" in answer[3]

    await eventually(lambda: len(csms.bad_frames) == 1 and len(csms.records) == 2)
    (bad,) = csms.bad_frames
    assert bad["source"] == "strictValidationFailure"
    assert (bad["identity"], bad["kind"], bad["action"], bad["unique_id"]) == (
        "CP1",
        "call",
        "StartTransaction",
        unique_id,
    )
    assert bad["payload"]["timestamp"] == timestamp
    assert bad["errors"][0]["instancePath"] == "/timestamp"
    # The rejected frame and the CallError are both recorded.
    call, error = csms.records
    assert (call.kind, call.payload["timestamp"]) == ("call", timestamp)
    assert (error.direction, error.kind, error.action) == ("csms->cp", "error", "StartTransaction")
    assert error.payload["errorCode"] == "FormationViolation"


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-23T10:00:00Z",
        "2026-11-23T10:00:00.123456Z",
        "2026-11-23T11:00:00+01:00",
        "2016-12-31T23:59:60Z",
    ],
)
async def test_good_timestamp_is_accepted(csms, cp, timestamp):
    answer = await cp.call("StartTransaction", start_tx(timestamp=timestamp))
    assert answer[0] == 3
    assert csms.bad_frames == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        # ocpp-rpc sends the OCPP 1.6 spellings FormationViolation and
        # OccurrenceConstraintViolation (errata), not FormatViolation/Occurence...
        ({"meterStart": None}, "OccurrenceConstraintViolation"),
        ({"idTag": None}, "OccurrenceConstraintViolation"),
        ({"connectorId": "1"}, "TypeConstraintViolation"),
        ({"idTag": "X" * 21}, "FormationViolation"),
        ({"colour": "red"}, "PropertyConstraintViolation"),
    ],
)
async def test_schema_violation_is_rejected(csms, cp, change, code):
    payload = start_tx()
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    answer = await cp.call("StartTransaction", payload)
    assert answer[0] == 4 and answer[2] == code
    await eventually(lambda: len(csms.bad_frames) == 1)
    assert csms.bad_frames[0]["action"] == "StartTransaction"


async def test_malformed_frames_are_bad_frames(csms, cp):
    await cp.send("this is not json")
    await cp.send([3, "never-asked", {}])
    await eventually(lambda: len(csms.bad_frames) == 2)
    assert [b["source"] for b in csms.bad_frames] == ["badMessage", "badMessage"]
    assert csms.bad_frames[0]["raw"] == "this is not json"
    assert csms.bad_frames[0]["response"][2] == "RpcFrameworkError"
    assert "never-asked" in csms.bad_frames[1]["error_message"]
    # The connection survives and still validates.
    assert (await cp.result("Heartbeat", {}))["currentTime"]


@pytest.mark.parametrize("offered", [None, [Subprotocol("ocpp2.0.1")]])
async def test_missing_subprotocol_is_a_bad_frame(csms, offered):
    charger = await RawCp.connect(f"{csms.url}/CP9", subprotocols=offered)
    assert charger.ws.subprotocol is None
    async with asyncio.timeout(5):
        closed = await charger.closed
    assert closed.rcvd is not None and closed.rcvd.code == 1002
    await eventually(lambda: len(csms.bad_frames) == 1)
    assert csms.bad_frames[0]["source"] == "subprotocol"
    assert csms.bad_frames[0]["identity"] == "CP9"
    assert not csms.is_connected("CP9")


# --------------------------------------------------------------------------- connections


async def test_identity_is_last_path_segment_under_any_prefix(csms):
    base = csms.url.removesuffix("/ocpp")
    one = await RawCp.connect(f"{base}/some/deep/prefix/CP%20one")
    two = await RawCp.connect(f"{csms.url}/CP2")
    await csms.wait_connected("CP one")
    await csms.wait_connected("CP2")
    assert csms.subprotocol("CP one") == "ocpp1.6"
    assert csms.subprotocol("nobody") is None
    assert sorted(c["identity"] for c in await csms.connections()) == ["CP one", "CP2"]
    await one.result("Heartbeat", {})
    assert [r.identity for r in csms.calls("Heartbeat")] == ["CP one"]
    await one.close()
    await two.close()
    await eventually(lambda: not csms.is_connected("CP one") and not csms.is_connected("CP2"))


async def test_wait_connected_times_out(csms):
    with pytest.raises(TimeoutError):
        await csms.wait_connected("ghost", timeout=0.2)


async def test_drop_cuts_the_socket_without_close_handshake(csms, cp):
    await csms.drop("CP1")
    assert not csms.is_connected("CP1")
    async with asyncio.timeout(5):
        closed = await cp.closed
    assert closed.rcvd is None  # no close frame: the TCP connection just went away

    again = await RawCp.connect(f"{csms.url}/CP1")
    await csms.wait_connected("CP1")
    assert (await again.result("Heartbeat", {}))["currentTime"]
    await again.close()

    with pytest.raises(ConnectionError):
        await csms.drop("nobody")


# --------------------------------------------------------------------------- CSMS calls


async def _answer_next(cp: RawCp, make_answer: Callable[[list], list]) -> list:
    request = await cp.next_call()
    await cp.send(make_answer(request))
    return request


async def test_csms_call_round_trip(csms, cp):
    answer = {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}]}
    responder = asyncio.create_task(_answer_next(cp, lambda req: [3, req[1], answer]))
    result = await csms.call("CP1", "GetConfiguration", {"key": ["HeartbeatInterval"]})
    request = await responder
    assert result == answer
    assert request[2:] == ["GetConfiguration", {"key": ["HeartbeatInterval"]}]

    await eventually(lambda: len(csms.records) == 2)
    call, reply = csms.records
    assert (call.direction, call.kind, call.action) == ("csms->cp", "call", "GetConfiguration")
    assert (reply.direction, reply.kind, reply.action) == ("cp->csms", "result", "GetConfiguration")
    assert call.unique_id == reply.unique_id == request[1]
    assert csms.calls() == []  # calls() is what the charger asked
    assert csms.bad_frames == []


async def test_csms_call_error_keeps_the_wire_code(csms, cp):
    for code in ("NotSupported", "SomethingNonStandard"):
        responder = asyncio.create_task(
            _answer_next(cp, lambda req, c=code: [4, req[1], c, "nope", {"why": "test"}])
        )
        with pytest.raises(CsmsCallError) as info:
            await csms.call("CP1", "Reset", {"type": "Soft"})
        await responder
        assert (info.value.code, info.value.description) == (code, "nope")
        assert info.value.details == {"why": "test"}
    await eventually(lambda: len(csms.records) == 4)
    assert csms.records[-1].payload == {
        "errorCode": "SomethingNonStandard",
        "errorDescription": "nope",
        "errorDetails": {"why": "test"},
    }
    assert csms.records[-1].action == "Reset"


async def test_invalid_charger_response_is_a_bad_frame(csms, cp):
    responder = asyncio.create_task(_answer_next(cp, lambda req: [3, req[1], {"status": "Maybe"}]))
    with pytest.raises(CsmsInvalidResponse) as info:
        await csms.call("CP1", "Reset", {"type": "Hard"})
    await responder
    assert info.value.details["response"] == {"status": "Maybe"}
    assert len(csms.bad_frames) == 1
    bad = csms.bad_frames[0]
    assert (bad["kind"], bad["action"], bad["payload"]) == ("result", "Reset", {"status": "Maybe"})


async def test_csms_call_timeout_bad_request_and_unknown_charger(csms, cp):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await csms.call("CP1", "ClearCache", {}, timeout=0.3)
    assert time.monotonic() - started < 3
    await cp.next_call()  # it was sent; we just never answered

    with pytest.raises(ValueError, match="strict mode"):
        await csms.call("CP1", "Reset", {"type": "Sideways"})
    with pytest.raises(ValueError, match="strict mode"):
        await csms.call(
            "CP1", "ReserveNow", {
                "connectorId": 1,
                "expiryDate": "2026-11-23 10:00:00",
                "idTag": "T",
                "reservationId": 1,
            },
        )  # fmt: skip
    with pytest.raises(ConnectionError):
        await csms.call("nobody", "ClearCache", {})


async def test_charger_disconnect_during_call(csms, cp):
    async def hang_up() -> None:
        await cp.next_call()
        await cp.ws.close()

    task = asyncio.create_task(hang_up())
    with pytest.raises(ConnectionError):
        await csms.call("CP1", "ClearCache", {}, timeout=5)
    await task


# --------------------------------------------------------------------------- recording


async def test_wait_for_call_mark_and_on_record():
    seen: list[Record] = []
    async with OcppRpcCsms(on_record=seen.append) as server:
        charger = await RawCp.connect(f"{server.url}/CP1")
        waiter = asyncio.create_task(server.wait_for_call("Heartbeat", identity="CP1"))
        await asyncio.sleep(0)
        await charger.result("Heartbeat", {})
        first = await waiter
        assert (first.action, first.identity) == ("Heartbeat", "CP1")

        mark = server.mark()
        with pytest.raises(TimeoutError):
            await server.wait_for_call("Heartbeat", after=mark, timeout=0.2)
        assert await server.wait_for_call("Heartbeat") is first

        await charger.result("Authorize", {"idTag": "A"})
        await charger.result("Authorize", {"idTag": "B"})
        b = await server.wait_for_call("Authorize", predicate=lambda p: p["idTag"] == "B")
        assert b.payload == {"idTag": "B"}
        with pytest.raises(TimeoutError):
            await server.wait_for_call("Authorize", identity="CP2", timeout=0.1)

        await eventually(lambda: len(server.records) == 6)
        assert seen == server.records
        await charger.close()
