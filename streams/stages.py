"""The pipeline's two stages, defined once and run by every path.

* :class:`NormalizeStage`: raw records -> parse and validate (``mappers``),
  flag decisions and PII redaction (``mappers.governance``) -> unified events
  and dead letters.
* :class:`SinkStage`: unified events -> this sink's flag gates and
  third-party redaction -> the :class:`~streams.delivery.Deliverer` -> the sink.

The live worker's agents (``streams.roles``), ``etl replay`` of either topic,
``etl dlq requeue``, ``etl validate``, the demo's workers and the benchmark
all run these objects; a path that needs less (a dry run, validate) runs the
same objects and skips the delivery.  Nothing here knows Faust: records are
anything with ``topic``, ``partition``, ``offset``, ``timestamp``, ``value``
and ``headers``, and output goes to an :class:`~streams.outputs.Output`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.partitioner import murmur2

from mappers.contracts.step import ContractStep
from mappers.deadletter import dead_letter, dumps_dead_letter
from mappers.envelope import EVENTS_HEADER, encode_envelope, split_unified
from mappers.errors import Reason, Rejection
from mappers.governance import NormalizeGovernance, SinkGovernance
from mappers.models import KNOWN_EVENTS
from mappers.normalize import Normalizer, dumps_event
from mappers.suppression import SuppressionList, rejection_suppressed
from streams import metrics
from streams.delivery import Deliverer, sink_call_in_thread
from streams.outputs import DeadLetterItem, DeadLetters, OutMessage
from streams.retry import RetryPolicy, until_done

if TYPE_CHECKING:
    from etl.config import CoreSettings
    from sinks.base import Sink
    from sinks.settings import Settings

log = logging.getLogger("etl.stages")

#: Largest normalized envelope, so one stays well inside the topics' 16 MiB message limit.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
#: Records the normalize stage takes through all its steps at a time.  Each step
#: revisits every event's dicts; in chunks this small they are still in the CPU
#: cache when the next step comes (a 5,000-record batch taken step by step cost
#: 15 us per message against 11-12 in chunks of 256: bench/normalize_alone.py).
CHUNK_RECORDS = 256


@lru_cache(maxsize=65536)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so keyed consumers agree with us
    (cached: pure Python).
    """
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class NormalizedBatch:
    """What the normalize stage made of a list of raw records."""

    #: Unified events as the normalized topic carries them, one encoding each.
    encoded: list[bytes] = field(default_factory=list)
    #: The distinct_id of each event (the partition key), in the same order.
    keys: list[str] = field(default_factory=list)
    dead: list[DeadLetterItem] = field(default_factory=list)
    records: int = 0
    by_event: Counter[str] = field(default_factory=Counter)

    @property
    def normalized(self) -> int:
        return len(self.encoded)

    def events(self) -> list[dict[str, Any]]:
        """The unified events exactly as a sink stage receives them from the normalized topic."""
        return [orjson.loads(raw) for raw in self.encoded]


