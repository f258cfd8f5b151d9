"""Security events in 1.6 and 2.0.1: kept in a local security log, queued durably (also
across a restart), told to the CSMS in each version's words, and never in the way of
transaction messages when a CSMS does not take them."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator

import pki
import pytest
from dialects import DIALECTS
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from cpagent.host import Message, RetryPolicy
from cpagent.outbox import Outbox
from cpagent.records import SECURITY_EVENT, TRANSACTION_EVENT
from cpagent.rpc import CallErrorReceived
from cpagent.security_events import SecurityEvent
from cpagent.store import AsyncStore, NewRecord, Store
from hal.interfaces import Fault

CP = "CP-TEST"
WORDS = {"1.6": {"auth": "FailedToAuthenticateAtCentralSystem"},
         "2.0.1": {"auth": "FailedToAuthenticateAtCsms"}}


@pytest.fixture(params=["1.6", "2.0.1"])
async def peer(request) -> AsyncIterator[DevCsms]:
    async with DevCsms(subprotocols=(DIALECTS[request.param].subprotocol,),
                       basic_auth={CP: "right-password-0001"}) as csms:
        csms.version = request.param
        yield csms


async def test_events_are_logged_queued_and_told_after_the_status(peer, tmp_path):
    version = peer.version
    data = tmp_path / "agent"
    # The installer typed the password wrong: the CSMS refuses the charger (HTTP 401).
    charger = RunningAgent(make_config(data, peer.url, csms={
        "ocpp_version": version, "password": "wrong-password-0001"}), Clock("system"))
    await charger.start()
    try:
        for _ in range(300):
            if "401" in (charger.agent.transport.last_error or ""):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a few more refusals: one event, not one each
    finally:
        await charger.stop()
    log = (data / "security.log").read_text()
    assert log.count("failed_to_authenticate_at_csms") == 1
    assert (data / "security.log").stat().st_mode & 0o777 == 0o600

    charger.config = make_config(data, peer.url, csms={
        "ocpp_version": version, "password": "right-password-0001"})
    await charger.start()
    try:
        say = DIALECTS[version](peer)
        await say.wait_status("Available")
        events = []
        for _ in range(300):
            events = [r.payload for r in peer.calls("SecurityEventNotification")]
            if len(events) >= 3:
                break
            await asyncio.sleep(0.01)
        kinds = [e["type"] for e in events]
        # Queued durably across the restart; both starts; in this version's words.
        assert WORDS[version]["auth"] in kinds
        assert kinds.count("StartupOfTheDevice") + kinds.count("ResetOrReboot") == 2
        assert all(len(e["techInfo"]) <= 255 for e in events)
        # Durable: the refusal and the first start were told after the restart, in order.
        assert kinds.index(WORDS[version]["auth"]) < len(kinds) - 1
    finally:
        await charger.stop()


async def test_a_csms_without_security_events_holds_up_nothing(tmp_path):
    store = AsyncStore(Store(tmp_path / "q.db"))
    outbox = Outbox(store)
    event = await store.enqueue(NewRecord(SECURITY_EVENT, "1.6", {
        "event": "startup", "timestamp": time.time(), "tech_info": "x"}, None, time.time(),
        True, "b"))
    start = await store.enqueue(NewRecord(TRANSACTION_EVENT, "1.6", {"action": "Start"}, "t",
                                          time.time(), True, "b"))
    await outbox.open()
    sent: list[str] = []

    class Link:
        async def call(self, action, payload, *, unique_id=None, timeout=None):
            sent.append(action)
            if action == "SecurityEventNotification":
                raise CallErrorReceived("NotImplemented", "no security extension", {})
            return {}

    async def render(entry):
        return [Message("SecurityEventNotification" if entry.kind == SECURITY_EVENT
                        else "StartTransaction", {})]

    async def delivered(entry, message, answer):
        pass

    policy = RetryPolicy(attempts=lambda: 3, interval=lambda: 60.0)
    runner = asyncio.create_task(outbox.run(Link(), render, delivered, lambda e, m: "kept",
                                            policy))
    for _ in range(200):
        if not outbox.pending:
            break
        await asyncio.sleep(0.01)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await outbox.flush()
    assert sent == ["SecurityEventNotification", "StartTransaction"]  # no 60 s wait, no retry
    assert outbox.dead_letters == 0 and await store.outbox_count() == 0
    assert event.seq < start.seq
    store.close()


async def _events(csms: DevCsms, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    """The SecurityEventNotifications of `kind` the CSMS received, once there are `count`."""
    for _ in range(int(timeout / 0.02)):
        found = [r.payload for r in csms.calls("SecurityEventNotification")
                 if r.payload["type"] == kind]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} event at the CSMS; got "
                         f"{[r.payload['type'] for r in csms.calls('SecurityEventNotification')]}")


@pytest.fixture(params=["1.6", "2.0.1"])
async def open_peer(request) -> AsyncIterator[DevCsms]:
    async with DevCsms(subprotocols=(DIALECTS[request.param].subprotocol,)) as csms:
        csms.version = request.param
        yield csms


async def _running(csms: DevCsms, tmp_path) -> RunningAgent:
    charger = RunningAgent(make_config(tmp_path / "agent", csms.url, csms={
        "ocpp_version": csms.version}), Clock("system"))
    await charger.start()
    await DIALECTS[csms.version](csms).wait_status("Available")
    return charger


async def test_invalid_messages_are_told_once_not_per_frame(open_peer, tmp_path):
    charger = await _running(open_peer, tmp_path)
    try:
        for n in range(5):  # garbage, and a call whose payload breaks the schema
            await open_peer.send_raw(CP, "[2, \"x\"" if n % 2 else
                                     f'[2,"bad-{n}","Reset",{{"type":"Sideways"}}]')
        [event] = await _events(open_peer, "InvalidMessages")
        assert "the CSMS sent" in event["techInfo"]
        await asyncio.sleep(0.3)
        assert len(await _events(open_peer, "InvalidMessages")) == 1  # not one per frame
        assert open_peer.is_connected(CP)  # and the link stays up
    finally:
        await charger.stop()


async def test_an_opened_enclosure_stops_charging_and_is_told(open_peer, tmp_path):
    charger = await _running(open_peer, tmp_path)
    try:
        charger.mock.fault(Fault.TAMPER, 1, "enclosure door open")
        [event] = await _events(open_peer, "TamperDetectionActivated")
        assert "enclosure door open" in event["techInfo"]
        await DIALECTS[open_peer.version](open_peer).wait_status("Faulted")
        assert "tamper_detection_activated" in (tmp_path / "agent" / "security.log").read_text()
    finally:
        await charger.stop()


async def test_discarding_old_security_log_entries_is_itself_an_event(open_peer, tmp_path):
    charger = await _running(open_peer, tmp_path)
    try:
        charger.agent.security_log.limit = 300  # a small log, to fill it quickly
        for n in range(8):
            charger.agent.security_event(SecurityEvent.RECONFIGURATION, f"change {n} " * 8)
        [event, *_] = await _events(open_peer, "SecurityLogWasCleared")
        assert "discarded" in event["techInfo"]
        log = tmp_path / "agent" / "security.log"
        assert log.stat().st_size < 1000 and log.with_name("security.log.1").exists()
    finally:
        await charger.stop()


def _bad_tls(case: str, ca: pki.Issued, folder) -> ssl.SSLContext:
    """A CSMS whose TLS the charger must refuse, each in its own way."""
    if case == "InvalidCsmsCertificate":
        return pki.server_context(pki.leaf(pki.root("Someone Else")), folder)
    context = pki.server_context(pki.leaf(ca), folder)
    if case == "InvalidTLSVersion":
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
    else:  # only CBC suites with SHA-1 MACs, none that OCPP names
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
    return context


@pytest.mark.parametrize("case", ["InvalidCsmsCertificate", "InvalidTLSVersion",
                                  "InvalidTLSCipherSuite"])
async def test_a_refused_tls_server_is_told_to_the_csms_reached_next(open_peer, case, tmp_path):
    version = open_peer.version
    ca = pki.root("CSMS Root")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    data = tmp_path / "agent"
    try:
        context = _bad_tls(case, ca, tmp_path)
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot serve that: {exc}")
    async with DevCsms(ssl_context=context) as bad:
        charger = RunningAgent(make_config(data, bad.url, csms={
            "ocpp_version": version, "ca_file": str(ca_file)}), Clock("system"))
        await charger.start()
        try:
            for _ in range(500):
                if (data / "security.log").exists() and "invalid_" in \
                        (data / "security.log").read_text():
                    break
                await asyncio.sleep(0.01)
        finally:
            await charger.stop()
    charger.config = make_config(data, open_peer.url, csms={"ocpp_version": version})
    await charger.start()
    try:
        expected = {"1.6": {"InvalidCsmsCertificate": "InvalidCentralSystemCertificate"}}
        kind = expected.get(version, {}).get(case, case)
        [event] = await _events(open_peer, kind)
        assert "TLS to 127.0.0.1" in event["techInfo"]
    finally:
        await charger.stop()


async def test_the_time_taken_from_the_csms_is_told(open_peer, tmp_path):
    """A charger without a synchronised clock takes the CSMS's currentTime: SettingSystemTime."""
    charger = RunningAgent(make_config(tmp_path / "agent", open_peer.url, csms={
        "ocpp_version": open_peer.version}), Clock("csms"))
    await charger.start()
    try:
        [event] = await _events(open_peer, "SettingSystemTime")
        assert "time taken from the CSMS" in event["techInfo"]
    finally:
        await charger.stop()


async def test_a_refused_certificate_signed_is_told(open_peer, tmp_path):
    version = open_peer.version
    charger = await _running(open_peer, tmp_path)
    try:
        action, payload = ({"1.6": ("ExtendedTriggerMessage",
                                    {"requestedMessage": "SignChargePointCertificate"}),
                            "2.0.1": ("TriggerMessage",
                                      {"requestedMessage": "SignChargingStationCertificate"})}
                           [version])
        assert (await open_peer.call(CP, action, payload))["status"] == "Accepted"
        await open_peer.wait_for_call("SignCertificate")
        stranger = pki.leaf(pki.root("Nobody"), CP)  # not for the key the charger made
        assert (await open_peer.call(CP, "CertificateSigned", {
            "certificateChain": stranger.pem}))["status"] == "Rejected"
        kind = {"1.6": "InvalidChargePointCertificate",
                "2.0.1": "InvalidChargingStationCertificate"}[version]
        [event] = await _events(open_peer, kind)
        assert "not for the key requested" in event["techInfo"]
    finally:
        await charger.stop()
