"""An independent OCPP 1.6J CSMS for the test-suite: ocpp-rpc (Node.js) in strict mode.

It shares no code with cpagent: the server is the npm package ``ocpp-rpc`` with
``strictMode`` on, so every frame a charger sends is validated against the
official OCPP 1.6 JSON schemas. ``tests/ocpp_rpc_csms/server.js`` adds one check
on top: date-time fields must be RFC 3339 with a time zone, because ocpp-rpc's
stock check accepts "2026-11-23 10:00:00" (see the comment there).

The Node process is driven over stdin/stdout with JSON lines; its stderr is
logged. ``OcppRpcCsms`` has the same interface as the Python CSMS of the
test-suite, so scenario tests can be parametrized over both.

Settings (``boot_status``, ``heartbeat_interval``, ``rejected_tags``,
``parent_id_tags``, ``respond``) are plain-looking attributes; assigning or
mutating one rewrites a small JSON file that Node re-reads before answering
each charger call. The file is written synchronously, so any frame the charger
sends after the assignment is answered with the new value. (A line on Node's
stdin would race the charger's socket, and did in practice.) A frame already
in flight when the setting changes may still see the old value.

``bad_frames`` lists what ocpp-rpc rejected from chargers, as dicts with
``source`` ("strictValidationFailure": schema or date-time violation;
"badMessage": broken OCPP-J framing such as invalid JSON or an answer to no
call; "subprotocol": "ocpp1.6" not offered), ``identity``, ``kind``,
``action``, ``unique_id``, ``payload`` (``raw`` for badMessage),
``error_code``, ``error_message`` and ``errors`` (ajv's list). A rejected CALL
is still recorded, and so is the CallError strict mode answers it with, whose
code uses the OCPP 1.6 spellings FormationViolation and
OccurrenceConstraintViolation.

Security profiles 2 and 3: ``OcppRpcCsms(tls_cert=..., tls_key=...)`` (PEM
files) serves ``wss://`` with TLS 1.2 or newer; with ``client_ca=`` (PEM) too,
Node's TLS layer refuses any charger without a client certificate issued by
that CA (profile 3). ``password=`` makes HTTP Basic auth with the charger's
identity and that password mandatory (401 otherwise; profiles 1 and 2).
``tls_max_version="TLSv1.2"`` caps the TLS version.
``tls_refusals`` lists the TLS handshakes Node refused, and ``connection(id)``
tells what a connected charger presented (``tls``: protocol, cipher,
``client_cert`` subject/issuer CN; ``basic_auth``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CsmsCallError",
    "CsmsInvalidResponse",
    "OcppRpcCsms",
    "Record",
    "ocpp_rpc_available",
]

log = logging.getLogger(__name__)

NODE_DIR = Path(__file__).resolve().with_name("ocpp_rpc_csms")
# ocpp-rpc 2.2.1 declares engines.node >= 17.3.0.
MIN_NODE = (17, 3)
BOOT_STATUSES = frozenset({"Accepted", "Pending", "Rejected"})
NPM_CI_TIMEOUT = 600.0
START_TIMEOUT = 15.0
# A call may sit in ocpp-rpc's queue (one call in flight per charger, as OCPP
# requires) before its own timeout starts; this only guards against a wedged
# Node process.
CALL_GUARD = 10.0


@dataclass
class Record:
    direction: str  # "cp->csms" or "csms->cp"
    identity: str
    kind: str  # "call" | "result" | "error"
    action: str  # for result/error: the action of the call it answers
    unique_id: str
    payload: dict  # camelCase as on the wire; "error": errorCode/errorDescription/errorDetails
    time: float  # time.monotonic() when Python received the event


class CsmsCallError(Exception):
    """The charger answered a CSMS call with a CallError."""

    def __init__(self, code: str, description: str = "", details: dict | None = None):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details if details is not None else {}


class CsmsInvalidResponse(CsmsCallError):
    """Strict mode rejected the charger's CallResult; ``details["response"]`` holds it."""


# --------------------------------------------------------------------------- availability


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((NODE_DIR / name).read_bytes())
    return h.hexdigest()


_MARKER = NODE_DIR / "node_modules" / ".cpagent-installed"


def _installed() -> bool:
    # A marker written after a successful `npm ci` (rather than "node_modules
    # exists") catches half-finished installs and lockfile changes.
    try:
        return _MARKER.read_text().strip() == _lock_digest()
    except OSError:
        return False


def _node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"v?(\d+)\.(\d+)", out.strip())
    return (int(m[1]), int(m[2])) if m else None