class NormalizeStage:
    """raw records -> unified events + dead letters
    (sync and CPU-bound: run it off the event loop).
    """

    name = "normalize"

    def __init__(
        self, settings: CoreSettings, governance: NormalizeGovernance | None = None
    ) -> None:
        self.settings = settings
        self.normalizer = Normalizer(settings.normalize)
        self.governance = governance or NormalizeGovernance(settings)
        self.contracts = ContractStep(settings)
        self.suppression = SuppressionList(settings)

    def start(self) -> NormalizeStage:
        """Start the flag service (it may wait briefly for PostHog's definitions)."""
        self.governance.start()
        return self

    def close(self) -> None:
        self.governance.close()

    def process(self, records: Sequence[Any]) -> NormalizedBatch:
        batch = NormalizedBatch(records=len(records))
        with self.governance.batch():
            for start in range(0, len(records), CHUNK_RECORDS):
                self._process_chunk(records[start : start + CHUNK_RECORDS], batch)
        for (event, kind, action), n in self.contracts.take_counts().items():
            metrics.CONTRACT_VIOLATIONS.labels(event, kind, action).inc(n)
        metrics.MESSAGES_IN.labels(self.name).inc(batch.records)
        metrics.EVENTS_OUT.labels(self.name, "normalized").inc(batch.normalized)
        metrics.EVENTS_OUT.labels(self.name, "rejected").inc(len(batch.dead))
        for name, n in batch.by_event.items():
            metrics.BY_EVENT.labels(name).inc(n)
        return batch

    def _process_chunk(self, records: Sequence[Any], batch: NormalizedBatch) -> None:
        """Normalize, govern and encode ``records`` into ``batch``."""
        unified: list[dict[str, Any]] = []
        dead: list[DeadLetterItem] = []
        normalize = self.normalizer.normalize
        for rec in records:
            try:
                events, rejections = normalize(
                    rec.value,
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    timestamp_ms=rec.timestamp,
                )
            except Exception as exc:  # noqa: BLE001 - a mapper bug must not wedge the partition
                log.error(
                    "normalize: mapper failed on %s:%d:%d (%s); dead-lettering it",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    type(exc).__name__,
                )
                events = []
                error = f"mapper failed: {type(exc).__name__}: {exc}"[:500]
                rejections = [Rejection(Reason.INTERNAL_ERROR, error, None, rec.value or b"")]
            hashes = getattr(rec, "redaction_hashes", None)
            if hashes is not None:
                # A requeued dead letter: its payload was redacted before it was stored.
                self.governance.restore_redaction(events, hashes)
            events, rejections = self._suppress_and_contract(events, rejections, rec.value or b"")
            unified.extend(events)
            for r in rejections:
                r.source_timestamp = rec.timestamp
                if hashes is not None:
                    r.redaction_hashes = hashes
                dead.append((r, rec.topic, rec.partition, rec.offset))
        self.governance.apply_within(unified, [d[0] for d in dead])
        batch.encoded.extend([dumps_event(ev) for ev in unified])
        batch.keys.extend([ev["distinct_id"] for ev in unified])
        batch.dead.extend(dead)
        batch.by_event.update(
            [ev["event"] if ev["event"] in KNOWN_EVENTS else "other" for ev in unified]
        )

    def _suppress_and_contract(
        self, events: list[dict[str, Any]], rejections: list[Rejection], raw: bytes
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """The tracking plan, then forgotten people's events and dead letters held back.

        The plan goes first: its dead letters are matched to their batch items
        by position among the record's events, before any is held back.
        """
        if events:
            events, broken = self.contracts.apply(events, raw, rejections)
            if broken:
                rejections = rejections + broken
        events, suppressed = self.suppression.filter(events)
        if self.suppression.hashes and rejections:
            before = len(rejections)
            rejections = [
                r for r in rejections if not rejection_suppressed(self.suppression, r.raw)
            ]
            suppressed += before - len(rejections)
        if suppressed:
            metrics.SUPPRESSED.labels(self.name, self.suppression.mode).inc(suppressed)
        return events, rejections

    def envelopes(self, batch: NormalizedBatch, partitions: int) -> list[OutMessage]:
        """The normalized topic's messages for ``batch``: keyed events,
        or envelopes per partition.
        """
        topic = self.settings.kafka.normalized_topic
        size = self.settings.normalize.envelope_size
        if size == 1:
            return [
                (topic, key.encode(), raw, None, None)
                for key, raw in zip(batch.keys, batch.encoded, strict=True)
            ]
        # Group by the partition the distinct_id maps to, so per-user order
        # and partition affinity are the same as with one keyed message each.
        groups: dict[int, list[bytes]] = {}
        for key, raw in zip(batch.keys, batch.encoded, strict=True):
            groups.setdefault(partition_for(key, partitions), []).append(raw)
        messages: list[OutMessage] = []
        for partition, encoded in groups.items():
            start = 0
            while start < len(encoded):
                chunk: list[bytes] = []
                nbytes = 0
                while (
                    start < len(encoded)
                    and len(chunk) < size
                    and (not chunk or nbytes + len(encoded[start]) <= MAX_ENVELOPE_BYTES)
                ):
                    chunk.append(encoded[start])
                    nbytes += len(encoded[start])
                    start += 1
                headers = [(EVENTS_HEADER, str(len(chunk)).encode())]
                messages.append((topic, None, encode_envelope(chunk), partition, headers))
        return messages


def unreadable_dead_letters(unreadable: list[tuple[Any, str]]) -> list[DeadLetterItem]:
    return [
        (
            Rejection(Reason.UNREADABLE_RECORD, error, None, rec.value or b""),
            rec.topic,
            rec.partition,
            rec.offset,
        )
        for rec, error in unreadable
    ]


def dead_letter_record(record: Any, raw_limit: int) -> dict[str, Any]:
    """A DLQ record as stored; a foreign, unreadable one is kept as a dead letter of its own."""
    try:
        doc = orjson.loads(record.value)
        if isinstance(doc, dict) and "rejection_id" in doc and "reason" in doc:
            return doc
        error = "not a dead-letter record"
    except (orjson.JSONDecodeError, TypeError) as exc:
        error = f"not JSON: {exc}"
    rejection = Rejection(Reason.UNREADABLE_RECORD, error, None, record.value or b"")
    letter = dead_letter(
        rejection,
        stage="dlq",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        raw_limit=raw_limit,
    )
    return orjson.loads(dumps_dead_letter(letter))


class SinkStage:
    """Unified events -> per-sink gates and third-party redaction -> Deliverer -> sink.

    Every method returns only once its work is durable (or dead-lettered),
    retrying in place otherwise; the sink is used by one step at a time.
    """

    def __init__(self, settings: Settings, sink: Sink, dead_letters: DeadLetters) -> None:
        self.settings = settings
        self.sink = sink
        self.name = f"sink:{sink.name}"
        self.dead_letters = dead_letters
        self.policy = RetryPolicy.from_settings(settings)
        self.governance = SinkGovernance(
            settings, sink.name, third_party=not sink.capabilities.is_warehouse
        )
        d = settings.delivery
        self.deliverer = Deliverer(
            sink,
            dead_letters,
            retry_initial=d.retry_initial,
            retry_max=d.retry_max,
            unexpected_attempts=d.unexpected_error_attempts,
            auth_retry_interval=d.auth_retry_interval,
            encode=dumps_event,
        )
        self._lock = asyncio.Lock()
        # Events normalized before a forget (lagging sinks, normalized-topic replays) stop here.
        self.suppression = SuppressionList(settings)
        #: Events handed to the deliverer after the gates, and events the gates held back.
        self.forwarded = 0
        self.gated = 0

    @property
    def stores_rejected(self) -> bool:
        return self.sink.capabilities.stores_rejected

    async def open(self) -> None:
        """Create the destination's objects up front, so tables
        (and misconfiguration) show early.
        """

        async def open_and_release() -> None:
            async with self._lock:
                await sink_call_in_thread(self.sink.open)
                await sink_call_in_thread(self.sink.on_idle)

        await until_done(
            open_and_release, what=f"{self.name}: opening the destination", policy=self.policy
        )

    async def receive(self, records: Sequence[Any]) -> int:
        """Normalized-topic records -> delivered; a record that is not ours is dead-lettered."""
        # Decoding is CPU work: keep it off the event loop (heartbeats, web).
        events, unreadable = await asyncio.to_thread(split_unified, list(records))
        if unreadable:
            await self.dead_letters(unreadable_dead_letters(unreadable), self.name)
        await self.deliver(events)
        return len(events)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Unified events (JSON types) -> this sink, durably."""
        metrics.EVENTS_IN.labels(self.name).inc(len(events))

        async def gate_and_deliver() -> None:
            # CPU work per event (third-party redaction): off the event loop, like the decode.
            prepared = await asyncio.to_thread(self.gate, events)
            async with self._lock:
                await self.deliverer.deliver(prepared)
            self.forwarded += len(prepared)

        await until_done(
            gate_and_deliver,
            what=f"{self.name}: delivering {len(events)} events",
            policy=self.policy,
        )

    def gate(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events this sink may receive (flag gates), redacted for a third party;
        counts the gated.  Forgotten people's events stop here too (normalized before a forget).
        """
        events, suppressed = self.suppression.filter(events)
        if suppressed:
            metrics.SUPPRESSED.labels(self.name, self.suppression.mode).inc(suppressed)
        prepared, gated = self.governance.prepare(events)
        for flag, n in gated.items():
            metrics.GATED.labels(self.sink.name, flag).inc(n)
        if gated:
            metrics.EVENTS_OUT.labels(self.name, "gated").inc(sum(gated.values()))
            self.gated += sum(gated.values())
        return prepared

    async def store_rejected(self, records: Sequence[Any]) -> None:
        """Dead-letter-topic records -> the warehouse's rejected_events."""
        limit = self.settings.normalize.dlq_raw_max_bytes
        letters = [dead_letter_record(r, limit) for r in records]
        self.suppression.refresh()
        if self.suppression.hashes:
            kept = [
                letter
                for letter in letters
                if letter.get("raw_encoding") != "utf-8"
                or not rejection_suppressed(
                    self.suppression, str(letter.get("raw_payload") or "").encode()
                )
            ]
            if len(kept) != len(letters):
                metrics.SUPPRESSED.labels(self.name, "drop").inc(len(letters) - len(kept))
            letters = kept

        async def store() -> None:
            async with self._lock:
                await self.deliverer.deliver_rejected(letters)

        await until_done(
            store, what=f"{self.name}: storing {len(letters)} dead letters", policy=self.policy
        )

    def stop(self) -> None:
        """The process is stopping: end retries now; the batch in hand stays unacked."""
        self.deliverer.stopping.set()

    async def idle(self) -> None:
        """No input for a flush interval: let the sink release what it holds
        (file locks, buffers).
        """
        async with self._lock:
            await sink_call_in_thread(self.sink.on_idle)

    async def close(self) -> None:
        async with self._lock:
            await sink_call_in_thread(self.sink.close)
