"""Rejections: why an input did not become a unified event.

Reasons are stable, machine-readable codes (they are grouped and counted in
``rejected_events`` and ``etl dlq list``); ``error`` is the human sentence and
``field`` the offending field path, when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass


class Reason:
    EMPTY_MESSAGE = "empty_message"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_BATCH = "invalid_batch"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    INVALID_TYPE = "invalid_type"
    MISSING_EVENT_NAME = "missing_event_name"
    INVALID_EVENT_NAME = "invalid_event_name"
    MISSING_IDENTITY = "missing_identity"
    INVALID_IDENTITY = "invalid_identity"
    INVALID_MESSAGE_ID = "invalid_message_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_FIELD = "invalid_field"
    INVALID_PROPERTY = "invalid_property"
    OUT_OF_RANGE = "out_of_range"
    #: The mapper itself failed on this input (a bug): dead-lettered, never retried forever.
    INTERNAL_ERROR = "internal_error"
    #: The event breaks its tracking-plan contract under a dead_letter policy.
    CONTRACT_VIOLATION = "contract_violation"
    # Raised by delivery, not by the mappers.
    SINK_REJECTED = "sink_rejected"
    UNREADABLE_RECORD = "unreadable_record"
    EVENT_TOO_LARGE_FOR_SINK = "event_too_large_for_sink"


@dataclass(slots=True)
class Rejection:
    reason: str
    error: str
    field: str | None
    raw: bytes
    batch_index: int | None = None
    message_id: str | None = None
    event: str | None = None
    #: Kafka timestamp (ms) of the raw record, so a requeue reproduces the same receive time.
    source_timestamp: int | None = None
    #: Set when ``raw`` was redacted: the keyed hashes of the original values, by path.
    redaction_hashes: dict[str, str] | None = None


class EventRejected(Exception):
    """Raised inside the mapper for one event; turned into a Rejection."""

    def __init__(
        self, reason: str, error: str, field: str | None = None, event: str | None = None
    ) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.field = field
        self.event = event
