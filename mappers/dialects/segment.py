"""Segment/RudderStack style: ``{"type", "event", "userId", "anonymousId", "messageId", ...}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mappers.dialects.reading import (
    ParsedTimes,
    Reading,
    Times,
    event_name,
    groups_workspace,
    identity,
    objects,
)
from mappers.errors import EventRejected, Reason
from mappers.identifiers import message_id

TYPES = {"track", "identify", "group", "page", "screen", "alias"}
# Non-track calls get PostHog's conventional event names, so that both
# styles of the same call land under one name.
EVENT_NAMES = {
    "identify": "$identify",
    "group": "$groupidentify",
    "page": "$pageview",
    "screen": "$screen",
    "alias": "$create_alias",
}
#: Keys whose presence marks an object as Segment-style.
MARKERS = frozenset(("type", "userId", "anonymousId", "messageId"))


class SegmentDialect:
    name = "segment"

    def matches(self, obj: dict[str, Any]) -> bool:
        return not MARKERS.isdisjoint(obj)

    def read(self, obj: dict[str, Any], envelope_sent_at: Any) -> Reading:
        raw_name = obj.get("event")
        mid = message_id(obj.get("messageId"), obj, raw_name if isinstance(raw_name, str) else None)
        properties, context, traits = objects(obj)
        etype = obj.get("type", "track")
        if not isinstance(etype, str) or etype not in TYPES:
            raise EventRejected(
                Reason.INVALID_TYPE,
                f"type must be one of {', '.join(sorted(TYPES))}, got {str(etype)[:40]!r}",
                "type",
            )
        name = event_name(raw_name) if etype == "track" else EVENT_NAMES[etype]
        if (
            etype in ("page", "screen")
            and isinstance(obj.get("name"), str)
            and "name" not in properties
        ):
            properties["name"] = obj["name"]
        if (
            etype in ("page", "screen")
            and isinstance(obj.get("category"), str)
            and "category" not in properties
        ):
            properties["category"] = obj["category"]
        user_id = identity(obj.get("userId"), "userId")
        anonymous_id = identity(obj.get("anonymousId"), "anonymousId")
        if user_id is None and anonymous_id is None:
            raise EventRejected(
                Reason.MISSING_IDENTITY,
                "a Segment-style event needs userId or anonymousId",
                "userId",
                name,
            )
        workspace = properties.get("workspace_id")
        if workspace is None:
            workspace = context.get("groupId")
        if workspace is None and etype == "group":
            workspace = obj.get("groupId")
        if workspace is None:
            workspace = groups_workspace(properties)
        if etype == "alias" and "previousId" in obj and "previous_id" not in properties:
            properties["previous_id"] = obj["previousId"]
        has_original = obj.get("originalTimestamp") is not None
        return Reading(
            type=etype,
            event=name,
            message_id=mid,
            distinct_id=user_id or anonymous_id,  # type: ignore[arg-type]
            user_id=user_id,
            anonymous_id=anonymous_id,
            properties=properties,
            context=context,
            traits=traits,
            workspace=workspace,
            times=Times(
                original=(
                    ("originalTimestamp", obj["originalTimestamp"])
                    if has_original
                    else ("timestamp", obj.get("timestamp"))
                ),
                stated=("timestamp", obj.get("timestamp")),
                sent=("sentAt", obj.get("sentAt", envelope_sent_at)),
                received=("receivedAt", obj.get("receivedAt")),
            ),
        )

    def event_time(self, times: ParsedTimes) -> datetime:
        """rudder-server's rule (processor ``enhanceWithTimeFields``).

        An explicit ``timestamp`` is the event time, kept as given.  Otherwise
        ``timestamp = receivedAt - (sentAt - originalTimestamp)``, where a
        missing ``sentAt`` means no correction and a missing
        ``originalTimestamp`` means the receive time.
        """
        if times.stated is not None:
            return times.stated
        original, sent_at, received_at = times.original, times.sent, times.received
        if original is None:
            return received_at
        if sent_at is None:
            return original
        return received_at - (sent_at - original)
