"""OCPP security profiles 2 and 3 against the independent CSMS (npm ocpp-rpc, strict mode), in
OCPP 1.6 and 2.0.1: TLS is Node's own (`https.createServer`, TLS 1.2 or newer), the password
is checked by the server's auth callback, and with profile 3 Node's TLS layer refuses any
charger whose client certificate is missing or issued by another CA. The test PKI is made at
test time (tests/pki.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pki
import pytest
from dialects import DIALECTS
from harness import RunningAgent, make_config
from ocpp_rpc_csms import OcppRpcCsms
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from cpagent.clock import Clock

VERSIONS = ["1.6", "2.0.1"]
PASSWORD = "s3cret:with:colons"  # ocpp-rpc splits user:password on the identity, not a colon


@dataclass
class Material:
    """A CSMS root that signed the server's certificate, and a charger CA that signed
    CP-TEST's client certificate, as PEM files."""

    folder: Path
    csms_root: Path  # what the agent trusts (csms.ca_file)
    server_cert: Path
    server_key: Path
    charger_ca: Path  # what the CSMS trusts for client certificates
    charger_cert: Path
    charger_key: Path


@pytest.fixture
def tls(tmp_path: Path) -> Material:
    folder = tmp_path / "pki"
    folder.mkdir()
    csms_root, chargers = pki.root("CSMS Root"), pki.root("Charger CA")
    (folder / "csms-root.pem").write_text(csms_root.pem)
    (folder / "charger-ca.pem").write_text(chargers.pem)
    server_cert, server_key = pki.leaf(csms_root).write(folder, "server")
    charger_cert, charger_key = pki.leaf(chargers, "CP-TEST").write(folder, "charger")
    return Material(folder, folder / "csms-root.pem", server_cert, server_key,
                    folder / "charger-ca.pem", charger_cert, charger_key)


def csms_for(version: str, tls: Material, *, profile: int,
             tls_max_version: str | None = None) -> OcppRpcCsms:
    return OcppRpcCsms(subprotocols=(DIALECTS[version].subprotocol,),
                       tls_cert=tls.server_cert, tls_key=tls.server_key,
                       client_ca=tls.charger_ca if profile == 3 else None,
                       tls_max_version=tls_max_version,
                       password=PASSWORD if profile == 2 else None)


@contextlib.asynccontextmanager
async def run_agent(csms: OcppRpcCsms, folder: Path, version: str,
                    **settings: Any) -> AsyncIterator[RunningAgent]:
    config = make_config(folder, csms.url, csms={"ocpp_version": version, **settings})
    charger = RunningAgent(config, Clock("system"))
    await charger.start()
    try:
        yield charger
    finally:
        await charger.stop()


async def last_error(charger: RunningAgent, timeout: float = 5.0) -> str:
    assert charger.agent is not None
    async with asyncio.timeout(timeout):
        while not (error := charger.agent.transport.last_error):
            await asyncio.sleep(0.01)
    return error


async def boot_accepted(csms: OcppRpcCsms, say: Any) -> None:
    """The BootNotification was answered Accepted and the charger went on to report in."""
    boot = await csms.wait_for_call("BootNotification")
    await say.wait_status("Available", 1)
    answers = [r.payload for r in csms.records
               if r.kind == "result" and r.unique_id == boot.unique_id]
    assert answers and answers[0]["status"] == "Accepted", answers


def connection(csms: OcppRpcCsms) -> dict:
    conn = csms.connection("CP-TEST")
    assert conn is not None, "CP-TEST is not connected"
    assert conn["tls"] is not None, conn
    assert conn["tls"]["protocol"] in ("TLSv1.2", "TLSv1.3"), conn
    return conn


# --------------------------------------------------------------------------- the wrapper


def test_tls_options_go_together(tmp_path):
    with pytest.raises(ValueError):
        OcppRpcCsms(tls_cert=tmp_path / "server.pem")
    with pytest.raises(ValueError):
        OcppRpcCsms(client_ca=tmp_path / "chargers.pem")
    with pytest.raises(ValueError):
        OcppRpcCsms(tls_max_version="TLSv1.2")


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_the_password_is_checked_on_plain_ws_too():
    # Profile 1, with a bare websocket client: the auth callback alone, no agent involved.
    async with OcppRpcCsms(password=PASSWORD) as csms:
        assert csms.url.startswith("ws://")
        for headers in ({}, _basic("CP1", "wrong"), _basic("someone-else", PASSWORD)):
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{csms.url}/CP1", subprotocols=[Subprotocol("ocpp1.6")],
                              additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 401
        async with connect(f"{csms.url}/CP1", subprotocols=[Subprotocol("ocpp1.6")],
                           additional_headers=_basic("CP1", PASSWORD), open_timeout=5):
            await csms.wait_connected("CP1")
            conn = csms.connection("CP1")
            assert conn is not None and conn["basic_auth"] is True and conn["tls"] is None


