"""Hostile frames against a real `cpagent run`: 100,000 broken or malicious frames from the CSMS
(20,000+ distinct made-up action names, frames nested 1,000 and 100,000 deep, message ids too
long to echo, NaN and numbers out of range, unpaired surrogates, binary frames, answers to
nothing, unknown message types, truncated and garbled text, huge strings) over one WebSocket.
The link must stay up (one connection, never closed, still answering) and the agent's resident
memory must not grow. Target: growth <= 5 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import string
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import agent_command, env, rss_kib, write_config

from cpagent.devcsms import CP_TO_CSMS, DevCsms

TARGET_MIB = 5.0
IDENTITY = "BENCH-CP"
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
# A call each version answers with a CallResult, and one with a payload full of numbers.
PROBE = {
    "1.6": ("GetConfiguration", '{"key":["HeartbeatInterval"]}'),
    "2.0.1": ("GetVariables", '{"getVariableData":[{"component":{"name":"OCPPCommCtrlr"},'
                              '"variable":{"name":"HeartbeatInterval"}}]}'),
}
NUMBERED = {
    "1.6": ("SetChargingProfile",
            '{"connectorId":1,"csChargingProfiles":{"chargingProfileId":1,"stackLevel":0,'
            '"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":"Absolute",'
            '"chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":'
            '[{"startPeriod":0,"limit":NUM}]}}}'),
    "2.0.1": ("GetVariables", '{"getVariableData":[{"component":{"name":"OCPPCommCtrlr",'
                              '"evse":{"id":NUM}},"variable":{"name":"HeartbeatInterval"}}]}'),
}
NUMBERS = ["NaN", "Infinity", "-Infinity", "1e308", "1e999", "-1e999",
           "123456789012345678901234567890", "1" * 5000]
LOCAL_LIST = {
    "1.6": ("SendLocalList", '{"listVersion":3,"updateType":"Full","localAuthorizationList":'
                             '[{"idTag":"STR","idTagInfo":{"status":"Accepted"}}]}'),
    "2.0.1": ("SendLocalList", '{"versionNumber":3,"updateType":"Full",'
                               '"localAuthorizationList":[{"idToken":{"idToken":"STR",'
                               '"type":"Central"},"idTokenInfo":{"status":"Accepted"}}]}'),
}


def config_for(url: str, version: str) -> Path:
    """The shared benchmark config, with this OCPP version under [csms]."""
    path = write_config(url)
    text = path.read_text()
    if re.search(r"(?m)^ocpp_version\s*=", text):
        text = re.sub(r'(?m)^ocpp_version\s*=.*$', f'ocpp_version = "{version}"', text)
    else:
        text = re.sub(r"(?m)^(url\s*=.*)$", rf'\1\nocpp_version = "{version}"', text, count=1)
    path.write_text(text)
    return path


class Frames:
    """The hostile mix: (kind, frame); a frame is text, or bytes for a binary one."""

    def __init__(self, version: str, seed: int = 7) -> None:
        self.version = version
        self.rng = random.Random(seed)
        self.serial = 0
        self.actions: set[str] = set()

    def _id(self) -> str:
        self.serial += 1
        return f"h{self.serial}"

    def bogus_action(self) -> str:
        rng = self.rng
        name = "".join(rng.choices(string.ascii_letters + string.digits + "./%_-",
                                   k=rng.randint(6, 24))) + str(self.serial)
        name = rng.choice(["", "../../", "%2e%2e/", "v16/schemas/", "/etc/"]) + name
        self.actions.add(name)
        return json.dumps([2, self._id(), name, {}])

    def make(self, n: int) -> tuple[str, str | bytes]:
        rng, version = self.rng, self.version
        if n % 100_000 == 99_999:  # rare and large: 100,000 levels
            depth = 100_000
            return "nested", f'[2,"{self._id()}","DataTransfer",{{"vendorId":"x","data":' \
                             + "[" * depth + "]" * depth + "}]"
        pick = n % 20
        if pick < 5:
            return "bogus action", self.bogus_action()
        if pick == 5:
            nested = "[" * 1000 + "]" * 1000
            return "nested", f'[2,"{self._id()}","DataTransfer",{{"vendorId":"x","data":' \
                             f"{nested}}}]"
        if pick == 6:
            return "nested", rng.choice(["[" * 1000 + "]" * 1000,
                                         '{"a":' * 1000 + "0" + "}" * 1000])
        if pick == 7:
            action, payload = PROBE[version]
            return "long id", f'[2,"{"i" * rng.randint(37, 1000)}","{action}",{payload}]'
        if pick == 8:
            action, template = NUMBERED[version]
            return "number", f'[2,"{self._id()}","{action}",' \
                             f'{template.replace("NUM", rng.choice(NUMBERS))}]'
        if pick == 9:
            action, template = LOCAL_LIST[version]
            return "surrogate", f'[2,"{self._id()}","{action}",' \
                                f'{template.replace("STR", "A" + chr(92) + "ud800")}]'
        if pick == 10:
            action, payload = PROBE[version]
            return "binary", rng.choice([
                f'[2,"{self._id()}","{action}",{payload}]'.encode(),
                bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))])
        if pick == 11:
            stray = f"nobody-{rng.randrange(10**9)}"
            return "stray answer", json.dumps(rng.choice([
                [3, stray, {}], [4, stray, "GenericError", "", {}], [3, stray], [4]]))
        if pick == 12:
            return "unknown type", json.dumps([rng.choice([0, 1, 5, 99, -1, "2", None]),
                                               self._id(), "Heartbeat", {}])
        if pick == 13:
            action, payload = PROBE[version]
            text = f'[2,"{self._id()}","{action}",{payload}]'
            return "truncated", text[:rng.randrange(len(text))]
        if pick == 14:
            return "garbage", "".join(rng.choices(string.printable, k=rng.randint(1, 200)))
        if pick == 15:
            return "wrong shape", json.dumps(rng.choice([
                [], [2], [2, self._id()], [2, self._id(), "Reset"],
                [2, self._id(), "Reset", {"type": "Soft"}, {}], [2, self._id(), 7, {}],
                [2, self._id(), PROBE[version][0], []], {"hello": "world"}, "text", 42]))
        if pick == 16 and n % 500 == 16:  # a few huge strings, not many: the CSMS keeps them
            return "huge string", json.dumps([2, self._id(), "DataTransfer", {
                "vendorId": "x", "data": "z" * 100_000}])
        if pick == 17:
            action, payload = PROBE[version]
            return "bad id", json.dumps([2, rng.choice([42, None, "", ["a"], {}, True]),
                                         action, json.loads(payload)])
        return "bogus action", self.bogus_action()


async def flood(version: str, count: int) -> None:
    # The dev CSMS says something about every frame that is not OCPP-J: not here.
    logging.getLogger("cpagent.devcsms").setLevel(logging.CRITICAL)
    with tempfile.TemporaryFile() as log_file:
        counts = await _flood(version, count, log_file)
        log_file.seek(0)
        log_lines = len(log_file.read().splitlines())
    report(version, count, log_lines, **counts)


async def _flood(version: str, count: int, log_file) -> dict:
    async with DevCsms(subprotocols=(SUBPROTOCOL[version],)) as csms:
        config = config_for(csms.url, version)
        process = await asyncio.create_subprocess_exec(*agent_command(config), env=env(),
                                                       stdout=log_file, stderr=log_file)
        try:
            await csms.wait_for_call("StatusNotification", identity=IDENTITY, timeout=30)
            await asyncio.sleep(1.0)  # the last of the boot's conversation
            before = rss_kib(process.pid)
            frames = Frames(version)
            ws = csms._sessions[IDENTITY].ws  # binary frames and the deepest ones go direct
            kinds: Counter[str] = Counter()
            mark = csms.mark()
            began = time.monotonic()
            steady = 0
            for n in range(count):
                kind, frame = frames.make(n)
                kinds[kind] += 1
                if isinstance(frame, bytes) or kind == "nested":
                    await ws.send(frame)
                else:
                    await csms.send_raw(IDENTITY, frame)
                if n == count // 10:
                    steady = rss_kib(process.pid)
            # Frames are read in order: once a last well-formed call is answered, all were.
            action, payload = PROBE[version]
            await csms.send_raw(IDENTITY, f'[2,"last","{action}",{payload}]')
            while not any(r.unique_id == "last" for r in csms.records[mark:]
                          if r.direction == CP_TO_CSMS and r.kind != "call"):
                if process.returncode is not None:
                    raise SystemExit(f"the agent exited ({process.returncode}) mid-flood")
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - began
            await asyncio.sleep(1.0)
            after = rss_kib(process.pid)

            answers = [r for r in csms.records[mark:]
                       if r.direction == CP_TO_CSMS and r.kind != "call"]
            internal = sum(1 for r in answers if r.kind == "error"
                           and r.payload["errorCode"] == "InternalError")
            closes = csms.close_codes.get(IDENTITY, [])
            # ocpp keeps every answer it did not ask for and drops them one recursion level
            # each at its next call: forget them, then prove the link with a normal call.
            stale = csms._sessions[IDENTITY].cp._response_queue
            while not stale.empty():
                stale.get_nowait()
            if version == "1.6":
                await csms.call(IDENTITY, "GetConfiguration", {"key": ["HeartbeatInterval"]})
            else:
                at = csms.mark()
                await csms.call(IDENTITY, "TriggerMessage", {"requestedMessage": "Heartbeat"})
                await csms.wait_for_call("Heartbeat", identity=IDENTITY, after=at, timeout=5)
            alive = (process.returncode is None and csms.is_connected(IDENTITY)
                     and not closes and not csms.close_codes.get(IDENTITY))
        finally:
            process.terminate()
            await process.wait()
    return {"frames": frames, "kinds": kinds, "seconds": seconds, "alive": alive,
            "answers": len(answers), "internal": internal, "before": before, "after": after,
            "steady": steady}


def report(version: str, count: int, log_lines: int, *, frames: Frames, kinds: Counter,
           seconds: float, alive: bool, answers: int, internal: int, before: int, after: int,
           steady: int) -> None:
    growth = (after - before) / 1024
    print(f"hostile frames, OCPP {version}: {count} frames ({len(frames.actions)} distinct "
          f"bogus actions, {kinds['nested']} nested, {kinds['binary']} binary) in "
          f"{seconds:.1f} s ({count / seconds:.0f}/s); link "
          f"{'kept: 1 connection, never closed' if alive else 'LOST'}; {answers} "
          f"answers, {internal} InternalError; {log_lines} agent log lines; agent RSS "
          f"{before / 1024:.1f} -> {after / 1024:.1f} MiB (after the first 10 %: "
          f"{steady / 1024:.1f}); growth {growth:.2f} MiB (target <= {TARGET_MIB:g} MiB); "
          f"ratio {max(growth, 0) / TARGET_MIB:.2f}")
    if not alive or internal:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--version", choices=["1.6", "2.0.1"], default="1.6")
    args = parser.parse_args()
    asyncio.run(flood(args.version, args.frames))


if __name__ == "__main__":
    main()
