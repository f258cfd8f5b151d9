"""The words of OCPP 2.0.1 for the core's neutral ones, and back."""

from __future__ import annotations

from typing import Any

from cpagent.clock import parse_time
from cpagent.core.model import (
    AuthInfo,
    AuthStatus,
    ChargingState,
    ConnectorStatus,
    IdToken,
    ReadingContext,
    StopReason,
    TokenType,
    Trigger,
    TxPoint,
)
from cpagent.host import BootReason
from cpagent.security_events import SecurityEvent
from hal.interfaces import Fault

MAX_ID_TOKEN = 36  # IdTokenType.idToken is identifierString 36

TOKEN_TYPES = {
    TokenType.CENTRAL: "Central",
    TokenType.EMAID: "eMAID",
    TokenType.ISO14443: "ISO14443",
    TokenType.ISO15693: "ISO15693",
    TokenType.KEY_CODE: "KeyCode",
    TokenType.LOCAL: "Local",
    TokenType.MAC_ADDRESS: "MacAddress",
    TokenType.NO_AUTHORIZATION: "NoAuthorization",
}
_TOKEN_TYPES_BACK = {v: k for k, v in TOKEN_TYPES.items()}

AUTH_STATUS = {
    "Accepted": AuthStatus.ACCEPTED,
    "Blocked": AuthStatus.BLOCKED,
    "ConcurrentTx": AuthStatus.CONCURRENT_TX,
    "Expired": AuthStatus.EXPIRED,
    "Invalid": AuthStatus.INVALID,
    "NoCredit": AuthStatus.NO_CREDIT,
    "NotAllowedTypeEVSE": AuthStatus.NOT_ALLOWED_TYPE_EVSE,
    "NotAtThisLocation": AuthStatus.NOT_AT_THIS_LOCATION,
    "NotAtThisTime": AuthStatus.NOT_AT_THIS_TIME,
    "Unknown": AuthStatus.UNKNOWN,
}
AUTH_STATUS_WIRE = {v: k for k, v in AUTH_STATUS.items()}

CHARGING_STATES = {
    ChargingState.CHARGING: "Charging",
    ChargingState.EV_CONNECTED: "EVConnected",
    ChargingState.SUSPENDED_EV: "SuspendedEV",
    ChargingState.SUSPENDED_EVSE: "SuspendedEVSE",
    ChargingState.IDLE: "Idle",
}

TRIGGERS = {
    Trigger.AUTHORIZED: "Authorized",
    Trigger.CABLE_PLUGGED_IN: "CablePluggedIn",
    Trigger.CHARGING_RATE_CHANGED: "ChargingRateChanged",
    Trigger.CHARGING_STATE_CHANGED: "ChargingStateChanged",
    Trigger.DEAUTHORIZED: "Deauthorized",
    Trigger.ENERGY_LIMIT_REACHED: "EnergyLimitReached",
    Trigger.EV_COMMUNICATION_LOST: "EVCommunicationLost",
    Trigger.EV_CONNECT_TIMEOUT: "EVConnectTimeout",
    Trigger.METER_VALUE_CLOCK: "MeterValueClock",
    Trigger.METER_VALUE_PERIODIC: "MeterValuePeriodic",
    Trigger.TIME_LIMIT_REACHED: "TimeLimitReached",
    Trigger.TRIGGER: "Trigger",
    Trigger.UNLOCK_COMMAND: "UnlockCommand",
    Trigger.STOP_AUTHORIZED: "StopAuthorized",
    Trigger.EV_DEPARTED: "EVDeparted",
    Trigger.EV_DETECTED: "EVDetected",
    Trigger.REMOTE_STOP: "RemoteStop",
    Trigger.REMOTE_START: "RemoteStart",
    Trigger.ABNORMAL_CONDITION: "AbnormalCondition",
    Trigger.RESET_COMMAND: "ResetCommand",
}

_REASONS = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.HARD_RESET: "ImmediateReset",
    StopReason.SOFT_RESET: "ImmediateReset",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.REBOOT: "Reboot",
    StopReason.DE_AUTHORIZED: "DeAuthorized",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.ENERGY_LIMIT_REACHED: "EnergyLimitReached",
    StopReason.STOPPED_BY_EV: "StoppedByEV",
    StopReason.TIMEOUT: "Timeout",
}
# 2.0.1 names some faults as reasons of their own.
_FAULT_REASONS = {
    Fault.GROUND_FAILURE: "GroundFault",
    Fault.OVER_CURRENT: "OvercurrentFault",
    Fault.OVER_VOLTAGE: "PowerQuality",
    Fault.UNDER_VOLTAGE: "PowerQuality",
    Fault.EMERGENCY_STOP: "EmergencyStop",
}

CONTEXTS = {
    ReadingContext.TRANSACTION_BEGIN: "Transaction.Begin",
    ReadingContext.PERIODIC: "Sample.Periodic",
    ReadingContext.CLOCK: "Sample.Clock",
    ReadingContext.TRANSACTION_END: "Transaction.End",
    ReadingContext.TRIGGER: "Trigger",
}