# --------------------------------------------------------------------------- profile 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_2_boots_and_charges(version, tls, tmp_path):
    async with csms_for(version, tls, profile=2) as csms:
        assert csms.url.startswith("wss://127.0.0.1:")
        say = DIALECTS[version](csms)
        async with run_agent(csms, tmp_path / "agent", version,
                             ca_file=str(tls.csms_root), password=PASSWORD) as charger:
            await boot_accepted(csms, say)
            conn = connection(csms)
            assert conn["tls"]["protocol"] == "TLSv1.3"  # the newest both sides speak
            assert conn["basic_auth"] is True
            assert conn["tls"]["client_cert"] is None
            assert conn["protocol"] == DIALECTS[version].subprotocol
            assert charger.agent.transport.endpoint.security_profile == 2

            # A whole session over the TLS link: card, plug, charge, card, unplug.
            mark = csms.mark()
            charger.mock.swipe("04A2B3C4")
            await csms.wait_for_call("Authorize", after=mark)
            charger.mock.plug(1)
            start = await say.wait_start(after=mark)
            await say.wait_charging(after=mark)
            charger.mock.swipe("04A2B3C4")
            end = await say.wait_end(after=mark)
            assert say.end_reason(end) == "Local"
            assert say.meter_stop(end) >= say.meter_start(start)
            charger.mock.unplug(1)
            await say.wait_status("Available", after=csms.mark() - 1)
            assert charger.agent.transport.last_error is None
        assert csms.tls_refusals == []
        assert csms.bad_frames == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_2_with_the_wrong_password_is_refused(version, tls, tmp_path):
    async with csms_for(version, tls, profile=2) as csms:
        async with run_agent(csms, tmp_path / "agent", version, ca_file=str(tls.csms_root),
                             password="not-the-password-0001") as charger:
            error = await last_error(charger)
            assert "HTTP 401" in error and "csms.password" in error, error
            assert csms.calls() == []
            assert not csms.is_connected("CP-TEST")
        # TLS itself was fine: it is the password the server refused.
        assert csms.tls_refusals == []


# --------------------------------------------------------------------------- profile 3

# Node's newest TLS (1.3 here), and TLS 1.2, which many CSMSs in the field still top out at.
# The two refuse a client certificate differently: in TLS 1.3 the server judges it after the
# charger's handshake is done, in TLS 1.2 during the handshake.
TLS_VERSIONS = {"TLS 1.3": None, "TLS 1.2": "TLSv1.2"}
NEGOTIATED = {"TLS 1.3": "TLSv1.3", "TLS 1.2": "TLSv1.2"}


@pytest.mark.parametrize("tls_version", list(TLS_VERSIONS))
@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_3_boots_with_the_client_certificate(version, tls_version, tls, tmp_path):
    async with csms_for(version, tls, profile=3,
                        tls_max_version=TLS_VERSIONS[tls_version]) as csms:
        say = DIALECTS[version](csms)
        async with run_agent(csms, tmp_path / "agent", version,
                             ca_file=str(tls.csms_root),
                             client_cert=str(tls.charger_cert),
                             client_key=str(tls.charger_key)) as charger:
            await boot_accepted(csms, say)
            conn = connection(csms)
            assert conn["tls"]["protocol"] == NEGOTIATED[tls_version]
            assert conn["tls"]["authorized"] is True
            assert conn["tls"]["client_cert"]["subject_cn"] == "CP-TEST"
            assert conn["tls"]["client_cert"]["issuer_cn"] == "Charger CA"
            assert conn["basic_auth"] is False  # profile 3 sends no password
            assert charger.agent.transport.endpoint.security_profile == 3
            # The charger says so too, through the strict-mode CSMS.
            if version == "2.0.1":
                answer = await csms.call("CP-TEST", "GetVariables", {"getVariableData": [{
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "SecurityProfile"}}]})
                assert answer["getVariableResult"][0]["attributeValue"] == "3"
            else:
                answer = await csms.call("CP-TEST", "GetConfiguration",
                                         {"key": ["SecurityProfile"]})
                assert [k["value"] for k in answer["configurationKey"]] == ["3"]
            assert charger.agent.transport.last_error is None
        assert csms.tls_refusals == []
        assert csms.bad_frames == []


# Node destroys the socket, without a TLS alert, when a client certificate fails verification
# (its tlsClientError then reads "socket hang up"; authorizationError says why); a charger
# without a certificate is refused by OpenSSL itself, with an alert.
REFUSED_BY_NODE = {"unknown CA": "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
                   "none": "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE"}


@pytest.mark.parametrize("presented", ["unknown CA", "none"])
@pytest.mark.parametrize("tls_version", list(TLS_VERSIONS))
@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_3_refuses_a_charger_it_cannot_verify(version, tls_version, presented,
                                                            tls, tmp_path):
    settings: dict[str, Any] = {"ca_file": str(tls.csms_root)}
    if presented == "unknown CA":
        cert, key = pki.leaf(pki.root("Unknown CA"), "CP-TEST").write(tls.folder, "stranger")
        settings.update(client_cert=str(cert), client_key=str(key))
    async with csms_for(version, tls, profile=3,
                        tls_max_version=TLS_VERSIONS[tls_version]) as csms:
        async with run_agent(csms, tmp_path / "agent", version, **settings) as charger:
            async with asyncio.timeout(5):
                while not csms.tls_refusals:
                    await asyncio.sleep(0.01)
            refusal = csms.tls_refusals[0]
            assert (refusal["authorization_error"] or refusal["code"]) \
                == REFUSED_BY_NODE[presented], refusal
            error = await last_error(charger)
            assert "127.0.0.1" in error, error
            assert "cipher suite" not in error, error
            if presented == "unknown CA":
                # Configured for profile 3, the charger names the likely cause.
                assert "client certificate" in error, error
                assert ("refused the charger's client certificate" in error
                        or "closed the connection before answering" in error), error
            else:
                assert ("client certificate" in error
                        or "closed the connection before answering" in error), error
            assert csms.calls() == []
            assert not csms.is_connected("CP-TEST")
        # It was Node's TLS layer that said no, before any WebSocket or OCPP frame.
        assert csms.records == []
