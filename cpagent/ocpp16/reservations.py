"""OCPP 1.6 Reservation profile: ReserveNow (§5.13) and CancelReservation (§5.2).

The core keeps the reservations and decides (see `cpagent.core.reservations`); this module
reads the calls and words the answers. Connector 0 reserves any connector of the charge point,
as ReserveConnectorZeroSupported says it may. What a reservation changes is told the 1.6 way
only: the connector's StatusNotification (Reserved, then Available at expiry or
cancellation), and reservationId in the StartTransaction that uses it. 1.6 has no message for
a reservation that ends otherwise.
"""

from __future__ import annotations

import logging
from typing import Protocol

from cpagent.clock import parse_time
from cpagent.core.model import IdToken, Reservation, ReserveResult
from cpagent.host import AdapterHost, Registration
from cpagent.ocpp16.configuration import Configuration
from cpagent.ocpp16.vocabulary import id_tag

log = logging.getLogger(__name__)

RESERVE_STATUS = {
    ReserveResult.ACCEPTED: "Accepted",
    ReserveResult.FAULTED: "Faulted",
    ReserveResult.OCCUPIED: "Occupied",
    ReserveResult.REJECTED: "Rejected",
    ReserveResult.UNAVAILABLE: "Unavailable",
}


class Adapter(Protocol):
    """What these handlers use of the 1.6 adapter."""

    host: AdapterHost
    configuration: Configuration
    connectors: int
    registration: Registration | None


async def reserve_now(adapter: Adapter, payload: dict) -> dict:
    connector_id = payload["connectorId"]
    if adapter.registration is not Registration.ACCEPTED:
        return {"status": "Rejected"}  # 4.2.1: nothing of the sort while Pending
    if connector_id == 0 and not adapter.configuration.flag("ReserveConnectorZeroSupported"):
        return {"status": "Rejected"}
    if not 0 <= connector_id <= adapter.connectors:
        return {"status": "Rejected"}
    try:
        expiry = parse_time(payload["expiryDate"])
    except ValueError:
        log.info("ReserveNow rejected: unreadable expiryDate %.40r", payload["expiryDate"])
        return {"status": "Rejected"}
    reservation = Reservation(
        payload["reservationId"], expiry, IdToken(payload["idTag"]),
        id_tag(payload.get("parentIdTag")), connector_id or None)
    result = await adapter.host.ask(lambda core, now: core.reserve(reservation, now))
    log.info("ReserveNow %d for %s on connector %d: %s", reservation.id, reservation.token,
             connector_id, result.value)
    return {"status": RESERVE_STATUS[result]}


async def cancel_reservation(adapter: Adapter, payload: dict) -> dict:
    reservation_id = payload["reservationId"]
    cancelled = await adapter.host.ask(
        lambda core, now: core.cancel_reservation(reservation_id, now))
    return {"status": "Accepted" if cancelled else "Rejected"}
