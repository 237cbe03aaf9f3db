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


def offset_span(letters: list[dict[str, Any]]) -> tuple[str, int, int] | None:
    """``("source_offset", low, high)``: where stored letters with these ids lie, if known.

    A letter's ``rejection_id`` hashes its stage and source coordinates, so a stored
    row with the same id has the same offset, and a sink looking for the rows a
    batch replaces need only search that range.  None (search everywhere) when a
    letter's id is not that hash (a foreign or hand-made record) or it has no offset.
    """
    offsets: list[int] = []
    for letter in letters:
        offset = letter.get("source_offset")
        if type(offset) is not int or letter.get("rejection_id") != _coordinates_id(letter, offset):
            return None
        offsets.append(offset)
    return ("source_offset", min(offsets), max(offsets)) if offsets else None


def _coordinates_id(letter: dict[str, Any], offset: int) -> str | None:
    try:
        return rejection_id(
            letter["stage"],
            letter["source_topic"],
            letter["source_partition"],
            offset,
            letter.get("batch_index"),
            letter.get("message_id"),
        )
    except KeyError:
        return None


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
