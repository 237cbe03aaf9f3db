"""The embedded DuckDB warehouse (the default sink).

Writes are idempotent on the table's key (``message_id``): each batch is
deduplicated, then deletes the keys it carries and inserts its rows, in one
transaction.  Redelivery and replay therefore never duplicate a row, and a
replay after a mapper fix replaces the row with the corrected version.  (No
PRIMARY KEY index: DuckDB's ART index must be reloaded on every open and grows
with the table - measured 267 ms vs 45 ms per 5,000-row batch at 1M rows - and
uniqueness already holds because DuckDB admits one writing process per file.
Which ids ``events`` may already hold is answered by the narrow hash table of
:mod:`sinks.duckdb_message_ids` instead of a scan of ``events``.)

The sink holds the file while batches keep coming and gives the lock back
after ``idle_release_seconds`` without a batch or after ``max_hold_seconds``,
so several writers (scale-out, ``etl replay``) and ``etl query`` take turns;
a lock held by someone else is a retryable error - the partition waits,
nothing is lost.  A reader that finds the file locked leaves a read request
next to it (:func:`read_request_path`); the sink gives the lock back after its
current batch and waits briefly for the reader to get in, so reads never starve.

Disk full, read-only files or directories, permission errors and I/O errors
are faults of the environment (:meth:`DuckDBSink.environment_cause`): the
runtime retries the batch until they are fixed, never dead-letters it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import duckdb
import orjson
import pyarrow as pa

from mappers.deadletter import offset_span
from sinks import duckdb_message_ids as message_ids
from sinks.base import Capabilities, FlushPolicy, RetryableSinkError, Sink, WriteResult
from sinks.duckdb_settings import DuckDBSettings
from sinks.erasure import PERSON_ID_COLUMNS
from sinks.identity import alias_keys, merge_aliases, merge_users, user_keys
from sinks.schema import (
    ALIASES_COLUMNS,
    ALIASES_KEY,
    BOOLEAN,
    DISCARD_COLUMNS,
    EVENTS_COLUMNS,
    FLOAT,
    INTEGER,
    JSON,
    REJECTED_COLUMNS,
    STRING,
    STRING_ARRAY,
    TIMESTAMP,
    USERS_COLUMNS,
    USERS_KEY,
    Column,
    SchemaTracker,
    TypedPlan,
    dedupe_last,
    missing_columns,
    utcnow,
)
from sinks.warehouse_sql import DISCARD_KEY, EVENTS_KEY

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.sinks.duckdb")

#: How long a read request stays valid, and how long the sink waits for the reader to get in.
READ_REQUEST_TTL = 10.0
READER_GRACE = 1.0
#: With ``merge_row_groups = when_idle``, a hold that wrote fewer ``events`` rows than
#: a quarter of DuckDB's row group (122,880) may still merge, now and then
#: (``_may_merge_now``): a slow stream that never idles would otherwise leave a small
#: row group per hold for good.
#: (Half a row group let 9,000 events/s in 5 s holds fall just short, and merge.)
MIN_UNMERGED_HOLD_ROWS = 30_720


def read_request_path(path: Path) -> Path:
    """The file a waiting reader creates next to the warehouse (its content: the reader's PID)."""
    return path.with_name(path.name + ".read-request")


def _read_requested(path: Path) -> bool:
    try:
        return time.time() - read_request_path(path).stat().st_mtime < READ_REQUEST_TTL
    except OSError:
        return False


DUCKDB_TYPES = {
    STRING: "VARCHAR",
    INTEGER: "BIGINT",
    FLOAT: "DOUBLE",
    BOOLEAN: "BOOLEAN",
    TIMESTAMP: "TIMESTAMPTZ",
    JSON: "JSON",
    STRING_ARRAY: "VARCHAR[]",
}
ARROW_TYPES = {
    STRING: pa.string(),
    INTEGER: pa.int64(),
    FLOAT: pa.float64(),
    BOOLEAN: pa.bool_(),
    TIMESTAMP: pa.string(),  # cast in SQL: ISO text with Z
    JSON: pa.string(),
    STRING_ARRAY: pa.list_(pa.string()),
}


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _select_expr(col: Column) -> str:
    q = quote(col.name)
    if col.type == TIMESTAMP:
        # RFC 3339 text; an explicit offset is honoured, the instant is stored zoned.
        return f"CAST({q} AS TIMESTAMPTZ) AS {q}"
    if col.type == JSON:
        return f"CAST({q} AS JSON) AS {q}"
    return q


def _staging_table(
    columns: tuple[Column, ...], rows: list[dict[str, Any]], same: dict[str, Any]
) -> pa.Table:
    """``rows`` as an Arrow table with ``columns``, in order.

    The plain columns are converted in one pass over the rows inside Arrow (as
    one struct array, whose children are the columns), not one Python pass per
    column. JSON columns become text, and each ``same`` column repeats its value.
    """
    plain = [c for c in columns if c.type != JSON and c.name not in same]
    struct = pa.array(rows, type=pa.struct([(c.name, ARROW_TYPES[c.type]) for c in plain]))
    arrays = dict(zip([c.name for c in plain], struct.flatten(), strict=True))
    for col in columns:
        if col.name in same:
            arrays[col.name] = pa.array([same[col.name]] * len(rows), type=ARROW_TYPES[col.type])
        elif col.type == JSON:
            # map() with dict.get runs the column's loop in C.
            values = map(dict.get, rows, repeat(col.name))
            arrays[col.name] = pa.array([_json_text(v) for v in values], type=pa.string())
    return pa.table({c.name: arrays[c.name] for c in columns})


def _delete_staged_keys(
    con: duckdb.DuckDBPyConnection,
    table: str,
    view: str,
    key: tuple[str, ...],
    indexed: bool,
    within: tuple[str, int, int] | None = None,
) -> list[Any]:
    """Delete the rows of ``table`` whose key is staged in ``view``; their first key column.

    ``indexed`` (``events``): only the ids whose hash is recorded can be there, so
    the table is searched for those alone, and not at all for a batch of new ids.
    ``within`` (column, low, high): every such row has that column in that range,
    so DuckDB skips the row groups whose zone maps lie outside it.
    """
    if indexed:
        candidates = message_ids.recorded(con, quote(view))
        if not candidates:
            return []
        sql = (
            f"DELETE FROM {quote(table)} WHERE message_id IN (SELECT unnest(?::VARCHAR[])) "
            "RETURNING message_id"
        )
        return [r[0] for r in con.execute(sql, [candidates]).fetchall()]
    match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    params: list[int] = []
    if within is not None:
        column, low, high = within
        match += f" AND t.{quote(column)} BETWEEN ? AND ?"
        params = [low, high]
    sql = (
        f"DELETE FROM {quote(table)} AS t USING {quote(view)} AS s WHERE {match} "
        f"RETURNING t.{quote(key[0])}"
    )
    return [r[0] for r in con.execute(sql, params).fetchall()]


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value).decode()


