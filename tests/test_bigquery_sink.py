"""BigQuery sink through the real ``google-cloud-bigquery`` client against bqemulator:
partitioned/clustered tables, resumable NDJSON load + MERGE (idempotent), schema
evolution, discards, hostile identifiers, dead letters, and the end-to-end path
through real workers (SIGKILL + replay)."""

from __future__ import annotations

import time

import pytest

from mappers.identifiers import normalize_identifier
from sinks.bigquery import BigQuerySettings, BigQuerySink
from sinks.schema import MAX_NEW_COLUMN_NAME
from sinks.settings import Settings
from tests.conftest import replace_dead_letters_on_and_off_their_range, warehouse_rows
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    bigquery_client,
    bigquery_dataset,
    bigquery_emulator,
)
from tests.test_snowflake_sink import unified
from tests.test_warehouse_parity import (
    EVOLUTION_RAW,
    EXPECTED_VIEWS,
    KNOWN_RAW,
    LONG_KEY,
    TOTAL_EVENTS,
    VIEW_ORDER,
    bigquery_rows,
    bigquery_target,
    norm_rows,
    run_killed_then_replayed,
)


@pytest.fixture
def sink(bigquery_emulator, bigquery_dataset):  # noqa: F811
    settings, _ = bigquery_target(bigquery_emulator, bigquery_dataset)
    s = BigQuerySink(Settings(bigquery=settings))
    s.open()
    yield s
    s.close()


def q(sink: BigQuerySink, sql: str) -> list[tuple]:
    """``sql`` with ``{t}`` standing for the sink's dataset."""
    return bigquery_rows(sink.client, sql.format(t=sink.dataset_id))


def test_tables_are_partitioned_clustered_and_typed(sink) -> None:
    caps = sink.capabilities
    assert (caps.max_identifier_length, caps.is_warehouse, caps.stores_rejected) == (
        300,
        True,
        True,
    )
    events = sink.client.get_table(sink.table_id("events"))
    assert (
        events.time_partitioning.type_,
        events.time_partitioning.field,
        events.clustering_fields,
    ) == ("DAY", "timestamp", ["event", "workspace_id"])
    types = {f.name: (f.field_type, f.mode) for f in events.schema}
    assert types["properties"] == ("JSON", "NULLABLE") and types["context"] == ("JSON", "NULLABLE")
    assert types["timestamp"] == ("TIMESTAMP", "NULLABLE") and types["source_offset"] == (
        "INTEGER",
        "NULLABLE",
    )
    flow = sink.client.get_table(sink.table_id("flow_executed"))
    assert (
        flow.clustering_fields == ["workspace_id"] and flow.time_partitioning.field == "timestamp"
    )
    assert {f.name: (f.field_type, f.mode) for f in flow.schema}["tools_used"] == (
        "STRING",
        "REPEATED",
    )
    for view in EXPECTED_VIEWS:
        assert q(sink, f"SELECT COUNT(*) FROM `{{t}}.{view}`") == [(0,)]


