"""The vocabulary of the charging core: tokens, statuses, transactions, settings.

Every name here is version-neutral and none is a wire string: the values are lower-case
identifiers, so a core enum sent as it is fails validation instead of passing for a 1.6 or
2.0.1 word by accident. Each protocol adapter owns the translation into its vocabulary (1.6's
`Preparing`, 2.0.1's `Occupied`; 1.6's `Other`, 2.0.1's `GroundFault`), and its length limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hal.interfaces import MeterReading


class TokenType(StrEnum):
    """How an identifier was obtained; None on a token means the version did not say."""

    CENTRAL = "central"
    EMAID = "emaid"
    ISO14443 = "iso14443"
    ISO15693 = "iso15693"
    KEY_CODE = "key_code"
    LOCAL = "local"
    MAC_ADDRESS = "mac_address"
    NO_AUTHORIZATION = "no_authorization"


@dataclass(frozen=True, slots=True)
class IdToken:
    """An identifier presented for authorization: a card, an app user, free vend."""

    value: str
    type: TokenType | None = None

    @property
    def key(self) -> str:
        # Both 1.6 (CiString20) and 2.0.1 treat identifiers case-insensitively.
        return self.value.casefold()

    def same_as(self, other: IdToken | None) -> bool:
        """The same identifier: equal ignoring case, and of the same type where both say."""
        return (
            other is not None
            and self.key == other.key
            and (self.type is None or other.type is None or self.type is other.type)
        )

    def __str__(self) -> str:
        return self.value if self.type is None else f"{self.value} ({self.type})"


class AuthStatus(StrEnum):
    ACCEPTED = "accepted"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    INVALID = "invalid"
    CONCURRENT_TX = "concurrent_tx"
    NO_CREDIT = "no_credit"
    NOT_ALLOWED_TYPE_EVSE = "not_allowed_type_evse"
    NOT_AT_THIS_LOCATION = "not_at_this_location"
    NOT_AT_THIS_TIME = "not_at_this_time"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """What the CSMS (or the local list) says of a token."""

    status: AuthStatus
    group: IdToken | None = None  # 1.6 parentIdTag, 2.0.1 groupIdToken
    expiry: float | None = None  # UTC epoch seconds
    evse_ids: tuple[int, ...] = ()  # valid only on these EVSEs; empty: on any

    def valid_at(self, now: float, evse_id: int | None = None) -> bool:
        return (
            self.status is AuthStatus.ACCEPTED
            and (self.expiry is None or self.expiry > now)
            and (evse_id is None or not self.evse_ids or evse_id in self.evse_ids)
        )


class ConnectorStatus(StrEnum):
    """What a connector is doing, in the detail 1.6 reports; 2.0.1 folds the middle five
    into Occupied."""

    AVAILABLE = "available"
    PREPARING = "preparing"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    FINISHING = "finishing"
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"


class ChargingState(StrEnum):
    """The energy flow of a transaction (2.0.1 chargingState; 1.6 shows it in the status)."""

    CHARGING = "charging"
    EV_CONNECTED = "ev_connected"  # plugged, no energy offered yet (not authorized)
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    IDLE = "idle"  # no vehicle connected


class TxPoint(StrEnum):
    """Where a transaction may begin or end (2.0.1 TxStartPoint / TxStopPoint; 1.6 starts at
    POWER_PATH_CLOSED and stops at AUTHORIZED)."""

    EV_CONNECTED = "ev_connected"
    AUTHORIZED = "authorized"
    POWER_PATH_CLOSED = "power_path_closed"  # connected and authorized
    ENERGY_TRANSFER = "energy_transfer"


class Trigger(StrEnum):
    """Why a transaction event happened."""

    AUTHORIZED = "authorized"
    CABLE_PLUGGED_IN = "cable_plugged_in"
    CHARGING_RATE_CHANGED = "charging_rate_changed"
    CHARGING_STATE_CHANGED = "charging_state_changed"
    DEAUTHORIZED = "deauthorized"
    ENERGY_LIMIT_REACHED = "energy_limit_reached"
    EV_COMMUNICATION_LOST = "ev_communication_lost"
    EV_CONNECT_TIMEOUT = "ev_connect_timeout"
    METER_VALUE_CLOCK = "meter_value_clock"
    METER_VALUE_PERIODIC = "meter_value_periodic"
    TIME_LIMIT_REACHED = "time_limit_reached"
    TRIGGER = "trigger"
    UNLOCK_COMMAND = "unlock_command"
    STOP_AUTHORIZED = "stop_authorized"
    EV_DEPARTED = "ev_departed"
    EV_DETECTED = "ev_detected"
    REMOTE_STOP = "remote_stop"
    REMOTE_START = "remote_start"
    ABNORMAL_CONDITION = "abnormal_condition"
    RESET_COMMAND = "reset_command"


class StopReason(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    EV_DISCONNECTED = "ev_disconnected"
    HARD_RESET = "hard_reset"
    SOFT_RESET = "soft_reset"
    POWER_LOSS = "power_loss"
    REBOOT = "reboot"
    DE_AUTHORIZED = "de_authorized"
    EMERGENCY_STOP = "emergency_stop"
    FAULT = "fault"  # the cause is carried beside it
    UNLOCK_COMMAND = "unlock_command"
    ENERGY_LIMIT_REACHED = "energy_limit_reached"
    STOPPED_BY_EV = "stopped_by_ev"
    TIMEOUT = "timeout"
    OTHER = "other"


class ReadingContext(StrEnum):
    TRANSACTION_BEGIN = "transaction_begin"
    PERIODIC = "periodic"
    CLOCK = "clock"
    TRANSACTION_END = "transaction_end"
    TRIGGER = "trigger"


class Availability(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"


class ReserveResult(StrEnum):
    """The answer to a reservation request."""

    ACCEPTED = "accepted"
    FAULTED = "faulted"
    OCCUPIED = "occupied"  # in use, or reserved for another reservation
    REJECTED = "rejected"  # not possible here: no such EVSE or connector type, or expired
    UNAVAILABLE = "unavailable"


class ReservationEnd(StrEnum):
    """Why a reservation ended."""

    USED = "used"  # its driver (or the driver's group) took the EVSE
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # by the CSMS
    REMOVED = "removed"  # what it was for became faulted or unavailable


@dataclass(frozen=True, slots=True)
class Reservation:
    """An EVSE, or any EVSE of the station, kept for one driver (or group) until `expiry`."""

    id: int
    expiry: float  # UTC epoch seconds, as the CSMS gave it: not moved by clock corrections
    token: IdToken
    group: IdToken | None = None  # 1.6 parentIdTag, 2.0.1 groupIdToken
    evse_id: int | None = None  # None: any EVSE of the station (1.6 connector 0)
    connector_type: str | None = None  # what the driver's car needs (2.0.1 connectorType)
    # The EVSEs that have such a connector, as far as the station knew when it was made;
    # None: any EVSE will do.
    fitting_evses: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """A meter reading as taken for a report: when, why, and what the meter said."""

    timestamp: float
    context: ReadingContext
    reading: MeterReading
    offered_amps: float = 0.0  # what the pilot offered then (the Current.Offered measurand)


@dataclass
class Transaction:
    """A transaction as the core runs it. `ref` is made by the charger and unique across
    restarts; each adapter maps it to its wire identifier (2.0.1 sends it as it is, 1.6 keeps
    the integer the CSMS gives)."""

    ref: str
    evse_id: int
    connector_id: int
    started_at: float
    meter_start_wh: float
    token: IdToken | None = None
    group: IdToken | None = None
    authorized: bool = False  # may charge as far as authorization goes
    remote_start_id: int | None = None
    reservation_id: int | None = None
    next_seq: int = 0  # sequence number of its next event
    history: list[Sample] = field(default_factory=list)  # what the end reports
    next_update_at: float = 0.0
    next_history_at: float = 0.0
    suspended_by_csms: bool = False  # the CSMS said the token is not valid
    energy_cap_wh: float | None = None  # register value where an invalidated session ends
    stopping: tuple[StopReason, IdToken | None] | None = None  # charging over, waits for unplug
    energy_flowed: bool = False
    vehicle_seen: bool = False  # a car was plugged in at some point of it
    charging_state: ChargingState = ChargingState.IDLE


@dataclass
class CoreSettings:
    """The knobs the core obeys; each protocol adapter maps its configuration onto these."""

    max_current: float = 32.0  # amps per phase the hardware may offer on each EVSE
    voltage: float = 230.0  # phase to neutral: converts watt limits to amps
    phases: int = 3  # the phases each EVSE uses (the hardware cannot switch them)
    site_limit: float | None = None  # amps per phase the supply gives all EVSEs together
    time_zone: str = "UTC"  # the installer's: where recurring profiles repeat
    limit_change_significance: float = 0.0  # percent: a smaller change of the offer is not told
    report_rate_changes: bool = True  # a transaction event for it (1.6 has no such message)
    connection_timeout: float = 60.0
    update_interval: float = 60.0  # periodic transaction updates; 0 = none
    history_interval: float = 0.0  # samples kept for the end of a transaction; 0 = none
    aligned_interval: float = 900.0  # clock-aligned reports; 0 = none
    aligned_history_interval: float = 0.0  # clock-aligned samples kept for the end
    aligned_during_transaction: bool = True  # clock-aligned reports while a session runs
    start_points: frozenset[TxPoint] = frozenset({TxPoint.POWER_PATH_CLOSED})
    stop_points: frozenset[TxPoint] = frozenset({TxPoint.AUTHORIZED})
    stop_on_ev_disconnect: bool = True  # an unplug deauthorizes
    stop_on_invalid_id: bool = True
    authorize_remote_start: bool = True
    local_authorize_offline: bool = True
    local_pre_authorize: bool = False
    allow_offline_unknown_id: bool = False
    auth_cache_enabled: bool = True
    auth_cache_size: int = 1024
    auth_cache_lifetime: float | None = None  # seconds an entry is trusted; None: no limit
    local_list_enabled: bool = True
    max_energy_on_invalid_id: float | None = None  # Wh a session may still take; None: no limit
    unlock_on_ev_disconnect: bool = True
    free_vend_token: IdToken | None = None
    # 1.6 ends a reservation when its transaction starts; 2.0.1 (H03.FR.09) as soon as its
    # token is presented and accepted at the EVSE, even if no transaction follows.
    reservation_ends_at_start: bool = False