def _check_availability() -> str | None:
    node = shutil.which("node")
    if node is None:
        return (
            "ocpp-rpc CSMS unavailable: Node.js not found (`node` is not on PATH; "
            f"install nodejs >= {MIN_NODE[0]}.{MIN_NODE[1]})"
        )
    version = _node_version(node)
    if version is None:
        return f"ocpp-rpc CSMS unavailable: `{node} --version` failed"
    if version < MIN_NODE:
        return (
            f"ocpp-rpc CSMS unavailable: Node.js {'.'.join(map(str, version))} at {node} is "
            f"too old (ocpp-rpc needs >= {MIN_NODE[0]}.{MIN_NODE[1]})"
        )
    if _installed():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return (
            f"ocpp-rpc CSMS unavailable: npm not found (`npm` is not on PATH), so "
            f"{NODE_DIR / 'node_modules'} cannot be installed"
        )
    # Parallel test processes (xdist, several checkouts) must not run `npm ci`
    # in the same folder at once: it deletes node_modules first.
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"cpagent-ocpp-rpc-npm-{key}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return None
            cmd = [npm, "ci", "--no-audit", "--no-fund"]
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=NODE_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_CI_TIMEOUT,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired as e:
                return (
                    f"ocpp-rpc CSMS unavailable: `{' '.join(cmd)}` in {NODE_DIR} timed out "
                    f"after {NPM_CI_TIMEOUT:.0f}s:\n{_tail(e.stdout, e.stderr)}"
                )
            except OSError as e:
                return f"ocpp-rpc CSMS unavailable: could not run `{' '.join(cmd)}`: {e}"
            if proc.returncode != 0:
                return (
                    f"ocpp-rpc CSMS unavailable: `{' '.join(cmd)}` in {NODE_DIR} failed "
                    f"(exit {proc.returncode}):\n{_tail(proc.stdout, proc.stderr)}"
                )
            if not (NODE_DIR / "node_modules" / "ocpp-rpc" / "package.json").is_file():
                return (
                    f"ocpp-rpc CSMS unavailable: `{' '.join(cmd)}` succeeded but "
                    f"node_modules/ocpp-rpc is missing:\n{_tail(proc.stdout, proc.stderr)}"
                )
            _MARKER.write_text(_lock_digest() + "\n")
            return None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(*outputs: str | bytes | None, limit: int = 4000) -> str:
    text = "\n".join(
        o.decode(errors="replace") if isinstance(o, bytes) else o for o in outputs if o
    ).strip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


_availability_lock = threading.Lock()
_availability: list[str | None] = []  # empty until checked; one check per process


def ocpp_rpc_available() -> str | None:
    """None if the ocpp-rpc CSMS can run here, else why not (installs node deps if needed)."""
    with _availability_lock:
        if not _availability:
            _availability.append(_check_availability())
        return _availability[0]


# --------------------------------------------------------------------------- settings sync


class _SyncedSet(set):
    """A set that reports every in-place change, so `csms.rejected_tags.add(x)` reaches Node."""

    def __init__(self, items: Iterable = (), on_change: Callable[[], None] | None = None):
        super().__init__(items)
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class _SyncedDict(dict):
    """A dict that reports every in-place change, like _SyncedSet."""

    def __init__(self, items: Any = (), on_change: Callable[[], None] | None = None):
        super().__init__(items)
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _notifying(cls: type, names: Iterable[str]) -> None:
    for name in names:
        base = getattr(cls.__mro__[1], name)

        def method(self, *args, _base=base, **kwargs):
            result = _base(self, *args, **kwargs)
            if result is not NotImplemented:
                self._changed()
            return result

        method.__name__ = name
        setattr(cls, name, method)


_notifying(
    _SyncedSet,
    [
        "add", "discard", "remove", "pop", "clear", "update", "difference_update",
        "intersection_update", "symmetric_difference_update",
        "__ior__", "__iand__", "__isub__", "__ixor__",
    ],
)  # fmt: skip
_notifying(
    _SyncedDict,
    ["__setitem__", "__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__"],
)


# --------------------------------------------------------------------------- the CSMS


