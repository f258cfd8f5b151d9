"""The current an EVSE may offer: the smallest of every limit that applies to it.

Today these are the installer's maximum per EVSE and a limit set locally per EVSE (the
station's own, e.g. from a load manager); charging profiles join them here, so the pilot only
ever hears one figure.
"""

from __future__ import annotations

from cpagent.core.model import CoreSettings

MIN_OFFER = 6.0  # IEC 61851-1: below 6 A the pilot cannot offer charging


class Limits:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self._local: dict[int, float] = {}

    def set_local(self, evse_id: int, amps: float | None) -> None:
        if amps is None:
            self._local.pop(evse_id, None)
        else:
            self._local[evse_id] = amps

    def offer(self, evse_id: int) -> float:
        """Amps to offer an authorized session on this EVSE; 0 when no charging is allowed."""
        amps = min(self.settings.max_current, self._local.get(evse_id, float("inf")))
        return amps if amps >= MIN_OFFER else 0.0