# Every view is by UTC day and workspace; latencies have p50/p95/p99 (1 decimal),
# rates 4 decimals, costs 6 (micro-dollars).  ``timezone('UTC', ts)`` takes the UTC
# day whatever the reader's session time zone.
_DAY = """CAST(timezone('UTC', "timestamp") AS DATE)"""


def _quantiles(column: str, prefix: str) -> str:
    return ",\n".join(
        f"round(quantile_cont({column}, {q}), 1) AS p{p}_{prefix}"
        for p, q in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"))
    )


VIEWS: dict[str, str] = {
    "flow_success_daily": f"""
        SELECT {_DAY} AS day, workspace_id,
               count(*) AS flows,
               count(*) FILTER (WHERE success) AS succeeded,
               count(*) FILTER (WHERE success IS NOT NULL) AS with_outcome,
               round(CAST(count(*) FILTER (WHERE success) AS DOUBLE)
                   / NULLIF(count(*) FILTER (WHERE success IS NOT NULL), 0), 4) AS success_rate,
               {_quantiles("time_ms", "time_ms")}
        FROM flow_executed GROUP BY 1, 2""",
    "tool_latency": f"""
        SELECT {_DAY} AS day, workspace_id, tool_type,
               count(*) AS calls,
               {_quantiles("latency_ms", "latency_ms")},
               round(CAST(count(*) FILTER (
                   WHERE status IS NOT NULL AND status NOT IN ('success', 'ok')) AS DOUBLE)
                   / count(*), 4) AS error_rate
        FROM tool_used GROUP BY 1, 2, 3""",
    "llm_cost_daily": f"""
        SELECT {_DAY} AS day,
               ai_model AS model,
               ai_provider AS provider,
               workspace_id,
               count(*) AS generations,
               CAST(sum(ai_input_tokens) AS BIGINT) AS input_tokens,
               CAST(sum(ai_output_tokens) AS BIGINT) AS output_tokens,
               round(sum(ai_total_cost_usd), 6) AS cost_usd
        FROM ai_generation GROUP BY 1, 2, 3, 4""",
    "blocked_prompt_rate": f"""
        SELECT {_DAY} AS day, workspace_id,
               count(*) FILTER (WHERE event = 'prompt_blocked') AS blocked_prompts,
               count(*) FILTER (WHERE event = 'flow_executed') AS flow_runs,
               count(*) AS events,
               round(CAST(count(*) FILTER (WHERE event = 'prompt_blocked') AS DOUBLE)
                   / NULLIF(count(*) FILTER (
                       WHERE event IN ('prompt_blocked', 'flow_executed')), 0), 4)
                   AS blocked_rate
        FROM events WHERE type = 'track' GROUP BY 1, 2""",
    "rag_latency": f"""
        SELECT {_DAY} AS day, workspace_id, vector_db_used AS vector_db,
               count(*) AS queries,
               {_quantiles("latency_ms", "latency_ms")},
               round(avg(sources_found), 2) AS avg_sources_found
        FROM rag_query_triggered GROUP BY 1, 2, 3""",
    # One row per tracking-plan violation of a landed event (policies allow and
    # drop_property); dead-lettered violations are in rejected_events.
    "contract_violations": """
        SELECT e.message_id, e.event, e.distinct_id, e.workspace_id, e."timestamp",
               json_extract_string(e.context, '$.etl.contract') AS plan,
               json_extract_string(v.value, '$.kind') AS kind,
               json_extract_string(v.value, '$.property') AS property,
               json_extract_string(v.value, '$.action') AS action,
               json_extract_string(v.value, '$.detail') AS detail
        FROM events e, json_each(e.context, '$.etl.violations') v""",
}