def test_write_twice_is_idempotent_with_evolution_discards_and_hostile_keys(sink) -> None:
    events = unified(KNOWN_RAW + [EVOLUTION_RAW])
    assert sink.write(events + events[:3]).written == len(events)  # redelivery inside one batch
    assert sink.write(events).written == len(events)  # the same batch redelivered

    assert q(sink, "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM `{t}.events`") == [
        (len(events), len(events))
    ]
    assert q(
        sink,
        "SELECT message_id, ai_model, ai_input_tokens, ai_total_cost_usd, workspace_id "
        "FROM `{t}.ai_generation` ORDER BY 1",
    ) == [
        ("ai-0", "gpt-4o", 1000, 0.25, "ws_a"),
        ("ai-1", "gpt-4o", 500, 0.125, "ws_a"),
        ("ai-2", "claude-sonnet", 2000, 1.0, "ws_b"),
        ("ai-3", "gpt-4o", 100, 0.5, "ws_a"),
    ]
    assert q(
        sink, "SELECT message_id, success, time_ms, tools_used FROM `{t}.flow_executed` ORDER BY 1"
    )[2:4] == [
        ("flow-2", False, 300.0, ["http", "sql"]),
        ("flow-3", None, 400.0, ["http", "sql"]),
    ]
    # New columns' names are capped below the warehouse's own limit (sinks/schema.py).
    long_col = normalize_identifier(LONG_KEY, MAX_NEW_COLUMN_NAME)
    assert len(long_col) == MAX_NEW_COLUMN_NAME
    got = q(
        sink,
        f"SELECT message_id, retries, select_, my_key, a_b, quo_te, order_, _1st, {long_col} "
        "FROM `{t}.tool_used` "
        "WHERE workspace_id = 'ws_h' ORDER BY 1",
    )
    assert got == [
        ("evo-1", 2, None, None, None, None, None, None, None),
        ("evo-2", None, None, None, None, None, None, None, None),
        ("hostile-1", None, 1, "v", 2, "q", "first", 3, "long"),
    ]
    assert q(
        sink,
        "SELECT JSON_VALUE(properties, '$.retries') FROM `{t}.events` WHERE message_id = 'evo-2'",
    ) == [("many",)]
    assert q(
        sink,
        "SELECT message_id, table_name, column_name, property_key, reason, value_type, column_type "
        "FROM `{t}.schema_discards` ORDER BY 1, 4",
    ) == [
        ("evo-2", "tool_used", "retries", "retries", "type_conflict", "string", "integer"),
        (
            "hostile-1",
            "tool_used",
            "timestamp",
            "timestamp",
            "reserved_column",
            "string",
            "timestamp",
        ),
    ]
    fields = {
        f.name: f.field_type for f in sink.client.get_table(sink.table_id("tool_used")).schema
    }
    assert (fields["retries"], fields["select_"], fields["quo_te"], fields[long_col]) == (
        "INTEGER",
        "INTEGER",
        "STRING",
        "STRING",
    )

    # A fresh sink (another worker) learns the evolved columns from the table schema.
    other = BigQuerySink(sink.settings)
    other.open()
    try:
        assert other.schema.existing["tool_used"]["retries"] == "integer"
        assert other.write(events[-3:]).written == 3
    finally:
        other.close()
    assert q(sink, "SELECT COUNT(*) FROM `{t}.tool_used` WHERE workspace_id = 'ws_h'") == [(3,)]
    # Staging tables are dropped on close.
    assert not [
        t.table_id
        for t in sink.client.list_tables(sink.dataset_id)
        if t.table_id.startswith("_etl_stg_") and other._token in t.table_id
    ]


def test_views_return_the_expected_numbers(sink) -> None:
    sink.write(unified(KNOWN_RAW))
    for view, expected in EXPECTED_VIEWS.items():
        assert (
            norm_rows(q(sink, f"SELECT * FROM `{{t}}.{view}` ORDER BY {VIEW_ORDER[view]}"))
            == expected
        ), view


def test_write_rejected_merges_on_rejection_id(sink) -> None:
    record = {
        "rejection_id": "rej-1",
        "reason": "invalid_json",
        "field": None,
        "error": "Expecting value",
        "stage": "normalize",
        "event": None,
        "message_id": None,
        "raw_payload": "not json",
        "raw_encoding": "utf-8",
        "raw_size": 8,
        "raw_sha256": "ab" * 32,
        "source_topic": "events.raw",
        "source_partition": 1,
        "source_offset": 7,
        "batch_index": None,
        "rejected_at": "2026-11-19T09:00:00Z",
    }
    sink.write_rejected([record, record])
    sink.write_rejected([{**record, "error": "updated"}])
    assert q(
        sink,
        "SELECT rejection_id, reason, error, raw_payload, source_offset, "
        "CAST(rejected_at AS STRING) FROM `{t}.rejected_events`",
    ) == [
        ("rej-1", "invalid_json", "updated", "not json", 7, "2026-11-19 09:00:00+00"),
    ]


def test_a_redelivered_dead_letter_replaces_its_row_wherever_its_id_points(sink) -> None:
    expected = replace_dead_letters_on_and_off_their_range(sink.write_rejected)
    assert (
        q(
            sink,
            "SELECT rejection_id, reason, source_offset FROM `{t}.rejected_events` "
            "ORDER BY source_offset",
        )
        == expected
    )


def test_settings_choose_emulator_or_application_default_credentials(bigquery_emulator) -> None:  # noqa: F811
    from google.auth.credentials import AnonymousCredentials

    emu = BigQuerySink(
        Settings(
            bigquery=BigQuerySettings(
                project="local", dataset="d", api_endpoint=bigquery_emulator.endpoint
            )
        )
    )
    assert isinstance(emu.client._credentials, AnonymousCredentials)
    assert emu.dataset_id == "local.d" and emu.qualified("events") == "`local.d.events`"


