"""Dialect-neutral helpers shared by the Snowflake and BigQuery sinks.

Rows arrive as unified-event dicts in JSON types (timestamps as RFC 3339 text);
both warehouses load a batch into a staging table and MERGE it into the target
on its key, so redelivery and replay never duplicate a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sinks.schema import Column, TypedPlan, utcnow


def parse_timestamp(value: Any) -> datetime | None:
    """RFC 3339 text (or a datetime) -> naive UTC datetime; warehouses store UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        ts = value
    else:
        ts = datetime.fromisoformat(str(value))
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def merge_statement(
    target: str,
    source: str,
    columns: Sequence[str],
    keys: Sequence[str],
    *,
    quote: Callable[[str], str] = lambda name: name,
) -> str:
    """``MERGE`` of ``source`` (a table name or ``(SELECT ...)``) into ``target`` on ``keys``.

    The source must already hold converted values: Snowflake refuses functions on
    source columns inside the WHEN clauses, so conversions belong in ``source``.
    """
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in columns if c not in keys)
    names = ", ".join(quote(c) for c in columns)
    values = ", ".join(f"s.{quote(c)}" for c in columns)
    return (
        f"MERGE INTO {target} t USING {source} s ON {on} "
        f"WHEN MATCHED THEN UPDATE SET {updates} "
        f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
    )


def event_rows(events: Iterable[dict[str, Any]], loaded_at: datetime) -> list[dict[str, Any]]:
    return [{**ev, "loaded_at": loaded_at} for ev in events]


def discard_rows(plan: TypedPlan) -> list[dict[str, Any]]:
    """``schema_discards`` rows, one per (message_id, table, property key)."""
    now = utcnow()
    unique: dict[tuple[str, str, str], dict[str, Any]] = {}
    for d in plan.discards:
        unique[(d.message_id, d.table_name, d.property_key)] = {**asdict(d), "discarded_at": now}
    return list(unique.values())


EVENTS_KEY = ("message_id",)
REJECTED_KEY = ("rejection_id",)
DISCARD_KEY = ("message_id", "table_name", "property_key")


def typed_columns(existing: dict[str, str]) -> tuple[Column, ...]:
    """A typed table's current columns (declared + evolved) as ``Column``s."""
    return tuple(Column(name, kind) for name, kind in existing.items())
