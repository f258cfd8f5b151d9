"""The 1.6 security whitepaper's certificate messages, on the shared trust layer:
InstallCertificate, DeleteCertificate and GetInstalledCertificateIds."""

from __future__ import annotations

from cpagent.certificates import (
    DELETE_STATUS,
    INSTALL_STATUS,
    CertificateUse,
    Outcome,
    hash_from_wire,
    hash_to_wire,
)
from cpagent.host import AdapterHost
from cpagent.security_events import SecurityEvent

USES = {"CentralSystemRootCertificate": CertificateUse.CSMS_ROOT,
        "ManufacturerRootCertificate": CertificateUse.MANUFACTURER_ROOT}



async def install_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.install(USES[payload["certificateType"]],
                                             payload["certificate"], host.clock.now())
    if result.outcome is Outcome.ACCEPTED and not result.reason:
        host.security_event(SecurityEvent.RECONFIGURATION,
                            f"{payload['certificateType']} installed")
    return {"status": INSTALL_STATUS[result.outcome]}


async def delete_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.delete(hash_from_wire(payload["certificateHashData"]))
    if result.outcome is Outcome.ACCEPTED:
        host.security_event(SecurityEvent.RECONFIGURATION, "a certificate was deleted "
                            f"(serial {payload['certificateHashData']['serialNumber']})"[:255])
    return {"status": DELETE_STATUS[result.outcome]}


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
