"""Version-neutral records as JSON: what the durable queue stores and adapters render from.

A transaction event is kept as the core emitted it (no wire format), so the adapter of the
link that finally delivers it decides how it reads, even after a version switch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

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
from cpagent.core.schedules import (
    ChargingProfile,
    Period,
    ProfileKind,
    ProfilePurpose,
    RateUnit,
    Recurrence,
    Schedule,
)
from hal.interfaces import Fault, MeterReading

TRANSACTION_EVENT = "transaction_event"
SECURITY_EVENT = "security_event"  # see cpagent.security_events


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    unique_id: str
    kind: str
    protocol: str  # the OCPP version active when it was written
    tx_ref: str | None
    record: dict
    created_at: float
    clock_trusted: bool
    boot_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class TransactionRow:
    ref: str
    evse_id: int
    connector_id: int
    token: str | None
    token_type: str | None
    group_token: str | None
    group_type: str | None
    authorized: bool
    started_at: float
    meter_start_wh: float
    remote_start_id: int | None
    reservation_id: int | None
    next_seq: int
    protocol: str
    stopped_at: float | None
    meter_stop_wh: float | None
    stop_reason: str | None


def token_to_json(token: IdToken | None) -> dict | None:
    if token is None:
        return None
    return {"value": token.value, "type": token.type.value if token.type else None}


def token_from_json(data: Any) -> IdToken | None:
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        return None
    kind = data.get("type")
    return IdToken(data["value"], TokenType(kind) if kind else None)


def reading_to_json(r: MeterReading) -> dict:
    return {"energy_wh": r.energy_wh, "power_w": r.power_w,
            "current_a": list(r.current_a) if r.current_a is not None else None,
            "voltage_v": list(r.voltage_v) if r.voltage_v is not None else None}


def reading_from_json(d: dict) -> MeterReading:
    def phases(value: Any) -> tuple[float, ...] | None:
        return tuple(float(v) for v in value) if isinstance(value, list) else None

    return MeterReading(d.get("energy_wh"), d.get("power_w"), phases(d.get("current_a")),
                        phases(d.get("voltage_v")))


def sample_to_json(s: Sample) -> dict:
    return {"timestamp": s.timestamp, "context": s.context.value,
            "reading": reading_to_json(s.reading), "offered_amps": s.offered_amps}


def sample_from_json(d: dict) -> Sample:
    return Sample(float(d["timestamp"]), ReadingContext(d["context"]),
                  reading_from_json(d["reading"]), float(d.get("offered_amps") or 0.0))


def event_to_json(e: TransactionEvent) -> dict:
    return {
        "kind": e.kind.value, "ref": e.ref, "seq": e.seq, "evse_id": e.evse_id,
        "connector_id": e.connector_id, "timestamp": e.timestamp, "trigger": e.trigger.value,
        "charging_state": e.charging_state.value, "started_at": e.started_at,
        "meter_start_wh": e.meter_start_wh, "token": token_to_json(e.token),
        "group": token_to_json(e.group), "authorized_now": e.authorized_now,
        "samples": [sample_to_json(s) for s in e.samples],
        "remote_start_id": e.remote_start_id, "reservation_id": e.reservation_id,
        "offline": e.offline, "reason": e.reason.value if e.reason else None,
        "cause": e.cause.value if e.cause else None,
        "stopped_by": token_to_json(e.stopped_by), "meter_stop_wh": e.meter_stop_wh,
    }


def event_from_json(d: dict) -> TransactionEvent:
    return TransactionEvent(
        kind=TxEventKind(d["kind"]), ref=d["ref"], seq=int(d["seq"]), evse_id=int(d["evse_id"]),
        connector_id=int(d["connector_id"]), timestamp=float(d["timestamp"]),
        trigger=Trigger(d["trigger"]), charging_state=ChargingState(d["charging_state"]),
        started_at=float(d["started_at"]), meter_start_wh=float(d["meter_start_wh"]),
        token=token_from_json(d.get("token")), group=token_from_json(d.get("group")),
        authorized_now=bool(d.get("authorized_now")),
        samples=tuple(sample_from_json(s) for s in d.get("samples") or ()),
        remote_start_id=d.get("remote_start_id"), reservation_id=d.get("reservation_id"),
        offline=bool(d.get("offline")),
        reason=StopReason(d["reason"]) if d.get("reason") else None,
        cause=Fault(d["cause"]) if d.get("cause") else None,
        stopped_by=token_from_json(d.get("stopped_by")), meter_stop_wh=d.get("meter_stop_wh"),
    )


def shifted(e: TransactionEvent, seconds: float) -> TransactionEvent:
    """The event with every stamp moved (it was taken before the time was known)."""
    if not seconds:
        return e
    return replace(
        e, timestamp=e.timestamp + seconds, started_at=e.started_at + seconds,
        samples=tuple(replace(s, timestamp=s.timestamp + seconds) for s in e.samples))


# ---- charging profiles (kept by the shell for the core, across restarts) ---------------------

def profile_to_json(p: ChargingProfile) -> dict[str, Any]:
    s = p.schedule
    return {
        "id": p.id, "stack_level": p.stack_level, "purpose": p.purpose.value,
        "kind": p.kind.value, "evse_id": p.evse_id,
        "recurrence": p.recurrence.value if p.recurrence else None,
        "valid_from": p.valid_from, "valid_to": p.valid_to, "transaction": p.transaction,
        "schedule": {
            "unit": s.unit.value, "start": s.start, "duration": s.duration,
            "min_rate": s.min_rate, "id": s.id,
            "periods": [[q.start, q.limit, q.phases] for q in s.periods],
        },
    }


def _number(value: Any, *, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if type(value) not in (int, float) or value != value:  # NaN too
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def profile_from_json(d: dict[str, Any]) -> ChargingProfile:
    """A stored profile, checked as strictly as one from the CSMS: a damaged entry is a
    ValueError for the loader to skip, never a TypeError in every power decision after."""
    s = d["schedule"]
    if type(d["id"]) is not int or type(d["stack_level"]) is not int or \
            type(d["evse_id"]) is not int:
        raise ValueError("id, stack_level and evse_id must be integers")
    periods = [(_number(q[0], optional=False), _number(q[1], optional=False), q[2])
               for q in s["periods"]]
    if not periods or periods[0][0] != 0 or any(
            b[0] <= a[0] for a, b in itertools.pairwise(periods)):
        raise ValueError("periods must start at 0 and increase")
    if any(q[2] is not None and type(q[2]) is not int for q in periods):
        raise ValueError("numberPhases must be an integer")
    for name in ("start", "duration", "min_rate"):
        _number(s[name])
    for name in ("valid_from", "valid_to"):
        _number(d[name])
    if d["transaction"] is not None and not isinstance(d["transaction"], str):
        raise ValueError("transaction must be a reference")
    return ChargingProfile(
        id=d["id"], stack_level=d["stack_level"], purpose=ProfilePurpose(d["purpose"]),
        kind=ProfileKind(d["kind"]),
        schedule=Schedule(RateUnit(s["unit"]), tuple(Period(*q) for q in periods),
                          _number(s["start"]), _number(s["duration"]), _number(s["min_rate"]),
                          s["id"] if type(s["id"]) is int else None),
        evse_id=d["evse_id"],
        recurrence=Recurrence(d["recurrence"]) if d["recurrence"] else None,
        valid_from=_number(d["valid_from"]), valid_to=_number(d["valid_to"]),
        transaction=d["transaction"])
