"""Settings that mean the same thing in every OCPP version, stored once under neutral names.

1.6's HeartbeatInterval and 2.0.1's OCPPCommCtrlr.HeartbeatInterval are one value: whichever
version the CSMS speaks, it reads and changes the same setting, and a switch of versions
keeps it. Each adapter maps its own names onto these and checks values by its own rules; the
canonical text (`true`, `60`, `A,B`) is the same in both versions.
"""

from __future__ import annotations

from collections.abc import Mapping

from cpagent.core.model import CoreSettings

DEFAULTS: dict[str, str] = {
    "heartbeat_interval": "300",
    "sample_interval": "60",
    "sampled_measurands": "Energy.Active.Import.Register,Power.Active.Import",
    "ended_measurands": "",
    "aligned_interval": "900",
    "aligned_measurands": "Energy.Active.Import.Register",
    "aligned_ended_measurands": "",
    "connection_timeout": "60",
    "stop_on_ev_disconnect": "true",
    "stop_on_invalid_id": "true",
    "max_energy_on_invalid_id": "0",
    "local_authorize_offline": "true",
    "local_pre_authorize": "false",
    "offline_unknown_id": "false",
    "authorize_remote_start": "true",
    "auth_cache_enabled": "true",
    "local_list_enabled": "true",
    "message_attempts": "3",
    "message_attempt_interval": "60",
    "unlock_on_ev_disconnect": "true",
    "reset_retries": "1",
    "ping_interval": "30",
    # Renewing the charger's certificate: the wait for CertificateSigned after a
    # SignCertificate, doubled at each of the repeats (2.0.1 A02.FR.17, 1.6 whitepaper ed. 3).
    "cert_signing_wait_minimum": "60",
    "cert_signing_repeat_times": "3",
    # Secret, never reported: the basic-auth password the CSMS set, as the hex of its bytes,
    # since a 1.6 AuthorizationKey may be any bytes and a 2.0.1 BasicAuthPassword is text.
    "basic_auth_key": "",
}
SECRETS = frozenset({"basic_auth_key"})


def password_problem(text: str) -> str | None:
    """What breaks the password rules OCPP gives for HTTP basic auth (2.0.1 BasicAuthPassword,
    the 1.6 whitepaper's passwords): 16 to 40 printable ASCII characters, no spaces. The user
    name is always the charge point identity."""
    if not 16 <= len(text) <= 40:
        return f"takes 16 to 40 characters (got {len(text)})"
    if not (text.isascii() and text.isprintable()) or " " in text:
        return "takes printable ASCII characters without spaces"
    return None


def password_key(text: str) -> str:
    """The stored form of a password given as text."""
    return text.encode("utf-8").hex()


def password_bytes(key: str) -> bytes | None:
    """The password the stored form stands for; None when none is set."""
    if not key:
        return None
    try:
        return bytes.fromhex(key)
    except ValueError:
        return None


class SharedSettings:
    """The current values, with typed views; written through the store by the shell."""

    def __init__(self, stored: Mapping[str, str], initial: Mapping[str, str] | None = None):
        self.values = dict(DEFAULTS)
        self.values.update(initial or {})
        self.values.update({k: v for k, v in stored.items() if k in DEFAULTS})

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def integer(self, name: str) -> int:
        try:
            return int(self.values[name])
        except ValueError:
            return int(DEFAULTS[name])

    def flag(self, name: str) -> bool:
        return self.values[name] == "true"

    def items(self, name: str) -> list[str]:
        return [i for i in self.values[name].split(",") if i]

    def apply_to(self, core: CoreSettings) -> None:
        """What the core obeys of these; version-specific settings are the adapter's."""
        core.connection_timeout = float(self.integer("connection_timeout"))
        core.update_interval = float(self.integer("sample_interval")) \
            if self.items("sampled_measurands") else 0.0
        core.aligned_interval = float(self.integer("aligned_interval")) \
            if self.items("aligned_measurands") else 0.0
        core.stop_on_ev_disconnect = self.flag("stop_on_ev_disconnect")
        core.stop_on_invalid_id = self.flag("stop_on_invalid_id")
        energy = self.integer("max_energy_on_invalid_id")
        core.max_energy_on_invalid_id = float(energy) if energy > 0 else None
        core.local_authorize_offline = self.flag("local_authorize_offline")
        core.local_pre_authorize = self.flag("local_pre_authorize")
        core.allow_offline_unknown_id = self.flag("offline_unknown_id")
        core.authorize_remote_start = self.flag("authorize_remote_start")
        core.auth_cache_enabled = self.flag("auth_cache_enabled")
        core.local_list_enabled = self.flag("local_list_enabled")
        core.unlock_on_ev_disconnect = self.flag("unlock_on_ev_disconnect")
