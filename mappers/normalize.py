"""Raw Kafka message -> unified events + rejections.

Accepts, per DESIGN §3, PostHog capture style and Segment/RudderStack style
(``mappers/dialects/``), either as a single event or inside a batch envelope
``{"batch": [...], "sent_at"|"sentAt"?}``.  In a batch each event stands
alone: bad ones are rejected, good ones land.  Nothing is guessed: an input
that cannot be read safely becomes a :class:`~mappers.errors.Rejection` with
a specific reason.

Per event: the dialect reads it (:class:`~mappers.dialects.reading.Reading`),
values are sanitised (``mappers.sanitise``), typed properties coerced
(``mappers.typed``), and the times parsed and resolved by the dialect's
event-time rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

from etl.config import NormalizeSettings
from mappers.dialects import SEGMENT, ParsedTimes, dialect_for
from mappers.dialects.reading import optional_text
from mappers.errors import EventRejected, Reason, Rejection
from mappers.identifiers import message_id
from mappers.jsontypes import json_type
from mappers.models import SCHEMA_VERSION
from mappers.sanitise import (
    CLEAN,
    TRUNCATION_MARKER,
    Sanitised,
    Sanitiser,
    has_long_number,
    parse_int,
)
from mappers.timestamps import from_epoch_ms, parse_timestamp
from mappers.typed import coerce_typed

__all__ = ["TRUNCATION_MARKER", "Normalizer", "dumps_event"]


class Normalizer:
    """Turns raw message bytes into unified event dicts and rejections."""

    def __init__(self, settings: NormalizeSettings | None = None) -> None:
        self.settings = settings or NormalizeSettings()
        self.sanitiser = Sanitiser(self.settings.max_string_length, self.settings.max_depth)
        #: Whether the message being normalized has a digit run that may not fit int64.
        self._long_numbers = True

    # ------------------------------------------------------------------ entry
    def normalize(
        self,
        value: bytes | None,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int | None,
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        events: list[dict[str, Any]] = []
        rejections: list[Rejection] = []
        raw = value or b""

        def reject(reason: str, error: str, field_name: str | None = None, **extra: Any) -> None:
            rejections.append(Rejection(reason, error, field_name, raw, **extra))

        if not raw or raw.isspace():
            reject(Reason.EMPTY_MESSAGE, "empty message: no bytes to parse")
            return events, rejections
        if len(raw) > self.settings.max_message_bytes:
            reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"message is {len(raw)} bytes; the limit is {self.settings.max_message_bytes}",
            )
            return events, rejections

        long_numbers = has_long_number(raw)
        doc, sanitised_utf8, error = self._loads(raw, long_numbers)
        if error is not None:
            reject(*error)
            return events, rejections

        received_default = (
            from_epoch_ms(timestamp_ms)
            if timestamp_ms is not None and timestamp_ms >= 0
            else datetime.now(UTC)
        )
        source = (topic, partition, offset, received_default)
        self._long_numbers = long_numbers

        if is_envelope(doc):
            items = doc["batch"]
            if not isinstance(items, list):
                reject(
                    Reason.INVALID_BATCH,
                    f"batch must be a list, got {type(items).__name__}",
                    "batch",
                )
                return events, rejections
            if not items:
                reject(Reason.INVALID_BATCH, "batch envelope holds no events", "batch")
                return events, rejections
            envelope_sent_at = envelope_sent_time(doc)
            envelope_fields = {k: v for k, v in doc.items() if k != "batch"}
            for index, item in enumerate(items):
                item_raw = orjson.dumps(item)
                if not isinstance(item, dict):
                    rejections.append(
                        Rejection(
                            Reason.NOT_AN_OBJECT,
                            f"batch item {index} must be an object, got {json_type(item)}",
                            f"batch[{index}]",
                            item_raw,
                            batch_index=index,
                        )
                    )
                    continue
                if len(item_raw) > self.settings.max_event_bytes:
                    rejections.append(
                        Rejection(
                            Reason.PAYLOAD_TOO_LARGE,
                            f"event is {len(item_raw)} bytes; the limit is "
                            f"{self.settings.max_event_bytes}",
                            f"batch[{index}]",
                            item_raw[: self.settings.dlq_raw_max_bytes],
                            batch_index=index,
                        )
                    )
                    continue
                self._one(
                    item,
                    index,
                    envelope_sent_at,
                    item_raw,
                    source,
                    sanitised_utf8,
                    events,
                    rejections,
                    envelope_fields,
                )
        elif isinstance(doc, dict):
            if len(raw) > self.settings.max_event_bytes:
                reject(
                    Reason.PAYLOAD_TOO_LARGE,
                    f"event is {len(raw)} bytes; the limit is {self.settings.max_event_bytes}",
                )
                return events, rejections
            self._one(doc, None, None, raw, source, sanitised_utf8, events, rejections)
        else:
            reject(
                Reason.NOT_AN_OBJECT,
                f"top-level JSON must be an event object or a batch envelope, got {json_type(doc)}",
            )
        return events, rejections

    def outcomes(self, value: bytes | None) -> int:
        """How many outcomes (events + rejections) :meth:`normalize` gives this message.

        The same steps decide it (size limit, the same parser with its
        invalid-UTF-8 fallback, the same envelope test), without mapping.
        """
        raw = value or b""
        if not raw or raw.isspace() or len(raw) > self.settings.max_message_bytes:
            return 1
        doc, _, error = self._loads(raw, has_long_number(raw))
        if error is None and is_envelope(doc):
            items = doc["batch"]
            return len(items) if isinstance(items, list) and items else 1
        return 1

    # ---------------------------------------------------------------- helpers
    def _loads(
        self, raw: bytes, long_numbers: bool = True
    ) -> tuple[Any, bool, tuple[str, str] | None]:
        try:
            doc = orjson.loads(raw)
            if long_numbers and has_long_number(raw):
                doc = exact_loads(raw.decode("utf-8"), doc)
            return doc, False, None
        except orjson.JSONDecodeError as exc:
            message = str(exc)
        if "depth limit" in message or "recursion" in message:
            return (
                None,
                False,
                (Reason.TOO_DEEPLY_NESTED, f"JSON nesting exceeds the parser's limit ({message})"),
            )
        if "UTF-8" in message or "surrogate" in message:
            # Land the event with the undecodable bytes replaced by U+FFFD
            # rather than reject a whole event for one bad byte in a value.
            try:
                text = raw.decode("utf-8", "replace")
                doc = orjson.loads(text)
                return (exact_loads(text, doc) if long_numbers else doc), True, None
            except orjson.JSONDecodeError as exc2:
                message = str(exc2)
        return None, False, (Reason.INVALID_JSON, f"not valid JSON: {message}")

    def _one(
        self,
        obj: dict[str, Any],
        index: int | None,
        envelope_sent_at: Any,
        item_raw: bytes,
        source: tuple[str, int, int, datetime],
        sanitised_utf8: bool,
        events: list[dict[str, Any]],
        rejections: list[Rejection],
        envelope_fields: dict[str, Any] | None = None,
    ) -> None:
        try:
            events.append(
                self._event(
                    obj,
                    envelope_sent_at,
                    source,
                    sanitised_utf8,
                    self.sanitiser.needs_cleaning(item_raw, self._long_numbers),
                )
            )
        except EventRejected as exc:
            name = obj.get("event")
            if envelope_fields:
                # The dead letter is a one-item envelope, so the envelope's sent_at
                # (and api_key...) travel with it and a requeue times it the same.
                item_raw = orjson.dumps({**envelope_fields, "batch": [obj]})
            rejections.append(
                Rejection(
                    exc.reason,
                    exc.error,
                    exc.field,
                    item_raw,
                    batch_index=index,
                    message_id=known_message_id(obj),
                    event=name if isinstance(name, str) else None,
                )
            )

    def _event(
        self,
        obj: dict[str, Any],
        envelope_sent_at: Any,
        source: tuple[str, int, int, datetime],
        sanitised_utf8: bool,
        needs_cleaning: bool = True,
    ) -> dict[str, Any]:
        topic, partition, offset, received_default = source
        dialect = dialect_for(obj)
        r = dialect.read(obj, envelope_sent_at)
        properties, context, traits = r.properties, r.context, r.traits

        state = CLEAN
        if needs_cleaning or sanitised_utf8:
            state = Sanitised(nul_stripped=sanitised_utf8)
            clean = self.sanitiser.clean
            properties = clean(properties, 1, "properties", state)
            context = clean(context, 1, "context", state)
            if traits is not None:
                traits = clean(traits, 1, "traits", state)

        coerce_typed(r.event, properties)

        t = r.times
        original = parse_timestamp(t.original[1], t.original[0])
        stated = parse_timestamp(t.stated[1], t.stated[0])
        sent_at = parse_timestamp(t.sent[1], t.sent[0])
        received_at = parse_timestamp(t.received[1], t.received[0]) or received_default
        parsed = ParsedTimes(t, original, stated, sent_at, received_at)
        timestamp = dialect.event_time(parsed)

        trace = properties.get("trace_id")
        if trace is None:
            trace = properties.get("$ai_trace_id")

        if traits:
            context = {**context, "traits": traits}
        if state.truncated or state.nul_stripped or state.big_integers or parsed.notes:
            etl_meta: dict[str, Any] = dict(parsed.notes)
            if state.truncated:
                etl_meta["truncated"] = state.truncated
            if state.nul_stripped:
                etl_meta["sanitised"] = True
            if state.big_integers:
                etl_meta["big_integers"] = state.big_integers
            if state.key_collisions:
                etl_meta["key_collisions"] = state.key_collisions
            prior = context.get("etl")
            context = {**context, "etl": {**(prior if isinstance(prior, dict) else {}), **etl_meta}}

        return {
            "schema_version": SCHEMA_VERSION,
            "message_id": r.message_id,
            "type": r.type,
            "event": r.event,
            "distinct_id": r.distinct_id,
            "user_id": r.user_id,
            "anonymous_id": r.anonymous_id,
            "workspace_id": optional_text(r.workspace),
            "trace_id": optional_text(trace),
            "timestamp": timestamp,
            "original_timestamp": original,
            "stated_timestamp": stated,
            "sent_at": sent_at,
            "received_at": received_at,
            "properties": properties,
            "context": context,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
        }


def is_envelope(doc: Any) -> bool:
    """A batch envelope: an object with ``batch`` that is not itself an event."""
    return isinstance(doc, dict) and "batch" in doc and "event" not in doc and "type" not in doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact_loads(text: str, parsed: Any) -> Any:
    """JSON with integers outside int64 kept as their digits (``BigInt``).

    orjson turns integers beyond 64 bits into floats, losing digits; the
    standard parser keeps them exactly (rare, so its cost is fine).  ``parsed``
    is orjson's reading, already vouched for; it stands when the standard
    parser cannot go as deep (that document is rejected as too deep anyway).
    """
    try:
        return json.loads(text, parse_int=parse_int, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return parsed


def envelope_sent_time(doc: dict[str, Any]) -> Any:
    """A batch envelope's send time: ``sent_at``/``sentAt``, or posthog-node v1's ``created_at``."""
    for key in ("sent_at", "sentAt", "created_at"):
        if doc.get(key) is not None:
            return doc[key]
    return None


def known_message_id(obj: dict[str, Any]) -> str | None:
    """The id a rejected event would have landed under, when it can be told."""
    dialect = dialect_for(obj)
    source = obj.get("messageId") if dialect is SEGMENT else obj.get("uuid")
    name = obj.get("event")
    try:
        return message_id(source, obj, name if isinstance(name, str) else None)
    except (EventRejected, TypeError):
        return None


def dumps_event(event: dict[str, Any]) -> bytes:
    """Serialize a unified event (datetimes as RFC 3339 with Z)."""
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)
