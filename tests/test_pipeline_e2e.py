"""Raw events in both styles and both envelopes, through the real broker and real
workers, into the DuckDB warehouse: exact rows, exact rejections, reconciled counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from ops.demo import count_events
from ops.status import metric_sum
from ops.status import read_samples as scrape
from tests.conftest import warehouse_rows

PH_TOOL = {
    "event": "tool_used",
    "distinct_id": "user_1",
    "uuid": "11111111-1111-4111-8111-111111111111",
    "timestamp": "2026-11-19T09:00:00Z",
    "properties": {
        "tool_id": "t-1",
        "tool_type": "http",
        "status": "success",
        "latency_ms": "120",
        "$groups": {"workspace": "ws_a"},
        "trace_id": "tr-1",
    },
}
SEG_FLOW = {
    "type": "track",
    "event": "flow_executed",
    "userId": "user_2",
    "messageId": "seg-flow-1",
    "originalTimestamp": "2026-11-19T09:05:00Z",
    "context": {"groupId": "ws_b"},
    "properties": {
        "flow_id": "f-1",
        "tools_used": ["http", "sql"],
        "time_ms": 2500,
        "success": True,
        "trace_id": "tr-2",
    },
}
PH_BATCH = {
    "api_key": "phc_secret_should_not_matter",
    "sent_at": "2026-11-19T10:00:00Z",
    "batch": [
        {
            "event": "$ai_generation",
            "distinct_id": "user_3",
            "uuid": "33333333-3333-4333-8333-333333333333",
            "timestamp": "2026-11-19T10:00:00Z",
            "properties": {
                "$ai_model": "gpt-4o",
                "$ai_provider": "openai",
                "$ai_input_tokens": 1000,
                "$ai_output_tokens": "200",
                "$ai_input_cost_usd": 0.0025,
                "$ai_output_cost_usd": 0.002,
                "$ai_latency": 1.5,
                "$groups": {"workspace": "ws_a"},
            },
        },
        {
            "event": "rag_query_triggered",
            "distinct_id": "user_3",
            "uuid": "44444444-4444-4444-8444-444444444444",
            "properties": {
                "vector_db_used": "qdrant",
                "index_name": "docs",
                "latency_ms": 42.5,
                "sources_found": "3",
            },
        },
        {
            "event": "prompt_blocked",
            "distinct_id": "user_3",
            "properties": {"match_score": 2.0},
        },  # out of range
    ],
}
SEG_BATCH = {
    "sentAt": "2026-11-19T11:00:00Z",
    "batch": [
        {
            "type": "identify",
            "userId": "user_4",
            "messageId": "seg-id-1",
            "traits": {"plan": "team"},
        },
        {
            "type": "track",
            "event": "agent_created",
            "anonymousId": "anon-5",
            "messageId": "seg-agent-1",
            "properties": {
                "agent_id": "ag-1",
                "agent_type": "router",
                "memory_backend": "redis",
                "framework": "crewai",
                "workspace_id": "ws_c",
            },
        },
        {
            "type": "track",
            "event": "$feature_flag_called",
            "userId": "user_4",
            "messageId": "seg-flag-1",
            "properties": {"$feature_flag": "track_model_costs", "$feature_flag_response": True},
        },
        {"type": "track", "userId": "user_4", "messageId": "seg-noname"},  # no event name
    ],
}
HOSTILE = {
    "event": "template_viewed",
    "distinct_id": "ユーザー🙂",
    "uuid": "55555555-5555-4555-8555-555555555555",
    "properties": {
        "select": 1,
        "my key": "v",
        "a.b": 2,
        'quo"te': "q",
        "emoji": "🚀 naïve 日本語",
        "nul": "a\u0000b",
    },
}
TOOL_NEW_PROP = {
    "event": "tool_used",
    "distinct_id": "user_6",
    "uuid": "66666666-6666-4666-8666-666666666666",
    "properties": {
        "tool_id": "t-2",
        "latency_ms": 5,
        "retries": 2,
        "order": "first",
        "timestamp": "not-a-column",
    },
}

BAD = {
    b"this is not json": "invalid_json",
    b"": "empty_message",
    b"[1, 2, 3]": "not_an_object",
    b"3.14": "not_an_object",
    b'{"event": "tool_used", "distinct_id": "u", "prop': "invalid_json",
    b'{"type": "track", "userId": "u", "properties": {}}': "missing_event_name",
    b'{"event": {"nested": true}, "distinct_id": "u"}': "invalid_event_name",
    (
        b'{"event": "tool_used", "distinct_id": "u", "properties": {"latency_ms": "fast"}}'
    ): "invalid_property",
    (
        b'{"event": "prompt_blocked", "distinct_id": "u", "properties": {"match_score": 1.01}}'
    ): "out_of_range",
    b'{"event": "e", "distinct_id": "u", "timestamp": "31/02/2026"}': "invalid_timestamp",
    b'{"event": "e", "properties": {}}': "missing_identity",
    b'{"type": "track", "event": "e"}': "missing_identity",
    b'{"event": "e", "distinct_id": "u", "properties": {"x": "'
    + b"z" * (1024 * 1024 + 10)
    + b'"}}': "payload_too_large",
    b"\xff\xfe\x00garbage": "invalid_json",
}


def test_both_styles_and_envelopes_land_exactly_once(make_pipeline) -> None:
    pipeline = make_pipeline(sinks=("duckdb",), partitions=2)
    pipeline.start()
    good = [PH_TOOL, SEG_FLOW, PH_BATCH, SEG_BATCH, HOSTILE, TOOL_NEW_PROP]
    values = [orjson.dumps(v) for v in good] + list(BAD)
    pipeline.produce(values)
    pipeline.produce([orjson.dumps(PH_TOOL), orjson.dumps(SEG_BATCH)])  # redelivered by a client
    pipeline.wait_drained(timeout=120)
    db = pipeline.settings.duckdb.path

    # -- events: every valid event exactly once ------------------------------
    rows = warehouse_rows(
        db,
        "SELECT message_id, type, event, distinct_id, user_id, anonymous_id, workspace_id, "
        "trace_id FROM events ORDER BY message_id",
    )
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 9
    by_id = {r[0]: r[1:] for r in rows}
    assert by_id["11111111-1111-4111-8111-111111111111"] == (
        "track",
        "tool_used",
        "user_1",
        "user_1",
        None,
        "ws_a",
        "tr-1",
    )
    assert by_id["seg-flow-1"] == (
        "track",
        "flow_executed",
        "user_2",
        "user_2",
        None,
        "ws_b",
        "tr-2",
    )
    assert by_id["seg-id-1"] == ("identify", "$identify", "user_4", "user_4", None, None, None)
    assert by_id["seg-agent-1"] == (
        "track",
        "agent_created",
        "anon-5",
        None,
        "anon-5",
        "ws_c",
        None,
    )
    assert by_id["55555555-5555-4555-8555-555555555555"][2] == "ユーザー🙂"

    ts = dict(warehouse_rows(db, "SELECT message_id, timestamp FROM events"))
    # Zoned: the UTC instant, whatever the reader's session zone.
    assert ts["11111111-1111-4111-8111-111111111111"] == datetime(2026, 11, 19, 9, 0, tzinfo=UTC)
    assert ts["seg-flow-1"] == datetime(2026, 11, 19, 9, 5, tzinfo=UTC)

    ((props, context),) = warehouse_rows(
        db,
        "SELECT properties, context FROM events WHERE message_id = ?",
        ["55555555-5555-4555-8555-555555555555"],
    )
    assert json.loads(props) == {
        "select": 1,
        "my key": "v",
        "a.b": 2,
        'quo"te': "q",
        "emoji": "🚀 naïve 日本語",
        "nul": "ab",
    }
    assert json.loads(context)["etl"]["sanitised"] is True

    # -- typed tables with typed values ---------------------------------------
    assert warehouse_rows(
        db,
        "SELECT message_id, distinct_id, workspace_id, tool_id, tool_type, status, latency_ms, "
        "trace_id FROM tool_used ORDER BY message_id",
    ) == [
        (
            "11111111-1111-4111-8111-111111111111",
            "user_1",
            "ws_a",
            "t-1",
            "http",
            "success",
            120.0,
            "tr-1",
        ),
        ("66666666-6666-4666-8666-666666666666", "user_6", None, "t-2", None, None, 5.0, None),
    ]
    assert warehouse_rows(
        db, "SELECT flow_id, tools_used, time_ms, success FROM flow_executed"
    ) == [("f-1", ["http", "sql"], 2500.0, True)]
    assert warehouse_rows(
        db,
        "SELECT ai_model, ai_provider, ai_input_tokens, ai_output_tokens, "
        "round(ai_total_cost_usd, 6), ai_latency, workspace_id FROM ai_generation",
    ) == [("gpt-4o", "openai", 1000, 200, 0.0045, 1.5, "ws_a")]
    assert warehouse_rows(
        db, "SELECT vector_db_used, index_name, latency_ms, sources_found FROM rag_query_triggered"
    ) == [("qdrant", "docs", 42.5, 3)]
    assert warehouse_rows(
        db,
        "SELECT agent_id, agent_type, memory_backend, framework, workspace_id FROM agent_created",
    ) == [("ag-1", "router", "redis", "crewai", "ws_c")]
    assert warehouse_rows(
        db, "SELECT feature_flag, feature_flag_response FROM feature_flag_called"
    ) == [("track_model_costs", "true")]
    assert warehouse_rows(db, "SELECT count(*) FROM prompt_blocked") == [(0,)]

    # -- schema evolution: new properties became columns; collisions stayed in properties
    assert warehouse_rows(
        db,
        "SELECT retries, order_ FROM tool_used WHERE message_id = ?",
        ["66666666-6666-4666-8666-666666666666"],
    ) == [(2, "first")]
    discards = warehouse_rows(db, "SELECT table_name, property_key, reason FROM schema_discards")
    assert discards == [("tool_used", "timestamp", "reserved_column")]

    # -- rejected_events: each malformed input with its specific reason --------
    rejected = warehouse_rows(
        db,
        "SELECT reason, field, raw_payload, raw_encoding, batch_index, stage, source_topic "
        "FROM rejected_events",
    )
    by_reason: dict[str, int] = {}
    for reason, *_ in rejected:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    expected: dict[str, int] = {}
    for reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    expected["out_of_range"] += 1  # inside the PostHog batch
    expected["missing_event_name"] += 2  # inside the Segment batch, sent twice (distinct offsets)
    assert by_reason == expected
    assert all(r[5] == "normalize" and r[6] == pipeline.settings.kafka.raw_topic for r in rejected)
    binary = [r for r in rejected if r[3] == "base64"]
    assert len(binary) == 1 and binary[0][0] == "invalid_json"
    in_batch = [r for r in rejected if r[4] is not None]
    assert sorted(r[4] for r in in_batch) == [2, 3, 3]

    # -- counts reconcile: events produced = normalized + rejected -------------
    produced_events = (
        sum(count_events(v) for v in values)
        + count_events(orjson.dumps(PH_TOOL))
        + count_events(orjson.dumps(SEG_BATCH))
    )
    samples = scrape(pipeline.worker("normalize").metrics_url)
    normalized = metric_sum(
        samples, "etl_events_out_total", stage="normalize", outcome="normalized"
    )
    assert (
        normalized == 9 + 4
    )  # the re-sent events were normalized again and upserted onto the same rows
    assert (
        metric_sum(samples, "etl_events_out_total", stage="normalize", outcome="rejected")
        == len(rejected)
        == 17
    )
    assert produced_events == 30 == normalized + len(rejected)


def test_views_answer_the_analyst_questions(make_pipeline) -> None:
    pipeline = make_pipeline(sinks=("duckdb",), partitions=1)
    pipeline.start()
    flows = [
        {
            "event": "flow_executed",
            "distinct_id": "u",
            "timestamp": "2026-11-19T10:00:00Z",
            "properties": {"success": i < 3, "time_ms": (i + 1) * 100, "workspace_id": "ws_a"},
        }
        for i in range(4)
    ]
    tools = [
        {
            "event": "tool_used",
            "distinct_id": "u",
            "properties": {"tool_type": "sql", "latency_ms": ms, "status": "success"},
        }
        for ms in (10, 20, 30, 40, 50)
    ]
    gens = [
        {
            "event": "$ai_generation",
            "distinct_id": "u",
            "timestamp": "2026-11-19T12:00:00Z",
            "properties": {
                "$ai_model": "m1",
                "$ai_provider": "p1",
                "$ai_total_cost_usd": c,
                "$ai_input_tokens": 10,
                "$groups": {"workspace": "ws_a"},
            },
        }
        for c in (0.5, 0.25)
    ]
    blocked = [
        {
            "event": "prompt_blocked",
            "distinct_id": "u",
            "properties": {"match_score": 0.9, "workspace_id": "ws_a"},
        }
    ]
    rag = [
        {
            "event": "rag_query_triggered",
            "distinct_id": "u",
            "properties": {"vector_db_used": "pgvector", "latency_ms": ms, "sources_found": 2},
        }
        for ms in (100, 200, 300)
    ]
    pipeline.produce(
        orjson.dumps({"batch": flows + tools + gens + blocked + rag}) for _ in range(1)
    )
    pipeline.wait_drained(timeout=120)
    db = pipeline.settings.duckdb.path
    assert warehouse_rows(
        db,
        "SELECT day, flows, succeeded, success_rate, p50_time_ms, p95_time_ms "
        "FROM flow_success_daily",
    ) == [(datetime(2026, 11, 19).date(), 4, 3, 0.75, 250.0, 385.0)]
    assert warehouse_rows(
        db, "SELECT tool_type, calls, p50_latency_ms, p95_latency_ms, error_rate FROM tool_latency"
    ) == [("sql", 5, 30.0, 48.0, 0.0)]
    assert warehouse_rows(
        db,
        "SELECT day, model, provider, workspace_id, generations, input_tokens, cost_usd "
        "FROM llm_cost_daily",
    ) == [(datetime(2026, 11, 19).date(), "m1", "p1", "ws_a", 2, 20, 0.75)]
    # By day and workspace: the flows are on 2026-11-19, the block on the day it arrived.
    assert warehouse_rows(
        db,
        "SELECT workspace_id, sum(blocked_prompts), sum(flow_runs) FROM blocked_prompt_rate "
        "WHERE workspace_id = 'ws_a' GROUP BY 1",
    ) == [("ws_a", 1, 4)]
    assert warehouse_rows(
        db, "SELECT vector_db, queries, p50_latency_ms, avg_sources_found FROM rag_latency"
    ) == [("pgvector", 3, 200.0, 2.0)]


def test_foreign_records_on_internal_topics_never_wedge_a_partition(make_pipeline) -> None:
    """Only this job writes events.normalized and events.dlq, but anyone with access can."""
    pipeline = make_pipeline(sinks=("duckdb",), partitions=1)
    pipeline.start()
    k = pipeline.settings.kafka
    pipeline.produce(
        [b"definitely not json", b'{"events": [{"no": "message_id"}]}'], topic=k.normalized_topic
    )
    pipeline.produce([b"\xff\xfe garbage in the dead-letter topic"], topic=k.dlq_topic)
    pipeline.produce(
        [
            orjson.dumps(
                {
                    "event": "tool_used",
                    "distinct_id": "u",
                    "uuid": "77777777-7777-4777-8777-777777777777",
                }
            )
        ]
    )
    # wait_drained covers the raw topic; the foreign records sit before the good event
    # in their partitions.
    pipeline.wait_drained(timeout=120)
    db = pipeline.settings.duckdb.path
    assert warehouse_rows(db, "SELECT message_id FROM events") == [
        ("77777777-7777-4777-8777-777777777777",)
    ]
    rejected = sorted(
        warehouse_rows(db, "SELECT reason, stage, source_topic, raw_encoding FROM rejected_events")
    )
    assert rejected == sorted(
        [
            ("unreadable_record", "sink:duckdb", k.normalized_topic, "utf-8"),
            ("unreadable_record", "sink:duckdb", k.normalized_topic, "utf-8"),
            ("unreadable_record", "dlq", k.dlq_topic, "base64"),
        ]
    )
