"""What the core asks its shell to do, in the order it must be done.

The shell carries the actions out one after the other: a transaction event is recorded
durably before the power actions that follow it, so no energy flows that is not on record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cpagent.core.limits import LimitSource
from cpagent.core.model import (
    AuthInfo,
    ChargingState,
    ConnectorStatus,
    IdToken,
    Reservation,
    ReservationEnd,
    Sample,
    StopReason,
    Trigger,
)
from cpagent.core.schedules import ChargingProfile
from hal.interfaces import Fault


@dataclass(frozen=True, slots=True)
class SetCurrentLimit:
    evse_id: int
    amps: float


@dataclass(frozen=True, slots=True)
class ChargingLimitChanged:
    """What limits an EVSE's session changed (the site limit took over, a profile did...)."""

    evse_id: int
    amps: float
    source: LimitSource


@dataclass(frozen=True, slots=True)
class ChargingProfilesChanged:
    """To persist: every installed charging profile, as they are now."""

    profiles: tuple[ChargingProfile, ...]


@dataclass(frozen=True, slots=True)
class CurrentOverrun:
    """The vehicle keeps drawing more than it is offered: for the log (the CSMS hears of it
    as a fault in the connector's status)."""

    evse_id: int
    info: str


@dataclass(frozen=True, slots=True)
class SetContactor:
    evse_id: int
    closed: bool


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A connector's visible status changed; evse_id 0 is the station as a whole."""

    evse_id: int
    connector_id: int
    status: ConnectorStatus
    fault: Fault | None
    info: str
    timestamp: float
    vehicle_present: bool = False


@dataclass(frozen=True, slots=True)
class RequestAuthorization:
    token: IdToken


class TxEventKind(StrEnum):
    STARTED = "started"
    UPDATED = "updated"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    """One event in a transaction's life, self-contained: what every version renders its
    messages from (1.6 Start/MeterValues/Stop, 2.0.1 TransactionEvent)."""

    kind: TxEventKind
    ref: str
    seq: int  # 0 for the start, then one more per event
    evse_id: int
    connector_id: int
    timestamp: float
    trigger: Trigger
    charging_state: ChargingState
    started_at: float
    meter_start_wh: float
    token: IdToken | None  # the transaction's token so far
    group: IdToken | None
    authorized_now: bool  # authorization happened with this event
    samples: tuple[Sample, ...] = ()
    remote_start_id: int | None = None
    reservation_id: int | None = None
    offline: bool = False
    reason: StopReason | None = None  # ENDED only, as are the fields below
    cause: Fault | None = None
    stopped_by: IdToken | None = None
    meter_stop_wh: float | None = None


@dataclass(frozen=True, slots=True)
class MeterValuesReport:
    """A reading outside any transaction (clock-aligned, or asked for)."""

    evse_id: int
    sample: Sample


@dataclass(frozen=True, slots=True)
class AuthCacheUpdated:
    token: IdToken
    info: AuthInfo | None  # None: the entry was removed


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    """To persist: evse_id 0 is the station, connector_id 0 the EVSE as a whole."""

    evse_id: int
    connector_id: int
    operative: bool


@dataclass(frozen=True, slots=True)
class UnlockConnector:
    evse_id: int
    connector_id: int


@dataclass(frozen=True, slots=True)
class ResetNow:
    hard: bool


@dataclass(frozen=True, slots=True)
class ResetEvse:
    """Bring one EVSE's devices back to their initial state; the station keeps running."""

    evse_id: int


@dataclass(frozen=True, slots=True)
class ReservationEnded:
    """A reservation is over; the CSMS may have to hear why (2.0.1 ReservationStatusUpdate)."""

    reservation_id: int
    reason: ReservationEnd


@dataclass(frozen=True, slots=True)
class ReservationsChanged:
    """To persist: every open reservation, as they are now."""

    reservations: tuple[Reservation, ...]


Action = (
    SetCurrentLimit
    | SetContactor
    | StatusChanged
    | RequestAuthorization
    | TransactionEvent
    | MeterValuesReport
    | AuthCacheUpdated
    | AvailabilityChanged
    | UnlockConnector
    | ResetNow
    | ResetEvse
    | ChargingLimitChanged
    | ChargingProfilesChanged
    | CurrentOverrun
    | ReservationEnded
    | ReservationsChanged
)
