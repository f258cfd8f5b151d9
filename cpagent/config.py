"""Agent configuration: one TOML file, validated at load into frozen dataclasses.

Validation collects every problem instead of stopping at the first, so an installer
fixing a file on a charger gets the whole list in one `cpagent config check` run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cpagent import __version__
from cpagent.settings import password_problem
from hal.factory import DRIVERS as HAL_DRIVERS

__all__ = [
    "DRIVERS",
    "ChargePointIdentity",
    "Config",
    "ConfigError",
    "CsmsSettings",
    "DeviceSettings",
    "HardwareSettings",
    "LoggingSettings",
    "StationSettings",
    "check_main",
    "data_dir_problem",
    "demo_config",
    "load_config",
    "parse_config",
]

# Drivers accepted per [hardware.<kind>] table (the first is the default): hal's list.
DRIVERS: dict[str, tuple[str, ...]] = HAL_DRIVERS


class ConfigError(Exception):
    """Invalid or unreadable configuration; `errors` holds one message per problem."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class ChargePointIdentity:
    id: str
    vendor: str
    model: str
    serial: str | None
    firmware_version: str


@dataclass(frozen=True)
class CsmsSettings:
    url: str
    ocpp_version: str
    password: str | None = field(repr=False)  # keep it out of logged reprs
    ca_file: Path | None
    secure_url: str | None  # where a profile raised over OCPP to 2 or 3 connects (wss://)
    client_cert: Path | None
    client_key: Path | None
    call_timeout: float
    reconnect_initial: float
    reconnect_max: float
    ping_interval: int
    pong_timeout: float
    max_frame_kb: int
    compression: bool
    identity: str

    @property
    def endpoint_url(self) -> str:
        # OCPP-J puts the identity in the last path segment, so '/' etc. must be escaped.
        return self.url.rstrip("/") + "/" + quote(self.identity, safe="")

    @property
    def secure_endpoint_url(self) -> str:
        """Where a security profile raised over OCPP (2 or 3) connects: `secure_url`, else the
        configured URL with wss:// (the same host and port, as most CSMSs serve both)."""
        base = self.secure_url or ("wss://" + self.url.split("://", 1)[1]
                                   if self.url.startswith("ws://") else self.url)
        return base.rstrip("/") + "/" + quote(self.identity, safe="")


@dataclass(frozen=True)
class StationSettings:
    connectors: int
    data_dir: Path
    max_current: float
    phases: int
    free_vend: bool
    free_vend_id_tag: str
    control_socket: Path
    time_source: str
    max_data_mb: int
    voltage: float = 230.0  # phase to neutral
    site_limit: float | None = None  # amps per phase for all EVSEs together
    time_zone: str = ""  # IANA name; "": the system's


@dataclass(frozen=True)
class DeviceSettings:
    driver: str
    options: dict


@dataclass(frozen=True)
class HardwareSettings:
    pilot: DeviceSettings
    contactor: DeviceSettings
    meter: DeviceSettings
    card_reader: DeviceSettings
    lock: DeviceSettings
    inputs: DeviceSettings


@dataclass(frozen=True)
class LoggingSettings:
    level: str


@dataclass(frozen=True)
class Config:
    charge_point: ChargePointIdentity
    csms: CsmsSettings
    station: StationSettings
    hardware: HardwareSettings
    logging: LoggingSettings
    source: Path | None


# --- value checks: each returns the normalised value or raises _Bad("what is allowed")


class _Bad(ValueError):
    pass


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        # type() rather than isinstance(): TOML `true` must not pass as 1.
        if type(v) is int and lo <= v <= hi:
            return v
        raise _Bad(f"must be an integer from {lo} to {hi}")

    return check


