"""What a dialect reads from one event object, before sanitising, typing and timing."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from mappers.errors import EventRejected, Reason
from mappers.jsontypes import json_type
from mappers.sanitise import BigInt

MAX_NAME_LENGTH = 200


#: A time as the client sent it, and the field it came from (named in errors):
#: ``(field, value)``.  A plain tuple: four are built per event.
TimeField = tuple[str, Any]


# Three of these are built per event.  Plain classes with their own __init__,
# not dataclasses: mypyc compiles them into native constructors and attribute
# reads, whereas a dataclass's generated __init__ stays interpreted (the
# normalize stage alone went from 12.1 to 10.4 us per message).


class Times:
    """The times a client sent with an event; each one is kept in a column."""

    def __init__(
        self,
        original: TimeField,
        stated: TimeField,
        sent: TimeField,
        received: TimeField,
        offset_ms: Any = None,
        ignore_sent_at: bool = False,
    ) -> None:
        #: When the event happened on the client's clock (PostHog ``timestamp``,
        #: Segment ``originalTimestamp``).
        self.original = original
        #: A time the caller set explicitly beside the call time
        #: (Segment ``timestamp`` next to ``originalTimestamp``).
        self.stated = stated
        self.sent = sent
        self.received = received
        #: PostHog's ``offset``: milliseconds between the event and the send.
        self.offset_ms = offset_ms
        #: PostHog's ``$ignore_sent_at``: the client asked that ``sent_at`` not correct its clock.
        self.ignore_sent_at = ignore_sent_at


class ParsedTimes:
    """:class:`Times` with each time parsed (the receive time defaulted)."""

    def __init__(
        self,
        sent_as: Times,
        original: datetime | None,
        stated: datetime | None,
        sent: datetime | None,
        received: datetime,
    ) -> None:
        self.original = original
        self.stated = stated
        self.sent = sent
        self.received = received
        self.offset_ms: Any = sent_as.offset_ms
        self.ignore_sent_at = sent_as.ignore_sent_at
        #: What the event-time rule did beyond the plain rule (noted in ``context.etl``).
        self.notes: dict[str, Any] = {}


class Reading:
    def __init__(
        self,
        type: str,
        event: str,
        message_id: str,
        distinct_id: str,
        user_id: str | None,
        anonymous_id: str | None,
        properties: dict[str, Any],
        context: dict[str, Any],
        traits: dict[str, Any] | None,
        workspace: Any,
        times: Times,
    ) -> None:
        self.type = type
        self.event = event
        self.message_id = message_id
        self.distinct_id = distinct_id
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.properties = properties
        self.context = context
        self.traits = traits
        self.workspace = workspace
        self.times = times


class Dialect(Protocol):
    """One input style (PostHog capture, Segment/RudderStack)."""

    name: str

    def matches(self, obj: dict[str, Any]) -> bool: ...

    def read(self, obj: dict[str, Any], envelope_sent_at: Any) -> Reading: ...

    def event_time(self, times: ParsedTimes) -> datetime: ...


def event_name(value: Any) -> str:
    """A track event's name: a non-empty string of at most 200 characters (NULs stripped)."""
    if value is None:
        raise EventRejected(Reason.MISSING_EVENT_NAME, "event has no name", "event")
    if not isinstance(value, str) or isinstance(value, BigInt):  # a long number is no name
        raise EventRejected(
            Reason.INVALID_EVENT_NAME,
            f"event name must be a string, got {json_type(value)}",
            "event",
        )
    name = value.replace("\x00", "").strip()
    if not name:
        raise EventRejected(Reason.MISSING_EVENT_NAME, "event name is empty", "event")
    if len(name) > MAX_NAME_LENGTH:
        raise EventRejected(
            Reason.INVALID_EVENT_NAME,
            f"event name is longer than {MAX_NAME_LENGTH} characters",
            "event",
        )
    return name


def identity(value: Any, field_name: str) -> str | None:
    """An identity (distinct_id, userId, anonymousId): a string or number, as text; blank = None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise EventRejected(
            Reason.INVALID_IDENTITY,
            f"{field_name} must be a string or number, got {type(value).__name__}",
            field_name,
        )
    text = (str(value) if not isinstance(value, str) else value).replace("\x00", "").strip()
    if not text:
        return None
    if len(text) > MAX_NAME_LENGTH:
        raise EventRejected(
            Reason.INVALID_IDENTITY,
            f"{field_name} is longer than {MAX_NAME_LENGTH} characters",
            field_name,
        )
    return text


def optional_text(value: Any) -> str | None:
    """A scalar as text (booleans as true/false); objects, lists and blanks are None."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = (
        str(value).replace("\x00", "").strip()
        if not isinstance(value, bool)
        else str(value).lower()
    )
    return text or None


def json_object(value: Any, field_name: str) -> dict[str, Any]:
    """``properties``/``context``/``traits``: an object (copied), or empty when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventRejected(
            Reason.INVALID_FIELD,
            f"{field_name} must be an object, got {json_type(value)}",
            field_name,
        )
    return dict(value)


def objects(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The event's ``properties``, ``context`` and ``traits`` (None if absent), checked, copied."""
    traits = json_object(obj.get("traits"), "traits") if "traits" in obj else None
    return (
        json_object(obj.get("properties"), "properties"),
        json_object(obj.get("context"), "context"),
        traits,
    )


def groups_workspace(properties: dict[str, Any]) -> Any:
    """The workspace named in PostHog's ``$groups`` (both styles may carry it), else None."""
    groups = properties.get("$groups")
    return groups.get("workspace") if isinstance(groups, dict) else None