class OcppRpcCsms:
    """ocpp-rpc strict-mode CSMS in a Node subprocess; see the module docstring."""

    def __init__(self, *, on_record: Callable[[Record], Any] | None = None,
                 subprotocols: tuple[str, ...] = ("ocpp1.6",),
                 tls_cert: os.PathLike | str | None = None,
                 tls_key: os.PathLike | str | None = None,
                 client_ca: os.PathLike | str | None = None,
                 tls_max_version: str | None = None,
                 password: str | bytes | None = None) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if (client_ca is not None or tls_max_version is not None) and tls_cert is None:
            raise ValueError("client_ca and tls_max_version need tls_cert and tls_key")
        self.subprotocols = tuple(subprotocols)
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.tls_max_version = tls_max_version  # Node's spelling: "TLSv1.2", "TLSv1.3"
        self.password = password.encode() if isinstance(password, str) else password
        self.url: str = ""
        self.records: list[Record] = []
        self.bad_frames: list[dict] = []
        self.tls_refusals: list[dict] = []  # {"remote", "error", "code"} per refused handshake
        self.ocpp_rpc_version: str | None = None
        self._on_record = on_record
        self._boot_status = "Accepted"
        self._heartbeat_interval = 300
        self._rejected_tags = _SyncedSet((), self._push)
        self._parent_id_tags = _SyncedDict((), self._push)
        self._respond = True
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._changed = asyncio.Condition()
        self._connections: dict[str, dict] = {}  # identity -> connected event
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._exited = False
        self._listening: asyncio.Future | None = None
        self._settings_file: Path | None = None

    # ------------------------------------------------------------------ settings

    @property
    def boot_status(self) -> str:
        return self._boot_status

    @boot_status.setter
    def boot_status(self, value: str) -> None:
        if value not in BOOT_STATUSES:
            # Strict mode would refuse to send it and answer InternalError.
            raise ValueError(f"boot_status must be one of {sorted(BOOT_STATUSES)}, not {value!r}")
        self._boot_status = value
        self._push()

    @property
    def heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: int) -> None:
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"heartbeat_interval must be a whole number, not {value!r}")
        self._heartbeat_interval = int(value)
        self._push()

    @property
    def rejected_tags(self) -> set[str]:
        return self._rejected_tags

    @rejected_tags.setter
    def rejected_tags(self, value: Iterable[str]) -> None:
        self._rejected_tags = _SyncedSet(value, self._push)
        self._push()

    @property
    def parent_id_tags(self) -> dict[str, str]:
        return self._parent_id_tags

    @parent_id_tags.setter
    def parent_id_tags(self, value: dict[str, str]) -> None:
        self._parent_id_tags = _SyncedDict(value, self._push)
        self._push()

    @property
    def respond(self) -> bool:
        return self._respond

    @respond.setter
    def respond(self, value: bool) -> None:
        self._respond = bool(value)
        self._push()

    def _all_settings(self) -> dict:
        return {
            "boot_status": self._boot_status,
            "heartbeat_interval": self._heartbeat_interval,
            "rejected_tags": sorted(self._rejected_tags),
            "parent_id_tags": dict(self._parent_id_tags),
            "respond": self._respond,
        }

    def _push(self) -> None:
        # Before start() there is no file yet; start() writes the current values.
        if self._settings_file is None:
            return
        tmp = self._settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._all_settings()))
        # Atomic, so Node never reads a half-written file.
        os.replace(tmp, self._settings_file)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> OcppRpcCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("OcppRpcCsms already started")
        reason = await asyncio.to_thread(ocpp_rpc_available)
        if reason is not None:
            log.warning("%s", reason)
            pytest.skip(reason)
        node = shutil.which("node")
        assert node is not None  # checked by ocpp_rpc_available()
        self._exited = False
        # Fresh per start(): asyncio primitives stick to the loop that first used them.
        self._changed = asyncio.Condition()
        self._listening = asyncio.get_running_loop().create_future()
        self._settings_file = Path(tempfile.mkdtemp(prefix="ocpp-rpc-csms-")) / "settings.json"
        self._push()
        security: list[str] = []
        if self.tls_cert is not None and self.tls_key is not None:
            security += ["--tls-cert", str(self.tls_cert.resolve()),
                         "--tls-key", str(self.tls_key.resolve())]
        if self.client_ca is not None:
            security += ["--tls-client-ca", str(self.client_ca.resolve())]
        if self.tls_max_version is not None:
            security += ["--tls-max-version", self.tls_max_version]
        if self.password is not None:
            # A file, not an argument: the password stays out of `ps`.
            password_file = self._settings_file.with_name("password")
            password_file.touch(mode=0o600)
            password_file.write_bytes(self.password)
            security += ["--password-file", str(password_file)]
        self._proc = await asyncio.create_subprocess_exec(
            node,
            "server.js",
            "--settings",
            str(self._settings_file),
            "--protocols",
            ",".join(self.subprotocols),
            *security,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # a frame is one line, and frames can be large
        )
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name="ocpp-rpc-csms-stdout"),
            asyncio.create_task(self._read_stderr(), name="ocpp-rpc-csms-stderr"),
        ]
        try:
            async with asyncio.timeout(START_TIMEOUT):
                listening = await self._listening
        except BaseException as e:
            if not self._listening.done():
                self._listening.cancel()
            await self.stop()
            detail = "\n".join(self._stderr_tail)
            if isinstance(e, TimeoutError):
                raise RuntimeError(
                    f"ocpp-rpc CSMS did not start listening within {START_TIMEOUT}s:\n{detail}"
                ) from e
            raise
        self.ocpp_rpc_version = listening.get("ocpp_rpc")
        scheme = "wss" if listening.get("tls") else "ws"
        self.url = f"{scheme}://127.0.0.1:{listening['port']}/ocpp"

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # Closing stdin is how Node is told to exit; kill only if it hangs.
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in self._tasks:
            try:
                async with asyncio.timeout(2):
                    await task
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._tasks = []
        self._proc = None
        await self._on_exit()
        if self._settings_file is not None:
            shutil.rmtree(self._settings_file.parent, ignore_errors=True)
            self._settings_file = None

    def _alive(self) -> bool:
        return self._proc is not None and not self._exited and self._proc.returncode is None

    # ------------------------------------------------------------------ node I/O

    def _write(self, msg: dict) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(msg).encode() + b"\n")

    async def _command(self, msg: dict, timeout: float) -> dict:
        if not self._alive():
            raise ConnectionError(f"ocpp-rpc CSMS is not running{self._exit_detail()}")
        self._next_id += 1
        msg_id = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        try:
            self._write({"id": msg_id, **msg})
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(msg_id, None)

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while line := await stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("ocpp-rpc CSMS printed a non-JSON line: %r", line)
                    continue
                await self._handle(msg)
        finally:
            await self._on_exit()

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            log.warning("ocpp-rpc CSMS stderr: %s", text)

    async def _on_exit(self) -> None:
        if self._exited:
            return
        self._exited = True
        err = ConnectionError(f"ocpp-rpc CSMS process exited{self._exit_detail()}")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        if self._listening is not None and not self._listening.done():
            self._listening.set_exception(err)
        self._connections.clear()
        async with self._changed:
            self._changed.notify_all()

    def _exit_detail(self) -> str:
        return (":\n" + "\n".join(self._stderr_tail)) if self._stderr_tail else ""

    async def _handle(self, msg: dict) -> None:
        now = time.monotonic()
        if "id" in msg:
            fut = self._pending.get(msg["id"])
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        event = msg.get("event")
        if event == "frame":
            record = Record(
                direction=msg["direction"],
                identity=msg["identity"],
                kind=msg["kind"],
                action=msg.get("action") or "",
                unique_id="" if msg.get("unique_id") is None else str(msg["unique_id"]),
                payload=msg.get("payload"),
                time=now,
            )
            self.records.append(record)
            if self._on_record is not None:
                try:
                    self._on_record(record)
                except Exception:
                    log.exception("on_record callback failed")
        elif event == "bad_message":
            frame = {k: v for k, v in msg.items() if k != "event"}
            if msg.get("direction") == "cp->csms":
                self.bad_frames.append(frame)
                log.warning("ocpp-rpc strict mode rejected a frame from the charger: %s", frame)
            else:
                log.warning("ocpp-rpc strict mode rejected a frame of its own: %s", frame)
        elif event == "connected":
            self._connections[msg["identity"]] = msg
        elif event == "disconnected":
            current = self._connections.get(msg["identity"])
            if current is not None and current["conn"] == msg["conn"]:
                del self._connections[msg["identity"]]
        elif event == "listening":
            if self._listening is not None and not self._listening.done():
                self._listening.set_result(msg)
        elif event == "upgrade_aborted":
            log.warning("ocpp-rpc CSMS refused a connection: %s", msg)
        elif event == "tls_refused":
            self.tls_refusals.append({k: v for k, v in msg.items() if k != "event"})
            log.warning("ocpp-rpc CSMS refused a TLS handshake: %s", msg)
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ queries

    def calls(self, action: str | None = None, identity: str | None = None) -> list[Record]:
        """Calls the charger(s) made, in arrival order."""
        return [r for r in self.records if self._is_call(r, action, identity)]

    @staticmethod
    def _is_call(r: Record, action: str | None, identity: str | None) -> bool:
        return (
            r.kind == "call"
            and r.direction == "cp->csms"
            and (action is None or r.action == action)
            and (identity is None or r.identity == identity)
        )

    def mark(self) -> int:
        """A position in `records` to pass as `after=` to wait only for later calls."""
        return len(self.records)

    async def wait_for_call(
        self,
        action: str,
        *,
        identity: str | None = None,
        predicate: Callable[[dict], bool] | None = None,
        timeout: float = 10.0,
        after: int = 0,
    ) -> Record:
        """The first matching charger call in ``records[after:]``; predicate(payload) filters."""
        found: list[Record] = []

        def ready() -> bool:
            for r in self.records[after:]:
                if self._is_call(r, action, identity) and (
                    predicate is None or predicate(r.payload)
                ):
                    found.append(r)
                    return True
            if self._exited:
                raise ConnectionError(f"ocpp-rpc CSMS process exited{self._exit_detail()}")
            return False

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(ready)
        except TimeoutError:
            who = f" from {identity!r}" if identity else ""
            raise TimeoutError(f"no {action} call{who} within {timeout}s") from None
        return found[0]

    async def wait_connected(self, identity: str, timeout: float = 10.0) -> None:
        def ready() -> bool:
            if identity in self._connections:
                return True
            if self._exited:
                raise ConnectionError(f"ocpp-rpc CSMS process exited{self._exit_detail()}")
            return False

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(ready)
        except TimeoutError:
            raise TimeoutError(f"charger {identity!r} did not connect within {timeout}s") from None

    def is_connected(self, identity: str) -> bool:
        return identity in self._connections

    def connection(self, identity: str) -> dict | None:
        """How `identity` is connected, as Node saw it: protocol, basic_auth, tls (or None)."""
        conn = self._connections.get(identity)
        return dict(conn) if conn else None

    def subprotocol(self, identity: str) -> str | None:
        conn = self._connections.get(identity)
        return (conn.get("protocol") or None) if conn else None

    async def connections(self) -> list[dict]:
        """Node's own view of the open connections: [{"identity", "conn", "protocol"}]."""
        reply = await self._command({"cmd": "list"}, timeout=CALL_GUARD)
        return reply["connections"]

    # ------------------------------------------------------------------ actions

    async def call(self, identity: str, action: str, payload: dict, timeout: float = 10.0) -> dict:
        """Call the charger; CsmsCallError on a CallError, TimeoutError without an answer.

        ValueError if strict mode refuses to send ``payload``; ConnectionError if
        the charger is not (or no longer) connected.
        """
        reply = await self._command(
            {
                "cmd": "call",
                "identity": identity,
                "action": action,
                "payload": payload,
                "timeout": timeout,
            },
            timeout=timeout + CALL_GUARD,
        )
        if reply.get("ok"):
            return reply["result"]
        err = reply.get("error") or {}
        kind = err.get("type")
        if kind == "call_error":
            raise CsmsCallError(
                err.get("errorCode") or "",
                err.get("errorDescription") or "",
                err.get("errorDetails") if isinstance(err.get("errorDetails"), dict) else {},
            )
        if kind == "invalid_response":
            response = next(
                (
                    r.payload
                    for r in reversed(self.records)
                    if r.unique_id == err.get("unique_id") and r.direction == "cp->csms"
                ),
                None,
            )
            raise CsmsInvalidResponse(
                err.get("error_code") or "FormatViolation",
                f"ocpp-rpc strict mode rejected the {action} response from {identity!r}: "
                f"{err.get('error_message')}",
                {"errors": err.get("errors"), "response": response},
            )
        if kind == "timeout":
            raise TimeoutError(f"{action} to {identity!r}: no response within {timeout}s")
        if kind == "invalid_request":
            raise ValueError(
                f"ocpp-rpc strict mode refuses to send {action} {payload!r}: "
                f"{err.get('error_message')}"
            )
        if kind in ("not_connected", "disconnected"):
            raise ConnectionError(f"{action} to {identity!r}: {err.get('message')}")
        raise RuntimeError(f"ocpp-rpc CSMS failed on {action} to {identity!r}: {err}")

    async def drop(self, identity: str) -> None:
        """Cut the charger's TCP connection with no WebSocket close handshake."""
        reply = await self._command({"cmd": "drop", "identity": identity}, timeout=CALL_GUARD)
        if not reply.get("dropped"):
            raise ConnectionError(f"charge point {identity!r} is not connected")
