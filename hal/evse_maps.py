"""Register maps of Modbus-controlled EVSE controller boards, as data.

EVSE-WB / EVSE-DIN / EVSE-W16 (SimpleEVSE-WB; Martin Stegemann, evracing), a Modbus RTU slave.
Source: the board's manual, "EVSE Wallbox, DIN, W16 - datasheet" (section "Modbus"), as
published by the seller at
https://files.ev-power.eu/inc/_doc/attach/StoItem/4418/evse-wb-din_Manual.pdf
The manual itself was not at hand while writing this table. What the driver relies on (1000
written with function 16, 1000..1002 read with function 3, vehicle-state codes 1..5 = A..E,
serial defaults 9600 8N1 and address 1) was cross-checked against three independent open-source
drivers of this board: evcc (charger/simpleevse.go), openWB (packages/modules/common/evse.py,
which also names 1005 firmware and 2005 bit 7) and SimpleEVSE-WiFi (src/main.cpp, which names
1000..1007 and 2000..2007 and writes 2005 bits 13/14). Entries marked "informative" are not used
by the driver; check them against the manual of your firmware before relying on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.interfaces import PilotState


@dataclass(frozen=True, slots=True)
class Register:
    address: int  # holding register; the manual's numbers go on the wire as is (no 40001 offset)
    name: str
    access: str  # "r" or "rw"
    encoding: str
    meaning: str


@dataclass(frozen=True, slots=True)
class EvseBoardMap:
    name: str
    registers: tuple[Register, ...]
    vehicle_states: dict[int, PilotState]  # value of the vehicle-state register -> pilot state
    min_amps: int  # smallest non-zero setpoint the board takes; below it only 0 is valid
    max_amps: int

    def __getitem__(self, name: str) -> Register:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(name)


EVSE_WB = EvseBoardMap(
    name="EVSE-WB / EVSE-DIN (SimpleEVSE)",
    registers=(
        Register(1000, "configured_amps", "rw", "uint16, whole amperes: 0 or 6..80",
                 "current offered to the vehicle through the PWM; 0 = no PWM, steady +12 V, "
                 "no charging. Volatile: reloaded from 2000 at power-up"),
        Register(1001, "output_amps", "r", "uint16, whole amperes",
                 "current the PWM offers now (1000 limited by the cable's PP rating)"),
        Register(1002, "vehicle_state", "r", "uint16 enum",
                 "1 ready (A), 2 EV present (B), 3 charging (C), "
                 "4 charging with ventilation (D), 5 failure, e.g. diode check (E)"),
        Register(1003, "pp_limit", "r", "uint16, whole amperes",
                 "cable rating read from the proximity-pilot resistor (informative)"),
        Register(1004, "turn_off", "rw", "bit field",
                 "bit 0: turn off charging now (informative; the driver writes 0 to 1000)"),
        Register(1005, "firmware", "r", "uint16", "firmware revision (informative)"),
        Register(1006, "evse_state", "r", "uint16 enum",
                 "1 steady +12 V, 2 PWM generated, 3 off (informative)"),
        Register(1007, "rcd_status", "r", "uint16", "RCD status on boards with RCM (informative)"),
        Register(2000, "amps_after_boot", "rw", "uint16, whole amperes, EEPROM",
                 "value 1000 takes at power-up (informative; set it to 0 so a rebooting board "
                 "offers nothing until the agent says so)"),
        Register(2001, "modbus_enabled", "rw", "uint16, EEPROM",
                 "Modbus control of 1000 enabled; factory setting is off (informative)"),
        Register(2005, "config_bits", "rw", "bit field, EEPROM",
                 "bit 7: 1000 in 0.01 A steps (firmware dependent; must stay 0 for this "
                 "driver), bit 13: disable EVSE after charge, bit 14: disable EVSE "
                 "(informative)"),
    ),
    vehicle_states={
        1: PilotState.A,
        2: PilotState.B,
        3: PilotState.C,
        4: PilotState.D,
        5: PilotState.E,
    },
    min_amps=6,
    max_amps=80,
)
