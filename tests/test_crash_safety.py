"""SIGKILL the workers in mid-stream, again and again: no loss, no duplicate.

Offsets commit only after the output is durable, so a killed worker's
in-flight chunk is redelivered to its successor.  Several kill rounds at
random moments give an off-by-one in the commit path (faust-streaming#606)
many chances to drop a message; the exact counts below would catch it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import orjson

from etl import kafka_tools
from ops.harness.synthetic import Generator
from tests.conftest import warehouse_rows


def _committed(pipeline, group: str) -> int:
    return sum(kafka_tools.committed_offsets(pipeline.settings, group).values())


def test_sigkill_mid_stream_loses_and_duplicates_nothing(make_pipeline) -> None:
    rng = random.Random(606)
    pipeline = make_pipeline(
        sinks=("duckdb",),
        partitions=3,
        extra_env={
            "ETL_DELIVERY__BATCH_MAX_EVENTS": "500",
            # A killed member leaves the group sooner, so rounds are shorter.
            "ETL_KAFKA__SESSION_TIMEOUT": "6",
            "ETL_KAFKA__REBALANCE_TIMEOUT": "6",
            "ETL_KAFKA__HEARTBEAT_INTERVAL": "0.5",
            # Work done but not yet committed is what a crash puts at risk;
            # a longer interval makes every kill land on some.
            "ETL_KAFKA__COMMIT_INTERVAL": "3",
        },
    )
    pipeline.start()

    # A steady producer for the whole test, so every kill lands while work is in flight.
    stop, done = threading.Event(), threading.Event()
    counts = Counter[str]()
    generator = Generator(seed=11, batch_rate=0.05).messages(10**9)

    def feed() -> None:
        while not stop.is_set():
            part = [next(generator) for _ in range(80)]
            pipeline.produce(m.value for m in part)
            counts["valid"] += sum(m.valid for m in part)
            counts["rejected"] += sum(m.rejected for m in part)
            time.sleep(0.1)
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    kills = Counter[str]()
    lag_at_kill = []
    groups = {
        "normalize": pipeline.settings.normalize_group,
        "sink:duckdb": pipeline.settings.sink_group("duckdb"),
    }
    started = time.monotonic()
    for round_ in range(6):
        role = "normalize" if round_ % 2 == 0 else "sink:duckdb"
        print(f"round {round_} {role} at {time.monotonic() - started:.1f}s")
        before = _committed(pipeline, groups[role])
        deadline = time.monotonic() + 45
        while _committed(pipeline, groups[role]) == before and time.monotonic() < deadline:
            time.sleep(0.1)  # wait until this worker is visibly consuming
        time.sleep(rng.uniform(0.5, 2.0))  # inside the 3 s commit window, with input flowing
        if role == "normalize":
            lag_at_kill.append(
                sum(pipeline.produced_ends.values()) - _committed(pipeline, groups[role])
            )
            assert lag_at_kill[-1] > 0, "the kill must land while raw input is pending"
        pipeline.kill(role)
        kills[role] += 1
        pipeline.start([role])
    stop.set()
    feeder.join(timeout=60)
    assert done.is_set(), "producer did not finish"
    valid, rejected = counts["valid"], counts["rejected"]
    pipeline.wait_drained(timeout=240)

    db = pipeline.settings.duckdb.path
    ((rows, unique),) = warehouse_rows(
        db, "SELECT count(*), count(DISTINCT message_id) FROM events"
    )
    assert rows == unique == valid, (
        f"events: {rows} rows, {unique} unique, {valid} expected (kills {dict(kills)})"
    )
    ((rej,),) = warehouse_rows(db, "SELECT count(*) FROM rejected_events")
    assert rej == rejected
    typed = sum(
        warehouse_rows(db, f'SELECT count(*) FROM "{t}"')[0][0]
        for t in (
            "tool_used",
            "flow_executed",
            "ai_generation",
            "rag_query_triggered",
            "feature_flag_called",
            "prompt_blocked",
            "agent_created",
        )
    )
    ((typed_expected,),) = warehouse_rows(
        db,
        "SELECT count(*) FROM events WHERE event IN ('tool_used','flow_executed',"
        "'$ai_generation','rag_query_triggered','$feature_flag_called','prompt_blocked',"
        "'agent_created')",
    )
    assert typed == typed_expected

    # Every raw offset was committed by the normalizer: nothing skipped past.
    committed = kafka_tools.committed_offsets(pipeline.settings, pipeline.settings.normalize_group)
    assert {tp: committed.get(tp) for tp in pipeline.produced_ends} == pipeline.produced_ends
    assert kills["normalize"] == 3 and kills["sink:duckdb"] == 3

    # Redelivery is the only source of duplicates, and only on the topic, never in the warehouse.
    kc = kafka_tools.consumer(pipeline.settings)
    try:
        tps = kafka_tools.partitions(kc, pipeline.settings.kafka.normalized_topic)
        ends = kafka_tools.true_end_offsets(kc, tps)
        kc.assign(tps)
        kc.seek_to_beginning(*tps)
        seen = Counter[str]()
        remaining = sum(ends.values())
        deadline = time.monotonic() + 60
        while remaining > 0 and time.monotonic() < deadline:
            for records in kc.poll(timeout_ms=500, max_records=5000).values():
                for r in records:
                    remaining -= 1
                    for ev in orjson.loads(r.value)["events"]:
                        seen[ev["message_id"]] += 1
    finally:
        kc.close()
    assert len(seen) == valid
    redelivered = sum(seen.values()) - len(seen)
    print(
        f"kills={dict(kills)} lag_at_normalize_kills={lag_at_kill} valid={valid} "
        f"topic copies={sum(seen.values())} redelivered={redelivered}"
    )
    assert redelivered > 0, (
        "no kill landed on uncommitted work; the test proved nothing about redelivery"
    )


def test_worker_stops_promptly_while_its_destination_is_down(make_pipeline) -> None:
    """A sink backing off must not hold a deploy or restart hostage;
    its unfinished batch is redelivered.
    """
    import signal

    from ops.status import metric_sum
    from ops.status import read_samples as scrape
    from tests.servers.rudderstack import RudderStackServer

    with RudderStackServer(write_key="wk") as server:
        outage = server.fail_for(600, status=503)
        pipeline = make_pipeline(
            sinks=("rudderstack",),
            partitions=1,
            extra_env={
                "RUDDERSTACK_WRITE_KEY": "wk",
                "RUDDERSTACK_DATA_PLANE_URL": server.url,
                "ETL_FLAGS__GATES": "{}",
                "ETL_DELIVERY__RETRY_MAX": "1",
            },
            rudderstack={"write_key": "wk", "data_plane_url": server.url},
        )
        pipeline.start()
        events = [
            orjson.dumps(
                {
                    "event": "tool_used",
                    "distinct_id": f"u{i}",
                    "uuid": f"00000000-0000-4000-8000-{i:012d}",
                }
            )
            for i in range(50)
        ]
        pipeline.produce(events)
        sink = pipeline.worker("sink:rudderstack")
        deadline = time.monotonic() + 60

        def retries() -> float:
            try:
                return metric_sum(scrape(sink.metrics_url), "etl_sink_retries_total")
            except OSError:  # web server not up yet
                return 0

        while retries() < 2:
            assert time.monotonic() < deadline, "sink never started retrying"
            time.sleep(0.3)
        started = time.monotonic()
        sink.process.send_signal(signal.SIGTERM)
        sink.process.wait(timeout=15)
        stopped_in = time.monotonic() - started
        assert stopped_in < 10, f"worker took {stopped_in:.1f}s to stop while backing off"
        pipeline.workers.remove(sink)

        outage.cancel()
        pipeline.start(["sink:rudderstack"])
        pipeline.wait_drained(timeout=90)
        assert sorted(set(server.message_ids())) == [
            f"00000000-0000-4000-8000-{i:012d}" for i in range(50)
        ]
