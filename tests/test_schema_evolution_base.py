"""An older ``events`` table gains the new base columns when a warehouse sink opens.

Snowflake (fakesnow) and BigQuery (bqemulator): a table made before
``stated_timestamp`` existed is altered on open, and the caller's explicit time
lands in it.  (DuckDB: tests/test_schema_limits.py.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sinks.bigquery import BigQuerySink, schema_field
from sinks.schema import EVENTS_COLUMNS
from sinks.settings import Settings
from sinks.snowflake import SnowflakeSink
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    SNOWFLAKE_TEST_DATABASE,
    bigquery_client,
    bigquery_dataset,
    bigquery_emulator,
    snowflake_conn_kwargs,
    snowflake_emulator,
)
from tests.test_schema_limits import normalize
from tests.test_warehouse_parity import bigquery_rows, bigquery_target

EXPLICIT = datetime(2026, 11, 16, 8, 0, tzinfo=UTC)
RAW = {
    "type": "track",
    "event": "x",
    "userId": "u",
    "messageId": "m-old-table",
    "timestamp": "2026-11-16T08:00:00Z",
    "originalTimestamp": "2026-11-18T11:00:00Z",
}


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def test_snowflake_events_table_gains_stated_timestamp(snowflake_conn_kwargs) -> None:  # noqa: F811
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    kwargs = {**snowflake_conn_kwargs, "database": SNOWFLAKE_TEST_DATABASE, "schema": schema}
    first = SnowflakeSink(Settings(), connect_kwargs=kwargs)
    first.open()
    first._conn.cursor().execute("ALTER TABLE events DROP COLUMN stated_timestamp")
    first.close()
    sink = SnowflakeSink(Settings(), connect_kwargs=kwargs)
    sink.open()
    try:
        sink.write(normalize(RAW))
        cur = sink._conn.cursor()
        got = cur.execute("SELECT message_id, stated_timestamp, timestamp FROM events").fetchall()
    finally:
        sink.close()
    assert [(m, utc(s), utc(t)) for m, s, t in got] == [("m-old-table", EXPLICIT, EXPLICIT)]


def test_bigquery_events_table_gains_stated_timestamp(  # noqa: F811
    bigquery_emulator,  # noqa: F811
    bigquery_client,  # noqa: F811
    bigquery_dataset,  # noqa: F811
) -> None:
    from google.cloud import bigquery

    settings, _ = bigquery_target(bigquery_emulator, bigquery_dataset)
    # The events table as an earlier release made it: every base column but the new one.
    older = [schema_field(c) for c in EVENTS_COLUMNS if c.name != "stated_timestamp"]
    bigquery_client.create_table(bigquery.Table(f"{bigquery_dataset}.events", schema=older))
    sink = BigQuerySink(Settings(bigquery=settings))
    sink.open()
    try:
        sink.write(normalize(RAW))
        got = bigquery_rows(
            sink.client,
            f"SELECT message_id, stated_timestamp, timestamp FROM `{sink.dataset_id}.events`",
        )
    finally:
        sink.close()
    assert [(m, utc(s), utc(t)) for m, s, t in got] == [("m-old-table", EXPLICIT, EXPLICIT)]
