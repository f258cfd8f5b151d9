"""The OCPP 2.0.1 device model: components and variables as data, not code per variable.

Each `Variable` row says what its value is (shared with 1.6, the adapter's own and stored,
or read live from the station), its data type, mutability, unit, limits and values list. The
controllers come from the specification's standardized list; the physical components
(ChargingStation, one EVSE per power path, its Connector) from the hardware the station was
built with. Names of components and variables are matched ignoring case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cpagent.clock import format_time, parse_time
from cpagent.core.limits import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from cpagent.ocpp201.vocabulary import TX_POINT_VALUES
from cpagent.settings import DEFAULTS, SECRETS, SharedSettings

MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
              "Voltage", "Current.Offered")
TIME_SOURCES = ("Heartbeat", "NTP", "GPS", "RealTimeClock", "MobileNetwork",
                "RadioTimeTransmitter")
NETWORK_SLOTS = ("1", "2", "3", "4")
LOCAL_LIST_MAX = 20_000
ITEMS_PER_MESSAGE = {"GetReport": 50, "GetVariables": 64, "SetVariables": 64}
BYTES_PER_MESSAGE = {"GetReport": 65536, "GetVariables": 65536, "SetVariables": 65536}
SEND_LOCAL_LIST_ITEMS = 1000
SEND_LOCAL_LIST_BYTES = 262144
VALUE_SIZE = 1000  # the longest value SetVariables takes
REPORTING_VALUE_SIZE = 2500  # the longest value a report carries


class InvalidValue(ValueError):
    pass


class Live(Protocol):
    """What the live variables read."""

    def station_status(self) -> tuple[str, bool]: ...  # (AvailabilityState, problem)
    def connector_state(self, evse_id: int, connector_id: int) -> tuple[str, bool]: ...
    def evse_state(self, evse_id: int) -> tuple[str, bool]: ...
    def value(self, name: str, evse_id: int, connector_id: int) -> str: ...


@dataclass(frozen=True)
class Variable:
    component: str
    name: str
    data_type: str  # string, decimal, integer, dateTime, boolean, OptionList, SequenceList,
    # MemberList
    mutability: str = "ReadOnly"
    instance: str | None = None  # of the variable
    shared: str | None = None  # the shared setting this variable is
    default: str | None = None  # of the adapter's own (stored) value
    live: str | None = None  # read from the station each time (see `Live.value`)
    unit: str | None = None
    values: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    reboot: bool = False  # a change takes effect after a restart
    per: str = "station"  # station | evse | connector
    constant: bool = False

    @property
    def writable(self) -> bool:
        return self.mutability != "ReadOnly"

    def normalise(self, value: str) -> str:
        """The canonical text of `value`, or InvalidValue saying why not."""
        text = value.strip()
        kind = self.data_type
        if kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise InvalidValue("takes true or false")
            return text.lower()
        if kind in ("integer", "decimal"):
            try:
                number = int(text) if kind == "integer" else float(text)
            except ValueError:
                raise InvalidValue(f"takes a{'n integer' if kind == 'integer' else ' number'}"
                                   ) from None
            if not math.isfinite(number):
                raise InvalidValue("takes a finite number")
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if not low <= number <= high:
                raise InvalidValue(f"must be from {low:g} to {high:g}")
            return str(number) if kind == "integer" else f"{number:g}"
        if kind == "dateTime":
            try:
                return format_time(parse_time(text))
            except ValueError:
                raise InvalidValue("takes an RFC 3339 date-time") from None
        if kind == "OptionList":
            if self.values is not None and text not in self.values:
                raise InvalidValue(f"takes one of {','.join(self.values)}")
            return text
        if kind in ("MemberList", "SequenceList"):
            items = [i.strip() for i in text.split(",") if i.strip()]
            unknown = [i for i in items if self.values is not None and i not in self.values]
            if unknown:
                raise InvalidValue(f"cannot take {','.join(unknown)} (allowed: "
                                   f"{','.join(self.values or ())})")
            if len(set(items)) != len(items):
                raise InvalidValue("names an item twice")
            return ",".join(items)
        if self.max_length is not None and len(text) > self.max_length:
            raise InvalidValue(f"takes at most {self.max_length} characters")
        return value

    def characteristics(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dataType": self.data_type, "supportsMonitoring": False}
        if self.unit:
            data["unit"] = self.unit
        if self.minimum is not None:
            data["minLimit"] = self.minimum
        if self.maximum is not None:
            data["maxLimit"] = self.maximum
        if self.values is not None:
            data["valuesList"] = ",".join(self.values)
        return data


def _v(component: str, name: str, data_type: str, **kw: Any) -> Variable:
    return Variable(component, name, data_type, **kw)


def _rw(component: str, name: str, data_type: str, **kw: Any) -> Variable:
    return Variable(component, name, data_type, "ReadWrite", **kw)


def _measurands(component: str, name: str, shared: str | None = None,
                default: str | None = None) -> Variable:
    return _rw(component, name, "MemberList", shared=shared, default=default, values=MEASURANDS)


OCPP = "OCPPCommCtrlr"
CONTROLLERS: list[Variable] = [
    _v(OCPP, "ActiveNetworkProfile", "integer", live="active_network_profile"),
    _v(OCPP, "FileTransferProtocols", "MemberList", live="file_transfer_protocols",
       values=("FTP", "FTPS", "HTTP", "HTTPS", "SFTP")),
    _rw(OCPP, "HeartbeatInterval", "integer", shared="heartbeat_interval", unit="s",
        minimum=0, maximum=86400),
    _v(OCPP, "MessageTimeout", "integer", instance="Default", live="message_timeout",
       unit="s"),
    _rw(OCPP, "MessageAttemptsTransactionEvent", "integer", shared="message_attempts",
        minimum=1, maximum=100),
    _rw(OCPP, "MessageAttemptIntervalTransactionEvent", "integer",
        shared="message_attempt_interval", unit="s", minimum=0, maximum=86400),
    _rw(OCPP, "NetworkConfigurationPriority", "SequenceList", default="1",
        values=NETWORK_SLOTS),
    _rw(OCPP, "NetworkProfileConnectionAttempts", "integer", default="3", minimum=1,
        maximum=100),
    _rw(OCPP, "OfflineThreshold", "integer", default="300", unit="s", minimum=0,
        maximum=86400),
    _rw(OCPP, "ResetRetries", "integer", shared="reset_retries", minimum=0, maximum=10),
    _v(OCPP, "RetryBackOffRandomRange", "integer", live="backoff_random_range", unit="s"),
    _v(OCPP, "RetryBackOffRepeatTimes", "integer", live="backoff_repeat_times"),
    _v(OCPP, "RetryBackOffWaitMinimum", "integer", live="backoff_wait_minimum", unit="s"),
    _rw(OCPP, "UnlockOnEVSideDisconnect", "boolean", shared="unlock_on_ev_disconnect"),
    _rw(OCPP, "WebSocketPingInterval", "integer", shared="ping_interval", unit="s",
        minimum=0, maximum=3600),
    _v("SecurityCtrlr", "BasicAuthPassword", "string", mutability="WriteOnly",
       shared="basic_auth_key", max_length=40),
    _v("SecurityCtrlr", "CertificateEntries", "integer", live="certificate_entries"),
    _rw("SecurityCtrlr", "CertSigningRepeatTimes", "integer",
        shared="cert_signing_repeat_times", minimum=0, maximum=100),
    _rw("SecurityCtrlr", "CertSigningWaitMinimum", "integer",
        shared="cert_signing_wait_minimum", unit="s", minimum=1, maximum=86400),
    _v("SecurityCtrlr", "Identity", "string", live="identity", max_length=48),
    _rw("SecurityCtrlr", "OrganizationName", "string", default="", max_length=50),
    _v("SecurityCtrlr", "SecurityProfile", "integer", live="security_profile"),
    _rw("AuthCtrlr", "Enabled", "boolean", default="true"),
    _rw("AuthCtrlr", "AuthorizeRemoteStart", "boolean", shared="authorize_remote_start"),
    _rw("AuthCtrlr", "LocalAuthorizeOffline", "boolean", shared="local_authorize_offline"),
    _rw("AuthCtrlr", "LocalPreAuthorize", "boolean", shared="local_pre_authorize"),
    _rw("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "boolean", shared="offline_unknown_id"),
    _v("AuthCacheCtrlr", "Available", "boolean", live="true"),
    _rw("AuthCacheCtrlr", "Enabled", "boolean", shared="auth_cache_enabled"),
    _rw("AuthCacheCtrlr", "LifeTime", "integer", default="86400", unit="s", minimum=0,
        maximum=31_536_000),
    _rw("AuthCacheCtrlr", "Policy", "OptionList", default="LRU", values=("LRU",)),
    _v("LocalAuthListCtrlr", "Available", "boolean", live="true"),
    _rw("LocalAuthListCtrlr", "Enabled", "boolean", shared="local_list_enabled"),
    _v("LocalAuthListCtrlr", "Entries", "integer", live="local_list_entries",
       maximum=LOCAL_LIST_MAX),
    _v("LocalAuthListCtrlr", "ItemsPerMessage", "integer", live=str(SEND_LOCAL_LIST_ITEMS)),
    _v("LocalAuthListCtrlr", "BytesPerMessage", "integer", live=str(SEND_LOCAL_LIST_BYTES)),
    _rw("TxCtrlr", "EVConnectionTimeOut", "integer", shared="connection_timeout", unit="s",
        minimum=1, maximum=3600),
    _rw("TxCtrlr", "MaxEnergyOnInvalidId", "integer", shared="max_energy_on_invalid_id",
        unit="Wh", minimum=0, maximum=1_000_000),
    _rw("TxCtrlr", "StopTxOnEVSideDisconnect", "boolean", shared="stop_on_ev_disconnect"),
    _rw("TxCtrlr", "StopTxOnInvalidId", "boolean", shared="stop_on_invalid_id"),
    # Sessions may begin while offline or not yet accepted (the offline policy decides).
    _v("TxCtrlr", "TxBeforeAcceptedEnabled", "boolean", live="true"),
    _rw("TxCtrlr", "TxStartPoint", "MemberList", default="PowerPathClosed",
        values=TX_POINT_VALUES),
    _rw("TxCtrlr", "TxStopPoint", "MemberList", default="EVConnected,Authorized",
        values=TX_POINT_VALUES),
    _v("SampledDataCtrlr", "Available", "boolean", live="true"),
    _rw("SampledDataCtrlr", "Enabled", "boolean", default="true"),
    # Not 1.6's StopTxnSampledData: a 1.6 stop carries meterStop whatever that key says, but
    # a 2.0.1 Ended event carries the energy only if this lists it, so billing needs it here.
    _measurands("SampledDataCtrlr", "TxEndedMeasurands",
                default="Energy.Active.Import.Register"),
    _rw("SampledDataCtrlr", "TxEndedInterval", "integer", default="0", unit="s", minimum=0,
        maximum=86400),
    _measurands("SampledDataCtrlr", "TxStartedMeasurands",
                default="Energy.Active.Import.Register"),
    _measurands("SampledDataCtrlr", "TxUpdatedMeasurands", shared="sampled_measurands"),
    _rw("SampledDataCtrlr", "TxUpdatedInterval", "integer", shared="sample_interval",
        unit="s", minimum=0, maximum=86400),
    _v("AlignedDataCtrlr", "Available", "boolean", live="true"),
    _rw("AlignedDataCtrlr", "Enabled", "boolean", default="true"),
    _rw("AlignedDataCtrlr", "Interval", "integer", shared="aligned_interval", unit="s",
        minimum=0, maximum=86400),
    _measurands("AlignedDataCtrlr", "Measurands", shared="aligned_measurands"),
    _rw("AlignedDataCtrlr", "SendDuringIdle", "boolean", default="false"),
    _measurands("AlignedDataCtrlr", "TxEndedMeasurands", shared="aligned_ended_measurands"),
    _rw("AlignedDataCtrlr", "TxEndedInterval", "integer", default="0", unit="s", minimum=0,
        maximum=86400),
    *[_v("DeviceDataCtrlr", "ItemsPerMessage", "integer", instance=i, live=str(n))
      for i, n in ITEMS_PER_MESSAGE.items()],
    *[_v("DeviceDataCtrlr", "BytesPerMessage", "integer", instance=i, live=str(n))
      for i, n in BYTES_PER_MESSAGE.items()],
    _v("DeviceDataCtrlr", "ValueSize", "integer", live=str(VALUE_SIZE)),
    _v("DeviceDataCtrlr", "ReportingValueSize", "integer", live=str(REPORTING_VALUE_SIZE)),
    _v("DeviceDataCtrlr", "ConfigurationValueSize", "integer", live=str(VALUE_SIZE)),
    _v("ClockCtrlr", "DateTime", "dateTime", live="date_time"),
    _rw("ClockCtrlr", "TimeSource", "SequenceList", default="NTP,Heartbeat",
        values=("Heartbeat", "NTP")),
    _v("ReservationCtrlr", "Available", "boolean", live="true"),
    # false: every ReserveNow is Rejected (those made before still hold).
    _rw("ReservationCtrlr", "Enabled", "boolean", default="true"),
    # Reservations without an evseId: any EVSE, one kept free for each (H01).
    _rw("ReservationCtrlr", "NonEvseSpecific", "boolean", default="true"),
    _v("SmartChargingCtrlr", "Available", "boolean", live="true"),
    # false: SetChargingProfile is Rejected (the profiles installed before still apply).
    _rw("SmartChargingCtrlr", "Enabled", "boolean", default="true"),
    _v("SmartChargingCtrlr", "Entries", "integer", instance="ChargingProfiles",
       live="charging_profile_entries", maximum=MAX_PROFILES),
    _rw("SmartChargingCtrlr", "LimitChangeSignificance", "decimal", default="1",
        unit="Percent", minimum=0, maximum=100),
    _rw("SmartChargingCtrlr", "NotifyChargingLimitWithSchedules", "boolean", default="false"),
    _v("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", live=str(MAX_PERIODS)),
    # Phase switching needs hardware this station does not have.
    _v("SmartChargingCtrlr", "Phases3to1", "boolean", live="false"),
    _v("SmartChargingCtrlr", "ProfileStackLevel", "integer", live=str(MAX_STACK_LEVEL)),
    _v("SmartChargingCtrlr", "RateUnit", "MemberList", live="rate_units", values=("A", "W")),
]

PHYSICAL: list[Variable] = [
    _v("ChargingStation", "AvailabilityState", "OptionList", live="availability_state",
       values=("Available", "Occupied", "Reserved", "Unavailable", "Faulted")),
    _v("ChargingStation", "Available", "boolean", live="true"),
    _v("ChargingStation", "Model", "string", live="model"),
    _v("ChargingStation", "VendorName", "string", live="vendor"),
    _v("ChargingStation", "SupplyPhases", "integer", live="supply_phases"),
    _v("ChargingStation", "Problem", "boolean", live="problem"),
    _v("EVSE", "AvailabilityState", "OptionList", live="availability_state", per="evse",
       values=("Available", "Occupied", "Reserved", "Unavailable", "Faulted")),
    _v("EVSE", "Available", "boolean", live="true", per="evse"),
    _v("EVSE", "AllowReset", "boolean", live="true", per="evse"),
    _v("EVSE", "Power", "decimal", live="power", unit="W", per="evse"),
    _v("EVSE", "SupplyPhases", "integer", live="supply_phases", per="evse"),
    _v("EVSE", "Problem", "boolean", live="problem", per="evse"),
    _v("Connector", "AvailabilityState", "OptionList", live="availability_state",
       per="connector",
       values=("Available", "Occupied", "Reserved", "Unavailable", "Faulted")),
    _v("Connector", "Available", "boolean", live="true", per="connector"),
    _v("Connector", "ConnectorType", "string", live="connector_type", per="connector"),
    _v("Connector", "SupplyPhases", "integer", live="supply_phases", per="connector"),
    _v("Connector", "Problem", "boolean", live="problem", per="connector"),
]

SUMMARY = frozenset({"AvailabilityState", "Available", "Problem", "Enabled"})


@dataclass(frozen=True)
class Address:
    """One variable of one component instance."""

    variable: Variable
    evse_id: int = 0
    connector_id: int = 0

    @property
    def key(self) -> tuple[str, str, int, int, str, str, str]:
        v = self.variable
        return (v.component, "", self.evse_id, self.connector_id, v.name, v.instance or "",
                "Actual")

    def component(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.variable.component}
        if self.evse_id:
            data["evse"] = {"id": self.evse_id}
            if self.connector_id:
                data["evse"]["connectorId"] = self.connector_id
        return data

    def variable_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.variable.name}
        if self.variable.instance:
            data["instance"] = self.variable.instance
        return data


@dataclass
class DeviceModel:
    evses: dict[int, int]  # evse id -> connectors
    shared: SharedSettings
    live: Live
    own: dict[tuple, str] = field(default_factory=dict)  # stored values by Address.key

    def __post_init__(self) -> None:
        self.addresses: list[Address] = list(self._expand())
        self._index: dict[tuple, Address] = {
            (a.variable.component.casefold(), a.evse_id, a.connector_id,
             a.variable.name.casefold(), (a.variable.instance or "").casefold()): a
            for a in self.addresses}
        self._components = {(a.variable.component.casefold(), a.evse_id, a.connector_id)
                            for a in self.addresses}
        self._by_name = {a.variable.name: a for a in self.addresses if a.evse_id == 0}

    def _expand(self) -> Iterator[Address]:
        for variable in [*CONTROLLERS, *PHYSICAL]:
            if variable.per == "station":
                yield Address(variable)
            for evse_id, connectors in self.evses.items():
                if variable.per == "evse":
                    yield Address(variable, evse_id)
                elif variable.per == "connector":
                    for connector_id in range(1, connectors + 1):
                        yield Address(variable, evse_id, connector_id)

    # ---- finding ----------------------------------------------------------------------------

    def find(self, component: dict, variable: dict) -> tuple[str, Address | None]:
        """('Accepted', address), or the status saying what was not found."""
        name = str(component.get("name", "")).casefold()
        evse = component.get("evse") or {}
        evse_id = evse.get("id", 0) if isinstance(evse, dict) else 0
        connector_id = evse.get("connectorId", 0) if isinstance(evse, dict) else 0
        if component.get("instance") or (name, evse_id, connector_id) not in self._components:
            return "UnknownComponent", None
        found = self._index.get((name, evse_id, connector_id,
                                 str(variable.get("name", "")).casefold(),
                                 str(variable.get("instance") or "").casefold()))
        if found is None:
            return "UnknownVariable", None
        return "Accepted", found

    def by_name(self, component: str, name: str) -> Address:
        """A station-level variable of ours, by its exact names."""
        return self._index[(component.casefold(), 0, 0, name.casefold(), "")]

    # ---- values -----------------------------------------------------------------------------

    def value(self, address: Address) -> str:
        v = address.variable
        if v.live is not None:
            if v.live in ("true", "false") or v.live.isdigit():
                return v.live
            return self.live.value(v.live, address.evse_id, address.connector_id)
        if v.shared is not None:
            text = self.shared[v.shared]
            try:
                return v.normalise(text)
            except InvalidValue:  # set through another version's rules
                return v.normalise(DEFAULTS[v.shared])
        return self.own.get(address.key, v.default or "")

    def text(self, component: str, name: str) -> str:
        return self.value(self.by_name(component, name))

    def integer(self, component: str, name: str) -> int:
        try:
            return int(float(self.text(component, name)))
        except ValueError:
            return 0

    def flag(self, component: str, name: str) -> bool:
        return self.text(component, name) == "true"

    def items(self, component: str, name: str) -> list[str]:
        return [i for i in self.text(component, name).split(",") if i]

    def reported_value(self, address: Address) -> str | None:
        """The value a CSMS may read; None for what is write-only (a secret)."""
        v = address.variable
        if v.mutability == "WriteOnly" or v.shared in SECRETS:
            return None
        return self.value(address)[:REPORTING_VALUE_SIZE]

    # ---- reports ----------------------------------------------------------------------------

    def report_entry(self, address: Address) -> dict[str, Any]:
        v = address.variable
        attribute: dict[str, Any] = {"type": "Actual", "mutability": v.mutability,
                                     "persistent": v.live is None, "constant": v.constant}
        value = self.reported_value(address)
        if value is not None:
            attribute["value"] = value
        return {"component": address.component(), "variable": address.variable_data(),
                "variableAttribute": [attribute],
                "variableCharacteristics": self.characteristics(address)}

    def characteristics(self, address: Address) -> dict[str, Any]:
        data = address.variable.characteristics()
        if address.variable.name == "Power" and address.variable.live == "power":
            data["maxLimit"] = float(self.value(address))
        return data

    def base_report(self, kind: str) -> list[Address]:
        if kind == "FullInventory":
            return list(self.addresses)
        if kind == "ConfigurationInventory":
            return [a for a in self.addresses if a.variable.writable]
        if kind == "SummaryInventory":
            return [a for a in self.addresses if a.variable.name in SUMMARY]
        raise ValueError(kind)

    def select(self, component_variables: list[dict] | None,
               criteria: list[str] | None) -> list[Address]:
        """GetReport: the addresses the filters name (and the criteria admit)."""
        chosen = list(self.addresses)
        if component_variables:
            wanted = []
            for cv in component_variables:
                component = cv.get("component") or {}
                variable = cv.get("variable")
                name = str(component.get("name", "")).casefold()
                evse = component.get("evse") or {}
                for a in chosen:
                    if a.variable.component.casefold() != name or component.get("instance"):
                        continue
                    if "id" in evse and a.evse_id != evse["id"]:
                        continue
                    if "connectorId" in evse and a.connector_id != evse["connectorId"]:
                        continue
                    if variable is not None and (
                            a.variable.name.casefold() != str(variable.get("name", "")).casefold()
                            or (a.variable.instance or "").casefold()
                            != str(variable.get("instance") or "").casefold()):
                        continue
                    if a not in wanted:
                        wanted.append(a)
            chosen = wanted
        if criteria:
            admitted = {(a.variable.component, a.evse_id, a.connector_id)
                        for a in self.addresses if self._meets(a, criteria)}
            chosen = [a for a in chosen
                      if (a.variable.component, a.evse_id, a.connector_id) in admitted]
        return chosen

    def _meets(self, address: Address, criteria: list[str]) -> bool:
        """A component meets a criterion when its variable of that name is true (Active is
        taken as Available: a component of ours that exists is active)."""
        names = {"Active": "Available", "Available": "Available", "Enabled": "Enabled",
                 "Problem": "Problem"}
        wanted = {names[c] for c in criteria if c in names}
        return address.variable.name in wanted and self.value(address) == "true"


def split_parts(entries: list[dict], items: int, max_bytes: int,
                size: Callable[[dict], int]) -> list[list[dict]]:
    """Cut report entries into messages of at most `items` entries and about `max_bytes`."""
    parts: list[list[dict]] = []
    current: list[dict] = []
    used = 0
    for entry in entries:
        cost = size(entry)
        if current and (len(current) >= items or used + cost > max_bytes):
            parts.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        parts.append(current)
    return parts

