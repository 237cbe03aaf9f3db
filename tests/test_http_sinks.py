"""PostHog and RudderStack sinks, in process, against the local protocol servers.

Exact wire payloads, the encoded sizes the runtime batches by, fitting at
the byte limits (one under, at, one over), and how each HTTP answer maps onto
the runtime's contract (retry / bisect / dead letter / stop).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import orjson
import pytest

from etl.config import ConfigError
from mappers.errors import Reason
from mappers.normalize import TRUNCATION_MARKER, Normalizer
from sinks.base import BatchRejectedError, RetryableSinkError, SinkAuthError, SinkRejection
from sinks.http import parse_retry_after
from sinks.posthog import MESSAGE_ID_NAMESPACE, PostHogSink, posthog_uuid
from sinks.registry import sink_class
from sinks.rudderstack import RudderStackSink
from sinks.settings import Settings, load_settings
from streams.delivery import Deliverer
from tests.servers import PostHogServer, RudderStackServer

PH_KEY = "phc_unit_project_key"
WRITE_KEY = "unit_write_key"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ph():
    with PostHogServer(PH_KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def rs():
    with RudderStackServer(WRITE_KEY) as server:
        yield server
    assert server.errors == []


def settings_for(ph=None, rs=None, **overrides) -> Settings:
    posthog = {
        "api_key": PH_KEY,
        "host": ph.url if ph else "http://127.0.0.1:9",
        **overrides.pop("posthog", {}),
    }
    rudder = {
        "write_key": WRITE_KEY,
        "data_plane_url": rs.url if rs else "http://127.0.0.1:9",
        **overrides.pop("rudderstack", {}),
    }
    return Settings(
        sinks=["posthog", "rudderstack"], posthog=posthog, rudderstack=rudder, **overrides
    )


def unified(raw: dict, offset: int = 0) -> dict:
    """Raw event -> unified event exactly as a delivering agent decodes it from the topic."""
    events, rejections = Normalizer().normalize(
        orjson.dumps(raw),
        topic="events.raw",
        partition=0,
        offset=offset,
        timestamp_ms=1_714_557_600_000,
    )
    assert rejections == []
    return orjson.loads(orjson.dumps(events[0], option=orjson.OPT_UTC_Z))


TS = "2024-05-01T10:00:00Z"
PH_UUID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
RAW_EVENTS = {
    "posthog_track": {
        "event": "tool_used",
        "distinct_id": "user_1",
        "uuid": PH_UUID,
        "timestamp": TS,
        "properties": {
            "tool_id": "t-1",
            "tool_type": "http",
            "latency_ms": "12",
            "$groups": {"workspace": "ws_1"},
        },
    },
    "segment_track": {
        "type": "track",
        "event": "flow_executed",
        "userId": "user_2",
        "messageId": "msg-segment-1",
        "timestamp": TS,
        "sentAt": "2024-05-01T10:00:05Z",
        "properties": {"flow_id": "f-1", "tools_used": ["a", "b"], "time_ms": 40, "success": True},
        "context": {"groupId": "ws_2", "library": {"name": "analytics-node", "version": "1.0"}},
    },
    "segment_identify": {
        "type": "identify",
        "userId": "user_3",
        "anonymousId": "anon_3",
        "messageId": "msg-identify-1",
        "timestamp": TS,
        "traits": {"plan": "pro", "email_domain": "acme.com"},
    },
    "ai_generation": {
        "event": "$ai_generation",
        "distinct_id": "user_4",
        "uuid": "2d3c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a",
        "timestamp": TS,
        "properties": {
            "$ai_model": "gpt-4o",
            "$ai_provider": "openai",
            "$ai_input_tokens": 120,
            "$ai_output_tokens": 30,
            "$ai_total_cost_usd": 0.0006,
            "$ai_latency": 1.25,
            "$ai_trace_id": "tr-9",
            "workspace_id": "ws_4",
        },
    },
}


# -- mapping ------------------------------------------------------------------------------


def test_posthog_payloads_exact(ph):
    sink = PostHogSink(settings_for(ph))
    events = [unified(raw, i) for i, raw in enumerate(RAW_EVENTS.values())]

    assert sink.write(events).written == 4

    assert ph.events == [
        {
            "uuid": PH_UUID,
            "event": "tool_used",
            "distinct_id": "user_1",
            "timestamp": TS,
            "properties": {
                "tool_id": "t-1",
                "tool_type": "http",
                "latency_ms": 12.0,
                "$groups": {"workspace": "ws_1"},
            },
            "historical_migration": False,
        },
        {
            "uuid": str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "msg-segment-1")),
            "event": "flow_executed",
            "distinct_id": "user_2",
            # An explicit Segment `timestamp` is kept as given (rudder-server's rule)
            "timestamp": TS,
            "properties": {
                "flow_id": "f-1",
                "tools_used": ["a", "b"],
                "time_ms": 40.0,
                "success": True,
                "$etl_message_id": "msg-segment-1",
                "$groups": {"workspace": "ws_2"},
            },
            "historical_migration": False,
        },
        {
            "uuid": str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "msg-identify-1")),
            "event": "$identify",
            "distinct_id": "user_3",
            "timestamp": TS,
            "properties": {
                "$etl_message_id": "msg-identify-1",
                "$set": {"plan": "pro", "email_domain": "acme.com"},
                "$anon_distinct_id": "anon_3",
            },
            "historical_migration": False,
        },
        {
            "uuid": "2d3c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a",
            "event": "$ai_generation",
            "distinct_id": "user_4",
            "timestamp": TS,
            "properties": {
                "$ai_model": "gpt-4o",
                "$ai_provider": "openai",
                "$ai_input_tokens": 120,
                "$ai_output_tokens": 30,
                "$ai_total_cost_usd": 0.0006,
                "$ai_latency": 1.25,
                "$ai_trace_id": "tr-9",
                "workspace_id": "ws_4",
                "$groups": {"workspace": "ws_4"},
            },
            "historical_migration": False,
        },
    ]
    (req,) = ph.requests
    assert (req.path, req.status, req.header("content-encoding")) == ("/batch/", 200, "gzip")
    assert req.json["api_key"] == PH_KEY and req.json["historical_migration"] is False
    # The size the runtime batches by is the wire size: the SDK's own encoding.
    assert len(req.body) == len(json.dumps(req.json))
    for ev, sent in zip(events, req.json["batch"], strict=True):
        assert sink.payload_size(ev) == len(json.dumps(sent))
        assert sink.event_size(ev) == len(json.dumps(sent)) + 2


def test_rudderstack_payloads_exact(rs):
    sink = RudderStackSink(settings_for(rs=rs))
    events = [unified(raw, i) for i, raw in enumerate(RAW_EVENTS.values())]

    assert sink.write(events).written == 4

    received = "2024-05-01T10:00:00Z"
    assert rs.events == [
        {
            "messageId": PH_UUID,
            "type": "track",
            "event": "tool_used",
            "userId": "user_1",
            "properties": {
                "tool_id": "t-1",
                "tool_type": "http",
                "latency_ms": 12.0,
                "$groups": {"workspace": "ws_1"},
            },
            "context": {"groupId": "ws_1"},
            "timestamp": TS,
            "originalTimestamp": TS,
            "receivedAt": received,
        },
        {
            "messageId": "msg-segment-1",
            "type": "track",
            "event": "flow_executed",
            "userId": "user_2",
            "properties": {
                "flow_id": "f-1",
                "tools_used": ["a", "b"],
                "time_ms": 40.0,
                "success": True,
            },
            "context": {"groupId": "ws_2", "library": {"name": "analytics-node", "version": "1.0"}},
            "timestamp": TS,  # explicit: kept as given
            "originalTimestamp": TS,
            "sentAt": "2024-05-01T10:00:05Z",
            "receivedAt": received,
        },
        {
            "messageId": "msg-identify-1",
            "type": "identify",
            "userId": "user_3",
            "anonymousId": "anon_3",
            "traits": {"plan": "pro", "email_domain": "acme.com"},
            "context": {},
            "timestamp": TS,
            "originalTimestamp": TS,
            "receivedAt": received,
        },
        {
            "messageId": "2d3c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a",
            "type": "track",
            "event": "$ai_generation",
            "userId": "user_4",
            "properties": RAW_EVENTS["ai_generation"]["properties"],
            "context": {"groupId": "ws_4"},
            "timestamp": TS,
            "originalTimestamp": TS,
            "receivedAt": received,
        },
    ]
    (req,) = rs.requests
    assert (req.path, req.status, req.header("content-encoding")) == ("/v1/batch", 200, "gzip")
    assert (
        req.header("authorization")
        == "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    )
    assert sorted(req.json) == ["batch", "sentAt"]
    # Body = envelope + events joined by ","; each event's size is its exact bytes.
    overhead = len(b'{"batch":[') + len(b'],"sentAt":"') + len(req.json["sentAt"]) + len(b'"}')
    assert len(req.body) == overhead + sum(sink.event_size(ev) for ev in events) - 1
    for ev, sent in zip(events, req.json["batch"], strict=True):
        assert sink.payload_size(ev) == len(
            json.dumps(sent, separators=(",", ":"), ensure_ascii=False).encode()
        )


def test_replay_sends_historical_migration(ph):
    sink = PostHogSink(settings_for(ph, replay=True))
    sink.write([unified(RAW_EVENTS["posthog_track"])])
    assert ph.batches[0]["historical_migration"] is True
    assert ph.events[0]["historical_migration"] is True


def test_posthog_uuid_rule():
    canonical = "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B"
    assert posthog_uuid(canonical) == canonical
    assert posthog_uuid(PH_UUID) == PH_UUID
    for other in ("msg-1", PH_UUID.replace("-", ""), "{" + PH_UUID + "}", "", "x" * 36):
        derived = posthog_uuid(other)
        assert derived == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, other)) == posthog_uuid(other)
        assert uuid.UUID(derived).version == 5
    assert str(MESSAGE_ID_NAMESPACE) == "34b9f7e1-7395-5304-8702-7b64f7211313"


def test_page_group_alias_mapping(ph, rs):
    raws = [
        {
            "type": "page",
            "anonymousId": "anon_9",
            "messageId": "m-page",
            "timestamp": TS,
            "name": "Pricing",
            "properties": {"url": "https://example.com/pricing"},
            "context": {"ip": "203.0.113.9"},
        },
        {
            "type": "group",
            "userId": "user_9",
            "groupId": "ws_9",
            "messageId": "m-group",
            "timestamp": TS,
            "traits": {"name": "Acme"},
        },
        {
            "type": "alias",
            "userId": "user_9",
            "previousId": "anon_9",
            "messageId": "m-alias",
            "timestamp": TS,
        },
    ]
    events = [unified(r, i) for i, r in enumerate(raws)]
    PostHogSink(settings_for(ph)).write(events)
    RudderStackSink(settings_for(rs=rs)).write(events)

    page, group, alias = ph.events
    assert (page["event"], page["properties"]["$current_url"], page["properties"]["$ip"]) == (
        "$pageview",
        "https://example.com/pricing",
        "203.0.113.9",
    )
    assert group["event"] == "$groupidentify"
    assert {k: group["properties"][k] for k in ("$group_type", "$group_key", "$group_set")} == {
        "$group_type": "workspace",
        "$group_key": "ws_9",
        "$group_set": {"name": "Acme"},
    }
    assert (alias["event"], alias["distinct_id"], alias["properties"]["alias"]) == (
        "$create_alias",
        "user_9",
        "anon_9",
    )

    rpage, rgroup, ralias = rs.events
    assert (rpage["type"], rpage["name"], rpage["anonymousId"], rpage["properties"]["url"]) == (
        "page",
        "Pricing",
        "anon_9",
        "https://example.com/pricing",
    )
    assert (rgroup["type"], rgroup["groupId"], rgroup["traits"]) == (
        "group",
        "ws_9",
        {"name": "Acme"},
    )
    assert (ralias["type"], ralias["previousId"], ralias["userId"]) == ("alias", "anon_9", "user_9")
    assert all("event" not in e for e in rs.events)


# -- sizes and fitting at the limits ------------------------------------------------------


def sized_event(sink, size: int, blob_char: str = "x") -> dict:
    """A unified event whose encoding for ``sink`` is exactly ``size`` bytes."""
    ev = unified(
        {
            "event": "big",
            "distinct_id": "u1",
            "uuid": PH_UUID,
            "timestamp": TS,
            "properties": {"blob": ""},
        }
    )
    ev["properties"]["blob"] = blob_char * (size - sink.payload_size(ev))
    sink.forget([ev])
    assert sink.payload_size(ev) == size
    return ev


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("sink_cls", [PostHogSink, RudderStackSink])
def test_fit_at_the_event_limit(ph, rs, sink_cls, delta):
    sink = sink_cls(settings_for(ph, rs))
    limit = sink.capabilities.max_event_bytes
    assert limit == (900 * 1024 if sink_cls is PostHogSink else 32 * 1024)
    ev = sized_event(sink, limit + delta)
    original_blob = ev["properties"]["blob"]

    fitted = sink.fit(ev)

    if delta <= 0:
        assert fitted is ev
    else:
        assert (
            fitted is not ev and ev["properties"]["blob"] == original_blob
        )  # the input is not modified
        assert fitted["properties"]["$truncated"] == ["blob"]
        assert fitted["properties"]["blob"].endswith(TRUNCATION_MARKER)
        assert original_blob.startswith(fitted["properties"]["blob"][: -len(TRUNCATION_MARKER)])
        assert limit - 64 <= sink.payload_size(fitted) <= limit
    # What fits is accepted by the destination at its documented limit.
    assert sink.write([fitted]).written == 1
    server = ph if sink_cls is PostHogSink else rs
    sent = server.events[0]
    assert sent["properties"]["blob"] == fitted["properties"]["blob"]


def test_fit_multibyte_strings_stay_under_the_wire_limit(ph):
    sink = PostHogSink(settings_for(ph, posthog={"max_event_bytes": 4096}))
    ev = sized_event(sink, 1000)
    ev["properties"]["blob"] = "🚀" * 700  # 12 bytes each in the SDK's ASCII-escaped JSON
    sink.forget([ev])
    fitted = sink.fit(ev)
    assert isinstance(fitted, dict) and sink.payload_size(fitted) <= 4096
    assert fitted["properties"]["$truncated"] == ["blob"]


def test_fit_cuts_largest_strings_first_and_names_them(rs):
    sink = RudderStackSink(settings_for(rs=rs, rudderstack={"max_event_bytes": 4096}))
    ev = unified(
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m-big-identify",
            "timestamp": TS,
            "traits": {"bio": "b" * 3000, "nick": "short"},
            "properties": {"notes": {"text": "n" * 2500}, "small": "s" * 100},
        }
    )
    fitted = sink.fit(ev)
    assert isinstance(fitted, dict)
    assert sink.payload_size(fitted) <= 4096
    # One cut of the largest string is enough here; the others stay whole.
    assert fitted["properties"]["$truncated"] == ["context.traits.bio"]
    assert fitted["context"]["traits"]["bio"].endswith(TRUNCATION_MARKER)
    assert fitted["properties"]["notes"] == {"text": "n" * 2500}
    assert (
        fitted["properties"]["small"] == "s" * 100
        and fitted["context"]["traits"]["nick"] == "short"
    )
    sink.write([fitted])
    assert rs.events[0]["traits"]["bio"] == fitted["context"]["traits"]["bio"]
    assert rs.events[0]["properties"]["$truncated"] == fitted["properties"]["$truncated"]


@pytest.mark.parametrize("sink_cls", [PostHogSink, RudderStackSink])
def test_unfittable_event_is_refused_not_dropped(ph, rs, sink_cls):
    sink = sink_cls(
        settings_for(
            ph, rs, posthog={"max_event_bytes": 2048}, rudderstack={"max_event_bytes": 2048}
        )
    )
    ev = unified(
        {
            "event": "wide",
            "distinct_id": "u1",
            "uuid": PH_UUID,
            "timestamp": TS,
            "properties": {f"k{i:04d}": i for i in range(400)},
        }
    )
    refused = sink.fit(ev)
    assert isinstance(refused, SinkRejection)
    assert refused.event is ev and refused.reason == Reason.EVENT_TOO_LARGE_FOR_SINK
    assert "the limit is 2048" in refused.error


# -- HTTP answers -> runtime contract -----------------------------------------------------


def sinks_and_servers(ph, rs, **overrides):
    s = settings_for(ph, rs, **overrides)
    return [(PostHogSink(s), ph), (RudderStackSink(s), rs)]


def two_events():
    return [unified(RAW_EVENTS["posthog_track"]), unified(RAW_EVENTS["segment_track"], 1)]


def test_retryable_answers(ph, rs):
    for sink, server in sinks_and_servers(
        ph, rs, posthog={"timeout": 0.5}, rudderstack={"timeout": 0.5}
    ):
        events = two_events()
        server.rate_limit_next(retry_after=3)
        with pytest.raises(RetryableSinkError) as limited:
            sink.write(events)
        assert limited.value.retry_after == 3.0 and "429" in str(limited.value)

        server.fail_next(status=503)
        with pytest.raises(RetryableSinkError) as unavailable:
            sink.write(events)
        assert unavailable.value.retry_after is None and "503" in str(unavailable.value)

        server.drop_next()
        with pytest.raises(RetryableSinkError):
            sink.write(events)

        server.slow_next(1.5)
        with pytest.raises(RetryableSinkError) as slow:
            sink.write(events)
        assert "Timeout" in str(slow.value)

        server.fail_next(
            status=404
        )  # a wrong path is a deployment problem: retry, never dead-letter
        with pytest.raises(RetryableSinkError):
            sink.write(events)

        assert sink.write(events).written == 2
        # The slow request was answered after the client gave up: a documented duplicate.
        server.wait_for(lambda srv: len(srv.events) == 4, timeout=5)
        ids = [e.get("uuid") or e.get("messageId") for e in server.events]
        assert len(ids) == 4 and len(set(ids)) == 2
        assert sorted(r.status or 0 for r in server.requests) == [0, 200, 200, 404, 429, 503]


def test_auth_failures_stop_the_sink(ph, rs):
    s = settings_for(ph, rs, posthog={"api_key": "phc_wrong"}, rudderstack={"write_key": "wrong"})
    for sink in (PostHogSink(s), RudderStackSink(s)):
        with pytest.raises(SinkAuthError) as err:
            sink.write(two_events())
        assert "401" in str(err.value) and "wrong" not in str(err.value)
    ph.fail_next(status=403)
    with pytest.raises(SinkAuthError):
        PostHogSink(settings_for(ph)).write(two_events())
    assert ph.events == [] and rs.events == []


def test_refused_batch_bisects_and_single_event_is_dead_lettered(ph, rs):
    for sink, server in sinks_and_servers(ph, rs):
        events = two_events()
        bad = events[1]
        bad_id = posthog_uuid(bad["message_id"]) if sink.name == "posthog" else bad["message_id"]
        server.reject_ids(bad_id, status=400)
        with pytest.raises(BatchRejectedError):
            sink.write(events)
        result = sink.write([bad])
        assert result.written == 0
        (refusal,) = result.rejected
        assert (refusal.event, refusal.reason) == (bad, Reason.SINK_REJECTED)
        assert "HTTP 400" in refusal.error
        assert sink.write([events[0]]).written == 1


def test_413_for_one_event_is_event_too_large(ph, rs):
    ph.max_event_bytes = 300  # the destination is stricter than the sink's configured limit
    rs.max_event_bytes = 300
    for sink, _server in sinks_and_servers(ph, rs):
        events = two_events()
        events[0]["properties"]["blob"] = "y" * 400
        with pytest.raises(BatchRejectedError):
            sink.write(events)
        (refusal,) = sink.write([events[0]]).rejected
        assert refusal.reason == Reason.EVENT_TOO_LARGE_FOR_SINK and "413" in refusal.error


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 27 <= parse_retry_after(when) <= 30


# -- with the real delivery runtime -------------------------------------------------------


def run_deliverer(sink, events):
    dead: list = []

    async def dead_letter(items, stage):
        dead.extend(items)

    deliverer = Deliverer(
        sink,
        dead_letter,
        retry_initial=0.01,
        retry_max=0.05,
        unexpected_attempts=2,
        auth_retry_interval=0.1,
        encode=lambda ev: orjson.dumps(ev),
    )
    asyncio.run(deliverer.deliver(events))
    return dead


def test_runtime_bisects_to_the_poisoned_event_and_splits_by_bytes(rs):
    sink = RudderStackSink(
        settings_for(rs=rs, rudderstack={"max_request_bytes": 4096, "max_event_bytes": 1024})
    )
    events = [unified({**RAW_EVENTS["segment_track"], "messageId": f"m-{i}"}, i) for i in range(40)]
    events.append(
        unified(
            {
                "type": "track",
                "event": "oversized",
                "userId": "u",
                "messageId": "m-huge",
                "timestamp": TS,
                "properties": {"blob": "z" * 3000},
            },
            99,
        )
    )
    events.append(
        unified(
            {
                "type": "track",
                "event": "wide",
                "userId": "u",
                "messageId": "m-wide",
                "timestamp": TS,
                "properties": {f"k{i}": i for i in range(200)},
            },
            100,
        )
    )
    rs.reject_ids("m-17", status=400)

    dead = run_deliverer(sink, events)

    assert sorted((r.reason, r.message_id) for r, *_ in dead) == [
        (Reason.EVENT_TOO_LARGE_FOR_SINK, "m-wide"),
        (Reason.SINK_REJECTED, "m-17"),
    ]
    delivered = rs.message_ids()
    assert sorted(delivered) == sorted([f"m-{i}" for i in range(40) if i != 17] + ["m-huge"])
    assert rs.events_by_message_id()["m-huge"]["properties"]["$truncated"] == ["blob"]
    accepted = [r for r in rs.requests if r.status == 200]
    assert all(len(r.body) <= 4096 for r in accepted) and len(accepted) > 3


def test_posthog_through_runtime_retries_then_delivers(ph):
    sink = PostHogSink(settings_for(ph))
    events = [
        unified({**RAW_EVENTS["posthog_track"], "uuid": str(uuid.uuid4())}, i) for i in range(25)
    ]
    ph.rate_limit_next(retry_after=0.2)
    ph.fail_next(status=502)
    assert run_deliverer(sink, events) == []
    assert sorted(ph.uuids()) == sorted(e["message_id"] for e in events)
    assert [r.status for r in ph.requests] == [429, 502, 200]


# -- selection and configuration ----------------------------------------------------------


def test_sink_registry():
    assert sink_class("posthog") is PostHogSink and sink_class("rudderstack") is RudderStackSink


@pytest.mark.parametrize(
    "env,field",
    [
        ({"ETL_SINKS": "duckdb,posthog"}, "ETL_POSTHOG__API_KEY (or POSTHOG_API_KEY"),
        (
            {"ETL_SINKS": "rudderstack", "RUDDERSTACK_WRITE_KEY": "k"},
            "ETL_RUDDERSTACK__DATA_PLANE_URL (or RUDDERSTACK_DATA_PLANE_URL)",
        ),
        (
            {"ETL_SINKS": "rudderstack", "RUDDERSTACK_DATA_PLANE_URL": "http://x"},
            "ETL_RUDDERSTACK__WRITE_KEY (or RUDDERSTACK_WRITE_KEY)",
        ),
    ],
)
def test_enabled_sink_without_its_settings_names_the_field(monkeypatch, env, field):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert field in str(err.value)


def test_vendor_env_names_select_and_configure(monkeypatch):
    monkeypatch.setenv("ETL_SINKS", "duckdb,posthog,rudderstack")
    monkeypatch.setenv("POSTHOG_API_KEY", "phc_env")
    monkeypatch.setenv("POSTHOG_HOST", "http://127.0.0.1:1234")
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", "wk_env")
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", "http://127.0.0.1:5678/")
    s = load_settings()
    assert s.sinks == ["duckdb", "posthog", "rudderstack"]
    assert RudderStackSink(s).url == "http://127.0.0.1:5678/v1/batch"
    assert PostHogSink(s).host == "http://127.0.0.1:1234"


def test_etl_demo_refuses_an_unconfigured_http_sink():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "POSTHOG_", "RUDDERSTACK_"))
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "demo",
            "--events",
            "10",
            "--sinks",
            "duckdb,rudderstack",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "ETL_RUDDERSTACK__WRITE_KEY (or RUDDERSTACK_WRITE_KEY)" in proc.stderr
    assert "Traceback" not in proc.stderr
