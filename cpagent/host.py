"""The seam between the shell and the protocol adapters.

`AdapterHost` is everything an adapter may use of the agent: the charging core (commands in,
state out), the queue to the CSMS, its own persisted data and the settings shared by every
version, the clock, the link and a few station services. `ProtocolAdapter` is what the
shell and the shared OCPP session ask of an adapter. Adapters import this module, the core and
the shared OCPP-J layers, never the shell or each other, and they are found by version in
`cpagent.protocols`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from cpagent.certificates import CertificateHash, CertificateUse, InstalledCertificate, Result
from cpagent.core.actions import Action
from cpagent.core.model import AuthInfo, CoreSettings, IdToken
from cpagent.core.station import ChargingStation
from cpagent.records import OutboxEntry, TransactionRow
from cpagent.security_events import SecurityEvent

if TYPE_CHECKING:
    from cpagent.clock import Clock
    from cpagent.settings import SharedSettings

T = TypeVar("T")
CoreCall = Callable[[ChargingStation, float], T]
Handler = Callable[[dict], Awaitable[dict]]


class BootReason(StrEnum):
    """Why the agent (re)started, as the next BootNotification should say."""

    POWER_UP = "power_up"
    REMOTE_RESET = "remote_reset"
    LOCAL_RESET = "local_reset"
    FIRMWARE_UPDATE = "firmware_update"
    WATCHDOG = "watchdog"
    SCHEDULED_RESET = "scheduled_reset"
    TRIGGERED = "triggered"
    APPLICATION_RESET = "application_reset"
    UNKNOWN = "unknown"


class Registration(StrEnum):
    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class EvseInfo:
    evse_id: int
    connectors: int
    phases: int
    max_current: float
    has_lock: bool
    voltage: float = 230.0


@dataclass(frozen=True)
class StationInfo:
    """What the station is, for BootNotification and the device model."""

    identity: str
    vendor: str
    model: str
    serial: str | None
    firmware_version: str
    meter_type: str | None
    meter_serial: str | None
    evses: Mapping[int, EvseInfo]
    agent_version: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message to send for a queued record; `suffix` tells a second message of the same
    record apart, so its id is as stable across restarts as the record's own."""

    action: str
    payload: dict
    suffix: str = ""


class Undeliverable(Exception):
    """A queued record this version cannot express; it goes to the dead letters, where an
    operator can find it and deliver it later."""


@dataclass
class RetryPolicy:
    """How often a refused transaction message is tried, and how long apart (the wait grows
    with each attempt)."""

    attempts: Callable[[], int]
    interval: Callable[[], float]


@dataclass(frozen=True, slots=True)
class BootAnswer:
    status: Registration | None
    interval: float
    current_time: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the CSMS: one network connection profile."""

    url: str  # the identity included
    password: bytes | None = field(default=None, repr=False)  # basic auth: any bytes (1.6)
    security_profile: int = 1
    label: str = "configuration file"


@dataclass
class LinkInfo:
    url: str
    state: str
    version: str | None
    security_profile: int
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Queue(Protocol):
    def send(self, action: str, payload: dict, *, urgent: bool = False) -> asyncio.Future:
        """A message that is state, not history: dropped with the link, sent in order after
        the durable records queued before it (or ahead of them when urgent)."""
        ...

    async def call_now(self, action: str, payload: dict) -> dict:
        """A call outside the queue, on the link as it is (ConnectionLost without one): for
        what may be sent before the CSMS accepted the boot, such as a requested report."""
        ...

    async def enqueue(self, kind: str, record: dict, *, tx_ref: str | None = None) -> None:
        """A durable record of the adapter's own (not a transaction event)."""
        ...

    async def pending(self, tx_ref: str | None = None) -> int:
        """Durable records still to deliver, of one transaction or of all."""
        ...


class AdapterStorage(Protocol):
    """The adapter's own persisted data, kept apart from every other version's."""

    async def settings(self) -> dict[str, str]: ...
    async def put_setting(self, name: str, value: str) -> None: ...
    async def state(self, kind: str, key: str) -> Any: ...
    async def states(self, kind: str) -> dict[str, Any]: ...
    async def put_state(self, kind: str, key: str, value: Any) -> None: ...
    async def variables(self) -> dict[tuple, str]: ...
    async def put_variable(self, key: tuple, value: str) -> None: ...
    async def transaction(self, ref: str) -> TransactionRow | None: ...


class Link(Protocol):
    def info(self) -> LinkInfo: ...

    def reconnect(self, why: str) -> None:
        """Drop the connection and connect again with the settings as they are now."""
        ...

    def base_endpoint(self) -> Endpoint:
        """The profile the installer configured (URL, password of the configuration file), or
        the one a security profile raised over OCPP made of it."""
        ...

    def profile_problem(self, profile: int) -> str | None:
        """Why the charger cannot connect with security `profile` now, None when it can: a
        CSMS root for 2 and 3, a charger certificate for 3 (2.0.1 A05.FR.02)."""
        ...

    def secure_url(self) -> str:
        """The wss:// URL (the identity included) a profile raised to 2 or 3 connects to."""
        ...

    async def adopt(self, endpoint: Endpoint) -> None:
        """`endpoint` as the base from now on, also after a restart and in every OCPP
        version: a raised security profile that has connected. Never lowers the profile."""
        ...

    def use_endpoints(self, endpoints: list[Endpoint], attempts: int) -> None:
        """Connect with the first profile; after `attempts` failed connections try the next
        (and the first again after the last). Takes effect at the next connection."""
        ...


