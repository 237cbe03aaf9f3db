"""The mapper stage on its own: parsing, validation, normalization, rejections."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from etl.config import NormalizeSettings
from mappers.errors import Reason
from mappers.identifiers import content_message_id, normalize_identifier
from mappers.models import UnifiedEvent
from mappers.normalize import TRUNCATION_MARKER, Normalizer, dumps_event

KAFKA_TS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
KAFKA_DT = datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)


def run(value: bytes | str | object, **settings: object) -> tuple[list[dict], list]:
    if not isinstance(value, (bytes, str)):
        value = orjson.dumps(value)
    if isinstance(value, str):
        value = value.encode()
    n = Normalizer(NormalizeSettings(**settings))
    events, rejections = n.normalize(
        value, topic="events.raw", partition=3, offset=42, timestamp_ms=KAFKA_TS
    )
    for ev in events:  # every produced dict honours the published contract
        UnifiedEvent.model_validate(orjson.loads(dumps_event(ev)))
    return events, rejections


def one(value: object, **settings: object) -> dict:
    events, rejections = run(value, **settings)
    assert not rejections, [(r.reason, r.error) for r in rejections]
    assert len(events) == 1
    return events[0]


def rejected(value: object, **settings: object):
    events, rejections = run(value, **settings)
    assert events == []
    assert len(rejections) == 1
    return rejections[0]


# --------------------------------------------------------------------- styles
def test_posthog_style_event_is_normalized() -> None:
    ev = one(
        {
            "event": "tool_used",
            "distinct_id": "user_1",
            "uuid": "0190a0e8-7f8a-7cc0-9c62-5b1f9b0c1d2e",
            "timestamp": "2026-11-19T09:00:00Z",
            "properties": {
                "tool_id": "t1",
                "tool_type": "http",
                "status": "success",
                "latency_ms": 120,
                "$groups": {"workspace": "ws_9"},
                "trace_id": "tr_1",
            },
        }
    )
    assert ev["message_id"] == "0190a0e8-7f8a-7cc0-9c62-5b1f9b0c1d2e"
    assert (ev["type"], ev["event"], ev["distinct_id"], ev["user_id"]) == (
        "track",
        "tool_used",
        "user_1",
        "user_1",
    )
    assert ev["workspace_id"] == "ws_9"
    assert ev["trace_id"] == "tr_1"
    assert ev["timestamp"] == datetime(2026, 11, 19, 9, 0, tzinfo=UTC)
    assert ev["received_at"] == KAFKA_DT
    assert ev["properties"]["latency_ms"] == 120.0
    assert (ev["source_topic"], ev["source_partition"], ev["source_offset"]) == (
        "events.raw",
        3,
        42,
    )


def test_segment_style_event_is_normalized() -> None:
    ev = one(
        {
            "type": "track",
            "event": "flow_executed",
            "anonymousId": "anon-7",
            "messageId": "ajs-next-1",
            "originalTimestamp": "2026-11-19T08:00:00.000Z",
            "context": {"groupId": "ws_2", "library": {"name": "analytics.js"}},
            "properties": {
                "flow_id": "f1",
                "tools_used": ["a", "b"],
                "time_ms": "1500",
                "success": "true",
            },
        }
    )
    assert ev["message_id"] == "ajs-next-1"
    assert (
        ev["distinct_id"] == "anon-7" and ev["anonymous_id"] == "anon-7" and ev["user_id"] is None
    )
    assert ev["workspace_id"] == "ws_2"
    assert ev["properties"]["time_ms"] == 1500.0 and ev["properties"]["success"] is True
    assert ev["context"]["library"] == {"name": "analytics.js"}


@pytest.mark.parametrize(
    ("envelope", "key"),
    [
        ({"batch": [], "sent_at": "2026-11-19T09:46:41Z", "api_key": "phc_x"}, "distinct_id"),
        ({"batch": [], "sentAt": "2026-11-19T09:46:41Z"}, "userId"),
    ],
)
def test_batch_envelopes_keep_good_events_and_reject_bad_ones(envelope: dict, key: str) -> None:
    good = {
        "event": "agent_created",
        key: "u1",
        "properties": {"agent_id": "a1", "framework": "crewai"},
    }
    if key == "userId":
        good["type"] = "track"
    envelope["batch"] = [
        good,
        {**good, "properties": {"agent_id": "a2"}},
        "oops",
        {"event": "agent_created"},
    ]
    events, rejections = run(envelope)
    assert [e["properties"]["agent_id"] for e in events] == ["a1", "a2"]
    assert [(r.reason, r.batch_index) for r in rejections] == [
        (Reason.NOT_AN_OBJECT, 2),
        (Reason.MISSING_IDENTITY, 3),
    ]
    # The dead letter keeps the envelope's fields (sent_at) beside the one item.
    dead = orjson.loads(rejections[1].raw)
    assert dead["batch"] == [{"event": "agent_created"}]
    assert {k: v for k, v in dead.items() if k != "batch"} == {
        k: v for k, v in envelope.items() if k != "batch"
    }
    assert all(e["sent_at"] == datetime(2026, 11, 19, 9, 46, 41, tzinfo=UTC) for e in events)


def test_identify_page_group_and_alias_calls() -> None:
    ident = one(
        {"type": "identify", "userId": "u1", "traits": {"plan": "team"}, "messageId": "m-i"}
    )
    assert (ident["type"], ident["event"], ident["context"]["traits"]) == (
        "identify",
        "$identify",
        {"plan": "team"},
    )
    ph = one({"event": "$identify", "distinct_id": "u2", "$set": {"plan": "free"}})
    assert (ph["type"], ph["properties"]["$set"], ph["context"]["traits"]) == (
        "identify",
        {"plan": "free"},
        {"plan": "free"},
    )
    page = one({"type": "page", "name": "/flows", "userId": "u1", "messageId": "m-p"})
    assert (page["event"], page["properties"]["name"]) == ("$pageview", "/flows")
    group = one({"type": "group", "groupId": "ws_5", "userId": "u1", "messageId": "m-g"})
    assert (group["event"], group["workspace_id"]) == ("$groupidentify", "ws_5")
    alias = one({"type": "alias", "previousId": "anon-1", "userId": "u1", "messageId": "m-a"})
    assert alias["properties"]["previous_id"] == "anon-1"


def test_unknown_events_and_properties_are_kept() -> None:
    ev = one(
        {
            "event": "template_viewed",
            "distinct_id": "u",
            "properties": {"anything": {"nested": [1, 2]}, "x": None},
        }
    )
    assert ev["event"] == "template_viewed" and ev["properties"] == {
        "anything": {"nested": [1, 2]},
        "x": None,
    }
    typed = one(
        {
            "event": "tool_used",
            "distinct_id": "u",
            "properties": {"latency_ms": 3, "extra_key": "kept"},
        }
    )
    assert typed["properties"]["extra_key"] == "kept"


# ----------------------------------------------------------------- message id
def test_message_id_is_a_stable_content_hash_without_source_id() -> None:
    raw = {
        "event": "tool_used",
        "distinct_id": "u",
        "timestamp": "2026-11-19T09:00:00Z",
        "properties": {"b": 1, "a": 2},
    }
    first = one(raw)["message_id"]
    reordered = one(
        {
            "properties": {"a": 2, "b": 1},
            "timestamp": "2026-11-19T09:00:00Z",
            "distinct_id": "u",
            "event": "tool_used",
        }
    )
    resent = one({**raw, "sent_at": "2026-11-19T09:30:00Z"})  # a client retry, sent later
    assert first == reordered["message_id"] == resent["message_id"] == content_message_id(raw)
    assert len(first) == 36 and first[14] == "5"  # UUID form, so PostHog accepts it as uuid
    assert one({**raw, "properties": {"a": 3}})["message_id"] != first


def test_source_ids_are_kept_exactly() -> None:
    assert (
        one({"event": "e", "distinct_id": "u", "uuid": "Not-A-UUID  "})["message_id"]
        == "Not-A-UUID  "
    )
    assert (
        one({"type": "track", "event": "e", "userId": "u", "messageId": 12345})["message_id"]
        == "12345"
    )


# ----------------------------------------------------------------- timestamps
def test_client_clock_skew_is_corrected_like_segment() -> None:
    # The client's clock runs 1 h behind; it sent the event 2 s after creating it.
    ev = one(
        {
            "type": "track",
            "event": "e",
            "userId": "u",
            "originalTimestamp": "2026-11-19T08:46:36Z",
            "sentAt": "2026-11-19T08:46:38Z",
        }
    )
    assert ev["timestamp"] == datetime(2026, 11, 18, 11, 6, 38, tzinfo=UTC)  # received_at - 2 s
    assert ev["original_timestamp"] == datetime(2026, 11, 19, 8, 46, 36, tzinfo=UTC)
    assert ev["sent_at"] == datetime(2026, 11, 19, 8, 46, 38, tzinfo=UTC)
    assert ev["received_at"] == KAFKA_DT


def test_timestamp_forms() -> None:
    assert one({"event": "e", "distinct_id": "u", "timestamp": "2026-11-19T10:00:00+01:00"})[
        "timestamp"
    ] == datetime(2026, 11, 19, 9, tzinfo=UTC)
    assert one({"event": "e", "distinct_id": "u", "timestamp": 1795000000})["timestamp"] == KAFKA_DT
    assert (
        one({"event": "e", "distinct_id": "u", "timestamp": 1795000000000})["timestamp"] == KAFKA_DT
    )
    assert one({"event": "e", "distinct_id": "u", "offset": 1000})["timestamp"] == datetime(
        2026, 11, 18, 11, 6, 39, tzinfo=UTC
    )
    no_time = one({"event": "e", "distinct_id": "u"})
    assert no_time["timestamp"] == KAFKA_DT and no_time["original_timestamp"] is None


# -------------------------------------------------------------- bad input list
@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"not json at all", Reason.INVALID_JSON, None),
        (b"", Reason.EMPTY_MESSAGE, None),
        (b"   \n", Reason.EMPTY_MESSAGE, None),
        (b"[1, 2]", Reason.NOT_AN_OBJECT, None),
        (b"42", Reason.NOT_AN_OBJECT, None),
        (b'"just a string"', Reason.NOT_AN_OBJECT, None),
        (
            b'{"event": "tool_used", "distinct_id": "u", "properties": {"a": 1',
            Reason.INVALID_JSON,
            None,
        ),
        (b'{"type": "track", "userId": "u"}', Reason.MISSING_EVENT_NAME, "event"),
        (b'{"event": "", "distinct_id": "u"}', Reason.MISSING_EVENT_NAME, "event"),
        (b'{"event": 17, "distinct_id": "u"}', Reason.INVALID_EVENT_NAME, "event"),
        (b'{"event": ["a"], "distinct_id": "u"}', Reason.INVALID_EVENT_NAME, "event"),
        (
            b'{"event": "tool_used", "distinct_id": "u", "properties": {"latency_ms": "fast"}}',
            Reason.INVALID_PROPERTY,
            "properties.latency_ms",
        ),
        (
            b'{"event": "flow_executed", "distinct_id": "u", "properties": {"success": "maybe"}}',
            Reason.INVALID_PROPERTY,
            "properties.success",
        ),
        (
            b'{"event": "flow_executed", "distinct_id": "u", "properties": {"tools_used": "a,b"}}',
            Reason.INVALID_PROPERTY,
            "properties.tools_used",
        ),
        (
            b'{"event": "prompt_blocked", "distinct_id": "u", "properties": {"match_score": 1.5}}',
            Reason.OUT_OF_RANGE,
            "properties.match_score",
        ),
        (
            b'{"event": "prompt_blocked", "distinct_id": "u", "properties": {"match_score": -0.1}}',
            Reason.OUT_OF_RANGE,
            "properties.match_score",
        ),
        (
            b'{"event": "rag_query_triggered", "distinct_id": "u", '
            b'"properties": {"sources_found": -1}}',
            Reason.OUT_OF_RANGE,
            "properties.sources_found",
        ),
        (
            b'{"event": "$ai_generation", "distinct_id": "u", '
            b'"properties": {"$ai_input_tokens": -5}}',
            Reason.OUT_OF_RANGE,
            "properties.$ai_input_tokens",
        ),
        (
            b'{"event": "$ai_generation", "distinct_id": "u", '
            b'"properties": {"$ai_total_cost_usd": "Infinity"}}',
            Reason.INVALID_PROPERTY,
            "properties.$ai_total_cost_usd",
        ),
        (
            b'{"event": "e", "distinct_id": "u", "timestamp": "yesterday"}',
            Reason.INVALID_TIMESTAMP,
            "timestamp",
        ),
        (
            b'{"event": "e", "distinct_id": "u", "timestamp": "2026-13-45T99:00:00Z"}',
            Reason.INVALID_TIMESTAMP,
            "timestamp",
        ),
        (
            b'{"event": "e", "distinct_id": "u", "timestamp": true}',
            Reason.INVALID_TIMESTAMP,
            "timestamp",
        ),
        (
            b'{"type": "track", "event": "e", "userId": "u", "sentAt": "soon"}',
            Reason.INVALID_TIMESTAMP,
            "sentAt",
        ),
        (b'{"event": "e"}', Reason.MISSING_IDENTITY, "distinct_id"),
        (b'{"event": "e", "distinct_id": ""}', Reason.MISSING_IDENTITY, "distinct_id"),
        (b'{"type": "track", "event": "e"}', Reason.MISSING_IDENTITY, "userId"),
        (
            b'{"type": "track", "event": "e", "userId": null, "anonymousId": "  "}',
            Reason.MISSING_IDENTITY,
            "userId",
        ),
        (b'{"event": "e", "distinct_id": {"id": 1}}', Reason.INVALID_IDENTITY, "distinct_id"),
        (b'{"type": "launch", "event": "e", "userId": "u"}', Reason.INVALID_TYPE, "type"),
        (
            b'{"event": "e", "distinct_id": "u", "properties": [1, 2]}',
            Reason.INVALID_FIELD,
            "properties",
        ),
        (b'{"batch": "nope"}', Reason.INVALID_BATCH, "batch"),
        (b'{"batch": []}', Reason.INVALID_BATCH, "batch"),
        (
            b'{"event": "e", "distinct_id": "u", "uuid": {"x": 1}}',
            Reason.INVALID_MESSAGE_ID,
            "messageId",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_specific_reason(
    raw: bytes, reason: str, field: str | None
) -> None:
    r = rejected(raw)
    assert (r.reason, r.field) == (reason, field)
    assert r.error  # a sentence an operator can act on
    assert r.raw == raw  # the original bytes travel with the rejection


def test_error_names_field_and_value_but_never_sensitive_text() -> None:
    r = rejected({"event": "tool_used", "distinct_id": "u", "properties": {"latency_ms": "fast"}})
    assert "properties.latency_ms" in r.error and "'fast'" in r.error
    secret = rejected(
        {
            "event": "prompt_blocked",
            "distinct_id": "u",
            "properties": {"prompt_preview": {"text": "my password is hunter2"}},
        }
    )
    assert secret.field == "properties.prompt_preview" and "hunter2" not in secret.error


def test_payload_over_one_megabyte_is_rejected() -> None:
    big = {"event": "e", "distinct_id": "u", "properties": {"blob": "x" * (1024 * 1024)}}
    r = rejected(big)
    assert r.reason == Reason.PAYLOAD_TOO_LARGE and "bytes" in r.error
    events, rejections = run({"batch": [{"event": "e", "distinct_id": "u"}, big]})
    assert len(events) == 1 and [x.reason for x in rejections] == [Reason.PAYLOAD_TOO_LARGE]


def test_deep_nesting_is_rejected_with_its_own_reason() -> None:
    nested: dict = {"leaf": 1}
    for _ in range(40):
        nested = {"n": nested}
    r = rejected({"event": "e", "distinct_id": "u", "properties": nested})
    assert r.reason == Reason.TOO_DEEPLY_NESTED and r.field.startswith("properties.n.n")
    assert rejected(b"[" * 5000 + b"]" * 5000).reason == Reason.TOO_DEEPLY_NESTED
    ok = {"leaf": 1}
    for _ in range(20):
        ok = {"n": ok}
    assert one({"event": "e", "distinct_id": "u", "properties": ok})["properties"] == ok


def test_nul_characters_are_stripped_and_marked() -> None:
    ev = one(
        '{"event": "tool_used\\u0000", "distinct_id": "u\\u0000", '
        '"properties": {"k\\u0000ey": "va\\u0000lue"}}'
    )
    assert ev["event"] == "tool_used" and ev["distinct_id"] == "u"
    assert ev["properties"] == {"key": "value"}
    assert ev["context"]["etl"]["sanitised"] is True


def test_non_utf8_bytes_land_with_replacement_characters() -> None:
    ev = one(b'{"event": "e", "distinct_id": "u", "properties": {"name": "caf\xe9"}}')
    assert ev["properties"]["name"] == "caf\ufffd"
    assert ev["context"]["etl"]["sanitised"] is True


def test_oversized_strings_are_truncated_with_a_marker() -> None:
    ev = one(
        {"event": "e", "distinct_id": "u", "properties": {"long": "y" * 70_000, "short": "ok"}}
    )
    assert ev["properties"]["long"] == "y" * 65536 + TRUNCATION_MARKER
    assert ev["properties"]["short"] == "ok"
    assert ev["context"]["etl"]["truncated"] == ["properties.long"]


def test_hostile_keys_and_unicode_values_are_kept_in_properties() -> None:
    props = {
        "select": 1,
        "my key": 2,
        "a.b": 3,
        'quo"te': 4,
        "emoji 🚀": "✨ naïve 日本語",
        "DROP TABLE events;--": 5,
    }
    ev = one({"event": "template_viewed", "distinct_id": "ユーザー🙂", "properties": props})
    assert ev["properties"] == props
    assert ev["distinct_id"] == "ユーザー🙂"


def test_safe_coercions() -> None:
    ev = one(
        {
            "event": "$ai_generation",
            "distinct_id": 12345,
            "properties": {
                "$ai_input_tokens": "12",
                "$ai_output_tokens": 7.0,
                "$ai_input_cost_usd": "0.5",
                "$ai_output_cost_usd": 0.25,
                "$ai_http_status": "200",
                "$ai_model": 4,
            },
        }
    )
    p = ev["properties"]
    assert ev["distinct_id"] == "12345"
    assert (p["$ai_input_tokens"], p["$ai_output_tokens"], p["$ai_http_status"]) == (12, 7, 200)
    assert p["$ai_model"] == "4"
    assert p["$ai_total_cost_usd"] == pytest.approx(0.75)  # derived when only the parts are sent
    assert (
        rejected(
            {"event": "$ai_generation", "distinct_id": "u", "properties": {"$ai_input_tokens": 1.5}}
        ).reason
        == Reason.INVALID_PROPERTY
    )


# ---------------------------------------------------------------- identifiers
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("latencyMs", "latency_ms"),
        ("HTTPStatus", "http_status"),
        ("my key", "my_key"),
        ("a.b.c", "a_b_c"),
        ('quo"te', "quo_te"),
        ("select", "select_"),
        ("ORDER", "order_"),
        ("1st_place", "_1st_place"),
        ("$ai_model", "ai_model"),
        ("café", "cafe"),
        ("--", None),
    ],
)
def test_identifier_rule(name: str, expected: str | None) -> None:
    result = normalize_identifier(name)
    if expected is None:
        assert result.startswith("_") and len(result) == 9
    else:
        assert result == expected
    assert result == normalize_identifier(name)  # stable


def test_long_identifiers_are_cut_with_a_hash() -> None:
    a, b = "p" * 400, "p" * 399 + "q"
    ca, cb = normalize_identifier(a, 255), normalize_identifier(b, 255)
    assert len(ca) == len(cb) == 255 and ca != cb
    assert all(c.isalnum() or c == "_" for c in ca)
    assert len(normalize_identifier(a, 300)) == 300
    assert normalize_identifier("🚀🚀") == normalize_identifier("🚀🚀") and normalize_identifier(
        "🚀🚀"
    ).startswith("_")


# ------------------------------------------------------- issue 12: event time
# Receive time (the Kafka timestamp) is KAFKA_DT = 2026-11-18T11:06:40Z.
def test_rudder_explicit_timestamp_is_kept_as_given() -> None:
    """rudder-sdk-node: the caller's past `timestamp` beside the call-time `originalTimestamp`."""
    ev = one(
        {
            "type": "track",
            "event": "flow_executed",
            "userId": "u1",
            "timestamp": "2026-11-16T08:00:00Z",
            "originalTimestamp": "2026-11-18T11:06:39Z",
            "sentAt": "2026-11-18T11:06:40Z",
        }
    )
    assert ev["timestamp"] == datetime(2026, 11, 16, 8, 0, tzinfo=UTC)
    assert ev["stated_timestamp"] == datetime(2026, 11, 16, 8, 0, tzinfo=UTC)
    assert ev["original_timestamp"] == datetime(2026, 11, 18, 11, 6, 39, tzinfo=UTC)
    assert ev["sent_at"] == datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)


