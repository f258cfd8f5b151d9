"""The agent's one SQLite database: transactions, the durable queue, authorization data,
settings of every kind, and the state the agent must remember across restarts.

WAL mode with synchronous=FULL: every commit is fsynced to the write-ahead log before it
returns, so a commit that returned survives a power cut (NORMAL would only survive a crash of
the process). Billing-relevant writes commit before the agent acts as if they happened.

The store never throws data away because the database is locked, the disk is full, the mount
is read-only, a permission is missing or the schema is newer: it waits, or refuses to start
with a message that names the fix (`StoreUnavailable`). Only a file that is really damaged
(integrity check failed, not a SQLite file) is moved aside, and what can still be read of it
is carried over. A file of reserved space is kept beside the database and given up when the
disk fills, so the end of a running session can still be written.

The methods are synchronous; `AsyncStore` runs them on one dedicated thread, in order, so an
fsync on a slow SD card never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from cpagent import migrations
from cpagent.migrations import Recovery
from cpagent.records import OutboxEntry, TransactionRow

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = len(migrations.STEPS)
LOCK_WAIT = 30.0  # seconds to wait at start for another process to let go of the database
BUSY_TIMEOUT = 5.0  # seconds a statement waits for a lock before it fails (and is retried)
RESERVE_BYTES = 4 * 1024 * 1024

_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_AUTH, _SQLITE_NOTADB = 23, 26


class StoreUnavailable(Exception):
    """The database cannot be used; the message says what is wrong and what to fix."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem  # full | locked | readonly | permission | newer | foreign | io


class StorageFull(Exception):
    """A write failed for want of space; the caller keeps the data and tries again."""


class StorageBusy(Exception):
    """A write failed because the database is locked or the medium failed; try again."""


