"""Serial card readers against simulated devices on pseudo-terminals; no hardware.

Each driver opens a symlink to a pty slave, as it would open /dev/serial/by-id/...; the test
writes what the reader would send into the pty master, or for the PN532 plays the chip: reads the
driver's commands from the master and answers ACK and response frames. Unplugging closes the
master and removes the symlink; plugging back in points the symlink at a fresh pty.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import reduce
from operator import xor
from pathlib import Path

import pytest

from hal.card_formats import (
    AsciiHexDecoder,
    CardRead,
    Garbled,
    LineDecoder,
    Pn532Ack,
    Pn532Decoder,
    Pn532ErrorFrame,
    Pn532Nack,
    Pn532Response,
    UidError,
    id_tag_from_bytes,
    id_tag_from_decimal,
    id_tag_from_hex,
    pn532_frame,
    type_a_uid,
)
from hal.card_readers import (
    LineReader,
    Pn532Reader,
    Rdm6300Reader,
    SerialCardReader,
    TapFilter,
    build_card_reader,
)
from hal.interfaces import CardPresented, Fault, FaultCleared, FaultRaised, HalEvent
from hal.options import DriverConfigError

# --- simulated devices ----------------------------------------------------------------------------


class PtyDevice:
    """A serial device that can be unplugged and plugged back in under the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = -1
        self._slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self._slave = os.openpty()
        self.path.symlink_to(os.ttyname(self._slave))

    def unplug(self) -> None:
        self.path.unlink()
        os.close(self.master)
        os.close(self._slave)
        self.master = -1

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


def rdm_frame(card: bytes, checksum: int | None = None) -> bytes:
    """What an RDM6300 sends for `card` (5 bytes): STX, 10 hex chars, 2 hex checksum, ETX."""
    if checksum is None:
        checksum = reduce(xor, card)
    return b"\x02" + card.hex().upper().encode() + b"%02X" % checksum + b"\x03"


CARD_A = bytes.fromhex("0A00BC614E")
CARD_B = bytes.fromhex("1F2E3D4C5B")
CARD_C = bytes.fromhex("0102030405")

# PN532 -> host frames built by hand here rather than with hal.card_formats, so the fake chip
# does not share the driver's mistakes.
ACK = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])
ERROR_FRAME = bytes([0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00])


def chip_frame(data: bytes, *, corrupt: bool = False) -> bytes:
    dcs = (0x100 - sum(data)) & 0xFF
    if corrupt:
        dcs ^= 0x5A
    return bytes([0x00, 0x00, 0xFF, len(data), (0x100 - len(data)) & 0xFF, *data, dcs, 0x00])