def test_rudder_skew_rule_without_explicit_timestamp() -> None:
    ev = one(
        {
            "type": "track",
            "event": "x",
            "userId": "u1",
            "originalTimestamp": "2026-11-18T13:00:00Z",  # client clock two hours fast
            "sentAt": "2026-11-18T13:00:05Z",
        }
    )
    assert ev["timestamp"] == datetime(2026, 11, 18, 11, 6, 35, tzinfo=UTC)
    assert ev["stated_timestamp"] is None


def test_posthog_offset_wins_and_ignore_sent_at() -> None:
    base = {"event": "x", "distinct_id": "u1", "sent_at": "2026-11-18T13:00:05Z"}
    ev = one({**base, "timestamp": "2026-11-18T13:00:00Z", "offset": 2000})
    assert ev["timestamp"] == datetime(2026, 11, 18, 11, 6, 38, tzinfo=UTC)
    ev = one({**base, "timestamp": "2026-11-18T13:00:00Z"})
    assert ev["timestamp"] == datetime(2026, 11, 18, 11, 6, 35, tzinfo=UTC)
    ev = one({**base, "timestamp": "2026-11-18T13:00:00Z", "properties": {"$ignore_sent_at": True}})
    assert ev["timestamp"] == datetime(2026, 11, 18, 13, 0, tzinfo=UTC)


