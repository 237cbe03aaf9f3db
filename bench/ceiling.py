"""The ceiling: raw aiokafka ``getmany`` plus ``orjson.loads`` of the same raw topic.

No framework, no validation, no output: the most a Python consumer on this
broker can read and parse.  Clock: from the first fetched batch to the last
record (partition assignment and the first fetch round-trip excluded, like the
other contenders' group joins).  The topic is read twice and the faster pass
counts: the first read after filling is often slower while the broker settles.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson


async def _read(bootstrap: str, topic: str, total_messages: int, timeout: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 30
        while not partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions")
            await asyncio.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = parsed = failed = 0
        loads = orjson.loads
        started: float | None = None
        deadline = time.monotonic() + timeout
        while seen < total_messages:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ceiling read {seen}/{total_messages} messages in {timeout:.0f}s"
                )
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if started is None and batches:
                started = time.perf_counter()
            for records in batches.values():
                for record in records:
                    try:
                        loads(record.value)
                        parsed += 1
                    except orjson.JSONDecodeError:
                        failed += 1
                seen += len(records)
        seconds = time.perf_counter() - (started or time.perf_counter())
        return {
            "messages": seen,
            "parsed": parsed,
            "not_json": failed,
            "seconds": round(seconds, 3),
        }
    finally:
        await consumer.stop()


def run_ceiling(
    bootstrap: str,
    topic: str,
    total_messages: int,
    events: int,
    timeout: float = 600.0,
    passes: int = 2,
) -> dict[str, Any]:
    reads = [asyncio.run(_read(bootstrap, topic, total_messages, timeout)) for _ in range(passes)]
    result = min(reads, key=lambda r: r["seconds"])
    result["pass_seconds"] = [r["seconds"] for r in reads]
    seconds = max(result["seconds"], 1e-6)
    result["events"] = events
    result["eps"] = round(events / seconds, 1)
    return result
