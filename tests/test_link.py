"""The link to the CSMS: dead-link detection, reconnects, late answers, subprotocols, time."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from dataclasses import replace

import pytest
from harness import booted, self_signed
from websockets.asyncio.server import serve

from cpagent.clock import Clock, parse_time
from cpagent.devcsms import DevCsms
from cpagent.rpc import CallErrorReceived, CallTimeout, RpcEndpoint, RpcError, validate
from cpagent.transport import backoff_delay


async def test_half_open_link_is_detected_by_missing_pong_and_reconnected(csms, start_agent):
    await start_agent(csms={"ping_interval": 1, "pong_timeout": 1})
    await booted(csms)
    first = csms.mark()
    csms.pause("CP-TEST")  # the peer goes silent: no pongs, no answers, no FIN
    began = time.monotonic()
    # The agent must come back on a new connection within ping interval + pong timeout
    # (+ backoff), and report its state afresh.
    await csms.wait_for_call("StatusNotification", after=first, timeout=8)
    assert time.monotonic() - began < 6
    assert len(csms.calls("BootNotification")) == 1  # 1.6 boots once per start, not per link


async def test_reconnects_every_time_the_csms_drops_it(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    for _ in range(3):
        mark = csms.mark()
        await csms.drop("CP-TEST")
        await csms.wait_for_call("StatusNotification", after=mark,
                                 predicate=lambda p: p["connectorId"] == 1)
    assert cp.agent.transport.connect_count == 4


async def test_call_timeout_falls_back_to_the_offline_decision(csms, start_agent):
    cp = await start_agent(csms={"call_timeout": 1})
    await booted(csms)
    csms.respond = False
    cp.mock.plug(1)
    cp.mock.swipe("UNKNOWN")
    await csms.wait_for_call("Authorize")
    await asyncio.sleep(1.3)
    # Unknown card, AllowOfflineTxForUnknownId false: no session, contactor open.
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    assert not cp.agent.hardware.contactors[1].is_closed


async def _answer_out_of_order(rpc: RpcEndpoint, sent: list[str]) -> None:
    while not sent:
        await asyncio.sleep(0)
    unique_id = json.loads(sent[0])[1]
    await rpc.receive(json.dumps([3, "someone-elses-id", {"currentTime": "x"}]))
    await rpc.receive(json.dumps([3, unique_id, {"currentTime": "2026-01-01T00:00:00Z"}]))


async def test_an_answer_to_no_call_in_flight_is_dropped_not_matched():
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    async def handler(action: str, payload: dict) -> dict:
        return {}

    rpc = RpcEndpoint("1.6", send, handler, call_timeout=2)
    answering = asyncio.create_task(_answer_out_of_order(rpc, sent))
    result = await rpc.call("Heartbeat", {})
    await answering
    assert result == {"currentTime": "2026-01-01T00:00:00Z"}
    assert rpc.dropped_answers == 1
    # A reply that turns up after its call timed out is dropped too.
    sent.clear()
    with pytest.raises(CallTimeout):
        await rpc.call("Heartbeat", {}, timeout=0.05)
    await rpc.receive(json.dumps([3, json.loads(sent[0])[1], {"currentTime": "x"}]))
    assert rpc.dropped_answers == 2


@pytest.mark.parametrize("spelling", ["FormationViolation", "FormatViolation"])
async def test_call_errors_are_read_in_either_spelling(spelling):
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)
        unique_id = json.loads(text)[1]
        asyncio.get_running_loop().call_soon(
            asyncio.ensure_future,
            rpc.receive(json.dumps([4, unique_id, spelling, "bad", {}])),
        )

    async def handler(action: str, payload: dict) -> dict:
        return {}

    rpc = RpcEndpoint("1.6", send, handler)
    with pytest.raises(CallErrorReceived) as raised:
        await rpc.call("Heartbeat", {})
    assert raised.value.code == "FormatViolation"


async def test_calls_breaking_the_schema_get_the_1_6_error_codes():
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    async def handler(action: str, payload: dict) -> dict:
        return {"status": "Accepted"}

    rpc = RpcEndpoint("1.6", send, handler)
    await rpc.receive(json.dumps([2, "a", "Reset", {"type": "Sometimes"}]))
    await rpc.receive(json.dumps([2, "b", "Reset", {}]))
    await rpc.receive(json.dumps([2, "c", "Reset", {"type": "Soft", "extra": 1}]))
    await rpc.receive(json.dumps([2, "d", "FooBar", {}]))
    await rpc.receive('[2,"e","Reset",{"type":')  # cut off mid-frame
    await rpc.receive("garbage")
    for _ in range(20):
        await asyncio.sleep(0)
    answers = {json.loads(t)[1]: json.loads(t) for t in sent}
    assert answers["a"][2] == "PropertyConstraintViolation"
    assert answers["b"][2] == "ProtocolError"
    assert answers["c"][2] == "FormationViolation"  # 1.6 spells it so on the wire
    assert answers["d"][2] == "NotImplemented"
    assert answers["e"][2] == "FormationViolation"
    assert len(answers) == 5  # nothing to answer for a frame with no readable id


def test_outgoing_payloads_are_checked_before_they_leave():
    with pytest.raises(RpcError):
        validate("1.6", 2, "StartTransaction", {"connectorId": 1, "idTag": "A"})
    validate("1.6", 2, "Heartbeat", {})


async def test_no_agreed_subprotocol_means_no_ocpp_session(tmp_path, start_agent):
    frames: list[str] = []

    async def handler(connection):
        async for text in connection:
            frames.append(text)

    # A server that speaks no OCPP subprotocol at all.
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        cp = await start_agent(url=f"ws://127.0.0.1:{port}/ocpp")
        for _ in range(100):
            if cp.agent.transport.last_error:
                break
            await asyncio.sleep(0.02)
        assert "agreed to no OCPP subprotocol" in cp.agent.transport.last_error
        assert frames == []


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    rng = random.Random(7)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(60.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    # Two chargers that lost the same CSMS do not come back in step.
    other = [backoff_delay(n, 1.0, 60.0, random.Random(8)) for n in range(12)]
    assert delays != other


async def test_no_1970_timestamps_when_the_clock_is_only_set_by_the_csms(csms, start_agent):
    # A board without a real-time clock: it believes it is 1970 until the CSMS says otherwise.
    skew = time.time() - 86400  # "now" is one day after the epoch
    clock = Clock("auto", wall=lambda: time.time() - skew, synchronised=lambda: False)
    cp = await start_agent(clock=clock, csms={"url": "ws://127.0.0.1:9/unreachable"})
    # The session starts while the CSMS is out of reach and the time unknown.
    cp.mock.plug(1)
    await cp.settle()
    cp.agent.core.settings.allow_offline_unknown_id = True
    cp.mock.swipe("NEWCARD")
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is not None
    await cp.stop()
    # The charger restarts, still without knowing the time, and now reaches the CSMS.
    cp.config = replace(cp.config, csms=replace(cp.config.csms, url=csms.url))
    await cp.start()
    start = await csms.wait_for_call("StartTransaction", timeout=10)
    stop = await csms.wait_for_call("StopTransaction", timeout=10)
    assert stop.payload["reason"] == "PowerLoss"
    began, ended = parse_time(start.payload["timestamp"]), parse_time(stop.payload["timestamp"])
    assert time.time() - 60 < began <= ended <= time.time() + 1
    for record in csms.calls():
        if "timestamp" in record.payload:
            assert parse_time(record.payload["timestamp"]) > time.time() - 60, record


async def test_wss_with_the_csms_ca_and_basic_auth(tmp_path, start_agent):
    cert, key = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    password = "0123456789abcdef"
    async with DevCsms(ssl_context=server_tls, basic_auth={"CP-TEST": password}) as secure:
        assert secure.url.startswith("wss://")
        cp = await start_agent(url=secure.url, csms={"ca_file": cert, "password": password})
        await booted(secure)
        assert secure.subprotocol("CP-TEST") == "ocpp1.6"
        await cp.stop()
        # A wrong password is refused by the CSMS, and the agent says why.
        wrong = await start_agent(url=secure.url, data_dir=tmp_path / "wrong",
                                  csms={"ca_file": cert, "password": "not-the-password"})
        for _ in range(200):
            if wrong.agent.transport.last_error:
                break
            await asyncio.sleep(0.01)
        assert "HTTP 401" in wrong.agent.transport.last_error
        await wrong.stop()
        # A CSMS whose certificate is not signed by the configured CA is never trusted.
        (tmp_path / "other").mkdir()
        other_cert, _ = self_signed(tmp_path / "other")
        stranger = await start_agent(url=secure.url, data_dir=tmp_path / "stranger",
                                     csms={"ca_file": other_cert, "password": password})
        for _ in range(200):
            if stranger.agent.transport.last_error:
                break
            await asyncio.sleep(0.01)
        assert "not among the trusted roots" in stranger.agent.transport.last_error
        assert len(secure.calls("BootNotification")) == 1


async def test_last_error_says_why_the_link_went_and_clears_on_a_good_connection(
        csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    assert cp.agent.snapshot()["connection"]["last_error"] is None
    csms.boot_status = "Accepted"
    await csms.stop()  # the CSMS goes away: its side closes, then nobody listens
    while cp.agent.transport.state == "connected":
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a reconnect attempt or two fail
    error = cp.agent.snapshot()["connection"]["last_error"]
    assert error and ("closed the link" in error or "Connect" in error or "refused" in error)
    await csms.start()  # back on the same port
    await csms.wait_connected("CP-TEST", timeout=10)
    while cp.agent.transport.state != "connected":
        await asyncio.sleep(0.01)
    assert cp.agent.snapshot()["connection"]["last_error"] is None


async def test_an_unanswered_boot_notification_is_explained_in_status(csms, start_agent):
    csms.respond = False
    cp = await start_agent(csms={"call_timeout": 1})
    await csms.wait_for_call("BootNotification")
    for _ in range(300):
        if "BootNotification" in (cp.agent.snapshot()["last_error"] or ""):
            break
        await asyncio.sleep(0.01)
    assert "BootNotification unanswered" in cp.agent.snapshot()["last_error"]


async def test_the_backoff_starts_afresh_after_a_link_that_stayed_up(csms, start_agent):
    cp = await start_agent(csms={"reconnect_initial": 0.2, "reconnect_max": 3.2})
    cp.agent.transport.settings.stable_after = 1.0
    await booted(csms)

    async def drop_and_time() -> float:
        began = time.monotonic()
        await csms.drop("CP-TEST")
        await csms.wait_connected("CP-TEST", timeout=10)
        return time.monotonic() - began

    # Links that die at once: each wait doubles (with jitter between half and all of it).
    waits = [await drop_and_time() for _ in range(5)]
    assert waits[-1] >= 1.6 - 0.05, waits  # 0.2 * 2**4, jittered down by half at most
    await asyncio.sleep(1.1)  # this link counts as healthy
    assert await drop_and_time() < 0.2 + 0.3  # the first wait again, not 3.2 s


async def test_compression_is_offered_only_when_configured(csms, start_agent):
    plain = await start_agent()
    await booted(csms)
    assert plain.agent.transport._connection.protocol.extensions == []
    await plain.stop()
    mark = csms.mark()
    packed = await start_agent(csms={"compression": True})
    await csms.wait_for_call("BootNotification", after=mark)
    assert [e.name for e in packed.agent.transport._connection.protocol.extensions] == [
        "permessage-deflate"]


async def test_an_authorization_key_of_any_bytes_is_used_and_never_reported(tmp_path,
                                                                           start_agent):
    key = bytes([0x00, 0xFF, 0x80, 0x7F, 0x3A]) + b"binary-secret-1"  # 20 bytes, not UTF-8
    async with DevCsms(basic_auth={"CP-TEST": "first-password-0001"}) as csms:
        cp = await start_agent(url=csms.url, csms={"password": "first-password-0001"})
        await booted(csms)
        for bad in ("nothex", "00" * 15, "00" * 21, "abc"):
            answer = await csms.call("CP-TEST", "ChangeConfiguration",
                                     {"key": "AuthorizationKey", "value": bad})
            assert answer == {"status": "Rejected"}, bad
        csms.basic_auth = {"CP-TEST": key}
        mark = csms.mark()
        assert await csms.call("CP-TEST", "ChangeConfiguration", {
            "key": "AuthorizationKey", "value": key.hex().upper()}) == {"status": "Accepted"}
        # The next connection authenticates with the key's bytes, as the whitepaper says.
        await csms.wait_for_call("StatusNotification", after=mark, timeout=10)
        answer = await csms.call("CP-TEST", "GetConfiguration", {"key": ["AuthorizationKey"]})
        assert answer == {"configurationKey": [{"key": "AuthorizationKey", "readonly": False}]}
        every = await csms.call("CP-TEST", "GetConfiguration", {})
        assert key.hex() not in json.dumps(every).lower()
        assert key.hex() not in json.dumps(cp.agent.snapshot()).lower()
        # And after a restart too, from the one stored value.
        mark = csms.mark()
        await cp.restart()
        await csms.wait_for_call("StatusNotification", after=mark, timeout=10)
