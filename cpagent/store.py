"""The agent's one SQLite database: configuration, transactions, the outbound queue, the cache.

WAL mode with synchronous=FULL: every commit is fsynced to the write-ahead log before it
returns, so a commit that returned survives a power cut (NORMAL would only survive a crash of
the process). Billing-relevant writes commit before the agent acts as if they happened.

The methods are synchronous; the agent runs them on one dedicated thread (see `AsyncStore`) so
an fsync on a slow SD card never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each entry migrates the schema from version N to N+1; never edit a released entry.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE transactions (
        local_id INTEGER PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        parent_id_tag TEXT,
        started_at REAL NOT NULL,
        meter_start_wh REAL NOT NULL,
        remote_start INTEGER NOT NULL DEFAULT 0,
        csms_id INTEGER,
        stopped_at REAL,
        meter_stop_wh REAL,
        stop_reason TEXT
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        unique_id TEXT NOT NULL UNIQUE,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        tx_local_id INTEGER,
        created_at REAL NOT NULL,
        clock_trusted INTEGER NOT NULL,
        boot_id TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE auth_cache (
        id_tag TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        parent_id_tag TEXT,
        expiry REAL
    );
    """,
    """
    CREATE TABLE local_list (
        id_tag TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        parent_id_tag TEXT,
        expiry REAL
    );
    CREATE INDEX outbox_untrusted ON outbox (boot_id, created_at) WHERE clock_trusted = 0;
    """,
]


