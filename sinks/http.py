"""What the HTTP sinks (PostHog, RudderStack) share.

* :class:`HttpSink` maps each unified event to the vendor's wire shape once,
  remembers its encoded size (``fit`` -> ``event_size`` -> ``write`` see the
  same dict objects), and makes an oversized event fit by truncating its
  largest strings (marked, and listed in ``properties.$truncated``).  Only an
  event that still does not fit is refused (``event_too_large_for_sink``).
* :func:`outcome_for_status` / :func:`raise_for_refusal` turn an HTTP answer
  into the runtime's contract: 429/5xx/timeouts -> retry (honouring
  Retry-After), 400/413/422 -> bisect (one event -> dead letter), 401/403 ->
  stop the sink.
"""

from __future__ import annotations

import abc
import copy
import email.utils
from datetime import UTC, datetime
from typing import Any

import requests

from mappers.errors import Reason
from mappers.normalize import TRUNCATION_MARKER
from sinks.base import (
    BatchRejectedError,
    RetryableSinkError,
    Sink,
    SinkAuthError,
    SinkRejection,
    WriteResult,
)

TRUNCATED_KEY = "$truncated"
#: Strings no longer than this are not worth cutting (the marker alone is 12 characters).
MIN_TRUNCATABLE = len(TRUNCATION_MARKER) + 8
#: Prepared payloads kept between fit/event_size and write;
#: beyond this the cache is dropped (and rebuilt on demand).
CACHE_LIMIT = 50_000

RETRY = "retry"
REJECT = "reject"
AUTH = "auth"

#: Transport failures where the request may or may not have arrived:
#: retry (the destination dedupes on the id).
TRANSIENT_ERRORS = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)