class FakePn532:
    """Plays a PN532 on HSU from the pty master, in a thread of its own like a real chip."""

    def __init__(self, device: PtyDevice) -> None:
        self.device = device
        self.uid: bytes | None = None  # the card in the field
        self.silent = 0  # commands to ignore, as a chip that sleeps, is unpowered or miswired
        self.errors = 0  # polls to answer with an error frame
        self.corrupt = 0  # polls to answer with a bad data checksum
        self.ack_only = False  # acknowledge commands but never answer them
        self.aborts = 0  # ACK frames from the host, which abort the command in progress
        self.commands: list[int] = []
        self.wakeups = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(1)

    def _run(self) -> None:
        buf = bytearray()
        while not self._done.is_set():
            fd = self.device.master
            try:
                ready, _, _ = select.select([fd], [], [], 0.01)
                if not ready:
                    continue
                buf += os.read(fd, 1024)
            except OSError:
                return
            while (command := self._take(buf)) is not None:
                self._answer(command)

    def _take(self, buf: bytearray) -> bytes | None:
        start = buf.find(b"\x00\x00\xff")
        if start < 0 or len(buf) < start + 5:
            return None
        if b"\x55\x55" in buf[:start]:
            self.wakeups += 1
        length = buf[start + 3]
        if (length, buf[start + 4]) == (0x00, 0xFF):  # the host's ACK: abort
            del buf[: start + 6]
            self.aborts += 1
            return b""
        end = start + 5 + length + 2
        if len(buf) < end:
            return None
        data = bytes(buf[start + 5 : start + 5 + length])
        assert (length + buf[start + 4]) & 0xFF == 0
        assert (sum(data) + buf[start + 5 + length]) & 0xFF == 0
        assert data[0] == 0xD4, data.hex()
        del buf[:end]
        return data[1:]

    def _answer(self, command: bytes) -> None:
        if not command:
            return
        code = command[0]
        self.commands.append(code)
        if self.silent:
            self.silent -= 1
            return
        if self.ack_only:
            os.write(self.device.master, ACK)
            return
        if code == 0x4A:
            if self.errors:
                self.errors -= 1
                reply = ERROR_FRAME
            elif self.uid is None:
                reply = chip_frame(bytes([0xD5, 0x4B, 0x00]))
            else:
                sens_res = b"\x00\x04" if len(self.uid) == 4 else b"\x00\x44"
                target = bytes([0x01]) + sens_res + bytes([0x08, len(self.uid)]) + self.uid
                corrupt = self.corrupt > 0
                self.corrupt -= corrupt
                reply = chip_frame(bytes([0xD5, 0x4B, 0x01]) + target, corrupt=corrupt)
        else:
            reply = chip_frame(bytes([0xD5, code + 1]))
        os.write(self.device.master, ACK + reply)


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[HalEvent] = asyncio.Queue()
        self.threads: set[int] = set()

    def emit(self, event: HalEvent) -> None:
        self.threads.add(threading.get_ident())
        self.queue.put_nowait(event)

    async def next(self, timeout: float = 1.0) -> HalEvent:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.queue.empty(), self.queue.get_nowait()


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[PtyDevice]:
    dev = PtyDevice(tmp_path / "ttyRFID")
    yield dev
    dev.close()


@pytest.fixture
def chip(device: PtyDevice) -> Iterator[FakePn532]:
    fake = FakePn532(device)
    yield fake
    fake.close()


StartReader = Callable[[SerialCardReader], Awaitable[Events]]


@pytest.fixture
async def start() -> AsyncIterator[StartReader]:
    started: list[SerialCardReader] = []

    async def start(reader: SerialCardReader) -> Events:
        events = Events()
        await reader.start(events.emit)
        started.append(reader)
        return events

    yield start
    for reader in started:
        await reader.stop()


def rdm6300(device: PtyDevice, **options: object) -> SerialCardReader:
    reader = build_card_reader({"model": "rdm6300", "port": str(device.path), **options})
    assert isinstance(reader, Rdm6300Reader)
    return reader


def pn532(device: PtyDevice, **kwargs: float) -> Pn532Reader:
    """Short timeouts keep the tests short; an ACK takes the fake chip's thread up to tens of
    milliseconds on a loaded machine, so only the tests about silence go below 0.2 s."""
    kwargs = {"ack_timeout": 0.2, "response_timeout": 0.5, "poll_interval": 0.01,
              "reopen_interval": 0.05, **kwargs}
    return Pn532Reader(str(device.path), **kwargs)


# --- RDM6300 --------------------------------------------------------------------------------------


async def test_rdm6300_frame_is_a_card(device: PtyDevice, start: StartReader) -> None:
    reader = rdm6300(device)
    events = await start(reader)
    await until(lambda: reader.ready)
    device.write(rdm_frame(CARD_A))
    assert await events.next() == CardPresented("0A00BC614E", None)
    assert events.threads == {threading.get_ident()}  # delivered on the event loop's thread


async def test_rdm6300_connector_option(device: PtyDevice, start: StartReader) -> None:
    reader = rdm6300(device, connector=2)
    events = await start(reader)
    await until(lambda: reader.ready)
    device.write(rdm_frame(CARD_B))
    assert await events.next() == CardPresented("1F2E3D4C5B", 2)


