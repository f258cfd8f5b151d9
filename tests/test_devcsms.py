"""DevCsms against a tiny charger built from websockets + ocpp's own ChargePoint."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from harness import self_signed
from ocpp.exceptions import FormatViolationError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from cpagent.devcsms import CsmsCallError, DevCsms, Record, format_record

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NOW = "2026-11-23T14:00:00.000Z"


class Charger(ChargePoint):
    """Charger side: answers the CSMS-initiated calls the tests use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remote_starts: list[dict] = []
        self.reset_gate = asyncio.Event()
        self.reset_gate.set()

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **kwargs: Any) -> call_result.RemoteStartTransaction:
        self.remote_starts.append({"id_tag": id_tag, **kwargs})
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.reset)
    async def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        await self.reset_gate.wait()
        return call_result.Reset(status="Accepted")


@pytest.fixture
async def csms() -> AsyncIterator[DevCsms]:
    async with DevCsms() as server:
        yield server


def _ws(csms: DevCsms, identity: str, **kwargs: Any) -> Any:
    kwargs.setdefault("subprotocols", ["ocpp1.6"])
    return connect(f"{csms.url}/{identity}", ping_interval=None, **kwargs)


@asynccontextmanager
async def charger(
    csms: DevCsms, identity: str = "CP-1", timeout: float = 2
) -> AsyncIterator[tuple[Charger, ClientConnection]]:
    async with _ws(csms, identity) as ws:
        cp = Charger(identity, ws, response_timeout=timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp, ws
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def raw(csms: DevCsms, identity: str = "CP-1") -> AsyncIterator[ClientConnection]:
    async with _ws(csms, identity) as ws:
        await csms.wait_connected(identity, timeout=1)
        yield ws


async def recv_json(ws: ClientConnection) -> list:
    return json.loads(await asyncio.wait_for(ws.recv(), 1))


def flow(records: list[Record]) -> list[tuple[str, str, str]]:
    return [(r.direction, r.kind, r.action) for r in records]


# -- the basic conversation ---------------------------------------------------


async def test_charging_session_flow(csms: DevCsms) -> None:
    csms.heartbeat_interval = 60
    async with charger(csms) as (cp, _):
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted"
        assert boot.interval == 60
        assert TIMESTAMP.match(boot.current_time)
        assert csms.is_connected("CP-1")
        assert csms.subprotocol("CP-1") == "ocpp1.6"

        auth = await cp.call(call.Authorize(id_tag="04A2B3C4"))
        assert auth.id_tag_info == {"status": "Accepted"}

        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="04A2B3C4", meter_start=0, timestamp=NOW)
        )
        assert start.transaction_id == 1
        assert start.id_tag_info == {"status": "Accepted"}
        await cp.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=1,
                meter_value=[{"timestamp": NOW, "sampledValue": [{"value": "120"}]}],
            )
        )
        stop = await cp.call(
            call.StopTransaction(
                meter_stop=1200, timestamp=NOW, transaction_id=1, id_tag="04A2B3C4"
            )
        )
        assert stop.id_tag_info == {"status": "Accepted"}
        stop = await cp.call(call.StopTransaction(meter_stop=1300, timestamp=NOW, transaction_id=1))
        assert stop.id_tag_info is None

        beat = await cp.call(call.Heartbeat())
        assert TIMESTAMP.match(beat.current_time)
        status = call.StatusNotification(
            connector_id=1, error_code="NoError", status="Available", timestamp=NOW
        )
        await cp.call(status)
        data = await cp.call(call.DataTransfer(vendor_id="acme", message_id="x", data="y"))
        assert data.status == "UnknownVendorId"
        await cp.call(call.DiagnosticsStatusNotification(status="Idle"))
        await cp.call(call.FirmwareStatusNotification(status="Idle"))

    actions = [
        "BootNotification",
        "Authorize",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
        "StopTransaction",
        "Heartbeat",
        "StatusNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ]
    expected = []
    for action in actions:
        expected += [("cp->csms", "call", action), ("csms->cp", "result", action)]
    assert flow(csms.records) == expected
    assert [r.action for r in csms.calls()] == actions
    assert csms.calls("StopTransaction", identity="CP-1")[1].payload == {
        "meterStop": 1300,
        "timestamp": NOW,
        "transactionId": 1,
    }
    # Payloads are recorded camelCase, as on the wire.
    assert csms.records[5].payload == {
        "idTagInfo": {"status": "Accepted"},
        "transactionId": 1,
    }
    assert all(r.identity == "CP-1" for r in csms.records)
    times = [r.time for r in csms.records]
    assert times == sorted(times)
    results = [r for r in csms.records if r.kind == "result"]
    assert all(r.unique_id == c.unique_id for r, c in zip(results, csms.calls(), strict=True))


async def test_transaction_ids_count_per_instance(csms: DevCsms) -> None:
    start = call.StartTransaction(connector_id=1, id_tag="A", meter_start=0, timestamp=NOW)
    async with charger(csms, "CP-1") as (cp1, _), charger(csms, "CP-2") as (cp2, _):
        assert (await cp1.call(start)).transaction_id == 1
        assert (await cp2.call(start)).transaction_id == 2
        assert (await cp1.call(start)).transaction_id == 3
    async with DevCsms() as other, charger(other) as (cp, _):
        assert (await cp.call(start)).transaction_id == 1


async def test_id_tag_rules(csms: DevCsms) -> None:
    csms.rejected_tags = {"BAD"}
    csms.parent_id_tags = {"CHILD": "FLEET", "BLOCKED-2": "FLEET"}
    async with charger(csms) as (cp, _):

        async def status(tag: str) -> dict:
            return (await cp.call(call.Authorize(id_tag=tag))).id_tag_info

        assert await status("BAD") == {"status": "Invalid"}
        assert await status("BLOCKED-1") == {"status": "Blocked"}
        assert await status("EXPIRED-1") == {"status": "Expired"}
        # ocpp hands the charger side snake_case keys ...
        assert await status("CHILD") == {"status": "Accepted", "parent_id_tag": "FLEET"}
        assert await status("BLOCKED-2") == {"status": "Blocked", "parent_id_tag": "FLEET"}
        # ... while the wire carries camelCase.
        assert csms.records[-1].payload == {
            "idTagInfo": {"status": "Blocked", "parentIdTag": "FLEET"}
        }

        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="BAD", meter_start=0, timestamp=NOW)
        )
        assert start.id_tag_info == {"status": "Invalid"}
        stop = call.StopTransaction(meter_stop=1, timestamp=NOW, transaction_id=1, id_tag="EXPIRED")
        assert (await cp.call(stop)).id_tag_info == {"status": "Expired"}


