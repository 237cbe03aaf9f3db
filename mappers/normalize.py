"""Raw Kafka message -> unified events + rejections.

Accepts, per DESIGN §3:

* PostHog capture style ``{"event", "distinct_id", "properties", "timestamp", "uuid", ...}``;
* Segment/RudderStack style ``{"type", "event", "userId", "anonymousId", "messageId", ...}``;
* either as a single event or inside a batch envelope ``{"batch": [...], "sent_at"|"sentAt"?}``.

In a batch each event stands alone: bad ones are rejected, good ones land.
Nothing is guessed: an input that cannot be read safely becomes a
:class:`~mappers.errors.Rejection` with a specific reason.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from etl.config import NormalizeSettings
from mappers.errors import EventRejected, Reason, Rejection
from mappers.models import KNOWN_EVENTS, SCHEMA_VERSION, SENSITIVE_PROPERTIES, TypedProperties

SEGMENT_TYPES = {"track", "identify", "group", "page", "screen", "alias"}
# Non-track Segment calls get PostHog's conventional event names, so that both
# styles of the same call land under one name.
SEGMENT_EVENT_NAME = {
    "identify": "$identify",
    "group": "$groupidentify",
    "page": "$pageview",
    "screen": "$screen",
    "alias": "$create_alias",
}
POSTHOG_EVENT_TYPE = {v: k for k, v in SEGMENT_EVENT_NAME.items()}
# Transport-level fields left out of the content hash: a client retry that
# re-sends the same event later must hash to the same message_id.
TRANSPORT_FIELDS = frozenset({"sent_at", "sentAt", "received_at", "receivedAt", "api_key", "writeKey"})

MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 255
TRUNCATION_MARKER = "…[truncated]"
_MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Sanitised:
    truncated: list[str] = field(default_factory=list)
    nul_stripped: bool = False


#: Shared "nothing was sanitised" state for the common case (never mutated).
_CLEAN = _Sanitised(truncated=[], nul_stripped=False)


def parse_timestamp(value: Any, field_name: str) -> datetime | None:
    """ISO 8601 (any offset; naive = UTC) or epoch seconds/milliseconds -> aware UTC."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            seconds = value / 1000.0 if abs(value) >= 1e11 else float(value)
            dt = _EPOCH + timedelta(seconds=seconds)
        elif isinstance(value, str):
            text = value.strip()
            if not text:
                raise ValueError("empty string")
            if text.lstrip("-").replace(".", "", 1).isdigit():
                return parse_timestamp(float(text), field_name)
            dt = datetime.fromisoformat(text)
            dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
        else:
            raise ValueError(f"expected a string or number, got {type(value).__name__}")
        if not (_MIN_TS <= dt < _MAX_TS):
            raise ValueError("outside 1970..2200")
    except (ValueError, OverflowError, OSError) as exc:
        shown = value if isinstance(value, (int, float)) else str(value)[:64]
        raise EventRejected(
            Reason.INVALID_TIMESTAMP, f"{field_name}: cannot parse {shown!r} as a timestamp ({exc})", field_name
        ) from None
    return dt


def content_message_id(obj: dict[str, Any]) -> str:
    """Stable id for an event without uuid/messageId: a hash of its canonical content."""
    canonical = {k: v for k, v in obj.items() if k not in TRANSPORT_FIELDS}
    digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def _identity(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise EventRejected(
            Reason.INVALID_IDENTITY, f"{field_name} must be a string or number, got {type(value).__name__}", field_name
        )
    text = (str(value) if not isinstance(value, str) else value).replace("\x00", "").strip()
    if not text:
        return None
    if len(text) > MAX_NAME_LENGTH:
        raise EventRejected(Reason.INVALID_IDENTITY, f"{field_name} is longer than {MAX_NAME_LENGTH} characters", field_name)
    return text


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).replace("\x00", "").strip() if not isinstance(value, bool) else str(value).lower()
    return text or None


