"""Connecting to the CSMS per security profile: plain ws, wss with a server certificate, wss
with a client certificate, each TLS case with RSA 2048 and with ECDSA P-256 keys.

What is timed is what a charger waits for on every (re)connect: from starting the connection
to the WebSocket being open (TCP, TLS handshake, HTTP upgrade and, for profiles 1 and 2, the
CSMS checking the basic-auth header). The client is the agent's own: its TLS context
(`cpagent.transport.client_context`, built anew for every connection as `Transport` does, the
client certificate loaded into it for profile 3) and the websockets client with the options,
subprotocol and Authorization header form of `Transport`. The CSMS is the dev CSMS
(`cpagent.devcsms.DevCsms`) on loopback in its own process, so the client's CPU time per
connect is the charger's share alone; the wall time holds both sides' work, as a handshake is
a strict back and forth. The cases are interleaved connect by connect, so that a busy machine
weighs on all of them alike. Optionally (`--boots`), whole agent boots per case: from
`Agent.run()` to the BootNotification accepted.

Each case's key kind is the whole PKI's (root, CSMS certificate, charger certificate), made
here at start-up. Figures and ratios are printed; nothing is asserted but that the set-up is
what it claims (the CSMS refuses a wrong password, or for profile 3 a charger without a
certificate; the keys are the kind named).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import env, median, percentile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from cpagent.transport import client_context

IDENTITY = "BENCH-TLS"
PASSWORD = "bench-password-0123456789"  # a throwaway for a loopback CSMS
SUBPROTOCOL = "ocpp1.6"  # the handshake does not depend on the version offered
KINDS = ("RSA", "ECDSA")
KIND_NAMES = {"RSA": "RSA 2048", "ECDSA": "ECDSA P-256"}


@dataclass(frozen=True)
class Case:
    key: str  # "plain", "p2-RSA", ...
    profile: int
    kind: str | None  # None: no TLS

    @property
    def label(self) -> str:
        if self.kind is None:
            return "plain ws (profile 1, basic auth)"
        what = "server cert + basic auth" if self.profile == 2 else "client cert"
        return f"profile {self.profile} {KIND_NAMES[self.kind]} ({what})"


CASES = [Case("plain", 1, None)] + [
    Case(f"p{profile}-{kind}", profile, kind) for profile in (2, 3) for kind in KINDS]


# ---- the PKI, one per key kind ------------------------------------------------------------------

def _new_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cpagent bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def make_pki(folder: Path, kind: str) -> None:
    """<kind>-ca, <kind>-server (for 127.0.0.1) and <kind>-client (CN = the charger's id)."""
    now = dt.datetime.now(dt.UTC)
    root_key = _new_key(kind)
    root_name = _name(f"Bench {kind} Root")
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    _write(folder, f"{kind}-ca", root, root_key)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key())
    for role, common_name, usage in (("server", "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH),
                                     ("client", IDENTITY, ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = _new_key(kind)
        builder = (x509.CertificateBuilder().subject_name(_name(common_name))
                   .issuer_name(root_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(True, False, kind == "RSA", False, False, False,
                                                False, False, False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(aki, critical=False))
        if role == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        _write(folder, f"{kind}-{role}", builder.sign(root_key, hashes.SHA256()), key)


# ---- the CSMS, in its own process ---------------------------------------------------------------

def _server_context(folder: Path, case: Case, max_tls: str) -> ssl.SSLContext | None:
    if case.kind is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_tls == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(folder / f"{case.kind}-server.pem", folder / f"{case.kind}-server.key")
    if case.profile == 3:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(folder / f"{case.kind}-ca.pem")
    return context


async def serve(folder: Path, max_tls: str) -> None:
    """One dev CSMS per case; their URLs as one JSON line; until stdin closes."""
    from cpagent.devcsms import DevCsms

    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for case in CASES:
            csms = DevCsms(ssl_context=_server_context(folder, case, max_tls),
                           subprotocols=(SUBPROTOCOL,),
                           basic_auth=None if case.profile == 3 else {
                               IDENTITY: PASSWORD, f"{IDENTITY}-BOOT": PASSWORD})
            await stack.enter_async_context(csms)
            urls[case.key] = csms.url
        print(json.dumps(urls), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# ---- the charger's side -------------------------------------------------------------------------

def _headers(case: Case, password: str = PASSWORD) -> dict[str, str]:
    if case.profile == 3:
        return {}
    token = IDENTITY.encode() + b":" + password.encode()  # the form of Transport._headers
    return {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}


def _client_context(folder: Path, case: Case, with_cert: bool = True) -> ssl.SSLContext | None:
    """As Transport._ssl_context: the agent's context, plus the client certificate for 3."""
    if case.kind is None:
        return None
    context = client_context(folder / f"{case.kind}-ca.pem")
    if case.profile == 3 and with_cert:
        context.load_cert_chain(folder / f"{case.kind}-client.pem",
                                folder / f"{case.kind}-client.key")
    return context


@dataclass
class Sample:
    wall_ms: float  # start to WebSocket open
    cpu_ms: float  # this process's CPU time over the same span
    context_ms: float  # of the wall time, building the TLS context


async def _open(url: str, case: Case, context: ssl.SSLContext | None,
                password: str = PASSWORD):
    return await connect(
        f"{url}/{IDENTITY}", subprotocols=[Subprotocol(SUBPROTOCOL)],
        additional_headers=_headers(case, password), ssl=context, open_timeout=15,
        ping_interval=None, close_timeout=5, max_size=1024 * 1024, compression=None,
        user_agent_header=None)


async def connect_once(folder: Path, url: str, case: Case) -> Sample:
    cpu, began = time.process_time(), time.perf_counter()
    context = _client_context(folder, case)
    built = time.perf_counter()
    connection = await _open(url, case, context)
    opened, cpu = time.perf_counter(), time.process_time() - cpu
    await connection.close()
    if connection.subprotocol != SUBPROTOCOL:
        raise SystemExit(f"{case.label}: the CSMS agreed to {connection.subprotocol!r}")
    return Sample((opened - began) * 1000, cpu * 1000, (built - began) * 1000)


async def _refused(url: str, case: Case, context: ssl.SSLContext | None,
                   password: str = PASSWORD) -> bool:
    try:
        connection = await _open(url, case, context, password)
    except InvalidStatus as exc:  # a password refused is an HTTP 401, nothing else
        return exc.response.status_code == 401 or password == PASSWORD
    except Exception:  # a certificate refused: the TLS or the connection fails
        return password == PASSWORD
    await connection.close()
    return False


async def describe(folder: Path, url: str, case: Case) -> str:
    """What the handshake was (TLS version, cipher, the CSMS's key), checked against the case:
    the CSMS turns away a wrong password (1, 2) or a charger without a certificate (3)."""
    if case.profile != 3 and not await _refused(url, case, _client_context(folder, case),
                                                password="wrong"):
        raise SystemExit(f"{case.label}: the CSMS let in a wrong password")
    if case.kind is None:
        return "no TLS"
    connection = await _open(url, case, _client_context(folder, case))
    try:
        tls = connection.transport.get_extra_info("ssl_object")
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).public_key()
        version, cipher = tls.version(), tls.cipher()[0]
    finally:
        await connection.close()
    expected = rsa.RSAPublicKey if case.kind == "RSA" else ec.EllipticCurvePublicKey
    if not isinstance(peer, expected):
        raise SystemExit(f"{case.label}: the CSMS's key is a {type(peer).__name__}")
    if case.profile == 3 and not await _refused(
            url, case, _client_context(folder, case, with_cert=False)):
        raise SystemExit(f"{case.label}: the CSMS let in a charger without a certificate")
    return f"{version} {cipher}"


async def boot_once(folder: Path, url: str, case: Case) -> float:
    """A whole agent: from Agent.run() to the BootNotification accepted, in ms."""
    from cpagent.agent import Agent
    from cpagent.clock import Clock
    from cpagent.config import parse_config

    accepted: list[float] = []
    boot_id: list[str] = []

    def on_frame(direction: str, text: str) -> None:
        frame = json.loads(text)
        if direction == "out" and frame[0] == 2 and frame[2] == "BootNotification":
            boot_id.append(frame[1])
        elif (direction == "in" and frame[0] == 3 and boot_id and frame[1] == boot_id[-1]
              and frame[2].get("status") == "Accepted"):
            accepted.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        csms: dict = {"url": url, "ocpp_version": "1.6"}
        if case.kind is not None:
            csms["ca_file"] = str(folder / f"{case.kind}-ca.pem")
        if case.profile == 3:
            csms["client_cert"] = str(folder / f"{case.kind}-client.pem")
            csms["client_key"] = str(folder / f"{case.kind}-client.key")
        else:
            csms["password"] = PASSWORD
        config = parse_config({
            "charge_point": {"id": f"{IDENTITY}-BOOT"}, "csms": csms,
            "station": {"data_dir": tmp, "control_socket": str(Path(tmp) / "c.sock")},
        })
        agent = Agent(config, clock=Clock("system"), on_frame=on_frame)
        began = time.perf_counter()
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(20):
                while not accepted:
                    await asyncio.sleep(0.0005)
        except TimeoutError:
            raise SystemExit(f"{case.label}: no accepted boot within 20 s "
                             f"({agent.transport.last_error})") from None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return (accepted[0] - began) * 1000


async def measure(connects: int, warmup: int, boots: int, max_tls: str):
    with tempfile.TemporaryDirectory(prefix="cpagent-bench-tls-") as tmp:
        folder = Path(tmp)
        for kind in KINDS:
            make_pki(folder, kind)
        peer = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder), "--csms-tls", max_tls],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
        try:
            line = peer.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit("the CSMS process did not start")
            urls = json.loads(line)
            handshakes = {c.key: await describe(folder, urls[c.key], c) for c in CASES}
            samples: dict[str, list[Sample]] = {c.key: [] for c in CASES}
            for n in range(warmup + connects):
                for case in CASES:  # interleaved: a busy moment weighs on every case alike
                    sample = await connect_once(folder, urls[case.key], case)
                    if n >= warmup:
                        samples[case.key].append(sample)
            boot_ms: dict[str, list[float]] = {c.key: [] for c in CASES}
            if boots:  # untimed: the first boot pays for imports and first-time set-up
                await boot_once(folder, urls["plain"], CASES[0])
            for _ in range(boots):
                for case in CASES:
                    boot_ms[case.key].append(await boot_once(folder, urls[case.key], case))
        finally:
            peer.stdin.close()  # type: ignore[union-attr]
            try:
                peer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
    return handshakes, samples, boot_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connects", type=int, default=100, help="timed connects per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed connects per case first")
    parser.add_argument("--boots", type=int, default=5,
                        help="whole agent boots per case (0: none)")
    parser.add_argument("--csms-tls", choices=("1.2", "1.3"), default="1.3",
                        help="the newest TLS version the CSMS speaks")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the CSMS process
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.csms_tls))
        return
    # The in-process agents' start-up warnings ("security event startup") are not figures.
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    handshakes, samples, boot_ms = asyncio.run(
        measure(args.connects, args.warmup, args.boots, args.csms_tls))
    plain = samples["plain"]
    plain_median = median([s.wall_ms for s in plain])
    plain_p99 = percentile([s.wall_ms for s in plain], 0.99)
    plain_cpu = median([s.cpu_ms for s in plain])
    print(f"Connect to a loopback CSMS (own process, TLS up to {args.csms_tls}), start to "
          f"WebSocket open, {args.connects} connects per case after {args.warmup} warm-up, "
          "interleaved; the agent's TLS context built per connection as Transport does; "
          "client CPU = the charger process's CPU time per connect:")
    width = max(len(c.label) for c in CASES)
    for case in CASES:
        wall = [s.wall_ms for s in samples[case.key]]
        cpu = median([s.cpu_ms for s in samples[case.key]])
        mid, p99 = median(wall), percentile(wall, 0.99)
        line = f"  {case.label:<{width}}: median {mid:5.2f} ms, p99 {p99:5.2f} ms"
        if case.kind is None:
            print(f"{line}\n  {'':<{width}}  client CPU {cpu:.2f} ms")
            continue
        context = median([s.context_ms for s in samples[case.key]])
        print(f"{line}, {mid / plain_median:.1f}x plain ws (p99 {p99 / plain_p99:.1f}x)\n"
              f"  {'':<{width}}  client CPU {cpu:.2f} ms ({cpu / plain_cpu:.1f}x plain ws), "
              f"of which the TLS context {context:.2f} ms; {handshakes[case.key]}")
    for profile in (2, 3):
        figures = {kind: median([s.wall_ms for s in samples[f"p{profile}-{kind}"]])
                   for kind in KINDS}
        print(f"  profile {profile}: RSA 2048 / ECDSA P-256 = "
              f"{figures['RSA'] / figures['ECDSA']:.2f} (median connect)")
    if args.boots:
        plain_boot = median(boot_ms["plain"])
        print(f"Whole agent boot, Agent.run() to BootNotification accepted, median of "
              f"{args.boots} per case:")
        for case in CASES:
            value = median(boot_ms[case.key])
            ratio = "" if case.kind is None else f", {value / plain_boot:.2f}x plain ws"
            print(f"  {case.label:<{width}}: {value:7.1f} ms (min {min(boot_ms[case.key]):.1f},"
                  f" max {max(boot_ms[case.key]):.1f}){ratio}")
    print(f"(bench took {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
