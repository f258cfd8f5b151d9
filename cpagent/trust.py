"""The roots the charger trusts, installed and deleted by the CSMS, for every OCPP version.

Each adapter translates its version's InstallCertificate, DeleteCertificate and
GetInstalledCertificateIds into these calls; the transport asks `csms_roots()` for the roots
to trust beside the configured ones each time it connects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cpagent.certificates import (
    MAX_CERTIFICATES,
    CertificateHash,
    CertificateProblem,
    CertificateUse,
    HashAlgorithm,
    InstalledCertificate,
    Outcome,
    Result,
    hash_data,
    parse_root,
    roots_in_pem,
)
from cpagent.store import AsyncStore, StorageBusy, StorageFull

log = logging.getLogger(__name__)


class Trust:
    def __init__(self, store: AsyncStore, trusted_now: Callable[[], float | None],
                 peer_certificate: Callable[[], bytes | None],
                 limit: int = MAX_CERTIFICATES) -> None:
        self._store = store
        self._trusted_now = trusted_now  # the time, if the charger knows it
        self._peer_certificate = peer_certificate  # DER of the CSMS's certificate, over wss
        self.limit = limit
        self._installed: list[InstalledCertificate] = []

    async def load(self) -> None:
        self._installed = []
        for row in await self._store.certificates():
            ident, use, pem, algorithm, name_hash, key_hash, serial, installed_at = row
            try:
                self._installed.append(InstalledCertificate(
                    ident, CertificateUse(use), pem,
                    CertificateHash(HashAlgorithm(algorithm), name_hash, key_hash, serial),
                    installed_at))
            except ValueError:
                log.error("ignoring stored certificate %s of unknown use %r", ident, use)

    def installed(self, uses: set[CertificateUse] | None = None) -> list[InstalledCertificate]:
        return [c for c in self._installed if uses is None or c.use in uses]

    def csms_roots(self) -> str:
        """PEM text of the installed CSMS roots, trusted beside the configured CA."""
        return roots_in_pem(self._installed, CertificateUse.CSMS_ROOT)

    async def install(self, use: CertificateUse, pem: str, now: float) -> Result:
        from cryptography.exceptions import UnsupportedAlgorithm  # see cpagent.certificates

        try:
            cert = parse_root(pem, self._trusted_now())
            digest = hash_data(cert)
        except CertificateProblem as exc:
            log.warning("certificate for %s refused: %s", use, exc)
            return Result(Outcome.REJECTED, str(exc))
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # a key we cannot hash
            log.warning("certificate for %s refused: %s", use, exc)
            return Result(Outcome.REJECTED, f"unusable certificate ({exc})")
        for known in self._installed:
            if known.use is use and known.hash.matches(digest):
                return Result(Outcome.ACCEPTED, "already installed")
        if len(self._installed) >= self.limit:
            return Result(Outcome.REJECTED, f"the certificate store is full ({self.limit})")
        from cryptography.hazmat.primitives.serialization import Encoding

        text = cert.public_bytes(Encoding.PEM).decode("ascii")
        try:
            ident = await self._store.add_certificate(
                use.value, text, digest.algorithm.value, digest.issuer_name_hash,
                digest.issuer_key_hash, digest.serial_number, now)
        except (StorageFull, StorageBusy) as exc:
            return Result(Outcome.FAILED, f"could not be stored: {exc}")
        self._installed.append(InstalledCertificate(ident, use, text, digest, now))
        log.warning("installed a %s certificate: %s (serial %s)", use,
                    cert.subject.rfc4514_string(), digest.serial_number)
        return Result(Outcome.ACCEPTED)

    async def delete(self, wanted: CertificateHash) -> Result:
        found = [c for c in self._installed if c.hash.matches(wanted)]
        if not found:
            return Result(Outcome.NOT_FOUND)
        for certificate in found:
            if certificate.use is CertificateUse.CSMS_ROOT and self._carries_link(certificate):
                return Result(Outcome.FAILED, "the connection to the CSMS depends on it")
        try:
            for certificate in found:
                await self._store.delete_certificate(certificate.id)
                self._installed.remove(certificate)
        except (StorageFull, StorageBusy) as exc:
            return Result(Outcome.FAILED, f"could not be deleted: {exc}")
        log.warning("deleted %d certificate(s) with serial %s", len(found),
                    wanted.serial_number)
        return Result(Outcome.ACCEPTED)

    def _carries_link(self, root: InstalledCertificate) -> bool:
        """The CSMS's certificate is issued by this root, and by no other one installed."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

        der = self._peer_certificate()
        if der is None:
            return False
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        issuers = []
        for other in self.installed({CertificateUse.CSMS_ROOT}):
            try:
                leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(
                    other.pem.encode("ascii")))
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue  # another issuer, or a key it cannot have signed with
            issuers.append(other.id)
        return issuers == [root.id]
