"""End-to-end latency of our pipeline: produce -> visible in the DuckDB warehouse.

Method: with the workers already running and idle, valid track events are
produced at a steady paced rate (half of our measured maximum).  Each event
carries its produce time in ``properties.bench_sent_us`` (microseconds since
the epoch, just before ``produce()``).  After the pipeline drains, the
warehouse is queried once: latency = ``loaded_at - bench_sent_us`` per event.

The stamp is in microseconds, 16 digits: nanoseconds have 19, which the
normalizer must treat as a possible out-of-int64 number and re-parse, so every
probe event took a slow path the throughput workload does not.

``loaded_at`` is stamped by the sink when the write transaction *starts*; the
rows become visible at its COMMIT, later by the write's duration (reported as
``write_ms_mean``: the sink's own ``etl_sink_write_seconds`` over this phase).
Polling the file instead would take DuckDB's single-writer lock away from the
sink and distort what is measured.  Producer and workers share this machine's
clock, so no clock skew is involved.

``split_ms`` cuts each event's latency in two at the broker timestamp
(CreateTime, set by the normalize worker's producer) of the normalized-topic
record that carries it: produce -> normalized, and normalized -> loaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.pipeline import EndTracker, OursRun, confluent_producer
from mappers.envelope import decode_unified
from ops.harness.synthetic import Generator

if TYPE_CHECKING:
    from sinks.settings import Settings


def track_events(n: int, seed: int) -> list[dict[str, Any]]:
    """Valid events with a ``properties`` object (identify calls carry traits instead)."""
    gen = Generator(seed=seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        ev = gen.event(gen.rng.random() < 0.4)
        if isinstance(ev.get("properties"), dict):
            out.append(ev)
    return out


def stamp_sent(ev: dict[str, Any], run_tag: int) -> None:
    """Mark ``ev`` as this phase's probe, sent now."""
    ev["properties"]["bench_run"] = run_tag  # one phase's events apart from another's
    ev["properties"]["bench_sent_us"] = time.time_ns() // 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def run_latency(
    run: OursRun, rate: float, seconds: float, seed: int = 11, timeout: float = 300.0
) -> dict[str, Any]:
    settings = run.pipeline.settings
    n = max(1, int(rate * seconds))
    events = track_events(n, seed)
    producer = confluent_producer(settings.kafka.bootstrap_servers)
    tracker = EndTracker(run.pipeline.produced_ends)
    topic = settings.kafka.raw_topic
    writes_before = _sink_writes(run)
    normalized_from = _high_watermarks(settings)
    tick = 0.002  # produce in small bursts: at most 2 ms ahead of schedule
    started = time.perf_counter()
    for i, ev in enumerate(events):
        due = started + i / rate
        now = time.perf_counter()
        if due - now > tick:
            time.sleep(due - now)
        stamp_sent(ev, seed)
        producer.produce(topic, value=orjson.dumps(ev), on_delivery=tracker)
        producer.poll(0)
    producer.flush(60)
    produce_seconds = time.perf_counter() - started
    if tracker.errors:
        raise RuntimeError(f"latency produce failed: {tracker.errors[:3]}")
    run.pipeline.wait_drained(timeout, poll=0.25)
    landed = _landed(Path(settings.duckdb.path), seed)
    latencies = sorted((loaded - sent) / 1e3 for loaded, sent in landed.values())
    if len(latencies) < n:
        raise RuntimeError(
            f"latency: only {len(latencies)} of {n} stamped events reached the warehouse"
        )
    writes_after = _sink_writes(run)
    write = None
    if writes_before and writes_after and writes_after[1] > writes_before[1]:
        write = (writes_after[0] - writes_before[0]) / (writes_after[1] - writes_before[1])
    return {
        "target_rate": round(rate, 1),
        "achieved_rate": round(n / produce_seconds, 1),
        "events": n,
        "seconds": round(produce_seconds, 2),
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p90_ms": round(percentile(latencies, 0.90), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1),
        "split_ms": _split(landed, _normalized_at(settings, normalized_from, set(landed))),
        "write_ms_mean": round(1000 * write, 1) if write is not None else None,
        "method": "loaded_at (sink write start) - properties.bench_sent_us (before produce), "
        "paced produce, warm workers",
    }


