"""Serial RFID card readers: RDM6300-style 125 kHz readers, a PN532 on its UART, line readers.

pyserial blocks, so each reader owns one daemon thread that reads with a short timeout (that is
what makes `stop()` prompt) and hands events to the asyncio loop with `call_soon_threadsafe`; the
event loop never waits on a port. Framing rules live in `hal.card_formats`.

A reader usually serves the whole station, so its failure is reported on connector 0: a port that
cannot be opened or fails while reading (USB adapter pulled, cable cut) or a PN532 that stops
answering raises `Fault.READER_FAILURE` once; the driver keeps reopening the port every
`reopen_interval` seconds and clears the fault when the reader works again.

A card held on a reader is read over and over (an RDM6300 repeats its frame about ten times a
second, the PN532 is polled). Reads of one card are one tap until that card has gone unread for
`hold_off` seconds, so a card left on the reader cannot start and then stop a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import termios
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import serial

from hal.card_formats import (
    BAUDRATES,
    LINE_FORMATS,
    LIST_TYPE_A,
    PN532_ACK,
    PN532_WAKEUP,
    READER_MODELS,
    RF_MAX_RETRIES,
    SAM_CONFIGURATION,
    AsciiHexDecoder,
    CardRead,
    Decoded,
    Garbled,
    LineDecoder,
    Pn532Ack,
    Pn532Command,
    Pn532Decoder,
    Pn532ErrorFrame,
    Pn532Frame,
    Pn532Response,
    UidError,
    type_a_uid,
)
from hal.interfaces import (
    CardPresented,
    CardReader,
    EventSink,
    Fault,
    FaultCleared,
    FaultRaised,
    HalEvent,
)
from hal.options import DriverConfigError, Options

__all__ = [
    "DriverConfigError",
    "LineReader",
    "Pn532Reader",
    "Rdm6300Reader",
    "SerialCardReader",
    "TapFilter",
    "build_card_reader",
]

log = logging.getLogger(__name__)

STATION = 0
READ_TIMEOUT = 0.05  # the longest a reader thread sits in read() before it looks at stop()
WRITE_TIMEOUT = 0.5
STOP_JOIN_TIMEOUT = 2.0
GARBLED_WARNING_EVERY = 60.0
# A port's own errors (SerialException is an OSError) plus what pyserial lets through unwrapped
# from termios calls such as tcflush on a vanished device.
PORT_ERRORS = (OSError, termios.error)


class TapFilter:
    """Turns card reads into taps: a read within `hold_off` of that card's last read is no tap."""

    def __init__(self, hold_off: float) -> None:
        self.hold_off = hold_off
        self._last_read: dict[str, float] = {}

    def is_new_tap(self, uid: str, now: float) -> bool:
        last = self._last_read.get(uid)
        self._last_read[uid] = now
        if len(self._last_read) > 16:
            self._last_read = {u: t for u, t in self._last_read.items()
                               if now - t < self.hold_off or u == uid}
        return last is None or now - last >= self.hold_off


