"""The database schema, step by step, and what can be saved from a damaged file.

Each step takes the schema from version N to N+1 inside one transaction; a step may be SQL or
Python (when rows must be rewritten, as when 1.6 wire messages became version-neutral
records). A released step is never edited: the tables and names it writes are frozen here,
even where the live code has moved on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

@dataclass
class Recovery:
    """What became of a damaged database: where it went and what could be carried over."""

    moved_to: Path
    reason: str
    transactions: int = 0
    queued: int = 0
    other: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"the database was damaged ({self.reason}) and moved to {self.moved_to}; "
                f"carried over {self.transactions} transaction(s) and {self.queued} queued "
                "message(s)")


Step = str | Callable[[sqlite3.Connection], None]

_V1 = """
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
"""

_V2 = """
CREATE TABLE local_list (
    id_tag TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    parent_id_tag TEXT,
    expiry REAL
);
CREATE INDEX outbox_untrusted ON outbox (boot_id, created_at) WHERE clock_trusted = 0;
"""

# Version 3: every row knows its protocol, transaction references are text, records are
# version-neutral, and settings, adapter data, the device model and certificates each have
# their own table.
_V3_TABLES = """
CREATE TABLE shared_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE adapter_settings (
    protocol TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (protocol, name)
);
CREATE TABLE adapter_state (
    protocol TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (protocol, kind, key)
);
CREATE TABLE device_model (
    component TEXT NOT NULL, component_instance TEXT NOT NULL DEFAULT '',
    evse_id INTEGER NOT NULL DEFAULT 0, connector_id INTEGER NOT NULL DEFAULT 0,
    variable TEXT NOT NULL, variable_instance TEXT NOT NULL DEFAULT '',
    attribute TEXT NOT NULL DEFAULT 'Actual', value TEXT NOT NULL,
    PRIMARY KEY (component, component_instance, evse_id, connector_id, variable,
                 variable_instance, attribute)
);
CREATE TABLE certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    use TEXT NOT NULL,
    pem TEXT NOT NULL,
    hash_algorithm TEXT, issuer_name_hash TEXT, issuer_key_hash TEXT, serial_number TEXT,
    installed_at REAL NOT NULL
);
CREATE TABLE transactions (
    ref TEXT PRIMARY KEY,
    evse_id INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    token TEXT, token_type TEXT, group_token TEXT, group_type TEXT,
    authorized INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    meter_start_wh REAL NOT NULL,
    remote_start_id INTEGER,
    reservation_id INTEGER,
    next_seq INTEGER NOT NULL DEFAULT 1,
    protocol TEXT NOT NULL,
    stopped_at REAL, meter_stop_wh REAL, stop_reason TEXT
);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    unique_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    protocol TEXT NOT NULL,
    tx_ref TEXT,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    clock_trusted INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_untrusted ON outbox (boot_id, created_at) WHERE clock_trusted = 0;
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY,
    unique_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    protocol TEXT NOT NULL,
    tx_ref TEXT,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    clock_trusted INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE auth_cache (
    key TEXT PRIMARY KEY, token TEXT NOT NULL, token_type TEXT, status TEXT NOT NULL,
    group_token TEXT, group_type TEXT, expiry REAL, evse_ids TEXT, learned_at REAL
);
CREATE TABLE local_list (
    key TEXT PRIMARY KEY, token TEXT NOT NULL, token_type TEXT, status TEXT NOT NULL,
    group_token TEXT, group_type TEXT, expiry REAL, evse_ids TEXT
);
"""

# 1.6 configuration keys that meant the same as a 2.0.1 variable became one shared value.
_SHARED_NAMES = {
    "HeartbeatInterval": "heartbeat_interval",
    "MeterValueSampleInterval": "sample_interval",
    "MeterValuesSampledData": "sampled_measurands",
    "StopTxnSampledData": "ended_measurands",
    "ClockAlignedDataInterval": "aligned_interval",
    "MeterValuesAlignedData": "aligned_measurands",
    "StopTxnAlignedData": "aligned_ended_measurands",
    "ConnectionTimeOut": "connection_timeout",
    "StopTransactionOnEVSideDisconnect": "stop_on_ev_disconnect",
    "StopTransactionOnInvalidId": "stop_on_invalid_id",
    "MaxEnergyOnInvalidId": "max_energy_on_invalid_id",
    "LocalAuthorizeOffline": "local_authorize_offline",
    "LocalPreAuthorize": "local_pre_authorize",
    "AllowOfflineTxForUnknownId": "offline_unknown_id",
    "AuthorizeRemoteTxRequests": "authorize_remote_start",
    "AuthorizationCacheEnabled": "auth_cache_enabled",
    "LocalAuthListEnabled": "local_list_enabled",
    "TransactionMessageAttempts": "message_attempts",
    "TransactionMessageRetryInterval": "message_attempt_interval",
    "UnlockConnectorOnEVSideDisconnect": "unlock_on_ev_disconnect",
    "ResetRetries": "reset_retries",
    "WebSocketPingInterval": "ping_interval",
}
_AUTH_STATUS = {"Accepted": "accepted", "Blocked": "blocked", "Expired": "expired",
                "Invalid": "invalid", "ConcurrentTx": "concurrent_tx"}
_STOP_REASON = {"Local": ("local", "stop_authorized"),
                "Remote": ("remote", "remote_stop"),
                "EVDisconnected": ("ev_disconnected", "ev_communication_lost"),
                "HardReset": ("hard_reset", "reset_command"),
                "SoftReset": ("soft_reset", "reset_command"),
                "PowerLoss": ("power_loss", "abnormal_condition"),
                "Reboot": ("reboot", "abnormal_condition"),
                "DeAuthorized": ("de_authorized", "deauthorized"),
                "EmergencyStop": ("emergency_stop", "abnormal_condition"),
                "UnlockCommand": ("unlock_command", "unlock_command"),
                "Other": ("other", "abnormal_condition")}
_CONTEXTS = {"Transaction.Begin": "transaction_begin", "Sample.Periodic": "periodic",
             "Sample.Clock": "clock", "Transaction.End": "transaction_end",
             "Trigger": "trigger", "Interruption.Begin": "periodic",
             "Interruption.End": "periodic", "Other": "periodic"}


def _time(text: Any) -> float:
    from cpagent.clock import parse_time

    return parse_time(text) if isinstance(text, str) else 0.0


def _samples(meter_values: Any) -> list[dict]:
    """1.6 meterValue entries back into readings (what the 1.6 message carried)."""
    samples = []
    for value in meter_values if isinstance(meter_values, list) else []:
        reading: dict[str, Any] = {"energy_wh": None, "power_w": None, "current_a": None,
                                   "voltage_v": None}
        context = "periodic"
        currents: dict[str, float] = {}
        voltages: dict[str, float] = {}
        for sv in value.get("sampledValue") or []:
            try:
                number = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            context = _CONTEXTS.get(sv.get("context", ""), context)
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            if measurand == "Energy.Active.Import.Register":
                reading["energy_wh"] = number * (1000 if sv.get("unit") == "kWh" else 1)
            elif measurand == "Power.Active.Import":
                reading["power_w"] = number * (1000 if sv.get("unit") == "kW" else 1)
            elif measurand == "Current.Import":
                currents[sv.get("phase", "L1")] = number
            elif measurand == "Voltage":
                voltages[sv.get("phase", "L1-N")] = number
        if currents:
            reading["current_a"] = [currents[k] for k in sorted(currents)]
        if voltages:
            reading["voltage_v"] = [voltages[k] for k in sorted(voltages)]
        samples.append({"timestamp": _time(value.get("timestamp")), "context": context,
                        "reading": reading})
    return samples


def _token(value: Any) -> dict | None:
    return {"value": value, "type": None} if isinstance(value, str) else None


def convert_v2(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Rows of the version 2 tables as rows of the version 3 tables."""
    out: dict[str, list[tuple]] = {k: [] for k in (
        "shared_settings", "adapter_settings", "adapter_state", "state", "transactions",
        "outbox", "auth_cache", "local_list")}
    for key, value in rows.get("settings", []):
        shared = _SHARED_NAMES.get(key)
        if shared:
            out["shared_settings"].append((shared, value))
        else:
            out["adapter_settings"].append(("1.6", key, value))
    for key, value in rows.get("state", []):
        if key.startswith("operative."):
            evse = key.split(".", 1)[1]
            out["state"].append((f"availability.{evse}.0", value))
        else:
            out["state"].append((key, value))
    transactions: dict[int, tuple] = {}
    for r in rows.get("transactions", []):
        local_id, connector, id_tag, parent, started, meter_start, _remote, csms_id, \
            stopped, meter_stop, reason = r
        transactions[local_id] = r
        out["transactions"].append((
            str(local_id), connector, 1, id_tag, None, parent, None, 1, started, meter_start,
            None, None, 1, "1.6", stopped, meter_stop,
            _STOP_REASON.get(reason, ("other", ""))[0] if reason else None))
        if csms_id is not None:
            out["adapter_state"].append(("1.6", "tx", str(local_id),
                                         json.dumps({"transaction_id": csms_id})))
    seqs: dict[int, int] = {}
    for r in rows.get("outbox", []):
        seq, unique_id, action, payload_text, local_id, created, trusted, boot, attempts = r
        tx = transactions.get(local_id) if local_id is not None else None
        if tx is None:
            continue  # only transaction messages were ever kept durably
        try:
            payload = json.loads(payload_text)
        except ValueError:
            continue
        _, connector, id_tag, parent, started, meter_start = tx[:6]
        number = seqs.get(local_id, 0 if action == "StartTransaction" else 1)
        seqs[local_id] = number + 1
        record: dict[str, Any] = {
            "ref": str(local_id), "seq": number, "evse_id": connector, "connector_id": 1,
            "started_at": started, "meter_start_wh": meter_start, "token": _token(id_tag),
            "group": _token(parent), "authorized_now": False, "remote_start_id": None,
            "reservation_id": None, "offline": False, "reason": None, "cause": None,
            "stopped_by": None, "meter_stop_wh": None, "charging_state": "charging",
        }
        if action == "StartTransaction":
            record.update(kind="started", timestamp=_time(payload.get("timestamp")),
                          trigger="authorized", authorized_now=True, samples=[],
                          reservation_id=payload.get("reservationId"))
        elif action == "MeterValues":
            samples = _samples(payload.get("meterValue"))
            clock = any(s["context"] == "clock" for s in samples)
            record.update(kind="updated", timestamp=samples[0]["timestamp"] if samples
                          else created, samples=samples,
                          trigger="meter_value_clock" if clock else "meter_value_periodic")
        elif action == "StopTransaction":
            reason, trigger = _STOP_REASON.get(payload.get("reason", "Local"),
                                               ("other", "abnormal_condition"))
            record.update(kind="ended", timestamp=_time(payload.get("timestamp")),
                          trigger=trigger, reason=reason, charging_state="idle",
                          meter_stop_wh=payload.get("meterStop"),
                          stopped_by=_token(payload.get("idTag")),
                          samples=_samples(payload.get("transactionData")))
        else:
            continue
        out["outbox"].append((seq, unique_id, "transaction_event", "1.6", str(local_id),
                              json.dumps(record, separators=(",", ":")), created, trusted,
                              boot, attempts))
    for ref, count in seqs.items():
        out["transactions"] = [(t[0], *t[1:12], max(t[12], count), *t[13:])
                               if t[0] == str(ref) else t for t in out["transactions"]]
    for table in ("auth_cache", "local_list"):
        for id_tag, status, parent, expiry in rows.get(table, []):
            row = (id_tag.casefold(), id_tag, None, _AUTH_STATUS.get(status, "invalid"),
                   parent, None, expiry, None)
            out[table].append(row + ((None,) if table == "auth_cache" else ()))
    return out


