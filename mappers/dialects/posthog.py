"""PostHog capture style:
``{"event", "distinct_id", "properties", "timestamp", "uuid", "$set"...}``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mappers.dialects.reading import (
    ParsedTimes,
    Reading,
    Times,
    event_name,
    groups_workspace,
    identity,
    objects,
    optional_text,
)
from mappers.errors import EventRejected, Reason
from mappers.identifiers import message_id

#: PostHog's names for the non-track calls -> the unified ``type``.
EVENT_TYPES = {
    "$identify": "identify",
    "$set": "identify",  # posthog-python's set(): a person update without a new identity
    "$groupidentify": "group",
    "$pageview": "page",
    "$screen": "screen",
    "$create_alias": "alias",
}
#: An ``offset`` beyond this (about a year, in ms) is not a send delay.
MAX_OFFSET_MS = 3.2e10
#: PostHog ingestion replaces an event time more than 23 hours after receipt with the receipt time.
FUTURE_CUTOFF = timedelta(hours=23)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _user_id(name: str, distinct_id: str, properties: dict[str, Any]) -> str | None:
    """distinct_id as a user id, unless it names a group or an anonymous visitor.

    * ``$groupidentify`` is sent under a pseudo-id ``$<group type>_<group key>``;
    * ``$process_person_profile: false`` is how the SDKs mark an anonymous
      capture (no distinct_id given, or ``$anon``/device ids before identify);
    * a distinct_id equal to the event's ``$device_id``/``$anon_distinct_id``
      is the anonymous id itself.
    """
    if name == "$groupidentify":
        return None
    group_type = properties.get("$group_type")
    if (
        isinstance(group_type, str)
        and distinct_id == f"${group_type}_{properties.get('$group_key')}"
    ):
        return None
    if properties.get("$process_person_profile") is False:
        return None
    if name != "$identify" and distinct_id in (
        properties.get("$device_id"),
        properties.get("$anon_distinct_id"),
    ):
        return None
    return distinct_id


class PostHogDialect:
    name = "posthog"

    def matches(self, obj: dict[str, Any]) -> bool:
        return True  # the default style: anything that is not Segment-style

    def read(self, obj: dict[str, Any], envelope_sent_at: Any) -> Reading:
        raw_name = obj.get("event")
        mid = message_id(obj.get("uuid"), obj, raw_name if isinstance(raw_name, str) else None)
        properties, context, traits = objects(obj)
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
        user_id = _user_id(name, distinct_id, properties)
        anonymous_id = optional_text(
            properties.get("$anon_distinct_id", properties.get("$device_id"))
        )
        if anonymous_id is None and user_id is None and name != "$groupidentify":
            anonymous_id = distinct_id
        for key in ("$set", "$set_once"):
            if isinstance(obj.get(key), dict) and key not in properties:
                properties[key] = obj[key]
        if traits is None and isinstance(properties.get("$set"), dict):
            traits = properties["$set"]
        workspace = properties.get("workspace_id")
        if workspace is None:
            workspace = groups_workspace(properties)
        if workspace is None and properties.get("$group_type") == "workspace":
            workspace = properties.get("$group_key")  # $groupidentify of a workspace
        return Reading(
            type=EVENT_TYPES.get(name, "track"),
            event=name,
            message_id=mid,
            distinct_id=distinct_id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            properties=properties,
            context=context,
            traits=traits,
            workspace=workspace,
            times=Times(
                original=("timestamp", obj.get("timestamp")),
                stated=("timestamp", None),
                sent=("sent_at", obj.get("sent_at", envelope_sent_at)),
                received=("received_at", obj.get("received_at")),
                offset_ms=obj.get("offset"),
                ignore_sent_at=_truthy(properties.get("$ignore_sent_at")),
            ),
        )

    def event_time(self, times: ParsedTimes) -> datetime:
        """PostHog ingestion's rule (plugin-server ``parseEventTimestamp``).

        ``offset`` wins; else ``timestamp`` corrected by ``sent_at`` (unless
        ``$ignore_sent_at``); else ``timestamp``; else the receive time.  The
        interval between creating and sending is measured on the client's own
        clock, so adding it to the server's receive time is right even when
        that clock is wrong.  A result more than 23 hours after receipt is
        replaced by the receive time (noted in ``context.etl``).
        """
        original, received_at = times.original, times.received
        sent_at = None if times.ignore_sent_at else times.sent
        offset_ms = times.offset_ms
        if (
            isinstance(offset_ms, (int, float))
            and not isinstance(offset_ms, bool)
            and 0 <= offset_ms < MAX_OFFSET_MS
        ):
            result = received_at - timedelta(milliseconds=offset_ms)
        elif original is not None and sent_at is not None:
            result = received_at + (original - sent_at)
        elif original is not None:
            result = original
        else:
            result = received_at
        if result - received_at > FUTURE_CUTOFF:
            times.notes["future_timestamp"] = result.isoformat()
            result = received_at
        return result