def test_posthog_future_timestamp_becomes_receive_time() -> None:
    """PostHog ingestion: more than 23 hours after receipt -> the receive time (noted)."""
    ev = one({"event": "x", "distinct_id": "u1", "timestamp": "2026-11-20T11:06:40Z"})
    assert ev["timestamp"] == KAFKA_DT
    assert ev["original_timestamp"] == datetime(2026, 11, 20, 11, 6, 40, tzinfo=UTC)
    assert ev["context"]["etl"]["future_timestamp"].startswith("2026-11-20T11:06:40")
    ev = one({"event": "x", "distinct_id": "u1", "timestamp": "2026-11-19T09:06:40Z"})
    assert ev["timestamp"] == datetime(2026, 11, 19, 9, 6, 40, tzinfo=UTC)  # within 23 h: kept


def test_posthog_node_v1_body_created_at_is_sent_at() -> None:
    events, _ = run(
        {
            "created_at": "2026-11-18T11:06:41Z",
            "batch": [{"event": "x", "distinct_id": "u1", "timestamp": "2026-11-18T11:06:31Z"}],
        }
    )
    assert events[0]["sent_at"] == datetime(2026, 11, 18, 11, 6, 41, tzinfo=UTC)
    assert events[0]["timestamp"] == datetime(2026, 11, 18, 11, 6, 30, tzinfo=UTC)


