"""OCPP 1.6 Smart Charging: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.

The 1.6 words (ChargePointMaxProfile, connector 0, integer transaction ids) are turned into the
core's profiles here, and every rejection 1.6 names is made here, before the core sees the
profile: a ChargePointMaxProfile off connector 0, a TxProfile on connector 0 or without the
transaction it names running, a stack level, a period count or a number of profiles beyond
what the station reports. The core keeps them, applies them to the pilot and persists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cpagent.clock import format_time
from cpagent.core.limits import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from cpagent.core.schedules import ChargingProfile, ProfilePurpose
from cpagent.core.station import ChargingStation
from cpagent.host import AdapterHost
from cpagent.schedule_wire import (
    UNITS,
    InvalidProfile,
    composite_duration,
    composite_minimum,
    composite_periods,
    profile_from_wire,
    schedule_start,
)

log = logging.getLogger(__name__)

PURPOSES = {
    "ChargePointMaxProfile": ProfilePurpose.STATION_MAX,
    "TxDefaultProfile": ProfilePurpose.TX_DEFAULT,
    "TxProfile": ProfilePurpose.TX,
}
PURPOSE_WORDS = {v: k for k, v in PURPOSES.items()}

ACCEPTED = {"status": "Accepted"}
REJECTED = {"status": "Rejected"}


def _rejected(why: str) -> dict:
    log.info("SetChargingProfile rejected: %s", why)
    return REJECTED


def profile_of(d: dict, connector_id: int, transaction: str | None,
               now: float) -> ChargingProfile:
    """A 1.6 csChargingProfiles as the core's profile; InvalidProfile says why it cannot be."""
    if d["stackLevel"] > MAX_STACK_LEVEL:
        raise InvalidProfile(f"stackLevel {d['stackLevel']} is above "
                             f"ChargeProfileMaxStackLevel ({MAX_STACK_LEVEL})")
    return profile_from_wire(
        d, d["chargingSchedule"], profile_id=d["chargingProfileId"],
        purpose=PURPOSES[d["chargingProfilePurpose"]], evse_id=connector_id,
        transaction=transaction, now=now, max_periods=MAX_PERIODS)


def replaced_by(profile: ChargingProfile, installed: list[ChargingProfile]) -> list[int]:
    """1.6 3.13.2: the same id, or the same stack level and purpose (on the same connector),
    is replaced rather than added."""
    return [p.id for p in installed if p.id == profile.id or (
        p.stack_level == profile.stack_level and p.purpose is profile.purpose
        and p.evse_id == profile.evse_id)]


class SmartCharging:
    def __init__(self, host: AdapterHost, ref_of: Callable[[int], str | None]) -> None:
        self.host = host
        self.connectors = len(host.info.evses)
        self._ref_of = ref_of  # the core's reference of a 1.6 transactionId

    async def set_charging_profile(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        d = payload["csChargingProfiles"]
        purpose = PURPOSES[d["chargingProfilePurpose"]]
        if connector_id > self.connectors:
            return _rejected(f"there is no connector {connector_id}")
        if purpose is ProfilePurpose.STATION_MAX and connector_id != 0:
            return _rejected("a ChargePointMaxProfile is set on connector 0 only")
        if purpose is ProfilePurpose.STATION_MAX and d["chargingProfileKind"] == "Relative":
            # Relative to which transaction? The station's cap has none.
            return _rejected("a ChargePointMaxProfile is not Relative")
        if purpose is ProfilePurpose.TX and connector_id == 0:
            return _rejected("a TxProfile is set on the connector of its transaction")
        wanted = d.get("transactionId")
        if purpose is not ProfilePurpose.TX and wanted is not None:
            log.info("SetChargingProfile: transactionId %s of a %s ignored", wanted,
                     d["chargingProfilePurpose"])

        def install(core: ChargingStation, now: float) -> str | None:
            transaction = None
            if purpose is ProfilePurpose.TX:
                running = core.evse(connector_id).transaction
                if running is None:
                    return f"no transaction runs on connector {connector_id}"
                if wanted is not None and self._ref_of(wanted) != running.ref:
                    return f"transaction {wanted} is not the one on connector {connector_id}"
                transaction = running.ref
            try:
                profile = profile_of(d, connector_id, transaction, now)
            except InvalidProfile as exc:
                return str(exc)
            installed = [p for p in core.profiles if p.purpose is not ProfilePurpose.EXTERNAL]
            replacing = replaced_by(profile, installed)
            if len(installed) - len(replacing) >= MAX_PROFILES:
                return f"{MAX_PROFILES} profiles are installed (MaxChargingProfilesInstalled)"
            core.install_profile(profile, now, replacing)
            return None

        problem = await self.host.ask(install)
        return ACCEPTED if problem is None else _rejected(problem)

    async def clear_charging_profile(self, payload: dict) -> dict:
        wanted_id = payload.get("id")
        connector_id = payload.get("connectorId")
        purpose = PURPOSES.get(payload.get("chargingProfilePurpose") or "")
        level = payload.get("stackLevel")

        removed = await self.host.ask(lambda core, now: core.clear_profiles(
            now, profile_id=wanted_id, evse_id=connector_id, purpose=purpose,
            stack_level=level))
        return ACCEPTED if removed else {"status": "Unknown"}

    async def get_composite_schedule(self, payload: dict) -> dict:
        connector_id = payload["connectorId"]
        if connector_id > self.connectors:
            return REJECTED
        duration = composite_duration(payload["duration"])
        if duration is None:
            return REJECTED
        unit_word = payload.get("chargingRateUnit") or "A"
        unit = UNITS[unit_word]

        def compute(core: ChargingStation, now: float):
            start = schedule_start(now)
            return start, core.composite_schedule(connector_id, start, duration), \
                core.limits.supply

        start, segments, supply = await self.host.ask(compute)
        schedule: dict = {
            "duration": duration,
            "startSchedule": format_time(start),
            "chargingRateUnit": unit_word,
            "chargingSchedulePeriod": composite_periods(segments, start, unit, supply),
        }
        minimum = composite_minimum(segments, unit, supply)
        if minimum is not None:
            schedule["minChargingRate"] = minimum
        return {"status": "Accepted", "connectorId": connector_id,
                "scheduleStart": format_time(start), "chargingSchedule": schedule}

    def remote_start_profile(self, d: dict, connector_id: int | None,
                             now: float) -> ChargingProfile:
        """The profile a RemoteStartTransaction carries: a TxProfile for the transaction it
        starts (1.6 5.11), which the core binds to it once it runs."""
        if d["chargingProfilePurpose"] != "TxProfile":
            raise InvalidProfile("a RemoteStartTransaction carries a TxProfile only")
        if d.get("transactionId") is not None:
            raise InvalidProfile("its transaction does not exist yet: no transactionId")
        return profile_of(d, connector_id or 0, None, now)
