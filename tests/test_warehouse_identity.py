"""Zoned time (with the migration of warehouses made by the naive DDL) and the identity
layer (``users``, ``aliases``) in DuckDB, fakesnow (Snowflake) and bqemulator (BigQuery),
through the real sinks: same answers everywhere, exactly once under redelivery and replay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sinks.bigquery import BigQuerySink
from sinks.duckdb import DuckDBSink, quote
from sinks.schema import EVENTS_COLUMNS, TIMESTAMP, typed_tables
from sinks.settings import Settings
from sinks.snowflake import SnowflakeSink, ident
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    SNOWFLAKE_TEST_DATABASE,
    bigquery_client,
    bigquery_dataset,
    bigquery_emulator,
    snowflake_conn_kwargs,
    snowflake_emulator,
)
from tests.test_snowflake_sink import unified
from tests.test_warehouse_parity import (
    ALIASES_SQL,
    EXPECTED_ALIASES,
    EXPECTED_USERS,
    IDENTITY_RAW,
    USERS_SQL,
    bigquery_rows,
    bigquery_target,
    utc,
    zoned_rows,
)


def write_in_every_order(sink: Any) -> None:
    """Out of order, split over batches, redelivered, and a whole replay."""
    events = unified(IDENTITY_RAW)
    sink.write(events[3:])
    sink.write(events[:4])  # overlaps: redelivery of events[3]
    sink.write(events[::-1])  # replay, reversed
    sink.write(events[1:2])


# --------------------------------------------------------------------- DuckDB
def duck(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_duckdb_users_and_aliases_exactly_once_in_any_order(tmp_path) -> None:
    path = tmp_path / "w.duckdb"
    sink = DuckDBSink(Settings(), path=path)
    write_in_every_order(sink)
    sink.close()
    assert zoned_rows(duck(path, USERS_SQL.format("users"))) == EXPECTED_USERS
    assert zoned_rows(duck(path, ALIASES_SQL.format("aliases"))) == EXPECTED_ALIASES
    # People, not ids: the ids u1 went by resolve to one person.
    assert duck(
        path,
        "SELECT count(DISTINCT coalesce(a.user_id, i.id)) "
        "FROM (VALUES ('a0'), ('legacy-7'), ('u1')) i(id) "
        "LEFT JOIN aliases a ON a.previous_id = i.id",
    ) == [(1,)]


def test_duckdb_timestamps_are_zoned(tmp_path) -> None:
    path = tmp_path / "w.duckdb"
    sink = DuckDBSink(Settings(), path=path)
    sink.write(unified(IDENTITY_RAW))
    sink.close()
    types = dict(
        duck(
            path,
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE data_type LIKE 'TIMESTAMP%'",
        )
    )
    assert types and set(types.values()) == {"TIMESTAMP WITH TIME ZONE"}, types
    assert {"events.timestamp", "users.last_identified_at", "aliases.timestamp"} <= set(types)
    # 10:00+02:00 is 08:00 UTC, and a BI session in another zone sees the same instant.
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET TimeZone = 'America/New_York'")
    (ts,) = con.execute("SELECT timestamp FROM events WHERE message_id = 'id-2'").fetchone()
    con.close()
    assert ts == utc(2026, 11, 19, 8) and ts.utcoffset().total_seconds() == -5 * 3600


OLD_DUCKDB_TYPE = {TIMESTAMP: "TIMESTAMP"}


def test_duckdb_warehouse_made_by_the_naive_ddl_is_upgraded_in_place(tmp_path) -> None:
    """A file made by the previous DDL (naive TIMESTAMP, values UTC) opens and is migrated
    losslessly: every instant survives, microseconds included, and writes carry on."""
    from sinks.duckdb import DUCKDB_TYPES

    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    cols = ", ".join(
        f"{quote(c.name)} {OLD_DUCKDB_TYPE.get(c.type, DUCKDB_TYPES[c.type])}"
        for c in EVENTS_COLUMNS
    )
    old.execute(f"CREATE TABLE events ({cols})")
    tool_used = typed_tables()["tool_used"].columns
    cols = ", ".join(
        f"{quote(c.name)} {OLD_DUCKDB_TYPE.get(c.type, DUCKDB_TYPES[c.type])}" for c in tool_used
    )
    old.execute(f"CREATE TABLE tool_used ({cols})")
    old.execute(
        'INSERT INTO events (message_id, type, event, distinct_id, "timestamp", received_at) '
        "VALUES ('old-1', 'track', 'clicked', 'u9', TIMESTAMP '2026-11-01 23:30:00.123456', "
        "TIMESTAMP '2026-11-01 23:30:01')"
    )
    old.execute(
        'INSERT INTO tool_used (message_id, "timestamp") '
        "VALUES ('old-1', TIMESTAMP '2026-11-01 23:30:00.123456')"
    )
    old.close()

    sink = DuckDBSink(Settings(), path=path)
    sink.open()
    sink.write(unified(IDENTITY_RAW[:1]))
    sink.close()
    got = duck(
        path,
        "SELECT e.timestamp, e.received_at, t.timestamp FROM events e "
        "JOIN tool_used t USING (message_id)",
    )
    assert got == [
        (
            utc(2026, 11, 1, 23, 30, 0, 123456),
            utc(2026, 11, 1, 23, 30, 1),
            utc(2026, 11, 1, 23, 30, 0, 123456),
        )
    ]
    naive = duck(
        path,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE data_type = 'TIMESTAMP'",
    )
    assert naive == []
    assert duck(path, "SELECT count(*) FROM events") == [(2,)]
    # A second open finds nothing to migrate and changes nothing.
    DuckDBSink(Settings(), path=path).open()
    assert duck(path, "SELECT timestamp FROM events WHERE message_id = 'old-1'") == [
        (utc(2026, 11, 1, 23, 30, 0, 123456),)
    ]


# ------------------------------------------------------------------ Snowflake
@pytest.fixture
def sf_sink(snowflake_emulator, snowflake_conn_kwargs):  # noqa: F811
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    kwargs = {**snowflake_conn_kwargs, "database": SNOWFLAKE_TEST_DATABASE, "schema": schema}
    s = SnowflakeSink(Settings(), connect_kwargs=kwargs)
    yield s
    s.close()


def sf(sink: SnowflakeSink, sql: str) -> list[tuple[Any, ...]]:
    return list(sink._conn.cursor().execute(sql).fetchall())


def test_snowflake_users_and_aliases_match_duckdb(sf_sink) -> None:
    write_in_every_order(sf_sink)
    assert zoned_rows(sf(sf_sink, USERS_SQL.format("users"))) == EXPECTED_USERS
    assert zoned_rows(sf(sf_sink, ALIASES_SQL.format("aliases"))) == EXPECTED_ALIASES
    types = {
        r[0]
        for r in sf(
            sf_sink,
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = CURRENT_SCHEMA() AND data_type LIKE 'TIMESTAMP%'",
        )
    }
    assert types == {"TIMESTAMP_TZ"}


def test_snowflake_schema_made_by_the_naive_ddl_is_upgraded_in_place(
    snowflake_emulator,  # noqa: F811
    snowflake_conn_kwargs,  # noqa: F811
) -> None:
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    conn = snowflake_emulator.connect(database=SNOWFLAKE_TEST_DATABASE)
    cur = conn.cursor()
    cur.execute(f"CREATE SCHEMA {schema}")
    cur.execute(f"USE SCHEMA {schema}")
    from sinks.snowflake import SNOWFLAKE_TYPES

    old_types = {**SNOWFLAKE_TYPES, TIMESTAMP: "TIMESTAMP_NTZ"}  # the previous DDL
    cols = ", ".join(f"{ident(c.name)} {old_types[c.type]}" for c in EVENTS_COLUMNS)
    cur.execute(f"CREATE TABLE EVENTS ({cols})")
    cur.execute(
        "INSERT INTO EVENTS (MESSAGE_ID, TYPE, EVENT, DISTINCT_ID, TIMESTAMP) "
        "VALUES ('old-1', 'track', 'clicked', 'u9', '2026-11-01 23:30:00.123456'::TIMESTAMP_NTZ)"
    )
    conn.close()
    kwargs = {**snowflake_conn_kwargs, "database": SNOWFLAKE_TEST_DATABASE, "schema": schema}
    sink = SnowflakeSink(Settings(), connect_kwargs=kwargs)
    try:
        sink.write(unified(IDENTITY_RAW[:1]))
        assert zoned_rows(
            sf(sink, "SELECT message_id, timestamp FROM events ORDER BY message_id")
        ) == [("id-2", utc(2026, 11, 19, 8)), ("old-1", utc(2026, 11, 1, 23, 30, 0, 123456))]
        assert (
            sf(
                sink,
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "CURRENT_SCHEMA() AND data_type = 'TIMESTAMP_NTZ'",
            )
            == []
        )
    finally:
        sink.close()


# ------------------------------------------------------------------- BigQuery
def test_bigquery_users_and_aliases_match_duckdb(bigquery_emulator, bigquery_dataset) -> None:  # noqa: F811
    settings, _ = bigquery_target(bigquery_emulator, bigquery_dataset)
    sink = BigQuerySink(Settings(bigquery=settings))
    try:
        write_in_every_order(sink)
        users = bigquery_rows(
            sink.client,
            USERS_SQL.replace("traits", "TO_JSON_STRING(traits)").format(
                f"`{bigquery_dataset}.users`"
            ),
        )
        assert zoned_rows(users) == EXPECTED_USERS
        aliases = bigquery_rows(sink.client, ALIASES_SQL.format(f"`{bigquery_dataset}.aliases`"))
        assert zoned_rows(aliases) == EXPECTED_ALIASES
    finally:
        sink.close()


def test_identity_rows_are_only_rewritten_when_they_change() -> None:
    from sinks.identity import merge_aliases, merge_users

    events = unified(IDENTITY_RAW)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    users = merge_users(events, [], now)
    aliases = merge_aliases(events, [], now)
    assert merge_users(events, users, now) == []
    assert merge_aliases(events, aliases, now) == []
