"""Card reader frame formats as data, and decoders for them that do no I/O.

The decoders take bytes as they arrive — split anywhere, with noise between frames — and return
what they found: a `CardRead` with the card's OCPP idTag, or a `Garbled` record saying what was
skipped and why. Keeping them free of ports lets the drivers in `hal.card_readers` stay thin and
lets every framing rule be tested byte by byte.

A card's idTag is its UID as upper-case hex without separators. OCPP 1.6 limits an idToken to
20 characters, which is exactly a 10-byte ISO 14443A UID, the longest any of these readers reads;
anything longer is reported as garbled rather than truncated, since a truncated tag could
authorize the wrong card.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import xor

ID_TAG_MAX = 20  # OCPP 1.6 IdToken is CiString20Type

_HEX_DIGITS = frozenset(string.hexdigits.encode())
_SEPARATORS = str.maketrans("", "", ":- ")


class UidError(ValueError):
    """A UID that cannot become an idTag (empty, not hex, too long)."""


def id_tag_from_bytes(uid: bytes) -> str:
    if not uid:
        raise UidError("empty UID")
    tag = uid.hex().upper()
    if len(tag) > ID_TAG_MAX:
        raise UidError(f"UID of {len(uid)} bytes is longer than an idTag ({ID_TAG_MAX} hex chars)")
    return tag


def id_tag_from_hex(text: str) -> str:
    """`04:a1:b2:c3` -> `04A1B2C3`; an odd digit count gets its lost leading zero back."""
    digits = text.strip().translate(_SEPARATORS)
    if not digits or not all(c in string.hexdigits for c in digits):
        raise UidError(f"not a hex UID: {text!r}")
    if len(digits) % 2:
        digits = "0" + digits
    return id_tag_from_bytes(bytes.fromhex(digits))


def id_tag_from_decimal(text: str) -> str:
    """`0012345678` -> `00BC614E`.

    Decimal readers print the UID as one number, which loses leading zero bytes; padding to at
    least 4 bytes gives the common 4-byte UIDs the same idTag a hex or PN532 reader would give.
    """
    digits = text.strip()
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 25:
        raise UidError(f"not a decimal UID: {text!r}")
    value = int(digits)
    size = max(4, (value.bit_length() + 7) // 8)
    return id_tag_from_bytes(value.to_bytes(size, "big"))


@dataclass(frozen=True, slots=True)
class CardRead:
    uid: str  # the idTag


@dataclass(frozen=True, slots=True)
class Garbled:
    reason: str
    raw: bytes = b""
    noise: bool = False  # bytes outside any frame, as opposed to a broken frame


Decoded = CardRead | Garbled


# --- ASCII-hex framed 125 kHz readers (RDM6300 and its clones) -----------------------------------

@dataclass(frozen=True, slots=True)
class AsciiHexFormat:
    """START, `data_chars` hex digits of card data, `checksum_chars` hex digits, END."""

    start: int
    end: int
    data_chars: int
    checksum_chars: int
    checksum: Callable[[bytes], int]

    @property
    def body_chars(self) -> int:
        return self.data_chars + self.checksum_chars


# EM4100 id: version/customer byte + 4 data bytes; all five make the tag, as the checksum covers
# them and two cards may differ only in the first.
RDM6300 = AsciiHexFormat(start=0x02, end=0x03, data_chars=10, checksum_chars=2,
                         checksum=lambda data: reduce(xor, data, 0))

_NOISE_REPORT = 64  # report (and forget) runs of noise at this size so memory stays bounded


class AsciiHexDecoder:
    def __init__(self, fmt: AsciiHexFormat = RDM6300) -> None:
        self._fmt = fmt
        self._frame: bytearray | None = None  # None while hunting for START
        self._noise = bytearray()

    def feed(self, data: bytes) -> list[Decoded]:
        fmt, out = self._fmt, []
        for byte in data:
            if byte == fmt.start:
                if self._noise:
                    out.append(Garbled("noise between frames", bytes(self._noise), noise=True))
                    self._noise.clear()
                if self._frame is not None:
                    out.append(Garbled("truncated frame", bytes([fmt.start]) + self._frame))
                self._frame = bytearray()
            elif self._frame is None:
                self._noise.append(byte)
                if len(self._noise) >= _NOISE_REPORT:
                    out.append(Garbled("noise between frames", bytes(self._noise), noise=True))
                    self._noise.clear()
            elif byte == fmt.end:
                out.append(self._finish(bytes(self._frame)))
                self._frame = None
            else:
                self._frame.append(byte)
                if len(self._frame) > fmt.body_chars:
                    out.append(Garbled("overlong frame", bytes([fmt.start]) + self._frame))
                    self._frame = None
        return out

    def _finish(self, body: bytes) -> Decoded:
        fmt = self._fmt
        raw = bytes([fmt.start]) + body + bytes([fmt.end])
        if len(body) != fmt.body_chars:
            return Garbled(f"wrong length ({len(body)} characters, expected {fmt.body_chars})", raw)
        if not all(c in _HEX_DIGITS for c in body):
            return Garbled("not hex", raw)
        data = bytes.fromhex(body[: fmt.data_chars].decode())
        stated = int(body[fmt.data_chars:], 16)
        computed = fmt.checksum(data)
        if stated != computed:
            return Garbled(f"bad checksum (frame says {stated:02X}, data gives {computed:02X})",
                           raw)
        try:
            return CardRead(id_tag_from_bytes(data))
        except UidError as exc:
            return Garbled(str(exc), raw)


# --- line-based readers -------------------------------------------------------------------------

LINE_FORMATS: dict[str, Callable[[str], str]] = {
    "hex": id_tag_from_hex,
    "decimal": id_tag_from_decimal,
}

LINE_MAX = 64  # far beyond any UID with separators; a longer line is noise or a wrong baudrate


class LineDecoder:
    def __init__(self, parse: Callable[[str], str] = id_tag_from_hex) -> None:
        self._parse = parse
        self._line = bytearray()
        self._overlong = False  # dropping bytes until the next newline

    def feed(self, data: bytes) -> list[Decoded]:
        out: list[Decoded] = []
        for byte in data:
            if byte == 0x0A:
                if not self._overlong:
                    line = bytes(self._line).rstrip(b"\r")
                    if line.strip():
                        out.append(self._decode(line))
                self._line.clear()
                self._overlong = False
            elif not self._overlong:
                self._line.append(byte)
                if len(self._line) > LINE_MAX:
                    out.append(Garbled(f"line longer than {LINE_MAX} characters",
                                       bytes(self._line)))
                    self._line.clear()
                    self._overlong = True
        return out

    def _decode(self, line: bytes) -> Decoded:
        try:
            return CardRead(self._parse(line.decode("ascii")))
        except (UnicodeDecodeError, UidError) as exc:
            reason = str(exc) if isinstance(exc, UidError) else "not ASCII"
            return Garbled(reason, line)


# --- PN532 over HSU (its UART) ------------------------------------------------------------------

PN532_HOST_TFI = 0xD4
PN532_TFI = 0xD5
PN532_ERROR_TFI = 0x7F
PN532_ACK = bytes.fromhex("0000FF00FF00")
PN532_NACK = bytes.fromhex("0000FFFF0000")
# 0x55 0x55 then a long run of zeros wakes an HSU PN532 from power-down (PN532 user manual 7.2.11;
# libnfc sends the same 16 bytes); the first command after it must be SAMConfiguration.
PN532_WAKEUP = bytes([0x55, 0x55]) + bytes(14)
PN532_MAX_DATA = 264  # the longest information frame a PN532 sends


def pn532_frame(data: bytes) -> bytes:
    """A normal information frame: 00 00 FF LEN LCS data DCS 00 (data starts with the TFI)."""
    if not 1 <= len(data) <= 255:
        raise ValueError("a normal PN532 frame carries 1 to 255 bytes")
    return (bytes([0x00, 0x00, 0xFF, len(data), -len(data) & 0xFF]) + data
            + bytes([-sum(data) & 0xFF, 0x00]))


@dataclass(frozen=True, slots=True)
class Pn532Command:
    name: str
    code: int
    params: bytes = b""

    @property
    def response_code(self) -> int:
        return self.code + 1

    def frame(self) -> bytes:
        return pn532_frame(bytes([PN532_HOST_TFI, self.code]) + self.params)


# Normal mode (no SAM), virtual-card timeout 1 s, IRQ used (irrelevant on HSU).
SAM_CONFIGURATION = Pn532Command("SAMConfiguration", 0x14, bytes([0x01, 0x14, 0x01]))
# CfgItem 5 (MaxRetries): ATR 0xFF, PSL 0x01, passive activation 0x02. The power-on default 0xFF
# for passive activation means "retry forever", so InListPassiveTarget would not answer until a
# card comes; bounded retries turn it into a poll that answers "no target" within milliseconds.
RF_MAX_RETRIES = Pn532Command("RFConfiguration", 0x32, bytes([0x05, 0xFF, 0x01, 0x02]))
# MaxTg 1, BrTy 0x00 = 106 kbps type A (ISO 14443A / MIFARE).
LIST_TYPE_A = Pn532Command("InListPassiveTarget", 0x4A, bytes([0x01, 0x00]))

TYPE_A_UID_SIZES = (4, 7, 10)  # ISO 14443-3 single, double and triple size


@dataclass(frozen=True, slots=True)
class Pn532Ack:
    pass


@dataclass(frozen=True, slots=True)
class Pn532Nack:
    pass


@dataclass(frozen=True, slots=True)
class Pn532ErrorFrame:
    """The PN532 found an application-level error (e.g. a syntax error) in the last command."""


@dataclass(frozen=True, slots=True)
class Pn532Response:
    code: int  # command code + 1
    data: bytes


Pn532Frame = Pn532Ack | Pn532Nack | Pn532ErrorFrame | Pn532Response | Garbled


class Pn532Decoder:
    def __init__(self) -> None:
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Pn532Frame]:
        self._buf += data
        out: list[Pn532Frame] = []
        while (item := self._next()) is not None:
            out.append(item)
        return out

    def _skip(self, count: int) -> Garbled | None:
        """Drop `count` leading bytes; zeros are pre/postambles, anything else is noise."""
        junk = bytes(self._buf[:count])
        del self._buf[:count]
        junk = junk.strip(b"\x00")
        return Garbled("noise between frames", junk, noise=True) if junk else None

    def _next(self) -> Pn532Frame | None:
        buf = self._buf
        while True:
            start = buf.find(b"\x00\xff")
            if start < 0:
                # keep a trailing 00: it may be the first half of a start code
                keep = 1 if buf.endswith(b"\x00") else 0
                noise = self._skip(len(buf) - keep)
                return noise
            if start > 0:
                noise = self._skip(start)
                if noise is not None:
                    return noise
                continue
            if len(buf) < 4:
                return None
            length, lcs = buf[2], buf[3]
            if (length, lcs) == (0x00, 0xFF):
                del buf[:4]
                return Pn532Ack()
            if (length, lcs) == (0xFF, 0x00):
                del buf[:4]
                return Pn532Nack()
            if (length, lcs) == (0xFF, 0xFF):  # extended frame: 00 FF FF FF LENM LENL LCS
                if len(buf) < 7:
                    return None
                length, header = buf[4] << 8 | buf[5], 7
                length_ok = (buf[4] + buf[5] + buf[6]) & 0xFF == 0
            else:
                header, length_ok = 4, (length + lcs) & 0xFF == 0
            if not length_ok or not 1 <= length <= PN532_MAX_DATA:
                # drop only the start code: the real next frame may begin inside these bytes
                raw = bytes(buf[:header])
                del buf[:2]
                return Garbled("bad frame length or length checksum", raw)
            end = header + length + 1
            if len(buf) < end:
                return None
            body, dcs = bytes(buf[header:header + length]), buf[header + length]
            if (sum(body) + dcs) & 0xFF:
                raw = bytes(buf[:end])
                del buf[:2]
                return Garbled("bad data checksum", raw)
            del buf[:end]
            return self._frame(body)

    @staticmethod
    def _frame(body: bytes) -> Pn532Frame:
        if body == bytes([PN532_ERROR_TFI]):
            return Pn532ErrorFrame()
        if body[0] == PN532_TFI and len(body) >= 2:
            return Pn532Response(body[1], body[2:])
        return Garbled(f"unexpected frame identifier {body[0]:02X}", body)


def type_a_uid(data: bytes) -> str | None:
    """The idTag of the first target in an InListPassiveTarget (106 kbps type A) answer.

    `data` follows the response code: NbTg, then per target Tg, SENS_RES (2), SEL_RES,
    NFCIDLength, NFCID1 and, for ISO 14443-4 cards, the ATS, which is not needed here.
    None when no card is in the field; UidError when the answer does not add up.
    """
    if not data:
        raise UidError("empty InListPassiveTarget answer")
    if data[0] == 0:
        return None
    if len(data) < 6:
        raise UidError(f"InListPassiveTarget answer too short ({data.hex()})")
    size = data[5]
    if size not in TYPE_A_UID_SIZES:
        raise UidError(f"UID length {size} is not 4, 7 or 10 bytes")
    uid = data[6:6 + size]
    if len(uid) != size:
        raise UidError(f"InListPassiveTarget answer cut short ({data.hex()})")
    return id_tag_from_bytes(uid)


# --- models ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReaderModel:
    baudrate: int
    description: str


READER_MODELS: dict[str, ReaderModel] = {
    "rdm6300": ReaderModel(9600, "125 kHz EM4100 reader sending STX, 12 hex chars, ETX"),
    "pn532": ReaderModel(115200, "NXP PN532 NFC controller on its HSU (UART) interface"),
    "line": ReaderModel(9600, "reader printing one UID per line"),
}

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
