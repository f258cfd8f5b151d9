"""Register maps of the supported energy meters, as data.

One `MeterMap` per model says where each quantity lives (register table, address, data type,
word order, scale to Wh/W/A/V), which contiguous blocks to fetch so that a reading costs as few
requests as possible, where the serial number is, and the factory line settings. The driver in
`hal/meters.py` has no per-model branches: a new model is a new entry here.

Addresses are 0-based protocol addresses (what goes on the wire), not the 3xxxx/4xxxx register
numbers of the manuals: Eastron's 30073 "Import active energy" is input register 0x0048.

Choosing blocks: on a 9600-baud line one register costs 2 characters (~2.3 ms) while one more
request costs ~20 characters (request, response header and CRC, two 3.5-character gaps) plus
the meter's own turnaround, often 20-50 ms. So gaps of up to ~20 registers are read through
rather than split, and larger gaps start a new block. Every block stays far below the 125
registers a single Modbus read may carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from fractions import Fraction
from typing import Literal

MAX_REGISTERS_PER_READ = 125  # Modbus Application Protocol v1.1b3, 6.3/6.4


class Table(StrEnum):
    HOLDING = "holding"  # function 03
    INPUT = "input"  # function 04


class DataType(Enum):
    """struct code and size in 16-bit registers."""

    INT16 = ("h", 1)
    UINT16 = ("H", 1)
    INT32 = ("i", 2)
    UINT32 = ("I", 2)
    UINT64 = ("Q", 4)
    FLOAT32 = ("f", 2)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def words(self) -> int:
        return self.value[1]


class Quantity(StrEnum):
    ENERGY = "energy"  # total active energy import, Wh
    POWER = "power"  # total active power, W
    CURRENT_L1 = "current_l1"  # A
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    VOLTAGE_L1 = "voltage_l1"  # V, line to neutral
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"


CURRENTS = (Quantity.CURRENT_L1, Quantity.CURRENT_L2, Quantity.CURRENT_L3)
VOLTAGES = (Quantity.VOLTAGE_L1, Quantity.VOLTAGE_L2, Quantity.VOLTAGE_L3)

# "big": the most significant register comes first (lower address), as Modbus itself orders
# bytes; "little": least significant register first (Carlo Gavazzi's "LSW->MSW").
WordOrder = Literal["big", "little"]


@dataclass(frozen=True, slots=True)
class Field:
    quantity: Quantity
    table: Table
    address: int
    dtype: DataType
    scale: Fraction  # register value x scale = Wh, W, A or V
    word_order: WordOrder = "big"
    invalid: int | None = None  # raw value the meter sends for "not available"

    @property
    def end(self) -> int:
        return self.address + self.dtype.words


@dataclass(frozen=True, slots=True)
class Block:
    table: Table
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class SerialRegister:
    table: Table
    address: int
    count: int
    format: Literal["uint32", "ascii"]  # uint32: printed in decimal; ascii: 2 chars/register


@dataclass(frozen=True, slots=True)
class MeterMap:
    model: str
    title: str
    source: str  # the manufacturer's document the addresses come from
    phases: int
    blocks: tuple[Block, ...]
    fields: tuple[Field, ...]
    serial: SerialRegister | None
    baudrate: int = 9600  # factory setting
    parity: Literal["N", "E", "O"] = "N"

    def field(self, quantity: Quantity) -> Field | None:
        for field in self.fields:
            if field.quantity is quantity:
                return field
        return None


# --- Eastron ------------------------------------------------------------------------------------
# Eastron SDM meters: input registers, IEEE 754 float32, high word first; energy in kWh.


def _eastron(quantity: Quantity, address: int) -> Field:
    scale = Fraction(1000) if quantity is Quantity.ENERGY else Fraction(1)
    return Field(quantity, Table.INPUT, address, DataType.FLOAT32, scale)


_EASTRON_SERIAL = SerialRegister(Table.HOLDING, 0xFC00, 2, "uint32")

SDM630 = MeterMap(
    model="sdm630",
    title="Eastron SDM630 (Modbus V2), three-phase",
    source="Eastron 'SDM630 Modbus Protocol' V2.0 (input registers 30001-30074, "
    "holding register 4FC01 serial number)",
    phases=3,
    blocks=(
        Block(Table.INPUT, 0x0000, 12),  # V L1-L3, I L1-L3
        # Power at 0x0034 and import energy at 0x0048 are 18 registers apart: reading through
        # the gap (~41 ms) is no slower than a third request with the meter's turnaround.
        Block(Table.INPUT, 0x0034, 22),
    ),
    fields=(
        _eastron(Quantity.VOLTAGE_L1, 0x0000),
        _eastron(Quantity.VOLTAGE_L2, 0x0002),
        _eastron(Quantity.VOLTAGE_L3, 0x0004),
        _eastron(Quantity.CURRENT_L1, 0x0006),
        _eastron(Quantity.CURRENT_L2, 0x0008),
        _eastron(Quantity.CURRENT_L3, 0x000A),
        _eastron(Quantity.POWER, 0x0034),  # 30053 total system power
        _eastron(Quantity.ENERGY, 0x0048),  # 30073 total import kWh
    ),
    serial=_EASTRON_SERIAL,
    baudrate=9600,
)

_SDM_SINGLE_PHASE_BLOCKS = (
    Block(Table.INPUT, 0x0000, 14),  # V 0x0000, I 0x0006, P 0x000C: small gaps, one request
    Block(Table.INPUT, 0x0048, 2),  # import energy; 58 registers away, so its own request
)
_SDM_SINGLE_PHASE_FIELDS = (
    _eastron(Quantity.VOLTAGE_L1, 0x0000),  # 30001
    _eastron(Quantity.CURRENT_L1, 0x0006),  # 30007
    _eastron(Quantity.POWER, 0x000C),  # 30013
    _eastron(Quantity.ENERGY, 0x0048),  # 30073 import active energy kWh
)

SDM120 = MeterMap(
    model="sdm120",
    title="Eastron SDM120-Modbus, single-phase",
    source="Eastron 'SDM120 Modbus Protocol' V2.5 (input registers 30001-30074, "
    "holding register 4FC01 serial number)",
    phases=1,
    blocks=_SDM_SINGLE_PHASE_BLOCKS,
    fields=_SDM_SINGLE_PHASE_FIELDS,
    serial=_EASTRON_SERIAL,
    baudrate=2400,  # SDM120 leaves the factory at 2400 baud, unlike the SDM630
)

SDM230 = MeterMap(
    model="sdm230",
    title="Eastron SDM230-Modbus, single-phase",
    source="Eastron 'SDM230 Modbus Protocol' V1.1 (same input register layout as the SDM120)",
    phases=1,
    blocks=_SDM_SINGLE_PHASE_BLOCKS,
    fields=_SDM_SINGLE_PHASE_FIELDS,
    serial=_EASTRON_SERIAL,
    baudrate=2400,
)

# --- ABB ----------------------------------------------------------------------------------------
# ABB B-series: holding registers, big-endian words; energy as uint64 in 0.01 kWh; "not
# available" is sent as the type's all-ones (unsigned) or maximum (signed) value.

_U32_NA = 0xFFFF_FFFF
_S32_NA = 0x7FFF_FFFF
_U64_NA = 0xFFFF_FFFF_FFFF_FFFF


def _abb(quantity: Quantity, address: int, dtype: DataType, scale: Fraction) -> Field:
    invalid = {DataType.UINT32: _U32_NA, DataType.INT32: _S32_NA, DataType.UINT64: _U64_NA}
    return Field(quantity, Table.HOLDING, address, dtype, scale, invalid=invalid[dtype])


ABB_B23 = MeterMap(
    model="abb_b23",
    title="ABB B23 (B21/B23/B24 family), three-phase",
    source="ABB 'B21, B23, B24 User Manual' 2CMC485003M0201, chapter 'Communication with "
    "Modbus' (energy 5000h, instantaneous values 5B00h, serial number 8900h)",
    phases=3,
    blocks=(
        Block(Table.HOLDING, 0x5000, 4),  # active import energy, total
        Block(Table.HOLDING, 0x5B00, 22),  # V L1-N..L3-N, V L-L, I L1-L3, I N, P total
    ),
    fields=(
        _abb(Quantity.ENERGY, 0x5000, DataType.UINT64, Fraction(10)),  # 0.01 kWh = 10 Wh
        _abb(Quantity.VOLTAGE_L1, 0x5B00, DataType.UINT32, Fraction(1, 10)),
        _abb(Quantity.VOLTAGE_L2, 0x5B02, DataType.UINT32, Fraction(1, 10)),
        _abb(Quantity.VOLTAGE_L3, 0x5B04, DataType.UINT32, Fraction(1, 10)),
        _abb(Quantity.CURRENT_L1, 0x5B0C, DataType.UINT32, Fraction(1, 100)),
        _abb(Quantity.CURRENT_L2, 0x5B0E, DataType.UINT32, Fraction(1, 100)),
        _abb(Quantity.CURRENT_L3, 0x5B10, DataType.UINT32, Fraction(1, 100)),
        _abb(Quantity.POWER, 0x5B14, DataType.INT32, Fraction(1, 100)),
    ),
    serial=SerialRegister(Table.HOLDING, 0x8900, 2, "uint32"),
    baudrate=9600,
)

# --- Carlo Gavazzi ------------------------------------------------------------------------------
# EM300 series (EM330, EM340, ET330, ET340): INT32 with the least significant word first,
# V x10, A x1000, W x10, kWh x10. The same table is readable with function 03 and 04.


def _cg(quantity: Quantity, address: int, scale: Fraction) -> Field:
    return Field(quantity, Table.INPUT, address, DataType.INT32, scale, word_order="little")


EM340 = MeterMap(
    model="em340",
    title="Carlo Gavazzi EM340 (EM300 series), three-phase",
    source="Carlo Gavazzi 'EM300 / ET300 series Communication protocol' (EM330, EM340, "
    "ET330, ET340), Modbus RTU; serial number 5000h, 7 registers ASCII",
    phases=3,
    blocks=(
        Block(Table.INPUT, 0x0000, 18),  # V L1-L3 (+ L-L), I L1-L3
        Block(Table.INPUT, 0x0028, 14),  # W sys 0x0028 .. kWh(+) TOT 0x0034
    ),
    fields=(
        _cg(Quantity.VOLTAGE_L1, 0x0000, Fraction(1, 10)),
        _cg(Quantity.VOLTAGE_L2, 0x0002, Fraction(1, 10)),
        _cg(Quantity.VOLTAGE_L3, 0x0004, Fraction(1, 10)),
        _cg(Quantity.CURRENT_L1, 0x000C, Fraction(1, 1000)),
        _cg(Quantity.CURRENT_L2, 0x000E, Fraction(1, 1000)),
        _cg(Quantity.CURRENT_L3, 0x0010, Fraction(1, 1000)),
        _cg(Quantity.POWER, 0x0028, Fraction(1, 10)),
        _cg(Quantity.ENERGY, 0x0034, Fraction(100)),  # kWh x10 -> 100 Wh per unit
    ),
    serial=SerialRegister(Table.HOLDING, 0x5000, 7, "ascii"),
    baudrate=9600,
)


METER_MAPS: dict[str, MeterMap] = {m.model: m for m in (SDM630, SDM120, SDM230, ABB_B23, EM340)}


def check_map(meter_map: MeterMap) -> None:
    """Raise ValueError when a map contradicts itself (a field outside every block, ...)."""
    problems: list[str] = []
    name = meter_map.model
    for block in meter_map.blocks:
        if not 1 <= block.count <= MAX_REGISTERS_PER_READ:
            problems.append(f"{name}: block 0x{block.address:04X} reads {block.count} registers")
        if block.end > 0x10000:
            problems.append(f"{name}: block 0x{block.address:04X} runs past 0xFFFF")
    for a in meter_map.blocks:
        for b in meter_map.blocks:
            if a is not b and a.table == b.table and a.address < b.end and b.address < a.end:
                problems.append(f"{name}: blocks 0x{a.address:04X} and 0x{b.address:04X} overlap")
    for field in meter_map.fields:
        if not any(
            block.table == field.table and block.address <= field.address and field.end <= block.end
            for block in meter_map.blocks
        ):
            problems.append(f"{name}: {field.quantity} at 0x{field.address:04X} is in no block")
    quantities = [field.quantity for field in meter_map.fields]
    if len(set(quantities)) != len(quantities):
        problems.append(f"{name}: a quantity is mapped twice")
    if Quantity.ENERGY not in quantities:
        problems.append(f"{name}: no energy register")
    for group in (CURRENTS, VOLTAGES):
        present = [q for q in group if q in quantities]
        if present and present != list(group[: meter_map.phases]):
            problems.append(f"{name}: {group[0].name.split('_')[0].lower()} per phase does not "
                            f"match {meter_map.phases} phase(s)")
    serial = meter_map.serial
    if serial is not None:
        if serial.format == "uint32" and serial.count != 2:
            problems.append(f"{name}: a uint32 serial number takes 2 registers")
        if not 1 <= serial.count <= MAX_REGISTERS_PER_READ:
            problems.append(f"{name}: serial number register count {serial.count}")
    if problems:
        raise ValueError("; ".join(problems))


for _map in METER_MAPS.values():
    check_map(_map)