def outcome_for_status(status: int) -> str:
    """Classify a non-2xx status."""
    if status in (401, 403):
        return AUTH
    if status in (400, 413, 422):
        return REJECT
    # 408/425/429/5xx are transient.  Anything else (404 from a wrong host
    # path, 405...) is a deployment problem, not the events' fault: keep
    # retrying loudly rather than dead-letter good events.
    return RETRY


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def raise_for_refusal(
    sink: str, status: int, message: str, retry_after: float | None, events: list[dict[str, Any]]
) -> WriteResult:
    """Raise the runtime error for a refused request, or dead-letter a single refused event."""
    detail = f"{sink} answered HTTP {status}: {shorten(message)}"
    kind = outcome_for_status(status)
    if kind == AUTH:
        raise SinkAuthError(detail)
    if kind == RETRY:
        raise RetryableSinkError(detail, retry_after=retry_after)
    if len(events) == 1:
        reason = Reason.EVENT_TOO_LARGE_FOR_SINK if status == 413 else Reason.SINK_REJECTED
        return WriteResult(written=0, rejected=[SinkRejection(events[0], reason, detail)])
    raise BatchRejectedError(detail)


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iso(value: Any) -> Any:
    """Datetimes (unit tests pass normalizer output directly) -> RFC 3339 text with Z;
    text passes through.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


class HttpSink(Sink):
    """Base of the sinks that POST batches of per-event JSON to a vendor."""

    #: Bytes between two events in the request body.
    separator_bytes: int = 1

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._prepared: dict[int, tuple[dict[str, Any], Any, int]] = {}

    # --------------------------------------------------------- vendor hooks
    @abc.abstractmethod
    def to_payload(self, event: dict[str, Any]) -> dict[str, Any]:
        """Unified event -> the vendor's event object."""

    @abc.abstractmethod
    def encode(self, payload: dict[str, Any]) -> Any:
        """What goes on the wire for one event (bytes or str, exactly as sent)."""

    def truncatable(self, event: dict[str, Any]) -> list[tuple[str, Any]]:
        """(path prefix, container) pairs whose strings reach the wire and may be cut."""
        return [("", event.get("properties") or {}), ("context.", event.get("context") or {})]

    # ---------------------------------------------------------- preparation
    def prepare(self, event: dict[str, Any]) -> tuple[Any, int]:
        """(what write sends, encoded size) of one event, computed once per event object."""
        cached = self._prepared.get(id(event))
        if cached is not None and cached[0] is event:
            return cached[1], cached[2]
        payload = self.to_payload(event)
        encoded = self.encode(payload)
        item, size = self.item(payload, encoded), len(encoded)
        if len(self._prepared) >= CACHE_LIMIT:
            self._prepared.clear()
        # The event itself is kept in the entry, so its id cannot be reused meanwhile.
        self._prepared[id(event)] = (event, item, size)
        return item, size

    def item(self, payload: dict[str, Any], encoded: Any) -> Any:
        """What ``write`` needs per event (default: the encoded bytes)."""
        return encoded

    def forget(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self._prepared.pop(id(ev), None)

    def payload_size(self, event: dict[str, Any]) -> int:
        """Encoded bytes of the event object itself."""
        return self.prepare(event)[1]

    def event_size(self, event: dict[str, Any]) -> int:
        """Bytes the event adds to a request body: its encoding plus the separator."""
        return self.prepare(event)[1] + self.separator_bytes

    # ------------------------------------------------------------------ fit
    def fit(self, event: dict[str, Any]) -> dict[str, Any] | SinkRejection:
        limit = self.capabilities.max_event_bytes
        size = self.payload_size(event)
        if limit is None or size <= limit:
            return event
        fitted = self._truncate(event, limit)
        if fitted is None:
            return SinkRejection(
                event,
                Reason.EVENT_TOO_LARGE_FOR_SINK,
                f"event is {size} bytes encoded for {self.name}; the limit is {limit} and "
                "truncating its strings cannot make it fit",
            )
        return fitted

    def _truncate(self, event: dict[str, Any], limit: int) -> dict[str, Any] | None:
        work = dict(event)
        work["properties"] = copy.deepcopy(event.get("properties") or {})
        work["context"] = copy.deepcopy(event.get("context") or {})
        previous = work["properties"].get(TRUNCATED_KEY)
        cut_paths: list[str] = list(previous) if isinstance(previous, list) else []
        marker_bytes = len(self.encode({"m": TRUNCATION_MARKER})) - len(self.encode({"m": ""}))
        size = self._measure(work)
        while size > limit:
            candidates = [
                c for c in _strings(self.truncatable(work)) if len(c[2]) > MIN_TRUNCATABLE
            ]
            if not candidates:
                return None
            path, container, text, key = max(candidates, key=lambda c: len(c[2]))
            base = (
                text[: -len(TRUNCATION_MARKER)]
                if text.endswith(TRUNCATION_MARKER) and path in cut_paths
                else text
            )
            # Each character removed saves at least one byte; the marker and
            # the $truncated entry cost some back.
            extra = 0 if path in cut_paths else marker_bytes + self._listing_cost(cut_paths, path)
            keep = max(0, len(base) - (size - limit) - extra)
            container[key] = base[:keep] + TRUNCATION_MARKER
            if path not in cut_paths:
                cut_paths.append(path)
                work["properties"][TRUNCATED_KEY] = cut_paths
            size = self._measure(work)
        return work

    def _listing_cost(self, cut_paths: list[str], path: str) -> int:
        """Bytes that listing ``path`` in ``$truncated`` adds
        (+1 for the comma before a new key).
        """
        before = len(self.encode({TRUNCATED_KEY: cut_paths})) if cut_paths else len(self.encode({}))
        return len(self.encode({TRUNCATED_KEY: [*cut_paths, path]})) - before + 1

    def _measure(self, event: dict[str, Any]) -> int:
        return len(self.encode(self.to_payload(event)))


def _strings(roots: list[tuple[str, Any]]) -> list[tuple[str, Any, str, Any]]:
    """Every string leaf as (path, container, value, key-in-container)."""
    found: list[tuple[str, Any, str, Any]] = []

    def walk(prefix: str, value: Any, container: Any, key: Any) -> None:
        if isinstance(value, str):
            found.append((prefix, container, value, key))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v, value, k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v, value, i)

    for root, container in roots:
        for k, v in container.items():
            if root == "" and k == TRUNCATED_KEY:
                continue
            walk(f"{root}{k}", v, container, k)
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
