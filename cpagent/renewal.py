"""Renewing the charger's client certificate before it expires, in every OCPP version.

A charger on security profile 3 whose certificate expires loses its CSMS for good: nobody
can reach it to give it a new one. So the charger asks for a new one itself, well before the
end (a third of the certificate's life, at most `RENEW_BEFORE`), whenever it connects and
every `CHECK_INTERVAL`. After a SignCertificate the CSMS accepted, a CertificateSigned should
follow; while none does, the request is repeated after CertSigningWaitMinimum seconds,
doubled each time, CertSigningRepeatTimes times at most (2.0.1 A02.FR.17/A03.FR.17; the same
keys in the 1.6 whitepaper ed. 3). A request the CSMS triggers runs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from cpagent.clock import format_time
from cpagent.settings import SharedSettings

log = logging.getLogger(__name__)

RENEW_BEFORE = 30 * 86400.0  # seconds before the end at which renewal starts, at most
CHECK_INTERVAL = 6 * 3600.0


class Identity(Protocol):
    signed: int

    def in_use(self) -> dict | None: ...
    def describe(self) -> dict[str, dict]: ...


def renewal_due(certificate: dict, now: float) -> bool:
    """Whether a certificate (as `ChargerIdentity.describe` tells it) should be renewed."""
    life = certificate["not_after"] - certificate["not_before"]
    return certificate["not_after"] - now <= min(RENEW_BEFORE, max(life, 0.0) / 3)


class CertificateRenewal:
    def __init__(self, identity: Identity, request: Callable[[], Awaitable[str]],
                 shared: Callable[[], SharedSettings], known_time: Callable[[], float | None],
                 keep: Callable[[dict], Awaitable[None]]) -> None:
        self.identity = identity
        self._request = request  # the active adapter's SignCertificate
        self._shared = shared
        self._known_time = known_time  # the time, if the charger knows it
        self._keep = keep  # the certificates' metadata into the store
        self._task: asyncio.Task | None = None
        self.last_outcome: str | None = None  # for `status`

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def renew(self, why: str) -> None:
        if self.running:
            log.info("certificate renewal already under way (%s)", why)
            return
        self._task = asyncio.create_task(self._run(why), name="certificate-renewal")

    def check(self) -> None:
        """Renew if the certificate in use nears its end (and the time is known)."""
        now = self._known_time()
        certificate = self.identity.in_use()
        if now is None or certificate is None or "next" in self.identity.describe():
            return  # no clock to judge by, no certificate, or a new one on trial already
        if renewal_due(certificate, now):
            self.renew(f"the certificate in use expires {format_time(certificate['not_after'])}")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            with contextlib.suppress(Exception):
                self.check()

    async def keep_metadata(self) -> None:
        with contextlib.suppress(Exception):
            await self._keep(self.identity.describe())

    async def _run(self, why: str) -> None:
        shared = self._shared()
        wait = float(max(1, shared.integer("cert_signing_wait_minimum")))
        repeats = max(0, shared.integer("cert_signing_repeat_times"))
        log.warning("renewing the charger's certificate: %s", why)
        for attempt in range(repeats + 1):
            before = self.identity.signed
            try:
                status = await self._request()
            except Exception as exc:  # no answer: counts as an attempt, tried again later
                status = f"no answer ({exc})"
            if status == "Rejected":
                self.last_outcome = "the CSMS rejected the certificate signing request"
                log.error("%s", self.last_outcome)
                return
            deadline = time.monotonic() + wait * 2 ** attempt
            while time.monotonic() < deadline and self.identity.signed == before:
                await asyncio.sleep(min(1.0, wait / 4))
            if self.identity.signed != before:
                self.last_outcome = "a new certificate was signed; used from the next connection"
                log.warning("%s", self.last_outcome)
                await self.keep_metadata()
                return
            log.warning("no CertificateSigned after SignCertificate %d of %d (%s)",
                        attempt + 1, repeats + 1, status)
        self.last_outcome = (f"no CertificateSigned after {repeats + 1} signing requests; "
                             "asking again at the next check")
        log.error("%s", self.last_outcome)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
