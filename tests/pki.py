"""A test PKI made at test time: roots, leaves for 127.0.0.1, expired and future ones, and
a TLS terminator to put a plain-ws CSMS behind."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_text(self.pem)
        key_path.write_bytes(self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cpagent tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def root(common_name: str = "Test CSMS Root", *, days: tuple[int, int] = (-1, 365)) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW + dt.timedelta(days=days[0]))
            .not_valid_after(NOW + dt.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def leaf(issuer: Issued, common_name: str = "127.0.0.1", *, ca: bool | None = False,
         days: tuple[int, int] = (-1, 30)) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(issuer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW + dt.timedelta(days=days[0]))
               .not_valid_after(NOW + dt.timedelta(days=days[1]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                        critical=True)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def server_context(server: Issued, folder: Path, name: str = "server",
                   chain: tuple[Issued, ...] = ()) -> ssl.SSLContext:
    """A server context presenting `server`, followed by the intermediates in `chain`."""
    cert_path, key_path = server.write(folder, name)
    cert_path.write_text(server.pem + "".join(c.pem for c in chain))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


class TlsTerminator:
    """TLS in front of a plain-ws CSMS, the way most CSMSs are deployed (nginx, a load
    balancer): OpenSSL's handshake on memory buffers, so that a refused handshake is answered
    with the TLS alert that says why, as OpenSSL-based servers do. (asyncio's own TLS server,
    in Python 3.11, drops that alert and resets the connection.) A good connection is relayed
    to `backend`, a "ws://host:port/path" URL; `url` is the same CSMS over wss.
    """

    def __init__(self, context: ssl.SSLContext, backend: str) -> None:
        self.context = context
        self.backend = urlsplit(backend)
        self.url = ""
        self.refused: list[ssl.SSLError] = []  # why the server side refused, for a failing test
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TlsTerminator:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"wss://127.0.0.1:{port}{self.backend.path}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        async def send() -> None:  # what OpenSSL wrote, alerts included, onto the wire
            writer.write(outgoing.read())
            await writer.drain()

        async def receive() -> bool:
            data = await reader.read(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await send()
                    if not await receive():
                        return
            await send()
            up_reader, up_writer = await asyncio.open_connection(self.backend.hostname,
                                                                 self.backend.port)

            async def to_csms() -> None:
                while True:
                    try:
                        data = tls.read(65536)
                    except ssl.SSLWantReadError:
                        await send()
                        if not await receive():
                            return
                        continue
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        return  # the charger closed
                    if not data:  # its close_notify
                        return
                    up_writer.write(data)
                    await up_writer.drain()

            async def to_charger() -> None:
                while data := await up_reader.read(65536):
                    tls.write(data)
                    await send()

            relays = [asyncio.ensure_future(to_csms()), asyncio.ensure_future(to_charger())]
            try:
                await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for relay in relays:
                    relay.cancel()
                await asyncio.gather(*relays, return_exceptions=True)
                up_writer.close()
        except ssl.SSLError as exc:
            self.refused.append(exc)
            with contextlib.suppress(OSError):
                await send()  # the alert
        except OSError:
            pass
        finally:
            writer.close()