class StoreError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    unique_id: str
    action: str
    payload: dict
    tx_local_id: int | None
    created_at: float
    clock_trusted: bool
    boot_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class TransactionRow:
    local_id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    started_at: float
    meter_start_wh: float
    remote_start: bool
    csms_id: int | None
    stopped_at: float | None
    meter_stop_wh: float | None
    stop_reason: str | None


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message to put in the outbox, with what it needs to be sent right later."""

    action: str
    payload: dict
    tx_local_id: int | None
    created_at: float
    clock_trusted: bool
    boot_id: str


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered_from: Path | None = None
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            # A damaged or foreign file must not crash-loop the charger: keep it for
            # inspection and start afresh.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("database %s is unusable (%s); moved aside to %s", path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self.recovered_from = aside
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this cpagent ({len(MIGRATIONS)})"
                )
            if version > 0:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                if "outbox" not in tables:
                    raise sqlite3.DatabaseError("not a cpagent database")
            for number in range(version, len(MIGRATIONS)):
                db.execute("BEGIN IMMEDIATE")
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={number + 1}")
                db.execute("COMMIT")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- key/value ---------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM settings"))

    def put_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    def state(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put_state(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    # ---- transactions and the outbox ----------------------------------------------------------

    def _enqueue(self, db: sqlite3.Connection, message: QueuedMessage) -> OutboxEntry:
        unique_id = str(uuid.uuid4())
        cursor = db.execute(
            "INSERT INTO outbox (unique_id, action, payload, tx_local_id, created_at,"
            " clock_trusted, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                unique_id,
                message.action,
                json.dumps(message.payload, separators=(",", ":")),
                message.tx_local_id,
                message.created_at,
                int(message.clock_trusted),
                message.boot_id,
            ),
        )
        assert cursor.lastrowid is not None
        return OutboxEntry(
            cursor.lastrowid,
            unique_id,
            message.action,
            message.payload,
            message.tx_local_id,
            message.created_at,
            message.clock_trusted,
            message.boot_id,
            0,
        )

    def enqueue(self, message: QueuedMessage) -> OutboxEntry:
        with self._tx() as db:
            return self._enqueue(db, message)

    def record_start(self, row: TransactionRow, message: QueuedMessage) -> OutboxEntry:
        with self._tx() as db:
            db.execute(
                "INSERT INTO transactions (local_id, connector_id, id_tag, parent_id_tag,"
                " started_at, meter_start_wh, remote_start) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row.local_id,
                    row.connector_id,
                    row.id_tag,
                    row.parent_id_tag,
                    row.started_at,
                    row.meter_start_wh,
                    int(row.remote_start),
                ),
            )
            return self._enqueue(db, message)

    def record_stop(
        self,
        local_id: int,
        stopped_at: float,
        meter_stop_wh: float,
        reason: str,
        message: QueuedMessage,
    ) -> OutboxEntry:
        with self._tx() as db:
            db.execute(
                "UPDATE transactions SET stopped_at = ?, meter_stop_wh = ?, stop_reason = ?"
                " WHERE local_id = ?",
                (stopped_at, meter_stop_wh, reason, local_id),
            )
            return self._enqueue(db, message)

    def set_csms_id(self, local_id: int, csms_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE transactions SET csms_id = ? WHERE local_id = ?", (csms_id, local_id)
            )

    def transaction(self, local_id: int) -> TransactionRow | None:
        row = self._db.execute(
            "SELECT * FROM transactions WHERE local_id = ?", (local_id,)
        ).fetchone()
        return _tx_row(row) if row else None

    def open_transactions(self) -> list[TransactionRow]:
        rows = self._db.execute(
            "SELECT * FROM transactions WHERE stopped_at IS NULL ORDER BY local_id"
        )
        return [_tx_row(r) for r in rows]

    def next_transaction_id(self) -> int:
        row = self._db.execute("SELECT MAX(local_id) FROM transactions").fetchone()
        return (row[0] or 0) + 1

    def untrusted_boots(self) -> dict[str, float]:
        """For each earlier run that queued messages before knowing the time: its last stamp."""
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
        """Intermediate readings go first when disk runs short; starts and stops never."""
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                " WHERE action = 'MeterValues' ORDER BY seq LIMIT ?)",
                (count,),
            )
            return cursor.rowcount

    def outbox_last_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]

    def outbox_after(self, seq: int, limit: int) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT seq, unique_id, action, payload, tx_local_id, created_at, clock_trusted,"
            " boot_id, attempts FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [
            OutboxEntry(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], bool(r[6]), r[7], r[8])
            for r in rows
        ]

    def outbox_done_upto(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def outbox_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def outbox_attempted(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    # ---- authorization cache -----------------------------------------------------------------

    def auth_cache(self) -> dict[str, tuple[str, str | None, float | None]]:
        rows = self._db.execute("SELECT id_tag, status, parent_id_tag, expiry FROM auth_cache")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def put_auth_cache(
        self, entries: dict[str, tuple[str, str | None, float | None] | None]
    ) -> None:
        """Write cache changes in one commit; None removes an entry."""
        with self._tx() as db:
            for id_tag, entry in entries.items():
                if entry is None:
                    db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (id_tag,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO auth_cache VALUES (?, ?, ?, ?)", (id_tag, *entry)
                    )

    # ---- local authorization list ------------------------------------------------------------

    def local_list(self) -> tuple[int, dict[str, tuple[str, str | None, float | None]]]:
        rows = self._db.execute("SELECT id_tag, status, parent_id_tag, expiry FROM local_list")
        return self.state("local_list_version", 0), {r[0]: (r[1], r[2], r[3]) for r in rows}

    def write_local_list(
        self,
        version: int,
        changes: dict[str, tuple[str, str | None, float | None] | None],
        *,
        replace: bool,
    ) -> None:
        """A full list replaces what was there; a differential one upserts and deletes (None).
        Either way the entries and the version change in one commit."""
        with self._tx() as db:
            if replace:
                db.execute("DELETE FROM local_list")
            for id_tag, entry in changes.items():
                if entry is None:
                    db.execute("DELETE FROM local_list WHERE id_tag = ?", (id_tag,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO local_list VALUES (?, ?, ?, ?)", (id_tag, *entry)
                    )
            db.execute(
                "INSERT OR REPLACE INTO state VALUES ('local_list_version', ?)",
                (json.dumps(version),),
            )

    def clear_auth_cache(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_cache")


def _tx_row(r: tuple) -> TransactionRow:
    return TransactionRow(
        r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10]
    )


class AsyncStore:
    """Runs Store calls on one thread, in submission order, off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