async def test_rdm6300_garbled_frames_are_skipped(device: PtyDevice, start: StartReader) -> None:
    reader = rdm6300(device)
    events = await start(reader)
    await until(lambda: reader.ready)
    bad_checksum = rdm_frame(CARD_B, checksum=reduce(xor, CARD_B) ^ 1)
    truncated = rdm_frame(CARD_B)[:7]  # no ETX: the next STX starts over
    overlong = b"\x02" + b"0" * 20 + b"\x03"
    short = b"\x02" + CARD_B.hex().encode() + b"\x03"  # checksum missing
    not_hex = b"\x02" + b"0A00BC614EZZ" + b"\x03"
    device.write(b"\xff\x00garbage" + bad_checksum + b"\x13\x37" + truncated + overlong
                 + short + not_hex + b"\x03\x03" + rdm_frame(CARD_A))
    assert await events.next() == CardPresented("0A00BC614E")
    await events.nothing(0.1)
    device.write(rdm_frame(CARD_C))  # the reader is still in step
    assert await events.next() == CardPresented("0102030405")


async def test_rdm6300_frame_split_across_reads(device: PtyDevice, start: StartReader) -> None:
    reader = rdm6300(device)
    events = await start(reader)
    await until(lambda: reader.ready)
    frame = rdm_frame(CARD_A)
    for part in (frame[:1], frame[1:5], frame[5:13], frame[13:]):
        device.write(part)
        await asyncio.sleep(0.02)
    assert await events.next() == CardPresented("0A00BC614E")


async def test_held_card_is_one_tap_and_again_after_hold_off(
    device: PtyDevice, start: StartReader
) -> None:
    reader = rdm6300(device, hold_off=0.3)
    events = await start(reader)
    await until(lambda: reader.ready)
    # held for 0.5 s, longer than the hold-off, repeating every 0.1 s as the reader does
    for _ in range(6):
        device.write(rdm_frame(CARD_A))
        await asyncio.sleep(0.1)
    assert await events.next() == CardPresented("0A00BC614E")
    device.write(rdm_frame(CARD_B))  # another card is a tap at once
    assert await events.next() == CardPresented("1F2E3D4C5B")
    await events.nothing(0.05)
    await asyncio.sleep(0.3)  # card A was away for longer than the hold-off
    device.write(rdm_frame(CARD_A))
    assert await events.next() == CardPresented("0A00BC614E")


async def test_hold_off_zero_makes_every_frame_a_tap(
    device: PtyDevice, start: StartReader
) -> None:
    reader = rdm6300(device, hold_off=0)
    events = await start(reader)
    await until(lambda: reader.ready)
    device.write(rdm_frame(CARD_A) * 3)
    for _ in range(3):
        assert await events.next() == CardPresented("0A00BC614E")


def test_tap_filter() -> None:
    taps = TapFilter(2.0)
    assert taps.is_new_tap("AA", 0.0)
    assert not taps.is_new_tap("AA", 1.5)
    assert not taps.is_new_tap("AA", 3.0)  # counted from the last read, not the first
    assert taps.is_new_tap("BB", 3.1)
    assert taps.is_new_tap("AA", 5.0)
    for n in range(40):  # old cards are forgotten, so the table stays small
        taps.is_new_tap(f"{n:02X}", 10.0 + 3 * n)
    assert len(taps._last_read) <= 17


# --- unplugging -----------------------------------------------------------------------------------


async def test_unplugged_reader_raises_fault_once_then_clears(
    device: PtyDevice, start: StartReader
) -> None:
    reader = rdm6300(device, reopen_interval=0.05)
    events = await start(reader)
    await until(lambda: reader.ready)
    device.write(rdm_frame(CARD_A))
    assert await events.next() == CardPresented("0A00BC614E")

    device.unplug()
    fault = await events.next()
    assert isinstance(fault, FaultRaised)
    assert (fault.connector_id, fault.fault) == (0, Fault.READER_FAILURE)
    assert fault.info
    await events.nothing(0.3)  # several failed reopen attempts, one fault

    device.plug()
    assert await events.next() == FaultCleared(0, Fault.READER_FAILURE)
    await until(lambda: reader.ready)
    device.write(rdm_frame(CARD_B))
    assert await events.next() == CardPresented("1F2E3D4C5B")