class _GarbledLog:
    """Each skipped frame at debug level, and a warning at most once a minute.

    A card at the edge of the field or a wrong baudrate garbles frame after frame; the operator
    needs to know that it persists, not to read a line per frame.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._count = 0
        self._next_warning = float("-inf")

    def __call__(self, garbled: Garbled, now: float) -> None:
        log.debug("%s: skipped %s: %r", self._name, garbled.reason, garbled.raw)
        self._count += 1
        if now >= self._next_warning:
            log.warning("%s: skipped %d garbled frame(s) since the last warning (latest: %s)",
                        self._name, self._count, garbled.reason)
            self._count = 0
            self._next_warning = now + GARBLED_WARNING_EVERY


class SerialCardReader(ABC):
    """The thread, port, fault and tap handling shared by the serial readers."""

    model: ClassVar[str]

    def __init__(
        self,
        port: str,
        *,
        baudrate: int | None = None,
        hold_off: float = 2.0,
        reopen_interval: float = 2.0,
        connector_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baudrate = baudrate or READER_MODELS[self.model].baudrate
        self.hold_off = hold_off
        self.reopen_interval = reopen_interval
        self.connector_id = connector_id
        self._clock = clock
        self._name = f"{self.model} card reader on {port}"
        self._taps = TapFilter(hold_off)
        self._garbled = _GarbledLog(self._name)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emit: EventSink | None = None
        self._faulted = False
        self._ready = False

    @property
    def ready(self) -> bool:
        """The port is open (and a PN532 answers): bytes the reader sends now will be read.

        pyserial flushes the input when it opens a port, so anything sent before is lost.
        """
        return self._ready

    async def start(self, emit: EventSink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} is already started")
        self._loop = asyncio.get_running_loop()
        self._emit = emit
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"card-reader:{self.port}",
                                        daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._emit = None  # events already on their way to the loop are dropped
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, STOP_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("%s: reader thread did not stop within %g s (left as a daemon)",
                            self._name, STOP_JOIN_TIMEOUT)

    # --- on the event loop ---

    def _deliver(self, event: HalEvent) -> None:
        emit = self._emit
        if emit is not None:
            emit(event)

    # --- on the reader thread ---

    def _send(self, event: HalEvent) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._stopping.set()

    def _failed(self, info: str) -> None:
        self._ready = False
        if self._faulted:
            log.debug("%s still failing: %s", self._name, info)
            return
        self._faulted = True
        log.warning("%s failed: %s", self._name, info)
        self._send(FaultRaised(STATION, Fault.READER_FAILURE, info))

    def _working(self) -> None:
        self._ready = True
        if self._faulted:
            self._faulted = False
            log.info("%s works again", self._name)
            self._send(FaultCleared(STATION, Fault.READER_FAILURE))

    def _handle(self, item: Decoded) -> None:
        now = self._clock()
        if isinstance(item, Garbled):
            self._garbled(item, now)
        elif self._taps.is_new_tap(item.uid, now):
            log.info("%s: card %s", self._name, item.uid)
            self._send(CardPresented(item.uid, self.connector_id))
        else:
            log.debug("%s: card %s still there", self._name, item.uid)

    def _open(self) -> serial.Serial:
        return serial.Serial(
            self.port, self.baudrate, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE, timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT,
            exclusive=True,  # a second agent or a stray getty on the port would steal bytes
        )

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                port = self._open()
            except PORT_ERRORS as exc:
                self._failed(str(exc))
            except Exception as exc:
                log.exception("%s: unexpected error opening the port", self._name)
                self._failed(f"cannot open {self.port}: {exc!r}")
            else:
                try:
                    self._serve(port)
                except PORT_ERRORS as exc:
                    self._failed(str(exc) or repr(exc))
                except Exception as exc:
                    # a driver bug must not end the thread: the reader would go quiet for good
                    log.exception("%s: unexpected error", self._name)
                    self._failed(f"driver error: {exc!r}")
                finally:
                    self._ready = False
                    try:
                        port.close()
                    except Exception:
                        log.debug("%s: error closing the port", self._name, exc_info=True)
            self._stopping.wait(self.reopen_interval)

    @abstractmethod
    def _serve(self, port: serial.Serial) -> None:
        """Read cards until stopped (return) or the port fails (raise)."""


class _StreamReader(SerialCardReader):
    """A reader that sends on its own whenever it sees a card."""

    @abstractmethod
    def _decoder(self) -> AsciiHexDecoder | LineDecoder:
        """A fresh decoder for this reader's frames."""

    def _serve(self, port: serial.Serial) -> None:
        # a fresh decoder per connection, so half a frame from before an unplug is not glued to
        # the first frame after it
        decoder = self._decoder()
        self._working()
        while not self._stopping.is_set():
            data = port.read(max(1, port.in_waiting))
            if data:
                for item in decoder.feed(data):
                    self._handle(item)


class Rdm6300Reader(_StreamReader):
    model = "rdm6300"

    def _decoder(self) -> AsciiHexDecoder:
        return AsciiHexDecoder()


class LineReader(_StreamReader):
    model = "line"

    def __init__(self, port: str, *, number_format: str = "hex", **kwargs: Any) -> None:
        super().__init__(port, **kwargs)
        if number_format not in LINE_FORMATS:
            raise ValueError(f"number_format must be one of {sorted(LINE_FORMATS)}")
        self.number_format = number_format

    def _decoder(self) -> LineDecoder:
        return LineDecoder(LINE_FORMATS[self.number_format])