_V3_TARGETS = {
    "shared_settings": 2, "adapter_settings": 3, "adapter_state": 4, "state": 2,
    "transactions": 17, "outbox": 10, "auth_cache": 9, "local_list": 8,
}


def _insert(db: sqlite3.Connection, table: str, rows: list[tuple]) -> int:
    if not rows:
        return 0
    marks = ", ".join("?" * len(rows[0]))
    db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
    return len(rows)


def _v3(db: sqlite3.Connection) -> None:
    old = {}
    for table in ("settings", "state", "transactions", "outbox", "auth_cache", "local_list"):
        # bandit B608: table names are our constants
        old[table] = db.execute(f"SELECT * FROM {table}").fetchall()  # nosec B608
    db.execute("DROP INDEX IF EXISTS outbox_untrusted")
    for table in ("settings", "transactions", "outbox", "auth_cache", "local_list", "state"):
        db.execute(f"DROP TABLE {table}")
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in _V3_TABLES.split(";"):
        if statement.strip():
            db.execute(statement)
    for table, rows in convert_v2(old).items():
        _insert(db, table, rows)


STEPS: list[Step] = [_V1, _V2, _v3]


def upgrade(db: sqlite3.Connection, version: int) -> None:
    for number in range(version, len(STEPS)):
        step = STEPS[number]
        db.execute("BEGIN IMMEDIATE")
        try:
            if callable(step):
                step(db)
            else:
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if version > 0:
            log.info("database schema migrated to version %d", number + 1)


