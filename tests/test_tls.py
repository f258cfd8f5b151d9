"""Each way a TLS connection to the CSMS fails is told apart, in plain words with what to fix,
with a test CA made at test time: an untrusted CA, a certificate for another host, expired,
not yet valid, signed by a certificate that is no CA, and a server that speaks only TLS 1.1."""

from __future__ import annotations

import asyncio
import ssl

import pki
import pytest
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms

CASES = {
    "untrusted CA": "not trusted",
    "other host": "not for this",
    "expired": "has expired",
    "not yet valid": "not valid yet",
    "signed by a non-CA": "not a CA",
}


def _server(case: str, ca: pki.Issued, folder) -> ssl.SSLContext:
    match case:
        case "untrusted CA":
            return pki.server_context(pki.leaf(pki.root("Someone Else")), folder)
        case "other host":  # a certificate naming only another host
            return pki.server_context(_named(ca, "csms.example.com"), folder)
        case "expired":
            return pki.server_context(pki.leaf(ca, days=(-30, -1)), folder)
        case "not yet valid":
            return pki.server_context(pki.leaf(ca, days=(2, 30)), folder)
    middle = pki.leaf(ca, "Not a CA", ca=False)  # a leaf that signed the server's certificate
    return pki.server_context(pki.leaf(middle), folder, chain=(middle,))


async def _last_error(charger: RunningAgent) -> str:
    for _ in range(500):
        error = charger.agent.transport.last_error
        if error:
            return error
        await asyncio.sleep(0.01)
    raise AssertionError("no error reported")


@pytest.mark.parametrize("case", list(CASES))
async def test_a_refused_server_certificate_is_named(case, tmp_path):
    ca = pki.root()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    words = CASES[case]
    async with DevCsms(ssl_context=_server(case, ca, tmp_path)) as csms:
        charger = RunningAgent(make_config(tmp_path / "agent", csms.url,
                                           csms={"ca_file": str(ca_file)}), Clock("system"))
        await charger.start()
        try:
            error = await _last_error(charger)
            assert words in error, error
            assert "127.0.0.1" in error
            assert csms.calls("BootNotification") == []
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


async def test_a_server_that_speaks_only_tls_1_1_is_named(tmp_path):
    ca = pki.root()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    context = pki.server_context(pki.leaf(ca), tmp_path)
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot serve TLS 1.1: {exc}")
    async with DevCsms(ssl_context=context) as csms:
        charger = RunningAgent(make_config(tmp_path / "agent", csms.url,
                                           csms={"ca_file": str(ca_file)}), Clock("system"))
        await charger.start()
        try:
            error = await _last_error(charger)
            assert "TLS 1.2 or newer" in error, error
        finally:
            await charger.stop()


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


async def test_a_client_certificate_the_csms_does_not_know_is_named(tmp_path):
    ca, clients = pki.root("CSMS Root"), pki.root("Charger CA")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    cert, key = pki.leaf(pki.root("Unknown CA"), "CP-TEST").write(tmp_path, "stranger")
    async with DevCsms(ssl_context=_requiring_client_certificates(pki.leaf(ca), clients,
                                                                  tmp_path)) as csms:
        charger = RunningAgent(make_config(tmp_path / "agent", csms.url, csms={
            "ca_file": str(ca_file), "client_cert": str(cert), "client_key": str(key)}),
            Clock("system"))
        await charger.start()
        try:
            error = await _last_error(charger)
            assert "client certificate" in error, error
            assert csms.calls("BootNotification") == []
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