async def test_reader_missing_at_start(tmp_path: Path, start: StartReader) -> None:
    path = tmp_path / "ttyUSB9"
    reader = build_card_reader({"model": "line", "port": str(path), "reopen_interval": 0.05})
    assert isinstance(reader, LineReader)
    events = await start(reader)
    fault = await events.next()
    assert isinstance(fault, FaultRaised) and fault.fault is Fault.READER_FAILURE
    assert str(path) in fault.info
    device = PtyDevice(path)
    try:
        assert await events.next() == FaultCleared(0, Fault.READER_FAILURE)
        await until(lambda: reader.ready)
        device.write(b"04A1B2C3\n")
        assert await events.next() == CardPresented("04A1B2C3")
    finally:
        device.close()


async def test_stop_is_prompt_and_final(device: PtyDevice) -> None:
    reader = rdm6300(device)
    events = Events()
    await reader.start(events.emit)
    await until(lambda: reader.ready)
    began = time.monotonic()
    await reader.stop()
    assert time.monotonic() - began < 0.3
    assert not [t for t in threading.enumerate() if t.name.startswith("card-reader:")]
    device.write(rdm_frame(CARD_A))
    await events.nothing(0.1)


async def test_stop_while_port_is_missing(tmp_path: Path) -> None:
    reader = build_card_reader({"model": "pn532", "port": str(tmp_path / "none")})
    events = Events()
    await reader.start(events.emit)
    assert isinstance(await events.next(), FaultRaised)
    began = time.monotonic()
    await reader.stop()  # in the middle of the 2 s reopen wait
    assert time.monotonic() - began < 0.3


# --- line readers ---------------------------------------------------------------------------------


async def test_line_reader_hex(device: PtyDevice, start: StartReader) -> None:
    reader = build_card_reader({"model": "line", "port": str(device.path), "hold_off": 0})
    events = await start(reader)
    assert isinstance(reader, LineReader)
    await until(lambda: reader.ready)
    device.write(b"04a1b2c3\r\n\r\nnot a card\n" + b"F" * 100 + b"\n"
                 + b"04:A1:B2:C3:D4:E5:F6\n" + b"AB" * 11 + b"\n" + b"0A1B2C3\n")
    assert await events.next() == CardPresented("04A1B2C3")
    assert await events.next() == CardPresented("04A1B2C3D4E5F6")
    assert await events.next() == CardPresented("00A1B2C3")
    await events.nothing(0.05)


async def test_line_reader_decimal(device: PtyDevice, start: StartReader) -> None:
    reader = build_card_reader({"model": "line", "port": str(device.path), "format": "decimal",
                                "hold_off": 0})
    events = await start(reader)
    assert isinstance(reader, LineReader)
    await until(lambda: reader.ready)
    device.write(b"0012345678\r\n04A1\n4294967295\n")
    assert await events.next() == CardPresented("00BC614E")
    assert await events.next() == CardPresented("FFFFFFFF")
    await events.nothing(0.05)


# --- PN532 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uid", "tag"), [
    (bytes.fromhex("DEADBEEF"), "DEADBEEF"),
    (bytes.fromhex("04A1B2C3D4E580"), "04A1B2C3D4E580"),
])
async def test_pn532_reads_uid(chip: FakePn532, start: StartReader, uid: bytes,
                               tag: str) -> None:
    reader = pn532(chip.device)
    events = await start(reader)
    await until(lambda: reader.ready)
    assert chip.wakeups == 1
    assert chip.commands[:2] == [0x14, 0x32]  # SAMConfiguration, then RFConfiguration
    await asyncio.sleep(0.05)
    assert set(chip.commands[2:]) == {0x4A}  # polling, no card yet
    chip.uid = uid
    assert await events.next() == CardPresented(tag)
    await events.nothing(0.1)  # still in the field, polled again and again: one tap
    assert chip.commands.count(0x4A) > 5


