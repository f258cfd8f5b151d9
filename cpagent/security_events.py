"""Security events, for every OCPP version: what happened, kept in a local security log and
queued durably for the CSMS (each adapter sends them as its SecurityEventNotification).

The kinds are neutral; each adapter owns the names its specification gives them
(1.6: FailedToAuthenticateAtCentralSystem, 2.0.1: FailedToAuthenticateAtCsms, ...).
"""

from __future__ import annotations

import contextlib
import os
from enum import StrEnum
from pathlib import Path

from cpagent.clock import format_time

LOG_LIMIT = 512 * 1024  # bytes of security log kept beside the rotated one


class SecurityEvent(StrEnum):
    STARTUP = "startup"  # the device started from power-up
    RESET_OR_REBOOT = "reset_or_reboot"  # it started after a reset or a reboot
    FAILED_TO_AUTHENTICATE_AT_CSMS = "failed_to_authenticate_at_csms"  # HTTP 401
    INVALID_CSMS_CERTIFICATE = "invalid_csms_certificate"  # the server's TLS certificate
    RECONFIGURATION = "reconfiguration_of_security_parameters"  # password, roots, profile
    SETTING_SYSTEM_TIME = "setting_system_time"  # the time was set from outside
    MEMORY_EXHAUSTION = "memory_exhaustion"  # the disk is full
    STORAGE_DAMAGED = "storage_damaged"  # a damaged database was set aside
    INVALID_CHARGER_CERTIFICATE = "invalid_charger_certificate"  # a CertificateSigned refused
    INVALID_TLS_VERSION = "invalid_tls_version"  # the CSMS speaks only TLS older than 1.2
    INVALID_TLS_CIPHER_SUITE = "invalid_tls_cipher_suite"  # no cipher suite in common
    INVALID_MESSAGES = "invalid_messages"  # frames from the CSMS that are not valid OCPP
    TAMPER_DETECTION = "tamper_detection_activated"  # a tamper input became active
    SECURITY_LOG_CLEARED = "security_log_was_cleared"  # old entries rotated out of the log


class SecurityLog:
    """The local security log: one line per event, mode 0600, bounded in size."""

    def __init__(self, path: Path, limit: int = LOG_LIMIT) -> None:
        self.path = path
        self.limit = limit

    def write(self, event: SecurityEvent, timestamp: float, info: str) -> bool:
        """Append one line; True when making room for it discarded the oldest entries (the
        previous rotated file), which is itself an event: SecurityLogWasCleared."""
        line = f"{format_time(timestamp)} {event.value} {info}".replace("\n", " ")[:600] + "\n"
        cleared = False
        with contextlib.suppress(OSError):  # a full disk must not stop the event going out
            if self.path.exists() and self.path.stat().st_size > self.limit:
                rotated = self.path.with_name(self.path.name + ".1")
                cleared = rotated.exists()
                os.replace(self.path, rotated)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        return cleared


def notification(names: dict[SecurityEvent, str], event: str | SecurityEvent, timestamp: float,
                 info: str) -> dict:
    """The SecurityEventNotification payload, alike in the 1.6 whitepaper and in 2.0.1, with
    the version's `names` for the kinds (an unknown kind goes as it was recorded)."""
    try:
        name = names[SecurityEvent(event)]
    except (KeyError, ValueError):
        name = str(event or "Unknown")
    return {"type": name[:50], "timestamp": format_time(timestamp), "techInfo": info[:255]}


def event_record(event: SecurityEvent, timestamp: float, info: str) -> dict:
    """The durable record of an event, as the queue keeps it (see `cpagent.records`)."""
    return {"event": event.value, "timestamp": timestamp, "tech_info": info[:255]}
