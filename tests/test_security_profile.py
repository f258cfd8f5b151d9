"""The CSMS raises the security profile over OCPP (1.6: ChangeConfiguration SecurityProfile;
2.0.1: SetNetworkProfile and NetworkConfigurationPriority), never lowers it; a raise that
cannot connect falls back to the profile that worked, and says so. Two real CSMSs on loopback:
one on ws:// (profile 1) and one on wss:// with a test CA (profile 2)."""

from __future__ import annotations

import asyncio

import pki
import pytest
from harness import RunningAgent, make_config

from cpagent.clock import Clock
from cpagent.devcsms import DevCsms

CP = "CP-TEST"
PASSWORD = "password-of-sixteen"


def _tls(tmp_path) -> tuple[pki.Issued, object]:
    ca = pki.root("CSMS Root")
    return ca, pki.server_context(pki.leaf(ca), tmp_path)


async def _security_profile(csms: DevCsms, version: str) -> str:
    if version == "1.6":
        answer = await csms.call(CP, "GetConfiguration", {"key": ["SecurityProfile"]})
        return answer["configurationKey"][0]["value"]
    answer = await csms.call(CP, "GetVariables", {"getVariableData": [{
        "component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"}}]})
    return answer["getVariableResult"][0]["attributeValue"]


async def _raise(csms: DevCsms, version: str, profile: int, url: str) -> str:
    """Ask the charger to move to `profile` at `url`, as each version does it."""
    if version == "1.6":
        answer = await csms.call(CP, "ChangeConfiguration", {"key": "SecurityProfile",
                                                             "value": str(profile)})
        return answer["status"]
    answer = await csms.call(CP, "SetNetworkProfile", {"configurationSlot": 2,
                                                       "connectionData": {
        "ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url,
        "messageTimeout": 30, "securityProfile": profile, "ocppInterface": "Wired0"}})
    if answer["status"] != "Accepted":
        return answer["status"]
    answer = await csms.call(CP, "SetVariables", {"setVariableData": [{
        "component": {"name": "OCPPCommCtrlr"},
        "variable": {"name": "NetworkConfigurationPriority"}, "attributeValue": "2,1"}]})
    return answer["setVariableResult"][0]["attributeStatus"]


def _agent(tmp_path, version: str, url: str, secure_url: str, **csms) -> RunningAgent:
    return RunningAgent(make_config(tmp_path / "agent", url, csms={
        "ocpp_version": version, "password": PASSWORD, "secure_url": secure_url,
        "reconnect_initial": 0.1, "reconnect_max": 1, **csms}), Clock("system"))


