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
    events, unreadable = split_unified(records)
    if unreadable:
        record, error = unreadable[0]
        raise ValueError(
            f"unreadable record at {record.topic}:{record.partition}:{record.offset}: {error}"
        )
    return events


def split_unified(records: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[Any, str]]]:
    """Like :func:`decode_unified`, but returns records that are not unified events apart.

    Only this job writes the normalized topic, but anyone with access can; one
    foreign record must not wedge its partition.
    """
    events: list[dict[str, Any]] = []
    unreadable: list[tuple[Any, str]] = []
    for rec in records:
        try:
            doc = orjson.loads(rec.value)
        except (orjson.JSONDecodeError, TypeError) as exc:
            unreadable.append((rec, f"not JSON: {exc}"))
            continue
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("events"), list)
            and "message_id" not in doc
        ):
            good = [ev for ev in doc["events"] if isinstance(ev, dict) and "message_id" in ev]
            if len(good) != len(doc["events"]):
                unreadable.append((rec, "envelope holds entries that are not unified events"))
                continue
            events.extend(good)
        elif isinstance(doc, dict) and "message_id" in doc:
            events.append(doc)
        else:
            unreadable.append((rec, "neither a unified event nor an envelope of them"))
    return events, unreadable


def event_count(record: Any) -> int:
    """Events in one normalized-topic record, from its header (1 for a plain event)."""
    for name, value in record.headers or ():
        if name == EVENTS_HEADER:
            return int(value)
    return 1