async def test_pn532_retries_a_silent_wake_up(chip: FakePn532, start: StartReader) -> None:
    chip.silent = 2
    chip.uid = bytes.fromhex("DEADBEEF")
    reader = pn532(chip.device, ack_timeout=0.1)
    events = await start(reader)
    assert await events.next() == CardPresented("DEADBEEF")  # no fault for two misses
    assert chip.commands[:4] == [0x14, 0x14, 0x14, 0x32]
    assert chip.wakeups >= 3


async def test_pn532_that_stays_silent_is_a_reader_failure(
    chip: FakePn532, start: StartReader
) -> None:
    chip.silent = 6
    chip.uid = bytes.fromhex("DEADBEEF")
    reader = pn532(chip.device, ack_timeout=0.1)
    events = await start(reader)
    fault = await events.next()
    assert isinstance(fault, FaultRaised) and fault.fault is Fault.READER_FAILURE
    assert "does not answer" in fault.info
    assert await events.next() == FaultCleared(0, Fault.READER_FAILURE)
    assert await events.next() == CardPresented("DEADBEEF")


async def test_pn532_that_stops_answering_is_woken_again(
    chip: FakePn532, start: StartReader
) -> None:
    reader = pn532(chip.device)
    events = await start(reader)
    await until(lambda: reader.ready)
    chip.silent = 1  # one poll lost: no fault, just a new wake-up
    await until(lambda: chip.wakeups >= 2)
    chip.uid = bytes.fromhex("DEADBEEF")
    assert await events.next() == CardPresented("DEADBEEF")


async def test_pn532_error_and_corrupt_frames_are_skipped(
    chip: FakePn532, start: StartReader
) -> None:
    chip.errors = 2
    chip.corrupt = 2
    chip.uid = bytes.fromhex("04A1B2C3D4E580")
    reader = pn532(chip.device, response_timeout=5.0)
    events = await start(reader)
    began = time.monotonic()
    assert await events.next() == CardPresented("04A1B2C3D4E580")
    assert time.monotonic() - began < 0.5  # a broken answer is given up on, not waited out
    assert chip.errors == 0 and chip.corrupt == 0
    assert chip.wakeups == 1


async def test_pn532_stop_is_prompt(chip: FakePn532) -> None:
    reader = pn532(chip.device, poll_interval=0.0, response_timeout=5.0)
    events = Events()
    await reader.start(events.emit)
    await until(lambda: reader.ready)
    chip.ack_only = True  # stop() lands while the driver waits for an answer
    await asyncio.sleep(0.1)
    began = time.monotonic()
    await reader.stop()
    assert time.monotonic() - began < 0.3
    await until(lambda: chip.aborts == 1)  # the driver aborted the command it gave up on


async def test_pn532_unplugged(chip: FakePn532, start: StartReader) -> None:
    reader = pn532(chip.device)
    events = await start(reader)
    await until(lambda: reader.ready)
    chip.close()
    chip.device.unplug()
    assert isinstance(await events.next(), FaultRaised)
    chip.device.plug()
    chip2 = FakePn532(chip.device)
    try:
        chip2.uid = bytes.fromhex("DEADBEEF")
        assert await events.next() == FaultCleared(0, Fault.READER_FAILURE)
        assert await events.next() == CardPresented("DEADBEEF")
    finally:
        chip2.close()


# --- options --------------------------------------------------------------------------------------


def config_errors(options: dict) -> list[str]:
    with pytest.raises(DriverConfigError) as caught:
        build_card_reader(options)
    return caught.value.errors