def _versions(version: str) -> tuple[str, ...]:
    return ("ocpp1.6",) if version == "1.6" else ("ocpp2.0.1",)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_csms_raises_the_profile_and_it_stays_raised(version, tmp_path):
    ca, context = _tls(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    auth = {CP: PASSWORD}
    async with DevCsms(basic_auth=auth, subprotocols=_versions(version)) as plain, \
            DevCsms(basic_auth=auth, ssl_context=context,
                    subprotocols=_versions(version)) as secure:
        charger = _agent(tmp_path, version, plain.url, secure.url, ca_file=str(ca_file))
        await charger.start()
        try:
            await plain.wait_for_call("StatusNotification")
            assert await _security_profile(plain, version) == "1"
            assert await _raise(plain, version, 2, secure.url) == "Accepted"
            await secure.wait_for_call("StatusNotification", timeout=10)
            assert await _security_profile(secure, version) == "2"
            # Lowering is refused, in either version's way of asking.
            assert await _raise(secure, version, 1, plain.url) == "Rejected"
            assert "2" in await _event_saying((plain, secure), "set by the")

            # The raise is kept across a restart: the charger goes straight to wss://.
            await charger.stop()
            mark = secure.mark()
            charger = _agent(tmp_path, version, plain.url, secure.url, ca_file=str(ca_file))
            await charger.start()
            await secure.wait_for_call("BootNotification", after=mark, timeout=10)
            assert await _security_profile(secure, version) == "2"
            assert charger.agent.transport.endpoint.url.startswith("wss://")
        finally:
            await charger.stop()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_raise_that_cannot_connect_falls_back_and_says_so(version, tmp_path):
    ca, _ = _tls(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    nobody = "wss://127.0.0.1:9/ocpp"  # nothing listens there
    async with DevCsms(basic_auth={CP: PASSWORD}, subprotocols=_versions(version)) as plain:
        charger = _agent(tmp_path, version, plain.url, nobody, ca_file=str(ca_file))
        await charger.start()
        try:
            await plain.wait_for_call("StatusNotification")
            if version == "2.0.1":
                await plain.call(CP, "SetVariables", {"setVariableData": [{
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "NetworkProfileConnectionAttempts"},
                    "attributeValue": "2"}]})
            assert await _raise(plain, version, 2, nobody) == "Accepted"
            # Back on the profile that works, the charger tells the CSMS the raise failed.
            told = await _event_saying((plain,), "could not connect")
            assert "back on security profile 1" in told
            assert await _security_profile(plain, version) == "1"
            assert any("falling back" in f for f in charger.agent.transport.fallbacks)
        finally:
            await charger.stop()


async def _event_saying(servers: tuple[DevCsms, ...], words: str) -> str:
    """The techInfo of the ReconfigurationOfSecurityParameters event that says `words`, as
    one of `servers` received it (it may go out before the link changes, or after)."""
    for _ in range(200):
        for csms in servers:
            for record in csms.calls("SecurityEventNotification"):
                info = record.payload.get("techInfo", "")
                if record.payload["type"] == "ReconfigurationOfSecurityParameters" and \
                        words in info:
                    return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"no security event saying {words!r}")


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_raise_without_what_it_needs_is_rejected(version, tmp_path):
    """Profile 2 needs a CSMS root, profile 3 a charger certificate (2.0.1 A05.FR.02)."""
    async with DevCsms(basic_auth={CP: PASSWORD}, subprotocols=_versions(version)) as plain:
        charger = _agent(tmp_path, version, plain.url, "wss://127.0.0.1:9/ocpp")
        await charger.start()
        try:
            await plain.wait_for_call("StatusNotification")
            assert await _raise(plain, version, 2, "wss://127.0.0.1:9/ocpp") == "Rejected"
            assert await _raise(plain, version, 3, "wss://127.0.0.1:9/ocpp") == "Rejected"
            if version == "1.6":
                answer = await plain.call(CP, "ChangeConfiguration", {
                    "key": "SecurityProfile", "value": "4"})
                assert answer["status"] == "Rejected"
            assert await _security_profile(plain, version) == "1"
            assert charger.agent.transport.endpoint.url.startswith("ws://")

            # With the CSMS's root installed over OCPP, profile 3 still wants a certificate.
            ca = pki.root("CSMS Root")
            kind = "CentralSystemRootCertificate" if version == "1.6" else \
                "CSMSRootCertificate"
            answer = await plain.call(CP, "InstallCertificate", {
                "certificateType": kind, "certificate": ca.pem})
            assert answer["status"] == "Accepted"
            assert await _raise(plain, version, 3, "wss://127.0.0.1:9/ocpp") == "Rejected"
        finally:
            await charger.stop()


async def test_a_higher_profile_leaves_no_lower_one_to_return_to(tmp_path):
    """2.0.1 A05.FR.06: once connected with profile 2, the lower profiles are dropped from
    NetworkConfigurationPriority and cannot be put back (A05.FR.03)."""
    ca, context = _tls(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    auth = {CP: PASSWORD}
    async with DevCsms(basic_auth=auth, subprotocols=("ocpp2.0.1",)) as plain, \
            DevCsms(basic_auth=auth, ssl_context=context, subprotocols=("ocpp2.0.1",)) as secure:
        charger = _agent(tmp_path, "2.0.1", plain.url, secure.url, ca_file=str(ca_file))
        await charger.start()
        try:
            await plain.wait_for_call("StatusNotification")
            answer = await plain.call(CP, "SetNetworkProfile", {"configurationSlot": 3,
                                                                "connectionData": {
                "ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": plain.url,
                "messageTimeout": 30, "securityProfile": 1, "ocppInterface": "Wired0"}})
            assert answer["status"] == "Accepted"  # a second profile-1 way in, for now
            assert await _raise(plain, "2.0.1", 2, secure.url) == "Accepted"
            await secure.wait_for_call("StatusNotification", timeout=10)
            priority = {"component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "NetworkConfigurationPriority"}}
            for _ in range(100):
                answer = await secure.call(CP, "GetVariables", {"getVariableData": [priority]})
                if answer["getVariableResult"][0]["attributeValue"] == "2":
                    break
                await asyncio.sleep(0.05)
            assert answer["getVariableResult"][0]["attributeValue"] == "2"
            answer = await secure.call(CP, "SetVariables", {"setVariableData": [
                {**priority, "attributeValue": "2,3"}]})
            assert answer["setVariableResult"][0]["attributeStatus"] == "Rejected"
            answer = await secure.call(CP, "SetNetworkProfile", {"configurationSlot": 3,
                                                                 "connectionData": {
                "ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": plain.url,
                "messageTimeout": 30, "securityProfile": 1, "ocppInterface": "Wired0"}})
            assert answer["status"] == "Rejected"
        finally:
            await charger.stop()
