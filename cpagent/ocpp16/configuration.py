"""OCPP 1.6 configuration keys: what GetConfiguration reports and ChangeConfiguration may change.

Each key is a row of data: its type, default, whether the CSMS may write it, the values it
accepts. A key that means what a 2.0.1 variable means names the shared setting it is
(`shared`), so both versions read and write one stored value; the others are kept among the
1.6 adapter's own settings. Keys are CiString: any spelling finds a key, answers use its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cpagent.certificates import MAX_CERTIFICATES
from cpagent.core.limits import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from cpagent.settings import DEFAULTS, SharedSettings

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
    kind: str  # "bool" | "int" | "csl" | "text" | "key" (hex-encoded secret)
    default: str | Callable[[int], str] | None = None  # None: the shared setting's
    readonly: bool = False
    minimum: int = 0
    maximum: int = 2**31 - 1
    allowed: frozenset[str] | None = None  # for csl: the items allowed
    max_items: int | None = None
    shared: str | None = None  # the shared setting this key is
    write_only: bool = False  # a secret: set, never reported
    live: bool = False  # read from the running station (Configuration.live), not stored

    def normalise(self, value: str, connectors: int) -> str:
        """The canonical wire form of `value`, or InvalidValue."""
        text = value.strip()
        if self.kind == "bool":
            if text.lower() not in ("true", "false"):
                raise InvalidValue(f"{self.name} takes true or false")
            return text.lower()
        if self.kind == "text":
            if len(text) > self.maximum:
                raise InvalidValue(f"{self.name} takes at most {self.maximum} characters")
            return text
        if self.kind == "key":
            # Security whitepaper: the password as 16 to 20 bytes, hex-encoded.
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raise InvalidValue(f"{self.name} takes hexadecimal digits") from None
            if not 16 <= len(raw) <= 20:
                raise InvalidValue(f"{self.name} takes 16 to 20 bytes (32 to 40 hex digits)")
            return raw.hex()
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


def _measurands(name: str, shared: str) -> Key:
    return Key(name, "csl", allowed=frozenset(SUPPORTED_MEASURANDS),
               max_items=MEASURAND_LIST_MAX, shared=shared)


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("AllowOfflineTxForUnknownId", "bool", shared="offline_unknown_id"),
        Key("AuthorizationCacheEnabled", "bool", shared="auth_cache_enabled"),
        Key("AuthorizeRemoteTxRequests", "bool", shared="authorize_remote_start"),
        Key("AdditionalRootCertificateCheck", "bool", "false", readonly=True),
        Key("AuthorizationKey", "key", shared="basic_auth_key", write_only=True),
        Key("CertificateStoreMaxLength", "int", str(MAX_CERTIFICATES), readonly=True),
        Key("CertSigningRepeatTimes", "int", maximum=100, shared="cert_signing_repeat_times"),
        Key("CertSigningWaitMinimum", "int", minimum=1, maximum=86400,
            shared="cert_signing_wait_minimum"),
        # The organization in the charger's certificate signing requests (whitepaper 1.4).
        Key("ChargeProfileMaxStackLevel", "int", str(MAX_STACK_LEVEL), readonly=True),
        Key("ChargingScheduleAllowedChargingRateUnit", "csl", "Current,Power", readonly=True),
        Key("ChargingScheduleMaxPeriods", "int", str(MAX_PERIODS), readonly=True),
        # Phase switching needs hardware this station does not have.
        Key("ConnectorSwitch3to1PhaseSupported", "bool", "false", readonly=True),
        Key("CpoName", "text", "", maximum=50),
        Key("ClockAlignedDataInterval", "int", maximum=86400, shared="aligned_interval"),
        Key("ConnectionTimeOut", "int", minimum=1, maximum=3600, shared="connection_timeout"),
        Key("ConnectorPhaseRotation", "csl", lambda n: ",".join(
            f"{c}.Unknown" for c in range(n + 1)), max_items=9),
        Key("ConnectorPhaseRotationMaxLength", "int", "9", readonly=True),
        Key("GetConfigurationMaxKeys", "int", "64", readonly=True),
        Key("HeartbeatInterval", "int", maximum=86400, shared="heartbeat_interval"),
        Key("LocalAuthListEnabled", "bool", shared="local_list_enabled"),
        Key("LocalAuthListMaxLength", "int", str(LOCAL_LIST_MAX), readonly=True),
        Key("LocalAuthorizeOffline", "bool", shared="local_authorize_offline"),
        Key("LocalPreAuthorize", "bool", shared="local_pre_authorize"),
        Key("MaxChargingProfilesInstalled", "int", str(MAX_PROFILES), readonly=True),
        Key("MaxEnergyOnInvalidId", "int", maximum=1_000_000,
            shared="max_energy_on_invalid_id"),
        _measurands("MeterValuesAlignedData", "aligned_measurands"),
        Key("MeterValuesAlignedDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        _measurands("MeterValuesSampledData", "sampled_measurands"),
        Key("MeterValuesSampledDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        Key("MeterValueSampleInterval", "int", maximum=86400, shared="sample_interval"),
        Key("NumberOfConnectors", "int", lambda n: str(n), readonly=True),
        # Reservation profile: connector 0 reserves any connector of the charge point.
        Key("ReserveConnectorZeroSupported", "bool", "true", readonly=True),
        Key("ResetRetries", "int", maximum=10, shared="reset_retries"),
        # Security whitepaper: raised over OCPP, never lowered; reported as the link is.
        Key("SecurityProfile", "int", "0", maximum=3, live=True),
        Key("SendLocalListMaxLength", "int", str(SEND_LOCAL_LIST_MAX), readonly=True),
        Key("StopTransactionOnEVSideDisconnect", "bool", shared="stop_on_ev_disconnect"),
        Key("StopTransactionOnInvalidId", "bool", shared="stop_on_invalid_id"),
        _measurands("StopTxnAlignedData", "aligned_ended_measurands"),
        Key("StopTxnAlignedDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        _measurands("StopTxnSampledData", "ended_measurands"),
        Key("StopTxnSampledDataMaxLength", "int", str(MEASURAND_LIST_MAX), readonly=True),
        Key("SupportedFeatureProfiles", "csl",
            "Core,LocalAuthListManagement,RemoteTrigger,Reservation,SmartCharging",
            readonly=True),
        Key("SupportedFeatureProfilesMaxLength", "int", "6", readonly=True),
        Key("TransactionMessageAttempts", "int", minimum=1, maximum=100,
            shared="message_attempts"),
        Key("TransactionMessageRetryInterval", "int", maximum=86400,
            shared="message_attempt_interval"),
        Key("UnlockConnectorOnEVSideDisconnect", "bool", shared="unlock_on_ev_disconnect"),
        Key("WebSocketPingInterval", "int", maximum=3600, shared="ping_interval"),
    ]
}
_BY_FOLDED = {name.casefold(): name for name in KEYS}


def canonical_key(name: str) -> str | None:
    """The key's own spelling: 1.6 keys are CiString, so `connectiontimeout` names
    ConnectionTimeOut; None for a key this charge point does not have."""
    return _BY_FOLDED.get(name.casefold())


class Configuration:
    """The live key values: shared ones from the shared settings, the rest the adapter's."""

    def __init__(self, connectors: int, shared: SharedSettings,
                 own: Mapping[str, str],
                 live: Mapping[str, Callable[[], str]] | None = None) -> None:
        self.connectors = connectors
        self.shared = shared
        self.live = dict(live or {})
        self.own: dict[str, str] = {}
        for key in KEYS.values():
            if key.shared is not None or key.readonly or key.live:
                continue
            default = key.default(connectors) if callable(key.default) else key.default
            self.own[key.name] = default or ""
            if key.name in own:
                # A stored value from an older build that no longer fits keeps the default.
                with contextlib.suppress(InvalidValue):
                    self.own[key.name] = key.normalise(own[key.name], connectors)

    def value(self, name: str) -> str:
        key = KEYS[name]
        if key.write_only:
            return ""  # never reported, whoever asks
        if key.live:
            read = self.live.get(name)
            return read() if read is not None else str(key.default or "")
        if key.shared is not None:
            value = self.shared[key.shared]
            # A shared value set through another version may not fit this one's rules.
            try:
                return key.normalise(value, self.connectors)
            except InvalidValue:
                return key.normalise(DEFAULTS[key.shared], self.connectors)
        if key.readonly:
            return key.default(self.connectors) if callable(key.default) else key.default or ""
        return self.own[name]

    def check(self, name: str, value: str) -> str:
        """The canonical value to store; PermissionError or InvalidValue say why not."""
        key = KEYS[name]
        if key.readonly:
            raise PermissionError(name)
        return key.normalise(value, self.connectors)

    def integer(self, name: str) -> int:
        return int(self.value(name))

    def flag(self, name: str) -> bool:
        return self.value(name) == "true"

    def items(self, name: str) -> list[str]:
        return [i for i in self.value(name).split(",") if i]
