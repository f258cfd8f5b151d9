"""The words of OCPP 1.6 for the core's neutral ones, and back."""

from __future__ import annotations

from typing import Any

from cpagent.clock import parse_time
from cpagent.core.model import AuthInfo, AuthStatus, ConnectorStatus, IdToken, StopReason
from cpagent.security_events import SecurityEvent
from hal.interfaces import Fault

MAX_ID_TAG = 20  # IdToken is CiString20Type

STATUS = {
    ConnectorStatus.AVAILABLE: "Available",
    ConnectorStatus.PREPARING: "Preparing",
    ConnectorStatus.CHARGING: "Charging",
    ConnectorStatus.SUSPENDED_EV: "SuspendedEV",
    ConnectorStatus.SUSPENDED_EVSE: "SuspendedEVSE",
    ConnectorStatus.FINISHING: "Finishing",
    ConnectorStatus.RESERVED: "Reserved",
    ConnectorStatus.UNAVAILABLE: "Unavailable",
    ConnectorStatus.FAULTED: "Faulted",
}

ERROR_CODES = {
    Fault.GROUND_FAILURE: "GroundFailure",
    Fault.OVER_CURRENT: "OverCurrentFailure",
    Fault.OVER_VOLTAGE: "OverVoltage",
    Fault.UNDER_VOLTAGE: "UnderVoltage",
    Fault.HIGH_TEMPERATURE: "HighTemperature",
    Fault.POWER_SWITCH_FAILURE: "PowerSwitchFailure",
    Fault.EV_COMMUNICATION_ERROR: "EVCommunicationError",
    Fault.POWER_METER_FAILURE: "PowerMeterFailure",
    Fault.READER_FAILURE: "ReaderFailure",
    Fault.CONNECTOR_LOCK_FAILURE: "ConnectorLockFailure",
    Fault.INTERNAL_ERROR: "InternalError",
}

# 1.6 has fewer reasons than the core: what it lacks becomes Other.
STOP_REASONS = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.HARD_RESET: "HardReset",
    StopReason.SOFT_RESET: "SoftReset",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.REBOOT: "Reboot",
    StopReason.DE_AUTHORIZED: "DeAuthorized",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.UNLOCK_COMMAND: "UnlockCommand",
}

AUTH_STATUS = {
    "Accepted": AuthStatus.ACCEPTED,
    "Blocked": AuthStatus.BLOCKED,
    "Expired": AuthStatus.EXPIRED,
    "Invalid": AuthStatus.INVALID,
    "ConcurrentTx": AuthStatus.CONCURRENT_TX,
}


def stop_reason(reason: StopReason | None) -> str:
    return STOP_REASONS.get(reason, "Other") if reason else "Local"


def id_tag(value: Any) -> IdToken | None:
    """An idTag of the wire as a token: 1.6 gives no type."""
    return IdToken(value) if isinstance(value, str) and value else None


def id_tag_info(data: Any) -> AuthInfo:
    """Read an idTagInfo tolerantly: an unknown status counts as Invalid, a bad date as none."""
    if not isinstance(data, dict):
        return AuthInfo(AuthStatus.INVALID)
    status = AUTH_STATUS.get(data.get("status"), AuthStatus.INVALID)
    expiry = None
    if isinstance(data.get("expiryDate"), str):
        try:
            expiry = parse_time(data["expiryDate"])
        except ValueError:
            expiry = None
    return AuthInfo(status, id_tag(data.get("parentIdTag")), expiry)


# The security whitepaper's names for the security events (its Appendix 1).
SECURITY_EVENTS = {
    SecurityEvent.STARTUP: "StartupOfTheDevice",
    SecurityEvent.RESET_OR_REBOOT: "ResetOrReboot",
    SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS: "FailedToAuthenticateAtCentralSystem",
    SecurityEvent.INVALID_CSMS_CERTIFICATE: "InvalidCentralSystemCertificate",
    SecurityEvent.RECONFIGURATION: "ReconfigurationOfSecurityParameters",
    SecurityEvent.SETTING_SYSTEM_TIME: "SettingSystemTime",
    SecurityEvent.MEMORY_EXHAUSTION: "MemoryExhaustion",
    SecurityEvent.STORAGE_DAMAGED: "StorageDamaged",
    SecurityEvent.INVALID_CHARGER_CERTIFICATE: "InvalidChargePointCertificate",
    SecurityEvent.INVALID_TLS_VERSION: "InvalidTLSVersion",
    SecurityEvent.INVALID_TLS_CIPHER_SUITE: "InvalidTLSCipherSuite",
    SecurityEvent.INVALID_MESSAGES: "InvalidMessages",
    SecurityEvent.TAMPER_DETECTION: "TamperDetectionActivated",
    SecurityEvent.SECURITY_LOG_CLEARED: "SecurityLogWasCleared",
}