def test_synthetic_stream_has_no_event_after_its_receipt() -> None:
    from ops.harness.synthetic import Generator

    gen = Generator(seed=3, malformed_rate=0.0, batch_rate=0.5)
    n = Normalizer()
    received_ms = int(gen.now.timestamp() * 1000) + 1500
    later = 0
    for msg in gen.messages(3000):
        events, _ = n.normalize(
            msg.value, topic="t", partition=0, offset=0, timestamp_ms=received_ms
        )
        later += sum(1 for ev in events if ev["timestamp"] > ev["received_at"])
    assert later == 0


# ---------------------------------------------------- issue 12: mapper fixes
def test_nul_stripped_key_never_overwrites_another_key() -> None:
    ev = one(
        {"event": "x", "distinct_id": "u1", "properties": {"ab": "first", "a\u0000b": "second"}}
    )
    assert ev["properties"]["ab"] == "first"
    hits = ev["context"]["etl"]["key_collisions"]
    assert hits == [{"path": "properties.ab", "key": "a\\u0000b", "value": "second"}]
    # The reverse order: the key as sent still wins.
    ev = one(
        {"event": "x", "distinct_id": "u1", "properties": {"a\u0000b": "second", "ab": "first"}}
    )
    assert ev["properties"]["ab"] == "first"
    assert ev["context"]["etl"]["key_collisions"][0]["value"] == "second"


