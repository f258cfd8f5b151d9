"""The charger's own TLS client certificate (security profile 3), renewed over OCPP.

The key pair is generated here and its private key never leaves the charger: the CSMS gets a
certificate signing request (SignCertificate) and answers with the signed chain
(CertificateSigned). The chain is taken only if its leaf carries the pending key and it leads
to a root the charger trusts; it is then used from the next connection on, and the
certificate it replaces is kept until a connection with the new one has succeeded.

Files live under `<data_dir>/identity/`, mode 0600, each written to a temporary file, synced
and renamed into place, so a power cut leaves the old file or the new one, never half of one:

    pending.key         the key of the request in flight
    next.pem, next.key  signed and checked, not yet proven by a connection
    current.pem/.key    the certificate in use (else the configured csms.client_cert)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cpagent.certificates import Outcome, Result

log = logging.getLogger(__name__)


def _write_secret(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ChargerIdentity:
    def __init__(self, directory: Path, identity: str,
                 configured: tuple[Path, Path] | None,
                 trusted_roots: Callable[[], str],
                 trusted_now: Callable[[], float | None]) -> None:
        self.directory = directory
        self.identity = identity
        self.configured = configured  # csms.client_cert, csms.client_key
        self._trusted_roots = trusted_roots  # PEM text of every root the charger trusts
        self._trusted_now = trusted_now  # the time, if known
        self._trying_next = False
        self.signed = 0  # CertificateSigned chains taken in this run

    def _file(self, name: str) -> Path:
        return self.directory / name

    # ---- what the TLS layer shows --------------------------------------------------------------

    def credentials(self) -> tuple[Path, Path] | None:
        """The certificate and key to show on the next connection."""
        for stem in ("next", "current"):
            cert, key = self._file(f"{stem}.pem"), self._file(f"{stem}.key")
            if cert.exists() and key.exists():
                self._trying_next = stem == "next"
                return cert, key
        self._trying_next = False
        return self.configured

    def connected(self) -> None:
        """A connection succeeded: a new certificate on trial has proven itself."""
        if not self._trying_next:
            return
        for suffix in ("pem", "key"):
            os.replace(self._file(f"next.{suffix}"), self._file(f"current.{suffix}"))
        self._trying_next = False
        log.warning("the new client certificate connected: it replaces the previous one")

    def refused(self) -> None:
        """A connection with the certificate on trial failed in TLS: back to the old one."""
        if not self._trying_next:
            return
        for suffix in ("pem", "key"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._file(f"next.{suffix}"),
                           self._file(f"refused.{suffix}"))
        self._trying_next = False
        log.error("the CSMS refused the new client certificate: using the previous one again")

    def describe(self) -> dict[str, dict]:
        """What each certificate on file is (for the store, `status` and renewal): subject,
        serial and validity of the one in use and of one waiting for its first connection."""
        from cryptography import x509

        found: dict[str, dict] = {}
        files = {"next": self._file("next.pem"), "current": self._file("current.pem")}
        if self.configured is not None:
            files.setdefault("configured", self.configured[0])
        for name, path in files.items():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            found[name] = {"subject": cert.subject.rfc4514_string()[:200],
                           "serial": f"{cert.serial_number:x}",
                           "not_before": cert.not_valid_before_utc.timestamp(),
                           "not_after": cert.not_valid_after_utc.timestamp()}
        return found

    def in_use(self) -> dict | None:
        """The certificate the charger shows now, as `describe` tells it."""
        known = self.describe()
        return known.get("current") or known.get("configured")

    # ---- renewal over OCPP -------------------------------------------------------------------

    def signing_request(self, organization: str) -> str:
        """A new key pair and its CSR (PEM); the key waits in pending.key."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.NameAttribute(NameOID.COMMON_NAME, self.identity)]
        if organization:
            names.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name(names))
               .sign(key, hashes.SHA256()))
        _write_secret(self._file("pending.key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def install_signed(self, chain_pem: str) -> Result:
        """Check the chain the CSMS signed; take it for the next connection if it holds."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        pending = self._file("pending.key")
        if not pending.exists():
            return Result(Outcome.REJECTED, "no certificate signing request is pending")
        try:
            chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            return Result(Outcome.REJECTED, f"not a PEM certificate chain ({exc})")
        key = serialization.load_pem_private_key(pending.read_bytes(), password=None)
        leaf = chain[0]
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        try:
            offered = leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
            return Result(Outcome.REJECTED, f"unreadable public key ({exc})")
        if offered != key.public_key().public_bytes(serialization.Encoding.DER, spki):
            return Result(Outcome.REJECTED, "the certificate is not for the key requested")
        now = self._trusted_now()
        if now is not None:
            moment = dt.datetime.fromtimestamp(now, dt.UTC)
            for cert in chain:
                if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
                    return Result(Outcome.REJECTED, "a certificate of the chain is not valid "
                                                    "now")
        try:
            for child, parent in itertools.pairwise(chain):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return Result(Outcome.REJECTED, "the chain does not hold together")
        roots = []
        with contextlib.suppress(ValueError):
            roots = x509.load_pem_x509_certificates(self._trusted_roots().encode("ascii"))
        if not any(_issued_by(chain[-1], root) for root in roots):
            return Result(Outcome.REJECTED, "the chain leads to no root the charger trusts")
        _write_secret(self._file("next.pem"), chain_pem.encode("ascii"))
        os.replace(pending, self._file("next.key"))
        self.signed += 1
        log.warning("a new client certificate (serial %x) will be used from the next "
                    "connection", leaf.serial_number)
        return Result(Outcome.ACCEPTED)


def _issued_by(cert, root) -> bool:
    """`cert` is the trusted root itself, or signed by it."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    if cert == root:
        return True
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
