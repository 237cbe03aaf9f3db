"""Dead-letter operations: list, show, requeue, purge.

The DLQ topic holds one JSON record per dead letter (``mappers.deadletter``).
Records are read from the *purge watermark* to the true end of each partition
and de-duplicated on ``rejection_id`` (a redelivered or replayed rejection has
the same id).

**Purge.** Kafka cannot delete single records, and the bundled broker does not
implement DeleteRecords, so ``purge`` moves a watermark instead: the committed
offsets of the consumer group ``<prefix>-dlq-purged`` (no consumer ever joins
it).  ``list``, ``show`` and ``requeue`` start there; the records themselves
age out with the topic's retention.  The warehouse's ``rejected_events`` keeps
its history (analysts' record of what was rejected).

**Requeue** runs the worker's own stages in this process
(:class:`ops.inprocess.InProcessPipeline`), so a requeued event is gated,
redacted and written exactly as the live worker would:

* mapper rejections (stage ``normalize``): their original bytes
  (``decode_raw``) pass the normalize stage again, with the original source
  coordinates, and land in the target sinks (default: the enabled ones);
* events a destination refused (stage ``sink:<name>``): go back to that sink's
  stage only.

What fails again becomes a dead letter again, under the same source
coordinates (so the same ``rejection_id``: ``rejected_events`` keeps one row,
with the newest error).  Dead letters whose payload was cut when stored
(larger than ``normalize.dlq_raw_max_bytes``) cannot be restored and are
skipped, reported.  Requeueing does not remove the originals; purge them once
the requeued events have landed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition

from etl import kafka_tools
from etl.offsets import parse_time, to_ms
from etl.role import sink_of_stage
from mappers.deadletter import decode_raw
from ops.inprocess import InProcessPipeline, Record
from ops.replay import read_window
from sinks.settings import Settings


def purge_group(settings: Settings) -> str:
    return f"{settings.kafka.group_prefix}-dlq-purged"


@dataclass
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    record: dict[str, Any]

    @property
    def rejected_at(self) -> datetime:
        value = self.record.get("rejected_at")
        if value:
            try:
                return parse_time(str(value))
            except ValueError:
                pass
        return parse_time(str(self.timestamp_ms))


@dataclass
class Filters:
    reasons: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(
        cls,
        reason: str | None = None,
        event: str | None = None,
        stage: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Filters:
        split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else []  # noqa: E731
        return cls(
            split(reason),
            split(event),
            split(stage),
            parse_time(since) if since else None,
            parse_time(until) if until else None,
        )

    def match(self, dl: DeadLetter) -> bool:
        r = dl.record
        if self.reasons and r.get("reason") not in self.reasons:
            return False
        if self.events and r.get("event") not in self.events:
            return False
        if self.stages and r.get("stage") not in self.stages:
            return False
        if self.since and dl.rejected_at < self.since:
            return False
        if self.until and dl.rejected_at >= self.until:
            return False
        return True


def watermark(settings: Settings) -> dict[TopicPartition, int]:
    return kafka_tools.committed_offsets(settings, purge_group(settings))


def read_dead_letters(settings: Settings, filters: Filters | None = None) -> list[DeadLetter]:
    """Dead letters after the purge watermark, one per rejection_id (the latest), oldest first."""
    topic = settings.kafka.dlq_topic
    marks = watermark(settings)
    kc = kafka_tools.consumer(settings)
    try:
        tps = kafka_tools.partitions(kc, topic)
        ends = kafka_tools.true_end_offsets(kc, tps)
        begins = kc.beginning_offsets(tps)
        ranges = {tp.partition: (max(begins[tp], marks.get(tp, 0)), ends[tp]) for tp in tps}
        latest: dict[str, DeadLetter] = {}
        for partition, records in read_window(kc, topic, ranges, 5000):
            for rec in records:
                try:
                    doc = orjson.loads(rec.value)
                except orjson.JSONDecodeError:
                    doc = {
                        "rejection_id": f"unreadable-{partition}-{rec.offset}",
                        "reason": "unreadable_dead_letter",
                    }
                key = str(doc.get("rejection_id") or f"{partition}-{rec.offset}")
                latest[key] = DeadLetter(partition, rec.offset, rec.timestamp, doc)
    finally:
        kc.close()
    letters = sorted(latest.values(), key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return [d for d in letters if filters is None or filters.match(d)]


def summarize(letters: list[DeadLetter]) -> dict[str, Any]:
    by_reason = Counter(str(d.record.get("reason")) for d in letters)
    by_stage_reason = Counter(
        (str(d.record.get("stage")), str(d.record.get("reason"))) for d in letters
    )
    by_event = Counter(str(d.record.get("event")) for d in letters)
    times = [d.rejected_at for d in letters]
    return {
        "total": len(letters),
        "by_reason": dict(by_reason.most_common()),
        "by_stage_reason": [
            {"stage": s, "reason": r, "count": n} for (s, r), n in by_stage_reason.most_common()
        ],
        "by_event": dict(by_event.most_common()),
        "oldest": min(times).isoformat() if times else None,
        "newest": max(times).isoformat() if times else None,
    }


def summarize_warehouse(path: Path) -> dict[str, Any]:
    """The same counts from the warehouse's ``rejected_events`` (keeps purged history)."""
    from sinks.duckdb import wait_for_lock  # noqa: PLC0415 - the warehouse only when asked

    con = wait_for_lock(path, timeout=30)
    try:
        rows = con.execute(
            "SELECT stage, reason, count(*) AS n FROM rejected_events "
            "GROUP BY stage, reason ORDER BY n DESC, stage, reason"
        ).fetchall()
    finally:
        con.close()
    by_reason: Counter[str] = Counter()
    for _, reason, n in rows:
        by_reason[reason] += n
    return {
        "total": sum(by_reason.values()),
        "by_reason": dict(by_reason.most_common()),
        "by_stage_reason": [{"stage": s, "reason": r, "count": n} for s, r, n in rows],
        "source": str(path),
    }


