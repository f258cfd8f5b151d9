"""The WebSocket link to the CSMS: connect, keep alive, detect a dead link, reconnect.

A link is only as alive as its last pong: every ping interval we ping, and a pong that does
not come back within the pong timeout aborts the TCP connection on the spot (no closing
handshake, which a vanished peer would never answer) and a new connection is made with
exponential backoff and jitter. The peer's choice of subprotocol is read from the handshake;
a server that agrees to none of ours gets no OCPP session.

`last_error` says why the link is not up: it is cleared when a connection is made and set by
every failure, including a CSMS that never answers the BootNotification or closes the link.
Frames larger than `max_frame_bytes` make the WebSocket layer close the connection with code
1009 (RFC 6455), since holding them would let a peer exhaust the memory of a small board.
For the same reason permessage-deflate (RFC 7692) is not offered unless `compression` is set:
`max_frame_bytes` bounds one message, not how many the WebSocket layer inflates from a single
read before flow control pauses it, and a few kilobytes of deflated frames from a hostile CSMS
inflate to hundreds of megabytes (OCPP-J leaves compression to the charging station).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from cpagent.host import Endpoint
from cpagent.identity import ChargerIdentity
from cpagent.protocols import SUBPROTOCOLS
from cpagent.security_events import SecurityEvent

log = logging.getLogger(__name__)


@dataclass
class TransportSettings:
    url: str  # endpoint, identity included
    identity: str
    versions: list[str]  # OCPP versions we speak, most preferred first
    password: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None  # with client_key: security profile 3
    client_key: Path | None = None
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    pong_timeout: float = 10.0
    open_timeout: float = 15.0
    stable_after: float = 30.0  # a link that lived this long resets the backoff
    max_frame_bytes: int = 1024 * 1024
    compression: bool = False  # permessage-deflate: see the module's docstring


# TLS 1.2 cipher suites: the ones the OCPP security specifications name (ECDHE with ECDSA or
# RSA keys, and the RSA key exchange kept for CSMSs that have only it), all AES-GCM. TLS 1.3
# suites are OpenSSL's, which are all AEAD. A server offering none of these is refused and
# named ("no cipher suite in common") rather than met with a weaker suite.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384",
])


def client_context(ca_file: Path | None, extra_roots: str = "") -> ssl.SSLContext:
    """The TLS context of every connection to the CSMS: TLS 1.2 or newer, the named cipher
    suites, the server's certificate and host name always verified (no switch turns that off).
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Roots the CSMS installed are trusted beside the configured ones, never instead: a CA
    # rotation adds the new root before the server changes its certificate.
    if extra_roots:
        context.load_verify_locations(cadata=extra_roots)
    return context


