"""Each way a secured connection to the CSMS fails is told apart, in plain words with what to
fix, for OCPP 1.6 and 2.0.1 alike, with a test PKI made at test time:

- the charger refuses the CSMS's certificate: issued by a CA it does not trust, for another
  host, expired, not yet valid, or signed by a certificate that is no CA;
- the CSMS refuses the charger: no client certificate where one is required (security profile
  3), a client certificate the CSMS does not know, or the wrong password (HTTP 401);
- they have no TLS in common: the CSMS speaks only TLS 1.1, or at TLS 1.2 offers only CBC
  cipher suites with SHA-1, none of the AES-GCM suites OCPP names.

Each case is played against the two kinds of TLS server a CSMS has, because they refuse
differently: a TLS terminator in front of the CSMS, as most deployments have (nginx, a load
balancer), which answers a refused handshake with the TLS alert saying why; and a CSMS that
does TLS itself on Python's asyncio, which (in Python 3.11) resets the connection instead.
What the charger says is read from its control socket, where `cpagent status` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pki
import pytest
from dialects import DIALECTS
from harness import RunningAgent, acpagent, make_config

from cpagent.clock import Clock
from cpagent.control import request
from cpagent.devcsms import DevCsms

# A TLS 1.1 server needs the deprecated names.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")

VERSIONS = ["1.6", "2.0.1"]
SERVERS = ["terminator", "asyncio"]
PASSWORD = "right-password-0001"

# Each case, and what its diagnosis says (a regular expression no other diagnosis matches).
CASES = {
    "untrusted CA": "not trusted",
    "other host": "not for this",
    "expired": "has expired",
    "not yet valid": "not valid yet",
    "signed by a non-CA": "not a CA",
    "no client certificate": "requires a client certificate",
    "unknown client certificate": "refused.* client certificate",
    "wrong password": "HTTP 401",
    "TLS 1.1 only": "TLS 1.2 or newer",
    "CBC cipher suites only": "no cipher suite in common",
}


@dataclass
class Setup:
    """Both sides of one case: the CSMS's TLS, its passwords, the charger's [csms] settings."""

    tls: ssl.SSLContext
    charger: dict[str, Any]
    basic_auth: dict[str, str | bytes] | None = None


def _setup(case: str, folder: Path) -> Setup:
    ca, chargers = pki.root("CSMS Root"), pki.root("Charger CA")
    (folder / "ca.pem").write_text(ca.pem)
    charger: dict[str, Any] = {"ca_file": str(folder / "ca.pem")}
    match case:
        case "untrusted CA":
            return Setup(pki.server_context(pki.leaf(pki.root("Someone Else")), folder), charger)
        case "other host":  # a certificate naming only another host
            return Setup(pki.server_context(_named(ca, "csms.example.com"), folder), charger)
        case "expired":
            return Setup(pki.server_context(pki.leaf(ca, days=(-30, -1)), folder), charger)
        case "not yet valid":
            return Setup(pki.server_context(pki.leaf(ca, days=(2, 30)), folder), charger)
        case "signed by a non-CA":
            middle = pki.leaf(ca, "Not a CA", ca=False)  # a leaf that signed the server's
            return Setup(pki.server_context(pki.leaf(middle), folder, chain=(middle,)), charger)
        case "no client certificate":  # a profile 3 CSMS; the charger is set up for profile 2
            return Setup(_requiring_client_certificates(pki.leaf(ca), chargers, folder),
                         charger | {"password": PASSWORD}, basic_auth={"CP-TEST": PASSWORD})
        case "unknown client certificate":
            cert, key = pki.leaf(pki.root("Unknown CA"), "CP-TEST").write(folder, "stranger")
            return Setup(_requiring_client_certificates(pki.leaf(ca), chargers, folder),
                         charger | {"client_cert": str(cert), "client_key": str(key)})
        case "wrong password":
            return Setup(pki.server_context(pki.leaf(ca), folder),
                         charger | {"password": "wrong-password-0001"},
                         basic_auth={"CP-TEST": PASSWORD})
        case "TLS 1.1 only":
            context = pki.server_context(pki.leaf(ca), folder)
            try:
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
                context.set_ciphers("ALL:@SECLEVEL=0")
            except (ValueError, ssl.SSLError) as exc:
                pytest.skip(f"this OpenSSL cannot serve TLS 1.1: {exc}")
            return Setup(context, charger)
        case "CBC cipher suites only":
            context = pki.server_context(pki.leaf(ca), folder)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            # AES-CBC with SHA-1, with ECDSA: the test PKI's keys are EC.
            context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
            return Setup(context, charger)
    raise ValueError(f"no such case: {case}")


@contextlib.asynccontextmanager
async def _csms(setup: Setup, server: str, version: str) -> AsyncIterator[tuple[DevCsms, str]]:
    """The CSMS, with its TLS done by `server`, and its wss URL."""
    subprotocols = (DIALECTS[version].subprotocol,)
    if server == "asyncio":
        async with DevCsms(ssl_context=setup.tls, subprotocols=subprotocols,
                           basic_auth=setup.basic_auth) as csms:
            yield csms, csms.url
    else:
        async with DevCsms(subprotocols=subprotocols, basic_auth=setup.basic_auth) as csms, \
                pki.TlsTerminator(setup.tls, csms.url) as terminator:
            yield csms, terminator.url


async def _refused(charger: RunningAgent) -> dict[str, Any]:
    """The charger's status, as `cpagent status --json` shows it, once an attempt to connect
    has failed."""
    socket = charger.config.station.control_socket
    for _ in range(500):
        status = await asyncio.to_thread(request, socket, {"cmd": "status"})
        if status["connection"]["state"] == "disconnected" and status["last_error"]:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"no refusal reported: {status}")


async def _diagnosis(setup: Setup, server: str, version: str, folder: Path) -> str:
    async with _csms(setup, server, version) as (csms, url):
        charger = RunningAgent(make_config(folder / "agent", url, csms=setup.charger | {
            "ocpp_version": version}), Clock("system"))
        await charger.start()
        try:
            status = await _refused(charger)
            assert csms.calls("BootNotification") == []
        finally:
            await charger.stop()
    assert status["connection"]["last_error"] == status["last_error"]
    return status["last_error"]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("version", VERSIONS)
async def test_each_refusal_is_named(version, case, server, tmp_path):
    diagnosis = await _diagnosis(_setup(case, tmp_path), server, version, tmp_path)
    assert re.search(CASES[case], diagnosis), diagnosis
    if case != "wrong password":  # an HTTP answer: the host is in the URL shown beside it
        assert "127.0.0.1" in diagnosis, diagnosis


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_no_two_refusals_read_alike(version, server, tmp_path):
    diagnoses = {}
    for number, case in enumerate(CASES):
        folder = tmp_path / str(number)
        folder.mkdir()
        diagnoses[case] = await _diagnosis(_setup(case, folder), server, version, folder)
    for case, diagnosis in diagnoses.items():
        read_as = [other for other in diagnoses if re.search(CASES[other], diagnosis)]
        assert read_as == [case], f"{case} reads as {read_as}: {diagnosis}"
    assert len(set(diagnoses.values())) == len(diagnoses)


@pytest.mark.parametrize("version", VERSIONS)
async def test_cpagent_status_shows_the_diagnosis(version, tmp_path):
    setup = _setup("no client certificate", tmp_path)
    async with _csms(setup, "terminator", version) as (_, url):
        config = make_config(tmp_path / "agent", url, csms=setup.charger | {
            "ocpp_version": version})
        charger = RunningAgent(config, Clock("system"))
        await charger.start()
        try:
            diagnosis = (await _refused(charger))["last_error"]
            code, out, err = await acpagent("status", "--socket",
                                            str(config.station.control_socket))
        finally:
            await charger.stop()
    assert code == 0, err
    assert f"last error: {diagnosis}\n" in out, out
    assert re.search(CASES["no client certificate"], out), out


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", ["no client certificate", "unknown client certificate"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_a_client_certificate_refused_at_tls_1_2_is_named(version, case, server,
                                                                tmp_path):
    """At a CSMS whose TLS stops at 1.2 the client certificate is judged inside the
    handshake, and a charger without one gets the same handshake_failure alert as one with
    no cipher suite in common (or, from asyncio, the same reset): not to be mistaken."""
    setup = _setup(case, tmp_path)
    setup.tls.maximum_version = ssl.TLSVersion.TLSv1_2
    diagnosis = await _diagnosis(setup, server, version, tmp_path)
    assert re.search(CASES[case], diagnosis), diagnosis


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_certificate_for_another_host_name_is_named(version, tmp_path):
    """Reached by name (localhost), a CSMS whose certificate names csms.example.com: the
    host-name check (X509_V_ERR_HOSTNAME_MISMATCH), not the IP address one above."""
    ca = pki.root("CSMS Root")
    (tmp_path / "ca.pem").write_text(ca.pem)
    setup = Setup(pki.server_context(_named(ca, "csms.example.com"), tmp_path),
                  {"ca_file": str(tmp_path / "ca.pem")})
    async with _csms(setup, "asyncio", version) as (_, url):
        by_name = url.replace("127.0.0.1", "localhost")
        charger = RunningAgent(make_config(tmp_path / "agent", by_name, csms=setup.charger | {
            "ocpp_version": version}), Clock("system"))
        await charger.start()
        try:
            diagnosis = (await _refused(charger))["last_error"]
        finally:
            await charger.stop()
    assert "not for this host name" in diagnosis and "localhost" in diagnosis, diagnosis


@pytest.mark.parametrize("version", VERSIONS)
async def test_through_the_terminator_a_charger_set_up_right_connects(version, tmp_path):
    """The refusals above are the cases', not the terminator's: with a client certificate the
    CSMS knows, the same CSMS behind the same terminator takes the charger."""
    ca, chargers = pki.root("CSMS Root"), pki.root("Charger CA")
    (tmp_path / "ca.pem").write_text(ca.pem)
    cert, key = pki.leaf(chargers, "CP-TEST").write(tmp_path, "charger")
    setup = Setup(_requiring_client_certificates(pki.leaf(ca), chargers, tmp_path), {
        "ca_file": str(tmp_path / "ca.pem"), "client_cert": str(cert),
        "client_key": str(key)})
    async with _csms(setup, "terminator", version) as (csms, url):
        charger = RunningAgent(make_config(tmp_path / "agent", url, csms=setup.charger | {
            "ocpp_version": version}), Clock("system"))
        await charger.start()
        try:
            await csms.wait_for_call("StatusNotification")
            assert charger.agent.snapshot()["last_error"] is None
            assert charger.agent.transport.endpoint.security_profile == 3
        finally:
            await charger.stop()


def _named(ca: pki.Issued, dns: str) -> pki.Issued:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(pki._name(dns))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(pki.NOW - dt.timedelta(days=1))
            .not_valid_after(pki.NOW + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return pki.Issued(cert, key)


def _requiring_client_certificates(server: pki.Issued, clients: pki.Issued,
                                   folder) -> ssl.SSLContext:
    context = pki.server_context(server, folder)
    context.verify_mode = ssl.CERT_REQUIRED
    (folder / "clients.pem").write_text(clients.pem)
    context.load_verify_locations(folder / "clients.pem")
    return context


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_security_profile_3_connects_with_the_client_certificate(version, tmp_path):
    ca, clients = pki.root("CSMS Root"), pki.root("Charger CA")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    cert, key = pki.leaf(clients, "CP-TEST").write(tmp_path, "charger")
    subprotocols = ("ocpp1.6",) if version == "1.6" else ("ocpp2.0.1",)
    async with DevCsms(ssl_context=_requiring_client_certificates(pki.leaf(ca), clients,
                                                                  tmp_path),
                       subprotocols=subprotocols) as csms:
        charger = RunningAgent(make_config(tmp_path / "agent", csms.url, csms={
            "ca_file": str(ca_file), "client_cert": str(cert), "client_key": str(key),
            "ocpp_version": version}), Clock("system"))
        await charger.start()
        try:
            await csms.wait_for_call("BootNotification")
            assert charger.agent.snapshot()["connection"]["last_error"] is None
            assert charger.agent.transport.endpoint.security_profile == 3
            if version == "2.0.1":
                await csms.wait_for_call("StatusNotification")
                answer = await csms.call("CP-TEST", "GetVariables", {"getVariableData": [{
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "SecurityProfile"}}]})
                assert answer["getVariableResult"][0]["attributeValue"] == "3"
        finally:
            await charger.stop()


def _sign(csr_pem: str, issuer: pki.Issued) -> pki.Issued:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    cert = (x509.CertificateBuilder().subject_name(csr.subject)
            .issuer_name(issuer.cert.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(pki.NOW - dt.timedelta(minutes=5))
            .not_valid_after(pki.NOW + dt.timedelta(days=30))
            .sign(issuer.key, hashes.SHA256()))
    return pki.Issued(cert, None)  # type: ignore[arg-type]


SIGN = {"1.6": ("ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}),
        "2.0.1": ("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_certificate_signed_by_the_csms_is_used_from_the_next_connection(
        version, tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    csms_ca, clients = pki.root("CSMS Root"), pki.root("Charger CA")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(csms_ca.pem + clients.pem)  # the CSMS signs with a CA the charger knows
    first_cert, first_key = pki.leaf(clients, "CP-TEST").write(tmp_path, "factory")
    subprotocols = ("ocpp1.6",) if version == "1.6" else ("ocpp2.0.1",)
    async with DevCsms(ssl_context=_requiring_client_certificates(pki.leaf(csms_ca), clients,
                                                                  tmp_path),
                       subprotocols=subprotocols) as csms:
        charger = RunningAgent(make_config(tmp_path / "agent", csms.url, csms={
            "ca_file": str(ca_file), "client_cert": str(first_cert),
            "client_key": str(first_key), "ocpp_version": version}), Clock("system"))
        await charger.start()
        try:
            await csms.wait_for_call("StatusNotification")
            if version == "1.6":
                assert await csms.call("CP-TEST", "ChangeConfiguration", {
                    "key": "CpoName", "value": "Example CPO"}) == {"status": "Accepted"}
            else:
                await csms.call("CP-TEST", "SetVariables", {"setVariableData": [{
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "OrganizationName"},
                    "attributeValue": "Example CPO"}]})
            action, payload = SIGN[version]
            assert (await csms.call("CP-TEST", action, payload))["status"] == "Accepted"
            request = await csms.wait_for_call("SignCertificate")
            csr = x509.load_pem_x509_csr(request.payload["csr"].encode())
            assert csr.is_signature_valid
            assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
                "CP-TEST"
            assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
                == "Example CPO"
            identity = tmp_path / "agent" / "identity"
            assert (identity / "pending.key").stat().st_mode & 0o777 == 0o600
            assert b"PRIVATE KEY" not in request.payload["csr"].encode()

            # A chain for another key, and garbage, are refused.
            stranger = pki.leaf(clients, "CP-TEST")
            for bad in (stranger.pem, "not a certificate"):
                assert (await csms.call("CP-TEST", "CertificateSigned", {
                    "certificateChain": bad}))["status"] == "Rejected"
            # One signed by a CA the charger does not trust, too.
            untrusted = _sign(request.payload["csr"], pki.root("Nobody"))
            assert (await csms.call("CP-TEST", "CertificateSigned", {
                "certificateChain": untrusted.pem}))["status"] == "Rejected"

            signed = _sign(request.payload["csr"], clients)
            assert (await csms.call("CP-TEST", "CertificateSigned", {
                "certificateChain": signed.pem}))["status"] == "Accepted"
            assert (identity / "next.pem").exists()
            # The next connection shows the new certificate, which then replaces the old.
            mark = csms.mark()
            await csms.drop("CP-TEST")
            await csms.wait_for_call("StatusNotification", after=mark, timeout=10)
            for _ in range(100):
                if (identity / "current.pem").exists():
                    break
                await asyncio.sleep(0.01)
            assert x509.load_pem_x509_certificate((identity / "current.pem").read_bytes()) \
                .serial_number == signed.cert.serial_number
            assert not (identity / "next.pem").exists()
            peer = csms._sessions["CP-TEST"].ws.transport.get_extra_info("ssl_object")
            shown = x509.load_der_x509_certificate(peer.getpeercert(binary_form=True))
            assert shown.serial_number == signed.cert.serial_number
        finally:
            await charger.stop()