class Normalizer:
    """Turns raw message bytes into unified event dicts and rejections."""

    def __init__(self, settings: NormalizeSettings | None = None) -> None:
        self.settings = settings or NormalizeSettings()
        self._max_len = self.settings.max_string_length
        self._max_depth = self.settings.max_depth

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

        if not raw.strip():
            reject(Reason.EMPTY_MESSAGE, "empty message: no bytes to parse")
            return events, rejections
        if len(raw) > self.settings.max_message_bytes:
            reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"message is {len(raw)} bytes; the limit is {self.settings.max_message_bytes}",
            )
            return events, rejections

        doc, sanitised_utf8, error = self._loads(raw)
        if error is not None:
            reject(*error)
            return events, rejections

        received_default = (
            _EPOCH + timedelta(milliseconds=timestamp_ms)
            if timestamp_ms is not None and timestamp_ms >= 0
            else datetime.now(UTC)
        )
        source = (topic, partition, offset, received_default)

        if isinstance(doc, dict) and "batch" in doc and "event" not in doc and "type" not in doc:
            items = doc["batch"]
            if not isinstance(items, list):
                reject(Reason.INVALID_BATCH, f"batch must be a list, got {type(items).__name__}", "batch")
                return events, rejections
            if not items:
                reject(Reason.INVALID_BATCH, "batch envelope holds no events", "batch")
                return events, rejections
            envelope_sent_at = doc.get("sent_at", doc.get("sentAt"))
            for index, item in enumerate(items):
                item_raw = orjson.dumps(item)
                if not isinstance(item, dict):
                    rejections.append(
                        Rejection(
                            Reason.NOT_AN_OBJECT,
                            f"batch item {index} must be an object, got {_json_type(item)}",
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
                            f"event is {len(item_raw)} bytes; the limit is {self.settings.max_event_bytes}",
                            f"batch[{index}]",
                            item_raw[: self.settings.dlq_raw_max_bytes],
                            batch_index=index,
                        )
                    )
                    continue
                self._one(item, index, envelope_sent_at, item_raw, source, sanitised_utf8, events, rejections)
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
                f"top-level JSON must be an event object or a batch envelope, got {_json_type(doc)}",
            )
        return events, rejections

    # ---------------------------------------------------------------- helpers
    def _loads(self, raw: bytes) -> tuple[Any, bool, tuple[str, str] | None]:
        try:
            return orjson.loads(raw), False, None
        except orjson.JSONDecodeError as exc:
            message = str(exc)
        if "depth limit" in message or "recursion" in message:
            return None, False, (Reason.TOO_DEEPLY_NESTED, f"JSON nesting exceeds the parser's limit ({message})")
        if "UTF-8" in message or "surrogate" in message:
            # Land the event with the undecodable bytes replaced by U+FFFD
            # rather than reject a whole event for one bad byte in a value.
            try:
                return orjson.loads(raw.decode("utf-8", "replace")), True, None
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
    ) -> None:
        try:
            events.append(self._event(obj, envelope_sent_at, source, sanitised_utf8, self._needs_cleaning(item_raw)))
        except EventRejected as exc:
            name = obj.get("event")
            rejections.append(
                Rejection(
                    exc.reason,
                    exc.error,
                    exc.field,
                    item_raw,
                    batch_index=index,
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
        segment = "type" in obj or "userId" in obj or "anonymousId" in obj or "messageId" in obj
        raw_name = obj.get("event")
        # The id is taken (or hashed) from the event exactly as received,
        # before anything below normalizes it, so a replay yields the same id.
        message_id = self._message_id(
            obj.get("messageId") if segment else obj.get("uuid"), obj, raw_name if isinstance(raw_name, str) else None
        )

        properties = self._object(obj.get("properties"), "properties")
        context = self._object(obj.get("context"), "context")
        traits = self._object(obj.get("traits"), "traits") if "traits" in obj else None

        if segment:
            etype = obj.get("type", "track")
            if not isinstance(etype, str) or etype not in SEGMENT_TYPES:
                raise EventRejected(
                    Reason.INVALID_TYPE,
                    f"type must be one of {', '.join(sorted(SEGMENT_TYPES))}, got {str(etype)[:40]!r}",
                    "type",
                )
            name = self._event_name(obj.get("event")) if etype == "track" else SEGMENT_EVENT_NAME[etype]
            if etype in ("page", "screen") and isinstance(obj.get("name"), str) and "name" not in properties:
                properties["name"] = obj["name"]
            user_id = _identity(obj.get("userId"), "userId")
            anonymous_id = _identity(obj.get("anonymousId"), "anonymousId")
            if user_id is None and anonymous_id is None:
                raise EventRejected(
                    Reason.MISSING_IDENTITY, "a Segment-style event needs userId or anonymousId", "userId", name
                )
            distinct_id = user_id or anonymous_id
            original_raw = obj.get("originalTimestamp", obj.get("timestamp"))
            stated_raw = obj.get("timestamp") if "originalTimestamp" in obj else None
            sent_raw = obj.get("sentAt", envelope_sent_at)
            received_raw = obj.get("receivedAt")
            offset_ms = None
            workspace = properties.get("workspace_id")
            if workspace is None:
                workspace = context.get("groupId")
            if workspace is None and etype == "group":
                workspace = obj.get("groupId")
            if etype == "alias" and "previousId" in obj and "previous_id" not in properties:
                properties["previous_id"] = obj["previousId"]
        else:
            name = self._event_name(obj.get("event"))
            etype = POSTHOG_EVENT_TYPE.get(name, "track")
            raw_distinct = obj.get("distinct_id")
            if raw_distinct is None:
                raw_distinct = properties.get("distinct_id", properties.get("$distinct_id"))
            distinct_id = _identity(raw_distinct, "distinct_id")
            if distinct_id is None:
                raise EventRejected(Reason.MISSING_IDENTITY, "a PostHog-style event needs distinct_id", "distinct_id", name)
            user_id = distinct_id
            anonymous_id = _optional_str(properties.get("$anon_distinct_id", properties.get("$device_id")))
            for key in ("$set", "$set_once"):
                if isinstance(obj.get(key), dict) and key not in properties:
                    properties[key] = obj[key]
            if traits is None and isinstance(properties.get("$set"), dict):
                traits = properties["$set"]
            original_raw = obj.get("timestamp")
            stated_raw = None
            sent_raw = obj.get("sent_at", envelope_sent_at)
            received_raw = obj.get("received_at")
            offset_ms = obj.get("offset")
            workspace = properties.get("workspace_id")

        if workspace is None:
            groups = properties.get("$groups")
            if isinstance(groups, dict):
                workspace = groups.get("workspace")

        state = _CLEAN
        if needs_cleaning or sanitised_utf8:
            state = _Sanitised(nul_stripped=sanitised_utf8)
            properties = self._clean(properties, 1, "properties", state)
            context = self._clean(context, 1, "context", state)
            if traits is not None:
                traits = self._clean(traits, 1, "traits", state)

        model = KNOWN_EVENTS.get(name)
        if model is not None:
            self._validate_typed(model, properties, name)

        original = parse_timestamp(original_raw, "originalTimestamp" if segment and "originalTimestamp" in obj else "timestamp")
        stated = parse_timestamp(stated_raw, "timestamp")
        sent_at = parse_timestamp(sent_raw, "sentAt" if segment else "sent_at")
        received_at = parse_timestamp(received_raw, "receivedAt" if segment else "received_at") or received_default
        timestamp = self._event_time(original, stated, sent_at, received_at, offset_ms)

        trace = properties.get("trace_id")
        if trace is None:
            trace = properties.get("$ai_trace_id")

        if traits:
            context = {**context, "traits": traits}
        if state.truncated or state.nul_stripped:
            etl_meta: dict[str, Any] = {}
            if state.truncated:
                etl_meta["truncated"] = state.truncated
            if state.nul_stripped:
                etl_meta["sanitised"] = True
            context = {**context, "etl": {**context.get("etl", {}), **etl_meta}}

        return {
            "schema_version": SCHEMA_VERSION,
            "message_id": message_id,
            "type": etype,
            "event": name,
            "distinct_id": distinct_id,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "workspace_id": _optional_str(workspace),
            "trace_id": _optional_str(trace),
            "timestamp": timestamp,
            "original_timestamp": original,
            "sent_at": sent_at,
            "received_at": received_at,
            "properties": properties,
            "context": context,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
        }

    @staticmethod
    def _event_time(
        original: datetime | None,
        stated: datetime | None,
        sent_at: datetime | None,
        received_at: datetime,
        offset_ms: Any,
    ) -> datetime:
        # Segment's skew correction: the client's clock may be wrong, but the
        # interval between creating and sending the event is measured on that
        # same clock, so subtracting it from the server's receive time is right.
        if original is not None and sent_at is not None:
            return received_at - (sent_at - original)
        if stated is not None:
            return stated
        if original is not None:
            return original
        if isinstance(offset_ms, (int, float)) and not isinstance(offset_ms, bool) and 0 <= offset_ms < 3.2e10:
            return received_at - timedelta(milliseconds=offset_ms)
        return received_at

    @staticmethod
    def _event_name(value: Any) -> str:
        if value is None:
            raise EventRejected(Reason.MISSING_EVENT_NAME, "event has no name", "event")
        if not isinstance(value, str):
            raise EventRejected(Reason.INVALID_EVENT_NAME, f"event name must be a string, got {_json_type(value)}", "event")
        name = value.replace("\x00", "").strip()
        if not name:
            raise EventRejected(Reason.MISSING_EVENT_NAME, "event name is empty", "event")
        if len(name) > MAX_NAME_LENGTH:
            raise EventRejected(Reason.INVALID_EVENT_NAME, f"event name is longer than {MAX_NAME_LENGTH} characters", "event")
        return name

    @staticmethod
    def _object(value: Any, field_name: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise EventRejected(Reason.INVALID_FIELD, f"{field_name} must be an object, got {_json_type(value)}", field_name)
        return dict(value)

    @staticmethod
    def _message_id(source_id: Any, obj: dict[str, Any], name: str | None) -> str:
        if source_id is None or source_id == "":
            return content_message_id(obj)
        if isinstance(source_id, bool) or not isinstance(source_id, (str, int)):
            raise EventRejected(
                Reason.INVALID_MESSAGE_ID, f"message id must be a string, got {_json_type(source_id)}", "messageId", name
            )
        text = str(source_id).replace("\x00", "")
        if not text.strip():
            return content_message_id(obj)
        if len(text) > MAX_ID_LENGTH:
            raise EventRejected(
                Reason.INVALID_MESSAGE_ID, f"message id is longer than {MAX_ID_LENGTH} characters", "messageId", name
            )
        return text

    def _needs_cleaning(self, raw: bytes) -> bool:
        """False when the bytes prove there is nothing to sanitise (the common case).

        In valid JSON a NUL can only appear as the escape ``\\u0000``; no string
        can be longer than the whole document; and nesting cannot be deeper
        than the number of brackets.
        """
        return (
            len(raw) > self._max_len
            or b"\\u0000" in raw
            or raw.count(b"{") + raw.count(b"[") > self._max_depth
        )

    def _clean(self, value: Any, depth: int, path: str, state: _Sanitised) -> Any:
        """Strip NULs, cut oversized strings, refuse runaway nesting."""
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                value = value.replace("\x00", "")
                state.nul_stripped = True
            if len(value) > self._max_len:
                state.truncated.append(path)
                value = value[: self._max_len] + TRUNCATION_MARKER
            return value
        if kind is dict:
            if depth > self._max_depth:
                raise EventRejected(
                    Reason.TOO_DEEPLY_NESTED, f"{path} is nested deeper than {self._max_depth} levels", path
                )
            out = {}
            for key, item in value.items():
                if "\x00" in key:
                    key = key.replace("\x00", "")
                    state.nul_stripped = True
                out[key] = self._clean(item, depth + 1, f"{path}.{key}", state)
            return out
        if kind is list:
            if depth > self._max_depth:
                raise EventRejected(
                    Reason.TOO_DEEPLY_NESTED, f"{path} is nested deeper than {self._max_depth} levels", path
                )
            return [self._clean(item, depth + 1, f"{path}[{i}]", state) for i, item in enumerate(value)]
        return value

    @staticmethod
    def _validate_typed(model: type[TypedProperties], properties: dict[str, Any], name: str) -> None:
        """Coerce the typed properties in place; reject values that do not coerce safely."""
        try:
            typed = model.model_validate(properties)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            key = str(err["loc"][0]) if err["loc"] else "?"
            field_path = f"properties.{key}"
            reason = Reason.OUT_OF_RANGE if err["type"] in _RANGE_ERRORS else Reason.INVALID_PROPERTY
            shown = "" if key in SENSITIVE_PROPERTIES else f" (got {_preview(err.get('input'))})"
            raise EventRejected(reason, f"{field_path}: {err['msg']}{shown}", field_path, name) from None
        values = typed.__dict__
        for field_name, key in _field_keys(model):
            if key in properties:
                coerced = values[field_name]
                if coerced is not None or properties[key] is None:
                    properties[key] = coerced
        if name == "$ai_generation" and "$ai_total_cost_usd" not in properties:
            parts = [properties.get("$ai_input_cost_usd"), properties.get("$ai_output_cost_usd")]
            if any(isinstance(p, float) for p in parts):
                properties["$ai_total_cost_usd"] = sum(p for p in parts if isinstance(p, float))


_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}


@lru_cache(maxsize=None)
def _field_keys(model: type[TypedProperties]) -> tuple[tuple[str, str], ...]:
    """(field name, property key as sent) per field; read once (pydantic's accessor is slow)."""
    return tuple((name, info.alias or name) for name, info in model.model_fields.items())


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dumps_event(event: dict[str, Any]) -> bytes:
    """Serialize a unified event (datetimes as RFC 3339 with Z)."""
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)
