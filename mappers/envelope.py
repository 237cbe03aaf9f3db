"""Wire format of the normalized topic, shared by the workers and ``etl replay``.

A record is either one UnifiedEvent JSON object (``envelope_size = 1``, keyed
by distinct_id) or an envelope ``{"events": [...]}`` whose Kafka header
``etl-events`` says how many events it holds.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Kafka header on an envelope: how many unified events it holds.
EVENTS_HEADER = "etl-events"


def encode_envelope(encoded_events: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(encoded_events) + b"]}"


def decode_unified(records: list[Any]) -> list[dict[str, Any]]:
    """Normalized-topic records (envelopes or single events) -> unified event dicts."""
    events: list[dict[str, Any]] = []
    for rec in records:
        doc = orjson.loads(rec.value)
        if "events" in doc and "message_id" not in doc:
            events.extend(doc["events"])
        else:
            events.append(doc)
    return events


def event_count(record: Any) -> int:
    """Events in one normalized-topic record, from its header (1 for a plain event)."""
    for name, value in record.headers or ():
        if name == EVENTS_HEADER:
            return int(value)
    return 1
