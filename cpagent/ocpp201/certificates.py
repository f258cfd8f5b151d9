"""OCPP 2.0.1 block A/M certificate messages on the shared trust layer: InstallCertificate,
DeleteCertificate and GetInstalledCertificateIds."""

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

USES = {"CSMSRootCertificate": CertificateUse.CSMS_ROOT,
        "ManufacturerRootCertificate": CertificateUse.MANUFACTURER_ROOT,
        "V2GRootCertificate": CertificateUse.V2G_ROOT,
        "MORootCertificate": CertificateUse.MO_ROOT}
WIRE_USES = {use: name for name, use in USES.items()}


def _status_info(reason: str) -> dict:
    return {"statusInfo": {"reasonCode": "Rejected" if reason else "NoError",
                           "additionalInfo": reason[:512]}} if reason else {}



async def install_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.install(USES[payload["certificateType"]],
                                             payload["certificate"], host.clock.now())
    if result.outcome is Outcome.ACCEPTED and not result.reason:
        host.security_event(SecurityEvent.RECONFIGURATION,
                            f"{payload['certificateType']} installed")
    status = INSTALL_STATUS[result.outcome]
    return {"status": status, **(_status_info(result.reason) if status != "Accepted" else {})}


async def delete_certificate(host: AdapterHost, payload: dict) -> dict:
    result = await host.certificates.delete(hash_from_wire(payload["certificateHashData"]))
    if result.outcome is Outcome.ACCEPTED:
        host.security_event(SecurityEvent.RECONFIGURATION, "a certificate was deleted "
                            f"(serial {payload['certificateHashData']['serialNumber']})"[:255])
    status = DELETE_STATUS[result.outcome]
    return {"status": status, **(_status_info(result.reason) if status == "Failed" else {})}


async def get_installed_certificate_ids(host: AdapterHost, payload: dict) -> dict:
    wanted = payload.get("certificateType")
    # V2GCertificateChain names the charger's own ISO 15118 chain, which it does not have.
    uses = None if not wanted else {USES[name] for name in wanted if name in USES}
    installed = host.certificates.installed(uses) if uses is None or uses else []
    if not installed:
        return {"status": "NotFound"}
    return {"status": "Accepted", "certificateHashDataChain": [
        {"certificateType": WIRE_USES[c.use], "certificateHashData": hash_to_wire(c.hash)}
        for c in installed]}


async def send_signing_request(host: AdapterHost, organization: str) -> str:
    """SignCertificate with a CSR for a key made here; the CSMS's answer status."""
    csr = host.identity.signing_request(organization)
    answer = await host.queue.send("SignCertificate", {
        "csr": csr, "certificateType": "ChargingStationCertificate"})
    return str(answer.get("status"))


async def certificate_signed(host: AdapterHost, payload: dict) -> dict:
    if payload.get("certificateType", "ChargingStationCertificate") != \
            "ChargingStationCertificate":
        # No ISO 15118 stack: a V2G certificate has no use here.
        return {"status": "Rejected", "statusInfo": {
            "reasonCode": "NotSupported", "additionalInfo": "no ISO 15118 support"}}
    result = host.identity.install_signed(payload["certificateChain"])
    if result.outcome is not Outcome.ACCEPTED:
        host.security_event(SecurityEvent.INVALID_CHARGER_CERTIFICATE, result.reason)
    if result.outcome is Outcome.ACCEPTED:
        return {"status": "Accepted"}
    return {"status": "Rejected", **_status_info(result.reason)}
