"""Input styles: each reads one event object into a :class:`~mappers.dialects.reading.Reading`.

Segment-style objects are recognised by their keys; anything else is read as
PostHog capture style.
"""

from __future__ import annotations

from typing import Any

from mappers.dialects.posthog import PostHogDialect
from mappers.dialects.reading import Dialect, ParsedTimes, Reading
from mappers.dialects.segment import SegmentDialect

POSTHOG = PostHogDialect()
SEGMENT = SegmentDialect()


def dialect_for(obj: dict[str, Any]) -> Dialect:
    return SEGMENT if SEGMENT.matches(obj) else POSTHOG


__all__ = ["POSTHOG", "SEGMENT", "Dialect", "ParsedTimes", "Reading", "dialect_for"]
