"""Dialect-neutral helpers shared by the Snowflake and BigQuery sinks.

Rows arrive as unified-event dicts in JSON types (timestamps as RFC 3339 text);
both warehouses load a batch into a staging table and MERGE it into the target
on its key, so redelivery and replay never duplicate a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sinks.base import Capabilities, Sink, WriteResult
from sinks.schema import (
    DISCARD_COLUMNS,
    EVENTS_COLUMNS,
    REJECTED_COLUMNS,
    Column,
    SchemaTracker,
    TypedPlan,
    dedupe_last,
    utcnow,
)

if TYPE_CHECKING:
    from sinks.settings import Settings


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


class MergingWarehouseSink(Sink):
    """The write path of warehouses that load a staging table and MERGE on the key.

    Snowflake and BigQuery differ in how they connect, add a column and load a
    staging table; the order of a batch's writes and the schema bookkeeping are
    the same, and live here.
    """

    #: Longest identifier the warehouse accepts.
    identifier_limit: int

    @classmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        return Capabilities(
            max_identifier_length=cls.identifier_limit,
            max_batch_events=settings.delivery.batch_max_events,
            stores_rejected=True,
            is_warehouse=True,
        )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.schema = SchemaTracker(self.capabilities.max_identifier_length)

    # -- dialect hooks -----------------------------------------------------
    def _ready(self) -> None:
        """Connect and create the destination objects if needed."""
        raise NotImplementedError

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` mapping the client's errors to the runtime's (retryable, auth)."""
        raise NotImplementedError

    def _add_columns(self, table: str, columns: list[Column]) -> None:
        raise NotImplementedError

    def _merge(
        self,
        table: str,
        columns: tuple[Column, ...],
        rows: list[dict[str, Any]],
        keys: tuple[str, ...],
    ) -> None:
        raise NotImplementedError

    # -- shared write path -------------------------------------------------
    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        events = dedupe_last(events)
        return self._guard(self._write, events)

    def _write(self, events: list[dict[str, Any]]) -> WriteResult:
        self._ready()
        plan = self.schema.plan(events)
        try:
            for table, columns in plan.new_columns.items():
                self._add_columns(table, columns)
            # Typed tables first, events last: a crash in between is repaired by redelivery.
            for table, rows in plan.rows.items():
                self._merge(table, typed_columns(self.schema.existing[table]), rows, EVENTS_KEY)
            if plan.discards:
                self._merge("schema_discards", DISCARD_COLUMNS, discard_rows(plan), DISCARD_KEY)
            self._merge("events", EVENTS_COLUMNS, event_rows(events, utcnow()), EVENTS_KEY)
        except BaseException:
            self.schema.forget_new_columns(plan)
            raise
        return WriteResult(written=len(events))

    def write_rejected(self, records: list[dict[str, Any]]) -> None:
        unique = list({r["rejection_id"]: r for r in records}.values())
        self._guard(self._write_rejected, unique)

    def _write_rejected(self, records: list[dict[str, Any]]) -> None:
        self._ready()
        self._merge("rejected_events", REJECTED_COLUMNS, records, REJECTED_KEY)