def salvage(damaged: Path, fresh: sqlite3.Connection, recovery: Recovery) -> None:
    """Carry over what can still be read of a damaged database, table by table: a session it
    held must not be forgotten because another page of the file is broken."""
    try:
        source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        log.error("nothing can be read from %s: %s", damaged, exc)
        return
    try:
        def rows(table: str) -> list[tuple]:
            try:
                # bandit B608: table names are our constants
                return source.execute(f"SELECT * FROM {table}").fetchall()  # nosec B608
            except sqlite3.Error as exc:
                log.error("table %s of the damaged database is unreadable: %s", table, exc)
                return []

        columns = set()
        with contextlib.suppress(sqlite3.Error):
            columns = {r[1] for r in source.execute("PRAGMA table_info(outbox)")}
        if "payload" in columns:  # a version 2 file
            found = convert_v2({t: rows(t) for t in ("settings", "state", "transactions",
                                                     "outbox", "auth_cache", "local_list")})
        else:
            found = {t: rows(t) for t in _V3_TARGETS}
            found["dead_letters"] = rows("dead_letters")
            found["device_model"] = rows("device_model")
        fresh.execute("BEGIN IMMEDIATE")
        for table, table_rows in found.items():
            try:
                count = _insert(fresh, table, table_rows)
            except sqlite3.Error as exc:
                log.error("rows of %s could not be carried over: %s", table, exc)
                continue
            if table == "transactions":
                recovery.transactions = count
            elif table == "outbox":
                recovery.queued = count
            elif count:
                recovery.other[table] = count
        fresh.execute("COMMIT")
    finally:
        source.close()
