"""How a scenario reads in each OCPP version: what to send the charger, what to wait for.

A scenario written once against `Dialect` runs for 1.6 and 2.0.1 alike; each dialect knows
its version's messages (StartTransaction or TransactionEvent Started), words (Charging or a
chargingState) and fields.
"""

from __future__ import annotations

from typing import Any

from cpagent.ocpp16.vocabulary import ERROR_CODES
from hal.interfaces import Fault


class Dialect:
    version: str
    subprotocol: str

    def __init__(self, peer: Any, identity: str = "CP-TEST") -> None:
        self.peer = peer
        self.identity = identity

    async def call(self, action: str, payload: dict, **kw: Any) -> dict:
        return await self.peer.call(self.identity, action, payload, **kw)


class Ocpp16(Dialect):
    version, subprotocol = "1.6", "ocpp1.6"

    def is_status(self, value: str, evse: int = 1):
        return lambda p: p["connectorId"] == evse and p["status"] == value

    async def wait_status(self, value: str, evse: int = 1, after: int = 0, timeout: float = 5):
        return await self.peer.wait_for_call("StatusNotification", after=after,
                                             timeout=timeout,
                                             predicate=self.is_status(value, evse))

    async def wait_start(self, after: int = 0, evse: int | None = None):
        return await self.peer.wait_for_call(
            "StartTransaction", after=after,
            predicate=lambda p: evse is None or p["connectorId"] == evse)

    async def wait_end(self, after: int = 0, timeout: float = 5):
        return await self.peer.wait_for_call("StopTransaction", after=after, timeout=timeout)

    async def wait_charging(self, evse: int = 1, after: int = 0):
        return await self.wait_status("Charging", evse, after)

    async def wait_state(self, state: str, evse: int = 1, after: int = 0):
        """A charging state (SuspendedEV, Charging) as the version tells it."""
        return await self.wait_status(state, evse, after)

    def end_reason(self, record: Any) -> str:
        return record.payload["reason"]

    def fault_reason(self, fault: Fault) -> str:
        return "EmergencyStop" if fault is Fault.EMERGENCY_STOP else "Other"

    def meter_start(self, start: Any) -> float:
        return start.payload["meterStart"]

    def meter_stop(self, end: Any) -> float:
        return end.payload["meterStop"]

    def transaction_id(self, start: Any) -> Any:
        results = [r.payload for r in self.peer.records
                   if r.kind == "result" and r.action == "StartTransaction"
                   and r.unique_id == start.unique_id]
        return results[-1]["transactionId"]

    def transaction_of(self, end: Any) -> Any:
        return end.payload["transactionId"]

    async def remote_start(self, tag: str, evse: int | None, remote_id: int = 1) -> dict:
        payload: dict[str, Any] = {"idTag": tag}
        if evse is not None:
            payload["connectorId"] = evse
        return await self.call("RemoteStartTransaction", payload)

    async def remote_stop(self, transaction_id: Any) -> dict:
        return await self.call("RemoteStopTransaction", {"transactionId": transaction_id})

    async def reset(self) -> dict:
        return await self.call("Reset", {"type": "Soft"})

    def reset_reason(self) -> str:
        return "SoftReset"

    async def set_attempts(self, attempts: int) -> None:
        """How often a transaction message is tried before the CSMS's refusal is final."""
        assert await self.call("ChangeConfiguration", {
            "key": "TransactionMessageAttempts", "value": str(attempts)}) == {
                "status": "Accepted"}

    async def sample_every_second(self) -> None:
        assert await self.call("ChangeConfiguration", {
            "key": "MeterValueSampleInterval", "value": "1"}) == {"status": "Accepted"}

    async def wait_meter_values(self, after: int = 0):
        record = await self.peer.wait_for_call("MeterValues", after=after, timeout=5)
        assert "transactionId" in record.payload
        return record.payload["meterValue"][0]["sampledValue"]

    async def wait_fault(self, fault: Fault, after: int = 0):
        faulted = await self.wait_status("Faulted", after=after)
        assert faulted.payload["errorCode"] == ERROR_CODES.get(fault, "OtherError")

    async def set_default_limit(self, amps: float, evse: int = 0, profile_id: int = 1) -> dict:
        """A TxDefaultProfile of one period, `amps` from 2020 on."""
        return await self.call("SetChargingProfile", {"connectorId": evse, "csChargingProfiles": {
            "chargingProfileId": profile_id, "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}]}}})

    async def composite_limits(self, evse: int, unit: str = "A") -> list[float]:
        answer = await self.call("GetCompositeSchedule", {"connectorId": evse, "duration": 600,
                                                          "chargingRateUnit": unit})
        assert answer["status"] == "Accepted"
        return [p["limit"] for p in answer["chargingSchedule"]["chargingSchedulePeriod"]]

    async def clear_limits(self) -> dict:
        return await self.call("ClearChargingProfile", {})

    async def reserve(self, reservation_id: int, tag: str, evse: int, expiry: str) -> dict:
        return await self.call("ReserveNow", {"connectorId": evse, "expiryDate": expiry,
                                              "idTag": tag, "reservationId": reservation_id})

    def reservation_of(self, start: Any) -> Any:
        return start.payload.get("reservationId")

    async def trigger_status(self, evse: int) -> dict:
        return await self.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                                  "connectorId": evse})


class Ocpp201(Dialect):
    version, subprotocol = "2.0.1", "ocpp2.0.1"
    _WIRE = {"Available": "Available", "Preparing": "Occupied", "Charging": "Occupied",
             "Finishing": "Occupied", "Unavailable": "Unavailable", "Faulted": "Faulted"}

    def is_status(self, value: str, evse: int = 1):
        wire = self._WIRE.get(value, value)
        return lambda p: p["evseId"] == evse and p["connectorStatus"] == wire

    async def wait_status(self, value: str, evse: int = 1, after: int = 0, timeout: float = 5):
        return await self.peer.wait_for_call("StatusNotification", after=after,
                                             timeout=timeout,
                                             predicate=self.is_status(value, evse))

    def _event(self, kind: str | None = None, evse: int | None = None, state: str | None = None,
               trigger: str | None = None):
        def match(p: dict) -> bool:
            info = p["transactionInfo"]
            return ((kind is None or p["eventType"] == kind)
                    and (state is None or info.get("chargingState") == state)
                    and (trigger is None or p["triggerReason"] == trigger)
                    and (evse is None or p.get("evse", {}).get("id") == evse))
        return match

    async def wait_start(self, after: int = 0, evse: int | None = None):
        return await self.peer.wait_for_call("TransactionEvent", after=after,
                                             predicate=self._event("Started", evse))

    async def wait_end(self, after: int = 0, timeout: float = 5):
        return await self.peer.wait_for_call("TransactionEvent", after=after, timeout=timeout,
                                             predicate=self._event("Ended"))

    async def wait_charging(self, evse: int = 1, after: int = 0):
        return await self.wait_state("Charging", evse, after)

    async def wait_state(self, state: str, evse: int = 1, after: int = 0):
        return await self.peer.wait_for_call("TransactionEvent", after=after,
                                             predicate=self._event(state=state))

    def end_reason(self, record: Any) -> str:
        return record.payload["transactionInfo"]["stoppedReason"]

    def fault_reason(self, fault: Fault) -> str:
        return {Fault.EMERGENCY_STOP: "EmergencyStop", Fault.GROUND_FAILURE: "GroundFault",
                Fault.OVER_CURRENT: "OvercurrentFault"}.get(fault, "Other")

    @staticmethod
    def _energy(record: Any, context: str) -> float:
        for value in record.payload.get("meterValue", []):
            for sampled in value["sampledValue"]:
                if sampled.get("measurand", "Energy.Active.Import.Register") == \
                        "Energy.Active.Import.Register" and sampled.get("context") == context:
                    return sampled["value"]
        raise AssertionError(f"no {context} energy reading in {record.payload}")

    def meter_start(self, start: Any) -> float:
        return self._energy(start, "Transaction.Begin")

    def meter_stop(self, end: Any) -> float:
        return self._energy(end, "Transaction.End")

    def transaction_id(self, start: Any) -> Any:
        return start.payload["transactionInfo"]["transactionId"]

    def transaction_of(self, end: Any) -> Any:
        return end.payload["transactionInfo"]["transactionId"]

    async def remote_start(self, tag: str, evse: int | None, remote_id: int = 1) -> dict:
        payload: dict[str, Any] = {"idToken": {"idToken": tag, "type": "Central"},
                                   "remoteStartId": remote_id}
        if evse is not None:
            payload["evseId"] = evse
        return await self.call("RequestStartTransaction", payload)

    async def remote_stop(self, transaction_id: Any) -> dict:
        return await self.call("RequestStopTransaction", {"transactionId": transaction_id})

    async def reset(self) -> dict:
        return await self.call("Reset", {"type": "Immediate"})

    def reset_reason(self) -> str:
        return "ImmediateReset"

    async def set_attempts(self, attempts: int) -> None:
        answer = await self.call("SetVariables", {"setVariableData": [{
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "MessageAttemptsTransactionEvent"},
            "attributeValue": str(attempts)}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"

    async def sample_every_second(self) -> None:
        answer = await self.call("SetVariables", {"setVariableData": [{
            "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"},
            "attributeValue": "1"}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"

    async def wait_meter_values(self, after: int = 0):
        record = await self.peer.wait_for_call(
            "TransactionEvent", after=after, timeout=5,
            predicate=self._event("Updated", trigger="MeterValuePeriodic"))
        return record.payload["meterValue"][0]["sampledValue"]

    async def wait_fault(self, fault: Fault, after: int = 0):
        await self.wait_status("Faulted", after=after)
        event = await self.peer.wait_for_call("NotifyEvent", after=after)
        data = event.payload["eventData"][0]
        assert (data["variable"]["name"], data["actualValue"]) == ("Problem", "true")
        assert data["techCode"] == fault.value

    async def set_default_limit(self, amps: float, evse: int = 0, profile_id: int = 1) -> dict:
        return await self.call("SetChargingProfile", {"evseId": evse, "chargingProfile": {
            "id": profile_id, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": [{
                "id": 1, "chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}]}]}})

    async def composite_limits(self, evse: int, unit: str = "A") -> list[float]:
        answer = await self.call("GetCompositeSchedule", {"evseId": evse, "duration": 600,
                                                          "chargingRateUnit": unit})
        assert answer["status"] == "Accepted"
        return [p["limit"] for p in answer["schedule"]["chargingSchedulePeriod"]]

    async def clear_limits(self) -> dict:
        return await self.call("ClearChargingProfile", {})

    async def reserve(self, reservation_id: int, tag: str, evse: int, expiry: str) -> dict:
        return await self.call("ReserveNow", {
            "id": reservation_id, "expiryDateTime": expiry, "evseId": evse,
            "idToken": {"idToken": tag, "type": "ISO14443"}})

    def reservation_of(self, start: Any) -> Any:
        return start.payload.get("reservationId")

    async def trigger_status(self, evse: int) -> dict:
        return await self.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                                  "evse": {"id": evse, "connectorId": 1}})


DIALECTS = {"1.6": Ocpp16, "2.0.1": Ocpp201}
