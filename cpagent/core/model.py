"""The vocabulary of the charging core: statuses, transactions, settings and the actions it emits.

These names are version-neutral. OCPP 1.6 reports the detailed connector status as it is;
OCPP 2.0.1 folds Preparing/Charging/Suspended*/Finishing into Occupied in its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hal.interfaces import Fault, MeterReading


class ConnectorStatus(StrEnum):
    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class StopReason(StrEnum):
    LOCAL = "Local"
    REMOTE = "Remote"
    EV_DISCONNECTED = "EVDisconnected"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    POWER_LOSS = "PowerLoss"
    REBOOT = "Reboot"
    DE_AUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    UNLOCK_COMMAND = "UnlockCommand"
    OTHER = "Other"


class AuthStatus(StrEnum):
    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"


class ReadingContext(StrEnum):
    TRANSACTION_BEGIN = "Transaction.Begin"
    PERIODIC = "Sample.Periodic"
    CLOCK = "Sample.Clock"
    TRANSACTION_END = "Transaction.End"
    TRIGGER = "Trigger"


class Availability(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    SCHEDULED = "Scheduled"


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    status: AuthStatus
    parent_id_tag: str | None = None
    expiry: float | None = None  # UTC epoch seconds

    def valid_at(self, now: float) -> bool:
        return self.status is AuthStatus.ACCEPTED and (self.expiry is None or self.expiry > now)


@dataclass(frozen=True, slots=True)
class Sample:
    """A meter reading as taken for a report: when, why, and what the meter said."""

    timestamp: float
    context: ReadingContext
    reading: MeterReading


@dataclass
class Transaction:
    local_id: int  # ours, stable from the first moment; the CSMS's id arrives later
    connector_id: int
    id_tag: str
    started_at: float
    meter_start_wh: float
    parent_id_tag: str | None = None
    csms_id: int | None = None
    remote_start: bool = False
    next_sample_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    suspended_by_csms: bool = False  # StartTransaction.conf said the id tag is not valid
    energy_cap_wh: float | None = None  # register value where an invalidated session ends


@dataclass
class CoreSettings:
    """The knobs the core obeys; each protocol adapter maps its own configuration onto these."""

    max_current: float = 32.0
    connection_timeout: float = 60.0
    meter_sample_interval: float = 60.0  # 0 = no periodic samples
    clock_aligned_interval: float = 900.0  # 0 = no clock-aligned samples
    stop_on_ev_disconnect: bool = True
    stop_on_invalid_id: bool = True
    authorize_remote_start: bool = True
    local_authorize_offline: bool = True
    local_pre_authorize: bool = False
    allow_offline_unknown_id: bool = False
    auth_cache_enabled: bool = True
    auth_cache_size: int = 1024
    local_list_enabled: bool = True
    max_energy_on_invalid_id: float | None = None  # Wh a session may still take; None: no limit
    unlock_on_ev_disconnect: bool = True
    free_vend_id_tag: str | None = None


# ---- actions the core asks its shell to carry out, in order -------------------------------


@dataclass(frozen=True, slots=True)
class SetCurrentLimit:
    connector_id: int
    amps: float


@dataclass(frozen=True, slots=True)
class SetContactor:
    connector_id: int
    closed: bool


@dataclass(frozen=True, slots=True)
class StatusChanged:
    connector_id: int  # 0 = the station as a whole
    status: ConnectorStatus
    fault: Fault | None
    info: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class RequestAuthorization:
    id_tag: str


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    transaction: Transaction
    reservation_id: int | None = None


@dataclass(frozen=True, slots=True)
class TransactionStopped:
    transaction: Transaction
    reason: StopReason
    stopped_at: float
    meter_stop_wh: float
    id_tag: str | None  # who stopped it, when a person did


@dataclass(frozen=True, slots=True)
class MeterValuesReport:
    connector_id: int
    transaction: Transaction | None
    sample: Sample


@dataclass(frozen=True, slots=True)
class AuthCacheUpdated:
    id_tag: str
    info: IdTagInfo | None  # None: the entry was removed


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    connector_id: int
    operative: bool


@dataclass(frozen=True, slots=True)
class UnlockConnector:
    connector_id: int


@dataclass(frozen=True, slots=True)
class ResetNow:
    hard: bool


Action = (
    SetCurrentLimit
    | SetContactor
    | StatusChanged
    | RequestAuthorization
    | TransactionStarted
    | TransactionStopped
    | MeterValuesReport
    | AuthCacheUpdated
    | AvailabilityChanged
    | UnlockConnector
    | ResetNow
)
