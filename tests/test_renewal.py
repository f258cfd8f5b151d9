"""The charger renews its own certificate before it expires, and asks again while no
CertificateSigned comes (CertSigningWaitMinimum, doubled, CertSigningRepeatTimes), in 1.6
and 2.0.1, against a CSMS on loopback that requires client certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time

import pki
import pytest
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from cpagent.renewal import RENEW_BEFORE, renewal_due
from cpagent.store import Store

CP = "CP-TEST"
DAY = 86400.0
TRIGGER = {"1.6": ("ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}),
           "2.0.1": ("TriggerMessage",
                     {"requestedMessage": "SignChargingStationCertificate"})}


def test_renewal_starts_a_month_ahead_or_at_two_thirds_of_a_short_life():
    now = 1_800_000_000.0
    year = {"not_before": now - 300 * DAY, "not_after": now + 65 * DAY}
    assert not renewal_due(year, now)
    assert renewal_due({**year, "not_after": now + RENEW_BEFORE}, now)
    assert not renewal_due({**year, "not_after": now + RENEW_BEFORE + 60}, now)
    # A certificate for one day (fast expiration) is renewed after 16 hours, not at once.
    day = {"not_before": now, "not_after": now + DAY}
    assert not renewal_due(day, now + 15 * 3600)
    assert renewal_due(day, now + 17 * 3600)
    assert renewal_due({"not_before": now - 2 * DAY, "not_after": now - DAY}, now)  # expired


def _sign(csr_pem: str, issuer: pki.Issued, days: int) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    cert = (x509.CertificateBuilder().subject_name(csr.subject)
            .issuer_name(issuer.cert.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(pki.NOW - dt.timedelta(minutes=5))
            .not_valid_after(pki.NOW + dt.timedelta(days=days))
            .sign(issuer.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _mutual_tls(csms_ca: pki.Issued, clients: pki.Issued, folder) -> ssl.SSLContext:
    context = pki.server_context(pki.leaf(csms_ca), folder)
    context.verify_mode = ssl.CERT_REQUIRED
    (folder / "clients.pem").write_text(clients.pem)
    context.load_verify_locations(folder / "clients.pem")
    return context


async def _requests(csms: DevCsms, count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(csms.calls("SignCertificate")) >= count:
            break
        await asyncio.sleep(0.02)
    return csms.calls("SignCertificate")


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_certificate_near_its_end_is_renewed_and_asked_for_again(version, tmp_path):
    csms_ca, clients = pki.root("CSMS Root"), pki.root("Charger CA")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(csms_ca.pem + clients.pem)
    cert, key = pki.leaf(clients, CP, days=(-300, 5)).write(tmp_path, "factory")
    data = tmp_path / "agent"
    data.mkdir()
    store = Store(data / "cpagent.db")  # settings the CSMS set in an earlier run
    store.put_shared_setting("cert_signing_wait_minimum", "1")
    store.put_shared_setting("cert_signing_repeat_times", "1")
    store.close()
    subprotocols = ("ocpp1.6",) if version == "1.6" else ("ocpp2.0.1",)
    async with DevCsms(ssl_context=_mutual_tls(csms_ca, clients, tmp_path),
                       subprotocols=subprotocols) as csms:
        charger = RunningAgent(make_config(data, csms.url, csms={
            "ocpp_version": version, "ca_file": str(ca_file), "client_cert": str(cert),
            "client_key": str(key)}), Clock("system"))
        await charger.start()
        try:
            # Five days left: the charger asks by itself, then once more after 1 s...
            first, second = (await _requests(csms, 2, 5))[:2]
            assert 0.8 <= second.time - first.time <= 2.5
            # ... and then waits (1 + 2 s) for an answer that does not come, and stops.
            await asyncio.sleep(3.5)
            assert len(csms.calls("SignCertificate")) == 2
            status = charger.agent.snapshot()["certificate"]
            assert "no CertificateSigned after 2" in status["renewal"]

            # Triggered by the CSMS, the request goes out again; this time it is signed.
            action, payload = TRIGGER[version]
            assert (await csms.call(CP, action, payload))["status"] == "Accepted"
            [*_, third] = await _requests(csms, 3, 5)
            signed = _sign(third.payload["csr"], clients, days=90)
            assert (await csms.call(CP, "CertificateSigned", {
                "certificateChain": signed}))["status"] == "Accepted"
            await asyncio.sleep(1.5)  # past the 1 s wait: no request after the answer
            assert len(csms.calls("SignCertificate")) == 3

            mark = csms.mark()
            await csms.drop(CP)
            await csms.wait_for_call("StatusNotification", after=mark, timeout=10)
            for _ in range(100):
                status = charger.agent.snapshot()["certificate"]
                if not status["next_on_trial"]:
                    break
                await asyncio.sleep(0.02)
            until = dt.datetime.fromisoformat(status["valid_until"].replace("Z", "+00:00"))
            assert until > pki.NOW + dt.timedelta(days=80)  # the renewed one is in use
            kept = Store(data / "cpagent.db")
            try:
                assert kept.state("charger_certificates")["current"]["not_after"] == \
                    until.timestamp()
            finally:
                kept.close()
            await asyncio.sleep(0.3)
            assert len(csms.calls("SignCertificate")) == 3  # a fresh one is not renewed
        finally:
            await charger.stop()
