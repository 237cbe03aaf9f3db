"""Reading the times a client sent: ISO 8601 or epoch numbers, any offset, as aware UTC."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from mappers.errors import EventRejected, Reason

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Times outside this span are refused: they are typos or unit mistakes, not events.
MIN_TIME = EPOCH
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
#: Epoch numbers at or above this are milliseconds (1e11 s is the year 5138).
MILLISECONDS_FROM = 1e11


def parse_timestamp(value: Any, field_name: str) -> datetime | None:
    """ISO 8601 (any offset; naive = UTC) or epoch seconds/milliseconds -> aware UTC;
    None stays None.
    """
    if value is None:
        return None
    if (
        type(value) is str
        and len(value) >= 19
        and value[4] == "-"
        and value[10] == "T"
        and not value[-1].isspace()
    ):
        # The common shape (extended ISO 8601 with a time, no padding), without the checks below.
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass  # the full path below names the problem
        else:
            dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
            if MIN_TIME <= dt < MAX_TIME:
                return dt
    return _parse_any(value, field_name)


def _parse_any(value: Any, field_name: str) -> datetime:
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            seconds = value / 1000.0 if abs(value) >= MILLISECONDS_FROM else float(value)
            dt = EPOCH + timedelta(seconds=seconds)
        elif isinstance(value, str):
            text = value.strip()
            if not text:
                raise ValueError("empty string")
            if text.lstrip("-").replace(".", "", 1).isdigit():
                return _parse_any(float(text), field_name)
            dt = datetime.fromisoformat(text)
            dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
        else:
            raise ValueError(f"expected a string or number, got {type(value).__name__}")
        if not (MIN_TIME <= dt < MAX_TIME):
            raise ValueError("outside 1970..2200")
    except (ValueError, OverflowError, OSError) as exc:
        shown = value if isinstance(value, (int, float)) else str(value)[:64]
        raise EventRejected(
            Reason.INVALID_TIMESTAMP,
            f"{field_name}: cannot parse {shown!r} as a timestamp ({exc})",
            field_name,
        ) from None
    return dt


@lru_cache(maxsize=1024)  # records of one fetch share their Kafka timestamps
def from_epoch_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)
