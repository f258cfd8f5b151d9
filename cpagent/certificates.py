"""The charger's certificates, for every OCPP version: the roots it trusts and their hash data.

A root is installed only when it really is a CA certificate and valid now: a leaf offered as a
root is refused (chargers that took leaf certificates as roots are a known field failure).
Several roots of one use live side by side, so an operator can rotate its CA without a site
visit; the CSMS roots are trusted in addition to the configured ones, never instead, and the
root the current connection depends on cannot be deleted.

The hash data is the OCSP CertID that OCPP uses to name a certificate: the hash of the issuer's
distinguished name (DER), the hash of the issuer's public key (the BIT STRING's contents, as
RFC 6960 says), and the serial number in hexadecimal without leading zeroes. For a root, the
issuer is the certificate itself.

The PEM text and the hash data are kept in the store (the `certificates` table), so they
survive restarts and version switches; the TLS layer reads the trusted roots from here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

# `cryptography` is imported where a certificate is looked at, not with this module: it costs
# some 9 MiB of resident memory, and most chargers never receive a certificate.

__all__ = [
    "DELETE_STATUS",
    "INSTALL_STATUS",
    "MAX_CERTIFICATES",
    "CertificateHash",
    "CertificateProblem",
    "CertificateUse",
    "HashAlgorithm",
    "InstalledCertificate",
    "Outcome",
    "Result",
    "hash_data",
    "hash_from_wire",
    "hash_to_wire",
    "parse_root",
    "roots_in_pem",
]


MAX_CERTIFICATES = 20  # per charger: CertificateStoreMaxLength (1.6), CertificateEntries (2.0.1)


class CertificateUse(StrEnum):
    """What a certificate is installed for (each adapter has its own words for these)."""

    CSMS_ROOT = "csms_root"
    MANUFACTURER_ROOT = "manufacturer_root"
    V2G_ROOT = "v2g_root"
    MO_ROOT = "mo_root"


class HashAlgorithm(StrEnum):
    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"




@dataclass(frozen=True, slots=True)
class CertificateHash:
    algorithm: HashAlgorithm
    issuer_name_hash: str  # lowercase hex
    issuer_key_hash: str
    serial_number: str  # hex, no leading zeroes

    def matches(self, other: CertificateHash) -> bool:
        """The same certificate: hashes compare without regard to case, serials to zeroes."""
        return (self.algorithm == other.algorithm
                and self.issuer_name_hash.lower() == other.issuer_name_hash.lower()
                and self.issuer_key_hash.lower() == other.issuer_key_hash.lower()
                and self.serial_number.lower().lstrip("0") == other.serial_number.lower()
                .lstrip("0"))


@dataclass(frozen=True, slots=True)
class InstalledCertificate:
    id: int
    use: CertificateUse
    pem: str
    hash: CertificateHash
    installed_at: float


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # not a certificate we take (not a CA, expired, store full)
    FAILED = "failed"  # could not be done now (storage), or deleting it would cut the link
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reason: str = ""


class CertificateProblem(Exception):
    """Why a certificate was not taken, in words for the log and the security event."""


def hash_data(cert: x509.Certificate, issuer: x509.Certificate | None = None,
              algorithm: HashAlgorithm = HashAlgorithm.SHA256) -> CertificateHash:
    """The OCPP CertificateHashData of `cert`; a root is its own issuer. The CertID is built
    by `cryptography`'s OCSP request builder, which hashes exactly what RFC 6960 names."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp

    digest = {HashAlgorithm.SHA256: hashes.SHA256, HashAlgorithm.SHA384: hashes.SHA384,
              HashAlgorithm.SHA512: hashes.SHA512}[algorithm]
    request = (ocsp.OCSPRequestBuilder()
               .add_certificate(cert, issuer if issuer is not None else cert, digest())
               .build())
    return CertificateHash(algorithm, request.issuer_name_hash.hex(),
                           request.issuer_key_hash.hex(), format(request.serial_number, "x"))


def parse_root(pem: str, now: float | None) -> x509.Certificate:
    """The certificate in `pem` if it can serve as a root of trust; CertificateProblem if not.

    `now` is the trusted time, or None when the charger does not know the time yet (validity
    is then not judged: a board without a clock must still take its CSMS's new root)."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii", "strict"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateProblem(f"not a PEM certificate ({exc})") from None
    if len(certs) != 1:
        raise CertificateProblem(f"{len(certs)} certificates where one root was expected")
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateProblem("no basicConstraints: a leaf certificate, not a CA") from None
    except ValueError as exc:
        raise CertificateProblem(f"unreadable extensions ({exc})") from None
    if not constraints.ca:
        raise CertificateProblem("basicConstraints CA is false: a leaf certificate, not a CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise CertificateProblem("keyUsage does not allow signing certificates")
    if now is not None:
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        if moment < cert.not_valid_before_utc:
            raise CertificateProblem(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
        if moment > cert.not_valid_after_utc:
            raise CertificateProblem(f"expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert


# What OCPP 1.6 (security whitepaper) and 2.0.1 say alike: the CertificateHashDataType and the
# statuses of InstallCertificate and DeleteCertificate.
INSTALL_STATUS = {Outcome.ACCEPTED: "Accepted", Outcome.REJECTED: "Rejected",
                  Outcome.FAILED: "Failed", Outcome.NOT_FOUND: "Rejected"}
DELETE_STATUS = {Outcome.ACCEPTED: "Accepted", Outcome.FAILED: "Failed",
                 Outcome.NOT_FOUND: "NotFound", Outcome.REJECTED: "Failed"}


def hash_to_wire(digest: CertificateHash) -> dict:
    return {"hashAlgorithm": digest.algorithm.value, "issuerNameHash": digest.issuer_name_hash,
            "issuerKeyHash": digest.issuer_key_hash, "serialNumber": digest.serial_number}


def hash_from_wire(data: dict) -> CertificateHash:
    return CertificateHash(HashAlgorithm(data["hashAlgorithm"]), data["issuerNameHash"],
                           data["issuerKeyHash"], data["serialNumber"])


def roots_in_pem(installed: list[InstalledCertificate], use: CertificateUse) -> str:
    """The PEM text of every installed root of `use`, for an SSL context's cadata."""
    return "".join(c.pem if c.pem.endswith("\n") else c.pem + "\n"
                   for c in installed if c.use is use)
