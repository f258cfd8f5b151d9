"""OCPP 2.0.1 block H, Reservation: ReserveNow (H01), CancelReservation (H02), and the
ReservationStatusUpdate that tells the CSMS of a reservation that ended unused (H04).

The core keeps the reservations and decides (see `cpagent.core.reservations`); this module
reads the calls, words the answers, and knows which EVSE has which connector type (the device
model's Connector.ConnectorType). Reserved connectors are told by StatusNotification as any
status is; a used reservation by the reservationId of the TransactionEvent that used it.

ReservationStatusUpdate goes through the durable queue, unlike StatusNotification: a status
is state, sent afresh at every connection, but an expiry or removal is an event the CSMS hears
of once or never. Lost with the link, a CSMS would go on telling its driver that an EVSE is
kept for them. Cancelled and used reservations get no update: the CSMS knows of those.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from cpagent.clock import parse_time
from cpagent.core.actions import ReservationEnded
from cpagent.core.model import Reservation, ReservationEnd, ReserveResult
from cpagent.host import AdapterHost, Message
from cpagent.ocpp201.device_model import DeviceModel
from cpagent.ocpp201.vocabulary import token_from_wire

log = logging.getLogger(__name__)

RESERVATION_UPDATE = "reservation_update"  # the kind of the queued record

RESERVE_STATUS = {
    ReserveResult.ACCEPTED: "Accepted",
    ReserveResult.FAULTED: "Faulted",
    ReserveResult.OCCUPIED: "Occupied",
    ReserveResult.REJECTED: "Rejected",
    ReserveResult.UNAVAILABLE: "Unavailable",
}
UPDATE_STATUS = {ReservationEnd.EXPIRED: "Expired", ReservationEnd.REMOVED: "Removed"}


class Adapter(Protocol):
    """What these handlers use of the 2.0.1 adapter."""

    host: AdapterHost
    model: DeviceModel


def _rejected(reason: str, info: str) -> dict:
    return {"status": "Rejected", "statusInfo": {"reasonCode": reason, "additionalInfo": info}}


def connector_types(adapter: Adapter) -> dict[int, set[str]]:
    """Each EVSE's connector types, as the device model reports them."""
    model = adapter.model
    types: dict[int, set[str]] = {}
    for evse_id, evse in adapter.host.info.evses.items():
        for connector_id in range(1, evse.connectors + 1):
            _, address = model.find(
                {"name": "Connector", "evse": {"id": evse_id, "connectorId": connector_id}},
                {"name": "ConnectorType"})
            if address is not None:
                types.setdefault(evse_id, set()).add(model.value(address))
    return types


async def reserve_now(adapter: Adapter, payload: dict) -> dict:
    model = adapter.model
    if not model.flag("ReservationCtrlr", "Enabled"):
        return _rejected("Disabled", "ReservationCtrlr.Enabled is false")
    # There is no EVSE 0: a CSMS that sends it means none in particular, as 1.6's connector 0.
    evse_id = payload.get("evseId") or None
    if evse_id is None and not model.flag("ReservationCtrlr", "NonEvseSpecific"):
        return _rejected("UnsupportedRequest", "ReservationCtrlr.NonEvseSpecific is false: "
                                               "name an evseId")
    if evse_id is not None and evse_id not in adapter.host.info.evses:
        return _rejected("UnknownEvse", f"no EVSE {evse_id}")
    token = token_from_wire(payload["idToken"])
    if token is None:
        return _rejected("InvalidValue", "idToken")
    try:
        expiry = parse_time(payload["expiryDateTime"])
    except ValueError:
        return _rejected("InvalidValue", "expiryDateTime")
    connector_type = payload.get("connectorType")
    types = connector_types(adapter) if connector_type is not None else None
    reservation = Reservation(payload["id"], expiry, token,
                              token_from_wire(payload.get("groupIdToken")), evse_id,
                              connector_type)
    result = await adapter.host.ask(lambda core, now: core.reserve(reservation, now, types))
    log.info("ReserveNow %d for %s on %s: %s", reservation.id, token,
             f"EVSE {evse_id}" if evse_id else "any EVSE", result.value)
    return {"status": RESERVE_STATUS[result]}


async def cancel_reservation(adapter: Adapter, payload: dict) -> dict:
    reservation_id = payload["reservationId"]
    cancelled = await adapter.host.ask(
        lambda core, now: core.cancel_reservation(reservation_id, now))
    return {"status": "Accepted" if cancelled else "Rejected"}


async def report_end(host: AdapterHost, ended: ReservationEnded) -> None:
    """H04: an expired (or removed) reservation is told the CSMS, durably."""
    if ended.reason in UPDATE_STATUS:
        await host.queue.enqueue(RESERVATION_UPDATE, {"reservation_id": ended.reservation_id,
                                                      "reason": ended.reason.value})


def update_message(record: dict[str, Any]) -> Message:
    return Message("ReservationStatusUpdate", {
        "reservationId": int(record["reservation_id"]),
        "reservationUpdateStatus": UPDATE_STATUS[ReservationEnd(record["reason"])]})