@pytest.mark.parametrize("status", ["Pending", "Rejected"])
async def test_boot_status_is_read_per_boot(csms: DevCsms, status: str) -> None:
    boot = call.BootNotification(charge_point_model="M", charge_point_vendor="V")
    async with charger(csms) as (cp, _):
        csms.boot_status = status
        assert (await cp.call(boot)).status == status
        csms.boot_status = "Accepted"
        assert (await cp.call(boot)).status == "Accepted"


# -- CSMS-initiated calls -----------------------------------------------------


async def test_call_converts_and_returns_wire_payloads(csms: DevCsms) -> None:
    async with charger(csms) as (cp, _):
        await csms.wait_connected("CP-1", timeout=1)
        answer = await csms.call("CP-1", "RemoteStartTransaction", {"idTag": "A", "connectorId": 1})
        assert answer == {"status": "Accepted"}
        assert cp.remote_starts == [{"id_tag": "A", "connector_id": 1}]

        profile = {
            "chargingProfileId": 7,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
            },
        }
        answer = await csms.call(
            "CP-1", "RemoteStartTransaction", {"idTag": "B", "chargingProfile": profile}
        )
        assert answer == {"status": "Accepted"}
        sent = [r for r in csms.records if r.direction == "csms->cp"][-1]
        assert sent.kind == "call"
        assert sent.payload == {"idTag": "B", "chargingProfile": profile}

    assert (
        flow(csms.records)
        == [
            ("csms->cp", "call", "RemoteStartTransaction"),
            ("cp->csms", "result", "RemoteStartTransaction"),
        ]
        * 2
    )
    assert csms.calls() == []  # CSMS->CP calls are not "calls from the charger"


async def test_call_error_from_charger(csms: DevCsms) -> None:
    async with charger(csms) as (_cp, _):
        await csms.wait_connected("CP-1", timeout=1)
        # The tiny charger has no UnlockConnector handler, so ocpp answers a CallError.
        with pytest.raises(CsmsCallError) as info:
            await csms.call("CP-1", "UnlockConnector", {"connectorId": 1})
        assert info.value.code == "NotImplemented"
        assert isinstance(info.value.details, dict)
    error = csms.records[-1]
    assert (error.direction, error.kind, error.action) == ("cp->csms", "error", "UnlockConnector")
    assert set(error.payload) == {"errorCode", "errorDescription", "errorDetails"}


