"""The one ``Sink`` base class.

A sink only *writes*.  The delivering runtime (``streams.delivery``) owns
batching, retries, back-off, bisection of bad batches, dead-lettering and the
offset commit.  The contract, in the spirit of Kafka Connect's ``put``/``flush``:

* ``write(events)`` returns only when the destination has durably accepted the
  batch (or the events it refused are listed in the result);
* it raises :class:`RetryableSinkError` (optionally with ``retry_after``) for
  timeouts, throttling and 5xx: the runtime backs off and the partition does
  not advance - that is backpressure, nothing is dropped;
* it raises :class:`BatchRejectedError` when the destination refuses the batch
  as a whole without saying which event is bad (HTTP 400): the runtime bisects;
* it raises :class:`SinkAuthError` on 401/403: the sink stops loudly;
* anything else is unexpected: retried a few times, then bisected, and a single
  event that still fails is dead-lettered with the error.

Each sink declares its :class:`Capabilities`; the runtime and the shared schema
module read them instead of branching on sink names.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sinks.settings import Settings


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When the delivering agent closes a batch and loads it (``streams.batching``).

    A batch closes at ``max_events`` or ``max_bytes``, or ``max_seconds`` after its
    first event - but never sooner than ``min_interval`` after the previous load
    started, so a steady stream makes at most ``86400 / min_interval`` loads a day.
    """

    max_events: int
    max_seconds: float
    max_bytes: int | None = None
    min_interval: float = 0.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    #: Longest identifier the destination accepts (None = no practical limit).
    max_identifier_length: int | None = None
    #: Most events per write call.
    max_batch_events: int = 5000
    #: Most encoded bytes per write call (None = unlimited).
    max_batch_bytes: int | None = None
    #: Largest single encoded event (None = unlimited).
    max_event_bytes: int | None = None
    #: Warehouses also receive dead letters into ``rejected_events``.
    stores_rejected: bool = False
    #: Warehouses keep typed tables and evolve their schema.
    is_warehouse: bool = False
    #: How often to load (None = the delivery settings: batch_max_events / flush_interval).
    flush: FlushPolicy | None = None


@dataclass(slots=True)
class SinkRejection:
    """One event the destination refused permanently."""

    event: dict[str, Any]
    reason: str
    error: str


@dataclass(slots=True)
class WriteResult:
    written: int = 0
    rejected: list[SinkRejection] = field(default_factory=list)


class SinkError(Exception):
    """Base of the errors a sink reports to the runtime."""


class RetryableSinkError(SinkError):
    """Transient failure; try the same batch again after ``retry_after`` seconds (or back-off)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchRejectedError(SinkError):
    """The destination refused the whole batch without naming the bad event."""


class SinkAuthError(SinkError):
    """Credentials refused (401/403): the sink stops until fixed."""


class Sink(abc.ABC):
    """Base of every destination.  Subclasses live one per module in ``sinks/``."""

    #: Registry name, as used in ``ETL_SINKS``.
    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.capabilities = self.declare_capabilities(settings)

    @classmethod
    @abc.abstractmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        """What this destination accepts (limits may come from settings)."""

    def open(self) -> None:  # noqa: B027  (optional hook)
        """Connect and create destination objects if missing (idempotent)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections; called on shutdown and when idle."""

    def on_idle(self) -> None:  # noqa: B027  (optional hook)
        """Called when no batch arrived for a flush interval (release locks, flush buffers)."""

    @abc.abstractmethod
    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        """Durably deliver ``events`` (unified-event dicts, JSON types) or raise a SinkError."""

    def write_rejected(self, records: list[dict[str, Any]]) -> None:
        """Store dead letters (only for sinks whose capabilities say ``stores_rejected``)."""
        raise NotImplementedError(f"sink {self.name} does not store rejected events")

    def event_size(self, event: dict[str, Any]) -> int | None:
        """Encoded size of one event, for byte-limited batching (None = not byte-limited)."""
        return None

    def fit(self, event: dict[str, Any]) -> dict[str, Any] | SinkRejection:
        """Make an oversized event fit ``max_event_bytes`` (truncate) or refuse it."""
        return event
