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
* a fault of the environment (no space, permission denied, read-only file
  system, I/O error, a lock held, connection refused, the executor shutting
  down) is never a verdict on the events: :meth:`Sink.environment_cause` names
  it, and the runtime pauses and retries the same batch until it succeeds;
* anything else is unexpected: retried a few times, then bisected; before a
  single event is dead-lettered, :meth:`Sink.probe` makes a known-good write,
  and if that fails too the fault is the environment's, not the event's.

Each sink declares its :class:`Capabilities`; the runtime and the shared schema
module read them instead of branching on sink names.
"""

from __future__ import annotations

import abc
import errno
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


#: Causes of environment faults, as logged and as the ``cause`` label of ``etl_sink_fault``.
CAUSES = ("no_space", "read_only", "permission", "lock", "connection", "io", "shutdown")

_ERRNO_CAUSES = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "no_space",
    errno.EROFS: "read_only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EIO: "io",
    errno.ECONNREFUSED: "connection",
    errno.ECONNRESET: "connection",
    errno.ECONNABORTED: "connection",
    errno.EHOSTUNREACH: "connection",
    errno.ENETUNREACH: "connection",
    errno.ETIMEDOUT: "connection",
}
# Drivers often wrap the OS error in their own exception and keep only its text.
_TEXT_CAUSES = (
    ("cannot schedule new futures after shutdown", "shutdown"),
    ("interpreter shutdown", "shutdown"),
    ("no space left", "no_space"),
    ("disk quota exceeded", "no_space"),
    ("file too large", "no_space"),
    ("read-only file system", "read_only"),
    ("permission denied", "permission"),
    ("operation not permitted", "permission"),
    ("could not set lock", "lock"),
    ("conflicting lock", "lock"),
    ("locked by another process", "lock"),
    ("database is locked", "lock"),
    ("connection refused", "connection"),
    ("input/output error", "io"),
    ("could not write file", "io"),
    ("could not read from file", "io"),
    ("cannot open file", "io"),
    ("database has been invalidated", "io"),
)


def environment_cause(exc: BaseException) -> str | None:
    """The environment fault behind ``exc`` (one of :data:`CAUSES`), or None if there is none.

    Looks through the chain of causes, so a driver's wrapper of an OSError counts.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            cause = _ERRNO_CAUSES.get(current.errno or -1)
            if cause is None and isinstance(current, ConnectionError):
                cause = "connection"
            if cause is not None:
                return cause
        text = str(current).lower()
        for needle, cause in _TEXT_CAUSES:
            if needle in text:
                return cause
        current = current.__cause__ or current.__context__
    return None


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

    def environment_cause(self, exc: BaseException) -> str | None:
        """The environment fault behind ``exc`` (see :data:`CAUSES`); None: maybe the events'."""
        return environment_cause(exc)

    def probe(self) -> None:
        """A known-good write touching the same place as ``write`` (raise if it fails).

        Called before an event is dead-lettered for an unexpected error: if the
        probe fails too, the fault is the destination's, not the event's.  The
        default has nothing to try (the event is judged on its own error).
        """
        return None

    def write_rejected(self, records: list[dict[str, Any]]) -> None:
        """Store dead letters (only for sinks whose capabilities say ``stores_rejected``)."""
        raise NotImplementedError(f"sink {self.name} does not store rejected events")

    def event_size(self, event: dict[str, Any]) -> int | None:
        """Encoded size of one event, for byte-limited batching (None = not byte-limited)."""
        return None

    def fit(self, event: dict[str, Any]) -> dict[str, Any] | SinkRejection:
        """Make an oversized event fit ``max_event_bytes`` (truncate) or refuse it."""
        return event