def security_profile(settings: TransportSettings) -> int:
    """1: ws with basic auth; 2: wss with basic auth; 3: wss with a client certificate."""
    if not settings.url.startswith("wss://"):
        return 1
    return 3 if settings.client_cert is not None else 2


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with jitter, so a fleet that lost its CSMS does not return in step."""
    ceiling = min(maximum, initial * (2 ** min(attempt, 30)))
    return ceiling * rng.uniform(0.5, 1.0)


Session = Callable[[ClientConnection, str], Awaitable[None]]


# OpenSSL's X509_V_ERR codes that an installer can act on, in plain words.
_VERIFY_PROBLEMS = {
    9: "the CSMS's certificate is not valid yet (is the charger's clock right?)",
    10: "the CSMS's certificate has expired",
    13: "the CSMS's certificate is not valid yet (is the charger's clock right?)",
    14: "the CSMS's certificate has expired",
    18: "the CSMS's certificate is self-signed and not among the trusted roots",
    19: "the CSMS's certificate chain ends in a root that is not trusted",
    20: "the CSMS's certificate is issued by a CA that is not trusted",
    21: "the CSMS's certificate is issued by a CA that is not trusted",
    24: "the CSMS's certificate is signed by a certificate that is not a CA",
    79: "the CSMS's certificate is signed by a certificate that is not a CA",
    62: "the CSMS's certificate is not for this host name",
    64: "the CSMS's certificate is not for this IP address",
}


def tls_problem(exc: ssl.SSLError, url: str) -> tuple[str, SecurityEvent | None]:
    """Why TLS failed, and what to fix (a bare "ConnectionResetError" helps nobody), with the
    security event the failure is, if it is one."""
    where = urlsplit(url).hostname or url
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        words = _VERIFY_PROBLEMS.get(code, f"the CSMS's certificate was refused "
                                           f"({exc.verify_message})")
        fix = ("; install the CSMS's root (csms.ca_file, or InstallCertificate)"
               if code in (18, 19, 20, 21) else "")
        return f"TLS to {where}: {words}{fix}", SecurityEvent.INVALID_CSMS_CERTIFICATE
    reason = (exc.reason or "").upper()
    if "UNSUPPORTED_PROTOCOL" in reason or "WRONG_VERSION" in reason or \
            "PROTOCOL_VERSION" in reason:
        return (f"TLS to {where}: the CSMS does not speak TLS 1.2 or newer, which OCPP "
                "requires; its TLS must be updated"), SecurityEvent.INVALID_TLS_VERSION
    if "HANDSHAKE_FAILURE" in reason or "NO_SHARED_CIPHER" in reason or \
            "NO_CIPHERS" in reason:
        return (f"TLS to {where}: no cipher suite in common with the CSMS (the charger "
                "offers the AES-GCM suites OCPP names); the CSMS's TLS settings must allow "
                "one of them"), SecurityEvent.INVALID_TLS_CIPHER_SUITE
    if "CERTIFICATE_REQUIRED" in reason:  # the alert says so: no certificate was shown
        return (f"TLS to {where}: the CSMS requires a client certificate (security profile "
                "3) and the charger has none: set csms.client_cert and csms.client_key"), None
    if "UNKNOWN_CA" in reason or \
            "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return (f"TLS to {where}: the CSMS refused the charger's client certificate "
                f"({exc.reason})"), None
    return f"TLS to {where}: {exc.reason or exc}", None


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen = 0
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and seen < 5:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


async def probe_tls(url: str, timeout: float = 3.0) -> tuple[str, str] | None:
    """The TLS version and cipher suite the server at `url` settles on with a client that
    allows everything and shows no certificate; None when even that handshake fails. For the
    diagnosis only: nothing is sent over it, no session uses it."""
    parts = urlsplit(url)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only the version and the suite are read
    try:
        with warnings.catch_warnings():  # asking for TLS 1.0 is the point of the probe
            warnings.simplefilter("ignore", DeprecationWarning)
            probe.minimum_version = ssl.TLSVersion.TLSv1
        probe.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                parts.hostname, parts.port or 443, ssl=probe,
                server_hostname=parts.hostname)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        found = (ssl_object.version() or "", (ssl_object.cipher() or ("",))[0]) \
            if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return found


_OLD_TLS = ("SSLv3", "TLSv1", "TLSv1.1")


async def cut_handshake(url: str, with_certificate: bool) -> tuple[str, SecurityEvent | None]:
    """Why a TLS handshake that the server cut short failed (a reset, an end of stream, a bare
    handshake_failure alert: in TLS 1.2 that is how an old server, a cipher mismatch and a
    refused or missing client certificate all look). A probe tells them apart."""
    where = urlsplit(url).hostname or url
    found = await probe_tls(url)
    if found is not None:
        version, cipher = found
        if version in _OLD_TLS:
            return (f"TLS to {where}: the CSMS speaks only {version}, not TLS 1.2 or newer as "
                    "OCPP requires; its TLS must be updated"), SecurityEvent.INVALID_TLS_VERSION
        if version == "TLSv1.2" and cipher not in TLS12_CIPHERS.split(":"):
            return (f"TLS to {where}: no cipher suite in common with the CSMS, which offers "
                    f"{cipher}; OCPP names AES-GCM suites (ECDHE-ECDSA, ECDHE-RSA or RSA key "
                    "exchange), one of which the CSMS's TLS settings must allow"), \
                SecurityEvent.INVALID_TLS_CIPHER_SUITE
    # The server's TLS is acceptable (or refuses even the probe): what is left between it and
    # the charger is the client certificate.
    if with_certificate:
        return (f"TLS to {where}: the CSMS refused the charger's client certificate during "
                "the handshake; check that the CSMS knows the charger's certificate "
                "(csms.client_cert) and its CA"), None
    return (f"TLS to {where}: the CSMS ended the handshake; if it requires a client "
            "certificate (security profile 3), this is how it refuses a charger without one, "
            "and this charger has none: set csms.client_cert and csms.client_key"), None


class _AlertKeepingConnection(ClientConnection):
    """In TLS 1.3 the server judges the client certificate after the handshake, and its alert
    (certificate required, unknown CA) arrives as the connection's error while websockets
    reports only an end of stream: raise the alert instead, which says what to fix."""

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except websockets.InvalidMessage as exc:
            if isinstance(self.connection_exc, ssl.SSLError):
                raise self.connection_exc from exc
            raise


class Transport:
    def __init__(
        self,
        settings: TransportSettings,
        session: Session,
        ping_interval: Callable[[], float],
        *,
        rng: random.Random | None = None,
        extra_roots: Callable[[], str] | None = None,
        identity: ChargerIdentity | None = None,
    ) -> None:
        self.settings = settings
        self._extra_roots = extra_roots  # the CSMS roots installed over OCPP (PEM)
        self.identity = identity  # the charger's client certificate, renewed over OCPP
        # Told of a refused password or server certificate (a security event), once per
        # kind of failure until a connection succeeds again.
        self.on_security_problem: Callable[[SecurityEvent, str], None] | None = None
        self._security_told: set[SecurityEvent] = set()
        self._session = session
        self._ping_interval = ping_interval  # read every round: WebSocketPingInterval may change
        # bandit B311: backoff jitter, not a secret
        self._rng = rng or random.Random()  # nosec B311
        self._network_up = asyncio.Event()
        self._network_up.set()
        self._kick = asyncio.Event()  # cuts a backoff wait short when the network returns
        self._connection: ClientConnection | None = None
        self.state = "disconnected"
        self.version: str | None = None
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.connect_count = 0
        self._closing = False
        self.base = Endpoint(settings.url,
                             settings.password.encode() if settings.password else None,
                             security_profile(settings))
        self.endpoints: list[Endpoint] = [self.base]
        self.attempts = 3
        self._index = 0
        self._failures = 0
        self.fallbacks: list[str] = []

    # ---- the simulated outage of `cpagent sim network down|up` ---------------------------------

    def set_network(self, up: bool) -> None:
        if up:
            self._network_up.set()
            self._kick.set()
            return
        self._network_up.clear()
        self.abort("network down (simulated)")

    def abort(self, why: str) -> None:
        connection = self._connection
        if connection is not None:
            log.warning("dropping the CSMS link: %s", why)
            self.last_error = why
            connection.transport.abort()

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index % len(self.endpoints)]

    def use_endpoints(self, endpoints: list[Endpoint], attempts: int) -> None:
        self.endpoints = list(endpoints) or [self.base]
        self.attempts = max(1, attempts)
        self._index = 0
        self._failures = 0

    def _failed(self, endpoint: Endpoint) -> None:
        self._failures += 1
        if len(self.endpoints) > 1 and self._failures >= self.attempts:
            self._index = (self._index + 1) % len(self.endpoints)
            self._failures = 0
            nxt = self.endpoint
            why = (f"could not connect with the network profile of {endpoint.label} "
                   f"({self.attempts} attempts): falling back to {nxt.label}")
            log.error("%s", why)
            self.fallbacks.append(why)
            self.last_error = f"{self.last_error}; {why}" if self.last_error else why

    def note(self, problem: str | None) -> None:
        """What the session learnt of the link (a boot never answered, refused, ...)."""
        self.last_error = problem

    async def close(self, why: str) -> None:
        """A clean goodbye: close code 1000 (normal closure), no reconnect after it."""
        self._closing = True
        self._network_up.clear()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(code=1000, reason=why[:100]), 3.0)

    # ---- the loop ------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.endpoint.url.startswith("wss://"):
            return None
        extra = self._extra_roots() if self._extra_roots is not None else ""
        context = client_context(self.settings.ca_file, extra)
        credentials = self.client_credentials()
        if credentials is not None:
            context.load_cert_chain(*credentials)
        return context

    def client_credentials(self) -> tuple[Path, Path] | None:
        """The client certificate and key for the next connection (security profile 3)."""
        if self.identity is not None:
            return self.identity.credentials()
        if self.settings.client_cert is not None and self.settings.client_key is not None:
            return self.settings.client_cert, self.settings.client_key
        return None

    def _security(self, event: SecurityEvent, info: str) -> None:
        if self.on_security_problem is not None and event not in self._security_told:
            self._security_told.add(event)
            self.on_security_problem(event, info)

    async def _tls_failed(self, url: str, exc: ssl.SSLError | None) -> SecurityEvent | None:
        """Why TLS failed (`exc`, or a handshake the server cut short without a word), into
        last_error and the log, with its security event; a bare handshake_failure alert is
        as mute as a reset, so both are probed."""
        if exc is None or "HANDSHAKE_FAILURE" in (exc.reason or "").upper():
            self.last_error, event = await cut_handshake(
                url, self.client_credentials() is not None)
        else:
            self.last_error, event = tls_problem(exc, url)
        log.error("%s", self.last_error)
        if event is not None:
            self._security(event, self.last_error)
        return event

    def peer_certificate(self) -> bytes | None:
        """The CSMS's certificate (DER) on the link as it is, when it is TLS."""
        connection = self._connection
        if connection is None:
            return None
        ssl_object = connection.transport.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def _headers(self) -> dict[str, str]:
        password = self.endpoint.password
        if not password or self.endpoint.security_profile >= 3:
            return {}  # profile 3: the client certificate is the charger's credential
        token = self.settings.identity.encode() + b":" + password
        return {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}

    async def run(self) -> None:
        attempt = 0
        offered = [Subprotocol(SUBPROTOCOLS[v]) for v in self.settings.versions]
        by_subprotocol = {SUBPROTOCOLS[v]: v for v in self.settings.versions}
        while True:
            await self._network_up.wait()
            self.state = "connecting"
            started = time.monotonic()
            endpoint = self.endpoint
            connected = False
            try:
                async with connect(
                    endpoint.url,
                    subprotocols=offered,
                    additional_headers=self._headers(),
                    ssl=self._ssl_context(),
                    open_timeout=self.settings.open_timeout,
                    ping_interval=None,  # our own keepalive below aborts a dead link at once
                    close_timeout=5,
                    max_size=self.settings.max_frame_bytes,
                    compression="deflate" if self.settings.compression else None,
                    user_agent_header=None,
                    create_connection=_AlertKeepingConnection,
                ) as connection:
                    agreed = connection.subprotocol
                    connected = True
                    self._security_told.clear()
                    if self.identity is not None:
                        self.identity.connected()
                    self._failures = 0
                    self.last_error = None  # a good connection: nothing stands in the way
                    if agreed not in by_subprotocol:
                        self.last_error = (
                            f"the CSMS agreed to no OCPP subprotocol (offered "
                            f"{', '.join(offered)}; got {agreed!r}); no OCPP session"
                        )
                        log.error("%s", self.last_error)
                    else:
                        await self._live(connection, by_subprotocol[agreed])
                        code = connection.close_code
                        if code is not None and not self._closing and self.last_error is None:
                            reason = connection.close_reason
                            self.last_error = (f"the CSMS closed the link (code {code}"
                                               + (f": {reason})" if reason else ")"))
            except asyncio.CancelledError:
                raise
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                self.last_error = f"CSMS refused the connection: HTTP {status}" + (
                    " (the charge point identity and password were not accepted: check "
                    "csms.password, or the AuthorizationKey / BasicAuthPassword the CSMS set)"
                    if status == 401 else "")
                log.error("%s", self.last_error)
                if status == 401:
                    self._security(SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS,
                                   self.last_error)
            except ssl.SSLError as exc:
                await self._tls_failed(endpoint.url, exc)
                if self.identity is not None:
                    self.identity.refused()
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                tls = _tls_cause(exc)
                if tls is not None:
                    await self._tls_failed(endpoint.url, tls)
                elif isinstance(exc, websockets.InvalidMessage) and isinstance(
                        exc.__cause__, EOFError):
                    # In TLS 1.3 the server judges the client certificate after the
                    # handshake; a refusal then shows only as a close before the HTTP answer.
                    if self.identity is not None:
                        self.identity.refused()
                    hint = ""
                    if endpoint.url.startswith("wss://"):
                        hint = (": with security profile 3 this is how a refused client "
                                "certificate shows; check that the CSMS knows the charger's "
                                "certificate (csms.client_cert) and its CA"
                                if self.client_credentials() is not None else
                                ": if the CSMS requires a client certificate (security "
                                "profile 3), this is how it refuses a charger without one, "
                                "and this charger has none: set csms.client_cert and "
                                "csms.client_key")
                    self.last_error = (
                        f"the CSMS at {urlsplit(endpoint.url).hostname} closed the connection "
                        "before answering the WebSocket handshake" + hint)
                    log.error("%s", self.last_error)
                if not connected and endpoint.url.startswith("wss://") and isinstance(
                        exc, ConnectionResetError | ssl.SSLEOFError | EOFError):
                    # A server that cuts the handshake short says nothing, which would
                    # otherwise read "ConnectionResetError": find out why.
                    event = await self._tls_failed(endpoint.url, None)
                    if event is None and self.identity is not None:
                        self.identity.refused()
                log.warning("CSMS link failed: %s", self.last_error)
            except Exception as exc:  # never let the link die for good
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("CSMS session ended with an error")
            finally:
                if not connected:
                    self._failed(endpoint)
                self.state = "disconnected"
                self.version = None
                self._connection = None
                self.connected_since = None
            if time.monotonic() - started >= self.settings.stable_after:
                attempt = 0
            delay = backoff_delay(
                attempt, self.settings.reconnect_initial, self.settings.reconnect_max, self._rng
            )
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)

    async def _live(self, connection: ClientConnection, version: str) -> None:
        self._connection = connection
        self.state = "connected"
        self.version = version
        self.connect_count += 1
        self.connected_since = time.monotonic()
        log.info("connected to %s with OCPP %s", self.endpoint.url, version)
        keepalive = asyncio.create_task(self._keepalive(connection))
        try:
            await self._session(connection, version)
        finally:
            keepalive.cancel()

    async def _keepalive(self, connection: ClientConnection) -> None:
        while True:
            interval = self._ping_interval()
            if interval <= 0:
                await asyncio.sleep(5)  # disabled for now; look again later
                continue
            await asyncio.sleep(interval)
            try:
                pong = await connection.ping()
                await asyncio.wait_for(pong, self.settings.pong_timeout)
            except TimeoutError:
                self.abort(f"no pong within {self.settings.pong_timeout:g} s; link presumed dead")
                return
            except websockets.ConnectionClosed:
                return
