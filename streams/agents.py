"""Faust agents: ``normalize`` and one delivering agent per sink.

Every agent iterates its stream with acks disabled and acks a chunk only after
its effect is durable (produced and acknowledged by the broker, or written by
the sink).  A crash in between leaves the offset uncommitted, so the chunk is
redelivered: at-least-once, with idempotent sinks making the effect exactly
once.  Errors are retried inside the loop body; nothing raises out of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2

from etl.config import Settings
from mappers.deadletter import dead_letter, dumps_dead_letter
from mappers.envelope import EVENTS_HEADER, encode_envelope, event_count, split_unified
from mappers.errors import Reason, Rejection
from mappers.governance import NormalizeGovernance, SinkGovernance
from mappers.models import KNOWN_EVENTS
from mappers.normalize import Normalizer, dumps_event
from sinks.base import Sink, sink_class
from streams import metrics
from streams.app import app, chunk_topic, settings
from streams.delivery import Deliverer, backoff
from streams.logs import batch_context
import streams.lag  # noqa: F401,E402  (etl_consumer_lag timer)

log = logging.getLogger("etl.agents")

#: (topic, key, value, partition, headers)
OutMessage = tuple[str, bytes | None, bytes, int | None, list[tuple[str, bytes]] | None]


class KafkaOut:
    """Produces a set of messages and returns once the broker acknowledged all of them."""

    def __init__(self, app: faust.App, stage: str, settings: Settings) -> None:
        self.app = app
        self.stage = stage
        self.settings = settings
        self._partitions: dict[str, tuple[float, int]] = {}

    async def partition_count(self, topic: str) -> int:
        cached = self._partitions.get(topic)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        count = len(await producer.partitions_for(topic))
        self._partitions[topic] = (time.monotonic(), count)
        return count

    async def send_all(self, messages: list[OutMessage]) -> None:
        attempt = 0
        while True:
            try:
                futures = [await self.app.producer.send(m[0], m[1], m[2], m[3], None, m[4] if len(m) > 4 else None) for m in messages]
                await asyncio.gather(*futures)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: back off, never skip
                delay = backoff(attempt, self.settings.delivery.retry_initial, self.settings.delivery.retry_max)
                metrics.PRODUCE_RETRIES.labels(self.stage).inc()
                log.warning("%s: producing %d messages failed (%s: %s); retrying in %.2fs", self.stage, len(messages), type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def dead_letters(self, items: list[tuple[Rejection, str, int, int]], stage: str) -> None:
        if not items:
            return
        limit = self.settings.normalize.dlq_raw_max_bytes
        messages = []
        for rejection, topic, partition, offset in items:
            record = dead_letter(rejection, stage=stage, topic=topic, partition=partition, offset=offset, raw_limit=limit)
            messages.append((self.settings.kafka.dlq_topic, record["rejection_id"].encode(), dumps_dead_letter(record), None, None))
            metrics.DLQ.labels(stage, rejection.reason).inc()
        await self.send_all(messages)


@lru_cache(maxsize=65536)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so keyed consumers agree with us (cached: pure Python)."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


class NormalizeStage:
    """raw chunk -> unified events on the normalized topic + dead letters."""

    stage = "normalize"

    def __init__(self, settings: Settings, out: KafkaOut) -> None:
        self.settings = settings
        self.out = out
        self.normalizer = Normalizer(settings.normalize)
        # Flag decisions and PII redaction (mappers/governance.py).
        self.governance = NormalizeGovernance(settings)

    async def process(self, records: list[Any]) -> tuple[int, int]:
        unified: list[dict[str, Any]] = []
        dead: list[tuple[Rejection, str, int, int]] = []
        normalize = self.normalizer.normalize
        for rec in records:
            try:
                events, rejections = normalize(
                    rec.value, topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp
                )
            except Exception as exc:  # noqa: BLE001 - a mapper bug must not wedge the partition
                log.error("normalize: mapper failed on %s:%d:%d (%s); dead-lettering it", rec.topic, rec.partition, rec.offset, type(exc).__name__)
                events = []
                rejections = [Rejection(Reason.INTERNAL_ERROR, f"mapper failed: {type(exc).__name__}: {exc}"[:500], None, rec.value or b"")]
            unified.extend(events)
            for r in rejections:
                dead.append((r, rec.topic, rec.partition, rec.offset))
        await self.governance.apply_async(unified, [d[0] for d in dead])
        messages = await self._envelopes(unified)
        await self.out.send_all(messages)
        await self.out.dead_letters(dead, self.stage)
        metrics.MESSAGES_IN.labels(self.stage).inc(len(records))
        metrics.EVENTS_OUT.labels(self.stage, "normalized").inc(len(unified))
        metrics.EVENTS_OUT.labels(self.stage, "rejected").inc(len(dead))
        names = Counter(ev["event"] if ev["event"] in KNOWN_EVENTS else "other" for ev in unified)
        for name, n in names.items():
            metrics.BY_EVENT.labels(name).inc(n)
        return len(unified), len(dead)

    async def _envelopes(self, unified: list[dict[str, Any]]) -> list[OutMessage]:
        topic = self.settings.kafka.normalized_topic
        size = self.settings.normalize.envelope_size
        if size == 1:
            return [(topic, ev["distinct_id"].encode(), dumps_event(ev), None, None) for ev in unified]
        # Group by the partition the distinct_id maps to, so per-user order
        # and partition affinity are the same as with one keyed message each.
        partitions = await self.out.partition_count(topic)
        groups: dict[int, list[bytes]] = {}
        for ev in unified:
            groups.setdefault(partition_for(ev["distinct_id"], partitions), []).append(dumps_event(ev))
        messages = []
        limit = 4 * 1024 * 1024
        for partition, encoded in groups.items():
            start = 0
            while start < len(encoded):
                chunk, nbytes = [], 0
                while start < len(encoded) and len(chunk) < size and (not chunk or nbytes + len(encoded[start]) <= limit):
                    chunk.append(encoded[start])
                    nbytes += len(encoded[start])
                    start += 1
                messages.append((topic, None, encode_envelope(chunk), partition, [(EVENTS_HEADER, str(len(chunk)).encode())]))
        return messages


async def chunk_batches(stream: faust.StreamT, max_events: int, within: float, count: Any) -> AsyncIterator[list[Any]]:
    """Group chunk events into batches of up to ``max_events`` or ``within`` seconds.

    Yields ``[]`` after ``within`` seconds without input, so sinks can release
    resources while idle.  Events are never acked here: the caller acks after
    the batch is durable.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)

    async def pump() -> None:
        async for event in stream.noack().events():
            await queue.put(event)

    pumping = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), timeout=within)
            except asyncio.TimeoutError:
                if pumping.done():
                    pumping.result()
                    return
                yield []
                continue
            batch, n = [first], count(first)
            deadline = loop.time() + within
            while n < max_events:
                if not queue.empty():
                    event = queue.get_nowait()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=remaining)
                    except asyncio.TimeoutError:
                        break
                batch.append(event)
                n += count(event)
            yield batch
    finally:
        pumping.cancel()


