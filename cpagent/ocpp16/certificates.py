"""The 1.6 security whitepaper's certificate messages, on the shared trust layer:
InstallCertificate, DeleteCertificate and GetInstalledCertificateIds."""

from __future__ import annotations

from cpagent.certificates import CertificateHash, CertificateUse, HashAlgorithm, Outcome
from cpagent.host import AdapterHost
from cpagent.security_events import SecurityEvent

USES = {"CentralSystemRootCertificate": CertificateUse.CSMS_ROOT,
        "ManufacturerRootCertificate": CertificateUse.MANUFACTURER_ROOT}
_INSTALL = {Outcome.ACCEPTED: "Accepted", Outcome.REJECTED: "Rejected",
            Outcome.FAILED: "Failed", Outcome.NOT_FOUND: "Rejected"}
_DELETE = {Outcome.ACCEPTED: "Accepted", Outcome.FAILED: "Failed",
           Outcome.NOT_FOUND: "NotFound", Outcome.REJECTED: "Failed"}


def hash_to_wire(digest: CertificateHash) -> dict:
    return {"hashAlgorithm": digest.algorithm.value, "issuerNameHash": digest.issuer_name_hash,
            "issuerKeyHash": digest.issuer_key_hash, "serialNumber": digest.serial_number}


def hash_from_wire(data: dict) -> CertificateHash:
    return CertificateHash(HashAlgorithm(data["hashAlgorithm"]), data["issuerNameHash"],
                           data["issuerKeyHash"], data["serialNumber"])


async def install_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.install(USES[payload["certificateType"]],
                                             payload["certificate"], host.clock.now())
    if result.outcome is Outcome.ACCEPTED and not result.reason:
        host.security_event(SecurityEvent.RECONFIGURATION,
                            f"{payload['certificateType']} installed")
    return {"status": _INSTALL[result.outcome]}


async def delete_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.delete(hash_from_wire(payload["certificateHashData"]))
    if result.outcome is Outcome.ACCEPTED:
        host.security_event(SecurityEvent.RECONFIGURATION, "a certificate was deleted "
                            f"(serial {payload['certificateHashData']['serialNumber']})"[:255])
    return {"status": _DELETE[result.outcome]}


async def get_installed_certificate_ids(host: AdapterHost, payload: dict) -> dict:
    installed = host.certificates.installed({USES[payload["certificateType"]]})
    if not installed:
        return {"status": "NotFound"}
    return {"status": "Accepted",
            "certificateHashData": [hash_to_wire(c.hash) for c in installed]}


async def send_signing_request(host: AdapterHost, organization: str) -> str:
    """SignCertificate with a CSR for a key made here; the CSMS's answer status."""
    csr = host.identity.signing_request(organization)
    answer = await host.queue.send("SignCertificate", {"csr": csr})
    return str(answer.get("status"))


async def certificate_signed(host: AdapterHost, payload: dict) -> dict:
    result = host.identity.install_signed(payload["certificateChain"])
    if result.outcome is not Outcome.ACCEPTED:
        host.security_event(SecurityEvent.INVALID_CHARGER_CERTIFICATE, result.reason)
    return {"status": "Accepted" if result.outcome is Outcome.ACCEPTED else "Rejected"}