@pytest.mark.parametrize("number", [2**63, 2**64 - 1, 2**64 + 7, 10**30, -(2**63) - 1])
def test_integers_outside_int64_are_kept_exactly_as_text(number: int) -> None:
    raw = b'{"event":"x","distinct_id":"u1","properties":{"big":%d,"ok":5}}' % number
    ev = one(raw)
    assert ev["properties"]["big"] == str(number)
    assert ev["properties"]["ok"] == 5
    assert ev["context"]["etl"]["big_integers"] == ["properties.big"]
    dumps_event(ev)  # serialisable: orjson refuses integers beyond 64 bits


def test_integers_outside_int64_in_a_batch_are_kept_exactly() -> None:
    raw = b'{"batch":[{"event":"x","distinct_id":"u1","properties":{"n":%d}}]}' % (10**25 + 1)
    events, rejections = run(raw)
    assert not rejections
    assert events[0]["properties"]["n"] == str(10**25 + 1)


def test_typed_integer_outside_int64_is_rejected_naming_the_field() -> None:
    raw = (
        b'{"event":"rag_query_triggered","distinct_id":"u1","properties":{"sources_found":%d}}'
        % (2**63)
    )
    r = rejected(raw)
    assert r.reason == Reason.OUT_OF_RANGE
    assert r.field == "properties.sources_found"