class Pn532Reader(SerialCardReader):
    """A PN532 on HSU, polled for ISO 14443A cards with InListPassiveTarget."""

    model = "pn532"
    # A PN532 may miss one wake-up (still powering up, a byte lost); three in a row is a reader
    # that is not there or not wired for HSU.
    SILENT_WAKEUPS_BEFORE_FAULT = 3

    def __init__(
        self,
        port: str,
        *,
        ack_timeout: float = 0.2,
        response_timeout: float = 1.0,
        poll_interval: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(port, **kwargs)
        self.ack_timeout = ack_timeout
        self.response_timeout = response_timeout
        self.poll_interval = poll_interval
        # frames decoded but not yet looked at: the ACK and the response often arrive in one read
        self._pending: deque[Pn532Frame] = deque()

    def _serve(self, port: serial.Serial) -> None:
        decoder = Pn532Decoder()
        awake = False
        silent = 0
        while not self._stopping.is_set():
            if not awake:
                awake = self._wake(port, decoder)
                if not awake:
                    silent += 1
                    if silent >= self.SILENT_WAKEUPS_BEFORE_FAULT:
                        self._failed(f"PN532 on {self.port} does not answer "
                                     f"({silent} wake-ups without a proper answer)")
                    self._stopping.wait(self.reopen_interval)
                    continue
                silent = 0
                self._working()
            reply = self._command(port, decoder, LIST_TYPE_A)
            if reply is None:
                if not self._stopping.is_set():
                    log.info("%s: no answer to %s; waking it again", self._name, LIST_TYPE_A.name)
                awake = False
                continue
            if isinstance(reply, Pn532Response):
                try:
                    uid = type_a_uid(reply.data)
                except UidError as exc:
                    self._handle(Garbled(str(exc), reply.data))
                else:
                    if uid is not None:
                        self._handle(CardRead(uid))
            elif isinstance(reply, Pn532ErrorFrame):
                self._handle(Garbled(f"PN532 error frame in answer to {LIST_TYPE_A.name}"))
            self._stopping.wait(self.poll_interval)

    def _wake(self, port: serial.Serial, decoder: Pn532Decoder) -> bool:
        for command, prefix in ((SAM_CONFIGURATION, PN532_WAKEUP), (RF_MAX_RETRIES, b"")):
            reply = self._command(port, decoder, command, prefix)
            if not isinstance(reply, Pn532Response):
                if isinstance(reply, Pn532ErrorFrame | Garbled):
                    log.warning("%s: %s failed (%s)", self._name, command.name, reply)
                return False
        return True

    def _command(
        self, port: serial.Serial, decoder: Pn532Decoder, command: Pn532Command,
        prefix: bytes = b"",
    ) -> Pn532Frame | None:
        """Send `command`; its response, an error frame, a garbled frame, or None (no answer)."""
        # Whatever is pending is the late answer to something given up on; it must not be
        # taken for the answer to this command.
        port.reset_input_buffer()
        decoder.reset()
        self._pending.clear()
        port.write(prefix + command.frame())
        ack = self._wait(port, decoder, self.ack_timeout,
                         lambda f: isinstance(f, Pn532Ack | Pn532ErrorFrame))
        if not isinstance(ack, Pn532Ack):
            return ack
        reply = self._wait(
            port, decoder, self.response_timeout,
            lambda f: isinstance(f, Pn532ErrorFrame)
            or (isinstance(f, Pn532Response) and f.code == command.response_code)
            # a broken frame after the ACK is most likely the response; asking again beats
            # waiting out the timeout
            or (isinstance(f, Garbled) and not f.noise),
        )
        if reply is None and self._stopping.is_set():
            port.write(PN532_ACK)  # an ACK from the host aborts the command in progress
        return reply

    def _wait(
        self, port: serial.Serial, decoder: Pn532Decoder, timeout: float,
        wanted: Callable[[Pn532Frame], bool],
    ) -> Pn532Frame | None:
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set():
            while self._pending:
                frame = self._pending.popleft()
                if isinstance(frame, Garbled):
                    self._garbled(frame, self._clock())
                if wanted(frame):
                    return frame
                if not isinstance(frame, Garbled):
                    log.debug("%s: ignored %s", self._name, frame)
            if time.monotonic() >= deadline:
                return None
            self._pending.extend(decoder.feed(port.read(max(1, port.in_waiting))))
        return None


READERS: dict[str, type[SerialCardReader]] = {
    "rdm6300": Rdm6300Reader,
    "pn532": Pn532Reader,
    "line": LineReader,
}


def build_card_reader(options: dict[str, Any]) -> CardReader:
    """A card reader from the keys of its config table; DriverConfigError lists every problem.

    model            "rdm6300" | "pn532" | "line" (required)
    port             serial device path, e.g. /dev/ttyUSB0 or /dev/serial0 (required)
    baudrate         default 9600 (rdm6300, line) or 115200 (pn532)
    hold_off         seconds a card must go unread before it taps again, default 2
    reopen_interval  seconds between attempts to reopen a failed reader, default 2
    connector        connector id the reader belongs to; absent = the whole station
    format           line readers only: "hex" (default) or "decimal"
    """
    opts = Options(options)
    model = opts.choice("model", READERS, None)
    if "model" not in options:
        opts.error(f"model: required (one of {', '.join(repr(m) for m in READERS)})")
    port = opts.text("port", None, max_length=4096)
    if "port" not in options:
        opts.error("port: required (the reader's serial device, like /dev/ttyUSB0 or "
                   "/dev/serial0)")
    elif port is not None and not port.startswith("/"):
        opts.error(f"port: must be a serial device path like /dev/ttyUSB0 (got {port!r})")
    default_baudrate = READER_MODELS[model].baudrate if model else None
    baudrate = opts.choice("baudrate", BAUDRATES, default_baudrate)
    hold_off = opts.number("hold_off", 2.0, low=0, high=60)
    reopen_interval = opts.number("reopen_interval", 2.0, low=0.05, high=300)
    connector = opts.integer("connector", None, low=1, high=999)
    number_format = opts.choice("format", LINE_FORMATS, "hex")
    if "format" in options and model is not None and model != "line":
        opts.error(f"format: applies only to model 'line' (model is {model!r})")
    opts.finish()

    assert model is not None and port is not None
    common: dict[str, Any] = dict(baudrate=baudrate, hold_off=hold_off,
                                  reopen_interval=reopen_interval, connector_id=connector)
    if model == "line":
        return LineReader(port, number_format=number_format, **common)
    return READERS[model](port, **common)
