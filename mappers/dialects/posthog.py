"""PostHog capture style:
``{"event", "distinct_id", "properties", "timestamp", "uuid", "$set"...}``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mappers.dialects.reading import (
    ParsedTimes,
    Reading,
    TimeField,
    Times,
    event_name,
    identity,
    json_object,
    optional_text,
)
from mappers.errors import EventRejected, Reason
from mappers.identifiers import message_id

#: PostHog's names for the non-track calls -> the unified ``type``.
EVENT_TYPES = {
    "$identify": "identify",
    "$groupidentify": "group",
    "$pageview": "page",
    "$screen": "screen",
    "$create_alias": "alias",
}
#: An ``offset`` beyond this (about a year, in ms) is not a send delay.
MAX_OFFSET_MS = 3.2e10


class PostHogDialect:
    name = "posthog"

    def matches(self, obj: dict[str, Any]) -> bool:
        return True  # the default style: anything that is not Segment-style

    def read(self, obj: dict[str, Any], envelope_sent_at: Any) -> Reading:
        raw_name = obj.get("event")
        mid = message_id(obj.get("uuid"), obj, raw_name if isinstance(raw_name, str) else None)
        properties = json_object(obj.get("properties"), "properties")
        context = json_object(obj.get("context"), "context")
        traits = json_object(obj.get("traits"), "traits") if "traits" in obj else None
        name = event_name(raw_name)
        raw_distinct = obj.get("distinct_id")
        if raw_distinct is None:
            raw_distinct = properties.get("distinct_id", properties.get("$distinct_id"))
        distinct_id = identity(raw_distinct, "distinct_id")
        if distinct_id is None:
            raise EventRejected(
                Reason.MISSING_IDENTITY,
                "a PostHog-style event needs distinct_id",
                "distinct_id",
                name,
            )
        anonymous_id = optional_text(
            properties.get("$anon_distinct_id", properties.get("$device_id"))
        )
        for key in ("$set", "$set_once"):
            if isinstance(obj.get(key), dict) and key not in properties:
                properties[key] = obj[key]
        if traits is None and isinstance(properties.get("$set"), dict):
            traits = properties["$set"]
        workspace = properties.get("workspace_id")
        if workspace is None:
            groups = properties.get("$groups")
            if isinstance(groups, dict):
                workspace = groups.get("workspace")
        return Reading(
            type=EVENT_TYPES.get(name, "track"),
            event=name,
            message_id=mid,
            distinct_id=distinct_id,
            user_id=distinct_id,
            anonymous_id=anonymous_id,
            properties=properties,
            context=context,
            traits=traits,
            workspace=workspace,
            times=Times(
                original=TimeField("timestamp", obj.get("timestamp")),
                stated=TimeField("timestamp", None),
                sent=TimeField("sent_at", obj.get("sent_at", envelope_sent_at)),
                received=TimeField("received_at", obj.get("received_at")),
                offset_ms=obj.get("offset"),
            ),
        )

    def event_time(self, times: ParsedTimes) -> datetime:
        original, sent_at, received_at = times.original, times.sent, times.received
        # Clock skew: the interval between creating and sending the event is
        # measured on the client's own clock, so subtracting it from the
        # server's receive time is right even when that clock is wrong.
        if original is not None and sent_at is not None:
            return received_at - (sent_at - original)
        if original is not None:
            return original
        offset_ms = times.offset_ms
        if (
            isinstance(offset_ms, (int, float))
            and not isinstance(offset_ms, bool)
            and 0 <= offset_ms < MAX_OFFSET_MS
        ):
            return received_at - timedelta(milliseconds=offset_ms)
        return received_at