@pytest.mark.slow
def test_end_to_end_sigkill_and_replay_leave_exact_rows(
    make_pipeline,
    bigquery_emulator,  # noqa: F811  (pytest fixture)
    bigquery_client,  # noqa: F811  (pytest fixture)
    bigquery_dataset,  # noqa: F811  (pytest fixture)
) -> None:
    bq_settings, env = bigquery_target(bigquery_emulator, bigquery_dataset)

    def bq(sql: str) -> list[tuple]:
        return bigquery_rows(bigquery_client, sql.format(t=bigquery_dataset))

    def count_events() -> int:
        return bq("SELECT COUNT(*) FROM `{t}.events`")[0][0]

    started = time.monotonic()
    pipeline, at_kill, replay = run_killed_then_replayed(
        make_pipeline, "bigquery", env, count_events, bigquery=bq_settings
    )
    duck = pipeline.settings.duckdb.path

    def duck_rows(sql: str) -> list[tuple]:
        return warehouse_rows(duck, sql.replace("`{t}.", "").replace("`", ""))

    ids = (
        "SELECT message_id, event, distinct_id, workspace_id, source_partition, source_offset "
        "FROM `{t}.events` ORDER BY 1"
    )
    assert bq("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM `{t}.events`") == [
        (TOTAL_EVENTS, TOTAL_EVENTS)
    ]
    assert bq(ids) == duck_rows(ids)
    typed = (
        "SELECT message_id, tool_type, latency_ms, status, workspace_id, retries, select_, my_key, "
        "a_b, quo_te, order_, _1st "
        "FROM `{t}.tool_used` ORDER BY 1"
    )
    assert bq(typed) == duck_rows(typed)
    discards = (
        "SELECT message_id, table_name, column_name, property_key, reason "
        "FROM `{t}.schema_discards` ORDER BY 1, 4"
    )
    assert (
        bq(discards)
        == duck_rows(discards)
        == [
            ("evo-2", "tool_used", "retries", "retries", "type_conflict"),
            ("hostile-1", "tool_used", "timestamp", "timestamp", "reserved_column"),
        ]
    )
    rejected = "SELECT rejection_id, reason, raw_payload FROM `{t}.rejected_events` ORDER BY 1"
    assert len(bq(rejected)) == 2 and bq(rejected) == duck_rows(rejected)
    # The replay re-delivered every normalized event; MERGE kept one row each.
    assert (replay["events"], replay["by_sink"], replay["dead_lettered"]) == (
        TOTAL_EVENTS,
        {"bigquery": TOTAL_EVENTS},
        0,
    )
    assert bq("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM `{t}.events`") == [
        (TOTAL_EVENTS, TOTAL_EVENTS)
    ]
    assert bq("SELECT COUNT(*) FROM `{t}.tool_used`") == [(8,)]
    print(
        f"bigquery e2e: kill at {at_kill}/{TOTAL_EVENTS} events, "
        f"{time.monotonic() - started:.1f}s, replay {replay}"
    )


def test_a_column_added_between_batches_reaches_the_merge(sink) -> None:
    # The staging table of the first batch lacks the new column;
    # the second batch must still land it.
    sink.write(unified(KNOWN_RAW))
    sink.write(unified([EVOLUTION_RAW]))
    assert q(
        sink,
        "SELECT message_id, retries, select_ FROM `{t}.tool_used` WHERE workspace_id = 'ws_h' "
        "ORDER BY 1",
    ) == [
        ("evo-1", 2, None),
        ("evo-2", None, None),
        ("hostile-1", None, 1),
    ]


def test_staging_tables_rotate_below_the_daily_quota_and_a_crash_leaves_none(
    sink,
    bigquery_emulator,  # noqa: F811
    bigquery_dataset,  # noqa: F811
) -> None:
    """Each load job counts against its staging table's 1,500 modifications a day: a new
    staging table every STAGING_LOADS loads, set to expire (on BigQuery; bqemulator ignores
    expirations), and the next start deletes what a SIGKILLed worker left."""
    sink._names.rotate_loads = 2  # STAGING_LOADS, made small
    events = unified(KNOWN_RAW)
    for _ in range(3):
        sink.write(events[:2])

    def staging() -> list[str]:
        tables = sink.client.list_tables(sink.dataset_id)
        return sorted(t.table_id for t in tables if t.table_id.startswith("_etl_stg_"))

    # ai_generation and events, each on its second staging table; the first ones are gone.
    assert [t.rsplit("_", 1)[1] for t in staging()] == ["1", "1"], staging()
    assert q(sink, "SELECT COUNT(*) FROM `{t}.events`") == [(2,)]
    # SIGKILL: nothing is closed.  The next start (bound 0 h) removes the orphan.
    settings, _ = bigquery_target(bigquery_emulator, bigquery_dataset)
    settings = settings.model_copy(update={"staging_max_age_hours": 0.0})
    successor = BigQuerySink(Settings(bigquery=settings))
    successor.open()
    try:
        assert staging() == []
        successor.write(events[2:4])
        assert q(sink, "SELECT COUNT(*) FROM `{t}.events`") == [(4,)]
    finally:
        successor.close()
    assert staging() == []