def test_defaults_per_model() -> None:
    rdm = build_card_reader({"driver": "serial", "model": "rdm6300", "port": "/dev/ttyUSB0"})
    assert isinstance(rdm, Rdm6300Reader)
    assert (rdm.port, rdm.baudrate, rdm.hold_off, rdm.reopen_interval, rdm.connector_id) == (
        "/dev/ttyUSB0", 9600, 2.0, 2.0, None)
    pn = build_card_reader({"model": "pn532", "port": "/dev/serial0", "hold_off": 3,
                            "connector": 1})
    assert isinstance(pn, Pn532Reader)
    assert (pn.baudrate, pn.hold_off, pn.connector_id) == (115200, 3.0, 1)
    line = build_card_reader({"model": "line", "port": "/dev/ttyACM0", "baudrate": 115200,
                              "format": "decimal", "reopen_interval": 5})
    assert isinstance(line, LineReader)
    assert (line.baudrate, line.number_format, line.reopen_interval) == (115200, "decimal", 5.0)


def test_required_options() -> None:
    errors = config_errors({})
    assert errors == [
        "model: required (one of 'rdm6300', 'pn532', 'line')",
        "port: required (the reader's serial device, like /dev/ttyUSB0 or /dev/serial0)",
    ]


def test_bad_options_are_all_reported() -> None:
    errors = config_errors({"model": "rdm630", "port": "COM3", "baudrate": 9601,
                            "hold_off": -1, "reopen_interval": "2s", "connector": 0,
                            "holdoff": 2})
    assert errors[0] == ("model: must be one of 'rdm6300', 'pn532', 'line' (got 'rdm630'); "
                         "did you mean 'rdm6300'?")
    assert errors[1] == "port: must be a serial device path like /dev/ttyUSB0 (got 'COM3')"
    assert errors[2].startswith("baudrate: must be one of 1200, 2400,")
    assert errors[2].endswith("(got 9601)")
    assert errors[3] == "hold_off: must be a number from 0 to 60 (got -1)"
    assert errors[4] == "reopen_interval: must be a number from 0.05 to 300 (got '2s')"
    assert errors[5] == "connector: must be a whole number from 1 to 999 (got 0)"
    assert errors[6] == "holdoff: unknown option (did you mean 'hold_off'?)"
    assert len(errors) == 7


def test_format_option() -> None:
    assert config_errors({"model": "rdm6300", "port": "/dev/ttyUSB0", "format": "hex"}) == [
        "format: applies only to model 'line' (model is 'rdm6300')"]
    assert config_errors({"model": "line", "port": "/dev/ttyUSB0", "format": "dec"}) == [
        "format: must be one of 'hex', 'decimal' (got 'dec'); did you mean 'decimal'?"]


# --- frame formats, byte by byte ------------------------------------------------------------------


def test_rdm6300_decoder_byte_by_byte() -> None:
    decoder = AsciiHexDecoder()
    stream = b"\x00" + rdm_frame(CARD_A)[:5] + rdm_frame(CARD_B) + rdm_frame(CARD_C)
    found = [item for byte in stream for item in decoder.feed(bytes([byte]))]
    assert found[:2] == [Garbled("noise between frames", b"\x00", noise=True),
                         Garbled("truncated frame", rdm_frame(CARD_A)[:5])]
    assert found[2:] == [CardRead("1F2E3D4C5B"), CardRead("0102030405")]


def test_rdm6300_decoder_reasons() -> None:
    decoder = AsciiHexDecoder()
    bad = decoder.feed(rdm_frame(CARD_A, checksum=0) + b"\x02" + b"1" * 13 + b"\x03"
                       + b"\x02ABC\x03")
    assert [g.reason for g in bad if isinstance(g, Garbled)] == [
        "bad checksum (frame says 00, data gives 99)",
        "overlong frame",
        "noise between frames",  # the ETX after the overlong frame
        "wrong length (3 characters, expected 12)",
    ]
    noise = decoder.feed(b"x" * 70)
    assert noise == [Garbled("noise between frames", b"x" * 64, noise=True)]