def _num(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if type(v) in (int, float) and lo <= v <= hi:  # NaN fails the range test
            return float(v)
        raise _Bad(f"must be a number from {lo:g} to {hi:g}")

    return check


def _text(lo: int, hi: int) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if isinstance(v, str) and lo <= len(v) <= hi:
            return v
        raise _Bad(f"must be a string of {lo} to {hi} characters")

    return check


def _choice(*allowed: Any, upper: bool = False) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if upper and isinstance(v, str):
            v = v.upper()
        if type(v) in {type(a) for a in allowed} and v in allowed:
            return v
        raise _Bad("must be one of " + ", ".join(map(repr, allowed)))

    return check


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _Bad("must be true or false")


def _time_zone(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad("must be a time zone name such as \"Europe/Berlin\", or \"\" for the "
                   "system's")
    if v:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Bad(f"{v!r} is not a time zone this system knows (such as "
                       "\"Europe/Berlin\"; see /usr/share/zoneinfo)") from None
    return v


def _path(v: Any) -> Path:
    if isinstance(v, str) and v and "\0" not in v:
        return Path(v)
    raise _Bad("must be a non-empty path string")


def _password(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad("must be a non-empty string")
    problem = password_problem(v)
    if problem is not None:
        raise _Bad(f"{problem}: OCPP basic-auth passwords are 16 to 40 printable ASCII "
                   "characters")
    return v


def _identity(v: Any) -> str:
    # Becomes the URL path segment and the HTTP basic-auth user name, where ':' would
    # end the user name early.
    if (
        isinstance(v, str)
        and 1 <= len(v) <= 48
        and v.isprintable()
        and not any(c.isspace() or c == ":" for c in v)
    ):
        return v
    raise _Bad("must be 1 to 48 printable characters without spaces or ':'")


def _ws_url(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad("must be a ws:// or wss:// URL string")
    # urlsplit silently drops some whitespace, so check before it can.
    if any(c.isspace() for c in v):
        raise _Bad("must not contain whitespace")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as e:
        raise _Bad(f"is not a valid URL: {e}") from None
    if parts.scheme not in ("ws", "wss"):
        raise _Bad("must start with ws:// or wss://")
    if not parts.hostname:
        raise _Bad("must name a host")
    # The identity is appended as a path segment, which a query or fragment would swallow.
    if "?" in v or "#" in v:
        raise _Bad("must not have a query (?) or fragment (#)")
    if "@" in parts.netloc:
        raise _Bad("must not contain user:password@ (the user is charge_point.id; "
                   "set csms.password instead)")
    return v


_OCPP_SUPPORTED = ("1.6", "2.0.1", "auto")
_OCPP_KNOWN = ("2.0", "2.1")


def _ocpp_version(v: Any) -> str:
    allowed = "must be one of " + ", ".join(map(repr, _OCPP_SUPPORTED))
    if isinstance(v, str) and v in _OCPP_SUPPORTED:
        return v
    if isinstance(v, str) and v in _OCPP_KNOWN:
        raise _Bad(f"OCPP {v} is not supported yet by this build; {allowed}")
    raise _Bad(allowed)


# --- schema: section -> key -> (check, default); _REQUIRED marks keys without a default

_REQUIRED: Any = object()

_SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "charge_point": {
        "id": (_identity, _REQUIRED),
        "vendor": (_text(1, 20), "cpagent"),
        "model": (_text(1, 20), "cpagent"),
        "serial": (_text(1, 25), None),
        "firmware_version": (_text(1, 50), __version__),
    },
    "csms": {
        "url": (_ws_url, _REQUIRED),
        "ocpp_version": (_ocpp_version, "1.6"),
        "password": (_password, None),
        "ca_file": (_path, None),
        "secure_url": (_ws_url, None),
        "client_cert": (_path, None),
        "client_key": (_path, None),
        "call_timeout": (_num(1, 300), 30.0),
        "reconnect_initial": (_num(0.1, 60), 1.0),
        "reconnect_max": (_num(1, 3600), 60.0),
        "ping_interval": (_int(0, 3600), 30),
        "pong_timeout": (_num(1, 300), 10.0),
        "max_frame_kb": (_int(64, 16384), 1024),
        "compression": (_bool, False),
    },
    "station": {
        "connectors": (_int(1, 8), 1),
        "data_dir": (_path, Path("/var/lib/cpagent")),
        "max_current": (_num(6, 80), 32.0),
        "phases": (_choice(1, 3), 3),
        "free_vend": (_bool, False),
        "free_vend_id_tag": (_text(1, 20), "FREEVEND"),
        "control_socket": (_path, None),  # None: data_dir / "control.sock"
        "time_source": (_choice("auto", "system", "csms"), "auto"),
        "max_data_mb": (_int(8, 65536), 512),
        "voltage": (_num(100, 277), 230.0),
        "site_limit": (_num(6, 2000), None),
        "time_zone": (_time_zone, ""),
    },
    "logging": {
        "level": (_choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True), "INFO"),
    },
}

# sun_path is 108 bytes including the terminating NUL; longer paths fail only at bind().
_MAX_SOCKET_PATH = 107


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _unknown(table: dict, known: list[str], prefix: str, errors: list[str]) -> None:
    for key, value in table.items():
        if key in known:
            continue
        what = "table" if isinstance(value, dict) else "key"
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{prefix}{close[0]}'?" if close else "known: " + ", ".join(known)
        errors.append(f"{prefix}{key}: unknown {what} ({hint})")


def _table(parent: dict, key: str, name: str, errors: list[str]) -> dict | None:
    value = parent.get(key, {})
    if isinstance(value, dict):
        return value
    errors.append(f"{name}: must be a table (got {_show(value)})")
    return None


def _read(data: dict, section: str, base_dir: Path | None, errors: list[str]) -> dict:
    schema = _SCHEMA[section]
    table = _table(data, section, section, errors)
    if table is None:
        return {}
    _unknown(table, list(schema), f"{section}.", errors)
    out: dict[str, Any] = {}
    for key, (check, default) in schema.items():
        if key not in table:
            if default is _REQUIRED:
                errors.append(f"{section}.{key}: required")
            else:
                out[key] = default
            continue
        try:
            value = check(table[key])
        except _Bad as e:
            errors.append(f"{section}.{key}: {e} (got {_show(table[key])})")
            continue
        if isinstance(value, Path) and base_dir is not None:
            value = base_dir / value  # an absolute value replaces base_dir
        out[key] = value
    return out


def _device(hardware: dict, kind: str, errors: list[str]) -> DeviceSettings | None:
    name = f"hardware.{kind}"
    table = _table(hardware, kind, name, errors)
    if table is None:
        return None
    options = dict(table)
    driver = options.pop("driver", DRIVERS[kind][0])
    # Other keys are driver parameters the driver itself validates; only catch a
    # misspelt `driver`, which would otherwise silently fall back to the mock.
    for key in options:
        if difflib.get_close_matches(key, ["driver"], n=1):
            errors.append(f"{name}.{key}: unknown key (did you mean '{name}.driver'?)")
    try:
        driver = _choice(*DRIVERS[kind])(driver)
    except _Bad as e:
        errors.append(f"{name}.driver: {e} (got {_show(driver)})")
        return None
    return DeviceSettings(driver=driver, options=options)


def parse_config(data: dict, *, base_dir: Path | None = None) -> Config:
    """Validate already-parsed TOML data; relative paths are resolved against base_dir."""
    errors: list[str] = []
    _unknown(data, [*_SCHEMA, "hardware"], "", errors)
    cp, csms, station, log = (_read(data, s, base_dir, errors) for s in _SCHEMA)

    hardware = _table(data, "hardware", "hardware", errors)
    devices: dict[str, DeviceSettings | None] = {}
    if hardware is not None:
        _unknown(hardware, list(DRIVERS), "hardware.", errors)
        devices = {kind: _device(hardware, kind, errors) for kind in DRIVERS}

    lo, hi = csms.get("reconnect_initial"), csms.get("reconnect_max")
    if lo is not None and hi is not None and hi < lo:
        errors.append(
            f"csms.reconnect_max: must be >= csms.reconnect_initial ({lo:g}) (got {hi:g})"
        )
    if csms.get("ca_file") is not None and not csms["ca_file"].is_file():
        errors.append(f"csms.ca_file: must be an existing file (got '{csms['ca_file']}')")
    for key in ("client_cert", "client_key"):
        if csms.get(key) is not None and not csms[key].is_file():
            errors.append(f"csms.{key}: must be an existing file (got '{csms[key]}')")
    if (csms.get("client_cert") is None) != (csms.get("client_key") is None):
        errors.append("csms.client_cert and csms.client_key: security profile 3 needs both "
                      "the certificate and its private key")
    elif csms.get("client_cert") is not None and not str(csms.get("url", "")).startswith(
            "wss://"):
        errors.append("csms.client_cert: a client certificate (security profile 3) needs a "
                      "wss:// url")
    if csms.get("secure_url") is not None and not csms["secure_url"].startswith("wss://"):
        errors.append(f"csms.secure_url: must be a wss:// URL, where the charger connects "
                      f"when the CSMS raises its security profile (got "
                      f"'{csms['secure_url']}')")
    if "data_dir" in station and "control_socket" in station:
        sock = station["control_socket"] or station["data_dir"] / "control.sock"
        station["control_socket"] = sock
        if len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
            errors.append(
                f"station.control_socket: must be at most {_MAX_SOCKET_PATH} bytes, "
                f"the Unix socket path limit (got '{sock}')"
            )

    if not errors:
        choice = HardwareSettings(**devices)  # type: ignore[arg-type]
        if any(d.driver not in ("mock", "none") for d in devices.values() if d):
            from hal.factory import check_hardware

            errors += check_hardware(choice, station["connectors"], station["phases"])
    if errors:
        raise ConfigError(errors)
    return Config(
        charge_point=ChargePointIdentity(**cp),
        csms=CsmsSettings(**csms, identity=cp["id"]),
        station=StationSettings(**station),
        hardware=HardwareSettings(**devices),
        logging=LoggingSettings(**log),
        source=None,
    )


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a TOML file; every error message starts with the file name."""
    shown = os.fspath(path)
    path = Path(path).absolute()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: not valid UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{shown}: tables or arrays nested too deeply to be a cpagent "
                          "configuration") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, not a configuration file") from None
    except tomllib.TOMLDecodeError as e:
        m = _TOML_POSITION.match(str(e))
        where = f" at line {m[2]}, column {m[3]}" if m else ""
        raise ConfigError(f"{shown}: TOML syntax error{where}: {m[1] if m else e}") from None
    try:
        config = parse_config(data, base_dir=path.parent)
    except ConfigError as e:
        raise ConfigError([f"{shown}: {msg}" for msg in e.errors]) from None
    return dataclasses.replace(config, source=path)


def demo_config(data_dir: Path, csms_url: str, ocpp_version: str = "1.6") -> Config:
    """The all-mock configuration `cpagent demo` runs on."""
    return parse_config({
        "charge_point": {"id": "DEMO-CP-1", "vendor": "cpagent", "model": "demo"},
        "csms": {"url": csms_url, "ocpp_version": ocpp_version},
        "station": {"connectors": 2, "data_dir": os.fspath(data_dir)},
        # Energy fast-forwarded, so a few seconds of charging show real figures.
        "hardware": {"meter": {"driver": "mock", "speedup": 120}},
    })


def data_dir_problem(directory: Path) -> str | None:
    """What would keep the agent from keeping its data in `directory`, without creating it."""
    if directory.exists() and not directory.is_dir():
        return f"station.data_dir: {directory} is a file, not a directory"
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        return (f"station.data_dir: {probe} is not writable by this user (uid {os.getuid()}); "
                "fix its owner or mode, or choose another data_dir")
    if probe == directory and (directory / "cpagent.db").exists() and not os.access(
            directory / "cpagent.db", os.R_OK | os.W_OK):
        return f"station.data_dir: {directory / 'cpagent.db'} is not readable and writable"
    return None


def check_main(path: str) -> int:
    """`cpagent config check FILE`: print OK and a summary, or the errors; return exit code."""
    try:
        config = load_config(path)
    except ConfigError as e:
        print(*e.errors, sep="\n")
        return 1
    problem = data_dir_problem(config.station.data_dir)
    if problem:
        print(f"{path}: {problem}")
        return 1
    hw = config.hardware
    drivers = " ".join(f"{kind}={getattr(hw, kind).driver}" for kind in DRIVERS)
    print(f"{path}: OK")
    print(f"  id:         {config.charge_point.id}")
    print(f"  url:        {config.csms.endpoint_url}")
    print(f"  ocpp:       {config.csms.ocpp_version}")
    print(f"  connectors: {config.station.connectors}")
    print(f"  drivers:    {drivers}")
    return 0