class Certificates(Protocol):
    """The roots the charger trusts (see `cpagent.trust`), in neutral terms."""

    limit: int

    def installed(self, uses: set[CertificateUse] | None = None) -> list[InstalledCertificate]:
        ...

    async def install(self, use: CertificateUse, pem: str, now: float) -> Result: ...
    async def delete(self, wanted: CertificateHash) -> Result: ...


class ChargerCertificate(Protocol):
    """The charger's own client certificate (see `cpagent.identity`)."""

    def signing_request(self, organization: str) -> str:
        """A new key pair, kept on the charger, and its CSR in PEM."""
        ...

    def install_signed(self, chain_pem: str) -> Result: ...


class AdapterHost(Protocol):
    info: StationInfo
    clock: Clock
    boot_id: str
    boot_reason: BootReason
    shared: SharedSettings
    queue: Queue
    storage: AdapterStorage
    link: Link
    certificates: Certificates
    identity: ChargerCertificate
    local_list_version: int

    @property
    def core(self) -> ChargingStation:
        """For reading between the core's steps; changes go through `ask` or `submit`."""
        ...

    async def ask(self, fn: CoreCall[T]) -> T: ...
    def submit(self, fn: CoreCall[Any]) -> None: ...

    async def put_shared(self, name: str, value: str) -> None:
        """Persist a shared setting, then apply every setting to the core again."""
        ...

    def settings_changed(self) -> None:
        """The adapter's own settings changed: apply them to the core again."""
        ...

    async def unlock(self, evse_id: int, connector_id: int) -> bool | None:
        """Drive the connector lock; None when there is none."""
        ...

    async def write_local_list(self, version: int,
                               changes: Mapping[IdToken, AuthInfo | None], *,
                               replace: bool) -> None: ...

    async def clear_auth_cache(self) -> None: ...

    def note(self, problem: str | None) -> None:
        """What `cpagent status` should show as the last problem (None clears it)."""
        ...

    def renew_certificate(self, why: str) -> None:
        """Have the CSMS sign a new charger certificate, asking again while no
        CertificateSigned comes (CertSigningWaitMinimum, doubled each time, at most
        CertSigningRepeatTimes more); one renewal at a time."""
        ...

    def security_event(self, event: SecurityEvent, info: str) -> None:
        """Into the security log, and durably to the CSMS."""
        ...

    async def take_time(self, text: Any) -> None:
        """A currentTime the CSMS sent in an answer the adapter asked for itself (a triggered
        Heartbeat or BootNotification), taken as the session takes its own."""
        ...


class ProtocolAdapter(Protocol):
    """One OCPP version: its vocabulary, messages and settings."""

    version: ClassVar[str]
    subprotocol: ClassVar[str]
    max_token_length: ClassVar[int]
    handlers: Mapping[str, Handler]

    async def load(self) -> None:
        """Read its persisted settings; called once before anything else."""
        ...

    def tune(self, core: CoreSettings) -> None:
        """Set what the core obeys of this version's own settings."""
        ...

    def ping_interval(self) -> float: ...
    def heartbeat_interval(self) -> float: ...
    def retry_policy(self) -> RetryPolicy: ...

    def boot_request(self) -> dict: ...
    def read_boot_answer(self, answer: dict) -> BootAnswer: ...
    async def boot_accepted(self, answer: BootAnswer) -> None: ...

    def gate(self, action: str, registration: Registration | None) -> Exception | None:
        """The error to answer a CSMS call with while not (yet) accepted, or None."""
        ...

    async def online(self) -> None:
        """The CSMS accepted us on this link: tell it the current state."""
        ...

    async def offline(self) -> None: ...

    async def handle(self, action: Action) -> None:
        """A core action that concerns the CSMS (status, authorization, readings)."""
        ...

    async def render(self, entry: OutboxEntry, shift: float) -> list[Message]:
        """The messages a queued record becomes now (none: nothing to say in this version);
        `shift` corrects stamps taken before the time was known."""
        ...

    async def delivered(self, entry: OutboxEntry, message: Message, answer: dict) -> None: ...

    async def request_certificate(self) -> str:
        """SignCertificate with a CSR for a new key of the charger's; the CSMS's status."""
        ...

    async def station_event(self, event: SecurityEvent, text: str) -> None:
        """Tell the CSMS of something the operator must know (a full disk, a damaged
        database), as this version reports such events."""
        ...

    def wire_transaction_id(self, ref: str) -> str | int | None:
        """How this version names a transaction on the wire, as far as it is known."""
        ...

    def final_refusal(self, entry: OutboxEntry, message: Message) -> str | None:
        """After the last attempt: why the record goes to the dead letters (None: drop it,
        as the specification allows for this message)."""
        ...