async def test_call_rejects_bad_requests_before_sending(csms: DevCsms) -> None:
    async with charger(csms):
        await csms.wait_connected("CP-1", timeout=1)
        with pytest.raises(ValueError, match=r"unknown OCPP 1\.6 action"):
            await csms.call("CP-1", "Frobnicate", {})
        with pytest.raises(ValueError, match="bad Reset payload"):
            await csms.call("CP-1", "Reset", {"type": "Hard", "bogus": 1})
        with pytest.raises(FormatViolationError):
            await csms.call("CP-1", "Reset", {"type": "Sideways"})
        assert csms.records == []
    with pytest.raises(ConnectionError):
        await csms.call("NOPE", "Reset", {"type": "Hard"})


async def test_call_validates_the_answer_and_maps_raw_errors(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        pending = asyncio.create_task(csms.call("CP-1", "Reset", {"type": "Soft"}))
        msg = await recv_json(ws)
        assert msg[:3] == [2, msg[1], "Reset"] and msg[3] == {"type": "Soft"}
        await ws.send(json.dumps([3, msg[1], {"status": "Maybe"}]))
        with pytest.raises(FormatViolationError):
            await pending

        pending = asyncio.create_task(csms.call("CP-1", "Reset", {"type": "Soft"}))
        msg = await recv_json(ws)
        await ws.send(json.dumps([4, msg[1], "VendorSpecific", "boom", {"why": "x"}]))
        with pytest.raises(CsmsCallError) as info:
            await pending
        assert (info.value.code, info.value.description) == ("VendorSpecific", "boom")
        assert info.value.details == {"why": "x"}


async def test_call_timeout_and_late_answer(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        with pytest.raises(TimeoutError):
            await csms.call("CP-1", "Reset", {"type": "Soft"}, timeout=0.1)
        late = await recv_json(ws)
        await ws.send(json.dumps([3, late[1], {"status": "Accepted"}]))

        # The late answer must not be mistaken for the answer to the next call.
        pending = asyncio.create_task(csms.call("CP-1", "Reset", {"type": "Hard"}))
        msg = await recv_json(ws)
        assert msg[1] != late[1]
        await ws.send(json.dumps([3, msg[1], {"status": "Rejected"}]))
        assert await pending == {"status": "Rejected"}


async def test_call_fails_fast_when_charger_disconnects(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        pending = asyncio.create_task(csms.call("CP-1", "Reset", {"type": "Soft"}, timeout=5))
        await recv_json(ws)
        await ws.close()
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await pending
        assert time.monotonic() - started < 1


# -- what a charger may send --------------------------------------------------


async def test_incoming_calls_are_schema_validated(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        await ws.send(json.dumps([2, "u1", "BootNotification", {"chargePointVendor": "V"}]))
        error = await recv_json(ws)
        assert error[:2] == [4, "u1"] and error[2] == "ProtocolError"

        await ws.send(json.dumps([2, "u2", "StatusNotification", {"connectorId": "one"}]))
        assert (await recv_json(ws))[:2] == [4, "u2"]

        await ws.send(json.dumps([2, "u3", "Frobnicate", {}]))
        assert (await recv_json(ws))[2] == "NotSupported"

        await ws.send(json.dumps([2, "u4", "SignedFirmwareStatusNotification",
                                  {"status": "Downloaded"}]))
        assert (await recv_json(ws))[2] == "NotImplemented"

    errors = [r for r in csms.records if r.kind == "error"]
    assert [(r.direction, r.action, r.unique_id) for r in errors] == [
        ("csms->cp", "BootNotification", "u1"),
        ("csms->cp", "StatusNotification", "u2"),
        ("csms->cp", "Frobnicate", "u3"),
        ("csms->cp", "SignedFirmwareStatusNotification", "u4"),
    ]


async def test_garbage_does_not_break_the_connection(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        for junk in ["not json", "{}", "[]", "[2]", '[2,"x"]', '[9,"x",{}]', '[3,"nobody",{}]']:
            await ws.send(junk)
        await ws.send(b"\x00binary")
        await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))
        answer = await recv_json(ws)
        assert answer[:2] == [3, "hb"]
        assert csms.is_connected("CP-1")
    # Only frames that are OCPP-J are recorded.
    assert flow(csms.records) == [
        ("cp->csms", "result", ""),
        ("cp->csms", "call", "Heartbeat"),
        ("csms->cp", "result", "Heartbeat"),
    ]


async def test_respond_false_records_but_does_not_answer(csms: DevCsms) -> None:
    csms.respond = False
    async with charger(csms, timeout=0.2) as (cp, _):
        with pytest.raises(TimeoutError):
            await cp.call(call.Heartbeat())
        assert flow(csms.records) == [("cp->csms", "call", "Heartbeat")]
        csms.respond = True
        assert TIMESTAMP.match((await cp.call(call.Heartbeat())).current_time)


# -- waiting ------------------------------------------------------------------


async def test_wait_for_call_is_event_driven(csms: DevCsms) -> None:
    async with charger(csms) as (cp, _):
        waiter = asyncio.create_task(
            csms.wait_for_call(
                "StatusNotification", predicate=lambda p: p["status"] == "Charging", timeout=2
            )
        )
        for state in ["Available", "Preparing", "Charging"]:
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status=state)
            )
        record = await waiter
        assert record.payload["status"] == "Charging"
        assert record.identity == "CP-1"

        mark = csms.mark()
        assert mark == len(csms.records)
        with pytest.raises(TimeoutError, match="StatusNotification"):
            await csms.wait_for_call("StatusNotification", timeout=0.05, after=mark)
        first = await csms.wait_for_call("StatusNotification", timeout=0.05)
        assert first.payload["status"] == "Available"
        with pytest.raises(TimeoutError):
            await csms.wait_for_call("StatusNotification", identity="CP-2", timeout=0.05)


async def test_wait_connected_and_percent_decoded_identity(csms: DevCsms) -> None:
    with pytest.raises(TimeoutError):
        await csms.wait_connected("CP 1", timeout=0.05)
    waiter = asyncio.create_task(csms.wait_connected("CP 1", timeout=2))
    async with charger(csms, "CP%201") as (cp, _):
        await waiter
        assert csms.is_connected("CP 1")
        await cp.call(call.Heartbeat())
        assert csms.records[0].identity == "CP 1"
    assert csms.subprotocol("nobody") is None


# -- connection control -------------------------------------------------------


async def test_drop_aborts_without_close_handshake(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        await csms.drop("CP-1")
        assert not csms.is_connected("CP-1")
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 1)
        assert info.value.rcvd is None  # no close frame: the peer just vanished


async def test_pause_silences_the_link_until_resume(csms: DevCsms) -> None:
    async with charger(csms) as (cp, ws):
        await csms.wait_connected("CP-1", timeout=1)
        csms.pause("CP-1")
        pong = await ws.ping()
        done, _ = await asyncio.wait({pong}, timeout=0.2)
        assert not done, "a paused CSMS must not answer pings"

        mark = csms.mark()
        heartbeat = asyncio.create_task(cp.call(call.Heartbeat()))
        with pytest.raises(TimeoutError):
            await csms.wait_for_call("Heartbeat", timeout=0.1, after=mark)
        # Sending still works while paused, as on a half-open link.
        await csms.send_raw("CP-1", json.dumps([2, "srv-1", "Reset", {"type": "Soft"}]))

        csms.resume("CP-1")
        await asyncio.wait_for(pong, 1)
        await csms.wait_for_call("Heartbeat", timeout=1, after=mark)
        assert TIMESTAMP.match((await asyncio.wait_for(heartbeat, 1)).current_time)
        reset_answer = [r for r in csms.records if r.unique_id == "srv-1" and r.kind == "result"]
        assert reset_answer and reset_answer[0].action == "Reset"


async def test_newer_connection_replaces_older(csms: DevCsms) -> None:
    async with raw(csms) as old:
        csms.pause("CP-1")
        async with raw(csms) as new:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(old.recv(), 1)
            assert csms.is_connected("CP-1")
            await new.send(json.dumps([2, "hb", "Heartbeat", {}]))
            assert (await recv_json(new))[:2] == [3, "hb"]


async def test_send_raw_records_parsable_frames(csms: DevCsms) -> None:
    async with raw(csms) as ws:
        await csms.send_raw("CP-1", "this is not OCPP")
        assert await asyncio.wait_for(ws.recv(), 1) == "this is not OCPP"
        await csms.send_raw("CP-1", json.dumps([2, "t1", "TriggerMessage", {"x": 1}]))
        await recv_json(ws)
        await ws.send(json.dumps([4, "t1", "FormationViolation", "bad", {}]))
        await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))
        await recv_json(ws)
    assert flow(csms.records)[:2] == [
        ("csms->cp", "call", "TriggerMessage"),
        ("cp->csms", "error", "TriggerMessage"),
    ]