def test_int64_limits_themselves_are_integers() -> None:
    raw = b'{"event":"x","distinct_id":"u1","properties":{"a":%d,"b":%d}}' % (2**63 - 1, -(2**63))
    ev = one(raw)
    assert ev["properties"] == {"a": 2**63 - 1, "b": -(2**63)}


def test_rejected_events_carry_the_message_id_when_known() -> None:
    r = rejected({"event": "x", "uuid": "0190a0e8-7f8a-7cc0-9c62-5b1f9b0c1d2e"})
    assert r.reason == Reason.MISSING_IDENTITY
    assert r.message_id == "0190a0e8-7f8a-7cc0-9c62-5b1f9b0c1d2e"
    r = rejected(
        {"type": "track", "event": "x", "userId": "u", "messageId": "m-1", "timestamp": "?"}
    )
    assert r.message_id == "m-1"
    _, rejections = run({"batch": [{"type": "track", "messageId": "m-2", "userId": "u"}]})
    assert rejections[0].message_id == "m-2"


def test_segment_page_category_is_kept() -> None:
    ev = one(
        {
            "type": "page",
            "userId": "u1",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"url": "https://example.com/p"},
        }
    )
    assert ev["properties"]["name"] == "Pricing"
    assert ev["properties"]["category"] == "Docs"


