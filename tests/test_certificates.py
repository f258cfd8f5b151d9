"""Roots of trust installed over OCPP, in 1.6 and 2.0.1: only real CA certificates are taken,
hash data as OCPP defines it, several roots at once so a CA rotation keeps the link, and the
root the link depends on cannot be deleted."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator

import pki
import pytest
from cryptography.hazmat.primitives import serialization
from dialects import DIALECTS
from harness import RunningAgent, make_config

from cpagent.certificates import (
    CertificateProblem,
    CertificateUse,
    Outcome,
    hash_data,
    parse_root,
)
from cpagent.clock import Clock
from cpagent.devcsms import DevCsms
from cpagent.store import AsyncStore, Store
from cpagent.trust import Trust

CP = "CP-TEST"


# ---- the rules, without a link -----------------------------------------------------------------


def test_hash_data_is_the_ocsp_cert_id_of_rfc_6960():
    ca = pki.root()
    digest = hash_data(ca.cert)
    # Independently: the DER of the issuer's name, and the BIT STRING of its EC public key,
    # which for a P-256 key is the uncompressed point.
    point = ca.key.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint)
    assert digest.issuer_name_hash == hashlib.sha256(ca.cert.issuer.public_bytes()).hexdigest()
    assert digest.issuer_key_hash == hashlib.sha256(point).hexdigest()
    assert digest.serial_number == format(ca.cert.serial_number, "x")
    assert not digest.serial_number.startswith("0")


def test_only_a_ca_certificate_valid_now_is_taken_as_a_root():
    now = time.time()
    ca = pki.root()
    assert parse_root(ca.pem, now).serial_number == ca.cert.serial_number
    cases = {
        "leaf": pki.leaf(ca).pem,
        "no basicConstraints": pki.leaf(ca, ca=None).pem,
        "expired": pki.root(days=(-30, -1)).pem,
        "future": pki.root(days=(10, 40)).pem,
        "two": ca.pem + pki.root().pem,
        "garbage": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        "empty": "",
    }
    for name, pem in cases.items():
        with pytest.raises(CertificateProblem):
            parse_root(pem, now)
            pytest.fail(f"{name} was taken as a root")
    # Without a known time, validity cannot be judged: a new board still takes its root.
    assert parse_root(pki.root(days=(10, 40)).pem, None)


async def test_roots_are_kept_in_the_store_and_their_limit_holds(tmp_path):
    store = AsyncStore(Store(tmp_path / "db"))
    trust = Trust(store, time.time, lambda: None, limit=3)
    await trust.load()
    first, second = pki.root("First"), pki.root("Second")
    assert (await trust.install(CertificateUse.CSMS_ROOT, first.pem, 1.0)).outcome \
        is Outcome.ACCEPTED
    assert (await trust.install(CertificateUse.CSMS_ROOT, first.pem, 1.0)).outcome \
        is Outcome.ACCEPTED  # the same again: nothing new
    assert (await trust.install(CertificateUse.MANUFACTURER_ROOT, second.pem, 2.0)).outcome \
        is Outcome.ACCEPTED
    assert (await trust.install(CertificateUse.CSMS_ROOT, pki.leaf(first).pem, 3.0)).outcome \
        is Outcome.REJECTED
    assert (await trust.install(CertificateUse.CSMS_ROOT, pki.root().pem, 3.0)).outcome \
        is Outcome.ACCEPTED
    full = await trust.install(CertificateUse.CSMS_ROOT, pki.root().pem, 4.0)
    assert full.outcome is Outcome.REJECTED and "full" in full.reason

    again = Trust(store, time.time, lambda: None)
    await again.load()
    assert [c.use for c in again.installed()] == [CertificateUse.CSMS_ROOT,
                                                  CertificateUse.MANUFACTURER_ROOT,
                                                  CertificateUse.CSMS_ROOT]
    assert first.pem in again.csms_roots() and second.pem not in again.csms_roots()
    assert (await again.delete(hash_data(second.cert))).outcome is Outcome.ACCEPTED
    assert (await again.delete(hash_data(second.cert))).outcome is Outcome.NOT_FOUND
    store.close()


async def test_the_root_the_link_depends_on_cannot_be_deleted(tmp_path):
    store = AsyncStore(Store(tmp_path / "db"))
    ca, other = pki.root("In use"), pki.root("Spare")
    server = pki.leaf(ca)
    peer = [server.cert.public_bytes(serialization.Encoding.DER)]
    trust = Trust(store, time.time, lambda: peer[0])
    await trust.load()
    for root_ in (ca, other):
        await trust.install(CertificateUse.CSMS_ROOT, root_.pem, 1.0)
    refused = await trust.delete(hash_data(ca.cert))
    assert refused.outcome is Outcome.FAILED and "depends on it" in refused.reason
    assert (await trust.delete(hash_data(other.cert))).outcome is Outcome.ACCEPTED
    peer[0] = None  # not connected over TLS now
    assert (await trust.delete(hash_data(ca.cert))).outcome is Outcome.ACCEPTED
    store.close()


# ---- over wss, in both versions ----------------------------------------------------------------

WORDS = {
    "1.6": {"csms": "CentralSystemRootCertificate", "maker": "ManufacturerRootCertificate"},
    "2.0.1": {"csms": "CSMSRootCertificate", "maker": "ManufacturerRootCertificate"},
}


def installed_ids(version: str, answer: dict) -> list[str]:
    if answer["status"] == "NotFound":
        return []
    if version == "1.6":
        return [h["serialNumber"] for h in answer["certificateHashData"]]
    return [c["certificateHashData"]["serialNumber"] for c in answer["certificateHashDataChain"]]


def ids_request(version: str, kind: str) -> dict:
    word = WORDS[version][kind]
    return {"certificateType": word if version == "1.6" else [word]}


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request) -> str:
    return request.param


@pytest.fixture
async def rotation(version, tmp_path) -> AsyncIterator[tuple]:
    old_ca, new_ca = pki.root("Old CSMS Root"), pki.root("New CSMS Root")
    ca_file = tmp_path / "old-ca.pem"
    ca_file.write_text(old_ca.pem)
    subprotocols = (DIALECTS[version].subprotocol,)
    csms = DevCsms(ssl_context=pki.server_context(pki.leaf(old_ca), tmp_path, "old"),
                   subprotocols=subprotocols)
    await csms.start()
    config = make_config(tmp_path / "agent", csms.url,
                         csms={"ca_file": str(ca_file), "ocpp_version": version})
    charger = RunningAgent(config, Clock("system"))
    await charger.start()
    await csms.wait_for_call("StatusNotification")  # booted: 2.0.1 takes calls only now
    holder = [csms]
    yield holder, charger, old_ca, new_ca
    await charger.stop()
    await holder[0].stop()


async def test_a_csms_rotates_its_ca_without_a_site_visit(version, rotation, tmp_path):
    holder, charger, _, new_ca = rotation
    csms = holder[0]
    words = WORDS[version]

    async def call(action: str, payload: dict) -> dict:
        return await holder[0].call(CP, action, payload)

    assert installed_ids(version, await call("GetInstalledCertificateIds",
                                             ids_request(version, "csms"))) == []
    # A leaf offered as a root is refused; the new CA is taken beside the configured one.
    leaf = await call("InstallCertificate", {"certificateType": words["csms"],
                                             "certificate": pki.leaf(new_ca).pem})
    assert leaf["status"] == "Rejected"
    assert (await call("InstallCertificate", {"certificateType": words["csms"],
                                              "certificate": new_ca.pem}))["status"] == \
        "Accepted"
    maker = pki.root("Maker Root")
    assert (await call("InstallCertificate", {"certificateType": words["maker"],
                                              "certificate": maker.pem}))["status"] == \
        "Accepted"
    assert installed_ids(version, await call("GetInstalledCertificateIds",
                                             ids_request(version, "csms"))) == [
        format(new_ca.cert.serial_number, "x")]

    # The CSMS moves to a server certificate of the new CA: the charger follows.
    port = csms.port
    await csms.stop()
    rotated = DevCsms(port=port, ssl_context=pki.server_context(pki.leaf(new_ca), tmp_path,
                                                                "new"),
                      subprotocols=csms.subprotocols)
    await rotated.start()
    holder[0] = rotated
    await rotated.wait_connected(CP, timeout=15)

    # The link now depends on the new root: it cannot be deleted; the maker's root can.
    hash_new = _wire_hash(new_ca)
    assert (await call("DeleteCertificate", {"certificateHashData": hash_new}))["status"] == \
        "Failed"
    assert (await call("DeleteCertificate", {"certificateHashData": _wire_hash(maker)}))[
        "status"] == "Accepted"
    assert (await call("DeleteCertificate", {"certificateHashData": _wire_hash(maker)}))[
        "status"] == "NotFound"

    # After a restart the installed root is still trusted.
    mark = rotated.mark()
    await charger.restart()
    await rotated.wait_for_call("StatusNotification", after=mark, timeout=15)
    assert charger.agent.transport.connect_count == 1


def _wire_hash(issued: pki.Issued) -> dict:
    digest = hash_data(issued.cert)
    return {"hashAlgorithm": "SHA256", "issuerNameHash": digest.issuer_name_hash,
            "issuerKeyHash": digest.issuer_key_hash, "serialNumber": digest.serial_number}
