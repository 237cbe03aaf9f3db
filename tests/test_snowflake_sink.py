"""Snowflake sink through the real ``snowflake-connector-python`` against fakesnow:
exact rows, idempotent MERGE, schema evolution, discards, hostile identifiers,
dead letters, and the end-to-end path through real workers (SIGKILL + replay)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from mappers.identifiers import normalize_identifier
from mappers.normalize import Normalizer, dumps_event
from sinks.schema import MAX_NEW_COLUMN_NAME
from sinks.settings import Settings
from sinks.snowflake import SnowflakeSink
from tests.conftest import replace_dead_letters_on_and_off_their_range, warehouse_rows
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    SNOWFLAKE_TEST_DATABASE,
    snowflake_conn_kwargs,
    snowflake_emulator,
)
from tests.test_warehouse_parity import (
    EVOLUTION_RAW,
    EXPECTED_VIEWS,
    KNOWN_RAW,
    LONG_KEY,
    TOTAL_EVENTS,
    VIEW_ORDER,
    norm_rows,
    run_killed_then_replayed,
    snowflake_rows,
    snowflake_target,
)


def unified(raw: list[bytes]) -> list[dict]:
    """Raw messages -> unified events exactly as the sink agent receives them (JSON types)."""
    normalizer = Normalizer()
    out = []
    for offset, value in enumerate(raw):
        events, rejections = normalizer.normalize(
            # Received after the data set's events (2026-11-19/20): an event more than
            # 23 hours after its receipt takes the receive time (PostHog's rule).
            value,
            topic="raw",
            partition=0,
            offset=offset,
            timestamp_ms=1_795_200_000_000,
        )
        assert not rejections, rejections
        out.extend(orjson.loads(dumps_event(e)) for e in events)
    return out


@pytest.fixture
def sink(snowflake_emulator, snowflake_conn_kwargs):  # noqa: F811
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    kwargs = {**snowflake_conn_kwargs, "database": SNOWFLAKE_TEST_DATABASE, "schema": schema}
    s = SnowflakeSink(Settings(), connect_kwargs=kwargs)
    s.open()
    s.schema_name = schema  # for the queries below
    yield s
    s.close()


def rows(sink: SnowflakeSink, sql: str, params=None) -> list[tuple]:
    return list(sink._conn.cursor().execute(sql, params).fetchall())


def test_capabilities_and_analyst_friendly_unquoted_names(sink) -> None:
    caps = sink.capabilities
    assert (caps.max_identifier_length, caps.is_warehouse, caps.stores_rejected) == (
        255,
        True,
        True,
    )
    tables = {
        r[0]
        for r in rows(
            sink,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [sink.schema_name],
        )
    }
    assert {
        "EVENTS",
        "TOOL_USED",
        "AI_GENERATION",
        "FLOW_EXECUTED",
        "REJECTED_EVENTS",
        "SCHEMA_DISCARDS",
    } <= tables
    # Upper-case (unquoted) names: analysts query in lower case without quotes.
    assert rows(sink, "select count(*) from tool_used") == [(0,)]
    for view in EXPECTED_VIEWS:
        assert rows(sink, f"select count(*) from {view}") == [(0,)]


def test_write_twice_is_idempotent_with_evolution_discards_and_hostile_keys(sink) -> None:
    events = unified(KNOWN_RAW + [EVOLUTION_RAW])
    batch = events + events[:3]  # redelivery inside one batch
    assert sink.write(batch).written == len(events)
    assert sink.write(events).written == len(events)  # the same batch redelivered

    assert rows(sink, "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM events") == [
        (len(events), len(events))
    ]
    assert rows(
        sink,
        "SELECT message_id, ai_model, ai_input_tokens, ai_total_cost_usd, workspace_id "
        "FROM ai_generation ORDER BY 1",
    ) == [
        ("ai-0", "gpt-4o", 1000, 0.25, "ws_a"),
        ("ai-1", "gpt-4o", 500, 0.125, "ws_a"),
        ("ai-2", "claude-sonnet", 2000, 1.0, "ws_b"),
        ("ai-3", "gpt-4o", 100, 0.5, "ws_a"),
    ]
    assert rows(
        sink,
        "SELECT message_id, success IS NULL, time_ms, tools_used[0]::string FROM flow_executed "
        "ORDER BY 1",
    )[:2] == [
        ("flow-0", False, 100.0, "http"),
        ("flow-1", False, 200.0, "http"),
    ]
    # New property -> nullable NUMBER column; the conflicting "many" stays in properties
    # + a discard row.  New columns' names are capped below the warehouse's own limit
    # (sinks/schema.py).
    long_col = normalize_identifier(LONG_KEY, MAX_NEW_COLUMN_NAME)
    assert len(long_col) == MAX_NEW_COLUMN_NAME
    got = rows(
        sink,
        f"SELECT message_id, retries, select_, my_key, a_b, quo_te, order_, _1st, {long_col} "
        "FROM tool_used "
        "WHERE workspace_id = 'ws_h' ORDER BY 1",
    )
    assert got == [
        ("evo-1", 2, None, None, None, None, None, None, None),
        ("evo-2", None, None, None, None, None, None, None, None),
        ("hostile-1", None, 1, "v", 2, "q", "first", 3, "long"),
    ]
    assert rows(
        sink, "SELECT properties:retries::string FROM events WHERE message_id = 'evo-2'"
    ) == [("many",)]
    assert rows(
        sink,
        "SELECT message_id, table_name, column_name, property_key, reason, value_type, column_type "
        "FROM schema_discards ORDER BY 1, 4",
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
    types = dict(
        rows(
            sink,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'TOOL_USED'",
            [sink.schema_name],
        )
    )
    assert (types["RETRIES"], types["SELECT_"], types["A_B"], types[long_col.upper()]) == (
        "NUMBER",
        "NUMBER",
        "NUMBER",
        "TEXT",
    )
    # NULL timestamps: compared in SQL (the emulator returns NULL TIMESTAMP_NTZ as 1970-01-01).
    assert rows(
        sink, "SELECT COUNT(*) FROM events WHERE sent_at IS NULL AND timestamp IS NOT NULL"
    ) == [(len(events),)]

    # A fresh sink (another worker) learns the evolved columns from information_schema.
    other = SnowflakeSink(Settings(), connect_kwargs=sink._connect_kwargs)
    other.open()
    try:
        assert other.schema.existing["tool_used"]["retries"] == "integer"
        assert other.write(events[-3:]).written == 3
    finally:
        other.close()
    assert rows(sink, "SELECT COUNT(*) FROM tool_used WHERE workspace_id = 'ws_h'") == [(3,)]


def test_views_return_the_expected_numbers(sink) -> None:
    sink.write(unified(KNOWN_RAW))
    for view, expected in EXPECTED_VIEWS.items():
        assert (
            norm_rows(rows(sink, f"SELECT * FROM {view} ORDER BY {VIEW_ORDER[view]}")) == expected
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
    assert rows(
        sink,
        "SELECT rejection_id, reason, error, raw_payload, source_offset, rejected_at::string "
        "FROM rejected_events",
    ) == [
        ("rej-1", "invalid_json", "updated", "not json", 7, "2026-11-19 09:00:00+00"),
    ]


def test_a_redelivered_dead_letter_replaces_its_row_wherever_its_id_points(sink) -> None:
    expected = replace_dead_letters_on_and_off_their_range(sink.write_rejected)
    assert (
        rows(
            sink,
            "SELECT rejection_id, reason, source_offset FROM rejected_events "
            "ORDER BY source_offset",
        )
        == expected
    )


def test_key_pair_settings_produce_a_der_private_key(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa_key.p8"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    settings = Settings(
        sinks=["snowflake"],
        snowflake={
            "account": "acme-xy123",
            "user": "etl",
            "private_key_file": pem,
            "private_key_passphrase": "s3cret",
            "role": "LOADER",
            "warehouse": "LOAD_WH",
            "database": "ANALYTICS_DB",
        },
    )
    kwargs = SnowflakeSink(settings).connection_kwargs()
    expected_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert kwargs.pop("private_key") == expected_der
    assert "password" not in kwargs
    assert {
        k: kwargs[k] for k in ("account", "user", "role", "warehouse", "database", "schema")
    } == {
        "account": "acme-xy123",
        "user": "etl",
        "role": "LOADER",
        "warehouse": "LOAD_WH",
        "database": "ANALYTICS_DB",
        "schema": "ANALYTICS",
    }


@pytest.mark.slow
def test_end_to_end_sigkill_and_replay_leave_exact_rows(
    make_pipeline,
    snowflake_emulator,  # noqa: F811  (pytest fixture)
    snowflake_conn_kwargs,  # noqa: F811  (pytest fixture)
) -> None:
    sf_settings, env, schema = snowflake_target(snowflake_conn_kwargs)

    def count_events() -> int:
        return snowflake_rows(snowflake_emulator, schema, "SELECT COUNT(*) FROM events")[0][0]

    started = time.monotonic()
    pipeline, at_kill, replay = run_killed_then_replayed(
        make_pipeline, "snowflake", env, count_events, snowflake=sf_settings
    )
    duck = pipeline.settings.duckdb.path

    def sf(sql: str) -> list[tuple]:
        return snowflake_rows(snowflake_emulator, schema, sql)

    assert sf("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM events") == [
        (TOTAL_EVENTS, TOTAL_EVENTS)
    ]
    ids = (
        "SELECT message_id, event, distinct_id, workspace_id, source_partition, source_offset "
        "FROM events ORDER BY 1"
    )
    assert sf(ids) == warehouse_rows(duck, ids)
    typed = (
        "SELECT message_id, tool_type, latency_ms, status, workspace_id, retries, select_, my_key, "
        "a_b, quo_te, order_, _1st "
        "FROM tool_used ORDER BY 1"
    )
    assert sf(typed) == warehouse_rows(duck, typed)
    discards = (
        "SELECT message_id, table_name, column_name, property_key, reason FROM schema_discards "
        "ORDER BY 1, 4"
    )
    assert (
        sf(discards)
        == warehouse_rows(duck, discards)
        == [
            ("evo-2", "tool_used", "retries", "retries", "type_conflict"),
            ("hostile-1", "tool_used", "timestamp", "timestamp", "reserved_column"),
        ]
    )
    rejected = "SELECT rejection_id, reason, raw_payload FROM rejected_events ORDER BY 1"
    assert len(sf(rejected)) == 2 and sf(rejected) == warehouse_rows(duck, rejected)
    # The replay re-delivered every normalized event; MERGE kept one row each.
    assert (replay["events"], replay["by_sink"], replay["dead_lettered"]) == (
        TOTAL_EVENTS,
        {"snowflake": TOTAL_EVENTS},
        0,
    )
    assert sf("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM events") == [
        (TOTAL_EVENTS, TOTAL_EVENTS)
    ]
    assert sf("SELECT COUNT(*) FROM tool_used") == [(8,)]
    print(
        f"snowflake e2e: kill at {at_kill}/{TOTAL_EVENTS} events, "
        f"{time.monotonic() - started:.1f}s, replay {replay}"
    )


def test_a_column_added_between_batches_reaches_the_merge(sink) -> None:
    # The staging table of the first batch lacks the new column;
    # the second batch must still land it.
    sink.write(unified(KNOWN_RAW))
    sink.write(unified([EVOLUTION_RAW]))
    assert rows(
        sink,
        "SELECT message_id, retries, select_ FROM tool_used WHERE workspace_id = 'ws_h' ORDER BY 1",
    ) == [
        ("evo-1", 2, None),
        ("evo-2", None, None),
        ("hostile-1", None, 1),
    ]


def test_a_crashed_workers_staging_tables_are_dropped_by_the_next_start(
    sink,
    snowflake_conn_kwargs,  # noqa: F811
) -> None:
    """Staging names carry the hour they were made; a start drops those older than the
    bound (``staging_max_age_hours``), so a SIGKILLed worker leaves nothing behind."""
    sink.write(unified(KNOWN_RAW))

    def staging() -> list[str]:
        return [
            r[0]
            for r in rows(
                sink,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "CURRENT_SCHEMA() AND STARTSWITH(table_name, '_ETL_STG_')",
            )
        ]

    left = staging()
    assert left and all(sink._token in name for name in left), left
    # SIGKILL: the sink is never closed.  A successor starts with a 0 h bound.
    kwargs = {**snowflake_conn_kwargs, "database": SNOWFLAKE_TEST_DATABASE}
    kwargs["schema"] = sink.schema_name
    settings = Settings()
    settings.snowflake.staging_max_age_hours = 0.0
    successor = SnowflakeSink(settings, connect_kwargs=kwargs)
    successor.open()
    try:
        assert staging() == []
        assert successor.write(unified(KNOWN_RAW[:2])).written == 2
    finally:
        successor.close()
    assert staging() == []