def _layout_view(kind: str, extra: str = "") -> str:
    """RudderStack's per-call tables as views over ``events``."""
    return f"""
        SELECT message_id AS id, message_id, anonymous_id, user_id, distinct_id,
               workspace_id, {_DAY} AS day,
               "timestamp", original_timestamp, sent_at, received_at,
               loaded_at AS uuid_ts, {extra}properties, context
        FROM events WHERE type = '{kind}'"""


LAYOUT_VIEWS: dict[str, str] = {
    "tracks": _layout_view("track", "event, event AS event_text, "),
    "identifies": _layout_view("identify", "context -> 'traits' AS traits, "),
    "pages": _layout_view("page", "event AS name, "),
    "screens": _layout_view("screen", "event AS name, "),
    "groups": _layout_view("group", "workspace_id AS group_id, "),
}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_call_at_a_time(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` holding the sink's call lock.

    On shutdown the worker closes the sink from the event loop while a write
    it stopped waiting for may still run in a thread; DuckDB refuses to close
    a busy connection, and a close between two statements would cut the write
    short.  So the close waits for the write (whose batch was never acked: it
    is redelivered, and the write is idempotent).  Reentrant: a write closes
    the file itself at the end of a hold.
    """

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._calls:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return guarded


class DuckDBSink(Sink):
    name = "duckdb"

    @classmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        return Capabilities(
            max_identifier_length=None,
            max_batch_events=settings.delivery.batch_max_events,
            stores_rejected=True,
            is_warehouse=True,
            # Embedded: a load costs nothing but a transaction, so stay low-latency.
            flush=FlushPolicy(
                max_events=settings.delivery.batch_max_events,
                max_bytes=settings.delivery.batch_max_bytes,
                max_seconds=settings.delivery.flush_interval,
            ),
        )

    def __init__(self, settings: Settings, path: Path | None = None) -> None:
        super().__init__(settings)
        # pyarrow's default pool keeps freed memory for reuse; a long-lived
        # writer of one batch after another is better served by the system
        # allocator.  Process-wide, so set where a DuckDB sink is made.
        pa.set_memory_pool(pa.system_memory_pool())
        self.path = Path(path or settings.duckdb.path)
        self.schema = SchemaTracker(self.capabilities.max_identifier_length)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0
        self._hold_rows = 0  # events rows written since the file was opened
        #: When a close last merged row groups (or the sink started).
        self._merged_at = time.monotonic()
        self._last_write: float | None = None  # when the last transaction ended (monotonic)
        self._calls = threading.RLock()
        self._initialised = False

    # ------------------------------------------------------------ connection
    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self._con is not None:
            return self._con
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A reader asked for the file: let it in before taking the lock back.
        deadline = time.monotonic() + READER_GRACE
        while _read_requested(self.path) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise RetryableSinkError(
                    f"warehouse file {self.path} is locked by another process", retry_after=0.2
                ) from None
            raise
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET memory_limit = '{self.settings.duckdb.memory_limit_mb}MB'")
            # DuckDB's 16 MB would checkpoint inside one commit in every few under
            # load (up to a second each); closing the file checkpoints anyway.
            con.execute(
                f"SET checkpoint_threshold = '{self.settings.duckdb.checkpoint_threshold_mb}MB'"
            )
            if self.settings.duckdb.merge_row_groups == "when_idle":
                # Until a close says otherwise, a checkpoint merges no row groups.
                con.execute("SET max_vacuum_tasks = 0")
            if not self._initialised:
                self._create_objects(con)
                self._initialised = True
            self._load_columns(con)
            # Every open: another process may have written events since we last held the file.
            with self._transaction(con, release=lambda: None):
                message_ids.reconcile(con)
        except BaseException:
            # Half-opened (e.g. a read-only file): never reuse it.
            con.close()
            raise
        self._con = con
        self._opened_at = time.monotonic()
        self._hold_rows = 0
        self._last_write = None
        return con

    def environment_cause(self, exc: BaseException) -> str | None:
        cause = super().environment_cause(exc)
        if cause is None and isinstance(exc, duckdb.IOException | duckdb.FatalException):
            cause = "io"  # the file system failed us, whatever the event
        return cause

    @_one_call_at_a_time
    def probe(self) -> None:
        """A known-good write: replace the one row of ``_etl_probe`` (a WAL write and commit)."""
        with self._transaction(self._connect()) as con:
            con.execute("CREATE TABLE IF NOT EXISTS _etl_probe (sink VARCHAR, probed_at TIMESTAMP)")
            con.execute("DELETE FROM _etl_probe")
            con.execute("INSERT INTO _etl_probe VALUES (?, ?)", [self.name, utcnow()])

    @_one_call_at_a_time
    def close(self, *, merge: bool = True) -> None:
        """Let the file go; closing checkpoints it.

        ``merge=False`` (a hold under load ends): with ``merge_row_groups =
        when_idle`` that checkpoint merges no row groups; every other close
        (idle, shutdown, erasure) lets DuckDB merge them as it would.
        """
        if self._con is not None:
            try:
                if merge and self.settings.duckdb.merge_row_groups == "when_idle":
                    # A failed connection may refuse even this; it closes all the same.
                    with contextlib.suppress(duckdb.Error):
                        self._con.execute("RESET max_vacuum_tasks")
                    self._merged_at = time.monotonic()
                self._con.close()
            finally:
                self._con = None

    @_one_call_at_a_time
    def on_idle(self) -> None:
        """No batch for a flush interval: let the file go once the pause has lasted
        ``idle_release_seconds`` (or a reader asks, or nothing was written since it
        was opened).

        Under load a pause of one flush interval is common; the close there, with
        its merges, would hold up the batches that come next.
        """
        if self._con is None:
            return
        idle = self._last_write is None or (
            time.monotonic() - self._last_write >= self.settings.duckdb.idle_release_seconds
        )
        if idle or _read_requested(self.path):
            self.close()

    @_one_call_at_a_time
    def open(self) -> None:
        self._connect()

    # ---------------------------------------------------------------- schema
    def _create_objects(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("BEGIN")
        con.execute(self._ddl("events", EVENTS_COLUMNS, "message_id"))
        have = con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = 'events'"
        ).fetchall()
        for col in missing_columns({r[0] for r in have}, EVENTS_COLUMNS):
            kind = DUCKDB_TYPES[col.type]
            con.execute(f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {quote(col.name)} {kind}")
        for table in self.schema.tables.values():
            con.execute(self._ddl(table.name, table.columns, "message_id"))
        con.execute(self._ddl("rejected_events", REJECTED_COLUMNS, "rejection_id"))
        con.execute(self._ddl("schema_discards", DISCARD_COLUMNS, DISCARD_KEY))
        con.execute(self._ddl("users", USERS_COLUMNS, USERS_KEY))
        con.execute(self._ddl("aliases", ALIASES_COLUMNS, ALIASES_KEY))
        self._zone_timestamps(con)
        for name, sql in (VIEWS | LAYOUT_VIEWS).items():
            con.execute(f"CREATE OR REPLACE VIEW {quote(name)} AS {sql}")
        con.execute("COMMIT")

    def _zone_timestamps(self, con: duckdb.DuckDBPyConnection) -> None:
        """Upgrade naive TIMESTAMP columns (warehouses made before zoned time) in place.

        The naive values were always UTC, so reading them AT TIME ZONE 'UTC' keeps
        every instant exactly.
        """
        declared = self.schema.declared_columns()
        naive = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND data_type = 'TIMESTAMP'"
        ).fetchall()
        for table, column in naive:
            wanted = {c.name: c.type for c in declared.get(table, ())}
            if wanted.get(column) != TIMESTAMP:
                continue
            con.execute(
                f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)} SET DATA TYPE "
                f"TIMESTAMPTZ USING ({quote(column)} AT TIME ZONE 'UTC')"
            )
            log.info("migration: %s.%s TIMESTAMP -> TIMESTAMPTZ (values are UTC)", table, column)

    @staticmethod
    def _ddl(table: str, columns: tuple[Column, ...], key: str | tuple[str, ...]) -> str:
        cols = ", ".join(f"{quote(c.name)} {DUCKDB_TYPES[c.type]}" for c in columns)
        return f"CREATE TABLE IF NOT EXISTS {quote(table)} ({cols})"

    def _load_columns(self, con: duckdb.DuckDBPyConnection) -> None:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name IN (SELECT unnest(?))",
            [list(self.schema.tables)],
        ).fetchall()
        reverse = {v: k for k, v in DUCKDB_TYPES.items()} | {"TIMESTAMP WITH TIME ZONE": TIMESTAMP}
        found: dict[str, dict[str, str]] = {}
        for table, column, data_type in rows:
            found.setdefault(table, {})[column] = reverse.get(data_type, JSON)
        for table, columns in found.items():
            self.schema.load_existing(table, columns)

    # ----------------------------------------------------------------- write
    @_one_call_at_a_time
    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        events = dedupe_last(events)
        con = self._connect()
        plan = self.schema.plan(events)
        try:
            with self._transaction(con):
                self._write_plan(con, events, plan)
                self._hold_rows += len(events)
        except BaseException:
            self.schema.forget_new_columns(plan)
            raise
        return WriteResult(written=len(events))

    def _write_plan(
        self, con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]], plan: TypedPlan
    ) -> None:
        """One batch's statements, inside its transaction: new columns, events, typed rows,
        discards and identity.
        """
        loaded_at = utcnow().isoformat() + "Z"
        for table, columns in plan.new_columns.items():
            for col in columns:
                con.execute(
                    f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {quote(col.name)} "
                    f"{DUCKDB_TYPES[col.type]}"
                )
                log.info(
                    "schema evolution: added column %s.%s %s",
                    table,
                    col.name,
                    DUCKDB_TYPES[col.type],
                )
        replaced = self._upsert(
            con,
            "events",
            EVENTS_COLUMNS,
            events,
            EVENTS_KEY,
            same={"loaded_at": loaded_at},
            indexed=True,
        )
        if replaced:
            # Typed rows are written in the same transaction as their
            # events row, so only keys events already had can have typed
            # rows - usually none, which saves a scan of every typed table.
            self._delete_keys(con, self.schema.tables, replaced)
        for table, rows in plan.rows.items():
            existing = self.schema.existing[table]
            typed_columns = tuple(Column(name, kind) for name, kind in existing.items())
            self._upsert(con, table, typed_columns, rows, EVENTS_KEY, delete=False)
        if plan.discards:
            now = utcnow().isoformat() + "Z"
            discards = {
                (d.message_id, d.table_name, d.property_key): {**asdict(d), "discarded_at": now}
                for d in plan.discards
            }
            self._upsert(
                con, "schema_discards", DISCARD_COLUMNS, list(discards.values()), DISCARD_KEY
            )
        self._write_identity(con, events)

    def _write_identity(self, con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
        """``users`` and ``aliases``, merged with their current rows in the same transaction."""
        now = utcnow()
        for table, columns, key, keys, merge in (
            ("users", USERS_COLUMNS, USERS_KEY, user_keys(events), merge_users),
            ("aliases", ALIASES_COLUMNS, ALIASES_KEY, alias_keys(events), merge_aliases),
        ):
            if not keys:
                continue
            select = ", ".join(
                f"CAST({quote(c.name)} AS VARCHAR)" if c.type == JSON else quote(c.name)
                for c in columns
            )
            cur = con.execute(
                f"SELECT rowid, {select} FROM {quote(table)} "
                f"WHERE {quote(key[0])} IN (SELECT unnest(?::VARCHAR[]))",
                [keys],
            )
            names = [c.name for c in columns]
            existing: list[dict[str, Any]] = []
            stored: dict[Any, list[int]] = {}
            for rowid, *values in cur.fetchall():
                row = dict(zip(names, values, strict=True))
                existing.append(row)
                stored.setdefault(row[key[0]], []).append(rowid)
            rows = merge(events, existing, now)
            # The rows to replace were just read, in this transaction: deleting them by
            # rowid reads one row group each, where a join on the key would scan the
            # whole column again (random ids, no index: 61 ms at 2M users).
            replaced = [rowid for row in rows for rowid in stored.get(row[key[0]], ())]
            if replaced:
                con.execute(
                    f"DELETE FROM {quote(table)} WHERE rowid = ANY(?::BIGINT[])", [replaced]
                )
            self._upsert(con, table, columns, rows, key, delete=False)

    @_one_call_at_a_time
    def write_rejected(self, records: list[dict[str, Any]]) -> None:
        letters = list({r["rejection_id"]: r for r in records}.values())
        with self._transaction(self._connect()) as con:
            self._upsert(
                con,
                "rejected_events",
                REJECTED_COLUMNS,
                letters,
                ("rejection_id",),
                # The search need not read the whole table (it did: 109 ms of CPU
                # per 50 letters at 1M rows, 460 at 5M).
                within=offset_span(letters),
            )

    @contextlib.contextmanager
    def _transaction(
        self, con: duckdb.DuckDBPyConnection, release: Callable[[], None] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT on ``con``; on any failure a rollback (and the connection
        is dropped); then the file lock is handed back as ``release`` says
        (default: :meth:`_release`).
        """
        try:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")
        except BaseException:
            self._rollback(con)
            raise
        finally:
            self._last_write = time.monotonic()
            (release or self._release)()

    def _release(self) -> None:
        # Give the file lock back now and then even under load, so that
        # readers and other writers get their turn - at once if a reader waits.
        if (
            time.monotonic() - self._opened_at >= self.settings.duckdb.max_hold_seconds
            or _read_requested(self.path)
        ):
            self.close(merge=self._hold_rows < MIN_UNMERGED_HOLD_ROWS and self._may_merge_now())

    def _may_merge_now(self) -> bool:
        """A small hold's close under load may merge: the last close that merged was
        ``max_merge_deferral_seconds`` ago or more.

        A merging checkpoint rewrites the table's row groups that are not full, up to
        122,880 rows each, whatever this hold wrote: closes of 27,000-row holds that
        rewrote a larger row group took 0.72-2.69 s, the others 0.23-0.86 s (machine
        of 2026-12-08), and the benchmark's quarter-load p99 was 5.9 s.
        """
        return time.monotonic() - self._merged_at >= self.settings.duckdb.max_merge_deferral_seconds

    def _rollback(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        # A failed connection (e.g. disk full) is not reused.
        self.close()

    @staticmethod
    def _upsert(
        con: duckdb.DuckDBPyConnection,
        table: str,
        columns: tuple[Column, ...],
        rows: list[dict[str, Any]],
        key: tuple[str, ...],
        *,
        delete: bool = True,
        same: dict[str, Any] | None = None,
        indexed: bool = False,
        within: tuple[str, int, int] | None = None,
    ) -> list[Any]:
        """Replace the rows with these keys: delete them, then insert (rows are unique per key).

        ``same`` gives columns whose value is one for every row (the rows are not copied
        to carry it).  ``indexed``: the table is ``events``, whose ids
        :mod:`sinks.duckdb_message_ids` records.  ``within``: a range the rows to
        replace are known to lie in (:func:`_delete_staged_keys`).  Returns the
        first key column of the rows that existed before.
        """
        if not rows:
            return []
        staging = _staging_table(columns, rows, same or {})
        view = f"_staging_{table}"
        con.register(view, staging)
        try:
            names = ", ".join(quote(c.name) for c in columns)
            select = ", ".join(_select_expr(c) for c in columns)
            replaced = _delete_staged_keys(con, table, view, key, indexed, within) if delete else []
            con.execute(f"INSERT INTO {quote(table)} ({names}) SELECT {select} FROM {quote(view)}")
            if indexed:
                message_ids.record(con, quote(view), replaced)
        finally:
            con.unregister(view)
        return replaced

    @staticmethod
    def _delete_keys(con: duckdb.DuckDBPyConnection, tables: Any, message_ids: list[str]) -> None:
        keys = pa.table({"message_id": pa.array(message_ids, type=pa.string())})
        con.register("_replaced_keys", keys)
        try:
            for table in tables:
                con.execute(
                    f"DELETE FROM {quote(table)} "
                    "WHERE message_id IN (SELECT message_id FROM _replaced_keys)"
                )
        finally:
            con.unregister("_replaced_keys")

    # --------------------------------------------------------------- erasure
    def _id_columns(self, con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
        """The person-id columns of ``table``, or none when it does not exist (users, aliases)."""
        rows = con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ?",
            [table],
        ).fetchall()
        return [r[0] for r in rows if r[0] in PERSON_ID_COLUMNS]

    @_one_call_at_a_time
    def person_ids(self, ids: set[str]) -> set[str]:
        """``ids`` and the ids linked to them: aliases rows, and a user's anonymous ids.

        A row matched only by its anonymous id does not pull in its user id:
        a shared device must not erase another person.
        """
        con = self._connect()
        try:
            found = set(ids)
            alias_cols = self._id_columns(con, "aliases")
            for _ in range(10):
                before = len(found)
                rows = con.execute(
                    "SELECT distinct_id, anonymous_id FROM events "
                    "WHERE distinct_id IN (SELECT unnest(?)) OR user_id IN (SELECT unnest(?))",
                    [sorted(found), sorted(found)],
                ).fetchall()
                found.update(v for row in rows for v in row if v)
                if alias_cols:
                    where = " OR ".join(f"{quote(c)} IN (SELECT unnest($ids))" for c in alias_cols)
                    cols = ", ".join(f"CAST({quote(c)} AS VARCHAR)" for c in alias_cols)
                    rows = con.execute(
                        f"SELECT {cols} FROM aliases WHERE {where}", {"ids": sorted(found)}
                    ).fetchall()
                    found.update(v for row in rows for v in row if v)
                if len(found) == before:
                    break
            return found
        finally:
            self.close()

    @_one_call_at_a_time
    def delete_people(self, ids: set[str]) -> dict[str, int]:
        """Delete every row of these people, in one transaction; rows deleted per table."""
        con = self._connect()
        wanted = sorted(ids)
        counts: dict[str, int] = {}
        # Like person_ids, erasure closes the file when it is done, not after max_hold_seconds.
        with self._transaction(con, release=self.close):
            mids = [
                r[0]
                for r in con.execute(
                    "SELECT message_id FROM events WHERE distinct_id IN (SELECT unnest($ids)) "
                    "OR user_id IN (SELECT unnest($ids)) OR anonymous_id IN (SELECT unnest($ids))",
                    {"ids": wanted},
                ).fetchall()
            ]
            params = {"ids": wanted, "mids": mids}
            for table in self.schema.tables:
                counts[table] = self._count(
                    con,
                    f"DELETE FROM {quote(table)} WHERE message_id IN (SELECT unnest($mids)) "
                    "OR distinct_id IN (SELECT unnest($ids))",
                    params,
                )
            counts["schema_discards"] = self._count(
                con,
                "DELETE FROM schema_discards WHERE message_id IN (SELECT unnest($mids))",
                {"mids": mids},
            )
            counts["events"] = self._count(
                con, "DELETE FROM events WHERE message_id IN (SELECT unnest($mids))", {"mids": mids}
            )
            message_ids.forget(con, mids)
            for table in ("users", "aliases"):
                cols = self._id_columns(con, table)
                if cols:
                    where = " OR ".join(f"{quote(c)} IN (SELECT unnest($ids))" for c in cols)
                    counts[table] = self._count(
                        con, f"DELETE FROM {quote(table)} WHERE {where}", {"ids": wanted}
                    )
            # A dead letter carries the id inside its raw payload, as a JSON string.
            needles = [orjson.dumps(i).decode() for i in wanted]
            counts["rejected_events"] = self._count(
                con,
                "DELETE FROM rejected_events WHERE message_id IN (SELECT unnest($mids)) "
                "OR EXISTS (SELECT 1 FROM unnest($needles) AS n(q) "
                "WHERE strpos(raw_payload, n.q) > 0)",
                {"mids": mids, "needles": needles},
            )
        return counts

    @staticmethod
    def _count(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> int:
        return len(con.execute(sql + " RETURNING 1", params).fetchall())


def lock_holder(exc: BaseException) -> int | None:
    """The PID DuckDB names in a lock conflict, if it names one."""
    match = re.search(r"\(PID (\d+)\)", str(exc))
    return int(match.group(1)) if match else None


def wait_for_lock(
    path: Path,
    timeout: float,
    read_only: bool = True,
    *,
    lockdown: bool = False,
    on_wait: Callable[[int | None], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse for reading, waiting while a worker holds the write lock.

    While it waits it leaves a read request next to the file, so the sink
    lets it in after its current batch instead of taking the lock straight
    back; ``on_wait(pid)`` is called once, with the writer's PID if known.
    ``lockdown`` also disables external access (files outside the warehouse,
    ``COPY ... TO``, ``ATTACH``, extensions) and locks the configuration.
    """
    deadline = time.monotonic() + timeout
    request = read_request_path(path)
    requested = False
    delay = 0.01
    try:
        while True:
            try:
                con = duckdb.connect(str(path), read_only=read_only)
                con.execute("SET TimeZone = 'UTC'")
                if lockdown:
                    con.execute("SET enable_external_access = false")
                    con.execute("SET lock_configuration = true")
                return con
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                if not requested:
                    requested = True
                    if on_wait is not None:
                        on_wait(lock_holder(exc))
                # Refreshed while waiting, so a long wait stays within the TTL.
                with contextlib.suppress(OSError):
                    request.write_text(str(os.getpid()))
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
    finally:
        if requested:
            with contextlib.suppress(OSError):
                request.unlink()


SINK = DuckDBSink
SETTINGS = DuckDBSettings
