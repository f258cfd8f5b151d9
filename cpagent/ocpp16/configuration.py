"""OCPP 1.6 configuration keys: what GetConfiguration reports and ChangeConfiguration may change.

Each key is a row of data: its type, default, whether the CSMS may write it, the values it
accepts and which core setting it drives. Values are kept as the strings the wire carries and
persisted in the store, so a CSMS's change survives a reboot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cpagent.core.model import CoreSettings

SUPPORTED_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "Current.Offered",
)
MEASURAND_LIST_MAX = len(SUPPORTED_MEASURANDS)
LOCAL_LIST_MAX = 20_000  # entries kept; each costs ~200 bytes of memory
SEND_LOCAL_LIST_MAX = 1_000  # entries in one SendLocalList
PHASE_ROTATIONS = {"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"}


class InvalidValue(ValueError):
    pass


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # "bool" | "int" | "csl"
    default: str | Callable[[int], str]
    readonly: bool = False
    minimum: int = 0
    maximum: int = 2**31 - 1
    allowed: frozenset[str] | None = None  # for csl: the items allowed
    max_items: int | None = None
    core_field: str | None = None  # the CoreSettings field it drives

    def normalise(self, value: str, connectors: int) -> str:
        """The canonical wire form of `value`, or InvalidValue."""
        text = value.strip()
        if self.kind == "bool":
            if text.lower() not in ("true", "false"):
                raise InvalidValue(f"{self.name} takes true or false")
            return text.lower()
        if self.kind == "int":
            try:
                number = int(text)
            except ValueError:
                raise InvalidValue(f"{self.name} takes a whole number") from None
            if not self.minimum <= number <= self.maximum:
                raise InvalidValue(f"{self.name} must be {self.minimum}..{self.maximum}")
            return str(number)
        items = [item.strip() for item in text.split(",") if item.strip()]
        if self.max_items is not None and len(items) > self.max_items:
            raise InvalidValue(f"{self.name} takes at most {self.max_items} items")
        if self.name == "ConnectorPhaseRotation":
            return _phase_rotation(items, connectors)
        if self.allowed is not None:
            unknown = [i for i in items if i not in self.allowed]
            if unknown:
                raise InvalidValue(f"{self.name}: unsupported {', '.join(unknown)}")
        return ",".join(items)


def _phase_rotation(items: list[str], connectors: int) -> str:
    for item in items:
        number, _, rotation = item.partition(".")
        if not number.isdigit() or int(number) > connectors or rotation not in PHASE_ROTATIONS:
            raise InvalidValue(f"ConnectorPhaseRotation: bad entry {item!r}")
    return ",".join(items)


def _measurands(name: str, default: str, core_field: str | None = None) -> Key:
    return Key(name, "csl", default, allowed=frozenset(SUPPORTED_MEASURANDS),
               max_items=MEASURAND_LIST_MAX, core_field=core_field)


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("AllowOfflineTxForUnknownId", "bool", "false", core_field="allow_offline_unknown_id"),
        Key("AuthorizationCacheEnabled", "bool", "true", core_field="auth_cache_enabled"),
        Key("AuthorizeRemoteTxRequests", "bool", "true", core_field="authorize_remote_start"),
        Key("ClockAlignedDataInterval", "int", "900", maximum=86400,
            core_field="clock_aligned_interval"),
        Key("ConnectionTimeOut", "int", "60", minimum=1, maximum=3600,
            core_field="connection_timeout"),
        Key("ConnectorPhaseRotation", "csl", lambda n: ",".join(
            f"{c}.Unknown" for c in range(n + 1)), max_items=9),
        Key("ConnectorPhaseRotationMaxLength", "int", "9", readonly=True),
        Key("GetConfigurationMaxKeys", "int", "64", readonly=True),
        Key("HeartbeatInterval", "int", "300", maximum=86400),
        Key("LocalAuthListEnabled", "bool", "true", core_field="local_list_enabled"),
        Key("LocalAuthListMaxLength", "int", str(LOCAL_LIST_MAX), readonly=True),
        Key("LocalAuthorizeOffline", "bool", "true", core_field="local_authorize_offline"),
        Key("LocalPreAuthorize", "bool", "false", core_field="local_pre_authorize"),
        Key("MaxEnergyOnInvalidId", "int", "0", maximum=1_000_000,
            core_field="max_energy_on_invalid_id"),
        _measurands("MeterValuesAlignedData", "Energy.Active.Import.Register"),
        Key("MeterValuesAlignedDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        _measurands("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import"),
        Key("MeterValuesSampledDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        Key("MeterValueSampleInterval", "int", "60", maximum=86400,
            core_field="meter_sample_interval"),
        Key("NumberOfConnectors", "int", lambda n: str(n), readonly=True),
        Key("ResetRetries", "int", "1", maximum=10),
        Key("SendLocalListMaxLength", "int", str(SEND_LOCAL_LIST_MAX), readonly=True),
        Key("StopTransactionOnEVSideDisconnect", "bool", "true",
            core_field="stop_on_ev_disconnect"),
        Key("StopTransactionOnInvalidId", "bool", "true", core_field="stop_on_invalid_id"),
        _measurands("StopTxnAlignedData", ""),
        Key("StopTxnAlignedDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        _measurands("StopTxnSampledData", ""),
        Key("StopTxnSampledDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        Key("SupportedFeatureProfiles", "csl", "Core,LocalAuthListManagement", readonly=True),
        Key("SupportedFeatureProfilesMaxLength", "int", "6", readonly=True),
        Key("TransactionMessageAttempts", "int", "3", minimum=1, maximum=100),
        Key("TransactionMessageRetryInterval", "int", "60", maximum=86400),
        Key("UnlockConnectorOnEVSideDisconnect", "bool", "true",
            core_field="unlock_on_ev_disconnect"),
        Key("WebSocketPingInterval", "int", "30", maximum=3600),
    ]
}


_BY_FOLDED = {name.casefold(): name for name in KEYS}


def canonical_key(name: str) -> str | None:
    """The key's own spelling: 1.6 keys are CiString, so `connectiontimeout` names
    ConnectionTimeOut; None for a key this charge point does not have."""
    return _BY_FOLDED.get(name.casefold())


@dataclass
class Configuration:
    """The live key values, with the typed views the adapter and the core read."""

    connectors: int
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, connectors: int, stored: dict[str, str],
             initial: dict[str, str] | None = None) -> Configuration:
        config = cls(connectors)
        for key in KEYS.values():
            default = key.default(connectors) if callable(key.default) else key.default
            config.values[key.name] = default
        for source in (initial or {}, stored):
            for name, value in source.items():
                key = KEYS.get(name)
                if key is None or key.readonly:
                    continue
                # A stored value from an older build that no longer fits keeps the default.
                with contextlib.suppress(InvalidValue):
                    config.values[name] = key.normalise(value, connectors)
        return config

    def change(self, name: str, value: str) -> str:
        """Validate and apply; returns the canonical value. KeyError / PermissionError /
        InvalidValue say why not."""
        key = KEYS[name]
        if key.readonly:
            raise PermissionError(name)
        canonical = key.normalise(value, self.connectors)
        self.values[name] = canonical
        return canonical

    def integer(self, name: str) -> int:
        return int(self.values[name])

    def flag(self, name: str) -> bool:
        return self.values[name] == "true"

    def items(self, name: str) -> list[str]:
        return [i for i in self.values[name].split(",") if i]

    def apply_to(self, settings: CoreSettings) -> None:
        for key in KEYS.values():
            if key.core_field is None:
                continue
            current = getattr(settings, key.core_field)
            if isinstance(current, bool):
                setattr(settings, key.core_field, self.flag(key.name))
            else:
                setattr(settings, key.core_field, float(self.integer(key.name)))
