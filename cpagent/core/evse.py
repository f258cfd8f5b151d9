"""EVSEs and their connectors: the state the core keeps of each, and what status follows.

An EVSE is one power path (pilot, contactor, meter) with one or more connectors, of which one
is used at a time; 1.6 speaks of each EVSE as a connector. Availability is kept at three
levels (station, EVSE, connector) because 2.0.1 can change each; a connector is usable only
when all three are operative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cpagent.core.limits import LimitSource
from cpagent.core.model import (
    ChargingState,
    ConnectorStatus,
    IdToken,
    ReadingContext,
    Sample,
    Transaction,
)
from cpagent.core.schedules import ChargingProfile
from hal.interfaces import Fault, MeterReading, PilotState


@dataclass
class PendingAuth:
    """A token presented for an EVSE that has no authorized transaction yet."""

    token: IdToken
    since: float
    authorized: bool = False
    group: IdToken | None = None
    remote: bool = False  # asked for by the CSMS
    remote_start_id: int | None = None
    profile: ChargingProfile | None = None  # for the transaction it starts (remote start)
    reservation_id: int | None = None  # the reservation its token claimed at this EVSE


class Connector:
    def __init__(self, connector_id: int, operative: bool) -> None:
        self.id = connector_id
        self.operative = operative
        self.scheduled_operative: bool | None = None  # waits for the session's end
        self.reported: tuple | None = None


class Evse:
    def __init__(self, evse_id: int, operative: bool,
                 connectors: dict[int, Connector]) -> None:
        self.id = evse_id
        self.connectors = connectors
        self.operative = operative
        self.scheduled_operative: bool | None = None
        self.pilot = PilotState.A
        self.faults: dict[Fault, str] = {}
        self.pending: PendingAuth | None = None
        self.transaction: Transaction | None = None
        self.finishing = False
        self.contactor_closed = False
        self.offered_amps = 0.0
        self.limit_source = LimitSource.HARDWARE  # what set the offer last time
        self.share_cut = False  # sharing the supply leaves it less than its own limit
        # A higher offer it had until lately: its vehicle may still draw that until then.
        self.former_offer = 0.0
        self.former_until = 0.0
        self.reading: MeterReading | None = None
        self.reading_stale = False  # the meter stopped answering: its last reading is old
        self.reset_pending = False  # an EVSE reset waits for its session to end

    def connector(self, connector_id: int) -> Connector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise ValueError(f"EVSE {self.id} has no connector {connector_id}") from None

    @property
    def active_connector(self) -> int:
        """The connector in use: the transaction's, else the first (one cable at a time)."""
        if self.transaction is not None:
            return self.transaction.connector_id
        return next(iter(self.connectors))

    def sample(self, timestamp: float, context: ReadingContext) -> Sample:
        assert self.reading is not None
        return Sample(timestamp, context, self.reading, self.offered_amps)

    def energy(self, default: float = 0.0) -> float:
        if self.reading is None or self.reading.energy_wh is None:
            return default
        return self.reading.energy_wh


class Station:
    """The state the core's parts share: the EVSEs and what holds for the station."""

    def __init__(self, evses: dict[int, Evse], operative: bool) -> None:
        self.evses = evses
        self.operative = operative
        self.faults: dict[Fault, str] = {}
        self.online = False
        self.clock_trusted = False
        self.reset_pending: bool | None = None  # hard? once a station reset waits
        self.reported: tuple | None = None
        # Whether an EVSE is kept for a reservation whose driver has not claimed it (the
        # facade's reservations answer; nothing is reserved until they do).
        self.kept_for_reservation: Callable[[Evse], bool] = lambda evse: False

    def evse(self, evse_id: int) -> Evse:
        try:
            return self.evses[evse_id]
        except KeyError:
            raise ValueError(f"no EVSE {evse_id}") from None

    def all_faults(self, evse: Evse) -> dict[Fault, str]:
        return {**self.faults, **evse.faults}

    def blocked(self, evse: Evse) -> bool:
        return any(f.blocks_charging for f in self.all_faults(evse))

    def usable(self, evse: Evse) -> bool:
        """A new session may begin here (once a reset is under way, none may)."""
        return (
            self.operative
            and evse.operative
            and any(c.operative for c in evse.connectors.values())
            and not self.blocked(evse)
            and self.reset_pending is None
            and not evse.reset_pending
        )

    def transactions(self) -> list[Transaction]:
        return [e.transaction for e in self.evses.values() if e.transaction is not None]

    # ---- what the CSMS should see now: state, not history ------------------------------------

    def status(self, evse: Evse, connector: Connector) -> tuple[ConnectorStatus, Fault | None,
                                                                 str]:
        faults = self.all_faults(evse)
        blocking = [f for f in faults if f.blocks_charging]
        shown = blocking[0] if blocking else next(iter(faults), None)
        info = faults.get(shown, "") if shown else ""
        if blocking:
            return ConnectorStatus.FAULTED, shown, info
        tx = evse.transaction
        in_use = evse.active_connector == connector.id
        if tx is not None and in_use:
            if tx.stopping is not None:
                status = ConnectorStatus.FINISHING  # authorized no more
            elif not tx.authorized:
                # Started on the plug and not authorized yet. On a reserved EVSE that stays
                # Reserved until the reservation's token comes (2.0.1 G01.FR.09, H03).
                status = (ConnectorStatus.RESERVED if self.kept_for_reservation(evse)
                          else ConnectorStatus.PREPARING)
            elif evse.contactor_closed:
                status = ConnectorStatus.CHARGING
            elif evse.offered_amps <= 0 or not evse.pilot.vehicle_present:
                status = ConnectorStatus.SUSPENDED_EVSE
            else:
                status = ConnectorStatus.SUSPENDED_EV
        elif not (connector.operative and evse.operative and self.operative):
            status = ConnectorStatus.UNAVAILABLE
        elif tx is not None:
            status = ConnectorStatus.UNAVAILABLE  # another connector of the EVSE is in use
        elif evse.finishing:
            status = ConnectorStatus.FINISHING
        elif self.kept_for_reservation(evse):
            # A car, or a card that is not the reservation's, does not change that.
            status = ConnectorStatus.RESERVED
        elif evse.pilot.vehicle_present or evse.pending is not None:
            status = ConnectorStatus.PREPARING
        else:
            status = ConnectorStatus.AVAILABLE
        return status, shown, info

    def station_status(self) -> tuple[ConnectorStatus, Fault | None, str]:
        blocking = [f for f in self.faults if f.blocks_charging]
        shown = blocking[0] if blocking else next(iter(self.faults), None)
        info = self.faults.get(shown, "") if shown else ""
        if blocking:
            return ConnectorStatus.FAULTED, shown, info
        if not self.operative:
            return ConnectorStatus.UNAVAILABLE, shown, info
        return ConnectorStatus.AVAILABLE, shown, info


def charging_state(evse: Evse, plan: tuple[float, bool] | None = None) -> ChargingState:
    """The energy flow of the EVSE's transaction as 2.0.1 names it; with a power `plan`
    (offer, closed), as it will be once the plan is carried out."""
    offered, closed = plan if plan is not None else (evse.offered_amps, evse.contactor_closed)
    tx = evse.transaction
    if not evse.pilot.vehicle_present:
        return ChargingState.IDLE
    if closed:
        return ChargingState.CHARGING
    if tx is None or not tx.authorized:
        return ChargingState.EV_CONNECTED
    if tx.stopping is not None or tx.suspended_by_csms or offered <= 0:
        return ChargingState.SUSPENDED_EVSE
    return ChargingState.SUSPENDED_EV
