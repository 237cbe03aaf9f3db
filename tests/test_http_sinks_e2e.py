"""PostHog and RudderStack sinks end to end: real broker, real worker processes,
the real SDK/HTTP clients against the local protocol servers.

Delivery is at-least-once: a request answered after the client timed out, or
a batch redelivered after a crash, reaches the destination twice (both
vendors deduplicate on uuid/messageId).  The tests count duplicates and
require every expected id exactly once among the unique ones.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import pytest

from mappers.errors import Reason
from ops.harness.synthetic import Generator
from ops.status import metric_sum
from ops.status import read_samples as scrape
from sinks.posthog import posthog_uuid
from tests.conftest import warehouse_rows
from tests.servers import Fault, PostHogServer, RudderStackServer

PH_KEY = "phc_e2e_project_key"
WRITE_KEY = "e2e_write_key"
TS = "2026-11-20T10:00:00Z"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def servers():
    with PostHogServer(PH_KEY) as ph, RudderStackServer(WRITE_KEY) as rs:
        yield ph, rs
    assert ph.errors == [] and rs.errors == []


def http_pipeline(make_pipeline, ph, rs, **env: str):
    extra = {
        "POSTHOG_API_KEY": PH_KEY,
        "POSTHOG_HOST": ph.url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "RUDDERSTACK_DATA_PLANE_URL": rs.url,
        "ETL_DELIVERY__RETRY_INITIAL": "0.1",
        "ETL_DELIVERY__RETRY_MAX": "2",
        "ETL_DELIVERY__AUTH_RETRY_INTERVAL": "1",
        "ETL_DELIVERY__FLUSH_INTERVAL": "0.2",
        "ETL_POSTHOG__TIMEOUT": "1",
        "ETL_RUDDERSTACK__TIMEOUT": "1",
        # No feature-flag gating: this test is about delivery, every valid event must arrive.
        "ETL_FLAGS__GATES": "{}",
        **env,
    }
    return make_pipeline(
        sinks=("duckdb", "posthog", "rudderstack"),
        extra_env=extra,
        posthog={"api_key": PH_KEY, "host": ph.url},
        rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs.url},
    )


def warehouse_ids(pipeline) -> set[str]:
    return {
        r[0] for r in warehouse_rows(pipeline.settings.duckdb.path, "SELECT message_id FROM events")
    }


def sink_rejections(pipeline) -> set[tuple[str, str, str]]:
    rows = warehouse_rows(
        pipeline.settings.duckdb.path,
        "SELECT stage, reason, message_id FROM rejected_events WHERE stage LIKE 'sink:%'",
    )
    return {tuple(r) for r in rows}


def counted(ids: list[str]) -> tuple[set[str], int]:
    """(unique ids, duplicates)"""
    unique = set(ids)
    assert len(ids) >= len(unique)
    return unique, len(ids) - len(unique)


def simple_events(n: int, tag: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event": "tool_used",
                "distinct_id": f"user_{i % 37}",
                "uuid": str(uuid.uuid4()),
                "timestamp": TS,
                "properties": {
                    "tool_id": f"{tag}-{i}",
                    "latency_ms": i % 500,
                    "workspace_id": f"ws_{i % 5}",
                },
            }
        )
        for i in range(n)
    ]


def eventually(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def worker_metric(pipeline, role: str, name: str, **labels: str) -> float:
    return metric_sum(scrape(pipeline.worker(role).metrics_url), name, **labels)


CRAFTED = {
    "posthog_track": {
        "event": "rag_query_triggered",
        "distinct_id": "user_a",
        "uuid": "7f1e2d3c-4b5a-4968-8776-655443322110",
        "timestamp": TS,
        "properties": {
            "vector_db_used": "qdrant",
            "latency_ms": "35",
            "sources_found": 4,
            "$groups": {"workspace": "ws_a"},
        },
    },
    "segment_track": {
        "type": "track",
        "event": "agent_created",
        "userId": "user_b",
        "messageId": "seg-msg-0001",
        "timestamp": TS,
        "properties": {"agent_id": "ag-1", "framework": "langgraph"},
        "context": {"groupId": "ws_b"},
    },
    "segment_identify": {
        "type": "identify",
        "userId": "user_c",
        "anonymousId": "anon_c",
        "messageId": "seg-identify-0001",
        "timestamp": TS,
        "traits": {"plan": "team", "seats": 12},
    },
    "posthog_identify": {
        "event": "$identify",
        "distinct_id": "user_d",
        "uuid": "0e9d8c7b-6a59-4847-9362-514030201000",
        "timestamp": TS,
        "$set": {"role": "admin"},
        "properties": {"$anon_distinct_id": "anon_d"},
    },
    "ai_generation": {
        "event": "$ai_generation",
        "distinct_id": "user_e",
        "uuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "timestamp": TS,
        "properties": {
            "$ai_model": "claude-sonnet-4",
            "$ai_provider": "anthropic",
            "$ai_input_tokens": 900,
            "$ai_output_tokens": 250,
            "$ai_total_cost_usd": 0.00645,
            "$ai_latency": 2.5,
            "$ai_trace_id": "trace-e",
            "workspace_id": "ws_e",
        },
    },
}
POISON_UUID = "dead0000-0000-4000-8000-000000000001"
OVERSIZED_UUID = "b16b1600-0000-4000-8000-000000000002"  # fits PostHog, truncated for RudderStack
WIDE_UUID = (
    "771de000-0000-4000-8000-000000000003"  # too wide for RudderStack (no long string to cut)
)
HUGE_UUID = "4a9e0000-0000-4000-8000-000000000004"  # too wide for PostHog and RudderStack


def special_events() -> list[bytes]:
    return [
        orjson.dumps(e)
        for e in (
            {
                "event": "tool_used",
                "distinct_id": "user_p",
                "uuid": POISON_UUID,
                "timestamp": TS,
                "properties": {"tool_id": "poison"},
            },
            {
                "event": "doc_uploaded",
                "distinct_id": "user_o",
                "uuid": OVERSIZED_UUID,
                "timestamp": TS,
                "properties": {"body": "lorem ipsum " * 4000, "title": "big"},
            },
            {
                "event": "wide_event",
                "distinct_id": "user_w",
                "uuid": WIDE_UUID,
                "timestamp": TS,
                "properties": {f"k{i:05d}": i for i in range(3000)},
            },
            {
                "event": "huge_event",
                "distinct_id": "user_h",
                "uuid": HUGE_UUID,
                "timestamp": TS,
                "properties": {f"k{i:05d}": i for i in range(60000)},
            },
        )
    ]


def test_every_event_reaches_both_http_sinks_through_faults_auth_loss_and_a_crash(
    make_pipeline, servers
):
    ph, rs = servers
    pipeline = http_pipeline(make_pipeline, ph, rs, ETL_POSTHOG__MAX_BATCH_EVENTS="50")
    # First in the queue, so a request carrying the poison event always gets the 400.
    ph.reject_ids(POISON_UUID, status=400)
    # The first requests of each destination meet throttling, an outage, a
    # response slower than the sink's timeout and a dropped connection.
    for server in (ph, rs):
        server.rate_limit_next(retry_after=1)
        server.fail_next(status=503)
        server.slow_next(2.5)
        server.drop_next()

    # -- phase A: a realistic stream plus crafted events ------------------------------
    gen_values, expected_valid = [], 0
    for msg in Generator(seed=11).messages(1500):
        gen_values.append(msg.value)
        expected_valid += msg.valid
    pipeline.start()
    pipeline.produce([orjson.dumps(e) for e in CRAFTED.values()] + special_events() + gen_values)
    pipeline.wait_drained(90)

    landed = warehouse_ids(pipeline)
    assert len(landed) == expected_valid + len(CRAFTED) + 4
    ph_expected = {posthog_uuid(m) for m in landed} - {POISON_UUID, HUGE_UUID}
    rs_expected = landed - {WIDE_UUID, HUGE_UUID}
    ph_unique, ph_dups = counted(ph.uuids())
    rs_unique, rs_dups = counted(rs.message_ids())
    assert ph_unique == ph_expected
    assert rs_unique == rs_expected
    print(
        f"\nphase A: posthog {len(ph_unique)} unique, {ph_dups} duplicates; "
        f"rudderstack {len(rs_unique)} unique, {rs_dups} duplicates"
    )
    for server in (ph, rs):
        statuses = [r.status for r in server.requests]
        assert {429, 503, None} <= set(statuses) and statuses.count(200) >= 2

    assert sink_rejections(pipeline) == {
        ("sink:posthog", Reason.SINK_REJECTED, POISON_UUID),
        ("sink:posthog", Reason.EVENT_TOO_LARGE_FOR_SINK, HUGE_UUID),
        ("sink:rudderstack", Reason.EVENT_TOO_LARGE_FOR_SINK, WIDE_UUID),
        ("sink:rudderstack", Reason.EVENT_TOO_LARGE_FOR_SINK, HUGE_UUID),
    }
    (error,) = warehouse_rows(
        pipeline.settings.duckdb.path,
        "SELECT error FROM rejected_events WHERE message_id = ? AND stage = 'sink:posthog'",
        [POISON_UUID],
    )[0]
    assert "HTTP 400" in error

    ph_by_uuid, rs_by_id = ph.events_by_uuid(), rs.events_by_message_id()
    oversized = rs_by_id[OVERSIZED_UUID]
    assert oversized["properties"]["$truncated"] == ["body"]
    assert (
        oversized["properties"]["body"].endswith("…[truncated]")
        and oversized["properties"]["title"] == "big"
    )
    assert len(orjson.dumps(oversized)) <= 32 * 1024
    assert (
        ph_by_uuid[OVERSIZED_UUID]["properties"]["body"] == "lorem ipsum " * 4000
    )  # PostHog's limit is larger
    assert rs_by_id[POISON_UUID]["properties"] == {"tool_id": "poison"}  # only PostHog refused it
    assert len(ph_by_uuid[WIDE_UUID]["properties"]) == 3000

    assert_crafted_payloads(ph_by_uuid, rs_by_id)

    # -- phase B: PostHog refuses our key; the sink stops, nothing is dead-lettered --
    ph.project_api_key = "phc_rotated"
    wave_b = simple_events(200, "b")
    pipeline.produce(wave_b)
    ph.wait_for(lambda s: any(r.status == 401 for r in s.requests), timeout=30)
    rs.wait_for(lambda s: len(set(s.message_ids())) >= len(rs_expected) + 200, timeout=30)
    # The server records a request before answering it: give the worker a moment to react.
    eventually(
        lambda: worker_metric(pipeline, "sink:posthog", "etl_sink_stopped", sink="posthog") == 1
    )
    eventually(
        lambda: "sink posthog STOPPED" in pipeline.worker("sink:posthog").log_path.read_text()
    )
    assert PH_KEY not in pipeline.worker("sink:posthog").log_path.read_text()
    # It re-probes (every ETL_DELIVERY__AUTH_RETRY_INTERVAL s) and is still refused.
    ph.wait_for(lambda s: sum(r.status == 401 for r in s.requests) >= 2, timeout=15)
    assert set(ph.uuids()) == ph_expected
    ph.project_api_key = PH_KEY  # the key is fixed
    pipeline.wait_drained(60)
    b_ids = {orjson.loads(v)["uuid"] for v in wave_b}
    assert b_ids <= set(ph.uuids()) and b_ids <= set(rs.message_ids())
    assert worker_metric(pipeline, "sink:posthog", "etl_sink_stopped", sink="posthog") == 0
    assert len(sink_rejections(pipeline)) == 4  # nothing new dead-lettered

    # -- phase C: SIGKILL mid-batch, then restart ------------------------------------
    seen = {"n": 0}
    lock = threading.Lock()

    def after_two_chunks(req: Any) -> bool:
        with lock:
            seen["n"] += 1
            return seen["n"] > 2

    outage = ph.faults.push(Fault(status=503, times=None, match=after_two_chunks))
    before = len(ph.requests)
    wave_c = simple_events(400, "c")
    pipeline.produce(wave_c)
    ph.wait_for(lambda s: any(r.status == 503 for r in s.requests[before:]), timeout=30)
    c_ids = {orjson.loads(v)["uuid"] for v in wave_c}
    partially = len(c_ids & set(ph.uuids()))
    pipeline.kill("sink:posthog")
    outage.cancel()
    pipeline.start(["sink:posthog"])
    pipeline.wait_drained(60)

    ph_unique, ph_dups = counted(ph.uuids())
    rs_unique, rs_dups = counted(rs.message_ids())
    assert ph_unique == ph_expected | b_ids | c_ids
    assert rs_unique == rs_expected | b_ids | c_ids
    assert len(sink_rejections(pipeline)) == 4
    print(
        f"phase C: {partially} of {len(c_ids)} delivered before SIGKILL; "
        f"totals posthog {len(ph_unique)} unique + {ph_dups} duplicates, "
        f"rudderstack {len(rs_unique)} unique + {rs_dups} duplicates"
    )


def assert_crafted_payloads(ph_by_uuid: dict[str, dict], rs_by_id: dict[str, dict]) -> None:
    def ph_event(u: str) -> dict:
        ev = dict(ph_by_uuid[u])
        assert ev.pop("historical_migration") is False
        return ev

    assert ph_event("7f1e2d3c-4b5a-4968-8776-655443322110") == {
        "uuid": "7f1e2d3c-4b5a-4968-8776-655443322110",
        "event": "rag_query_triggered",
        "distinct_id": "user_a",
        "timestamp": TS,
        "properties": {
            "vector_db_used": "qdrant",
            "latency_ms": 35.0,
            "sources_found": 4,
            "$groups": {"workspace": "ws_a"},
        },
    }
    seg_uuid = posthog_uuid("seg-msg-0001")
    assert ph_event(seg_uuid) == {
        "uuid": seg_uuid,
        "event": "agent_created",
        "distinct_id": "user_b",
        "timestamp": TS,
        "properties": {
            "agent_id": "ag-1",
            "framework": "langgraph",
            "$etl_message_id": "seg-msg-0001",
            "$groups": {"workspace": "ws_b"},
        },
    }
    identify_uuid = posthog_uuid("seg-identify-0001")
    assert ph_event(identify_uuid) == {
        "uuid": identify_uuid,
        "event": "$identify",
        "distinct_id": "user_c",
        "timestamp": TS,
        "properties": {
            "$etl_message_id": "seg-identify-0001",
            "$set": {"plan": "team", "seats": 12},
            "$anon_distinct_id": "anon_c",
        },
    }
    assert ph_event("0e9d8c7b-6a59-4847-9362-514030201000") == {
        "uuid": "0e9d8c7b-6a59-4847-9362-514030201000",
        "event": "$identify",
        "distinct_id": "user_d",
        "timestamp": TS,
        "properties": {"$anon_distinct_id": "anon_d", "$set": {"role": "admin"}},
    }
    assert ph_event("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d") == {
        "uuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "event": "$ai_generation",
        "distinct_id": "user_e",
        "timestamp": TS,
        "properties": {**CRAFTED["ai_generation"]["properties"], "$groups": {"workspace": "ws_e"}},
    }

    def rs_event(mid: str) -> dict:
        ev = dict(rs_by_id[mid])
        received = ev.pop("receivedAt")  # the Kafka timestamp of the raw message
        assert received.endswith("Z")
        # Flag decisions the normalizer attaches (governance) travel in context;
        # not this test's subject.
        ev["context"] = {k: v for k, v in ev["context"].items() if k != "flags"}
        return ev

    assert rs_event("7f1e2d3c-4b5a-4968-8776-655443322110") == {
        "messageId": "7f1e2d3c-4b5a-4968-8776-655443322110",
        "type": "track",
        "event": "rag_query_triggered",
        "userId": "user_a",
        "properties": {
            "vector_db_used": "qdrant",
            "latency_ms": 35.0,
            "sources_found": 4,
            "$groups": {"workspace": "ws_a"},
        },
        "context": {"groupId": "ws_a"},
        "timestamp": TS,
        "originalTimestamp": TS,
    }
    assert rs_event("seg-msg-0001") == {
        "messageId": "seg-msg-0001",
        "type": "track",
        "event": "agent_created",
        "userId": "user_b",
        "properties": {"agent_id": "ag-1", "framework": "langgraph"},
        "context": {"groupId": "ws_b"},
        "timestamp": TS,
        "originalTimestamp": TS,
    }
    assert rs_event("seg-identify-0001") == {
        "messageId": "seg-identify-0001",
        "type": "identify",
        "userId": "user_c",
        "anonymousId": "anon_c",
        "traits": {"plan": "team", "seats": 12},
        "context": {},
        "timestamp": TS,
        "originalTimestamp": TS,
    }
    assert rs_event("0e9d8c7b-6a59-4847-9362-514030201000") == {
        "messageId": "0e9d8c7b-6a59-4847-9362-514030201000",
        "type": "identify",
        "userId": "user_d",
        "anonymousId": "anon_d",
        "traits": {"role": "admin"},
        "properties": {"$anon_distinct_id": "anon_d", "$set": {"role": "admin"}},
        "context": {},
        "timestamp": TS,
        "originalTimestamp": TS,
    }
    assert rs_event("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d") == {
        "messageId": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "type": "track",
        "event": "$ai_generation",
        "userId": "user_e",
        "properties": CRAFTED["ai_generation"]["properties"],
        "context": {"groupId": "ws_e"},
        "timestamp": TS,
        "originalTimestamp": TS,
    }


class SteadyProducer(threading.Thread):
    """Produces ``per_tick`` events every ``tick`` seconds until stopped."""

    def __init__(self, pipeline, per_tick: int = 40, tick: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pipeline, self.per_tick, self.tick = pipeline, per_tick, tick
        self.ids: list[str] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop_event.is_set():
                values = simple_events(self.per_tick, f"s{n}")
                self.pipeline.produce(values)
                self.ids.extend(orjson.loads(v)["uuid"] for v in values)
                n += 1
                self.stop_event.wait(self.tick)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def accepted_between(server, start: float, end: float) -> int:
    return sum(
        len(r.json["batch"])
        for r in server.requests
        if r.status == 200 and start <= r.received_at < end
    )


def test_one_destination_down_does_not_hold_back_the_others(make_pipeline, servers):
    ph, rs = servers
    outage_seconds, baseline_seconds = 15.0, 5.0
    pipeline = http_pipeline(make_pipeline, ph, rs)
    pipeline.start()
    warmup = simple_events(50, "warm")
    pipeline.produce(warmup)
    pipeline.wait_drained(60)

    producer = SteadyProducer(pipeline)
    producer.start()
    try:
        t0 = time.monotonic()
        duck0 = worker_metric(pipeline, "sink:duckdb", "etl_events_out_total", outcome="delivered")
        time.sleep(baseline_seconds)
        t1 = time.monotonic()
        duck1 = worker_metric(pipeline, "sink:duckdb", "etl_events_out_total", outcome="delivered")
        # Not t1: reading the metric above can take a while on a busy machine,
        # and PostHog still accepts until this line.
        outage_start = time.monotonic()
        ph.fail_for(outage_seconds, 503)
        time.sleep(outage_seconds)
        t2 = time.monotonic()
        duck2 = worker_metric(pipeline, "sink:duckdb", "etl_events_out_total", outcome="delivered")
    finally:
        producer.stop_event.set()
        producer.join(10)
    assert producer.error is None

    rates = {
        "rudderstack": (
            accepted_between(rs, t0, t1) / (t1 - t0),
            accepted_between(rs, t1, t2) / (t2 - t1),
        ),
        "duckdb": ((duck1 - duck0) / (t1 - t0), (duck2 - duck1) / (t2 - t1)),
        "posthog": (
            accepted_between(ph, t0, t1) / (t1 - t0),
            accepted_between(ph, outage_start, outage_start + outage_seconds) / outage_seconds,
        ),
    }
    produced_rate = producer.per_tick / producer.tick
    print(
        "\nevents/s baseline -> during PostHog outage: "
        + ", ".join(f"{k} {a:.0f} -> {b:.0f}" for k, (a, b) in rates.items())
    )
    for name in ("rudderstack", "duckdb"):
        baseline, during = rates[name]
        assert baseline > 0.5 * produced_rate
        assert during > 0.7 * baseline, f"{name} slowed down while PostHog was down"
    assert rates["posthog"][1] == 0
    assert any(r.status == 503 for r in ph.requests if t1 <= r.received_at < t2)

    pipeline.wait_drained(90)  # PostHog catches up after the outage
    expected = {orjson.loads(v)["uuid"] for v in warmup} | set(producer.ids)
    ph_unique, ph_dups = counted(ph.uuids())
    rs_unique, rs_dups = counted(rs.message_ids())
    assert ph_unique == expected and rs_unique == expected
    assert warehouse_ids(pipeline) == expected
    print(
        f"after recovery: {len(expected)} events; posthog duplicates {ph_dups}, "
        f"rudderstack duplicates {rs_dups}"
    )