def _landed(path: Path, run_tag: int) -> dict[str, tuple[int, int]]:
    """message_id -> (loaded_at, sent), in microseconds, for one phase's probes."""
    from sinks.duckdb import wait_for_lock

    con = wait_for_lock(path, timeout=60)
    try:
        rows = con.execute(
            "SELECT message_id, epoch_us(loaded_at), "
            "CAST(json_extract(properties, '$.bench_sent_us') AS BIGINT) "
            "FROM events WHERE json_extract(properties, '$.bench_sent_us') IS NOT NULL "
            "AND CAST(json_extract(properties, '$.bench_run') AS BIGINT) = ?",
            [run_tag],
        ).fetchall()
    finally:
        con.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def _normalized_consumer(settings: Settings) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "bench-latency-split",
            "enable.auto.commit": False,
        }
    )


def _high_watermarks(settings: Settings) -> dict[int, int]:
    """Where the normalized topic ends now, per partition (the phase's records come after).

    The bundled broker may answer below the true end; the split then reads a few
    earlier records, which match no probe.
    """
    from confluent_kafka import TopicPartition

    consumer = _normalized_consumer(settings)
    try:
        topic = settings.kafka.normalized_topic
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.kafka.partitions)
        }
    finally:
        consumer.close()


def _normalized_at(
    settings: Settings, start: dict[int, int], wanted: set[str], timeout: float = 60.0
) -> dict[str, int]:
    """message_id -> CreateTime (ms) of the normalized record that carries it."""
    from confluent_kafka import TopicPartition

    consumer = _normalized_consumer(settings)
    found: dict[str, int] = {}
    try:
        topic = settings.kafka.normalized_topic
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
        deadline = time.monotonic() + timeout
        idle = 0
        while len(found) < len(wanted) and idle < 3 and time.monotonic() < deadline:
            records = consumer.consume(10_000, 1.0)
            idle = 0 if records else idle + 1
            for record in records:
                if record.error() is not None:
                    continue
                created = record.timestamp()[1]
                for event in decode_unified([_Record(record)]):
                    if event.get("message_id") in wanted:
                        found[event["message_id"]] = created
    finally:
        consumer.close()
    return found


class _Record:
    """A confluent message in the shape :func:`decode_unified` reads."""

    def __init__(self, message: Any) -> None:
        self.value = message.value()
        self.topic, self.partition, self.offset = (
            message.topic(),
            message.partition(),
            message.offset(),
        )


def _split(
    landed: dict[str, tuple[int, int]], normalized_ms: dict[str, int]
) -> dict[str, Any] | None:
    """p50/p99 of each half of the latency, when (nearly) every probe's record was found."""
    if len(normalized_ms) < 0.99 * len(landed):
        return None
    halves: dict[str, list[float]] = {"to_normalized": [], "normalized_to_loaded": []}
    for message_id, (loaded_us, sent_us) in landed.items():
        at_ms = normalized_ms.get(message_id)
        if at_ms is None:
            continue
        at_us = at_ms * 1000
        halves["to_normalized"].append((at_us - sent_us) / 1e3)
        halves["normalized_to_loaded"].append((loaded_us - at_us) / 1e3)
    out: dict[str, Any] = {"events": len(halves["to_normalized"])}
    for name, values in halves.items():
        values.sort()
        out[name] = {
            "p50": round(percentile(values, 0.5), 1),
            "p99": round(percentile(values, 0.99), 1),
        }
    return out


def _sink_writes(run: OursRun) -> tuple[float, float] | None:
    """(seconds, count) of the sink worker's successful writes so far, from its /metrics."""
    from ops.status import metric_sum
    from ops.status import read_samples as scrape

    try:
        samples = scrape(run.sink_worker.metrics_url)
    except OSError:
        return None
    return metric_sum(samples, "etl_sink_write_seconds_sum"), metric_sum(
        samples, "etl_sink_write_seconds_count"
    )
