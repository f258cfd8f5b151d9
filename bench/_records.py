"""A durable queue as a long outage leaves it: one transaction's start, many meter readings
and its end, as neutral records in a real store (rendered as 1.6 or 2.0.1 when sent)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import replace
from pathlib import Path

from cpagent.core.actions import TransactionEvent, TxEventKind
from cpagent.core.model import (
    ChargingState,
    IdToken,
    ReadingContext,
    Sample,
    StopReason,
    TokenType,
    Trigger,
)
from cpagent.records import TRANSACTION_EVENT, event_to_json
from cpagent.store import NewRecord, Store
from hal.interfaces import MeterReading


def prefill(db_path: Path, readings: int, protocol: str) -> None:
    """Queue a start, `readings` periodic readings and an end of one transaction."""
    now = time.time()
    ref = str(uuid.uuid4())
    started = TransactionEvent(
        kind=TxEventKind.STARTED, ref=ref, seq=0, evse_id=1, connector_id=1, timestamp=now,
        trigger=Trigger.AUTHORIZED, charging_state=ChargingState.CHARGING, started_at=now,
        meter_start_wh=0.0, token=IdToken("BENCH", TokenType.ISO14443), group=None,
        authorized_now=True,
        samples=(Sample(now, ReadingContext.TRANSACTION_BEGIN, MeterReading(0.0)),))
    store = Store(db_path)

    def item(event: TransactionEvent) -> NewRecord:
        return NewRecord(TRANSACTION_EVENT, protocol, event_to_json(event), ref, now, True,
                         "old")

    store.record_event(item(started))
    periodic = replace(started, kind=TxEventKind.UPDATED, trigger=Trigger.METER_VALUE_PERIODIC,
                       authorized_now=False)
    store.close()
    db = sqlite3.connect(db_path)
    rows = []
    for n in range(1, readings + 1):
        sample = Sample(now + n, ReadingContext.PERIODIC, MeterReading(n * 10.0, 11000.0))
        event = replace(periodic, seq=n, timestamp=now + n, samples=(sample,))
        rows.append((str(uuid.uuid4()), TRANSACTION_EVENT, protocol, ref,
                     json.dumps(event_to_json(event), separators=(",", ":")), now, 1, "old"))
    db.executemany("INSERT INTO outbox (unique_id, kind, protocol, tx_ref, record, created_at,"
                   " clock_trusted, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("UPDATE transactions SET next_seq = ? WHERE ref = ?", (readings + 1, ref))
    db.commit()
    db.close()
    store = Store(db_path)
    end = readings + 1
    store.record_event(item(replace(
        periodic, kind=TxEventKind.ENDED, seq=end, timestamp=now + end,
        trigger=Trigger.STOP_AUTHORIZED,
        reason=StopReason.LOCAL, meter_stop_wh=end * 10.0,
        samples=(Sample(now + end, ReadingContext.TRANSACTION_END, MeterReading(end * 10.0)),))))
    store.close()
