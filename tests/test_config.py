import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

import cpagent
from cpagent.config import (
    ChargePointIdentity,
    Config,
    ConfigError,
    CsmsSettings,
    DeviceSettings,
    LoggingSettings,
    StationSettings,
    check_main,
    demo_config,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "cpagent.toml"

BASE = {
    "charge_point": {"id": '"CP-1"'},
    "csms": {"url": '"ws://csms.local/ocpp"'},
}


def render(sections: dict) -> str:
    """TOML text from {section: {key: toml_literal}}; dotted sections become [a.b]."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {literal}" for key, literal in keys.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str | bytes, name: str = "cpagent.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def text_with(**overrides: dict) -> str:
    """BASE with keys added or replaced per section, e.g. csms={"call_timeout": "5"}."""
    return render({s: BASE.get(s, {}) | overrides.get(s, {}) for s in BASE | overrides})


def load_with(tmp_path: Path, **overrides: dict) -> Config:
    return load_config(write(tmp_path, text_with(**overrides)))


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    prefix = f"{path}: "
    assert all(e.startswith(prefix) for e in exc.value.errors), exc.value.errors
    return [e.removeprefix(prefix) for e in exc.value.errors]


# --- the shipped example


def test_example_file_loads():
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.charge_point.id == "CP-0001"
    assert config.csms.endpoint_url == "wss://csms.example.com/ocpp/CP-0001"
    assert config.hardware.pilot == DeviceSettings(driver="mock", options={})


def test_example_documents_every_key():
    text = EXAMPLE.read_text()
    sections = {
        "charge_point": ChargePointIdentity,
        "csms": CsmsSettings,
        "station": StationSettings,
        "logging": LoggingSettings,
    }
    for section, cls in sections.items():
        body = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert body, section
        for field in dataclasses.fields(cls):
            if field.name != "identity":  # derived, not a config key
                assert re.search(rf"^(# )?{field.name} = ", body[1], re.M), field.name
    for kind in ("pilot", "contactor", "meter", "card_reader"):
        assert re.search(rf'^\[hardware\.{kind}\]\n(#.*\n)*driver = "mock"', text, re.M)


def test_example_commented_values_are_valid(tmp_path):
    for name in ("ca.pem", "charger.pem", "charger.key"):
        (tmp_path / name).write_text("")
    text = EXAMPLE.read_text().replace("/etc/cpagent/csms-ca.pem", "ca.pem").replace(
        "/etc/cpagent/charger.", "charger.")
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    assert uncommented != text
    config = load_config(write(tmp_path, uncommented))
    assert config.csms.ca_file == tmp_path / "ca.pem"
    assert config.csms.client_key == tmp_path / "charger.key"
    assert config.csms.password == "change-me-to-16-or-more"
    assert config.charge_point.serial == "SN-0001"


# --- defaults and accepted values


def test_defaults(tmp_path):
    config = load_with(tmp_path)
    assert config.charge_point == ChargePointIdentity(
        id="CP-1", vendor="cpagent", model="cpagent", serial=None,
        firmware_version=cpagent.__version__,
    )
    assert config.csms == CsmsSettings(
        url="ws://csms.local/ocpp", ocpp_version="1.6", password=None, ca_file=None,
        secure_url=None,
        client_cert=None, client_key=None,
        call_timeout=30.0, reconnect_initial=1.0, reconnect_max=60.0, ping_interval=30,
        pong_timeout=10.0, max_frame_kb=1024, compression=False, identity="CP-1",
    )
    assert config.station == StationSettings(
        connectors=1, data_dir=Path("/var/lib/cpagent"), max_current=32.0, phases=3,
        free_vend=False, free_vend_id_tag="FREEVEND",
        control_socket=Path("/var/lib/cpagent/control.sock"), time_source="auto", max_data_mb=512,
    )
    for kind in ("pilot", "contactor", "meter", "card_reader"):
        assert getattr(config.hardware, kind) == DeviceSettings(driver="mock", options={})
    assert config.logging == LoggingSettings(level="INFO")


def test_boundary_values_and_normalisation(tmp_path):
    config = load_with(
        tmp_path,
        csms={"call_timeout": "5", "reconnect_initial": "2", "reconnect_max": "2",
              "ping_interval": "0", "password": '"secret-of-16-chars"'},
        station={"connectors": "8", "max_current": "6", "phases": "1", "free_vend": "true"},
        logging={"level": '"debug"'},
    )
    assert config.csms.call_timeout == 5.0
    assert type(config.csms.call_timeout) is float  # int accepted where a float is expected
    assert config.csms.reconnect_max == config.csms.reconnect_initial == 2.0
    assert config.csms.ping_interval == 0
    assert config.csms.password == "secret-of-16-chars"
    assert "secret" not in repr(config)
    assert (config.station.connectors, config.station.max_current) == (8, 6.0)
    assert (config.station.phases, config.station.free_vend) == (1, True)
    assert config.logging.level == "DEBUG"


def test_relative_paths_resolve_against_file_dir(tmp_path):
    (tmp_path / "ca.pem").write_text("")
    config = load_with(tmp_path, csms={"ca_file": '"ca.pem"'}, station={"data_dir": '"state"'})
    assert config.csms.ca_file == tmp_path / "ca.pem"
    assert config.station.data_dir == tmp_path / "state"
    assert config.station.control_socket == tmp_path / "state" / "control.sock"


def test_parse_config_without_base_dir_keeps_relative_paths():
    config = parse_config({
        "charge_point": {"id": "CP-1"},
        "csms": {"url": "ws://h"},
        "station": {"data_dir": "state", "control_socket": "/run/cp.sock"},
    })
    assert config.station.data_dir == Path("state")
    assert config.station.control_socket == Path("/run/cp.sock")
    assert config.source is None


def test_driver_options_pass_through(tmp_path):
    meter = {"driver": '"mock"', "port": '"/dev/ttyUSB0"'}
    config = load_with(tmp_path, **{"hardware.meter": meter})
    assert config.hardware.meter == DeviceSettings(driver="mock", options={"port": "/dev/ttyUSB0"})


def test_config_is_frozen(tmp_path):
    config = load_with(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.csms.url = "ws://other"


# --- endpoint URL


@pytest.mark.parametrize(
    ("url", "identity", "expected"),
    [
        ("ws://h/ocpp", "CP-1", "ws://h/ocpp/CP-1"),
        ("ws://h/ocpp/", "CP-1", "ws://h/ocpp/CP-1"),
        ("wss://h:8443", "CP-1", "wss://h:8443/CP-1"),
        ("ws://h/ocpp", "CP 1/ä", "ws://h/ocpp/CP%201%2F%C3%A4"),
        ("ws://h/ocpp", "a%b?c#d", "ws://h/ocpp/a%25b%3Fc%23d"),
    ],
)
def test_endpoint_url_encodes_identity(url, identity, expected):
    csms = load_config(EXAMPLE).csms
    assert dataclasses.replace(csms, url=url, identity=identity).endpoint_url == expected


def test_endpoint_url_from_parsed_identity(tmp_path):
    config = load_with(tmp_path, charge_point={"id": '"CP/ä#1"'})
    assert config.csms.endpoint_url == "ws://csms.local/ocpp/CP%2F%C3%A4%231"


# --- one bad value -> exactly one error naming the key, the value and what is allowed

BAD_VALUES = [
    # (section, key, toml literal, fragment describing what is allowed)
    ("charge_point", "id", '""', "1 to 48 printable characters"),
    ("charge_point", "id", '"CP 1"', "without spaces or ':'"),
    ("charge_point", "id", '"CP:1"', "without spaces or ':'"),
    ("charge_point", "id", '"CP\\u0007"', "printable"),
    ("charge_point", "id", '"' + "x" * 49 + '"', "1 to 48"),
    ("charge_point", "id", "42", "1 to 48"),
    ("charge_point", "vendor", '"' + "v" * 21 + '"', "1 to 20 characters"),
    ("charge_point", "vendor", '""', "1 to 20 characters"),
    ("charge_point", "model", '"' + "m" * 21 + '"', "1 to 20 characters"),
    ("charge_point", "serial", '"' + "s" * 26 + '"', "1 to 25 characters"),
    ("charge_point", "firmware_version", '"' + "f" * 51 + '"', "1 to 50 characters"),
    ("csms", "url", '"http://example.com"', "must start with ws:// or wss://"),
    ("csms", "url", '"example.com"', "must start with ws:// or wss://"),
    ("csms", "url", '"ws://"', "must name a host"),
    ("csms", "url", '"ws://h/ocpp?x=1"', "must not have a query"),
    ("csms", "url", '"ws://h/ocpp#x"', "fragment"),
    ("csms", "url", '"ws://h:99999/"', "not a valid URL"),
    ("csms", "url", '"ws://h /ocpp"', "must not contain whitespace"),
    ("csms", "url", '"ws://CP-1:pw@h/"', "set csms.password instead"),
    ("csms", "url", "80", "ws:// or wss://"),
    ("csms", "ocpp_version", '"1.5"', "must be one of '1.6'"),
    ("csms", "ocpp_version", "1.6", "must be one of '1.6'"),
    ("csms", "password", '""', "non-empty string"),
    ("csms", "password", '"hunter2"', "16 to 40 characters (got 7)"),
    ("csms", "password", '"sixteen chars here"', "without spaces"),
    ("csms", "ca_file", "3", "path string"),
    ("csms", "call_timeout", "0", "number from 1 to 300"),
    ("csms", "call_timeout", "301", "number from 1 to 300"),
    ("csms", "call_timeout", '"30"', "number from 1 to 300"),
    ("csms", "call_timeout", "true", "number from 1 to 300"),
    ("csms", "call_timeout", "nan", "number from 1 to 300"),
    ("csms", "reconnect_initial", "0.05", "number from 0.1 to 60"),
    ("csms", "reconnect_max", "3601", "number from 1 to 3600"),
    ("csms", "ping_interval", "-1", "integer from 0 to 3600"),
    ("csms", "ping_interval", "1.5", "integer from 0 to 3600"),
    ("csms", "ping_interval", "false", "integer from 0 to 3600"),
    ("csms", "pong_timeout", "inf", "number from 1 to 300"),
    ("station", "connectors", "0", "must be an integer from 1 to 8"),
    ("station", "connectors", "9", "must be an integer from 1 to 8"),
    ("station", "connectors", "true", "must be an integer from 1 to 8"),
    ("station", "connectors", "2.0", "must be an integer from 1 to 8"),
    ("station", "data_dir", '""', "non-empty path"),
    ("station", "max_current", "5.9", "number from 6 to 80"),
    ("station", "max_current", "81", "number from 6 to 80"),
    ("station", "phases", "2", "must be one of 1, 3"),
    ("station", "phases", "true", "must be one of 1, 3"),
    ("station", "free_vend", "1", "true or false"),
    ("station", "free_vend", '"yes"', "true or false"),
    ("station", "free_vend_id_tag", '""', "1 to 20 characters"),
    ("station", "free_vend_id_tag", '"' + "t" * 21 + '"', "1 to 20 characters"),
    ("station", "time_source", '"ntp"', "'auto', 'system', 'csms'"),
    ("logging", "level", '"verbose"', "'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ("logging", "level", "10", "'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ("hardware.pilot", "driver", '"gpio"', "must be one of 'mock'"),
    ("hardware.card_reader", "driver", "1", "must be one of 'mock'"),
]


@pytest.mark.parametrize(("section", "key", "literal", "allowed"), BAD_VALUES)
def test_bad_value_is_reported(tmp_path, section, key, literal, allowed):
    value = tomllib.loads(f"v = {literal}")["v"]
    [error] = errors_of(tmp_path, text_with(**{section: {key: literal}}))
    assert error.startswith(f"{section}.{key}: ")
    assert allowed in error
    assert error.endswith(f" (got {value!r})")


def test_error_messages_exact(tmp_path):
    text = text_with(csms={"url": '"http://example.com"', "ulr": '"x"'},
                     station={"connectors": "0"})
    assert errors_of(tmp_path, text) == [
        "csms.ulr: unknown key (did you mean 'csms.url'?)",
        "csms.url: must start with ws:// or wss:// (got 'http://example.com')",
        "station.connectors: must be an integer from 1 to 8 (got 0)",
    ]


def test_ocpp_versions(tmp_path):
    for version in ("1.6", "2.0.1", "auto"):
        config = load_config(write(tmp_path, text_with(csms={"ocpp_version": f'"{version}"'})))
        assert config.csms.ocpp_version == version
    [error] = errors_of(tmp_path, text_with(csms={"ocpp_version": '"2.1"'}))
    assert error == (
        "csms.ocpp_version: OCPP 2.1 is not supported yet by this build; "
        "must be one of '1.6', '2.0.1', 'auto' (got '2.1')"
    )


def test_required_keys(tmp_path):
    assert errors_of(tmp_path, "") == ["charge_point.id: required", "csms.url: required"]


def test_reconnect_max_below_initial(tmp_path):
    text = text_with(csms={"reconnect_initial": "10", "reconnect_max": "5"})
    assert errors_of(tmp_path, text) == [
        "csms.reconnect_max: must be >= csms.reconnect_initial (10) (got 5)"
    ]


def test_ca_file_must_exist(tmp_path):
    text = text_with(csms={"ca_file": '"missing.pem"'})
    assert errors_of(tmp_path, text) == [
        f"csms.ca_file: must be an existing file (got '{tmp_path / 'missing.pem'}')"
    ]


def test_control_socket_path_too_long(tmp_path):
    [error] = errors_of(tmp_path, text_with(station={"data_dir": '"/' + "d" * 100 + '"'}))
    assert error.startswith("station.control_socket: must be at most 107 bytes")
    assert "d" * 100 + "/control.sock'" in error


# --- unknown keys and tables


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[csmss]\n", "csmss: unknown table (did you mean 'csms'?)"),
        ("[station]\nconectors = 2\n",
         "station.conectors: unknown key (did you mean 'station.connectors'?)"),
        ("[hardware.piolt]\n", "hardware.piolt: unknown table (did you mean 'hardware.pilot'?)"),
        ("[hardware.pilot]\ndrivr = 'mock'\n",
         "hardware.pilot.drivr: unknown key (did you mean 'hardware.pilot.driver'?)"),
        ("[logging]\nzzz = 1\n", "logging.zzz: unknown key (known: level)"),
    ],
)
def test_unknown_names(tmp_path, text, expected):
    assert errors_of(tmp_path, render(BASE) + text) == [expected]


def test_section_that_is_not_a_table(tmp_path):
    # Only the table error: no follow-on "csms.url: required".
    text = 'csms = "ws://h"\n' + render({"charge_point": BASE["charge_point"]})
    assert errors_of(tmp_path, text) == ["csms: must be a table (got 'ws://h')"]


def test_all_errors_reported_together(tmp_path):
    text = render({
        "charge_point": {"id": '"CP 1"', "vendor": '""'},
        "csms": {"url": '"http://x"', "call_timeout": "0"},
        "station": {"phases": "2"},
        "logging": {"levle": '"INFO"'},
    })
    errors = errors_of(tmp_path, text)
    keys = [e.split(":")[0] for e in errors]
    assert keys == [
        "charge_point.id", "charge_point.vendor", "csms.url", "csms.call_timeout",
        "station.phases", "logging.levle",
    ]


def test_config_error_str_joins_errors():
    with pytest.raises(ConfigError) as exc:
        parse_config({})
    assert str(exc.value) == "charge_point.id: required\ncsms.url: required"


# --- file-level errors


def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    errors = errors_of(tmp_path, '[csms]\nurl = "ws://h"\nid = \n')
    assert len(errors) == 1
    assert errors[0].startswith("TOML syntax error at line 3, column 6: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.errors == [f"{path}: file not found"]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert exc.value.errors[0].startswith(f"{tmp_path}: cannot read: ")


def test_not_utf8(tmp_path):
    assert errors_of(tmp_path, b"[csms]\nurl = '\xff'\n") == ["not valid UTF-8 text"]


# --- demo config


def test_demo_config(tmp_path):
    config = demo_config(tmp_path, "ws://127.0.0.1:9000/ocpp")
    assert config.charge_point.id == "DEMO-CP-1"
    assert config.csms.endpoint_url == "ws://127.0.0.1:9000/ocpp/DEMO-CP-1"
    assert config.station.connectors == 2
    assert config.station.data_dir == tmp_path
    assert config.station.control_socket == tmp_path / "control.sock"
    hardware = config.hardware
    assert [d.driver for d in (hardware.pilot, hardware.contactor, hardware.meter,
                               hardware.card_reader)] == ["mock"] * 4


def test_demo_config_rejects_bad_url(tmp_path):
    with pytest.raises(ConfigError) as exc:
        demo_config(tmp_path, "http://127.0.0.1:9000")
    assert exc.value.errors == [
        "csms.url: must start with ws:// or wss:// (got 'http://127.0.0.1:9000')"
    ]


# --- check_main


def test_check_main_ok(tmp_path, capsys):
    path = write(tmp_path, text_with(csms={"password": '"hunter2-hunter2-hunter2"'},
                                     station={"connectors": "2"}))
    assert check_main(str(path)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{path}: OK"
    for expected in ("CP-1", "ws://csms.local/ocpp/CP-1", "1.6", "connectors: 2",
                     "pilot=mock", "card_reader=mock"):
        assert expected in out
    assert "hunter2" not in out


def test_check_main_errors(tmp_path, capsys):
    path = write(tmp_path, render({"charge_point": {"id": '"CP 1"'},
                                   "station": {"connectors": "0"}}))
    assert check_main(str(path)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert f"{path}: csms.url: required" in lines


def test_check_main_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.toml"
    assert check_main(str(path)) == 1
    assert capsys.readouterr().out == f"{path}: file not found\n"


def test_two_drivers_on_one_serial_port_is_a_config_error(tmp_path):
    path = tmp_path / "shared.toml"
    path.write_text('[charge_point]\nid = "HW-1"\n[csms]\nurl = "ws://127.0.0.1:9/ocpp"\n'
                    f'[station]\ndata_dir = "{tmp_path}"\n'
                    '[hardware.pilot]\ndriver = "evse_wb"\nport = "/dev/ttyUSB0"\n'
                    '[hardware.contactor]\ndriver = "none"\n'
                    '[hardware.meter]\ndriver = "modbus"\nmodel = "sdm630"\n'
                    'port = "/dev/ttyUSB0"\nunit = 2\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert any("hardware.meter.port: /dev/ttyUSB0 is also used by hardware.pilot" in e
               for e in raised.value.errors)


def test_two_board_pilots_on_one_port_and_connector_overrides_are_checked(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('[charge_point]\nid = "HW-2"\n[csms]\nurl = "ws://127.0.0.1:9/ocpp"\n'
                    f'[station]\nconnectors = 2\ndata_dir = "{tmp_path}"\n'
                    '[hardware.pilot]\ndriver = "evse_wb"\nport = "/dev/ttyUSB0"\n'
                    '[hardware.pilot.connector_2]\nunit_id = 2\n'
                    '[hardware.contactor]\ndriver = "none"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert any("hardware.pilot.port: /dev/ttyUSB0 is also used by hardware.pilot (connector 1)"
               in e for e in raised.value.errors)


def test_driver_options_are_checked_at_load(tmp_path):
    path = tmp_path / "bad-driver.toml"
    path.write_text('[charge_point]\nid = "HW-1"\n[csms]\nurl = "ws://127.0.0.1:9/ocpp"\n'
                    f'[station]\ndata_dir = "{tmp_path}"\n'
                    '[hardware.meter]\ndriver = "modbus"\nmodel = "sdm631"\nport = "COM3"\n'
                    '[hardware.card_reader]\ndriver = "rdm6300"\nport = "/dev/ttyAMA0"\n'
                    'hold_of = 2\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = "\n".join(raised.value.errors)
    assert "hardware.meter.model: must be one of" in text and "did you mean 'sdm630'" in text
    assert "hardware.meter.port: must be a serial device path like /dev/ttyUSB0 (got 'COM3')" \
        in text
    assert "hardware.card_reader.hold_of: unknown option (did you mean 'hold_off'?)" in text


def test_security_profile_3_needs_certificate_key_and_wss(tmp_path):
    (tmp_path / "c.pem").write_text("")
    base = '[charge_point]\nid = "CP-1"\n[csms]\n'
    only_cert = errors_of(tmp_path, base + f'url = "wss://x/ocpp"\nclient_cert = '
                                            f'"{tmp_path / "c.pem"}"\n')
    assert any("needs both" in e for e in only_cert)
    plain = errors_of(tmp_path, base + f'url = "ws://x/ocpp"\nclient_cert = '
                                       f'"{tmp_path / "c.pem"}"\nclient_key = '
                                       f'"{tmp_path / "c.pem"}"\n')
    assert any("needs a wss:// url" in e for e in plain)