# -- handshake ----------------------------------------------------------------


async def test_subprotocol_negotiation_and_path(csms: DevCsms) -> None:
    for kwargs in ({"subprotocols": None}, {"subprotocols": ["ocpp2.0.1"]}):
        with pytest.raises(InvalidStatus) as info:
            async with _ws(csms, "CP-1", **kwargs):
                pass
        assert info.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as info:
        async with connect(csms.url.replace("/ocpp", "/other/CP-1"), subprotocols=["ocpp1.6"]):
            pass
    assert info.value.response.status_code == 404
    async with _ws(csms, "CP-1", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
        await csms.wait_connected("CP-1", timeout=1)
        assert csms.subprotocol("CP-1") == "ocpp1.6"


async def test_basic_auth() -> None:
    def header(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async with DevCsms(basic_auth={"CP-1": "s3cret"}) as csms:
        for headers in (
            {},
            header("CP-1", "wrong"),
            header("CP-2", "s3cret"),
            {"Authorization": "Basic !!"},
        ):
            with pytest.raises(InvalidStatus) as info:
                async with _ws(csms, "CP-1", additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
            assert "Basic" in info.value.response.headers["WWW-Authenticate"]
        async with _ws(csms, "CP-1", additional_headers=header("CP-1", "s3cret")):
            await csms.wait_connected("CP-1", timeout=1)


async def test_tls(tmp_path: Any) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    async with DevCsms(ssl_context=server_ctx) as csms:
        assert csms.url.startswith("wss://127.0.0.1:")
        async with _ws(csms, "CP-1", ssl=client_ctx) as ws:
            cp = Charger("CP-1", ws, response_timeout=1)
            task = asyncio.create_task(cp.start())
            assert (await cp.call(call.Heartbeat())).current_time
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- lifecycle and output -----------------------------------------------------


async def test_stop_is_prompt_with_live_and_paused_connections() -> None:
    csms = DevCsms()
    await csms.start()
    assert csms.url.startswith("ws://127.0.0.1:") and csms.url.endswith("/ocpp")
    async with raw(csms, "CP-1") as live, raw(csms, "CP-2") as paused:
        csms.pause("CP-2")
        started = time.monotonic()
        await csms.stop()
        assert time.monotonic() - started < 1
        assert not csms.is_connected("CP-1") and not csms.is_connected("CP-2")
        for ws in (live, paused):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 1)
    await csms.stop()  # idempotent


async def test_on_record_callback_and_format_record() -> None:
    seen: list[Record] = []

    def on_record(record: Record) -> None:
        seen.append(record)
        raise RuntimeError("a broken printer must not break the CSMS")

    async with DevCsms(on_record=on_record) as csms, charger(csms, "CP-1") as (cp, _):
        await cp.call(
            call.StartTransaction(connector_id=1, id_tag="04A2B3C4", meter_start=0, timestamp=NOW)
        )
        with pytest.raises(CsmsCallError):
            await csms.call("CP-1", "UnlockConnector", {"connectorId": 1})
    assert seen == csms.records

    lines = [format_record(r) for r in seen]
    assert lines[0] == (
        '  CP-1 → CSMS  StartTransaction  {"connectorId":1,"idTag":"04A2B3C4",'
        f'"meterStart":0,"timestamp":"{NOW}"}}'
    )
    assert lines[1] == (
        '  CSMS → CP-1  StartTransaction.conf {"transactionId":1,"idTagInfo":{"status":"Accepted"}}'
    )
    assert lines[2].startswith('  CSMS → CP-1  UnlockConnector  {"connectorId":1}')
    assert lines[3].startswith("  CP-1 → CSMS  UnlockConnector.CALLERROR NotImplemented: ")
    colored = format_record(seen[3], color=True)
    assert "\033[" in colored and "NotImplemented" in colored

    long = Record("cp->csms", "CP-1", "call", "DataTransfer", "u", {"data": "x" * 500}, 0.0)
    assert len(format_record(long)) < 220
    assert format_record(long).endswith("…")
