"""OCPP 2.0.1 block K: charging profiles in 2.0.1 words, and the limits the station reports.

SetChargingProfile, GetChargingProfiles (answered by ReportChargingProfiles in parts),
ClearChargingProfile and GetCompositeSchedule map onto the core's profiles; every rejection is
made here with the reason code a CSMS can act on. When a limit of the station's own (the
installer's site limit, a local load manager) takes over from the CSMS's, NotifyChargingLimit
says so, and ClearedChargingLimit when it lets go (K11, K12).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from cpagent.clock import format_time
from cpagent.core.actions import ChargingLimitChanged
from cpagent.core.limits import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL, LimitSource
from cpagent.core.schedules import ChargingProfile, ProfilePurpose, RateUnit
from cpagent.core.station import ChargingStation
from cpagent.host import AdapterHost
from cpagent.ocpp201.device_model import DeviceModel
from cpagent.schedule_wire import (
    KIND_WORDS,
    RECURRENCE_WORDS,
    UNIT_WORDS,
    UNITS,
    InvalidProfile,
    composite_duration,
    composite_limit,
    composite_periods,
    profile_from_wire,
    schedule_start,
)

log = logging.getLogger(__name__)

CTRLR = "SmartChargingCtrlr"
PURPOSES = {
    "ChargingStationMaxProfile": ProfilePurpose.STATION_MAX,
    "TxDefaultProfile": ProfilePurpose.TX_DEFAULT,
    "TxProfile": ProfilePurpose.TX,
    "ChargingStationExternalConstraints": ProfilePurpose.EXTERNAL,
}
PURPOSE_WORDS = {v: k for k, v in PURPOSES.items()}
# Whose limit a report names: the CSMS's profiles are the CSO's; the station's own are an
# energy manager's (a local load manager) or "Other" (the installer's site limit).
LOCAL_SOURCES = {LimitSource.LOCAL: "EMS", LimitSource.SITE: "Other"}
PROFILES_PER_REPORT = 8


def _rejected(reason: str, why: str) -> dict:
    log.info("SetChargingProfile rejected (%s): %s", reason, why)
    return {"status": "Rejected",
            "statusInfo": {"reasonCode": reason, "additionalInfo": why[:512]}}


def _overlap(a: ChargingProfile, b: ChargingProfile) -> bool:
    lo_a, hi_a = a.valid_from or -math.inf, a.valid_to or math.inf
    lo_b, hi_b = b.valid_from or -math.inf, b.valid_to or math.inf
    return lo_a < hi_b and lo_b < hi_a


def profile_to_wire(p: ChargingProfile) -> dict[str, Any]:
    s = p.schedule
    schedule: dict[str, Any] = {
        "id": s.id if s.id is not None else p.id,
        "chargingRateUnit": UNIT_WORDS[s.unit],
        "chargingSchedulePeriod": [
            {"startPeriod": int(q.start), "limit": q.limit,
             **({"numberPhases": q.phases} if q.phases is not None else {})}
            for q in s.periods],
    }
    if s.start is not None:
        schedule["startSchedule"] = format_time(s.start)
    if s.duration is not None:
        schedule["duration"] = int(s.duration)
    if s.min_rate is not None:
        schedule["minChargingRate"] = s.min_rate
    wire: dict[str, Any] = {
        "id": p.id, "stackLevel": p.stack_level,
        "chargingProfilePurpose": PURPOSE_WORDS[p.purpose],
        "chargingProfileKind": KIND_WORDS[p.kind], "chargingSchedule": [schedule],
    }
    if p.recurrence is not None:
        wire["recurrencyKind"] = RECURRENCE_WORDS[p.recurrence]
    if p.valid_from is not None:
        wire["validFrom"] = format_time(p.valid_from)
    if p.valid_to is not None:
        wire["validTo"] = format_time(p.valid_to)
    if p.transaction is not None:
        wire["transactionId"] = p.transaction  # 2.0.1 names it by the charger's reference
    return wire


class SmartCharging:
    def __init__(self, host: AdapterHost, model: DeviceModel) -> None:
        self.host = host
        self.model = model
        self._tasks: set[asyncio.Task] = set()
        self._sources: dict[int, LimitSource] = {}  # what limits each EVSE, as last told

    @property
    def enabled(self) -> bool:
        return self.model.flag(CTRLR, "Enabled")

    def _profile(self, d: dict, evse_id: int, transaction: str | None,
                 now: float) -> ChargingProfile:
        if d["stackLevel"] > MAX_STACK_LEVEL:
            raise InvalidProfile(f"stackLevel above ProfileStackLevel ({MAX_STACK_LEVEL})")
        schedules = d["chargingSchedule"]
        if len(schedules) != 1:
            # More than one is for an ISO 15118 vehicle to choose from; this station has none.
            raise InvalidProfile("this station takes one chargingSchedule per profile")
        return profile_from_wire(
            d, schedules[0], profile_id=d["id"], purpose=PURPOSES[d["chargingProfilePurpose"]],
            evse_id=evse_id, transaction=transaction, now=now, max_periods=MAX_PERIODS,
            start_required=True)  # K01.FR.40/41

    # ---- SetChargingProfile (K01) ------------------------------------------------------------

    async def set_charging_profile(self, payload: dict) -> dict:
        evse_id = payload["evseId"]
        d = payload["chargingProfile"]
        purpose = PURPOSES[d["chargingProfilePurpose"]]
        if not self.enabled:
            return _rejected("UnsupportedRequest", "SmartChargingCtrlr.Enabled is false")
        if evse_id != 0 and evse_id not in self.host.info.evses:
            return _rejected("UnknownEVSE", f"there is no EVSE {evse_id}")
        if purpose is ProfilePurpose.EXTERNAL:
            return _rejected("InvalidProfile", "external constraints are the station's own")
        if purpose is ProfilePurpose.STATION_MAX and evse_id != 0:
            return _rejected("InvalidProfile", "a ChargingStationMaxProfile is for EVSE 0")
        if purpose is ProfilePurpose.STATION_MAX and d["chargingProfileKind"] == "Relative":
            # K01.FR.38: relative to which transaction? The station's cap has none.
            return _rejected("InvalidProfile", "a ChargingStationMaxProfile is not Relative")
        if d["chargingProfileKind"] == "Relative" and any(
                "startSchedule" in s for s in d["chargingSchedule"]):
            return _rejected("InvalidSchedule", "a Relative schedule has no startSchedule "
                             "(K01.FR.41)")
        if purpose is ProfilePurpose.TX and evse_id == 0:
            return _rejected("InvalidProfile", "a TxProfile is for the EVSE of its transaction")
        wanted = d.get("transactionId")
        if purpose is ProfilePurpose.TX and wanted is None:
            return _rejected("InvalidProfile", "a TxProfile names its transactionId")
        units = {s["chargingRateUnit"] for s in d["chargingSchedule"]}
        if not units <= set(UNITS):
            return _rejected("InvalidSchedule", f"unit {units} is not one of RateUnit")

        def install(core: ChargingStation, now: float) -> tuple[str, str] | None:
            transaction = None
            if purpose is ProfilePurpose.TX:
                running = core.evse(evse_id).transaction
                if running is None or running.ref != wanted:
                    return "TxNotFound", f"transaction {wanted} is not running on EVSE {evse_id}"
                transaction = running.ref
            try:
                profile = self._profile(d, evse_id, transaction, now)
            except InvalidProfile as exc:
                return "InvalidSchedule", str(exc)
            installed = [p for p in core.profiles if p.purpose is not ProfilePurpose.EXTERNAL]
            replacing = [p.id for p in installed if p.id == profile.id]  # K01.FR.05
            for p in installed:
                if p.id == profile.id or p.purpose is not purpose or \
                        p.stack_level != profile.stack_level or p.evse_id != evse_id:
                    continue
                if purpose is ProfilePurpose.TX:
                    if p.transaction == transaction:
                        # K01.FR.39: which of the two would apply is undefined.
                        return "DuplicateProfile", (f"TxProfile {p.id} has the same stackLevel "
                                                    "for this transaction")
                elif _overlap(p, profile):
                    # K01.FR.06: which of the two would apply is undefined.
                    return "DuplicateProfile", (f"profile {p.id} has the same stackLevel and "
                                                "purpose on this EVSE for an overlapping time")
            if len(installed) - len(replacing) >= MAX_PROFILES:
                return "OutOfMemory", f"{MAX_PROFILES} profiles are installed"
            core.install_profile(profile, now, replacing)
            return None

        problem = await self.host.ask(install)
        if problem is not None:
            return _rejected(*problem)
        return {"status": "Accepted"}

    def request_start_profile(self, d: dict, evse_id: int | None,
                              now: float) -> ChargingProfile:
        """The profile a RequestStartTransaction carries: a TxProfile for the transaction it
        starts (F01.FR.08-09), bound to it by the core once it runs."""
        if not self.enabled:
            raise InvalidProfile("SmartChargingCtrlr.Enabled is false")
        if d["chargingProfilePurpose"] != "TxProfile":
            raise InvalidProfile("a RequestStartTransaction carries a TxProfile only")
        if d.get("transactionId") is not None:
            raise InvalidProfile("its transaction does not exist yet: no transactionId")
        return self._profile(d, evse_id or 0, None, now)

    # ---- GetChargingProfiles (K09) -----------------------------------------------------------

    async def get_charging_profiles(self, payload: dict) -> dict:
        request_id = payload["requestId"]
        evse_id = payload.get("evseId")
        criteria = payload["chargingProfile"]
        ids = set(criteria.get("chargingProfileId") or ())
        purpose = PURPOSES.get(criteria.get("chargingProfilePurpose") or "")
        level = criteria.get("stackLevel")
        sources = set(criteria.get("chargingLimitSource") or ())

        def wanted(p: ChargingProfile) -> bool:
            source = "EMS" if p.purpose is ProfilePurpose.EXTERNAL else "CSO"
            if evse_id is not None and p.evse_id != evse_id:
                return False
            if ids:
                return p.id in ids
            return ((purpose is None or p.purpose is purpose)
                    and (level is None or p.stack_level == level)
                    and (not sources or source in sources))

        found = await self.host.ask(lambda core, now: [p for p in core.profiles if wanted(p)])
        if not found:
            return {"status": "NoProfiles"}
        self._spawn(self._report_profiles(request_id, found))
        return {"status": "Accepted"}

    async def _report_profiles(self, request_id: int, profiles: list[ChargingProfile]) -> None:
        await asyncio.sleep(0.05)  # the answer goes out first
        groups: dict[tuple[int, str], list[ChargingProfile]] = {}
        for p in sorted(profiles, key=lambda p: (p.evse_id, p.id)):
            source = "EMS" if p.purpose is ProfilePurpose.EXTERNAL else "CSO"
            groups.setdefault((p.evse_id, source), []).append(p)
        parts = [(evse, source, chunk[i:i + PROFILES_PER_REPORT])
                 for (evse, source), chunk in groups.items()
                 for i in range(0, len(chunk), PROFILES_PER_REPORT)]
        for n, (evse, source, chunk) in enumerate(parts):
            message: dict[str, Any] = {
                "requestId": request_id, "chargingLimitSource": source, "evseId": evse,
                "chargingProfile": [profile_to_wire(p) for p in chunk]}
            if n < len(parts) - 1:
                message["tbc"] = True
            future = self.host.queue.send("ReportChargingProfiles", message)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    # ---- ClearChargingProfile (K10) ----------------------------------------------------------

    async def clear_charging_profile(self, payload: dict) -> dict:
        wanted_id = payload.get("chargingProfileId")
        criteria = payload.get("chargingProfileCriteria") or {}
        evse_id = criteria.get("evseId")
        purpose = PURPOSES.get(criteria.get("chargingProfilePurpose") or "")
        level = criteria.get("stackLevel")

        removed = await self.host.ask(lambda core, now: core.clear_profiles(
            now, profile_id=wanted_id, evse_id=evse_id, purpose=purpose, stack_level=level))
        return {"status": "Accepted" if removed else "Unknown"}

    # ---- GetCompositeSchedule (K08) ----------------------------------------------------------

    async def get_composite_schedule(self, payload: dict) -> dict:
        evse_id = payload["evseId"]
        if evse_id != 0 and evse_id not in self.host.info.evses:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEVSE"}}
        unit_word = payload.get("chargingRateUnit") or "A"
        unit = UNITS.get(unit_word)
        if unit is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRateUnit"}}
        duration = composite_duration(payload["duration"])
        if duration is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue",
                                                         "additionalInfo": "duration must be "
                                                         "positive"}}

        def compute(core: ChargingStation, now: float):
            start = schedule_start(now)
            return start, core.composite_schedule(evse_id, start, duration), \
                core.limits.supply

        start, segments, supply = await self.host.ask(compute)
        return {"status": "Accepted", "schedule": {
            "evseId": evse_id, "duration": duration, "scheduleStart": format_time(start),
            "chargingRateUnit": unit_word,
            "chargingSchedulePeriod": composite_periods(segments, start, unit, supply)}}

    # ---- the station's own limits (K11, K12) -------------------------------------------------

    def limit_changed(self, action: ChargingLimitChanged, *, tell: bool) -> None:
        was = self._sources.get(action.evse_id, LimitSource.HARDWARE)
        self._sources[action.evse_id] = action.source
        if not tell:
            return  # a change the CSMS was not online for: it asks with GetChargingProfiles
        now_local = LOCAL_SOURCES.get(action.source)
        was_local = LOCAL_SOURCES.get(was)
        if was_local is not None and was_local != now_local:
            self._send("ClearedChargingLimit",
                       {"chargingLimitSource": was_local, "evseId": action.evse_id})
        if now_local is not None and now_local != was_local:
            message: dict[str, Any] = {
                "chargingLimit": {"chargingLimitSource": now_local, "isGridCritical": False},
                "evseId": action.evse_id}
            if self.model.flag(CTRLR, "NotifyChargingLimitWithSchedules"):
                message["chargingSchedule"] = [self._limit_schedule(action)]
            self._send("NotifyChargingLimit", message)

    def _limit_schedule(self, action: ChargingLimitChanged) -> dict:
        now = float(math.floor(self.host.clock.now()))
        return {"id": 0, "startSchedule": format_time(now),
                "chargingRateUnit": UNIT_WORDS[RateUnit.AMPS],
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": composite_limit(
                    action.amps)}]}

    def _send(self, action: str, payload: dict) -> None:
        future = self.host.queue.send(action, payload)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

