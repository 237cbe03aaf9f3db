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

from pydantic import Field

from etl.config import SinkSection
from mappers.deadletter import offset_span
from sinks.base import Capabilities, FlushPolicy, Sink, WriteResult
from sinks.identity import alias_keys, merge_aliases, merge_users, user_keys
from sinks.schema import (
    ALIASES_COLUMNS,
    ALIASES_KEY,
    DISCARD_COLUMNS,
    EVENTS_COLUMNS,
    REJECTED_COLUMNS,
    USERS_COLUMNS,
    USERS_KEY,
    Column,
    SchemaTracker,
    TypedPlan,
    dedupe_last,
    utcnow,
)

if TYPE_CHECKING:
    from sinks.settings import Settings


class LoadPolicySettings(SinkSection):
    """Flush-policy settings of a warehouse that loads in bulk (Snowflake, BigQuery).

    The defaults load about once a minute: BigQuery counts every load job and
    MERGE against a table's daily modification quota, and each Snowflake MERGE
    wakes the virtual warehouse (billed per second, 60 s minimum).
    """

    flush_max_events: int = Field(
        50_000, ge=1, description="Most events per load (one staging load + MERGE per table)."
    )
    flush_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Most encoded bytes per load."
    )
    flush_max_seconds: float = Field(
        60.0, gt=0, description="Longest an event waits for its load, seconds."
    )
    min_load_interval: float = Field(
        60.0,
        ge=0,
        description="Fewest seconds between two loads of this worker (caps loads per day).",
    )
    staging_max_age_hours: float = Field(
        2.0,
        ge=0,
        description="On start, drop staging tables made longer ago than this (crashed workers'; "
        "live workers move to a new one every hour).",
    )

    def flush_policy(self) -> FlushPolicy:
        return FlushPolicy(
            max_events=self.flush_max_events,
            max_bytes=self.flush_max_bytes,
            max_seconds=self.flush_max_seconds,
            min_interval=self.min_load_interval,
        )


class StagingNames:
    """Names of one sink instance's staging tables: ``<prefix><table>_<token>_<hour>_<n>``.

    The name carries the hour it was made (hours since the epoch, hex) and a
    generation that moves on every ``rotate_loads`` loads, so a live worker moves
    to a fresh table every hour (and before a table's daily modification quota),
    and a table whose hour is older than the bound belongs to a worker that is gone:
    the next start drops it without asking the warehouse for metadata.
    """

    def __init__(self, prefix: str, token: str, rotate_loads: int) -> None:
        self.prefix, self.token, self.rotate_loads = prefix, token, rotate_loads
        self.loads: dict[str, int] = {}
        self.current: dict[str, str] = {}

    def name(self, table: str, now: float) -> tuple[str, str | None]:
        """(name for this load, the previous name of ``table`` when it just rotated)."""
        generation = self.loads.get(table, 0) // self.rotate_loads
        name = f"{self.prefix}{table}_{self.token}_{int(now // 3600):x}_{generation}"
        previous = self.current.get(table)
        self.current[table] = name
        return name, (previous if previous not in (None, name) else None)

    def count_load(self, table: str) -> None:
        self.loads[table] = self.loads.get(table, 0) + 1

    def stale(self, name: str, now: float, max_age_hours: float) -> bool:
        """A staging table (of any worker) made more than ``max_age_hours`` ago."""
        mine = {n.lower() for n in self.current.values()}
        if not name.lower().startswith(self.prefix.lower()) or name.lower() in mine:
            return False
        try:
            _, _, hour, _ = name.rsplit("_", 3)
            made = int(hour, 16)
        except ValueError:
            return False
        # 0: every other instance's table (one worker per destination, e.g. after a SIGKILL).
        return max_age_hours == 0 or made + 1 <= now / 3600 - max_age_hours


def parse_timestamp(value: Any) -> datetime | None:
    """RFC 3339 text (or a datetime) -> naive UTC datetime (the instant, for zoned columns)."""
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
    within: tuple[str, int, int] | None = None,
) -> str:
    """``MERGE`` of ``source`` (a table name or ``(SELECT ...)``) into ``target`` on ``keys``.

    The source must already hold converted values: Snowflake refuses functions on
    source columns inside the WHEN clauses, so conversions belong in ``source``.
    ``within`` (column, low, high): every target row a source row matches has
    that column in that range, so the warehouse may skip the rest of the table
    (Snowflake prunes micro-partitions by their min/max).
    """
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    if within is not None:
        column, low, high = within
        on += f" AND t.{quote(column)} BETWEEN {int(low):d} AND {int(high):d}"
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
        section: LoadPolicySettings = getattr(settings, cls.name)
        policy = section.flush_policy()
        return Capabilities(
            max_identifier_length=cls.identifier_limit,
            # One write (one load and MERGE per table) per flushed batch.
            max_batch_events=policy.max_events,
            stores_rejected=True,
            is_warehouse=True,
            flush=policy,
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
        within: tuple[str, int, int] | None = None,
    ) -> None:
        """Load ``rows`` into a staging table and MERGE it into ``table`` on ``keys``
        (:func:`merge_statement`, with ``within``).
        """
        raise NotImplementedError

    def _select(
        self, table: str, columns: tuple[Column, ...], key: str, values: list[str]
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` whose ``key`` is one of ``values`` (parameterised)."""
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
            # Derived from events, so after them: a crash here is repaired by redelivery.
            self._write_identity(events)
        except BaseException:
            self.schema.forget_new_columns(plan)
            raise
        return WriteResult(written=len(events))

    def _write_identity(self, events: list[dict[str, Any]]) -> None:
        now = utcnow()
        for table, columns, key, keys, merge in (
            ("users", USERS_COLUMNS, USERS_KEY, user_keys(events), merge_users),
            ("aliases", ALIASES_COLUMNS, ALIASES_KEY, alias_keys(events), merge_aliases),
        ):
            if keys:
                existing = self._select(table, columns, key[0], keys)
                self._merge(table, columns, merge(events, existing, now), key)

    def write_rejected(self, records: list[dict[str, Any]]) -> None:
        unique = list({r["rejection_id"]: r for r in records}.values())
        self._guard(self._write_rejected, unique)

    def _write_rejected(self, records: list[dict[str, Any]]) -> None:
        self._ready()
        # Where earlier rows with these ids can be: Snowflake skips the rest of the table.
        within = offset_span(records)
        self._merge("rejected_events", REJECTED_COLUMNS, records, REJECTED_KEY, within)