BOOT_REASONS = {
    BootReason.POWER_UP: "PowerUp",
    BootReason.REMOTE_RESET: "RemoteReset",
    BootReason.LOCAL_RESET: "LocalReset",
    BootReason.FIRMWARE_UPDATE: "FirmwareUpdate",
    BootReason.WATCHDOG: "Watchdog",
    BootReason.SCHEDULED_RESET: "ScheduledReset",
    BootReason.TRIGGERED: "Triggered",
    BootReason.APPLICATION_RESET: "ApplicationReset",
    BootReason.UNKNOWN: "Unknown",
}

TX_POINTS = {
    "EVConnected": TxPoint.EV_CONNECTED,
    "Authorized": TxPoint.AUTHORIZED,
    "PowerPathClosed": TxPoint.POWER_PATH_CLOSED,
    "EnergyTransfer": TxPoint.ENERGY_TRANSFER,
}
# Where this hardware can tell; ParkingBayOccupancy and DataSigned it cannot.
TX_POINT_VALUES = tuple(TX_POINTS)


def stopped_reason(reason: StopReason | None, cause: Fault | None) -> str:
    if reason in (StopReason.FAULT, StopReason.EMERGENCY_STOP) and cause is not None:
        return _FAULT_REASONS.get(cause, "Other")
    return _REASONS.get(reason, "Other") if reason else "Local"


def connector_status(status: ConnectorStatus, vehicle_present: bool) -> str:
    """2.0.1 has five words: what 1.6 tells apart while a car is there is Occupied."""
    match status:
        case ConnectorStatus.FAULTED:
            return "Faulted"
        case ConnectorStatus.UNAVAILABLE:
            return "Unavailable"
        case ConnectorStatus.RESERVED:
            return "Reserved"
        case ConnectorStatus.AVAILABLE:
            return "Available"
        case ConnectorStatus.PREPARING:
            # A card waiting for its car leaves the connector free.
            return "Occupied" if vehicle_present else "Available"
    return "Occupied"


def token_to_wire(token: IdToken) -> dict:
    kind = TOKEN_TYPES.get(token.type, "ISO14443") if token.type else "ISO14443"
    value = "" if token.type is TokenType.NO_AUTHORIZATION else token.value
    return {"idToken": value, "type": kind}


def token_from_wire(data: Any) -> IdToken | None:
    if not isinstance(data, dict) or not isinstance(data.get("idToken"), str):
        return None
    return IdToken(data["idToken"], _TOKEN_TYPES_BACK.get(data.get("type")))


def id_token_info(data: Any) -> AuthInfo:
    """Read an idTokenInfo tolerantly: an unknown status counts as Invalid, a bad date as
    none."""
    if not isinstance(data, dict):
        return AuthInfo(AuthStatus.INVALID)
    status = AUTH_STATUS.get(data.get("status"), AuthStatus.INVALID)
    expiry = None
    if isinstance(data.get("cacheExpiryDateTime"), str):
        try:
            expiry = parse_time(data["cacheExpiryDateTime"])
        except ValueError:
            expiry = None
    evses = data.get("evseId")
    evse_ids = tuple(e for e in evses if isinstance(e, int)) if isinstance(evses, list) else ()
    return AuthInfo(status, token_from_wire(data.get("groupIdToken")), expiry, evse_ids)


def info_to_wire(info: AuthInfo) -> dict:
    from cpagent.clock import format_time

    data: dict[str, Any] = {"status": AUTH_STATUS_WIRE[info.status]}
    if info.expiry is not None:
        data["cacheExpiryDateTime"] = format_time(info.expiry)
    if info.group is not None:
        data["groupIdToken"] = token_to_wire(info.group)
    if info.evse_ids:
        data["evseId"] = list(info.evse_ids)
    return data


# OCPP 2.0.1's security event names (part 2, appendix: Security Events).
SECURITY_EVENTS = {
    SecurityEvent.STARTUP: "StartupOfTheDevice",
    SecurityEvent.RESET_OR_REBOOT: "ResetOrReboot",
    SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS: "FailedToAuthenticateAtCsms",
    SecurityEvent.INVALID_CSMS_CERTIFICATE: "InvalidCsmsCertificate",
    SecurityEvent.RECONFIGURATION: "ReconfigurationOfSecurityParameters",
    SecurityEvent.SETTING_SYSTEM_TIME: "SettingSystemTime",
    SecurityEvent.MEMORY_EXHAUSTION: "MemoryExhaustion",
    SecurityEvent.STORAGE_DAMAGED: "StorageDamaged",
    SecurityEvent.INVALID_CHARGER_CERTIFICATE: "InvalidChargingStationCertificate",
    SecurityEvent.INVALID_TLS_VERSION: "InvalidTLSVersion",
    SecurityEvent.INVALID_TLS_CIPHER_SUITE: "InvalidTLSCipherSuite",
    SecurityEvent.INVALID_MESSAGES: "InvalidMessages",
    SecurityEvent.TAMPER_DETECTION: "TamperDetectionActivated",
    SecurityEvent.SECURITY_LOG_CLEARED: "SecurityLogWasCleared",
}