def show_json(d: DeadLetter, payload_chars: int | None = None) -> dict[str, Any]:
    doc = {**d.record, "dlq_partition": d.partition, "dlq_offset": d.offset}
    if (
        payload_chars is not None
        and isinstance(doc.get("raw_payload"), str)
        and len(doc["raw_payload"]) > payload_chars
    ):
        doc["raw_payload"] = doc["raw_payload"][:payload_chars] + "…"
    return doc


@dataclass
class RequeueResult:
    requeued: int = 0
    #: Requeued mapper rejections that normalized this time, and those rejected again (by reason).
    normalized: int = 0
    rejected_again: Counter[str] = field(default_factory=Counter)
    #: Events handed to each target sink (after its flag gates).
    by_sink: dict[str, int] = field(default_factory=dict)
    skipped_cut: list[str] = field(default_factory=list)
    skipped_sink: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "requeued": self.requeued,
            "normalized": self.normalized,
            "rejected_again": sum(self.rejected_again.values()),
            "rejected_again_by_reason": dict(self.rejected_again.most_common()),
            "by_sink": self.by_sink,
            "skipped_cut_payload": self.skipped_cut,
            "skipped_sink_not_targeted": self.skipped_sink,
        }


def requeue(
    settings: Settings, letters: list[DeadLetter], sinks: Sequence[str] | None = None
) -> RequeueResult:
    """Run ``letters`` through the stages again; mapper rejections go to ``sinks``
    (default: enabled).
    """
    return asyncio.run(_requeue(settings, letters, list(sinks or settings.sinks)))


def _as_record(letter: DeadLetter, raw: bytes) -> Record:
    r = letter.record
    timestamp = r.get("source_timestamp")
    hashes = r.get("redaction_hashes")
    return Record(
        topic=str(r.get("source_topic") or ""),
        partition=int(r.get("source_partition") or 0),
        offset=int(r.get("source_offset") or 0),
        timestamp=int(timestamp) if isinstance(timestamp, int) else letter.timestamp_ms,
        value=raw,
        redaction_hashes=dict(hashes) if isinstance(hashes, dict) else None,
    )


async def _requeue(
    settings: Settings, letters: list[DeadLetter], targets: list[str]
) -> RequeueResult:
    result = RequeueResult()
    mapper: list[tuple[DeadLetter, Record]] = []
    by_sink: dict[str, list[Record]] = {}
    for d in letters:
        raw = decode_raw(d.record)
        if d.record.get("raw_sha256") and hashlib.sha256(raw).hexdigest() != d.record["raw_sha256"]:
            # Stored cut (dlq_raw_max_bytes): re-sending a fragment would only fail differently.
            result.skipped_cut.append(str(d.record.get("rejection_id")))
            continue
        sink = sink_of_stage(d.record.get("stage") or "normalize")
        if sink is not None:
            by_sink.setdefault(sink, []).append(_as_record(d, raw))
        else:
            mapper.append((d, _as_record(d, raw)))
    sink_names = list(
        dict.fromkeys([*targets, *(s for s in by_sink if s in settings.checked_sinks())])
    )
    for name in [s for s in by_sink if s not in sink_names]:
        result.skipped_sink[name] = len(by_sink.pop(name))
    pipeline = InProcessPipeline(settings, sink_names, normalize=bool(mapper))
    async with pipeline:
        normalize = pipeline.normalize_stage
        encoded: list[bytes] = []
        for letter, record in mapper:
            # One letter at a time: each outcome belongs to exactly one dead letter.
            batch = await asyncio.to_thread(normalize.process, [record])  # type: ignore[union-attr]
            for rejection, *_ in batch.dead:
                # A rejected batch item keeps its place in the envelope it came in.
                rejection.batch_index = letter.record.get("batch_index")
                result.rejected_again[rejection.reason] += 1
            await pipeline.dead_letters(batch.dead, "normalize")
            result.normalized += batch.normalized
            encoded.extend(batch.encoded)
        for start in range(0, len(encoded), 1000):
            chunk = encoded[start : start + 1000]
            for stage in pipeline.sink_stages:
                if stage.sink.name in targets:
                    await stage.deliver([orjson.loads(raw) for raw in chunk])
        for name, records in by_sink.items():
            await pipeline.stage_for(name).receive(records)
    result.requeued = len(mapper) + sum(len(r) for r in by_sink.values())
    result.by_sink = pipeline.delivered
    return result


def purge(settings: Settings, before: str | None = None) -> dict[TopicPartition, int]:
    """Move the purge watermark to the true end (or to the first dead letter at/after ``before``);
    never backwards.
    """
    topic = settings.kafka.dlq_topic
    current = watermark(settings)
    kc = kafka_tools.consumer(settings)
    try:
        tps = kafka_tools.partitions(kc, topic)
        ends = kafka_tools.true_end_offsets(kc, tps)
        targets = (
            kafka_tools.offsets_at_times(kc, {tp: to_ms(parse_time(before)) for tp in tps}, ends)
            if before
            else ends
        )
    finally:
        kc.close()
    new = {tp: max(off, current.get(tp, 0)) for tp, off in targets.items()}
    kafka_tools.alter_committed_offsets(settings, purge_group(settings), new)
    return new