def problem_of(exc: sqlite3.Error) -> str:
    """Name a SQLite failure: full, locked, readonly, permission, damaged, io or other."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc).lower()
    if code == _SQLITE_FULL or "disk is full" in text:
        return "full"
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return "locked"
    if code == _SQLITE_READONLY or "readonly" in text:
        return "readonly"
    if code in (_SQLITE_PERM, _SQLITE_AUTH, _SQLITE_CANTOPEN) or "unable to open" in text:
        return "permission"
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text \
            or "not a database" in text:
        return "damaged"
    if code == _SQLITE_IOERR or "disk i/o" in text:
        return "io"
    return "other"


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token of the cache or the local list, as stored."""

    token: str
    token_type: str | None
    status: str
    group_token: str | None = None
    group_type: str | None = None
    expiry: float | None = None
    evse_ids: tuple[int, ...] = ()
    learned_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to put in the durable queue, with what it needs to be sent right later."""

    kind: str
    protocol: str
    record: dict
    tx_ref: str | None
    created_at: float
    clock_trusted: bool
    boot_id: str


class SpaceReserve:
    """Disk space held back for the records that matter: given up when the disk fills, so
    the end of a running session can still be written; taken again once space returns."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def take(self) -> bool:
        """Hold the reserve; False when there is not room for it (the disk is short)."""
        if self.held:
            return True
        partial = self.path.with_suffix(".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            partial.replace(self.path)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()
            return False

    def release(self) -> bool:
        """Give the space back; True when there was some to give."""
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the disk reserve %s: %s", self.path, exc)
            return False


def _check_directory(directory: Path) -> None:
    """Say precisely what is wrong with the data directory, before SQLite says it vaguely."""
    if directory.exists() and not directory.is_dir():
        raise StoreUnavailable("permission", f"station.data_dir {directory} is a file, not a "
                                             "directory: point data_dir at a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise StoreUnavailable("permission", f"cannot create station.data_dir {directory}: "
                                             "permission denied; create it and give it to "
                                             "the user cpagent runs as") from None
    except OSError as exc:
        if exc.errno == 30:  # EROFS
            raise StoreUnavailable("readonly", f"cannot create station.data_dir {directory}: "
                                               "the file system is read-only") from None
        raise StoreUnavailable("io", f"cannot create station.data_dir {directory}: "
                                     f"{exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreUnavailable("permission", f"station.data_dir {directory} is not writable "
                                             f"by this user (uid {os.getuid()}): fix its "
                                             "owner or mode")


def _owner_only(path: Path) -> None:
    """The database holds secrets (the password the CSMS set, certificates): mode 0600. SQLite
    gives its -wal and -shm files the mode of the database file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return  # read-only or not permitted: opening says so in its own words
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        with contextlib.suppress(OSError):
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


class Store:
    def __init__(self, path: Path, *, lock_wait: float | None = None,
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = path
        _check_directory(path.parent)
        self.reserve = SpaceReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self.recovery: Recovery | None = None
        self.space_short = not self.reserve.take()
        self._db = self._open_waiting(path, LOCK_WAIT if lock_wait is None else lock_wait)

    # ---- opening -----------------------------------------------------------------------------

    def _open_waiting(self, path: Path, lock_wait: float) -> sqlite3.Connection:
        deadline = time.monotonic() + lock_wait
        released = False
        while True:
            try:
                return self._open(path)
            except sqlite3.Error as exc:
                problem = problem_of(exc)
                if problem == "locked" and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                if problem == "full" and not released:
                    released = self.reserve.release()
                    self.space_short = True
                    if released:
                        log.critical("disk full while opening the database: released the "
                                     "disk reserve")
                        continue
                if problem == "damaged":
                    self._move_aside_and_recover(path, str(exc))
                    return self._open(path)
                raise self._unavailable(path, problem, exc) from None

    def _unavailable(self, path: Path, problem: str, exc: Exception) -> StoreUnavailable:
        where = f"database {path}"
        match problem:
            case "locked":
                return StoreUnavailable(problem, f"{where} is locked by another process: "
                                                 "is a second cpagent running on the same "
                                                 "station.data_dir? Stop it and start again")
            case "full":
                return StoreUnavailable(problem, f"{where}: the disk is full; free space in "
                                                 f"{path.parent} and start again")
            case "readonly":
                return StoreUnavailable(problem, f"{where} cannot be written: the file system "
                                                 "is mounted read-only or the file is not "
                                                 "writable; remount it read-write or fix the "
                                                 "file's mode")
            case "permission":
                return StoreUnavailable(problem, f"{where} cannot be opened: permission denied "
                                                 f"for uid {os.getuid()}; fix the owner or "
                                                 "mode of the file and its directory")
            case "io":
                return StoreUnavailable(problem, f"{where}: input/output error ({exc}); the "
                                                 "storage medium may be failing")
        return StoreUnavailable(problem, f"{where} cannot be used: {exc}")

    def _open(self, path: Path) -> sqlite3.Connection:
        if path.exists() and not os.access(path, os.R_OK):
            raise StoreUnavailable("permission", f"database {path} is not readable by uid "
                                                 f"{os.getuid()}: fix its owner or mode")
        _owner_only(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {ok}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    "newer", f"database {path} has schema version {version}, newer than this "
                             f"cpagent knows ({SCHEMA_VERSION}): it was written by a newer "
                             "release. Reinstall that release (nothing was changed), or move "
                             "the file aside yourself to start afresh")
            if version > 0:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                if "outbox" not in tables or "state" not in tables:
                    raise StoreUnavailable(
                        "foreign", f"database {path} is a SQLite database of another program "
                                   "(no cpagent tables): point station.data_dir elsewhere or "
                                   "move the file away")
            migrations.upgrade(db, version)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside_and_recover(self, path: Path, reason: str) -> None:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        log.critical("database %s is damaged (%s): moving it to %s and starting a new one",
                     path, reason, aside)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        self.recovery = Recovery(aside, reason)
        fresh = self._open(path)
        try:
            migrations.salvage(aside, fresh, self.recovery)
        finally:
            fresh.close()
        log.critical("%s", self.recovery.describe())

    def close(self) -> None:
        self._db.close()

    # ---- writing -----------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_failure(exc) from exc
        try:
            yield self._db
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise self._write_failure(exc) from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise self._write_failure(exc) from exc

    def _write_failure(self, exc: sqlite3.Error) -> Exception:
        problem = problem_of(exc)
        if problem == "full":
            return StorageFull(str(exc))
        if problem in ("locked", "io", "readonly"):
            return StorageBusy(f"{problem}: {exc}")
        return exc

    def release_reserve(self) -> bool:
        self.space_short = True
        return self.reserve.release()

    def retake_reserve(self) -> bool:
        """Once writes work again: hold the reserve anew; False while space stays short."""
        self.space_short = not self.reserve.take()
        return not self.space_short

    # ---- key/value state ---------------------------------------------------------------------

    def state(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put_state(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    # ---- settings: shared, per adapter, and the device model ---------------------------------

    def shared_settings(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, value FROM shared_settings"))

    def put_shared_setting(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO shared_settings VALUES (?, ?)", (name, value))

    def adapter_settings(self, protocol: str) -> dict[str, str]:
        rows = self._db.execute("SELECT name, value FROM adapter_settings WHERE protocol = ?",
                                (protocol,))
        return dict(rows.fetchall())

    def put_adapter_setting(self, protocol: str, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO adapter_settings VALUES (?, ?, ?)",
                       (protocol, name, value))

    def adapter_state(self, protocol: str, kind: str, key: str) -> Any:
        row = self._db.execute(
            "SELECT value FROM adapter_state WHERE protocol = ? AND kind = ? AND key = ?",
            (protocol, kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def adapter_states(self, protocol: str, kind: str) -> dict[str, Any]:
        rows = self._db.execute(
            "SELECT key, value FROM adapter_state WHERE protocol = ? AND kind = ?",
            (protocol, kind))
        return {k: json.loads(v) for k, v in rows}

    def put_adapter_state(self, protocol: str, kind: str, key: str, value: Any) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM adapter_state WHERE protocol = ? AND kind = ? AND "
                           "key = ?", (protocol, kind, key))
            else:
                db.execute("INSERT OR REPLACE INTO adapter_state VALUES (?, ?, ?, ?)",
                           (protocol, kind, key, json.dumps(value)))

    def variables(self) -> dict[tuple[str, str, int, int, str, str, str], str]:
        """Stored device-model values by (component, instance, evse, connector, variable,
        variable instance, attribute type)."""
        rows = self._db.execute("SELECT component, component_instance, evse_id, connector_id,"
                                " variable, variable_instance, attribute, value FROM"
                                " device_model")
        return {tuple(r[:7]): r[7] for r in rows}

    def put_variable(self, key: tuple[str, str, int, int, str, str, str], value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO device_model VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key, value))

    # ---- certificates ------------------------------------------------------------------------

    def certificates(self) -> list[tuple]:
        """(id, use, pem, hash_algorithm, issuer_name_hash, issuer_key_hash, serial_number,
        installed_at) of every installed certificate, oldest first."""
        return self._db.execute(
            "SELECT id, use, pem, hash_algorithm, issuer_name_hash, issuer_key_hash,"
            " serial_number, installed_at FROM certificates ORDER BY id").fetchall()

    def add_certificate(self, use: str, pem: str, hash_algorithm: str, issuer_name_hash: str,
                        issuer_key_hash: str, serial_number: str, installed_at: float) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO certificates (use, pem, hash_algorithm, issuer_name_hash,"
                " issuer_key_hash, serial_number, installed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (use, pem, hash_algorithm, issuer_name_hash, issuer_key_hash, serial_number,
                 installed_at))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def delete_certificate(self, certificate_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM certificates WHERE id = ?", (certificate_id,))

    # ---- transactions and the durable queue -------------------------------------------------

    def _insert_outbox(self, db: sqlite3.Connection, item: NewRecord) -> OutboxEntry:
        unique_id = str(uuid.uuid4())
        cursor = db.execute(
            "INSERT INTO outbox (unique_id, kind, protocol, tx_ref, record, created_at,"
            " clock_trusted, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (unique_id, item.kind, item.protocol, item.tx_ref,
             json.dumps(item.record, separators=(",", ":")), item.created_at,
             int(item.clock_trusted), item.boot_id),
        )
        assert cursor.lastrowid is not None
        return OutboxEntry(cursor.lastrowid, unique_id, item.kind, item.protocol, item.tx_ref,
                           item.record, item.created_at, item.clock_trusted, item.boot_id, 0)

    def enqueue(self, item: NewRecord) -> OutboxEntry:
        with self._tx() as db:
            return self._insert_outbox(db, item)

    def record_event(self, item: NewRecord) -> OutboxEntry:
        """A transaction event: the transaction's row and its queued record in one commit."""
        e = item.record
        token, group = e.get("token") or {}, e.get("group") or {}
        with self._tx() as db:
            if e["kind"] == "started":
                db.execute(
                    "INSERT INTO transactions (ref, evse_id, connector_id, token, token_type,"
                    " group_token, group_type, authorized, started_at, meter_start_wh,"
                    " remote_start_id, reservation_id, next_seq, protocol)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e["ref"], e["evse_id"], e["connector_id"], token.get("value"),
                     token.get("type"), group.get("value"), group.get("type"),
                     int(token.get("value") is not None), e["started_at"], e["meter_start_wh"],
                     e.get("remote_start_id"), e.get("reservation_id"), e["seq"] + 1,
                     item.protocol))
            elif e["kind"] == "updated":
                db.execute(
                    "UPDATE transactions SET token = ?, token_type = ?, group_token = ?,"
                    " group_type = ?, authorized = ?, remote_start_id = ?, next_seq = ?"
                    " WHERE ref = ?",
                    (token.get("value"), token.get("type"), group.get("value"),
                     group.get("type"), int(token.get("value") is not None),
                     e.get("remote_start_id"), e["seq"] + 1, e["ref"]))
            else:
                db.execute(
                    "UPDATE transactions SET stopped_at = ?, meter_stop_wh = ?, stop_reason = ?,"
                    " next_seq = ? WHERE ref = ?",
                    (e["timestamp"], e["meter_stop_wh"], e["reason"], e["seq"] + 1, e["ref"]))
            return self._insert_outbox(db, item)

    def transaction(self, ref: str) -> TransactionRow | None:
        # bandit B608: column lists are constants
        row = self._db.execute(f"SELECT {_TX_COLUMNS} FROM transactions WHERE ref = ?",  # nosec B608
                               (ref,)).fetchone()
        return TransactionRow(*row[:7], bool(row[7]), *row[8:]) if row else None

    def open_transactions(self) -> list[TransactionRow]:
        # bandit B608: column lists are constants
        rows = self._db.execute(f"SELECT {_TX_COLUMNS} FROM transactions WHERE stopped_at IS"  # nosec B608
                                " NULL ORDER BY started_at")
        return [TransactionRow(*r[:7], bool(r[7]), *r[8:]) for r in rows]

    def untrusted_boots(self) -> dict[str, float]:
        """For each earlier run that queued records before knowing the time: its last stamp."""
        rows = self._db.execute(
            "SELECT boot_id, MAX(created_at) FROM outbox WHERE clock_trusted = 0 GROUP BY boot_id"
        )
        return dict(rows.fetchall())

    def data_bytes(self) -> int:
        """Bytes the database really holds: freed pages are reused before the file grows."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def drop_oldest_meter_values(self, count: int) -> int:
        """Intermediate readings go first when space runs short; starts and ends never."""
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                " WHERE kind = 'transaction_event' AND json_extract(record, '$.trigger') IN"
                " ('meter_value_periodic', 'meter_value_clock') ORDER BY seq LIMIT ?)",
                (count,),
            )
            return cursor.rowcount

    def outbox_last_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]

    def outbox_after(self, seq: int, limit: int) -> list[OutboxEntry]:
        # bandit B608: column lists are constants
        rows = self._db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE seq > ?"  # nosec B608
                                " ORDER BY seq LIMIT ?", (seq, limit))
        return [_entry(r) for r in rows]

    def outbox_done_upto(self, seq: int) -> None:
        # Forgetting a delivered record is committed without an fsync of its own: a process
        # crash keeps it (the WAL is in the page cache), the next record written with
        # synchronous=FULL makes it durable too, and a power cut can only cost a resend of
        # the few records delivered since — under their own message ids. Paying an fsync per
        # delivered record would bound a replay by the disk, not the link.
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx() as db:
                db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def outbox_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def outbox_attempted(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def outbox_pending_for(self, tx_ref: str | None) -> int:
        """Queued records of one transaction (None: of any)."""
        if tx_ref is None:
            return self.outbox_count()
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE tx_ref = ?",
                                (tx_ref,)).fetchone()[0]

    # ---- dead letters: what the CSMS refused for good, kept for an operator ----------------

    def dead_letter(self, seq: int, reason: str) -> None:
        with self._tx() as db:
            # bandit B608: column lists are constants
            db.execute(f"INSERT OR REPLACE INTO dead_letters ({_OUTBOX_COLUMNS}, reason,"  # nosec B608
                       f" failed_at) SELECT {_OUTBOX_COLUMNS}, ?, ? FROM outbox WHERE seq = ?",
                       (reason, time.time(), seq))
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def dead_letters(self) -> list[tuple[OutboxEntry, str, float]]:
        # bandit B608: column lists are constants
        rows = self._db.execute(f"SELECT {_OUTBOX_COLUMNS}, reason, failed_at FROM dead_letters"  # nosec B608
                                " ORDER BY seq")
        return [(_entry(r[:10]), r[10], r[11]) for r in rows]

    def dead_letter_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]

    def requeue_dead_letters(self) -> list[OutboxEntry]:
        """Put every dead letter back at the end of the queue, in its original order, with
        a fresh attempt count (and its own message id, which the CSMS may know)."""
        with self._tx() as db:
            # bandit B608: column lists are constants
            rows = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM dead_letters ORDER BY seq")  # nosec B608
            entries = []
            for r in rows.fetchall():
                cursor = db.execute(
                    "INSERT INTO outbox (unique_id, kind, protocol, tx_ref, record, created_at,"
                    " clock_trusted, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", r[1:9])
                assert cursor.lastrowid is not None
                entries.append(_entry((cursor.lastrowid, *r[1:9], 0)))
            db.execute("DELETE FROM dead_letters")
            return entries

    # ---- authorization cache and local list --------------------------------------------------

    def auth_cache(self) -> list[TokenRow]:
        # bandit B608: column lists are constants
        rows = self._db.execute(f"SELECT {_TOKEN_COLUMNS}, learned_at FROM auth_cache"  # nosec B608
                                " ORDER BY learned_at")
        return [_token_row(r[:7], r[7]) for r in rows]

    def put_auth_cache(self, changes: dict[str, TokenRow | None]) -> None:
        """Write cache changes (by token key) in one commit; None removes an entry."""
        with self._tx() as db:
            for key, row in changes.items():
                if row is None:
                    db.execute("DELETE FROM auth_cache WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO auth_cache VALUES"
                               " (?, ?, ?, ?, ?, ?, ?, ?, ?)", (key, *_token_values(row),
                                                                row.learned_at))

    def clear_auth_cache(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_cache")

    def local_list(self) -> tuple[int, list[TokenRow]]:
        # bandit B608: column lists are constants
        rows = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM local_list")  # nosec B608
        return self.state("local_list_version", 0), [_token_row(r) for r in rows]

    def write_local_list(self, version: int, changes: dict[str, TokenRow | None], *,
                         replace: bool) -> None:
        """A full list replaces what was there; a differential one upserts and deletes (None).
        Either way the entries and the version change in one commit."""
        with self._tx() as db:
            if replace:
                db.execute("DELETE FROM local_list")
            for key, row in changes.items():
                if row is None:
                    db.execute("DELETE FROM local_list WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO local_list VALUES"
                               " (?, ?, ?, ?, ?, ?, ?, ?)", (key, *_token_values(row)))
            db.execute("INSERT OR REPLACE INTO state VALUES ('local_list_version', ?)",
                       (json.dumps(version),))


_TX_COLUMNS = ("ref, evse_id, connector_id, token, token_type, group_token, group_type,"
               " authorized, started_at, meter_start_wh, remote_start_id, reservation_id,"
               " next_seq, protocol, stopped_at, meter_stop_wh, stop_reason")
_OUTBOX_COLUMNS = ("seq, unique_id, kind, protocol, tx_ref, record, created_at, clock_trusted,"
                   " boot_id, attempts")
# bandit B105: column names, not a password
_TOKEN_COLUMNS = "token, token_type, status, group_token, group_type, expiry, evse_ids"  # nosec B105


def _entry(r: tuple) -> OutboxEntry:
    return OutboxEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], bool(r[7]), r[8],
                       r[9])


def _token_row(r: tuple, learned_at: float | None = None) -> TokenRow:
    evse_ids = tuple(json.loads(r[6])) if r[6] else ()
    return TokenRow(r[0], r[1], r[2], r[3], r[4], r[5], evse_ids, learned_at)


def _token_values(row: TokenRow) -> tuple:
    return (row.token, row.token_type, row.status, row.group_token, row.group_type,
            row.expiry, json.dumps(list(row.evse_ids)) if row.evse_ids else None)


def _offload(method: Callable[Concatenate[Store, P], T]) \
        -> Callable[Concatenate[AsyncStore, P], Awaitable[T]]:
    name = method.__name__

    async def run(self: AsyncStore, *args: P.args, **kwargs: P.kwargs) -> T:
        # Looked up on the object, so that a test may stand a failing method in for it.
        return await self.run(lambda: getattr(self.store, name)(*args, **kwargs))

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


class AsyncStore:
    """The store's API for the event loop: each call runs on the store's one thread, in the
    order the calls were made."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def recovery(self) -> Recovery | None:
        return self.store.recovery

    @property
    def space_short(self) -> bool:
        return self.store.space_short

    state = _offload(Store.state)
    put_state = _offload(Store.put_state)
    shared_settings = _offload(Store.shared_settings)
    put_shared_setting = _offload(Store.put_shared_setting)
    adapter_settings = _offload(Store.adapter_settings)
    put_adapter_setting = _offload(Store.put_adapter_setting)
    adapter_state = _offload(Store.adapter_state)
    adapter_states = _offload(Store.adapter_states)
    put_adapter_state = _offload(Store.put_adapter_state)
    variables = _offload(Store.variables)
    certificates = _offload(Store.certificates)
    add_certificate = _offload(Store.add_certificate)
    delete_certificate = _offload(Store.delete_certificate)
    put_variable = _offload(Store.put_variable)
    enqueue = _offload(Store.enqueue)
    record_event = _offload(Store.record_event)
    transaction = _offload(Store.transaction)
    open_transactions = _offload(Store.open_transactions)
    untrusted_boots = _offload(Store.untrusted_boots)
    data_bytes = _offload(Store.data_bytes)
    drop_oldest_meter_values = _offload(Store.drop_oldest_meter_values)
    outbox_last_seq = _offload(Store.outbox_last_seq)
    outbox_after = _offload(Store.outbox_after)
    outbox_done_upto = _offload(Store.outbox_done_upto)
    outbox_count = _offload(Store.outbox_count)
    outbox_attempted = _offload(Store.outbox_attempted)
    outbox_pending_for = _offload(Store.outbox_pending_for)
    dead_letter = _offload(Store.dead_letter)
    dead_letters = _offload(Store.dead_letters)
    dead_letter_count = _offload(Store.dead_letter_count)
    requeue_dead_letters = _offload(Store.requeue_dead_letters)
    auth_cache = _offload(Store.auth_cache)
    put_auth_cache = _offload(Store.put_auth_cache)
    clear_auth_cache = _offload(Store.clear_auth_cache)
    local_list = _offload(Store.local_list)
    write_local_list = _offload(Store.write_local_list)
    release_reserve = _offload(Store.release_reserve)
    retake_reserve = _offload(Store.retake_reserve)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
