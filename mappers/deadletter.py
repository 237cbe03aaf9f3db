"""Dead-letter records: what goes to ``events.dlq`` and then ``rejected_events``.

A dead letter carries the original bytes (UTF-8 text, or base64 when the bytes
are not UTF-8), the reason, the failing field and the source coordinates.  Its
``rejection_id`` is derived from the stage and the source coordinates, so a
redelivered dead letter lands once.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from mappers.errors import Rejection


def encode_raw(raw: bytes, limit: int) -> tuple[str, str]:
    cut = raw[:limit]
    try:
        return cut.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if len(raw) > limit:
        # A cut through a multi-byte character does not make UTF-8 text binary.
        try:
            raw.decode("utf-8")
            return cut.decode("utf-8", "ignore"), "utf-8"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(cut).decode("ascii"), "base64"


def decode_raw(record: dict[str, Any]) -> bytes:
    payload = record.get("raw_payload") or ""
    if record.get("raw_encoding") == "base64":
        return base64.b64decode(payload)
    return payload.encode("utf-8")


def rejection_id(
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    batch_index: int | None,
    message_id: str | None,
) -> str:
    key = (
        f"{stage}|{topic}|{partition}|{offset}|"
        f"{'' if batch_index is None else batch_index}|{message_id or ''}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def dead_letter(
    rejection: Rejection,
    *,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    raw_limit: int,
) -> dict[str, Any]:
    payload, encoding = encode_raw(rejection.raw, raw_limit)
    return {
        "rejection_id": rejection_id(
            stage, topic, partition, offset, rejection.batch_index, rejection.message_id
        ),
        "reason": rejection.reason,
        "field": rejection.field,
        "error": rejection.error,
        "stage": stage,
        "event": rejection.event,
        "message_id": rejection.message_id,
        "raw_payload": payload,
        "raw_encoding": encoding,
        "raw_size": len(rejection.raw),
        "raw_sha256": hashlib.sha256(rejection.raw).hexdigest(),
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "batch_index": rejection.batch_index,
        "source_timestamp": rejection.source_timestamp,
        # Kept beside a redacted payload so a requeue lands the original's hashes.
        "redaction_hashes": rejection.redaction_hashes,
        "rejected_at": datetime.now(UTC),
    }


def dumps_dead_letter(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_UTC_Z)
