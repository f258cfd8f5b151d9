"""The agent degrades and recovers: slow CSMSs, refused messages, failing stores and meters,
clocks that jump."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from harness import booted

from cpagent.clock import Clock

CP = "CP-TEST"


async def configure(csms, key: str, value: str) -> None:
    assert await csms.call(CP, "ChangeConfiguration", {"key": key, "value": value}) == {
        "status": "Accepted"}


async def test_an_unanswered_transaction_message_is_resent_on_a_new_link_not_given_up(
        csms, start_agent):
    cp = await start_agent(csms={"call_timeout": 1})
    await booted(csms)
    await configure(csms, "TransactionMessageAttempts", "1")  # one refusal would discard it
    await configure(csms, "AuthorizeRemoteTxRequests", "false")
    cp.mock.plug(1)
    await csms.wait_for_call("StatusNotification", predicate=lambda p: p["status"] == "Preparing")
    csms.respond = False
    await csms.call(CP, "RemoteStartTransaction", {"idTag": "SLOW", "connectorId": 1})
    first = await csms.wait_for_call("StartTransaction")
    csms.respond = True
    # No answer within the call timeout: the link is dropped and the start goes again, with
    # its id, although TransactionMessageAttempts is 1.
    again = await csms.wait_for_call("StartTransaction", after=csms.records.index(first) + 1,
                                     timeout=6)
    assert again.unique_id == first.unique_id
    assert cp.agent.transport.connect_count >= 2


async def test_waiting_to_retry_a_refused_message_does_not_hold_up_authorize(
        csms, start_agent):
    cp = await start_agent(station={"connectors": 2})
    await booted(csms, connectors=2)
    await configure(csms, "TransactionMessageRetryInterval", "30")
    csms.fail_calls["StartTransaction"] = 1
    cp.mock.plug(1)
    cp.mock.swipe("FIRST", 1)
    await csms.wait_for_call("StartTransaction")
    mark = csms.mark()
    cp.mock.swipe("SECOND", 2)
    began = time.monotonic()
    await csms.wait_for_call("Authorize", after=mark,
                             predicate=lambda p: p["idTag"] == "SECOND", timeout=5)
    assert time.monotonic() - began < 2  # not after the 30 s retry wait


async def test_a_heartbeat_refused_with_a_call_error_keeps_the_link(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    csms.fail_calls["Heartbeat"] = 3
    await configure(csms, "HeartbeatInterval", "1")
    for _ in range(3):
        await csms.wait_for_call("Heartbeat", after=csms.mark())
    await asyncio.sleep(0.2)
    assert cp.agent.transport.connect_count == 1


async def test_a_start_the_store_cannot_write_never_closes_the_contactor(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    store = cp.agent.store.store

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    store.record_event = disk_full  # type: ignore[method-assign]
    cp.mock.plug(1)
    cp.mock.swipe("NOSPACE")
    await csms.wait_for_call("Authorize")
    for _ in range(50):
        await cp.settle()
        if cp.agent.last_error and "not started" in cp.agent.last_error:
            break
        await asyncio.sleep(0.01)
    assert "could not be recorded" in cp.agent.last_error
    assert not cp.agent.hardware.contactors[1].is_closed
    assert cp.agent.hardware.pilots[1].current_limit == 0
    assert cp.agent.core.evses[1].transaction is None
    assert not csms.calls("StartTransaction")


async def test_no_session_starts_on_a_meter_that_does_not_answer(csms, start_agent):
    cp = await start_agent()
    await booted(csms)
    meter = cp.mock.meter(1)
    meter.energy_wh = 1_234_567.0
    meter.failing = True
    await asyncio.sleep(1.2)  # a poll sees it fail
    cp.mock.plug(1)
    cp.mock.swipe("WAITS")
    await csms.wait_for_call("Authorize")
    await asyncio.sleep(0.3)
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is None
    assert not cp.agent.hardware.contactors[1].is_closed
    meter.failing = False
    start = await csms.wait_for_call("StartTransaction", timeout=3)
    assert start.payload["meterStart"] == 1_234_567  # the register, never 0


async def test_unlock_without_a_lock_says_not_supported_and_leaves_the_session(
        csms, start_agent):
    cp = await start_agent(hardware={"lock": {"driver": "none"}})
    await booted(csms)
    cp.mock.plug(1)
    cp.mock.swipe("TETHERED")
    await csms.wait_for_call("StartTransaction")
    answer = await csms.call(CP, "UnlockConnector", {"connectorId": 1})
    assert answer == {"status": "NotSupported"}
    await cp.settle()
    assert cp.agent.core.evses[1].transaction is not None


def test_a_clock_step_before_the_time_is_known_cannot_bend_earlier_stamps():
    real = time.time()
    mono = [1000.0]
    wall = [86_400.0]  # the board believes it is 2 January 1970
    clock = Clock("auto", wall=lambda: wall[0], synchronised=lambda: False,
                  monotonic=lambda: mono[0])
    mono[0] += 5
    stamp = clock.now()  # a session starts 5 s after boot, time unknown
    assert not clock.stamp_trusted(stamp)
    mono[0] += 10
    wall[0] = real  # NTP steps the system clock; the kernel has not said "synchronised" yet
    assert clock.now() == 86_400.0 + 15  # untrusted time is not bent by the step
    assert clock.csms_time(real) is not None  # BootNotification.conf: the time is known
    assert abs((stamp + clock.correction) - (real - 10)) < 1e-6
    assert clock.stamp_trusted(clock.now())


def test_the_clock_trusts_the_system_once_the_kernel_reports_it_synchronised():
    synced = [False]
    clock = Clock("auto", wall=time.time, synchronised=lambda: synced[0])
    assert not clock.trusted and clock.check_system() is None
    synced[0] = True
    assert clock.check_system() is not None and clock.trusted
    assert abs(clock.now() - time.time()) < 0.01


def test_implausible_csms_times_are_ignored():
    clock = Clock("csms", wall=time.time, synchronised=lambda: False)
    assert clock.csms_time(253402300799.0) is None  # 9999-12-31
    assert clock.csms_time(0.0) is None
    assert not clock.trusted


def test_ntp_after_the_csms_time_takes_over_and_neither_step_bends_the_clock():
    real = time.time()
    mono = [0.0]
    wall = [real - 3 * 86400]  # fake-hwclock: three days behind
    synced = [False]
    clock = Clock("auto", wall=lambda: wall[0] + mono[0], synchronised=lambda: synced[0],
                  monotonic=lambda: mono[0])
    assert clock.csms_time(real) is not None  # BootNotification.conf
    mono[0] += 10
    wall[0] = real  # NTP steps the system clock by three days
    assert abs(clock.now() - (real + 10)) < 1e-6  # the CSMS anchor is not bent by the step
    synced[0] = True
    assert clock.check_system() is None  # already trusted: no stamps to move
    assert abs(clock.now() - (real + 10)) < 1e-6  # the system clock took over, same time


def test_whole_second_heartbeat_times_never_step_the_clock_back():
    real = 1_780_000_000.25
    mono = [0.0]
    clock = Clock("csms", wall=lambda: 0.0, synchronised=lambda: False,
                  monotonic=lambda: mono[0])
    assert clock.csms_time(real) is not None  # BootNotification.conf, with milliseconds
    stamps = [clock.now()]
    for _ in range(200):
        mono[0] += 0.7
        stamps.append(clock.now())
        # Heartbeat.conf in whole seconds: up to a second behind the true time.
        clock.csms_time(float(int(real + mono[0])))
        stamps.append(clock.now())
    assert stamps == sorted(stamps)
    assert abs(clock.now() - (real + mono[0])) < 1e-6  # jitter ignored, not taken in


def test_a_clock_found_ahead_of_the_csms_is_slowed_not_stepped_back():
    real = 1_780_000_000.0
    mono = [0.0]
    clock = Clock("csms", wall=lambda: 0.0, synchronised=lambda: False,
                  monotonic=lambda: mono[0])
    clock.csms_time(real)
    mono[0] += 100
    clock.csms_time(real + 100 - 5)  # the CSMS says we are 5 s ahead
    stamps = []
    for _ in range(600):
        stamps.append(clock.now())
        mono[0] += 0.1
    assert stamps == sorted(stamps)
    assert abs(clock.now() - (real + mono[0] - 5)) < 1e-6  # made up by slewing at 10 %
    mono[0] += 10
    clock.csms_time(real + mono[0] - 5 + 3)  # and a clock behind moves forward at once
    assert abs(clock.now() - (real + mono[0] - 2)) < 1e-6