def test_posthog_groupidentify_workspace_sets_workspace_id_and_no_user() -> None:
    ev = one(
        {
            "event": "$groupidentify",
            "distinct_id": "$workspace_ws_42",
            "properties": {"$group_type": "workspace", "$group_key": "ws_42", "$group_set": {}},
        }
    )
    assert ev["type"] == "group"
    assert ev["workspace_id"] == "ws_42"
    assert ev["user_id"] is None


def test_posthog_anonymous_capture_has_no_user_id() -> None:
    ev = one(
        {
            "event": "x",
            "distinct_id": "0190a0e8-aaaa",
            "properties": {"$process_person_profile": False},
        }
    )
    assert ev["user_id"] is None
    assert ev["anonymous_id"] == "0190a0e8-aaaa"
    ev = one({"event": "x", "distinct_id": "dev-1", "properties": {"$device_id": "dev-1"}})
    assert ev["user_id"] is None
    assert ev["anonymous_id"] == "dev-1"
    ev = one({"event": "x", "distinct_id": "user_7", "properties": {"$device_id": "dev-1"}})
    assert (ev["user_id"], ev["anonymous_id"]) == ("user_7", "dev-1")


def test_demo_counts_are_the_mappers_own_counts() -> None:
    """A batch holding invalid UTF-8 still counts as its events (demo `produced`)."""
    from ops.demo import count_events

    values = [
        b'{"batch":[{"event":"x","distinct_id":"u1","properties":{"s":"\xff"}},'
        b'{"event":"y","distinct_id":"u2"},{"event":"z"}]}',
        b"\xff\xfe not utf-8",
        b"",
        b'{"batch":[]}',
        b'{"event":"x","distinct_id":"u","properties":{"n":123456789012345678901234}}',
    ]
    n = Normalizer()
    for value in values:
        events, rejections = n.normalize(
            value, topic="t", partition=0, offset=0, timestamp_ms=KAFKA_TS
        )
        assert count_events(value) == len(events) + len(rejections), value


def test_a_long_number_is_not_an_event_name() -> None:
    r = rejected(b'{"event": 123456789012345678901234, "distinct_id": "u1"}')
    assert r.reason == Reason.INVALID_EVENT_NAME
    assert "got number" in r.error