def test_line_decoder_recovers_after_overlong_line() -> None:
    decoder = LineDecoder()
    found = decoder.feed(b"A" * 100 + b"\n04A1B2C3\n")
    assert found[0] == Garbled("line longer than 64 characters", b"A" * 65)
    assert found[1:] == [CardRead("04A1B2C3")]
    assert decoder.feed(b"\xff\xfe\n") == [Garbled("not ASCII", b"\xff\xfe")]


def test_id_tags() -> None:
    assert id_tag_from_bytes(bytes(10)) == "0" * 20
    with pytest.raises(UidError):
        id_tag_from_bytes(bytes(11))  # longer than an OCPP 1.6 idTag
    with pytest.raises(UidError):
        id_tag_from_bytes(b"")
    assert id_tag_from_hex(" 04-a1-b2-c3 ") == "04A1B2C3"
    with pytest.raises(UidError):
        id_tag_from_hex("0x04A1")
    assert id_tag_from_decimal("1") == "00000001"
    assert id_tag_from_decimal(str(2**40 - 1)) == "FFFFFFFFFF"
    with pytest.raises(UidError):
        id_tag_from_decimal(str(2**80))
    with pytest.raises(UidError):
        id_tag_from_decimal("-5")


def test_pn532_decoder() -> None:
    response = pn532_frame(bytes([0xD5, 0x4B, 0x00]))
    stream = (ACK + b"\x00\x00\x00" + b"\x12\x34" + chip_frame(b"\xd5\x15", corrupt=True)
              + bytes([0x00, 0x00, 0xFF, 0x05, 0x01]) + ERROR_FRAME
              + bytes.fromhex("0000FFFF0000") + response)
    whole = Pn532Decoder().feed(stream)
    assert whole[1] == Garbled("noise between frames", b"\x12\x34", noise=True)
    decoder = Pn532Decoder()
    for found in (whole, [item for byte in stream for item in decoder.feed(bytes([byte]))]):
        frames = [f for f in found if not (isinstance(f, Garbled) and f.noise)]
        assert frames == [
            Pn532Ack(),
            Garbled("bad data checksum", chip_frame(b"\xd5\x15", corrupt=True)[1:-1]),
            Garbled("bad frame length or length checksum", bytes.fromhex("00FF0501")),
            Pn532ErrorFrame(),
            Pn532Nack(),
            Pn532Response(0x4B, b"\x00"),
        ]
    host = Pn532Decoder().feed(pn532_frame(b"\xd4\x4a\x01\x00"))
    assert host == [Garbled("unexpected frame identifier D4", b"\xd4\x4a\x01\x00")]


def test_pn532_extended_frame() -> None:
    body = bytes([0xD5, 0x41, 0x00]) + bytes(range(256))
    length = len(body)
    frame = (bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, length >> 8, length & 0xFF,
                    -(length >> 8) - (length & 0xFF) & 0xFF]) + body
             + bytes([-sum(body) & 0xFF, 0x00]))
    assert Pn532Decoder().feed(frame) == [Pn532Response(0x41, body[2:])]


def test_type_a_uid() -> None:
    def answer(uid: bytes, ats: bytes = b"") -> bytes:
        return bytes([0x01, 0x01, 0x00, 0x44, 0x20, len(uid)]) + uid + ats

    assert type_a_uid(b"\x00") is None
    assert type_a_uid(answer(bytes.fromhex("DEADBEEF"))) == "DEADBEEF"
    assert type_a_uid(answer(bytes(range(1, 8)), b"\x05\x78\x80\x70\x02")) == "01020304050607"
    assert type_a_uid(answer(bytes(range(10)))) == "00010203040506070809"
    for broken in (b"", answer(bytes(5)), answer(bytes(7))[:-2], b"\x01\x01\x00"):
        with pytest.raises(UidError):
            type_a_uid(broken)