async def until_done(stage: str, step: Any, *args: Any) -> None:
    """Run one batch's step until it succeeds.

    Faust acks an event even when the agent raises, so a failure must never
    leave the loop body: back off and try the same batch again.
    """
    attempt = 0
    while True:
        try:
            await step(*args)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            delay = backoff(attempt, settings.delivery.retry_initial, settings.delivery.retry_max)
            log.error("%s: batch failed (%s: %s); retrying the same batch in %.1fs", stage, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1


def unreadable_dead_letters(unreadable: list[tuple[Any, str]]) -> list[tuple[Rejection, str, int, int]]:
    return [
        (Rejection(Reason.UNREADABLE_RECORD, error, None, rec.value or b""), rec.topic, rec.partition, rec.offset)
        for rec, error in unreadable
    ]


def dead_letter_record(record: Any, settings: Settings) -> dict[str, Any]:
    """A DLQ record as stored; a foreign, unreadable one is kept as a dead letter of its own."""
    try:
        doc = orjson.loads(record.value)
        if isinstance(doc, dict) and "rejection_id" in doc and "reason" in doc:
            return doc
        error = "not a dead-letter record"
    except (orjson.JSONDecodeError, TypeError) as exc:
        error = f"not JSON: {exc}"
    rejection = Rejection(Reason.UNREADABLE_RECORD, error, None, record.value or b"")
    return orjson.loads(
        dumps_dead_letter(
            dead_letter(rejection, stage="dlq", topic=record.topic, partition=record.partition, offset=record.offset,
                        raw_limit=settings.normalize.dlq_raw_max_bytes)
        )
    )


async def ack_all(stream: faust.StreamT, events: list[Any]) -> None:
    for event in events:
        await stream.ack(event)


# ---------------------------------------------------------------------------
# Agents, registered for this worker's role only.

role: str = app.etl_role  # type: ignore[attr-defined]


def _records(event: Any) -> int:
    return len(event.value)


def _events(event: Any) -> int:
    """Unified events in a chunk of the normalized topic."""
    return sum(event_count(record) for record in event.value)


if role == "normalize":
    raw_topic = chunk_topic(app, settings.kafka.raw_topic)
    normalize_out = KafkaOut(app, "normalize", settings)
    normalize_stage = NormalizeStage(settings, normalize_out)

    @app.agent(raw_topic, name="normalize")
    async def normalize(stream: faust.StreamT) -> None:
        async for batch in chunk_batches(stream, 5000, 0.05, _records):
            if not batch:
                continue
            records = [r for event in batch for r in event.value]
            with batch_context(stage="normalize", records=len(records)):
                await until_done("normalize", normalize_stage.process, records)
            await ack_all(stream, batch)

elif role.startswith("sink:"):
    sink_name = role.split(":", 1)[1]
    sink: Sink = sink_class(sink_name)(settings)
    sink_out = KafkaOut(app, f"sink:{sink_name}", settings)
    deliverer = Deliverer(
        sink,
        sink_out.dead_letters,
        retry_initial=settings.delivery.retry_initial,
        retry_max=settings.delivery.retry_max,
        unexpected_attempts=settings.delivery.unexpected_error_attempts,
        auth_retry_interval=settings.delivery.auth_retry_interval,
        encode=dumps_event,
    )
    sink_governance = SinkGovernance(settings, sink_name, third_party=not sink.capabilities.is_warehouse)
    # Serialise warehouse access between this process's two agents.
    sink_lock = asyncio.Lock()
    normalized_topic = chunk_topic(app, settings.kafka.normalized_topic)

    @app.agent(normalized_topic, name=f"deliver_{sink_name}")
    async def deliver(stream: faust.StreamT) -> None:
        async for batch in chunk_batches(stream, settings.delivery.batch_max_events, settings.delivery.flush_interval, _events):
            if not batch:
                async with sink_lock:
                    await asyncio.to_thread(sink.on_idle)
                continue
            # Decoding is CPU work: keep it off the event loop (heartbeats, web).
            events, unreadable = await asyncio.to_thread(split_unified, [r for event in batch for r in event.value])
            metrics.EVENTS_IN.labels(deliverer.stage).inc(len(events))
            with batch_context(stage=deliverer.stage, events=len(events)):
                if unreadable:
                    await sink_out.dead_letters(unreadable_dead_letters(unreadable), deliverer.stage)

                async def deliver_batch(events: list[dict[str, Any]]) -> None:
                    # Flag gates and third-party redaction (mappers/governance.py).
                    prepared = sink_governance.prepare(events)
                    async with sink_lock:
                        await deliverer.deliver(prepared)

                await until_done(deliverer.stage, deliver_batch, events)
            await ack_all(stream, batch)

    if sink.capabilities.stores_rejected:
        dlq_topic = chunk_topic(app, settings.kafka.dlq_topic)

        @app.agent(dlq_topic, name=f"rejected_{sink_name}")
        async def store_rejected(stream: faust.StreamT) -> None:
            async for batch in chunk_batches(stream, settings.delivery.batch_max_events, settings.delivery.flush_interval, _records):
                if not batch:
                    continue
                records = [dead_letter_record(r, settings) for event in batch for r in event.value]
                with batch_context(stage=f"dlq:{sink_name}", records=len(records)):
                    async with sink_lock:
                        await deliverer.deliver_rejected(records)
                await ack_all(stream, batch)

    @app.task
    async def open_sink() -> None:
        # Create destination objects up front so analysts see the tables
        # (and misconfiguration shows) before the first event arrives.
        attempt = 0
        while True:
            try:
                async with sink_lock:
                    await asyncio.to_thread(sink.open)
                    await asyncio.to_thread(sink.on_idle)
                return
            except Exception as exc:  # noqa: BLE001
                delay = backoff(attempt, settings.delivery.retry_initial, settings.delivery.retry_max)
                log.warning("sink %s: cannot open destination (%s: %s); retrying in %.1fs", sink_name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                attempt += 1


@app.page("/metrics")
async def metrics_page(web: Any, request: Any) -> Any:
    return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    return web.json({"status": "ok", "role": role})


#: Set once this worker has completed a consumer-group join (even with no partitions).
_joined = asyncio.Event()


@app.on_partitions_assigned.connect  # type: ignore[misc]
async def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    _joined.set()


@app.page("/readyz")
async def readyz(web: Any, request: Any) -> Any:
    consumer = app.consumer
    assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else []
    # Before its first group join a worker consumes nothing, so it is not ready.
    ready = _joined.is_set() and not app.rebalancing
    return web.json({"ready": ready, "role": role, "assigned": assigned}, status=200 if ready else 503)

